//! io::lerobot: v3.0 write -> read round trips (data and video files rolling over), v2.1 read, bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, FixedSizeListArray, Float32Array,
    Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use parquet::arrow::ArrowWriter;
use serde_json::json;
use vadapt::episode::{Episode, EpisodeIndex, Feature, Features, Frames, Provenance};
use vadapt::io::lerobot::{LeRobotDataset, LeRobotWriter, WriterOptions};
use vadapt::io::video::{self, EncoderOptions, VideoCodec};
use vadapt::io::EpisodeSource;
use vadapt::Error;

use crate::video::{mean_abs_err, synthetic_frames};

const CAM: &str = "observation.images.rgb";
const H: u32 = 64;
const W: u32 = 96;
const FPS: f64 = 10.0;
const TASKS: [&str; 2] = [
    "push the red star to the blue cube",
    "move the green moon left",
];

fn feat(dtype: &str, shape: &[usize]) -> Feature {
    Feature {
        dtype: dtype.into(),
        shape: shape.to_vec(),
        names: None,
        info: None,
    }
}

fn features() -> Features {
    let mut f = Features::new();
    f.insert(
        CAM.into(),
        Feature {
            names: Some(json!(["height", "width", "channels"])),
            ..feat("video", &[H as usize, W as usize, 3])
        },
    );
    f.insert("observation.state".into(), feat("float32", &[2]));
    f.insert("action".into(), feat("float32", &[2]));
    f.insert("next.reward".into(), feat("float32", &[1]));
    f.insert("next.done".into(), feat("bool", &[1]));
    f.insert("extra.f64".into(), feat("float64", &[1]));
    for (k, d) in [
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ] {
        f.insert(k.into(), feat(d, &[1]));
    }
    f
}

fn fsl(values: Vec<f32>, n: i32) -> ArrayRef {
    Arc::new(FixedSizeListArray::new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        n,
        Arc::new(Float32Array::from(values)),
        None,
    ))
}

/// A synthetic LeRobot-shaped episode: columns as lerobot writes them (fixed-size lists for vectors,
/// scalars for shape [1]), awkward float values included (-0.0, subnormal, NaN) to check bit-exactness.
fn make_episode(ep: u64, n: usize, first_index: u64, task: usize) -> Episode {
    let s = ep as f32;
    let state: Vec<f32> = (0..2 * n)
        .map(|i| (i as f32 * 0.37 + s).sin() * 1e3 + 1e-7)
        .collect();
    let mut action: Vec<f32> = (0..2 * n)
        .map(|i| (i as f32 * 1.3 - s).cos() / 3.0)
        .collect();
    action[0] = -0.0;
    action[1] = f32::from_bits(1); // subnormal
    let mut reward: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
    reward[n / 2] = f32::NAN;
    let done: Vec<bool> = (0..n).map(|i| i + 1 == n).collect();
    let extra: Vec<f64> = (0..n)
        .map(|i| std::f64::consts::PI * (i as f64 + s as f64))
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("observation.state", fsl(state, 2)),
        ("action", fsl(action, 2)),
        ("next.reward", Arc::new(Float32Array::from(reward))),
        ("next.done", Arc::new(BooleanArray::from(done))),
        ("extra.f64", Arc::new(Float64Array::from(extra))),
        (
            "timestamp",
            Arc::new(Float32Array::from(
                (0..n).map(|i| (i as f64 / FPS) as f32).collect::<Vec<_>>(),
            )),
        ),
        (
            "frame_index",
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        ),
        (
            "episode_index",
            Arc::new(Int64Array::from(vec![ep as i64; n])),
        ),
        (
            "index",
            Arc::new(Int64Array::from(
                (first_index as i64..(first_index + n as u64) as i64).collect::<Vec<_>>(),
            )),
        ),
        (
            "task_index",
            Arc::new(Int64Array::from(vec![task as i64; n])),
        ),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(k, a)| Field::new(*k, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut cameras = BTreeMap::new();
    cameras.insert(
        CAM.to_string(),
        Frames::from_images(synthetic_frames(n, H, W, ep as u32)),
    );
    Episode {
        index: EpisodeIndex(ep),
        task: TASKS[task].into(),
        fps: FPS,
        cameras,
        columns: batch,
        episode_columns: Default::default(),
        provenance: Provenance {
            source: "test".into(),
            format: "synthetic".into(),
            source_episode_index: ep,
        },
    }
}

fn small_files() -> WriterOptions {
    WriterOptions {
        chunks_size: 2,
        data_files_size_in_mb: 0.002,
        video_files_size_in_mb: 0.008,
        video: EncoderOptions {
            codec: Some(VideoCodec::Av1),
            crf: 20,
            gop: 4,
            preset: Some(12),
            threads: 0,
        },
        ..WriterOptions::default()
    }
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// Column equality at the bit level (floats compared by their bits, so NaN and -0.0 count).
fn assert_bit_exact(name: &str, a: &dyn Array, b: &dyn Array) {
    assert_eq!(a.data_type(), b.data_type(), "{name}: type");
    assert_eq!(a.len(), b.len(), "{name}: length");
    let bits = |x: &dyn Array| -> Vec<u64> {
        let flat: ArrayRef = match x.data_type() {
            DataType::FixedSizeList(_, _) => x.as_fixed_size_list().values().slice(
                x.as_fixed_size_list().offset() * x.as_fixed_size_list().value_length() as usize,
                x.len() * x.as_fixed_size_list().value_length() as usize,
            ),
            _ => x.slice(0, x.len()),
        };
        match flat.data_type() {
            DataType::Float32 => flat
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            DataType::Float64 => flat
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|v| v.to_bits())
                .collect(),
            _ => Vec::new(),
        }
    };
    assert_eq!(bits(a), bits(b), "{name}: float bits");
    if !matches!(a.data_type(), DataType::Float32 | DataType::Float64) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{name}: values");
    }
}

