//! Property (issue 24): one damaged metadata field of a LeRobot dataset (the episodes table, the tasks table,
//! info.json, the index columns of the data) gives either a clear error, naming the file and the episode or the
//! field, or exactly what the undamaged dataset gives: the same episodes, tasks, columns and decoded frames. Never
//! different data without a word (before issue 24: another episode's frames behind inverted timestamps, a
//! task_index past the table read as task 0, a shard's records dropped).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use serde_json::json;
use vadapt::io::open_dataset;

use crate::bad_inputs::{edit_column, map_numbers};
use crate::common::repo;

const EPISODES: &str = "meta/episodes/chunk-000/file-000.parquet";
const DATA: &str = "data/chunk-000/file-000.parquet";
const TASKS: &str = "meta/tasks.parquet";

/// One camera as read: key, frame count, CRC-32C of every frame's pixels.
type Camera = (String, usize, u32);

/// What reading a dataset gives: per episode its index, task, fps (bits), columns and cameras.
#[derive(Debug, PartialEq)]
struct Read {
    episodes: Vec<(u64, String, u64, RecordBatch, Vec<Camera>)>,
}

/// Read every episode and decode every camera; the first error.
fn read_all(root: &Path) -> vadapt::Result<Read> {
    let ds = open_dataset(root)?;
    let mut episodes = Vec::new();
    for i in ds.episode_indices() {
        let ep = ds.read_episode(i)?;
        let mut cams = Vec::new();
        for (key, cam) in &ep.cameras {
            let frames = cam.decode()?;
            let crc = frames
                .iter()
                .fold(0u32, |c, f| crc32c::crc32c_append(c, f.as_raw()));
            cams.push((key.clone(), frames.len(), crc));
        }
        episodes.push((
            i.0,
            ep.task.clone(),
            ep.fps.to_bits(),
            ep.columns.clone(),
            cams,
        ));
    }
    Ok(Read { episodes })
}

fn undamaged() -> &'static Read {
    static R: OnceLock<Read> = OnceLock::new();
    R.get_or_init(|| read_all(&repo().join("datasets/sample/lerobot")).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

/// A metadata field: (file, column or info.json key).
fn field() -> impl Strategy<Value = (&'static str, &'static str)> {
    let video = |cam: &'static str| {
        prop_oneof![
            Just((
                EPISODES,
                if cam == "real" {
                    "videos/observation.images.real/from_timestamp"
                } else {
                    "videos/observation.images.sim/from_timestamp"
                }
            )),
            Just((
                EPISODES,
                if cam == "real" {
                    "videos/observation.images.real/to_timestamp"
                } else {
                    "videos/observation.images.sim/to_timestamp"
                }
            )),
            Just((
                EPISODES,
                if cam == "real" {
                    "videos/observation.images.real/file_index"
                } else {
                    "videos/observation.images.sim/chunk_index"
                }
            )),
        ]
    };
    prop_oneof![
        Just((EPISODES, "episode_index")),
        Just((EPISODES, "length")),
        Just((EPISODES, "dataset_from_index")),
        Just((EPISODES, "dataset_to_index")),
        Just((EPISODES, "data/file_index")),
        Just((EPISODES, "meta/episodes/chunk_index")),
        video("real"),
        video("sim"),
        Just((TASKS, "task_index")),
        Just((DATA, "task_index")),
        Just((DATA, "episode_index")),
        Just(("meta/info.json", "fps")),
        Just(("meta/info.json", "total_frames")),
        Just(("meta/info.json", "chunks_size")),
    ]
}

/// How the value changes: added to, or replaced.
#[derive(Debug, Clone, Copy)]
enum Change {
    Add(f64),
    Set(f64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        prop::sample::select(vec![-1.0, 1.0, 0.05, -0.05, 0.5, 2.4, 100.0, 999.0])
            .prop_map(Change::Add),
        prop::sample::select(vec![0.0, -1.0, 1e12]).prop_map(Change::Set),
    ]
}

fn apply(c: Change, x: f64) -> f64 {
    match c {
        Change::Add(d) => x + d,
        Change::Set(v) => v,
    }
}

/// The sample with `field` of row `row` (every row of episode `row` for the data table) changed by `c`.
fn damaged(dir: &Path, (file, key): (&str, &str), row: usize, c: Change) -> PathBuf {
    let root = dir.join("lerobot");
    copy_dir(&repo().join("datasets/sample/lerobot"), &root);
    if file == "meta/info.json" {
        let p = root.join(file);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let x = v[key].as_f64().unwrap();
        let y = apply(c, x);
        v[key] = if v[key].is_u64() && y >= 0.0 && y.fract() == 0.0 {
            json!(y as u64)
        } else {
            json!(y)
        };
        std::fs::write(&p, v.to_string()).unwrap();
    } else {
        let rows_per_episode = if file == DATA { 24 } else { 1 };
        edit_column(&root.join(file), key, |col| {
            Some(map_numbers(col, |i, x| {
                if i / rows_per_episode == row {
                    apply(c, x)
                } else {
                    x
                }
            }))
        });
    }
    root
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_metadata_gives_a_clear_error_or_the_undamaged_read(
        field in field(),
        row in 0usize..4,
        c in change(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = damaged(dir.path(), field, row, c);
        match read_all(&root) {
            Ok(read) => prop_assert!(
                &read == undamaged(),
                "{field:?} of row {row} changed by {c:?}: read without an error, but not what the undamaged \
                 dataset gives"
            ),
            Err(e) => {
                let loc = e.location().cloned().unwrap_or_default();
                prop_assert!(
                    loc.path.is_some() && (loc.episode.is_some() || loc.field.is_some()),
                    "{field:?} of row {row} changed by {c:?}: the error names no file and episode or field: {e}"
                );
            }
        }
    }
}

/// `vadapt inspect --check` runs every check over every episode: the sample passes; with episode 2's rows pointing
/// past the tasks table and episode 1's span inverted it reports both (not only the first) and exits non-zero.
#[test]
fn inspect_check_reports_every_failing_episode() {
    let run = |root: &Path| {
        let out = std::process::Command::new(crate::common::vadapt_bin())
            .args(["inspect", "--check"])
            .arg(root)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stderr) = run(&repo().join("datasets/sample/lerobot"));
    assert!(
        ok && stderr.contains("checked 4 episodes: every check passed"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let root = damaged(dir.path(), (DATA, "task_index"), 2, Change::Set(999.0));
    let key = "videos/observation.images.sim/from_timestamp";
    edit_column(&root.join(EPISODES), key, |c| {
        Some(map_numbers(c, |i, x| if i == 1 { x + 5.0 } else { x }))
    });
    let (ok, stderr) = run(&root);
    assert!(!ok, "inspect --check passed a damaged dataset:\n{stderr}");
    assert!(
        stderr.contains("2 of 4 episodes failed the checks"),
        "{stderr}"
    );
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("check failed: "))
        .collect();
    assert_eq!(failed.len(), 2, "{stderr}");
    assert!(
        failed[0].contains("episode 1") && failed[0].contains(key),
        "{stderr}"
    );
    assert!(
        failed[1].contains("episode 2")
            && failed[1].contains("task_index 999 is past the tasks table"),
        "{stderr}"
    );
}
