//! RLDS: TFRecord framing and CRCs, tf.train.Example decoding, the features.json-driven reader on data
//! our writer produced (LanguageTable layout) and on data tensorflow-datasets' own writer produced.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Int64Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use image::RgbImage;
use prost::Message;
use vadapt::episode::{Episode, EpisodeIndex, Frames, Provenance};
use vadapt::error::Location;
use vadapt::io::rlds::example::{Example, Feature};
use vadapt::io::rlds::tfrecord::{masked_crc32c, TfRecordReader, TfRecordWriter};
use vadapt::io::rlds::{
    decode_instruction, encode_instruction, RldsDataset, RldsWriteOptions, RldsWriter,
};
use vadapt::io::EpisodeSource;

fn write_records(path: &Path, records: &[Vec<u8>]) {
    let mut w = TfRecordWriter::create(path).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap();
}

fn read_all(path: &Path) -> vadapt::error::Result<Vec<Vec<u8>>> {
    TfRecordReader::open(path)?.collect()
}

#[test]
fn masked_crc_matches_tensorflow_definition() {
    // crc32c("123456789") = 0xE3069283 (the CRC-32C check value); mask = rotr15 + 0xa282ead8.
    let crc: u32 = 0xE306_9283;
    let expected = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
    assert_eq!(masked_crc32c(b"123456789"), expected);
}

#[test]
fn tfrecord_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tfrecord");
    let records: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        Vec::new(),
        (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect(),
    ];
    write_records(&path, &records);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes.len(),
        records.iter().map(|r| r.len() + 16).sum::<usize>()
    );
    assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), 5);
    assert_eq!(read_all(&path).unwrap(), records);
}

#[test]
fn tfrecord_corruption_is_reported_with_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tfrecord");
    let records = vec![b"first record".to_vec(), b"second record".to_vec()];
    write_records(&path, &records);
    let good = std::fs::read(&path).unwrap();
    let second = 12 + 16; // start of record 1

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated data",
            good[..good.len() - 6].to_vec(),
            "truncated",
        ),
        ("truncated header", good[..second + 5].to_vec(), "truncated"),
        (
            "bad length crc",
            {
                let mut b = good.clone();
                b[second + 9] ^= 1;
                b
            },
            "length CRC",
        ),
        (
            "bad data crc",
            {
                let mut b = good.clone();
                b[second + 14] ^= 0x40;
                b
            },
            "data CRC",
        ),
        (
            "bad stored data crc",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 1] ^= 1;
                b
            },
            "data CRC",
        ),
    ];
    for (name, bytes, needle) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = TfRecordReader::open(&path).unwrap();
        assert_eq!(
            reader.next_record().unwrap().unwrap(),
            records[0],
            "{name}: record 0 is intact"
        );
        let err = reader.next_record().expect_err(name);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(
            msg.contains("x.tfrecord"),
            "{name}: message names the file: {msg}"
        );
        assert_eq!(
            err.location().and_then(|l| l.episode),
            Some(1),
            "{name}: names record 1: {msg}"
        );
    }
}