fn write_dataset(
    root: &Path,
    lens: &[usize],
    opts: WriterOptions,
) -> (Vec<Episode>, vadapt::io::lerobot::WriteSummary) {
    let mut w = LeRobotWriter::create(root, FPS, &features(), opts).unwrap();
    let mut eps = Vec::new();
    let mut first = 0;
    for (i, &n) in lens.iter().enumerate() {
        let ep = make_episode(i as u64, n, first, i % 2);
        first += n as u64;
        w.save_episode(&ep).unwrap();
        eps.push(ep);
    }
    (eps, w.finalize().unwrap())
}

#[test]
fn v3_round_trip_with_rolling_files_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    let lens = [9usize, 14, 6, 11, 8];
    let (eps, summary) = write_dataset(&root, &lens, small_files());
    let total: usize = lens.iter().sum();
    assert_eq!(
        (summary.episodes, summary.frames, summary.tasks),
        (5, total as u64, 2)
    );
    eprintln!(
        "data files {}, video files {}",
        summary.data_files.len(),
        summary.video_files.len()
    );
    assert!(
        summary.data_files.len() >= 3,
        "data files should roll over: {:?}",
        summary.data_files
    );
    assert!(
        summary.video_files.len() >= 2,
        "video files should roll over: {:?}",
        summary.video_files
    );
    let files = files_under(&root);
    assert!(
        files.iter().any(|f| f.starts_with("data/chunk-001/")),
        "chunks_size 2 should open chunk-001: {files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains(".partial")),
        "temporary files left: {files:?}"
    );
    for f in [
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing: {files:?}");
    }

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("meta/info.json")).unwrap())
            .unwrap();
    assert_eq!(info["codebase_version"], "v3.0");
    assert_eq!(info["total_episodes"], 5);
    assert_eq!(info["total_frames"], total);
    assert_eq!(info["total_tasks"], 2);
    assert_eq!(info["fps"], 10);
    let vinfo = &info["features"][CAM]["info"];
    assert_eq!(
        (
            vinfo["video.height"].as_u64(),
            vinfo["video.width"].as_u64()
        ),
        (Some(H as u64), Some(W as u64))
    );
    assert_eq!(vinfo["video.codec"], "av1");
    assert_eq!(vinfo["video.pix_fmt"], "yuv420p");
    assert_eq!(vinfo["video.fps"], 10);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("meta/stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["frame_index"]["count"][0], total);
    assert_eq!(stats["frame_index"]["max"][0], 13);
    assert_eq!(
        stats[CAM]["mean"].as_array().unwrap().len(),
        3,
        "image stats are per channel [3][1][1]"
    );
    let m = stats[CAM]["mean"][0][0][0].as_f64().unwrap();
    assert!(m > 0.0 && m < 1.0, "image stats in [0, 1]: {m}");

    let ds = LeRobotDataset::open(&root).unwrap();
    assert_eq!(ds.format(), "lerobot-v3.0");
    assert_eq!(ds.fps(), FPS);
    assert_eq!(
        ds.episode_indices(),
        (0..5).map(EpisodeIndex).collect::<Vec<_>>()
    );
    assert_eq!(
        ds.tasks().values().cloned().collect::<Vec<_>>(),
        TASKS.to_vec()
    );
    let mut worst = 0.0f64;
    for (want, idx) in eps.iter().zip(ds.episode_indices()) {
        let got = ds.read_episode(idx).unwrap();
        assert_eq!(got.task, want.task);
        assert_eq!(got.len(), want.len());
        assert_eq!(got.columns.num_columns(), want.columns.num_columns());
        for (f, col) in want
            .columns
            .schema()
            .fields()
            .iter()
            .zip(want.columns.columns())
        {
            let other = got
                .columns
                .column_by_name(f.name())
                .unwrap_or_else(|| panic!("column {} lost", f.name()));
            assert_bit_exact(
                &format!("episode {idx} {}", f.name()),
                col.as_ref(),
                other.as_ref(),
            );
        }
        let frames = got.cameras[CAM].decode().unwrap();
        let orig = want.cameras[CAM].decode().unwrap();
        assert_eq!(frames.len(), orig.len());
        for (a, b) in frames.iter().zip(&orig) {
            worst = worst.max(mean_abs_err(a, b));
        }
    }
    eprintln!("v3 round trip: worst per-frame mean abs error {worst:.3}/255");
    assert!(worst <= 3.0, "frames drifted: {worst}");
}

