//! Property tests (issue 9): the parsers that read untrusted bytes never panic, whatever the input, and the formats
//! with a writer round-trip. Inputs are arbitrary bytes and mutations of valid files (the bundled sample's
//! TFRecord, Example, info.json, episodes parquet, features.json; the modelscope_mini UNet config), so the
//! mutations reach past the first check. Bounded (a few hundred cases each) to stay well under 20 s in CI; the
//! `fuzz/` cargo-fuzz targets run the same entry points for as long as one likes.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use vadapt::error::Location;
use vadapt::io::lerobot::meta::{load_episodes_v2, load_episodes_v3, load_tasks, Info, Version};
use vadapt::io::rlds::example::{Example, Feature};
use vadapt::io::rlds::tfrecord::{TfRecordReader, TfRecordWriter};
use vadapt::io::rlds::{decode_instruction, encode_instruction, parse_features};
use vadapt::models::unet_3d::UNet3DConfig;

use crate::common::{fixture, repo};

const SHARD: &str = "datasets/sample/rlds/0.0.1/language_table-train.tfrecord-00000-of-00001";

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failure is worth it; failures persist nowhere (the checkout is shared).
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The first record of the bundled sample shard (a real Example of 24 steps, ~280 kB).
fn sample_record() -> &'static [u8] {
    static R: OnceLock<Vec<u8>> = OnceLock::new();
    R.get_or_init(|| {
        TfRecordReader::open(repo().join(SHARD))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    })
}

/// A small valid Example (a few floats, ints and bytes), for mutations that should hit every field kind.
fn small_example() -> Vec<u8> {
    let mut m = BTreeMap::new();
    m.insert(
        "steps/action".into(),
        Feature::floats(vec![0.5, -1.0, 2.0, 3.5]),
    );
    m.insert("steps/is_first".into(), Feature::int64s(vec![1, 0]));
    m.insert(
        "steps/observation/rgb".into(),
        Feature::bytes(vec![b"ab".to_vec(), b"cd".to_vec()]),
    );
    m.insert("episode_id".into(), Feature::bytes(vec![b"ep-0".to_vec()]));
    Example::from_features(m).to_bytes()
}

fn framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut w = TfRecordWriter::new(Vec::new(), "mem");
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap()
}

/// Read every record of an in-memory TFRecord stream; stops at the first error.
fn read_framed(bytes: &[u8]) -> vadapt::error::Result<Vec<Vec<u8>>> {
    TfRecordReader::new(Cursor::new(bytes), "mem.tfrecord").collect()
}

/// `bytes` with `edits` applied: (position fraction, new byte), plus an optional cut.
fn mutate(bytes: &[u8], edits: &[(f64, u8)], cut: Option<f64>) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        return b;
    }
    for &(at, v) in edits {
        let i = ((at * b.len() as f64) as usize).min(b.len() - 1);
        b[i] = v;
    }
    if let Some(c) = cut {
        b.truncate((c * b.len() as f64) as usize);
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(f64, u8)>> {
    prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..8)
}

/// Arbitrary JSON, a few levels deep, with the keys the parsers look for mixed in so that they go past the top.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("featuresDict".to_string()),
        Just("features".to_string()),
        Just("sequence".to_string()),
        Just("feature".to_string()),
        Just("tensor".to_string()),
        Just("image".to_string()),
        Just("shape".to_string()),
        Just("dimensions".to_string()),
        Just("dtype".to_string()),
        Just("fps".to_string()),
        Just("codebase_version".to_string()),
        "[a-z_.]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|v| serde_json::json!(v)),
        any::<u64>().prop_map(|v| serde_json::json!(v)),
        (-1e300..1e300f64).prop_map(|v| serde_json::json!(v)),
        prop_oneof![
            Just("v3.0".to_string()),
            Just("-1".to_string()),
            "[0-9a-z ]{0,6}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A LeRobot root in a temp dir with `meta/info.json` = `info` and the sample's other metadata.
fn lerobot_root(info: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let meta = d.path().join("meta");
    std::fs::create_dir_all(meta.join("episodes/chunk-000")).unwrap();
    std::fs::write(meta.join("info.json"), info).unwrap();
    d
}

fn sample_file(rel: &str) -> &'static [u8] {
    static FILES: OnceLock<std::sync::Mutex<BTreeMap<String, &'static [u8]>>> = OnceLock::new();
    let m = FILES.get_or_init(Default::default);
    let mut m = m.lock().unwrap();
    m.entry(rel.to_string())
        .or_insert_with(|| Box::leak(std::fs::read(repo().join(rel)).unwrap().into_boxed_slice()))
}

