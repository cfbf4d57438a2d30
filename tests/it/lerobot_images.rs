//! LeRobot datasets with cameras stored as images (`dtype: "image"`, PNG in the data parquet, lerobot's
//! `use_videos=False` layout): written by `LeRobotWriter` with `CameraStorage::Images`, by `vadapt convert
//! --storage images` and by `vadapt augment` with `[output] storage = "images"`; read back pixel-exact, listed by
//! `inspect`, deterministic under threads, kill + resume and shards + merge.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use vadapt::io::lerobot::writer::{LeRobotWriter, Numbering, WriterOptions};
use vadapt::io::lerobot::CameraStorage;
use vadapt::io::open_dataset;
use vadapt::pipeline::{self, PipelineConfig};

use crate::common::{repo, vadapt, vadapt_fails};
use crate::pipeline::{
    assert_same_dataset, killed_then_resumed, opts, pipeline_toml, sharded_then_merged,
    small_dataset, KEY,
};

/// Every `*.parquet` under `dir`, sorted.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The lerobot image layout: no videos, `video_path` null, every camera `image` [h, w, 3], and each data file's
/// camera columns `struct<bytes: binary, path: string>` declared `Image` in the `huggingface` schema metadata.
fn assert_image_layout(root: &Path, cameras: &[&str], hw: (usize, usize)) {
    assert!(!root.join("videos").exists(), "no videos/ directory");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("meta/info.json")).unwrap()).unwrap();
    assert_eq!(info["video_path"], serde_json::Value::Null);
    for cam in cameras {
        let f = &info["features"][cam];
        assert_eq!(f["dtype"], "image", "{cam}: {f}");
        assert_eq!(f["shape"], serde_json::json!([hw.0, hw.1, 3]), "{cam}");
        assert_eq!(
            f["names"],
            serde_json::json!(["height", "width", "channels"])
        );
        assert!(
            f.get("info").is_none(),
            "{cam}: an image feature has no video info"
        );
    }
    let data = parquet_files(&root.join("data"));
    assert!(!data.is_empty());
    for file in data {
        let b =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        let schema = b.schema().clone();
        let hf: serde_json::Value =
            serde_json::from_str(&schema.metadata()["huggingface"]).unwrap();
        let batch = b.build().unwrap().next().unwrap().unwrap();
        for cam in cameras {
            let field = schema.field_with_name(cam).unwrap();
            let DataType::Struct(children) = field.data_type() else {
                panic!("{}: {cam} is {}", file.display(), field.data_type());
            };
            let kids: Vec<(&str, &DataType)> = children
                .iter()
                .map(|c| (c.name().as_str(), c.data_type()))
                .collect();
            assert_eq!(
                kids,
                [("bytes", &DataType::Binary), ("path", &DataType::Utf8)]
            );
            assert_eq!(
                hf["info"]["features"][cam],
                serde_json::json!({"_type": "Image"})
            );
            let col = batch.column_by_name(cam).unwrap().as_struct();
            assert_eq!(&col.column(0).as_binary::<i32>().value(0)[..4], b"\x89PNG");
            assert_eq!(
                col.column(1).as_string::<i32>().value(0),
                "frame-000000.png"
            );
        }
    }
}