#[test]
fn reindexing_rewrites_only_the_index_columns() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    let mut w = LeRobotWriter::create(
        &root,
        FPS,
        &features(),
        WriterOptions {
            numbering: vadapt::io::lerobot::writer::Numbering::Reindex,
            ..small_files()
        },
    )
    .unwrap();
    // Source episodes 7 and 3 with foreign indices and swapped task indices.
    let a = make_episode(7, 5, 1000, 1);
    let b = make_episode(3, 4, 50, 0);
    w.save_episode(&a).unwrap();
    w.add_episode(&b).unwrap();
    let s = w.finalize().unwrap();
    assert_eq!((s.episodes, s.frames), (2, 9));
    let ds = LeRobotDataset::open(&root).unwrap();
    assert_eq!(ds.episode_indices(), vec![EpisodeIndex(0), EpisodeIndex(1)]);
    let mut next = 0i64;
    for (i, src) in [&a, &b].iter().enumerate() {
        let got = ds.read_episode(EpisodeIndex(i as u64)).unwrap();
        let n = src.len() as i64;
        assert_eq!(
            format!("{:?}", got.columns.column_by_name("episode_index").unwrap()),
            format!("{:?}", Int64Array::from(vec![i as i64; n as usize]))
        );
        assert_eq!(
            format!("{:?}", got.columns.column_by_name("index").unwrap()),
            format!(
                "{:?}",
                Int64Array::from((next..next + n).collect::<Vec<_>>())
            )
        );
        // Tasks are numbered in order of first appearance.
        assert_eq!(
            format!("{:?}", got.columns.column_by_name("task_index").unwrap()),
            format!("{:?}", Int64Array::from(vec![i as i64; n as usize]))
        );
        assert_eq!(got.task, src.task);
        next += n;
        for name in [
            "observation.state",
            "action",
            "next.reward",
            "next.done",
            "extra.f64",
            "timestamp",
            "frame_index",
        ] {
            assert_bit_exact(
                name,
                src.columns.column_by_name(name).unwrap().as_ref(),
                got.columns.column_by_name(name).unwrap().as_ref(),
            );
        }
    }
    assert_eq!(ds.tasks().get(&0).map(String::as_str), Some(TASKS[1]));
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A hand-made v2.1 dataset: one parquet and one mp4 per episode, jsonl metadata, plus an image column
/// stored as struct{bytes, path} (PNG).
fn make_v21(root: &Path, lens: &[usize]) -> Vec<Episode> {
    let mut feats = features();
    feats.insert(
        "observation.images.wrist".into(),
        Feature {
            names: Some(json!(["height", "width", "channel"])),
            ..feat("image", &[H as usize, W as usize, 3])
        },
    );
    let mut info = serde_json::Map::new();
    info.insert("codebase_version".into(), json!("v2.1"));
    info.insert("robot_type".into(), json!("test"));
    info.insert("total_episodes".into(), json!(lens.len()));
    info.insert("total_frames".into(), json!(lens.iter().sum::<usize>()));
    info.insert("total_tasks".into(), json!(2));
    info.insert("total_videos".into(), json!(lens.len()));
    info.insert("total_chunks".into(), json!(1));
    info.insert("chunks_size".into(), json!(1000));
    info.insert("fps".into(), json!(10));
    info.insert(
        "splits".into(),
        json!({"train": format!("0:{}", lens.len())}),
    );
    info.insert(
        "data_path".into(),
        json!("data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"),
    );
    info.insert(
        "video_path".into(),
        json!("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"),
    );
    info.insert("features".into(), serde_json::to_value(&feats).unwrap());
    std::fs::create_dir_all(root.join("meta")).unwrap();
    std::fs::write(
        root.join("meta/info.json"),
        serde_json::to_string_pretty(&info).unwrap(),
    )
    .unwrap();
    std::fs::write(
        root.join("meta/tasks.jsonl"),
        TASKS
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"task_index": i, "task": t}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let mut lines = String::new();
    let mut eps = Vec::new();
    let mut first = 0;
    for (i, &n) in lens.iter().enumerate() {
        let mut ep = make_episode(i as u64, n, first, i % 2);
        first += n as u64;
        lines +=
            &(json!({"episode_index": i, "tasks": [TASKS[i % 2]], "length": n}).to_string() + "\n");
        let frames = ep.cameras[CAM].decode().unwrap();
        video::encode_frames(
            root.join(format!("videos/chunk-000/{CAM}/episode_{i:06}.mp4")),
            &frames,
            FPS,
            &EncoderOptions {
                codec: Some(VideoCodec::H264),
                crf: 18,
                gop: 4,
                preset: None,
                threads: 0,
            },
        )
        .unwrap();
        // The wrist camera: PNG images inside the parquet.
        let wrist: Vec<image::RgbImage> = synthetic_frames(n, H, W, 7 + i as u32);
        let bytes = BinaryArray::from(
            wrist
                .iter()
                .map(png)
                .collect::<Vec<_>>()
                .iter()
                .map(|b| Some(b.as_slice()))
                .collect::<Vec<_>>(),
        );
        let paths = StringArray::from(vec![None::<&str>; n]);
        let img = StructArray::from(vec![
            (
                Arc::new(Field::new("bytes", DataType::Binary, true)),
                Arc::new(bytes) as ArrayRef,
            ),
            (
                Arc::new(Field::new("path", DataType::Utf8, true)),
                Arc::new(paths) as ArrayRef,
            ),
        ]);
        let mut fields: Vec<Field> = ep
            .columns
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut cols = ep.columns.columns().to_vec();
        fields.insert(
            0,
            Field::new("observation.images.wrist", img.data_type().clone(), true),
        );
        cols.insert(0, Arc::new(img));
        write_parquet(
            &root.join(format!("data/chunk-000/episode_{i:06}.parquet")),
            &RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(),
        );
        ep.cameras.insert(
            "observation.images.wrist".into(),
            Frames::from_images(wrist),
        );
        eps.push(ep);
    }
    std::fs::write(root.join("meta/episodes.jsonl"), lines).unwrap();
    eps
}

