//! The bad-input corpus (issue 9): every case is made by this file from the bundled sample data
//! (`datasets/sample/{lerobot,rlds}`), a `vadapt sample-data` run or the `modelscope_mini` UNet fixture, in a temp
//! directory, then corrupted. Nothing binary is checked in.
//!
//! Each case runs twice:
//! * the library, inside `catch_unwind`: `io::open_dataset`, `read_episode` for every episode and `decode` of every
//!   camera (models: `ModelDir::load`; pipeline TOMLs: `PipelineConfig::load` and `pipeline::plan` over the
//!   bundled LeRobot sample);
//! * the CLI: `vadapt inspect` and `vadapt convert` (models: `vadapt sample --model`; pipeline TOMLs:
//!   `vadapt augment`, which must leave no output directory behind).
//!
//! A case that should fail must fail with an [`Error`] (never a panic) whose location names the file and, where the
//! case says so, the episode and field; the CLI must exit non-zero without "panicked" and name the same, and
//! `convert` / `sample` must leave no output behind. `inspect` does not decode pixels, so cases that only fail when
//! frames are decoded are allowed to pass `inspect`.
//!
//! Some inputs look odd but are valid data, and the right behaviour is to pass them through unchanged:
//! * NaN / ±inf in `action`: vadapt carries every non-image column bit-exact and is not the place to judge
//!   values; the case asserts the very bits come out of the reader and out of `convert`.
//! * one-frame episodes: a valid (if short) trajectory; read and converted with values unchanged.
//! * a zero-length RLDS episode: RLDS can hold one, so the reader returns an episode with no rows; LeRobot cannot
//!   (lerobot's `save_episode` refuses an empty buffer), so `convert` refuses it naming the episode and the input,
//!   rather than silently dropping an episode and shifting every later index.

// The library run returns (stage, Error) pairs; their size does not matter in a test.
#![allow(clippy::result_large_err)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use vadapt::episode::{Episode, EpisodeIndex};
use vadapt::error::Error;
use vadapt::io::rlds::example::{Example, Feature as TfFeature, Kind};
use vadapt::io::rlds::tfrecord::{TfRecordReader, TfRecordWriter};
use vadapt::io::{open_dataset, EpisodeSource};

use crate::common::{fixture, repo, vadapt, vadapt_bin};

const REAL: &str = "observation.images.real";
const SIM: &str = "observation.images.sim";
const SHARD: &str = "0.0.1/language_table-train.tfrecord-00000-of-00001";
const DATA: &str = "data/chunk-000/file-000.parquet";
const EPISODES: &str = "meta/episodes/chunk-000/file-000.parquet";
const RGB: &str = "steps/observation/rgb";
const INSTRUCTION: &str = "steps/observation/instruction";
const MP4_REAL: &str = "videos/observation.images.real/chunk-000/file-000.mp4";
const MP4_SIM: &str = "videos/observation.images.sim/chunk-000/file-000.mp4";
const ST: &str = "diffusion_pytorch_model.safetensors";

/// What a failing case's error must name.
#[derive(Debug, Clone, Copy)]
struct Expect {
    /// Suffix of the path in the error's location (and text in the CLI's message).
    file: &'static str,
    episode: Option<u64>,
    field: Option<&'static str>,
    /// Further text the message must contain (a tensor name, "safetensors", ...).
    needle: Option<&'static str>,
}

const fn at(file: &'static str) -> Expect {
    Expect {
        file,
        episode: None,
        field: None,
        needle: None,
    }
}

impl Expect {
    const fn ep(mut self, e: u64) -> Self {
        self.episode = Some(e);
        self
    }
    const fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
    const fn needle(mut self, n: &'static str) -> Self {
        self.needle = Some(n);
        self
    }
}

type Check = fn(&Path, &dyn EpisodeSource);
type CheckOut = fn(&Path, &Path);

enum Want {
    /// Reading fails (library and CLI).
    Error(Expect),
    /// Reading succeeds and `lib` checks the values; `convert` succeeds and `out` checks its output against the input.
    Ok { lib: Check, out: CheckOut },
    /// Reading succeeds (`lib` checks it) but `convert` must refuse, naming what `Expect` says.
    ReadOnly { lib: Check, convert: Expect },
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Dataset,
    Model,
    /// A pipeline TOML, run over the bundled LeRobot sample.
    Pipeline,
}

struct Case {
    name: &'static str,
    target: Target,
    /// Build the input under the given empty directory; return the dataset / model path.
    build: Box<dyn Fn(&Path) -> PathBuf>,
    want: Want,
}

fn case(name: &'static str, build: impl Fn(&Path) -> PathBuf + 'static, want: Want) -> Case {
    Case {
        name,
        target: Target::Dataset,
        build: Box::new(build),
        want,
    }
}

fn model_case(name: &'static str, build: impl Fn(&Path) -> PathBuf + 'static, e: Expect) -> Case {
    Case {
        name,
        target: Target::Model,
        build: Box::new(build),
        want: Want::Error(e),
    }
}

/// A pipeline TOML case: `text` with `ADAPTER`, `PRIOR` and `DIR` replaced by the fixture adapter, the fixture
/// prior and the case's directory, written to `DIR/pipeline.toml`. Most cases extend the valid `pipe!` text.
fn pipeline_case(name: &'static str, text: &'static str, e: Expect) -> Case {
    Case {
        name,
        target: Target::Pipeline,
        build: Box::new(move |d: &Path| {
            let p = d.join("pipeline.toml");
            let t = text
                .replace("ADAPTER", &fixture("compose/adapter").display().to_string())
                .replace("PRIOR", &fixture("compose/prior").display().to_string())
                .replace("DIR", &d.display().to_string());
            std::fs::write(&p, t).unwrap();
            p
        }),
        want: Want::Error(e),
    }
}

/// A valid pipeline over the sample's `real` camera (one target, `edge`); cases append to it.
macro_rules! pipe {
    ($extra:expr) => {
        concat!(
            "seed = 1\n[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"edge\"\n\
             adapter = \"ADAPTER\"\nsteps = 1\n",
            $extra
        )
    };
}

const PIPE: &str = "pipeline.toml";

// ---------------------------------------------------------------------------------------------------------------
// Building inputs

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn lerobot(dir: &Path) -> PathBuf {
    let p = dir.join("lerobot");
    copy_dir(&repo().join("datasets/sample/lerobot"), &p);
    p
}

fn rlds(dir: &Path) -> PathBuf {
    let p = dir.join("rlds");
    copy_dir(&repo().join("datasets/sample/rlds"), &p);
    p
}

fn model(dir: &Path) -> PathBuf {
    let p = dir.join("model");
    std::fs::create_dir_all(&p).unwrap();
    let src = fixture("unet3d/modelscope_mini");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), p.join(f)).unwrap();
    }
    p
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_info(root: &Path, edit: impl FnOnce(&mut Value)) {
    edit_json(&root.join("meta/info.json"), edit)
}

fn truncate(path: &Path, keep: impl FnOnce(usize) -> usize) {
    let bytes = std::fs::read(path).unwrap();
    let n = keep(bytes.len());
    std::fs::write(path, &bytes[..n]).unwrap();
}