#[test]
fn lerobot_image_storage_round_trips_pixels_and_inspect_lists_image_features() {
    let dir = tempfile::tempdir().unwrap();
    // The RLDS sample: JPEG frames, decodable without FFmpeg.
    let src = open_dataset(&repo().join("datasets/sample/rlds")).unwrap();
    let cams = ["observation.images.rgb", "observation.images.sim"];
    for (name, data_mb) in [("one_file", 100.0), ("file_per_episode", 1e-9)] {
        let root = dir.path().join(name);
        let mut w = LeRobotWriter::create(
            &root,
            src.fps(),
            src.features(),
            WriterOptions {
                storage: CameraStorage::Images,
                numbering: Numbering::Reindex,
                data_files_size_in_mb: data_mb,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        for idx in src.episode_indices() {
            w.save_episode(&src.read_episode(idx).unwrap()).unwrap();
        }
        let summary = w.finalize().unwrap();
        assert!(summary.video_files.is_empty());
        assert_eq!(summary.data_files.len(), if data_mb < 1.0 { 4 } else { 1 });
        assert_image_layout(&root, &cams, (90, 160));

        let back = open_dataset(&root).unwrap();
        assert_eq!(back.episode_indices().len(), 4);
        for (k, idx) in src.episode_indices().into_iter().enumerate() {
            let (a, b) = (
                src.read_episode(idx).unwrap(),
                back.read_episode(back.episode_indices()[k]).unwrap(),
            );
            assert_eq!(a.task, b.task);
            for col in ["action", "observation.state", "timestamp"] {
                assert_eq!(
                    a.columns.column_by_name(col).unwrap().to_data(),
                    b.columns.column_by_name(col).unwrap().to_data(),
                    "episode {k} {col}"
                );
            }
            for cam in cams {
                let (fa, fb) = (
                    a.cameras[cam].decode().unwrap(),
                    b.cameras[cam].decode().unwrap(),
                );
                assert_eq!(fa.len(), 24);
                assert!(
                    fa.iter().zip(&fb).all(|(x, y)| x == y) && fa.len() == fb.len(),
                    "episode {k} {cam}: the PNG frames are not the source's pixels"
                );
            }
        }
    }
    let root = dir.path().join("one_file");
    let text = vadapt(&["inspect", root.to_str().unwrap(), "--check"]);
    for cam in cams {
        let line = text
            .lines()
            .find(|l| l.contains(cam))
            .unwrap_or_else(|| panic!("inspect does not list {cam}:\n{text}"));
        assert!(line.contains("image"), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&vadapt(&["inspect", root.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["features"][cams[0]]["dtype"], "image");
    assert_eq!(json["camera_keys"], serde_json::json!(cams));

    // `vadapt convert --storage images` writes the same dataset the library did.
    let converted = dir.path().join("converted");
    vadapt(&[
        "convert",
        repo().join("datasets/sample/rlds").to_str().unwrap(),
        converted.to_str().unwrap(),
        "--storage",
        "images",
    ]);
    assert_same_dataset(&root, &converted);
    let err = vadapt_fails(&[
        "convert",
        root.to_str().unwrap(),
        dir.path().join("rlds").to_str().unwrap(),
        "--to",
        "rlds",
        "--storage",
        "images",
    ]);
    assert!(err.contains("--storage applies to --to lerobot"), "{err}");
}

/// `[output] storage = "images"` in the tiny pipeline of tests/it/pipeline.rs.
fn images_pipeline(dir: &Path) -> PathBuf {
    let toml = pipeline_toml(dir, "paired", "");
    let text = std::fs::read_to_string(&toml).unwrap();
    let codec = "codec = \"h264\"\n";
    assert!(text.contains(codec), "pipeline_toml changed: {text}");
    let p = dir.join("p_images.toml");
    std::fs::write(
        &p,
        text.replace(codec, &format!("{codec}storage = \"images\"\n")),
    )
    .unwrap();
    p
}

#[test]
fn pipeline_image_storage_is_lossless_and_byte_identical_under_threads_resume_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 3, 10);
    let toml = images_pipeline(dir.path());
    let cfg = PipelineConfig::load(&toml).unwrap();
    let reference = dir.path().join("ref");
    let t0 = std::time::Instant::now();
    let s = pipeline::run(&cfg, &toml, &opts(&data, &reference)).unwrap();
    eprintln!(
        "images pipeline reference run: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((s.episodes_written, s.frames_written), (3, 30));
    // Every camera, the generated one and the copied source cameras, as images; the source's pixels exactly.
    let cams = [KEY, "observation.images.sim", "observation.images.edge_sim"];
    assert_image_layout(&reference, &cams, (24, 40));
    let (src, out) = (
        open_dataset(&data).unwrap(),
        open_dataset(&reference).unwrap(),
    );
    for idx in src.episode_indices() {
        let (a, b) = (
            src.read_episode(idx).unwrap(),
            out.read_episode(idx).unwrap(),
        );
        assert_eq!(a.columns, b.columns, "episode {}: source columns", idx.0);
        for cam in &cams[..2] {
            assert_eq!(
                a.cameras[*cam].decode().unwrap(),
                b.cameras[*cam].decode().unwrap(),
                "episode {} {cam}: copied losslessly",
                idx.0
            );
        }
        assert_eq!(b.cameras[cams[2]].decode().unwrap().len(), 10);
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert_eq!(prov["config"]["output"]["storage"], "images");

    // Two sampler threads, killed and resumed: the same bytes.
    let killed = dir.path().join("killed");
    killed_then_resumed(&toml, &data, &killed, &[600, 1800]);
    assert_same_dataset(&reference, &killed);

    // --shard 0/2 + --shard 1/2 + merge == one run.
    sharded_then_merged(dir.path(), &cfg, &toml, &data, &|_, part, _| {
        assert_image_layout(part, &cams, (24, 40))
    });
    assert_same_dataset(&reference, &dir.path().join("merged"));

    // preview and eval read the images dataset through the reader.
    let png = dir.path().join("sheet.png");
    vadapt(&[
        "preview",
        reference.to_str().unwrap(),
        "--columns",
        "4",
        "--out",
        png.to_str().unwrap(),
    ]);
    let sheet = image::open(&png).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (4 * 42 + 2, 3 * 26 + 2));
    let json = dir.path().join("eval.json");
    vadapt(&[
        "eval",
        reference.to_str().unwrap(),
        "--key",
        cams[2],
        "--condition-key",
        KEY,
        "--json",
        json.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["episodes"].as_array().unwrap().len(), 3);
    // The copied source camera against the source dataset's (mp4): identical pixels.
    let cmp = dir.path().join("cmp.json");
    vadapt(&[
        "eval",
        reference.to_str().unwrap(),
        "--key",
        KEY,
        "--reference-dataset",
        data.to_str().unwrap(),
        "--json",
        cmp.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cmp).unwrap()).unwrap();
    assert_eq!(v["total"]["identical"], true, "{v}");
    assert_eq!(v["total"]["frames"], 30);
}