proptest! {
    #![proptest_config(cfg(256))]

    /// Arbitrary bytes as a TFRecord stream: records or an error, never a panic.
    #[test]
    fn tfrecord_reader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_framed(&bytes);
    }

    /// Valid framing with bytes changed or cut: every change of a CRC-covered byte is caught.
    #[test]
    fn tfrecord_reader_catches_mutations(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
        edits in edits(),
        cut in prop::option::of(0.0..1.0f64),
    ) {
        let good = framed(&records);
        let bad = mutate(&good, &edits, cut);
        match read_framed(&bad) {
            // Whatever changed, the original records never come back unchanged and complete.
            Ok(got) => prop_assert!(bad == good || got != records, "a changed stream read back as the original"),
            Err(e) => {
                let path = e.location().and_then(|l| l.path.clone()).unwrap_or_default();
                prop_assert!(path.ends_with("mem.tfrecord"), "{e}");
            }
        }
    }

    /// TFRecord write -> read is the identity.
    #[test]
    fn tfrecord_round_trip(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6)) {
        prop_assert_eq!(read_framed(&framed(&records)).unwrap(), records);
    }

    /// Arbitrary bytes as an Example: decoded or an error naming the location, never a panic.
    #[test]
    fn example_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let loc = Location::file("x.tfrecord").episode(3);
        if let Err(e) = Example::decode_at(&bytes, &loc) {
            prop_assert_eq!(e.location(), Some(&loc));
        }
    }

    /// Mutated valid Examples (small, and the sample's real record) never panic the decoder.
    #[test]
    fn example_decoder_survives_mutations(edits in edits(), cut in prop::option::of(0.0..1.0f64), real in any::<bool>()) {
        let good = if real { sample_record().to_vec() } else { small_example() };
        let _ = Example::decode_at(&mutate(&good, &edits, cut), &Location::none());
    }

    /// Example encode -> decode is the identity (floats compared bit for bit, NaN included).
    #[test]
    fn example_round_trip(
        floats in prop::collection::btree_map("[a-z/]{1,12}", prop::collection::vec(any::<u32>(), 0..20), 0..4),
        ints in prop::collection::btree_map("[A-Z/]{1,12}", prop::collection::vec(any::<i64>(), 0..20), 0..4),
        bytes in prop::collection::btree_map("[0-9/]{1,12}", prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..5), 0..4),
    ) {
        let mut m = BTreeMap::new();
        for (k, v) in &floats {
            m.insert(format!("f{k}"), Feature::floats(v.iter().map(|b| f32::from_bits(*b)).collect()));
        }
        for (k, v) in &ints {
            m.insert(format!("i{k}"), Feature::int64s(v.clone()));
        }
        for (k, v) in &bytes {
            m.insert(format!("b{k}"), Feature::bytes(v.clone()));
        }
        let ex = Example::from_features(m);
        let back = Example::decode_at(&ex.to_bytes(), &Location::none()).unwrap();
        // Re-encoding compares floats by their bits (NaN != NaN under PartialEq).
        prop_assert_eq!(back.to_bytes(), ex.to_bytes());
        prop_assert_eq!(back.into_map().len(), floats.len() + ints.len() + bytes.len());
    }

    /// Instruction codes: arbitrary codes decode or fail, never panic; text without NUL round-trips.
    #[test]
    fn instruction_codes(codes in prop::collection::vec(any::<i64>(), 0..64), text in "[^\u{0}]{0,40}") {
        let loc = Location::none();
        let _ = decode_instruction(&codes, &loc);
        let enc = encode_instruction(&text, 256, &loc);
        if text.len() <= 256 {
            prop_assert_eq!(decode_instruction(&enc.unwrap(), &loc).unwrap(), text);
        }
    }

    /// tfds features.json: arbitrary JSON and mutated real files parse or fail, never panic; leaves that parse
    /// have a sane size.
    #[test]
    fn rlds_features_parser(v in json_value(), edits in edits(), cut in prop::option::of(0.0..1.0f64)) {
        let loc = Location::file("features.json");
        if let Ok(leaves) = parse_features(&v, &loc) {
            for l in leaves {
                let _ = l.kind.values_per_item();
            }
        }
        let real = mutate(sample_file("datasets/sample/rlds/0.0.1/features.json"), &edits, cut);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&real) {
            let _ = parse_features(&v, &loc);
        }
    }
}