#[test]
fn example_decodes_packed_and_unpacked_lists() {
    // Hand-encode an Example whose Int64List is NOT packed (field 1 repeated as varints) and whose
    // FloatList is packed; prost must accept both.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    fn len_delim(tag: u32, body: &[u8], out: &mut Vec<u8>) {
        varint(((tag << 3) | 2) as u64, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut ints = Vec::new();
    for v in [3u64, 300, 0] {
        varint(1 << 3, &mut ints); // field 1, varint
        varint(v, &mut ints);
    }
    let mut int_feature = Vec::new();
    len_delim(3, &ints, &mut int_feature);
    let floats: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let mut float_list = Vec::new();
    len_delim(1, &floats, &mut float_list);
    let mut float_feature = Vec::new();
    len_delim(2, &float_list, &mut float_feature);
    let mut features = Vec::new();
    for (k, f) in [("a", &int_feature), ("b", &float_feature)] {
        let mut entry = Vec::new();
        len_delim(1, k.as_bytes(), &mut entry);
        len_delim(2, f, &mut entry);
        len_delim(1, &entry, &mut features);
    }
    let mut example = Vec::new();
    len_delim(1, &features, &mut example);

    let map = Example::decode_at(&example, &Location::none())
        .unwrap()
        .into_map();
    assert_eq!(map["a"], Feature::int64s(vec![3, 300, 0]));
    assert_eq!(map["b"], Feature::floats(vec![1.5, -2.0]));
    // Our encoding is packed: decoding it again gives the same message.
    let again = Example::decode(Example::from_features(map.clone()).to_bytes().as_slice())
        .unwrap()
        .into_map();
    assert_eq!(again, map);
}

#[test]
fn instruction_codes_round_trip_and_reject_invalid_utf8() {
    let loc = Location::file("x")
        .episode(4)
        .field("steps/observation/instruction");
    let text = "slide the yellow pentagon up ✓";
    let codes = encode_instruction(text, 512, &loc).unwrap();
    assert_eq!(codes.len(), 512);
    assert_eq!(codes[text.len()], 0);
    assert_eq!(decode_instruction(&codes, &loc).unwrap(), text);
    assert!(encode_instruction(&"x".repeat(513), 512, &loc).is_err());

    let mut bad = codes.clone();
    bad[2] = 0xff; // not valid UTF-8 anywhere
    let msg = decode_instruction(&bad, &loc).unwrap_err().to_string();
    assert!(
        msg.contains("UTF-8") && msg.contains("episode 4") && msg.contains("instruction"),
        "{msg}"
    );
    bad[2] = 300; // not a byte
    assert!(decode_instruction(&bad, &loc).is_err());
}

/// A LanguageTable-like episode in memory with distinct values everywhere.
fn episode(index: u64, n: usize, task: &str, size: (u32, u32)) -> Episode {
    let (h, w) = size;
    let frames: Vec<RgbImage> = (0..n)
        .map(|t| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 3 + t as u32 * 20) as u8,
                    (y * 5) as u8,
                    (100 + 30 * index) as u8,
                ])
            })
        })
        .collect();
    let sim: Vec<RgbImage> = frames
        .iter()
        .map(|f| {
            RgbImage::from_fn(w, h, |x, y| {
                let p = f.get_pixel(x, y);
                image::Rgb([p[2], p[1], p[0]])
            })
        })
        .collect();
    let v = |k: f32| -> Vec<f32> {
        (0..2 * n)
            .map(|i| k + index as f32 * 10.0 + i as f32 * 0.37 - 1.0 / 3.0)
            .collect()
    };
    let pair = |vals: Vec<f32>| -> ArrayRef {
        Arc::new(
            FixedSizeListArray::try_new(
                Arc::new(Field::new("item", DataType::Float32, true)),
                2,
                Arc::new(Float32Array::from(vals)),
                None,
            )
            .unwrap(),
        )
    };
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("observation.state", pair(v(0.5))),
        ("observation.effector_target_translation", pair(v(-4.25))),
        ("action", pair(v(7.0))),
        (
            "next.reward",
            Arc::new(Float32Array::from(
                (0..n).map(|i| i as f32 / 7.0).collect::<Vec<_>>(),
            )),
        ),
        (
            "is_first",
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i == 0).collect::<Vec<_>>(),
            )),
        ),
        (
            "is_last",
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i + 1 == n).collect::<Vec<_>>(),
            )),
        ),
        (
            "is_terminal",
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i + 1 == n).collect::<Vec<_>>(),
            )),
        ),
        (
            "timestamp",
            Arc::new(Float32Array::from(
                (0..n).map(|i| i as f32 / 10.0).collect::<Vec<_>>(),
            )),
        ),
        (
            "frame_index",
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        ),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(k, a)| Field::new(*k, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    );
    let columns =
        RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|c| c.1).collect()).unwrap();
    let mut cameras = BTreeMap::new();
    cameras.insert(
        "observation.images.rgb".to_string(),
        Frames::from_images(frames),
    );
    cameras.insert(
        "observation.images.sim".to_string(),
        Frames::from_images(sim),
    );
    Episode {
        index: EpisodeIndex(index),
        task: task.into(),
        fps: 10.0,
        cameras,
        columns,
        episode_columns: Default::default(),
        provenance: Provenance::default(),
    }
}