pub(crate) fn read_parquet(path: &Path) -> RecordBatch {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Rewrite one column of a parquet file (`None` drops it).
pub(crate) fn edit_column(path: &Path, column: &str, f: impl Fn(&ArrayRef) -> Option<ArrayRef>) {
    let batch = read_parquet(path);
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (fl, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if fl.name() == column {
            if let Some(new) = f(c) {
                fields.push(Field::new(
                    fl.name(),
                    new.data_type().clone(),
                    fl.is_nullable(),
                ));
                cols.push(new);
            }
        } else {
            fields.push(fl.as_ref().clone());
            cols.push(c.clone());
        }
    }
    assert!(
        batch.schema().index_of(column).is_ok(),
        "{column} not in {}",
        path.display()
    );
    write_parquet(
        path,
        &RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(),
    );
}

/// A numeric column with `f(row, value)` applied, in its own type.
pub(crate) fn map_numbers(c: &ArrayRef, f: impl Fn(usize, f64) -> f64) -> ArrayRef {
    let v = arrow::compute::cast(c, &DataType::Float64).unwrap();
    let v: Vec<f64> = v
        .as_primitive::<Float64Type>()
        .values()
        .iter()
        .enumerate()
        .map(|(i, x)| f(i, *x))
        .collect();
    let v: ArrayRef = Arc::new(arrow::array::Float64Array::from(v));
    arrow::compute::cast(&v, c.data_type()).unwrap()
}

/// Every record of the sample shard.
fn records(root: &Path) -> Vec<Vec<u8>> {
    TfRecordReader::open(root.join(SHARD))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn write_records(root: &Path, records: &[Vec<u8>]) {
    let mut w = TfRecordWriter::create(root.join(SHARD)).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap();
}

/// Byte offset of record `i` in the shard.
fn record_start(root: &Path, i: usize) -> usize {
    records(root)[..i].iter().map(|r| r.len() + 16).sum()
}

/// Decode record `i`, edit its feature map, write the shard back with valid CRCs.
fn edit_record(
    root: &Path,
    i: usize,
    f: impl FnOnce(&mut std::collections::BTreeMap<String, TfFeature>),
) {
    let mut recs = records(root);
    let mut map = <Example as prost::Message>::decode(recs[i].as_slice())
        .unwrap()
        .into_map();
    f(&mut map);
    recs[i] = Example::from_features(map).to_bytes();
    write_records(root, &recs);
}

/// Keep the first `steps` steps of every per-step list of record `i`.
fn keep_steps(root: &Path, i: usize, steps: usize) {
    edit_record(root, i, |map| {
        for (k, f) in map.iter_mut() {
            if !k.starts_with("steps/") {
                continue;
            }
            let per = match k.as_str() {
                "steps/action"
                | "steps/observation/effector_translation"
                | "steps/observation/effector_target_translation" => 2,
                INSTRUCTION => 512,
                _ => 1,
            };
            match &mut f.kind {
                Some(Kind::BytesList(l)) => l.value.truncate(steps * per),
                Some(Kind::FloatList(l)) => l.value.truncate(steps * per),
                Some(Kind::Int64List(l)) => l.value.truncate(steps * per),
                None => {}
            }
        }
    });
}

fn set_features_json(root: &Path, edit: impl FnOnce(&mut Value)) {
    edit_json(&root.join("0.0.1/features.json"), |v| {
        let steps = &mut v["featuresDict"]["features"]["steps"]["sequence"]["feature"]
            ["featuresDict"]["features"];
        edit(steps)
    });
}

fn set_instruction(root: &Path, i: usize, codes: &[i64]) {
    edit_record(root, i, |map| {
        let Some(Kind::Int64List(l)) = &mut map.get_mut(INSTRUCTION).unwrap().kind else {
            panic!("instruction is not an int64 list")
        };
        l.value[..codes.len()].copy_from_slice(codes);
    });
}

fn set_image(root: &Path, i: usize, step: usize, bytes: Vec<u8>) {
    edit_record(root, i, |map| {
        let Some(Kind::BytesList(l)) = &mut map.get_mut(RGB).unwrap().kind else {
            panic!("rgb is not a bytes list")
        };
        l.value[step] = bytes;
    });
}

/// `vadapt sample-data` into `dir/gen`; returns `dir/gen`.
fn sample_data(dir: &Path, episodes: usize, frames: usize) -> PathBuf {
    let out = dir.join("gen");
    vadapt(&[
        "sample-data",
        "--out",
        out.to_str().unwrap(),
        "--episodes",
        &episodes.to_string(),
        "--frames",
        &frames.to_string(),
        "--seed",
        "0",
        "--size",
        "90x160",
    ]);
    out
}

/// Rewrite a safetensors file with `edit` applied to its (name -> (dtype, shape, bytes)) map.
fn edit_safetensors(
    path: &Path,
    edit: impl FnOnce(
        &mut std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    ),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: std::collections::BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = map
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, out).unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Checks for the cases that must succeed

fn f32_values(ep: &Episode, key: &str) -> Vec<f32> {
    let c = ep
        .columns
        .column_by_name(key)
        .unwrap_or_else(|| panic!("no column {key}"));
    let c: &dyn Array = match c.data_type() {
        DataType::FixedSizeList(_, _) => c.as_fixed_size_list().values().as_ref(),
        _ => c.as_ref(),
    };
    c.as_primitive::<Float32Type>().values().to_vec()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const ODD: [f32; 6] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -0.0,
    f32::MIN_POSITIVE / 2.0,
    f32::MAX,
];

fn read_all_episodes(ds: &dyn EpisodeSource) -> Vec<Episode> {
    ds.episode_indices()
        .into_iter()
        .map(|i| ds.read_episode(i).unwrap())
        .collect()
}

/// Episode 0's action starts with ODD, bit for bit (RLDS: in the reader; LeRobot: in the reader).
fn odd_actions_pass_through(_: &Path, ds: &dyn EpisodeSource) {
    let eps = read_all_episodes(ds);
    let a = f32_values(&eps[0], "action");
    assert_eq!(bits(&a[..ODD.len()]), bits(&ODD), "action values changed");
    for ep in &eps {
        for (k, cam) in &ep.cameras {
            assert_eq!(cam.decode().unwrap().len(), ep.len(), "{k}");
        }
    }
}

fn odd_actions_converted(_: &Path, out: &Path) {
    let ds = open_dataset(out).unwrap();
    let ep = ds.read_episode(EpisodeIndex(0)).unwrap();
    let a = f32_values(&ep, "action");
    assert_eq!(
        bits(&a[..ODD.len()]),
        bits(&ODD),
        "convert changed action values"
    );
}

/// Every episode of the input and of the converted output has identical action and state values.
fn columns_converted_unchanged(input: &Path, out: &Path) {
    let a = open_dataset(input).unwrap();
    let b = open_dataset(out).unwrap();
    let ea = read_all_episodes(a.as_ref());
    let eb = read_all_episodes(b.as_ref());
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(x.len(), y.len());
        for key in ["action", "observation.state"] {
            assert_eq!(
                bits(&f32_values(x, key)),
                bits(&f32_values(y, key)),
                "{key}"
            );
        }
    }
}

fn one_frame_lerobot(_: &Path, ds: &dyn EpisodeSource) {
    let eps = read_all_episodes(ds);
    assert_eq!(eps.len(), 4);
    for ep in &eps {
        assert_eq!(ep.len(), 1);
        for cam in ep.cameras.values() {
            assert_eq!(cam.decode().unwrap().len(), 1);
        }
        assert_eq!(f32_values(ep, "action").len(), 2);
    }
}

/// RLDS episode 0 cut to one step: one row whose values are step 0 of the untouched sample.
fn one_frame_rlds(_: &Path, ds: &dyn EpisodeSource) {
    let full = open_dataset(&repo().join("datasets/sample/rlds")).unwrap();
    let want = full.read_episode(EpisodeIndex(0)).unwrap();
    let ep = ds.read_episode(EpisodeIndex(0)).unwrap();
    assert_eq!(ep.len(), 1);
    assert_eq!(ep.task, want.task);
    for key in ["action", "observation.state"] {
        assert_eq!(
            bits(&f32_values(&ep, key)),
            bits(&f32_values(&want, key)[..2]),
            "{key}"
        );
    }
    let frames = ep.cameras["observation.images.rgb"].decode().unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0],
        want.cameras["observation.images.rgb"].decode().unwrap()[0]
    );
    // The episodes after it start their global index right after its single row.
    let next = ds.read_episode(EpisodeIndex(1)).unwrap();
    let index = next.columns.column_by_name("index").unwrap();
    assert_eq!(
        vadapt::io::lerobot::meta::int_at(index.as_ref(), 0, Path::new("-"), "index").unwrap(),
        1
    );
}

fn zero_length_rlds(_: &Path, ds: &dyn EpisodeSource) {
    let eps = read_all_episodes(ds);
    assert_eq!(eps.len(), 4);
    assert_eq!(eps[1].len(), 0);
    assert!(eps[1]
        .cameras
        .values()
        .all(|c| c.decode().unwrap().is_empty()));
    assert_eq!(eps[0].len(), 24);
    assert_eq!(eps[2].len(), 24);
}

// ---------------------------------------------------------------------------------------------------------------
// The corpus