proptest! {
    // These write temp files; fewer cases keep the whole file well under the time budget.
    #![proptest_config(cfg(128))]

    /// LeRobot info.json: arbitrary JSON and mutated real files load or fail naming meta/info.json.
    #[test]
    fn lerobot_info_parser(v in json_value(), edits in edits(), cut in prop::option::of(0.0..1.0f64)) {
        let real = mutate(sample_file("datasets/sample/lerobot/meta/info.json"), &edits, cut);
        for bytes in [serde_json::to_vec(&v).unwrap(), real] {
            let root = lerobot_root(&bytes);
            if let Err(e) = Info::load(root.path()) {
                let p = e.location().and_then(|l| l.path.clone()).unwrap_or_default();
                prop_assert!(p.ends_with("meta/info.json"), "{e}");
            }
        }
    }

    /// LeRobot episodes metadata: a mutated v3.0 episodes parquet / tasks parquet, and mutated v2.1 jsonl lines,
    /// load or fail naming the file, never panic.
    #[test]
    fn lerobot_episodes_parsers(edits in edits(), cut in prop::option::of(0.0..1.0f64), line in json_value()) {
        let root = lerobot_root(b"{}");
        let ep = mutate(sample_file("datasets/sample/lerobot/meta/episodes/chunk-000/file-000.parquet"), &edits, cut);
        std::fs::write(root.path().join("meta/episodes/chunk-000/file-000.parquet"), ep).unwrap();
        let keys = ["observation.images.real".to_string(), "observation.images.sim".to_string()];
        if let Err(e) = load_episodes_v3(root.path(), &keys) {
            prop_assert!(e.location().and_then(|l| l.path.clone()).is_some(), "{e}");
        }
        let tasks = mutate(sample_file("datasets/sample/lerobot/meta/tasks.parquet"), &edits, cut);
        std::fs::write(root.path().join("meta/tasks.parquet"), tasks).unwrap();
        let _ = load_tasks(root.path(), Version::V3_0);
        // v2.1: one valid-looking line and one arbitrary line.
        let jsonl = format!(
            "{}\n{}\n",
            serde_json::json!({"episode_index": 0, "tasks": ["push"], "length": 3}),
            line
        );
        std::fs::write(root.path().join("meta/episodes.jsonl"), &jsonl).unwrap();
        std::fs::write(root.path().join("meta/tasks.jsonl"), mutate(jsonl.as_bytes(), &edits, None)).unwrap();
        if let Err(e) = load_episodes_v2(root.path(), 1000, &keys) {
            prop_assert!(e.location().and_then(|l| l.path.clone()).is_some(), "{e}");
        }
        let _ = load_tasks(root.path(), Version::V2_1);
    }

    /// UNet config.json (mutated fixture and arbitrary JSON) and vadapt.json: parsed or refused, never a panic.
    #[test]
    fn model_config_parsers(v in json_value(), edits in edits(), cut in prop::option::of(0.0..1.0f64)) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let real = std::fs::read(fixture("unet3d/modelscope_mini/config.json")).unwrap();
        for bytes in [mutate(&real, &edits, cut), serde_json::to_vec(&v).unwrap()] {
            std::fs::write(&p, &bytes).unwrap();
            if let Err(e) = UNet3DConfig::from_file(&p) {
                let path = e.location().and_then(|l| l.path.clone()).unwrap_or_default();
                prop_assert!(path.ends_with("config.json"), "{e}");
            }
        }
        let _ = serde_json::from_value::<vadapt::model_dir::ModelMeta>(v.clone());
        let _ = vadapt::schedulers::SchedulerConfig::from_json(&v.to_string(), Path::new("s.json"));
    }
}

/// Single-byte edits of the sample's episodes and tasks tables (set to 137, the value of a proptest case that once
/// made arrow panic on a corrupt page) are parsed or refused naming the file, never a panic: every byte of the
/// tasks table and of the episodes table's first 1 KiB (the first pages; byte 67 panicked before the fix), and every
/// 29th byte after that (the whole file would take 100 s).
#[test]
fn lerobot_tables_single_byte_edits_never_panic() {
    let keys = [
        "observation.images.real".to_string(),
        "observation.images.sim".to_string(),
    ];
    for rel in [
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/tasks.parquet",
    ] {
        let real = sample_file(&format!("datasets/sample/lerobot/{rel}"));
        let root = lerobot_root(b"{}");
        for i in (0..real.len()).filter(|&i| i < 1024 || i % 29 == 0) {
            let mut bytes = real.to_vec();
            bytes[i] = 137;
            std::fs::write(root.path().join(rel), &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                if rel.contains("episodes") {
                    load_episodes_v3(root.path(), &keys).err()
                } else {
                    load_tasks(root.path(), Version::V3_0).err()
                }
            });
            match outcome {
                Err(_) => panic!("{rel}: byte {i} set to 137 made the reader panic"),
                Ok(Some(e)) => assert!(
                    e.location().and_then(|l| l.path.clone()).is_some(),
                    "{rel} byte {i}: {e}"
                ),
                Ok(None) => {}
            }
            if rel.contains("episodes") {
                std::fs::write(root.path().join(rel), real).unwrap();
            }
        }
    }
}