fn floats(col: &ArrayRef) -> Vec<f32> {
    match col.data_type() {
        DataType::FixedSizeList(..) => col
            .as_fixed_size_list()
            .values()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec(),
        _ => col.as_primitive::<Float32Type>().values().to_vec(),
    }
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.as_raw().len() as f64
}

#[test]
fn reader_reads_what_the_writer_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = [
        "push the red star to the blue cube",
        "move the green moon left",
        "slide the yellow pentagon up ✓",
    ];
    let lengths = [5usize, 3, 4];
    let episodes: Vec<Episode> = (0..3)
        .map(|i| episode(i as u64, lengths[i], tasks[i], (24, 40)))
        .collect();
    let opts = RldsWriteOptions {
        episodes_per_shard: 2,
        ..Default::default()
    };
    let mut writer = RldsWriter::create(dir.path(), opts).unwrap();
    for ep in &episodes {
        writer.write_episode(ep).unwrap();
    }
    let version_dir = writer.finish().unwrap();
    assert!(version_dir
        .join("language_table-train.tfrecord-00000-of-00002")
        .is_file());
    assert!(version_dir
        .join("language_table-train.tfrecord-00001-of-00002")
        .is_file());

    // features.json follows the published LanguageTable spec for every feature the spec has.
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(version_dir.join("features.json")).unwrap())
            .unwrap();
    let spec_path = common::repo().join("tests/fixtures/formats/language_table_rlds/features.json");
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&spec_path)
            .unwrap_or_else(|e| panic!("{}: {e}", spec_path.display())),
    )
    .unwrap();
    let leaves =
        |v: &serde_json::Value| vadapt::io::rlds::parse_features(v, &Location::none()).unwrap();
    let our_leaves = leaves(&ours);
    for leaf in leaves(&spec) {
        let mine = our_leaves
            .iter()
            .find(|l| l.path == leaf.path)
            .unwrap_or_else(|| panic!("{} missing", leaf.path));
        if leaf.path != "steps/observation/rgb" {
            assert_eq!(mine, &leaf, "{}", leaf.path);
        }
    }

    // Opening the dataset directory picks the version directory.
    let ds = RldsDataset::open(dir.path()).unwrap();
    assert_eq!(ds.format(), "rlds");
    assert_eq!(ds.episode_indices().len(), 3);
    assert_eq!(
        ds.features()["observation.images.rgb"].shape,
        vec![24, 40, 3]
    );
    assert_eq!(ds.features()["observation.state"].shape, vec![2]);
    assert_eq!(ds.features()["next.reward"].shape, vec![1]);
    // Read out of order first (exercises re-opening shards and the global index), then in order.
    for i in [2u64, 0, 1, 2] {
        let got = ds.read_episode(EpisodeIndex(i)).unwrap();
        let want = &episodes[i as usize];
        assert_eq!(got.len(), lengths[i as usize]);
        assert_eq!(got.task, tasks[i as usize]);
        for key in [
            "observation.state",
            "observation.effector_target_translation",
            "action",
            "next.reward",
        ] {
            let (a, b) = (
                floats(got.columns.column_by_name(key).unwrap()),
                floats(want.columns.column_by_name(key).unwrap()),
            );
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{key} bit-exact"
            );
        }
        for key in ["is_first", "is_last", "is_terminal"] {
            assert_eq!(
                got.columns.column_by_name(key).unwrap().as_boolean(),
                want.columns.column_by_name(key).unwrap().as_boolean(),
                "{key}"
            );
        }
        let ints = |k: &str| {
            got.columns
                .column_by_name(k)
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        };
        let start: i64 = lengths[..i as usize].iter().sum::<usize>() as i64;
        assert_eq!(
            ints("index"),
            (start..start + lengths[i as usize] as i64).collect::<Vec<_>>()
        );
        assert_eq!(ints("episode_index"), vec![i as i64; lengths[i as usize]]);
        assert_eq!(
            ints("frame_index"),
            (0..lengths[i as usize] as i64).collect::<Vec<_>>()
        );
        let ts = floats(got.columns.column_by_name("timestamp").unwrap());
        assert_eq!(
            ts.last().copied(),
            Some((lengths[i as usize] - 1) as f32 / 10.0)
        );
        for cam in ["observation.images.rgb", "observation.images.sim"] {
            let (a, b) = (
                got.cameras[cam].decode().unwrap(),
                want.cameras[cam].decode().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                let d = mean_abs_diff(x, y);
                assert!(d < 3.0, "{cam}: JPEG q95 mean abs diff {d}");
            }
        }
    }
}

