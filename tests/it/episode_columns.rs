//! Extra episodes-table columns (the bundled LanguageTable sample's `language_table/…` and `appearance/<camera>/…`)
//! survive `vadapt augment` in both layouts, shards + merge, and `vadapt convert`: same names, arrow types and
//! values per episode, read straight from the written parquet. Episodes that disagree on them, and names in
//! vadapt's `augmentation.` namespace, are refused naming the file, episode and column.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use vadapt::io::lerobot::episode_columns::is_lerobot_column;
use vadapt::io::lerobot::{LeRobotDataset, LeRobotWriter, WriterOptions};
use vadapt::io::EpisodeSource;
use vadapt::pipeline::{self, PipelineConfig, Shard};

use crate::common::{self, vadapt};
use crate::pipeline::{assert_same_dataset, opts};

const KEY: &str = "observation.images.rgb";

fn sample() -> PathBuf {
    let p = common::repo().join("datasets/language_table");
    assert!(
        p.join("meta/info.json").exists(),
        "{} is missing: the LanguageTable sample is committed there",
        p.display()
    );
    p
}

/// Per episode_index, every extra column of the episodes table as (name, arrow type, one-row value), read from
/// the parquet files themselves (not through vadapt's reader).
type Extras = BTreeMap<u64, Vec<(String, DataType, ArrayRef)>>;

fn episodes_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for chunk in std::fs::read_dir(root.join("meta/episodes")).expect("meta/episodes") {
        for f in std::fs::read_dir(chunk.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

fn read_batches(f: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

fn extras(root: &Path) -> Extras {
    let mut out = Extras::new();
    for f in episodes_files(root) {
        for b in read_batches(&f) {
            let eps = b.column_by_name("episode_index").unwrap().clone();
            let eps = eps.as_primitive::<Int64Type>();
            for row in 0..b.num_rows() {
                let cols = b
                    .schema()
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .filter(|(f, _)| !is_lerobot_column(f.name()))
                    .map(|(f, c)| (f.name().clone(), f.data_type().clone(), c.slice(row, 1)))
                    .collect();
                out.insert(eps.value(row) as u64, cols);
            }
        }
    }
    out
}

/// The sample carries LanguageTable's per-episode columns and a name and parameters per appearance camera.
fn source_extras() -> Extras {
    let src = extras(&sample());
    let names: Vec<&str> = src[&0].iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "language_table/seed",
        "language_table/reward_type",
        "language_table/block_mode",
        "language_table/success",
        "language_table/steps",
        "appearance/observation.images.appearance_0/name",
        "appearance/observation.images.appearance_0/params",
    ] {
        assert!(names.contains(&want), "the sample lacks {want}: {names:?}");
    }
    // Distinct per episode, or the per-episode mapping below would prove nothing.
    assert_ne!(
        src[&0], src[&1],
        "episodes 0 and 1 have the same extra values"
    );
    src
}

/// Output episode i (source episode `sources[i]`) has exactly the source's extra columns, in the source's order.
fn assert_extras(out: &Path, src: &Extras, sources: &[u64], what: &str) {
    let got = extras(out);
    assert_eq!(got.len(), sources.len(), "{what}: episodes");
    for (i, s) in sources.iter().enumerate() {
        let (a, b) = (&got[&(i as u64)], &src[s]);
        assert_eq!(
            a.iter().map(|c| (&c.0, &c.1)).collect::<Vec<_>>(),
            b.iter().map(|c| (&c.0, &c.1)).collect::<Vec<_>>(),
            "{what}: episode {i} (source {s}): names and types"
        );
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                x.2.to_data(),
                y.2.to_data(),
                "{what}: episode {i} (source {s}): {}",
                x.0
            );
        }
    }
}