#[test]
fn reads_a_hand_made_v21_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("v21");
    let eps = make_v21(&root, &[6, 9, 4]);
    let ds = LeRobotDataset::open(&root).unwrap();
    assert_eq!(ds.format(), "lerobot-v2.1");
    assert_eq!(ds.episode_indices().len(), 3);
    for (want, idx) in eps.iter().zip(ds.episode_indices()) {
        let got = ds.read_episode(idx).unwrap();
        assert_eq!(got.task, want.task);
        assert!(
            got.columns
                .column_by_name("observation.images.wrist")
                .is_none(),
            "image column becomes a camera"
        );
        for (f, col) in want
            .columns
            .schema()
            .fields()
            .iter()
            .zip(want.columns.columns())
        {
            assert_bit_exact(
                f.name(),
                col.as_ref(),
                got.columns.column_by_name(f.name()).unwrap().as_ref(),
            );
        }
        for key in [CAM, "observation.images.wrist"] {
            let a = got.cameras[key].decode().unwrap();
            let b = want.cameras[key].decode().unwrap();
            assert_eq!(a.len(), b.len(), "{key}");
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| mean_abs_err(x, y))
                .fold(0.0, f64::max);
            if key == CAM {
                assert!(worst <= 3.0, "{key}: {worst}");
            } else {
                assert_eq!(worst, 0.0, "PNG frames are lossless");
            }
        }
    }
}