#[test]
fn writer_rejects_schema_changes_and_reader_names_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = RldsWriter::create(dir.path(), RldsWriteOptions::default()).unwrap();
    writer.write_episode(&episode(0, 2, "a", (8, 8))).unwrap();
    assert!(
        writer.write_episode(&episode(1, 2, "b", (8, 10))).is_err(),
        "a different image size is a schema change"
    );
    writer.write_episode(&episode(2, 3, "c", (8, 8))).unwrap();
    let vdir = writer.finish().unwrap();
    let shard = vdir.join("language_table-train.tfrecord-00000-of-00001");

    // Replace record 1 with bytes that are framed correctly but are not an Example.
    let records = read_all(&shard).unwrap();
    write_records(&shard, &[records[0].clone(), vec![0x0a, 0x05, 0x01]]);
    let ds = RldsDataset::open(&vdir).unwrap();
    assert!(ds.read_episode(EpisodeIndex(0)).is_ok());
    let msg = ds.read_episode(EpisodeIndex(1)).unwrap_err().to_string();
    assert!(
        msg.contains("malformed tf.train.Example")
            && msg.contains("episode 1")
            && msg.contains("00000-of-00001"),
        "{msg}"
    );

    // An Example whose action list is one value short names the field.
    let mut map = Example::decode(records[1].as_slice()).unwrap().into_map();
    map.insert("steps/action".into(), Feature::floats(vec![0.0; 5]));
    write_records(
        &shard,
        &[
            records[0].clone(),
            Example::from_features(map.clone()).to_bytes(),
        ],
    );
    let ds = RldsDataset::open(&vdir).unwrap();
    let msg = ds.read_episode(EpisodeIndex(1)).unwrap_err().to_string();
    assert!(
        msg.contains("steps/action") && msg.contains("episode 1"),
        "{msg}"
    );

    // Invalid UTF-8 in the instruction names episode and field.
    let mut codes = encode_instruction("abc", 512, &Location::none()).unwrap();
    codes[0] = 0xc3; // a lead byte followed by 'b'
    map.insert("steps/action".into(), Feature::floats(vec![0.0; 6]));
    map.insert(
        "steps/observation/instruction".into(),
        Feature::int64s(codes.repeat(3)),
    );
    write_records(
        &shard,
        &[records[0].clone(), Example::from_features(map).to_bytes()],
    );
    let ds = RldsDataset::open(&vdir).unwrap();
    let msg = ds.read_episode(EpisodeIndex(1)).unwrap_err().to_string();
    assert!(
        msg.contains("UTF-8")
            && msg.contains("episode 1")
            && msg.contains("steps/observation/instruction"),
        "{msg}"
    );

    assert!(RldsDataset::open(dir.path().join("nowhere")).is_err());
}

fn python() -> std::path::PathBuf {
    let py = common::repo().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh (installs tensorflow-datasets for the interop tests)",
        py.display()
    );
    py
}