fn corpus() -> Vec<Case> {
    use Want::Error as E;
    let shard = "language_table-train.tfrecord-00000-of-00001";
    vec![
        // ---- RLDS: framing
        case(
            "rlds: truncated inside record 2's data",
            |d| {
                let r = rlds(d);
                let cut = record_start(&r, 2) + 12 + 10;
                truncate(&r.join(SHARD), |_| cut);
                r
            },
            E(at(shard).ep(2).needle("truncated")),
        ),
        case(
            "rlds: truncated inside record 3's header",
            |d| {
                let r = rlds(d);
                let cut = record_start(&r, 3) + 5;
                truncate(&r.join(SHARD), |_| cut);
                r
            },
            E(at(shard).ep(3).needle("truncated")),
        ),
        case(
            "rlds: empty shard file",
            |d| {
                let r = rlds(d);
                truncate(&r.join(SHARD), |_| 0);
                r
            },
            E(at(shard).ep(0)),
        ),
        case(
            "rlds: bad length CRC in record 1",
            |d| {
                let r = rlds(d);
                let p = r.join(SHARD);
                let mut b = std::fs::read(&p).unwrap();
                b[record_start(&r, 1) + 9] ^= 0x40;
                std::fs::write(&p, b).unwrap();
                r
            },
            E(at(shard).ep(1).needle("length CRC")),
        ),
        case(
            "rlds: bad data CRC in record 1",
            |d| {
                let r = rlds(d);
                let p = r.join(SHARD);
                let mut b = std::fs::read(&p).unwrap();
                b[record_start(&r, 1) + 12 + 100] ^= 0x01;
                std::fs::write(&p, b).unwrap();
                r
            },
            E(at(shard).ep(1).needle("data CRC")),
        ),
        case(
            "rlds: record length field garbled with a matching CRC (huge record)",
            |d| {
                let r = rlds(d);
                let mut recs = records(&r);
                recs.truncate(1);
                write_records(&r, &recs);
                // Append a header claiming 2^40 bytes, with a valid length CRC, and nothing after it.
                let len = (1u64 << 40).to_le_bytes();
                let mut b = std::fs::read(r.join(SHARD)).unwrap();
                b.extend_from_slice(&len);
                b.extend_from_slice(&vadapt::io::rlds::tfrecord::masked_crc32c(&len).to_le_bytes());
                std::fs::write(r.join(SHARD), b).unwrap();
                r
            },
            E(at(shard).ep(1)),
        ),
        case(
            "rlds: shardLengths claims more records than the shard holds",
            |d| {
                let r = rlds(d);
                edit_json(&r.join("0.0.1/dataset_info.json"), |v| {
                    v["splits"][0]["shardLengths"] = json!(["5"])
                });
                r
            },
            E(at(shard).ep(4)),
        ),
        case(
            "rlds: shard file missing",
            |d| {
                let r = rlds(d);
                std::fs::remove_file(r.join(SHARD)).unwrap();
                r
            },
            E(at(shard).ep(0)),
        ),
        case(
            "rlds: filepathTemplate leads outside the dataset directory",
            move |d| {
                let r = rlds(d);
                std::fs::copy(r.join(SHARD), d.join(shard)).unwrap();
                edit_json(&r.join("0.0.1/dataset_info.json"), |v| {
                    v["splits"][0]["filepathTemplate"] =
                        json!("../../{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
                });
                r
            },
            E(at("dataset_info.json")
                .field("filepathTemplate")
                .needle("outside the dataset directory")),
        ),
        // ---- RLDS: Example protobuf
        case(
            "rlds: malformed Example protobuf in record 0",
            |d| {
                let r = rlds(d);
                let mut recs = records(&r);
                recs[0] = vec![0xff; 64];
                write_records(&r, &recs);
                r
            },
            E(at(shard).ep(0).needle("tf.train.Example")),
        ),
        case(
            "rlds: Example field with the wrong wire type in record 2",
            |d| {
                let r = rlds(d);
                let mut recs = records(&r);
                recs[2] = vec![0x08, 0x01];
                write_records(&r, &recs);
                r
            },
            E(at(shard).ep(2).needle("tf.train.Example")),
        ),
        case(
            "rlds: Example cut short inside a nested message",
            |d| {
                let r = rlds(d);
                let mut recs = records(&r);
                let n = recs[1].len();
                recs[1].truncate(n / 2);
                write_records(&r, &recs);
                r
            },
            E(at(shard).ep(1).needle("tf.train.Example")),
        ),
        // ---- RLDS: features.json vs records
        case(
            "rlds: features.json lists a feature the records lack",
            |d| {
                let r = rlds(d);
                set_features_json(&r, |s| {
                    s["observation"]["featuresDict"]["features"]["gripper"] = s["reward"].clone();
                });
                r
            },
            E(at(shard).ep(0).field("steps/observation/gripper")),
        ),
        case(
            "rlds: features.json shape disagrees with the records",
            |d| {
                let r = rlds(d);
                set_features_json(&r, |s| {
                    s["action"]["tensor"]["shape"]["dimensions"] = json!(["5"])
                });
                r
            },
            E(at(shard).ep(0).field("steps/action")),
        ),
        case(
            "rlds: features.json dtype disagrees with the records",
            |d| {
                let r = rlds(d);
                set_features_json(&r, |s| s["action"]["tensor"]["dtype"] = json!("int32"));
                r
            },
            E(at(shard).ep(0).field("steps/action").needle("float_list")),
        ),
        case(
            "rlds: features.json declares a huge shape",
            |d| {
                let r = rlds(d);
                set_features_json(&r, |s| {
                    s["action"]["tensor"]["shape"]["dimensions"] =
                        json!(["4611686018427387904", "8"])
                });
                r
            },
            E(at("features.json").field("steps/action")),
        ),
        case(
            "rlds: features.json is not JSON",
            |d| {
                let r = rlds(d);
                std::fs::write(r.join("0.0.1/features.json"), "{\"featuresDict\": ").unwrap();
                r
            },
            E(at("features.json")),
        ),
        case(
            "rlds: features.json missing",
            |d| {
                let r = rlds(d);
                std::fs::remove_file(r.join("0.0.1/features.json")).unwrap();
                r
            },
            E(at("features.json")),
        ),
        case(
            "rlds: dataset_info.json is not JSON",
            |d| {
                let r = rlds(d);
                std::fs::write(r.join("0.0.1/dataset_info.json"), [0xff, 0xfe, 0x00]).unwrap();
                r
            },
            E(at("dataset_info.json")),
        ),
        // ---- RLDS: instructions
        case(
            "rlds: instruction with invalid UTF-8",
            |d| {
                let r = rlds(d);
                set_instruction(&r, 1, &[0x70, 0xff, 0xfe, 0xc3]);
                r
            },
            E(at(shard).ep(1).field(INSTRUCTION).needle("UTF-8")),
        ),
        case(
            "rlds: instruction code that is not a byte",
            |d| {
                let r = rlds(d);
                set_instruction(&r, 3, &[0x70, 300]);
                r
            },
            E(at(shard).ep(3).field(INSTRUCTION)),
        ),
        // ---- RLDS: images
        case(
            "rlds: corrupt JPEG in step 5 of episode 1",
            |d| {
                let r = rlds(d);
                set_image(&r, 1, 5, b"\xff\xd8\xff\xe0 not really a jpeg".to_vec());
                r
            },
            E(at(shard).ep(1).field(RGB)),
        ),
        case(
            "rlds: unreadable first image of episode 0",
            |d| {
                let r = rlds(d);
                set_image(&r, 0, 0, vec![0u8; 100]);
                r
            },
            E(at(shard).ep(0).field(RGB)),
        ),
        case(
            "rlds: image size disagrees with features.json",
            |d| {
                let r = rlds(d);
                set_features_json(&r, |s| {
                    s["observation"]["featuresDict"]["features"]["rgb"]["image"]["shape"]
                        ["dimensions"] = json!(["92", "160", "3"])
                });
                r
            },
            E(at(shard).ep(0).field(RGB)),
        ),
        case(
            "rlds: fewer images than steps",
            |d| {
                let r = rlds(d);
                edit_record(&r, 2, |map| {
                    if let Some(Kind::BytesList(l)) = &mut map.get_mut(RGB).unwrap().kind {
                        l.value.pop();
                    }
                });
                r
            },
            E(at(shard).ep(2).field(RGB)),
        ),
        // ---- RLDS: valid odd data
        case(
            "rlds: NaN and inf in actions pass through",
            |d| {
                let r = rlds(d);
                edit_record(&r, 0, |map| {
                    if let Some(Kind::FloatList(l)) = &mut map.get_mut("steps/action").unwrap().kind
                    {
                        l.value[..ODD.len()].copy_from_slice(&ODD);
                    }
                });
                r
            },
            Want::Ok {
                lib: odd_actions_pass_through,
                out: odd_actions_converted,
            },
        ),
        case(
            "rlds: one-frame episode",
            |d| {
                let r = rlds(d);
                keep_steps(&r, 0, 1);
                r
            },
            Want::Ok {
                lib: one_frame_rlds,
                out: columns_converted_unchanged,
            },
        ),
        case(
            "rlds: zero-length episode",
            |d| {
                let r = rlds(d);
                keep_steps(&r, 1, 0);
                r
            },
            Want::ReadOnly {
                lib: zero_length_rlds,
                convert: at("rlds").ep(1).needle("no frames"),
            },
        ),
        // ---- LeRobot: metadata
        case(
            "lerobot: meta/info.json missing",
            |d| {
                let r = lerobot(d);
                std::fs::remove_file(r.join("meta/info.json")).unwrap();
                r
            },
            E(at("meta/info.json")),
        ),
        case(
            "lerobot: info.json is not JSON",
            |d| {
                let r = lerobot(d);
                truncate(&r.join("meta/info.json"), |n| n / 2);
                r
            },
            E(at("meta/info.json")),
        ),
        case(
            "lerobot: wrong codebase_version",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| v["codebase_version"] = json!("v1.6"));
                r
            },
            E(at("meta/info.json").field("codebase_version")),
        ),
        case(
            "lerobot: info.json without features",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    v.as_object_mut().unwrap().remove("features");
                });
                r
            },
            E(at("meta/info.json").field("features")),
        ),
        case(
            "lerobot: negative fps",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| v["fps"] = json!(-10));
                r
            },
            E(at("meta/info.json").field("fps")),
        ),
        case(
            "lerobot: feature with a huge declared shape",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    v["features"]["action"]["shape"] =
                        json!([4611686018427387904u64, 4611686018427387904u64])
                });
                r
            },
            E(at("meta/info.json").field("features.action")),
        ),
        case(
            "lerobot: declared shape disagrees with the data column",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| v["features"]["action"]["shape"] = json!([3]));
                r
            },
            E(at(DATA).ep(0).field("action")),
        ),
        case(
            "lerobot: video_path with an unknown placeholder",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    v["video_path"] = json!("videos/{camera}/{file_index}.mp4")
                });
                r
            },
            E(at("meta/info.json").field("video_path")),
        ),
        // ---- LeRobot: path templates must stay inside the dataset root (issue 19). Each case puts the files the
        // template names where it points, so that only the refusal stops the read.
        case(
            "lerobot: video_path leads outside the dataset root",
            |d| {
                let r = lerobot(d);
                copy_dir(&r.join("videos"), &d.join("outside"));
                edit_info(&r, |v| {
                    v["video_path"] =
                        json!("../outside/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
                });
                r
            },
            E(at("meta/info.json")
                .field("video_path")
                .needle("\"../outside/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4\" leads outside the dataset root")),
        ),
        case(
            "lerobot: data_path is an absolute path",
            |d| {
                let r = lerobot(d);
                copy_dir(&r.join("data"), &d.join("elsewhere"));
                let template = format!(
                    "{}/chunk-{{chunk_index:03d}}/file-{{file_index:03d}}.parquet",
                    d.join("elsewhere").display()
                );
                edit_info(&r, |v| v["data_path"] = json!(template));
                r
            },
            E(at("meta/info.json")
                .field("data_path")
                .needle("leads outside the dataset root")),
        ),
        case(
            "lerobot: a camera key leads video_path outside the dataset root",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    let features = v["features"].as_object_mut().unwrap();
                    let real = features.remove(REAL).unwrap();
                    features.insert(format!("../../{REAL}"), real);
                });
                r
            },
            E(at("meta/info.json")
                .field("video_path")
                .needle("outside the dataset root")),
        ),
        case(
            "lerobot: episodes parquet without a required column",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(EPISODES), "length", |_| None);
                r
            },
            E(at(EPISODES).ep(0).field("length")),
        ),
        case(
            "lerobot: episodes parquet truncated",
            |d| {
                let r = lerobot(d);
                truncate(&r.join(EPISODES), |n| n - 100);
                r
            },
            E(at(EPISODES)),
        ),
        case(
            "lerobot: episode length disagrees with the data rows",
            |d| {
                let r = lerobot(d);
                let p = r.join(EPISODES);
                edit_column(&p, "length", |c| {
                    Some(map_numbers(c, |i, x| x + (i == 3) as u8 as f64))
                });
                edit_column(&p, "dataset_to_index", |c| {
                    Some(map_numbers(c, |i, x| x + (i == 3) as u8 as f64))
                });
                r
            },
            E(at(DATA).ep(3).field("dataset_to_index")),
        ),
        case(
            "lerobot: episodes point at a data file that does not exist",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(EPISODES), "data/file_index", |c| {
                    Some(map_numbers(c, |i, x| if i == 1 { 7.0 } else { x }))
                });
                r
            },
            E(at("data/chunk-000/file-007.parquet").ep(1)),
        ),
        // ---- LeRobot: data parquet
        case(
            "lerobot: data parquet without a required column",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(DATA), "action", |_| None);
                r
            },
            E(at(DATA).ep(0).field("action")),
        ),
        case(
            "lerobot: data parquet missing",
            |d| {
                let r = lerobot(d);
                std::fs::remove_file(r.join(DATA)).unwrap();
                r
            },
            E(at(DATA).ep(0)),
        ),
        case(
            "lerobot: data parquet is garbage",
            |d| {
                let r = lerobot(d);
                std::fs::write(r.join(DATA), vec![0x5a; 4096]).unwrap();
                r
            },
            E(at(DATA).ep(0)),
        ),
        case(
            "lerobot: data parquet truncated",
            |d| {
                let r = lerobot(d);
                truncate(&r.join(DATA), |n| n / 2);
                r
            },
            E(at(DATA).ep(0)),
        ),
        case(
            "lerobot: NaN and inf in actions pass through",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(DATA), "action", |c| {
                    let l = c.as_fixed_size_list();
                    let mut v = l.values().as_primitive::<Float32Type>().values().to_vec();
                    v[..ODD.len()].copy_from_slice(&ODD);
                    let field = match l.data_type() {
                        DataType::FixedSizeList(f, _) => f.clone(),
                        _ => unreachable!(),
                    };
                    Some(Arc::new(
                        FixedSizeListArray::try_new(
                            field,
                            l.value_length(),
                            Arc::new(Float32Array::from(v)),
                            None,
                        )
                        .unwrap(),
                    ))
                });
                r
            },
            Want::Ok {
                lib: odd_actions_pass_through,
                out: odd_actions_converted,
            },
        ),
        case(
            "lerobot: one-frame episodes",
            |d| {
                // sample-data needs 2 frames an episode; cut the RLDS sample to one step each and convert it.
                let r = rlds(d);
                for i in 0..4 {
                    keep_steps(&r, i, 1);
                }
                let out = d.join("one-frame");
                vadapt(&["convert", r.to_str().unwrap(), out.to_str().unwrap()]);
                out
            },
            Want::Ok {
                lib: one_frame_lerobot,
                out: columns_converted_unchanged,
            },
        ),
        // ---- LeRobot: videos
        case(
            "lerobot: missing video file",
            |d| {
                let r = lerobot(d);
                std::fs::remove_file(r.join(MP4_REAL)).unwrap();
                r
            },
            E(at(MP4_REAL).ep(0).field(REAL).needle("video file not found")),
        ),
        case(
            "lerobot: episodes metadata points past the video end",
            |d| {
                // The span is shifted as a whole (from and to), so only the video's end disagrees.
                let r = lerobot(d);
                for end in ["from_timestamp", "to_timestamp"] {
                    edit_column(&r.join(EPISODES), &format!("videos/{SIM}/{end}"), |c| {
                        Some(map_numbers(c, |i, x| if i == 2 { x + 5.0 } else { x }))
                    });
                }
                r
            },
            E(at(MP4_SIM)
                .ep(2)
                .field("videos/observation.images.sim/to_timestamp")),
        ),
        case(
            "lerobot: video with fewer frames than rows",
            |d| {
                let r = lerobot(d);
                let short = sample_data(d, 4, 12);
                std::fs::copy(short.join("lerobot").join(MP4_SIM), r.join(MP4_SIM)).unwrap();
                r
            },
            E(at(MP4_SIM)
                .ep(2)
                .field("videos/observation.images.sim/to_timestamp")),
        ),
        case(
            "lerobot: corrupt mp4 (zeros)",
            |d| {
                let r = lerobot(d);
                let n = std::fs::metadata(r.join(MP4_REAL)).unwrap().len() as usize;
                std::fs::write(r.join(MP4_REAL), vec![0u8; n]).unwrap();
                r
            },
            E(at(MP4_REAL).ep(0).field(REAL)),
        ),
        case(
            "lerobot: truncated mp4",
            |d| {
                let r = lerobot(d);
                truncate(&r.join(MP4_REAL), |n| n / 3);
                r
            },
            E(at(MP4_REAL).field(REAL)),
        ),
        case(
            "lerobot: mp4 is a text file",
            |d| {
                let r = lerobot(d);
                std::fs::write(r.join(MP4_SIM), "this is not a video\n").unwrap();
                r
            },
            E(at(MP4_SIM).ep(0).field(SIM)),
        ),
        case(
            "lerobot: video size disagrees with info.json",
            |d| {
                let r = lerobot(d);
                // A consistent declaration (shape and info block) of a size the mp4 does not have.
                edit_info(&r, |v| {
                    v["features"][REAL]["info"]["video.height"] = json!(92);
                    v["features"][REAL]["shape"] = json!([92, 160, 3]);
                });
                r
            },
            E(at(MP4_REAL).ep(0).field(REAL)),
        ),
        case(
            "lerobot: huge declared frame size",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    v["features"][REAL]["info"]["video.height"] = json!(1u64 << 31);
                    v["features"][REAL]["info"]["video.width"] = json!(1u64 << 31);
                    v["features"][REAL]["shape"] = json!([1u64 << 31, 1u64 << 31, 3]);
                });
                r
            },
            E(at("meta/info.json").field("features.observation.images.real")),
        ),
        case(
            "lerobot: huge frame size in the video info block only",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| {
                    v["features"][SIM]["info"]["video.height"] = json!(u32::MAX);
                    v["features"][SIM]["info"]["video.width"] = json!(u32::MAX);
                });
                r
            },
            E(at("meta/info.json").field("features.observation.images.sim")),
        ),
        // ---- Models
        model_case(
            "model: missing tensor",
            |d| {
                let m = model(d);
                edit_safetensors(&m.join(ST), |t| {
                    t.remove("conv_in.weight").unwrap();
                });
                m
            },
            at(ST).needle("conv_in.weight"),
        ),
        model_case(
            "model: tensor with the wrong shape",
            |d| {
                let m = model(d);
                edit_safetensors(&m.join(ST), |t| {
                    let (_, shape, bytes) = t.get_mut("conv_in.bias").unwrap();
                    shape[0] -= 1;
                    bytes.truncate(bytes.len() - 4);
                });
                m
            },
            at(ST).needle("conv_in.bias"),
        ),
        model_case(
            "model: config does not match the weights",
            |d| {
                let m = model(d);
                edit_json(&m.join("config.json"), |v| {
                    v["block_out_channels"] = json!([16, 16, 32, 64])
                });
                m
            },
            at(ST).needle("shape"),
        ),
        model_case(
            "model: config with an unsupported block type",
            |d| {
                let m = model(d);
                edit_json(&m.join("config.json"), |v| {
                    v["down_block_types"][0] = json!("CrossAttnDownBlock2D")
                });
                m
            },
            at("config.json").field("down_block_types"),
        ),
        model_case(
            "model: config.json is not JSON",
            |d| {
                let m = model(d);
                std::fs::write(m.join("config.json"), "{\"in_channels\": 4,").unwrap();
                m
            },
            at("config.json"),
        ),
        model_case(
            "model: config.json missing",
            |d| {
                let m = model(d);
                std::fs::remove_file(m.join("config.json")).unwrap();
                m
            },
            at("config.json"),
        ),
        model_case(
            "model: pickle .bin weights only",
            |d| {
                let m = model(d);
                std::fs::remove_file(m.join(ST)).unwrap();
                std::fs::write(m.join("diffusion_pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
                m
            },
            at("model").needle("safetensors only"),
        ),
        model_case(
            "model: a .ckpt checkpoint instead of safetensors",
            |d| {
                let m = model(d);
                std::fs::remove_file(m.join(ST)).unwrap();
                std::fs::write(m.join("model.ckpt"), b"PK\x03\x04 torch zip").unwrap();
                m
            },
            at("model").needle("safetensors only"),
        ),
        model_case(
            "model: pickle bytes under the safetensors name",
            |d| {
                let m = model(d);
                std::fs::write(
                    m.join(ST),
                    b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
                )
                .unwrap();
                m
            },
            at(ST).needle("not a safetensors file"),
        ),
        model_case(
            "model: truncated safetensors",
            |d| {
                let m = model(d);
                truncate(&m.join(ST), |n| n / 2);
                m
            },
            at(ST),
        ),
        model_case(
            "model: sharded index names a missing shard",
            |d| {
                let m = model(d);
                std::fs::remove_file(m.join(ST)).unwrap();
                std::fs::write(
                    m.join("diffusion_pytorch_model.safetensors.index.json"),
                    json!({"weight_map": {"conv_in.weight": "part-00002.safetensors"}}).to_string(),
                )
                .unwrap();
                m
            },
            at("part-00002.safetensors"),
        ),
        model_case(
            "model: vadapt.json with an unknown key",
            |d| {
                let m = model(d);
                std::fs::write(m.join("vadapt.json"), r#"{"frames": 8, "framez": 9}"#).unwrap();
                m
            },
            at("vadapt.json").needle("framez"),
        ),
        model_case(
            "model: vadapt.json conditioning does not match in_channels",
            |d| {
                // modelscope_mini is a 4-channel latent UNet: give it a VAE of 4 latent channels, so only the
                // conditioning (4 + 3 channels for 4 inputs) is wrong.
                let m = model(d);
                crate::parity_latent::copy_dir(
                    &crate::parity_latent::parity_fixture("t2v/vae"),
                    &m.join("vae"),
                );
                std::fs::write(
                    m.join("vadapt.json"),
                    r#"{"conditioning": ["first_frame"]}"#,
                )
                .unwrap();
                m
            },
            at("vadapt.json").field("conditioning"),
        ),
        model_case(
            "model: a latent UNet (4 output channels) without its vae/",
            model,
            at("config.json").field("out_channels").needle("vae/"),
        ),
        // ---- pipeline TOML (run through `augment`, checked before anything is written)
        pipeline_case(
            "pipeline: unknown top-level key",
            concat!("sed = 3\n", pipe!("")),
            at(PIPE).field("sed"),
        ),
        pipeline_case(
            "pipeline: unknown key in a target",
            pipe!("guidnce = 2.0\n"),
            at(PIPE).field("guidnce"),
        ),
        pipeline_case(
            "pipeline: unknown key in [output]",
            pipe!("[output]\nlayot = \"paired\"\n"),
            at(PIPE).field("layot"),
        ),
        pipeline_case(
            "pipeline: a string where a number goes",
            pipe!("guidance = \"high\"\n"),
            at(PIPE).field("target[0].guidance"),
        ),
        pipeline_case(
            "pipeline: a float where an integer goes",
            pipe!("window_overlap = 2.5\n"),
            at(PIPE).field("target[0].window_overlap"),
        ),
        pipeline_case(
            "pipeline: negative seed",
            "seed = -1\n[[target]]\nname = \"edge\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("seed"),
        ),
        pipeline_case(
            "pipeline: a table where a value goes",
            "input = 3\n[[target]]\nname = \"edge\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("input"),
        ),
        pipeline_case(
            "pipeline: unknown sampler",
            pipe!("sampler = \"euler\"\n"),
            at(PIPE).field("target[0].sampler").needle("euler"),
        ),
        pipeline_case(
            "pipeline: TOML syntax error",
            pipe!("guidance = \n"),
            at(PIPE).needle("line 8"),
        ),
        pipeline_case(
            "pipeline: negative λ (prior_strength)",
            pipe!("prior = \"PRIOR\"\nprior_strength = -0.5\n"),
            at(PIPE).field("target[0].prior_strength"),
        ),
        pipeline_case(
            "pipeline: negative λ in [[target.priors]]",
            pipe!("[[target.priors]]\ndir = \"PRIOR\"\nstrength = -1.0\n"),
            at(PIPE).field("target[0].priors[0].strength"),
        ),
        pipeline_case(
            "pipeline: λ = nan",
            pipe!("prior = \"PRIOR\"\nprior_strength = nan\n"),
            at(PIPE).field("target[0].prior_strength"),
        ),
        pipeline_case(
            "pipeline: prior_strength without a prior",
            pipe!("prior_strength = 0.5\n"),
            at(PIPE).field("target[0].prior_strength"),
        ),
        pipeline_case(
            "pipeline: negative guidance",
            pipe!("guidance = -1.0\n"),
            at(PIPE).field("target[0].guidance"),
        ),
        // ---- randomized targets (pipeline::variants): ranges and lists that cannot be drawn from
        pipeline_case(
            "pipeline: empty prior_strength range",
            pipe!("prior = \"PRIOR\"\nprior_strength = [0.4, 0.4]\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].prior_strength").needle("empty"),
        ),
        pipeline_case(
            "pipeline: inverted prior_strength range",
            pipe!("prior = \"PRIOR\"\nprior_strength = [0.8, 0.2]\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].prior_strength").needle("inverted"),
        ),
        pipeline_case(
            "pipeline: prior_strength range below 0",
            pipe!("prior = \"PRIOR\"\nprior_strength = [-0.2, 0.5]\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].prior_strength").needle("out of bounds"),
        ),
        pipeline_case(
            "pipeline: guidance range with inf",
            pipe!("guidance = [1.0, inf]\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].guidance").needle("out of bounds"),
        ),
        pipeline_case(
            "pipeline: a range of three values",
            pipe!("guidance = [1.0, 2.0, 3.0]\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].guidance").needle("[lo, hi]"),
        ),
        pipeline_case(
            "pipeline: variants = 0",
            pipe!("variants = 0\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].variants"),
        ),
        pipeline_case(
            "pipeline: an empty prompt list",
            pipe!("prior = \"PRIOR\"\nprior_prompts = []\n[output]\nlayout = \"expanded\"\n"),
            at(PIPE).field("target[0].prior_prompts").needle("empty"),
        ),
        pipeline_case(
            "pipeline: variants in the paired layout",
            pipe!("variants = 3\n"),
            at(PIPE).field("target[0].variants").needle("expanded"),
        ),
        pipeline_case(
            "pipeline: keep_source in the paired layout",
            pipe!("[output]\nkeep_source = true\n"),
            at(PIPE).field("output.keep_source"),
        ),
        pipeline_case(
            "pipeline: missing model directory",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"edge\"\nadapter = \"DIR/no_such_model\"\n",
            at(PIPE).field("target[0].adapter").needle("does not exist"),
        ),
        pipeline_case(
            "pipeline: missing prior directory",
            pipe!("prior = \"DIR/no_such_prior\"\n"),
            at(PIPE).field("target[0].prior").needle("does not exist"),
        ),
        pipeline_case(
            "pipeline: adapter is not a model directory",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"edge\"\nadapter = \"DIR\"\n",
            at(PIPE).field("target[0].adapter").needle("not a model directory"),
        ),
        pipeline_case(
            "pipeline: target without an adapter",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"edge\"\n",
            at(PIPE).field("adapter").needle("missing field"),
        ),
        pipeline_case(
            "pipeline: no [[target]]",
            "[input]\nimage_key = \"observation.images.real\"\n",
            at(PIPE).field("target"),
        ),
        pipeline_case(
            "pipeline: target name escaping the output (../x)",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"../x\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target[0].name"),
        ),
        pipeline_case(
            "pipeline: target name escaping the output (/abs)",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"/abs\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target[0].name"),
        ),
        pipeline_case(
            "pipeline: target name with a path separator (a/b)",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"a/b\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target[0].name"),
        ),
        pipeline_case(
            "pipeline: empty target name",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target[0].name"),
        ),
        pipeline_case(
            "pipeline: two targets with one name",
            pipe!("[[target]]\nname = \"edge\"\nadapter = \"ADAPTER\"\n"),
            at(PIPE).field("target[1].name"),
        ),
        pipeline_case(
            "pipeline: target overwriting the input camera",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"real\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target[0].name"),
        ),
        pipeline_case(
            "pipeline: target camera the dataset already has",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"sim\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("target.sim.name").needle("already has"),
        ),
        pipeline_case(
            "pipeline: input camera the dataset lacks",
            "[input]\nimage_key = \"observation.images.wrist\"\n[[target]]\nname = \"edge\"\nadapter = \"ADAPTER\"\n",
            at(PIPE).field("input.image_key").needle("observation.images.real"),
        ),
        pipeline_case(
            "pipeline: prompt with an unknown placeholder",
            pipe!("prompt = \"{tsk}, clay\"\n"),
            at(PIPE).field("target[0].prompt"),
        ),
        pipeline_case(
            "pipeline: prompt for a model without a text encoder",
            pipe!("prompt = \"push the block\"\n"),
            at(PIPE).field("target.edge.prompt").needle("text_encoder"),
        ),
        pipeline_case(
            "pipeline: steps = 0",
            "[input]\nimage_key = \"observation.images.real\"\n[[target]]\nname = \"edge\"\nadapter = \"ADAPTER\"\nsteps = 0\n",
            at(PIPE).field("target[0].steps"),
        ),
        pipeline_case(
            "pipeline: window overlap longer than the model's window",
            pipe!("window_overlap = 64\n"),
            at(PIPE).field("target.edge.window_overlap"),
        ),
        pipeline_case(
            "pipeline: inverse rule without a prior",
            pipe!("rule = \"inverse\"\n"),
            at(PIPE).field("target[0].rule"),
        ),
        pipeline_case(
            "pipeline: crf above 63",
            pipe!("[output]\ncrf = 99\n"),
            at(PIPE).field("output.crf"),
        ),
        pipeline_case(
            "pipeline: odd output resolution",
            pipe!("[output]\nresolution = [95, 128]\n"),
            at(PIPE).field("output.resolution"),
        ),
        pipeline_case(
            "pipeline: model resolution not a multiple of 8",
            pipe!("resolution = [30, 40]\n"),
            at(PIPE).field("target[0].resolution"),
        ),
        // ---- Issue 24: metadata that contradicts itself, sizes that would exhaust memory, reasons that got lost.
        case(
            "lerobot: video timestamps inverted (from_timestamp after to_timestamp)",
            |d| {
                let r = lerobot(d);
                let (from, to) = (
                    format!("videos/{SIM}/from_timestamp"),
                    format!("videos/{SIM}/to_timestamp"),
                );
                let batch = read_parquet(&r.join(EPISODES));
                let old_from = batch.column_by_name(&from).unwrap().clone();
                let old_to = batch.column_by_name(&to).unwrap().clone();
                edit_column(&r.join(EPISODES), &from, |_| Some(old_to.clone()));
                edit_column(&r.join(EPISODES), &to, |_| Some(old_from.clone()));
                r
            },
            E(at(EPISODES)
                .ep(0)
                .field("videos/observation.images.sim/from_timestamp")
                .needle("is not before to_timestamp")),
        ),
        case(
            "lerobot: video span shorter than the episode's rows",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(EPISODES), &format!("videos/{REAL}/to_timestamp"), |c| {
                    Some(map_numbers(c, |i, x| if i == 1 { x - 1.2 } else { x }))
                });
                r
            },
            E(at(EPISODES)
                .ep(1)
                .field("videos/observation.images.real/to_timestamp")
                .needle("length 24 rows")),
        ),
        case(
            "lerobot: task_index past the tasks table (convert must say so, not 'task mismatch')",
            |d| {
                let r = lerobot(d);
                edit_column(&r.join(DATA), "task_index", |c| {
                    Some(map_numbers(c, |i, x| if i / 24 == 2 { 999.0 } else { x }))
                });
                r
            },
            E(at(DATA)
                .ep(2)
                .field("task_index")
                .needle("task_index 999 is past the tasks table")),
        ),
        case(
            "lerobot: fps of 10^12",
            |d| {
                let r = lerobot(d);
                edit_info(&r, |v| v["fps"] = json!(1e12));
                r
            },
            E(at("meta/info.json").field("fps").needle("fps 1000000000000 is outside")),
        ),
        case(
            "dataset path is a symlink loop",
            |d| {
                let p = d.join("loop");
                std::os::unix::fs::symlink(&p, &p).unwrap();
                p
            },
            E(at("loop").needle("symlink loop")),
        ),
        case(
            "rlds: shardLengths smaller than the records present",
            |d| {
                let r = rlds(d);
                edit_json(&r.join("0.0.1/dataset_info.json"), |v| {
                    v["splits"][0]["shardLengths"] = json!(["3"])
                });
                r
            },
            E(at(shard)
                .ep(3)
                .field("shardLengths")
                .needle("holds 3 records (episodes), the file holds 4")),
        ),
        model_case(
            "model: vadapt.json frames = 10^9",
            |d| {
                let m = model(d);
                std::fs::write(m.join("vadapt.json"), r#"{"frames": 1000000000}"#).unwrap();
                m
            },
            at("vadapt.json")
                .field("frames")
                .needle("frames 1000000000 is outside 1..=1024"),
        ),
        model_case(
            "model: vadapt.json height and width = 100000",
            |d| {
                let m = model(d);
                std::fs::write(m.join("vadapt.json"), r#"{"height": 100000, "width": 100000}"#)
                    .unwrap();
                m
            },
            at("vadapt.json")
                .field("height")
                .needle("height 100000 is outside 1..=4096"),
        ),
        pipeline_case(
            "pipeline: target resolution 100000x100000",
            pipe!("resolution = [100000, 100000]\n"),
            at(PIPE)
                .field("target[0].resolution")
                .needle("at most 4096 pixels"),
        ),
        pipeline_case(
            "pipeline: [output] resolution 100000x100000",
            pipe!("[output]\nresolution = [100000, 100000]\n"),
            at(PIPE)
                .field("output.resolution")
                .needle("at most 8192 pixels"),
        ),
        // Inside every limit, but the plan's memory estimate (about 270 GB of UNet activations at 4096x4096) is
        // past any test machine's MemAvailable: refused before sampling, naming the key that drives it.
        pipeline_case(
            "pipeline: target resolution within the limits but past the memory available",
            pipe!("resolution = [4096, 4096]\n"),
            at(PIPE)
                .field("target[0].resolution")
                .needle("the run needs about"),
        ),
        Case {
            name: "pipeline: adapter directory is a symlink loop",
            target: Target::Pipeline,
            build: Box::new(|d: &Path| {
                let l = d.join("loop");
                std::os::unix::fs::symlink(&l, &l).unwrap();
                let p = d.join(PIPE);
                let text = format!(
                    "[input]\nimage_key = \"{REAL}\"\n[[target]]\nname = \"edge\"\nadapter = \"{}\"\n",
                    l.display()
                );
                std::fs::write(&p, text).unwrap();
                p
            }),
            want: Want::Error(at(PIPE).field("target[0].adapter").needle("symlink loop")),
        },
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Running

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Open,
    Read,
    Decode,
}

/// Open, read every episode, decode every camera; the first error and where it happened.
fn read_everything(path: &Path) -> Result<(), (Stage, Error)> {
    let ds = open_dataset(path).map_err(|e| (Stage::Open, e))?;
    for i in ds.episode_indices() {
        let ep = ds.read_episode(i).map_err(|e| (Stage::Read, e))?;
        for (key, cam) in &ep.cameras {
            let frames = cam.decode().map_err(|e| (Stage::Decode, e))?;
            assert_eq!(
                frames.len(),
                ep.len(),
                "{}: episode {i} camera {key} decoded {} frames for {} rows without an error",
                path.display(),
                frames.len(),
                ep.len()
            );
        }
    }
    Ok(())
}

fn load_model(path: &Path) -> Result<(), Error> {
    vadapt::model_dir::ModelDir::load(path, &candle_core::Device::Cpu).map(|_| ())
}

/// The bundled LeRobot sample, the input of every pipeline case (read only).
fn pipeline_input() -> PathBuf {
    repo().join("datasets/sample/lerobot")
}

/// What `vadapt augment` checks before it writes anything: the config, then the plan (dataset, cameras, models).
fn load_pipeline(path: &Path, out: &Path) -> Result<(), Error> {
    use vadapt::pipeline::{plan, PipelineConfig, RunOptions, Shard};
    let cfg = PipelineConfig::load(path)?;
    let opts = RunOptions {
        compute: Default::default(),
        input: pipeline_input(),
        output: out.to_path_buf(),
        shard: Shard::default(),
        resume: false,
        limit: None,
        strict: false,
        threads: 1,
        progress: None,
        max_memory: None,
        stop: None,
        fail: None,
    };
    plan(&cfg, path, &opts).map(|_| ())
}

/// Problems with one error against its expectation (empty when it matches).
fn check_error(e: &Error, want: &Expect) -> Vec<String> {
    let msg = e.to_string();
    let mut bad = Vec::new();
    match e.location() {
        None => bad.push(format!("error has no location: {msg}")),
        Some(loc) => {
            let path = loc
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if !path.ends_with(want.file) {
                bad.push(format!("error should name {}: {msg}", want.file));
            }
            if want.episode.is_some() && loc.episode != want.episode {
                bad.push(format!(
                    "error should name episode {:?}: {msg}",
                    want.episode
                ));
            }
            if want.field.is_some() && loc.field.as_deref() != want.field {
                bad.push(format!("error should name field {:?}: {msg}", want.field));
            }
        }
    }
    if let Some(n) = want.needle {
        if !msg.contains(n) {
            bad.push(format!("error should say {n:?}: {msg}"));
        }
    }
    bad
}

struct Cli {
    ok: bool,
    stderr: String,
    /// Ended by a signal (an abort, e.g. on a failed allocation) rather than an exit code.
    signalled: bool,
}

/// The most data memory a CLI run of a case may map (issue 24: no case may allocate more than 2 GB). Enforced with
/// `RLIMIT_DATA`, which counts what the allocator actually maps writable (not the address space glibc reserves
/// for its arenas), so an allocation past it fails, the run aborts, and the case fails on any machine, however
/// much memory it has.
const CASE_MEMORY: u64 = 2 << 30;

fn cli(args: &[&std::ffi::OsStr]) -> Cli {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut cmd = Command::new(vadapt_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        // Library backtraces (candle attaches one to its errors when asked) must not reach the user's message.
        .env("RUST_LIB_BACKTRACE", "1");
    // SAFETY: setrlimit is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: CASE_MEMORY as libc::rlim_t,
                rlim_max: CASE_MEMORY as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run vadapt");
    Cli {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        signalled: out.status.signal().is_some(),
    }
}

/// A part of an error line that says again what the part before it said: the cause printed twice
/// ("x.mp4: video file not found: video file not found"), or a kind named twice ("video: Video error: ...").
/// The parts of a line are what ": " separates.
fn said_twice(stderr: &str) -> Option<String> {
    for line in stderr.lines().filter(|l| l.starts_with("error: ")) {
        let parts: Vec<String> = line.split(": ").map(|p| p.trim().to_lowercase()).collect();
        for pair in parts.windows(2) {
            let (before, part) = (&pair[0], &pair[1]);
            let kind_again =
                !before.contains(' ') && part.split_whitespace().next() == Some(before.as_str());
            if !before.is_empty() && (part == before || kind_again) {
                return Some(part.clone());
            }
        }
    }
    None
}

/// Problems with a CLI failure against its expectation.
fn check_cli_error(what: &str, r: &Cli, want: &Expect) -> Vec<String> {
    let mut bad = Vec::new();
    if r.ok {
        bad.push(format!("{what} succeeded"));
        return bad;
    }
    if r.stderr.contains("\n   0: ") || r.stderr.contains("stack backtrace") {
        bad.push(format!(
            "{what}: the message carries a backtrace:\n{}",
            r.stderr
        ));
    }
    if let Some(part) = said_twice(&r.stderr) {
        bad.push(format!(
            "{what}: the message says {part:?} twice:\n{}",
            r.stderr
        ));
    }
    if !r.stderr.contains(want.file) {
        bad.push(format!(
            "{what}: stderr should name {}:\n{}",
            want.file, r.stderr
        ));
    }
    if let Some(ep) = want.episode {
        if !r.stderr.contains(&format!("episode {ep}")) {
            bad.push(format!(
                "{what}: stderr should name episode {ep}:\n{}",
                r.stderr
            ));
        }
    }
    if let Some(field) = want.field {
        if !r.stderr.contains(field) {
            bad.push(format!("{what}: stderr should name {field}:\n{}", r.stderr));
        }
    }
    if let Some(n) = want.needle {
        if !r.stderr.contains(n) {
            bad.push(format!("{what}: stderr should say {n:?}:\n{}", r.stderr));
        }
    }
    bad
}

/// Run one case; returns (problems, panicked).
fn run_case(c: &Case, dir: &Path) -> (Vec<String>, bool) {
    let input = (c.build)(dir);
    let out = dir.join("out");
    let mut bad = Vec::new();

    // Library.
    let lib = catch_unwind(AssertUnwindSafe(|| match c.target {
        Target::Dataset => read_everything(&input),
        Target::Model => load_model(&input).map_err(|e| (Stage::Open, e)),
        Target::Pipeline => load_pipeline(&input, &out).map_err(|e| (Stage::Open, e)),
    }));
    let lib = match lib {
        Err(_) => return (vec!["the library panicked".into()], true),
        Ok(r) => r,
    };
    let stage = match (&lib, &c.want) {
        (Err((stage, e)), Want::Error(want)) => {
            // Shown with --nocapture, to judge the messages by eye.
            eprintln!("     {stage:?}: {e}");
            bad.extend(check_error(e, want));
            Some(*stage)
        }
        (Ok(()), Want::Error(_)) => {
            bad.push("the library read it without an error".into());
            None
        }
        (Err((_, e)), Want::Ok { .. } | Want::ReadOnly { .. }) => {
            bad.push(format!("the library should read it: {e}"));
            None
        }
        (Ok(()), Want::Ok { lib, .. } | Want::ReadOnly { lib, .. }) => {
            let ds = open_dataset(&input).unwrap();
            if catch_unwind(AssertUnwindSafe(|| lib(&input, ds.as_ref()))).is_err() {
                bad.push("the values did not pass through (see the assertion above)".into());
            }
            None
        }
    };

    // CLI.
    let runs: Vec<(&str, Cli)> = match c.target {
        Target::Dataset => vec![
            ("inspect", cli(&["inspect".as_ref(), input.as_os_str()])),
            (
                "convert",
                cli(&["convert".as_ref(), input.as_os_str(), out.as_os_str()]),
            ),
        ],
        Target::Pipeline => vec![(
            "augment",
            cli(&[
                "augment".as_ref(),
                "--pipeline".as_ref(),
                input.as_os_str(),
                "--input".as_ref(),
                pipeline_input().as_os_str(),
                "--output".as_ref(),
                out.as_os_str(),
                "--quiet".as_ref(),
            ]),
        )],
        Target::Model => vec![(
            "sample",
            cli(&[
                "sample".as_ref(),
                "--model".as_ref(),
                input.as_os_str(),
                "--out".as_ref(),
                out.with_extension("mp4").as_os_str(),
            ]),
        )],
    };
    let mut panicked = false;
    for (what, r) in &runs {
        if r.stderr.contains("panicked") {
            panicked = true;
            bad.push(format!("vadapt {what} panicked:\n{}", r.stderr));
        }
        if r.signalled || r.stderr.contains("memory allocation of") {
            bad.push(format!(
                "vadapt {what} aborted (an allocation past {} GiB, or a signal):\n{}",
                CASE_MEMORY >> 30,
                r.stderr
            ));
        }
    }
    for (what, r) in &runs {
        let want_fail = match (&c.want, *what) {
            (Want::Error(e), "inspect") if stage == Some(Stage::Decode) => {
                // inspect does not decode pixels; if it fails anyway it must still name the file.
                if !r.ok {
                    bad.extend(check_cli_error(what, r, &at(e.file)));
                }
                continue;
            }
            (Want::Error(e), _) => Some(e),
            (Want::ReadOnly { convert, .. }, "convert") => Some(convert),
            _ => None,
        };
        match want_fail {
            Some(e) => bad.extend(check_cli_error(what, r, e)),
            None if !r.ok => bad.push(format!("vadapt {what} failed:\n{}", r.stderr)),
            None => {}
        }
    }
    let out_left = out.exists() || out.with_extension("mp4").exists();
    match &c.want {
        // The converted output holds the same values (a failed convert is reported above).
        Want::Ok { out: check, .. }
            if out.exists() && catch_unwind(AssertUnwindSafe(|| check(&input, &out))).is_err() =>
        {
            bad.push("convert changed the values (see the assertion above)".into())
        }
        Want::Ok { .. } => {}
        _ if out_left => bad.push("a failed command left its output behind".into()),
        _ => {}
    }
    (bad, panicked)
}

#[test]
fn bad_input_corpus_gives_intended_errors_and_never_panics() {
    let cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus should hold at least 30 cases"
    );
    let only = std::env::var("VADAPT_CASE").ok();
    let tmp = tempfile::tempdir().unwrap();
    let (mut good, mut panics, mut ran) = (0, 0, 0);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        ran += 1;
        let dir = tmp.path().join(format!("case-{i:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = std::time::Instant::now();
        let (bad, panicked) = run_case(c, &dir);
        eprintln!(
            "[{:>2}] {:<70} {} ({:.1}s)",
            i,
            c.name,
            if bad.is_empty() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        panics += panicked as usize;
        if bad.is_empty() {
            good += 1;
        } else {
            failures.push(format!("{}:\n  {}", c.name, bad.join("\n  ")));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{good}/{ran} cases gave the intended error, {panics} panics");
    eprintln!("{good}/{ran} cases gave the intended error, {panics} panics");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(panics, 0);
}

/// Safety (issue 9): vadapt spawns no process, so no shell ever sees a user string, and has no pickle loader
/// (candle's `pickle` module, `.pth` readers, serde-pickle); weights come from safetensors only. The one exception
/// is `vadapt bench --peer` (src/cli/bench.rs), which by design starts the diffusers peer: the Python interpreter
/// and script are passed as arguments, never through a shell.
#[test]
fn no_subprocess_and_no_pickle_loader_in_src() {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    assert!(files.len() > 20, "expected the sources under src/");
    // `bench::run_peer_script` starts the diffusers peers (of `bench --peer` and `bench --train`): one Command, no
    // shell, nowhere else.
    let peer_runner = repo().join("src/cli/bench.rs");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let is_peer_runner = *f == peer_runner;
        if is_peer_runner {
            assert_eq!(
                text.matches("Command::new(").count(),
                1,
                "{}: only the diffusers peer may be started",
                f.display()
            );
            assert!(
                !text.contains("\"sh\"") && !text.contains("\"bash\""),
                "{}: no shell",
                f.display()
            );
        }
        let spawning: &[&str] = if is_peer_runner {
            &[]
        } else {
            &["process::Command", "Command::new("]
        };
        for bad in
            spawning
                .iter()
                .copied()
                .chain(["pickle::", "read_pth", "from_pth", "serde_pickle"])
        {
            assert!(!text.contains(bad), "{} uses {bad}", f.display());
        }
    }
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for bad in ["serde-pickle", "tch ", "tch=", "pyo3"] {
        assert!(!manifest.contains(bad), "Cargo.toml depends on {bad}");
    }
}