/// Path templates of a v2.1 dataset that lead outside its root (`..` above the root, an absolute path) are refused
/// when the dataset is opened, naming the template, its field and meta/info.json, even where the files they point
/// at exist; `..` that stays inside the root is fine (issue 19). The v3.0 cases are in the bad-input corpus.
#[test]
fn v21_path_templates_stay_inside_the_dataset_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("v21");
    make_v21(&root, &[4, 5]);
    copy_dir(&root.join("videos"), &dir.path().join("outside"));
    copy_dir(&root.join("data"), &dir.path().join("outside-data"));
    let info = std::fs::read_to_string(root.join("meta/info.json")).unwrap();
    let set = |field: &str, template: &str| {
        std::fs::write(root.join("meta/info.json"), &info).unwrap();
        edit_info(&root, |v| v[field] = json!(template));
    };
    let absolute = format!(
        "{}/chunk-{{episode_chunk:03d}}/episode_{{episode_index:06d}}.parquet",
        dir.path().join("outside-data").display()
    );
    let refused = [
        (
            "video_path",
            "../outside/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        ),
        ("data_path", absolute.as_str()),
        (
            "data_path",
            "data/../../v21/data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        ),
    ];
    for (field, template) in refused {
        set(field, template);
        let e = LeRobotDataset::open(&root).unwrap_err();
        assert_error_names(&e, "meta/info.json", None, Some(field));
        let msg = e.to_string();
        assert!(
            msg.ends_with(&format!("{template:?} leads outside the dataset root")),
            "{msg}"
        );
    }
    set(
        "video_path",
        "videos/chunk-{episode_chunk:03d}/../chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    );
    let ds = LeRobotDataset::open(&root).unwrap();
    let ep = ds.read_episode(EpisodeIndex(1)).unwrap();
    assert_eq!(ep.cameras[CAM].decode().unwrap().len(), 5);
}

/// An image stored by path (`bytes` null) is read relative to the dataset root, and only from inside it (issue 19).
#[test]
fn v21_image_paths_stay_inside_the_dataset_root() {
    const WRIST: &str = "observation.images.wrist";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("v21");
    let eps = make_v21(&root, &[3]);
    let wrist = eps[0].cameras[WRIST].decode().unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    for (i, f) in wrist.iter().enumerate() {
        std::fs::write(root.join(format!("images/{i}.png")), png(f)).unwrap();
        std::fs::write(dir.path().join(format!("{i}.png")), png(f)).unwrap();
    }
    let data = root.join("data/chunk-000/episode_000000.parquet");
    let batch = {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&data).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    };
    // The wrist column with every image given by `{prefix}{frame}.png` instead of its bytes.
    let by_path = |prefix: &str| {
        let paths: Vec<Option<String>> = (0..wrist.len())
            .map(|i| Some(format!("{prefix}{i}.png")))
            .collect();
        let img = StructArray::from(vec![
            (
                Arc::new(Field::new("bytes", DataType::Binary, true)),
                Arc::new(BinaryArray::from(vec![None::<&[u8]>; wrist.len()])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("path", DataType::Utf8, true)),
                Arc::new(StringArray::from(paths)) as ArrayRef,
            ),
        ]);
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() == WRIST {
                fields.push(Field::new(WRIST, img.data_type().clone(), true));
                cols.push(Arc::new(img.clone()) as ArrayRef);
            } else {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
        write_parquet(
            &data,
            &RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(),
        );
    };
    by_path("images/");
    let got = LeRobotDataset::open(&root)
        .unwrap()
        .read_episode(EpisodeIndex(0))
        .unwrap();
    assert_eq!(got.cameras[WRIST].decode().unwrap(), wrist);
    by_path("../");
    let e = LeRobotDataset::open(&root)
        .unwrap()
        .read_episode(EpisodeIndex(0))
        .unwrap_err();
    assert_error_names(&e, "episode_000000.parquet", Some(0), Some(WRIST));
    assert!(
        e.to_string()
            .ends_with("image path \"../0.png\" leads outside the dataset root"),
        "{e}"
    );
}

fn assert_error_names(e: &Error, file: &str, episode: Option<u64>, field: Option<&str>) {
    let msg = e.to_string();
    let loc = e
        .location()
        .unwrap_or_else(|| panic!("no location in {msg}"));
    let path = loc
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    assert!(path.ends_with(file), "error should name {file}: {msg}");
    assert_eq!(loc.episode, episode, "episode in {msg}");
    if let Some(field) = field {
        assert_eq!(loc.field.as_deref(), Some(field), "field in {msg}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dst = to.join(&f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&f), dst).unwrap();
    }
}

fn edit_info(root: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = root.join("meta/info.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Rewrite the episodes table with one column replaced.
fn edit_episodes(root: &Path, column: &str, f: impl Fn(&dyn Array) -> Option<ArrayRef>) {
    let p = root.join("meta/episodes/chunk-000/file-000.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&p).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (fl, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if fl.name() == column {
            if let Some(new) = f(c.as_ref()) {
                fields.push(Field::new(fl.name(), new.data_type().clone(), true));
                cols.push(new);
            }
        } else {
            fields.push(fl.as_ref().clone());
            cols.push(c.clone());
        }
    }
    write_parquet(
        &p,
        &RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(),
    );
}

#[test]
fn bad_datasets_are_errors_naming_file_episode_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let _ = write_dataset(
        &good,
        &[5, 7, 6],
        WriterOptions {
            video_files_size_in_mb: 100.0,
            ..small_files()
        },
    );
    let fresh = |name: &str| -> PathBuf {
        let p = dir.path().join(name);
        copy_dir(&good, &p);
        p
    };

    // info.json without features.
    let r = fresh("nofeatures");
    edit_info(&r, |v| {
        v.as_object_mut().unwrap().remove("features");
    });
    assert_error_names(
        &LeRobotDataset::open(&r).unwrap_err(),
        "meta/info.json",
        None,
        Some("features"),
    );

    // Unknown codebase_version.
    let r = fresh("version");
    edit_info(&r, |v| v["codebase_version"] = json!("v1.6"));
    let e = LeRobotDataset::open(&r).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_error_names(&e, "meta/info.json", None, Some("codebase_version"));

    // Missing video file.
    let r = fresh("novideo");
    std::fs::remove_file(r.join(format!("videos/{CAM}/chunk-000/file-000.mp4"))).unwrap();
    let ds = LeRobotDataset::open(&r).unwrap();
    assert_error_names(
        &ds.read_episode(EpisodeIndex(1)).unwrap_err(),
        &format!("videos/{CAM}/chunk-000/file-000.mp4"),
        Some(1),
        Some(CAM),
    );

    // Truncated and corrupt mp4.
    let r = fresh("truncated");
    let mp4 = r.join(format!("videos/{CAM}/chunk-000/file-000.mp4"));
    let bytes = std::fs::read(&mp4).unwrap();
    std::fs::write(&mp4, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let ds = LeRobotDataset::open(&r)
        .unwrap()
        .without_video_duration_check();
    let e = ds
        .read_episode(EpisodeIndex(2))
        .and_then(|ep| ep.cameras[CAM].decode().map(|_| ()))
        .unwrap_err();
    assert_error_names(&e, "file-000.mp4", Some(2), Some(CAM));
    let r = fresh("corrupt");
    let mp4 = r.join(format!("videos/{CAM}/chunk-000/file-000.mp4"));
    std::fs::write(&mp4, vec![0u8; bytes.len()]).unwrap();
    let e = LeRobotDataset::open(&r)
        .unwrap()
        .read_episode(EpisodeIndex(0))
        .unwrap_err();
    assert_error_names(&e, "file-000.mp4", Some(0), Some(CAM));

    // Episode metadata pointing past the video end: caught when reading, and when decoding lazily.
    // The span moves as a whole (from and to), so only the video's end disagrees with it (issue 24: a span that
    // runs backwards or does not hold the rows is its own error).
    let r = fresh("pastend");
    for end in ["from_timestamp", "to_timestamp"] {
        let key = format!("videos/{CAM}/{end}");
        edit_episodes(&r, &key, |c| {
            let v: Vec<f64> = c
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .enumerate()
                .map(|(i, x)| if i == 2 { x + 0.5 } else { *x })
                .collect();
            Some(Arc::new(Float64Array::from(v)))
        });
    }
    let ds = LeRobotDataset::open(&r).unwrap();
    ds.read_episode(EpisodeIndex(1)).unwrap();
    assert_error_names(
        &ds.read_episode(EpisodeIndex(2)).unwrap_err(),
        "file-000.mp4",
        Some(2),
        Some(&format!("videos/{CAM}/to_timestamp")),
    );
    let lazy = LeRobotDataset::open(&r)
        .unwrap()
        .without_video_duration_check()
        .read_episode(EpisodeIndex(2))
        .unwrap();
    assert_error_names(
        &lazy.cameras[CAM].decode().unwrap_err(),
        "file-000.mp4",
        Some(2),
        Some(CAM),
    );

    // Episodes table without a required column.
    let r = fresh("nolength");
    edit_episodes(&r, "length", |_| None);
    assert_error_names(
        &LeRobotDataset::open(&r).unwrap_err(),
        "meta/episodes/chunk-000/file-000.parquet",
        Some(0),
        Some("length"),
    );

    // Data parquet without a declared feature column.
    let r = fresh("nocolumn");
    let data = r.join("data/chunk-000/file-000.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&data).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let i = batch.schema().index_of("action").unwrap();
    let mut b = batch.clone();
    b.remove_column(i);
    write_parquet(&data, &b);
    assert_error_names(
        &LeRobotDataset::open(&r)
            .unwrap()
            .read_episode(EpisodeIndex(0))
            .unwrap_err(),
        "data/chunk-000/file-000.parquet",
        Some(0),
        Some("action"),
    );
}

#[test]
fn failed_or_abandoned_writes_leave_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    // An episode missing a declared column is refused before anything is written.
    let root = dir.path().join("refused");
    let mut w = LeRobotWriter::create(&root, FPS, &features(), small_files()).unwrap();
    let mut ep = make_episode(0, 5, 0, 0);
    let i = ep.columns.schema().index_of("action").unwrap();
    ep.columns.remove_column(i);
    assert_error_names_no_file(&w.save_episode(&ep).unwrap_err(), Some(0), "action");
    // A camera with the wrong number of frames, too.
    let mut ep = make_episode(0, 5, 0, 0);
    ep.cameras.insert(
        CAM.into(),
        Frames::from_images(synthetic_frames(4, H, W, 0)),
    );
    assert_error_names_no_file(&w.save_episode(&ep).unwrap_err(), Some(0), CAM);
    // The writer is still usable after a refused episode, also once files exist.
    w.save_episode(&make_episode(0, 5, 0, 0)).unwrap();
    let mut bad = make_episode(1, 5, 5, 0);
    bad.cameras.insert(
        CAM.into(),
        Frames::from_images(synthetic_frames(5, H, W + 2, 0)),
    );
    assert_error_names_no_file(&w.save_episode(&bad).unwrap_err(), Some(1), CAM);
    w.save_episode(&make_episode(1, 5, 5, 0)).unwrap();
    assert_eq!(w.num_episodes(), 2);
    drop(w);
    let left = files_under(&root);
    assert!(
        !left
            .iter()
            .any(|f| f.contains(".partial") || f.starts_with("meta/")),
        "abandoned writer left {left:?}"
    );

    // An abandoned write after several rolled files: complete files only, and no info.json.
    let root = dir.path().join("abandoned");
    let mut w = LeRobotWriter::create(&root, FPS, &features(), small_files()).unwrap();
    for i in 0..4u64 {
        w.save_episode(&make_episode(i, 8, i * 8, 0)).unwrap();
    }
    drop(w);
    let left = files_under(&root);
    assert!(!left.iter().any(|f| f.contains(".partial")), "{left:?}");
    assert!(!left.contains(&"meta/info.json".to_string()), "{left:?}");
    assert!(LeRobotDataset::open(&root).is_err());
    // Every data file left is a complete parquet file.
    for f in left.iter().filter(|f| f.ends_with(".parquet")) {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(root.join(f)).unwrap(),
        )
        .unwrap();
    }
    // Writing into a non-empty directory is refused.
    assert!(LeRobotWriter::create(&root, FPS, &features(), small_files()).is_err());
}

fn assert_error_names_no_file(e: &Error, episode: Option<u64>, field: &str) {
    let loc = e.location().unwrap_or_else(|| panic!("no location: {e}"));
    assert_eq!(loc.episode, episode, "{e}");
    assert_eq!(loc.field.as_deref(), Some(field), "{e}");
}