/// tensorflow-datasets' own writer (tests/interop/make_rlds.py) -> our reader, exact values.
#[test]
fn reads_rlds_written_by_tensorflow_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(python())
        .arg(common::repo().join("tests/interop/make_rlds.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_rlds.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = common::load_f32(&dir.path().join("expected.safetensors"));
    let ds = RldsDataset::open(dir.path().join("data/language_table")).unwrap();
    assert_eq!(ds.episode_indices().len(), 3);
    let mut seen = Vec::new();
    for idx in ds.episode_indices() {
        let ep = ds.read_episode(idx).unwrap();
        // Episodes are shuffled by tfds; match by instruction.
        let i = (0..3)
            .find(|i| {
                let (_, bytes) = &expected[&format!("ep{i}.instruction")];
                bytes.iter().map(|&b| b as u8).collect::<Vec<u8>>() == ep.task.as_bytes()
            })
            .unwrap_or_else(|| panic!("unexpected instruction {:?}", ep.task));
        seen.push(i);
        let (shape, _) = &expected[&format!("ep{i}.rgb")];
        assert_eq!(ep.len(), shape[0]);
        for (key, name) in [
            ("observation.state", "effector_translation"),
            (
                "observation.effector_target_translation",
                "effector_target_translation",
            ),
            ("action", "action"),
            ("next.reward", "reward"),
        ] {
            assert_eq!(
                floats(ep.columns.column_by_name(key).unwrap()),
                expected[&format!("ep{i}.{name}")].1,
                "{key}"
            );
        }
        for key in ["is_first", "is_last", "is_terminal"] {
            let got: Vec<f32> = ep
                .columns
                .column_by_name(key)
                .unwrap()
                .as_boolean()
                .iter()
                .map(|b| b.unwrap() as u8 as f32)
                .collect();
            assert_eq!(got, expected[&format!("ep{i}.{key}")].1, "{key}");
        }
        let frames = ep.cameras["observation.images.rgb"].decode().unwrap();
        let raw = &expected[&format!("ep{i}.rgb")].1;
        let decoded: Vec<f32> = frames
            .iter()
            .flat_map(|f| f.as_raw().iter().map(|&b| b as f32))
            .collect();
        let mad = raw
            .iter()
            .zip(&decoded)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / raw.len() as f64;
        assert!(mad < 2.0, "episode {i}: JPEG mean abs diff {mad}");
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2]);
}

/// Our writer -> tensorflow-datasets' reader (`tfds.builder_from_directory`), exact values.
#[test]
fn tensorflow_datasets_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = RldsWriter::create(
        dir.path(),
        RldsWriteOptions {
            episodes_per_shard: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let episodes: Vec<Episode> = (0..2)
        .map(|i| {
            episode(
                i,
                3 + i as usize,
                ["push the red star", "move ✓"][i as usize],
                (16, 24),
            )
        })
        .collect();
    for ep in &episodes {
        writer.write_episode(ep).unwrap();
    }
    let vdir = writer.finish().unwrap();
    let script = r#"
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow_datasets as tfds
b = tfds.builder_from_directory(sys.argv[1])
out = []
for ep in tfds.as_numpy(b.as_dataset(split="train")):
    steps = list(ep["steps"])
    code = steps[0]["observation"]["instruction"]
    out.append({
        "task": bytes(code[code != 0].astype(np.uint8)).decode(),
        "action": np.stack([s["action"] for s in steps]).ravel().tolist(),
        "reward": [float(s["reward"]) for s in steps],
        "is_last": [bool(s["is_last"]) for s in steps],
        "rgb": list(steps[0]["observation"]["rgb"].shape),
        "sim": list(steps[0]["observation"]["sim"].shape),
    })
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&vdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tfds failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = serde_json::from_slice(
        out.stdout
            .rsplit(|&b| b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got.len(), 2);
    for g in got {
        let ep = episodes
            .iter()
            .find(|e| e.task == g["task"].as_str().unwrap())
            .expect("task matches an episode");
        let action: Vec<f32> = g["action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(action, floats(ep.columns.column_by_name("action").unwrap()));
        let reward: Vec<f32> = g["reward"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            reward,
            floats(ep.columns.column_by_name("next.reward").unwrap())
        );
        let is_last: Vec<bool> = g["is_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(
            is_last,
            ep.columns
                .column_by_name("is_last")
                .unwrap()
                .as_boolean()
                .iter()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(g["rgb"], serde_json::json!([16, 24, 3]));
        assert_eq!(g["sim"], serde_json::json!([16, 24, 3]));
    }
}

use crate::common;
