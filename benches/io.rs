//! Video and LeRobot I/O throughput at LanguageTable's 360x640, in frames per second:
//! mp4 encode (AV1 with lerobot's defaults: libsvtav1 preset 12, crf 30, g 2; and H.264), mp4 decode
//! of one episode's range, and LeRobot v3.0 table writing (parquet + per-episode stats, no video).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{Rgb, RgbImage};
use vadapt::episode::{Episode, EpisodeIndex, Feature, Features, FrameSource, Provenance};
use vadapt::io::lerobot::{LeRobotWriter, WriterOptions};
use vadapt::io::video::{self, EncoderOptions, Mp4Frames, VideoCodec};

const H: u32 = 360;
const W: u32 = 640;
const N: usize = 30;

/// A tabletop-like scene: gradient board, a moving block and a moving disc.
fn frames(n: usize) -> Vec<RgbImage> {
    (0..n)
        .map(|t| {
            let t = t as i64;
            RgbImage::from_fn(W, H, |x, y| {
                let (x, y) = (x as i64, y as i64);
                if (x - 100 - 8 * t).abs() < 30 && (y - 150).abs() < 30 {
                    return Rgb([220, 40, 40]);
                }
                if (x - 400).pow(2) + (y - 60 - 6 * t).pow(2) < 900 {
                    return Rgb([30, 60, 200]);
                }
                Rgb([(80 + x / 8) as u8, (90 + y / 6) as u8, 120])
            })
        })
        .collect()
}

fn bench_video(c: &mut Criterion) {
    let video = frames(N);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("video_360x640");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(N as u64));
    for (name, codec) in [("av1", VideoCodec::Av1), ("h264", VideoCodec::H264)] {
        let opts = EncoderOptions {
            codec: Some(codec),
            ..EncoderOptions::default()
        };
        let path = dir.path().join(format!("{name}.mp4"));
        g.bench_function(format!("encode_{name}_{N}_frames"), |b| {
            b.iter(|| black_box(video::encode_frames(&path, &video, 10.0, &opts).expect("encode")))
        });
        let src = Mp4Frames::new(&path, 0.0, 10.0, N, (H, W));
        g.bench_function(format!("decode_{name}_{N}_frames"), |b| {
            b.iter(|| black_box(src.decode().expect("decode")))
        });
    }
    g.finish();
}

fn table_episode(ep: u64, n: usize) -> (Episode, Features) {
    let fsl = |v: Vec<f32>| -> ArrayRef {
        Arc::new(FixedSizeListArray::new(
            Arc::new(Field::new("item", DataType::Float32, true)),
            2,
            Arc::new(Float32Array::from(v)),
            None,
        ))
    };
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "observation.state",
            fsl((0..2 * n).map(|i| (i as f32).sin()).collect()),
        ),
        (
            "action",
            fsl((0..2 * n).map(|i| (i as f32).cos()).collect()),
        ),
        ("next.reward", Arc::new(Float32Array::from(vec![0.0f32; n]))),
        (
            "episode_index",
            Arc::new(Int64Array::from(vec![ep as i64; n])),
        ),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(k, a)| Field::new(*k, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect())
        .expect("batch");
    let mut features = Features::new();
    let f = |d: &str, s: usize| Feature {
        dtype: d.into(),
        shape: vec![s],
        names: None,
        info: None,
    };
    features.insert("observation.state".into(), f("float32", 2));
    features.insert("action".into(), f("float32", 2));
    features.insert("next.reward".into(), f("float32", 1));
    let ep = Episode {
        index: EpisodeIndex(ep),
        task: "push the red star to the blue cube".into(),
        fps: 10.0,
        cameras: BTreeMap::new(),
        columns: batch,
        episode_columns: Default::default(),
        provenance: Provenance::default(),
    };
    (ep, features)
}

fn bench_table(c: &mut Criterion) {
    const EPISODES: u64 = 20;
    const LEN: usize = 500;
    let eps: Vec<(Episode, Features)> = (0..EPISODES).map(|i| table_episode(i, LEN)).collect();
    let mut g = c.benchmark_group("lerobot_table");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(EPISODES * LEN as u64));
    g.bench_function("write_20x500_rows_with_stats", |b| {
        b.iter(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut w = LeRobotWriter::create(
                dir.path().join("ds"),
                10.0,
                &eps[0].1,
                WriterOptions::default(),
            )
            .expect("create");
            for (ep, _) in &eps {
                w.save_episode(ep).expect("save");
            }
            black_box(w.finalize().expect("finalize"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_video, bench_table);
criterion_main!(benches);