/// One demo adapter, one step; `output` lines go in `[output]`.
fn toml(dir: &Path, layout: &str, output: &str) -> PathBuf {
    let p = dir.join(format!("lt_{layout}.toml"));
    let text = format!(
        "seed = 3\n[input]\nimage_key = \"{KEY}\"\n[output]\nlayout = \"{layout}\"\ncodec = \"h264\"\n{output}\n\
         [[target]]\nname = \"sim\"\nadapter = \"{}\"\nguidance = 1.0\nsteps = 1\n",
        common::repo().join("models/demo/edge_to_sim").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// The source episode of each output episode, as `meta/augmentation.json` records it (the expanded layout's
/// `episodes[i].source_episode`, else `source_episodes[i]`).
fn source_episodes(out: &Path) -> Vec<u64> {
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    match prov["episodes"].as_array() {
        Some(eps) => eps
            .iter()
            .map(|e| e["source_episode"].as_u64().unwrap())
            .collect(),
        None => prov["source_episodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect(),
    }
}

#[test]
fn language_table_episode_columns_survive_augment_paired_expanded_shards_merge_and_convert() {
    let src = source_extras();
    let data = sample();
    let dir = tempfile::tempdir().unwrap();

    // Paired, the first two episodes (16 and 83 frames).
    let paired = toml(dir.path(), "paired", "");
    let cfg = PipelineConfig::load(&paired).unwrap();
    let reference = dir.path().join("paired");
    let mut o = opts(&data, &reference);
    o.limit = Some(2);
    let s = pipeline::run(&cfg, &paired, &o).unwrap();
    assert_eq!(s.episodes_written, 2);
    assert_eq!(source_episodes(&reference), [0, 1]);
    assert_extras(&reference, &src, &[0, 1], "paired");
    // vadapt's reader gives them back too.
    let ds = LeRobotDataset::open(&reference).unwrap();
    assert_eq!(
        ds.episodes()[1].columns,
        LeRobotDataset::open(&data).unwrap().episodes()[1].columns
    );

    // Shards + merge: the same values, and the same bytes as the single run.
    let mut parts = Vec::new();
    for i in 0..2 {
        let part = dir.path().join(format!("part{i}"));
        let mut o = opts(&data, &part);
        o.limit = Some(2);
        o.shard = Shard { index: i, count: 2 };
        pipeline::run(&cfg, &paired, &o).unwrap();
        parts.push(part);
    }
    assert_extras(&parts[1], &src, &[1], "shard 1/2");
    let merged = dir.path().join("merged");
    vadapt(&[
        "merge",
        merged.to_str().unwrap(),
        parts[0].to_str().unwrap(),
        parts[1].to_str().unwrap(),
        "--quiet",
    ]);
    assert_extras(&merged, &src, &[0, 1], "merged");
    assert_same_dataset(&reference, &merged);

    // Expanded with the sources kept: the kept source and the variant of each source episode carry its values.
    let expanded = toml(dir.path(), "expanded", "keep_source = true");
    let cfg = PipelineConfig::load(&expanded).unwrap();
    let out = dir.path().join("expanded");
    let mut o = opts(&data, &out);
    o.limit = Some(2);
    let s = pipeline::run(&cfg, &expanded, &o).unwrap();
    assert_eq!(s.episodes_written, 4);
    let sources = source_episodes(&out);
    assert_eq!(sources, [0, 0, 1, 1]);
    assert_extras(&out, &src, &sources, "expanded");

    // vadapt convert LeRobot -> LeRobot keeps them as well.
    let converted = dir.path().join("converted");
    vadapt(&[
        "convert",
        reference.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert_extras(&converted, &src, &[0, 1], "convert");
}

/// A copy of the sample's metadata (and data) whose episodes table is `batches`, one file each; the videos are
/// not copied, since opening reads metadata only.
fn with_episodes_table(dir: &Path, batches: &[RecordBatch]) -> PathBuf {
    let root = dir.join("lt");
    let src = sample();
    std::fs::create_dir_all(root.join("meta")).unwrap();
    for f in ["meta/info.json", "meta/tasks.parquet"] {
        std::fs::copy(src.join(f), root.join(f)).unwrap();
    }
    for (i, b) in batches.iter().enumerate() {
        let path = root.join(format!("meta/episodes/chunk-000/file-{i:03}.parquet"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), b.schema(), None).unwrap();
        w.write(b).unwrap();
        w.close().unwrap();
    }
    root
}

fn drop_column(b: &RecordBatch, name: &str) -> RecordBatch {
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| b.schema().field(i).name() != name)
        .collect();
    b.project(&keep).unwrap()
}

#[test]
fn episode_columns_that_differ_between_episodes_or_use_vadapt_names_are_refused() {
    let table = read_batches(&episodes_files(&sample())[0]);
    let table = arrow::compute::concat_batches(&table[0].schema(), &table).unwrap();
    assert!(
        table.num_rows() >= 4,
        "the sample has {} episodes",
        table.num_rows()
    );
    let (head, tail) = (table.slice(0, 2), table.slice(2, table.num_rows() - 2));

    // A column only some episodes have: the first episode without it is named, with its file.
    let dir = tempfile::tempdir().unwrap();
    let root = with_episodes_table(
        dir.path(),
        &[head.clone(), drop_column(&tail, "language_table/seed")],
    );
    let err = LeRobotDataset::open(&root).unwrap_err().to_string();
    assert!(
        err.contains("file-001.parquet")
            && err.contains("episode 2")
            && err.contains("language_table/seed")
            && err.contains("lacks"),
        "{err}"
    );

    // vadapt's `augmentation.` namespace is refused.
    let dir = tempfile::tempdir().unwrap();
    let schema = table.schema();
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == "language_table/seed" {
                f.with_name("augmentation.seed")
            } else {
                f
            }
        })
        .collect();
    let renamed =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), table.columns().to_vec()).unwrap();
    let root = with_episodes_table(dir.path(), &[renamed]);
    let err = LeRobotDataset::open(&root).unwrap_err().to_string();
    assert!(
        err.contains("file-000.parquet")
            && err.contains("augmentation.seed")
            && err.contains("reserved"),
        "{err}"
    );

    // The writer refuses an episode whose extra columns differ from the first one's, before writing anything,
    // and stays usable. (Table columns only: no video to encode.)
    let ds = LeRobotDataset::open(sample()).unwrap();
    let features: vadapt::episode::Features = ds
        .features()
        .iter()
        .filter(|(_, f)| !f.is_visual())
        .map(|(k, f)| (k.clone(), f.clone()))
        .collect();
    let read = |i: u64| {
        let mut e = ds.read_episode(vadapt::episode::EpisodeIndex(i)).unwrap();
        e.cameras.clear();
        e
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut w = LeRobotWriter::create(&out, ds.fps(), &features, WriterOptions::default()).unwrap();
    w.save_episode(&read(0)).unwrap();
    let mut second = read(1);
    second.episode_columns = Default::default();
    let err = w.save_episode(&second).unwrap_err().to_string();
    assert!(
        err.contains("episode 1") && err.contains("language_table/seed") && err.contains("lacks"),
        "{err}"
    );
    w.save_episode(&read(1)).unwrap();
    assert_eq!(w.finalize().unwrap().episodes, 2);
    let src = extras(&sample());
    assert_extras(&out, &src, &[0, 1], "writer after a refused episode");
}
