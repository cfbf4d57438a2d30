//! Interoperability with the real libraries (tests/interop/*.py, run in the venv scripts/setup.sh makes):
//! datasets written by `lerobot` 0.4.4 and `tensorflow-datasets` 4.9.10 read by vadapt with exact values, and
//! datasets written by vadapt loaded by `lerobot.LeRobotDataset` with every value equal.

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Int64Type};
use vadapt::episode::Episode;
use vadapt::io::open_dataset;

use crate::common::{load_f32, repo, vadapt};

fn python() -> PathBuf {
    let p = std::env::var_os("VADAPT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: the interop tests need the Python venv with lerobot and tensorflow-datasets; run `bash scripts/setup.sh` (or set VADAPT_PYTHON)",
        p.display()
    );
    p
}

fn run_py(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/interop").join(script))
        .args(args)
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every value of a numeric / bool column, flattened (lists of any depth), as f64 for exact comparison of f32 / i64.
fn values(col: &ArrayRef) -> Vec<f64> {
    match col.data_type() {
        DataType::FixedSizeList(_, _) => values(col.as_fixed_size_list().values()),
        DataType::List(_) => values(col.as_list::<i32>().values()),
        DataType::LargeList(_) => values(col.as_list::<i64>().values()),
        DataType::Float32 => col
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .map(|&v| v as f64)
            .collect(),
        DataType::Int64 => col
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&v| v as f64)
            .collect(),
        DataType::Boolean => {
            let b = col.as_boolean();
            (0..b.len()).map(|i| b.value(i) as u8 as f64).collect()
        }
        other => panic!("unexpected column type {other:?}"),
    }
}

fn column(ep: &Episode, name: &str) -> Vec<f64> {
    let col = ep
        .columns
        .column_by_name(name)
        .unwrap_or_else(|| panic!("episode {} has no column {name:?}", ep.index));
    values(col)
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn frames_flat(ep: &Episode, key: &str) -> Vec<f32> {
    let frames = ep.cameras[key].decode().unwrap();
    frames
        .iter()
        .flat_map(|f| f.as_raw().iter().map(|&v| v as f32))
        .collect()
}

fn mean_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "frame data length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}

fn task_of(
    expected: &std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    key: &str,
) -> String {
    String::from_utf8(expected[key].1.iter().map(|&v| v as u8).collect()).unwrap()
}

#[test]
fn lerobot_written_dataset_reads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    run_py("make_lerobot.py", &[dir.path()]);
    let expected = load_f32(&dir.path().join("expected.safetensors"));
    let ds = open_dataset(&dir.path().join("dataset")).unwrap();
    assert_eq!(ds.format(), "lerobot-v3.0");
    let indices = ds.episode_indices();
    assert_eq!(indices.len(), 3);
    for (i, index) in indices.into_iter().enumerate() {
        let ep = ds.read_episode(index).unwrap();
        let n = expected[&format!("ep{i}.frames")].0[0];
        assert_eq!(ep.len(), n, "episode {i} rows");
        for key in ["observation.state", "action", "next.reward", "next.done"] {
            assert_eq!(
                column(&ep, key),
                as_f64(&expected[&format!("ep{i}.{key}")].1),
                "episode {i} {key}"
            );
        }
        let frames = frames_flat(&ep, "observation.images.rgb");
        let err = mean_abs(&frames, &expected[&format!("ep{i}.frames")].1);
        eprintln!("lerobot -> vadapt, episode {i}: {n} frames, mean abs pixel error vs source {err:.3}/255");
        assert!(
            err <= 2.0,
            "episode {i}: mean abs pixel error {err} > 2/255"
        );
    }
}

#[test]
fn vadapt_written_dataset_loads_in_lerobot() {
    let dir = tempfile::tempdir().unwrap();
    run_py("make_lerobot.py", &[dir.path()]);
    let expected = load_f32(&dir.path().join("expected.safetensors"));
    // Through vadapt's reader and writer (every column passed through, video re-encoded).
    let ours = dir.path().join("ours");
    vadapt(&[
        "convert",
        dir.path().join("dataset").to_str().unwrap(),
        ours.to_str().unwrap(),
    ]);
    let dump = dir.path().join("dump.safetensors");
    let summary = run_py("dump_lerobot.py", &[&ours, &dump]);
    assert!(summary.contains("\"episodes\": 3"), "{summary}");
    let got = load_f32(&dump);
    for i in 0..3 {
        for key in ["observation.state", "action", "next.reward", "next.done"] {
            assert_eq!(
                got[&format!("ep{i}.{key}")].1,
                expected[&format!("ep{i}.{key}")].1,
                "episode {i} {key} as lerobot loads it"
            );
        }
        let n = expected[&format!("ep{i}.frames")].0[0];
        assert_eq!(
            got[&format!("ep{i}.frame_index")].1,
            (0..n).map(|f| f as f32).collect::<Vec<_>>()
        );
        assert_eq!(got[&format!("ep{i}.episode_index")].1, vec![i as f32; n]);
        let frames = &got[&format!("ep{i}.observation.images.rgb")];
        assert_eq!(
            frames.0[0], n,
            "episode {i}: lerobot decodes {} frames",
            frames.0[0]
        );
        // Two lossy encodes (lerobot's, then ours) lie between these frames and the originals.
        let err = mean_abs(&frames.1, &expected[&format!("ep{i}.frames")].1);
        eprintln!("vadapt -> lerobot, episode {i}: mean abs pixel error vs the original frames {err:.3}/255");
        assert!(err <= 4.0, "episode {i}: {err}");
        let task = task_of(&got, &format!("ep{i}.task"));
        assert!(
            [
                "push the red star to the blue cube",
                "move the green moon left"
            ]
            .contains(&task.as_str()),
            "{task:?}"
        );
    }
}

/// lerobot 0.4.4 loads a dataset vadapt wrote with its cameras as images (`convert --storage images`: lerobot's
/// `use_videos=False` layout, PNG in the data parquet), and every frame it returns equals vadapt's exactly.
#[test]
fn vadapt_image_storage_dataset_loads_in_lerobot_with_equal_frames() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    vadapt(&[
        "convert",
        repo().join("datasets/sample/rlds").to_str().unwrap(),
        ours.to_str().unwrap(),
        "--storage",
        "images",
    ]);
    let dump = dir.path().join("dump.safetensors");
    let summary: serde_json::Value =
        serde_json::from_str(run_py("dump_lerobot.py", &[&ours, &dump]).trim()).unwrap();
    assert_eq!(summary["episodes"], 4, "{summary}");
    assert_eq!(summary["video_keys"], serde_json::json!([]), "{summary}");
    let got = load_f32(&dump);
    let ds = open_dataset(&ours).unwrap();
    for (i, index) in ds.episode_indices().into_iter().enumerate() {
        let ep = ds.read_episode(index).unwrap();
        for cam in ["observation.images.rgb", "observation.images.sim"] {
            let (shape, values) = &got[&format!("ep{i}.{cam}")];
            assert_eq!(shape, &[ep.len(), 90, 160, 3], "episode {i} {cam}");
            assert!(
                values == &frames_flat(&ep, cam),
                "episode {i} {cam}: lerobot's frames differ from vadapt's"
            );
        }
        assert_eq!(
            as_f64(&got[&format!("ep{i}.action")].1),
            column(&ep, "action"),
            "episode {i} action"
        );
    }
}

#[test]
fn tfds_written_rlds_reads_exactly_and_converts_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    run_py("make_rlds.py", &[dir.path()]);
    let expected = load_f32(&dir.path().join("expected.safetensors"));
    let root = dir.path().join("data/language_table");
    let ds = open_dataset(&root).unwrap();
    assert_eq!(ds.format(), "rlds");
    let eps: Vec<Episode> = ds
        .episode_indices()
        .into_iter()
        .map(|i| ds.read_episode(i).unwrap())
        .collect();
    assert_eq!(eps.len(), 3);
    // tfds shuffles records by key: match episodes by their (unique) instruction.
    let by_task = |t: &str| (0..3).find(|i| task_of(&expected, &format!("ep{i}.instruction")) == t);
    for ep in &eps {
        let i = by_task(&ep.task).unwrap_or_else(|| panic!("unknown instruction {:?}", ep.task));
        let n = expected[&format!("ep{i}.rgb")].0[0];
        assert_eq!(ep.len(), n, "{:?} frames", ep.task);
        for (ours, theirs) in [
            ("action", "action"),
            ("observation.state", "effector_translation"),
            (
                "observation.effector_target_translation",
                "effector_target_translation",
            ),
            ("next.reward", "reward"),
            ("is_first", "is_first"),
            ("is_last", "is_last"),
            ("is_terminal", "is_terminal"),
        ] {
            assert_eq!(
                column(ep, ours),
                as_f64(&expected[&format!("ep{i}.{theirs}")].1),
                "{ours} of {:?}",
                ep.task
            );
        }
        let err = mean_abs(
            &frames_flat(ep, "observation.images.rgb"),
            &expected[&format!("ep{i}.rgb")].1,
        );
        eprintln!(
            "tfds -> vadapt, {:?}: mean abs pixel error vs the pre-JPEG frames {err:.3}/255",
            ep.task
        );
        assert!(err <= 2.0, "{err}");
    }
    // RLDS -> LeRobot -> read: every non-image value bit-exact.
    let out = dir.path().join("lerobot");
    vadapt(&["convert", root.to_str().unwrap(), out.to_str().unwrap()]);
    let converted = open_dataset(&out).unwrap();
    for (k, index) in converted.episode_indices().into_iter().enumerate() {
        let ep = converted.read_episode(index).unwrap();
        let src = &eps[k];
        assert_eq!(ep.task, src.task);
        for name in [
            "action",
            "observation.state",
            "observation.effector_target_translation",
            "next.reward",
            "is_first",
            "is_last",
            "is_terminal",
            "timestamp",
            "frame_index",
        ] {
            assert_eq!(
                column(&ep, name),
                column(src, name),
                "episode {k} {name} after RLDS -> LeRobot"
            );
        }
    }
}

/// Feeding a trainer: `pipelines/demo.toml` in the expanded layout (one episode per source episode and target, the
/// generated video under the source camera's key, every other column the source's) is what a policy trainer reads.
/// lerobot's own training loop (`lerobot.scripts.lerobot_train.train`, tests/interop/lerobot_train.py: a tiny ACT
/// reading only that camera, CPU, offline, no pretrained weights) runs a few steps on it with finite losses, and the
/// checkpoint it saves loads back and acts.
#[test]
fn lerobot_training_loop_runs_on_expanded_demo_output() {
    const CAMERA: &str = "observation.images.real";
    const STEPS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    let paired = "layout = \"paired\"";
    assert!(
        demo.contains(paired),
        "pipelines/demo.toml no longer says {paired}; update this test's expanded variant of it"
    );
    let pipeline = dir.path().join("demo_expanded.toml");
    std::fs::write(&pipeline, demo.replace(paired, "layout = \"expanded\"")).unwrap();
    let out = dir.path().join("augmented");
    // The first source episode only (4 targets -> 4 episodes), to keep the test short; the model paths in the
    // pipeline are relative to the repository root.
    let run = Command::new(crate::common::vadapt_bin())
        .current_dir(repo())
        .args(["augment", "--quiet", "--limit", "1", "--pipeline"])
        .arg(&pipeline)
        .args(["--input", "datasets/sample/lerobot", "--output"])
        .arg(&out)
        .output()
        .expect("run vadapt augment");
    assert!(
        run.status.success(),
        "vadapt augment failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ds = open_dataset(&out).unwrap();
    assert_eq!(ds.episode_indices().len(), 4, "one episode per target");
    let mut targets = Vec::new();
    for index in ds.episode_indices() {
        let ep = ds.read_episode(index).unwrap();
        let col = ep.columns.column_by_name("augmentation.target").unwrap();
        targets.push(col.as_string::<i32>().value(0).to_string());
        assert_eq!(ep.cameras[CAMERA].decode().unwrap().len(), ep.len());
    }
    targets.sort();
    assert_eq!(targets, ["claymation", "night", "real_aug", "sim_aug"]);

    let train_dir = dir.path().join("train");
    let steps = STEPS.to_string();
    let stdout = run_py(
        "lerobot_train.py",
        &[
            &out,
            &train_dir,
            Path::new("--camera"),
            Path::new(CAMERA),
            Path::new("--steps"),
            Path::new(&steps),
        ],
    );
    let line = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("lerobot_train.py printed no JSON summary ({e}):\n{stdout}"));
    eprintln!("lerobot's training loop on the expanded demo output: {summary}");
    assert_eq!(summary["camera"], CAMERA);
    assert_eq!(summary["episodes"], 4);
    let losses: Vec<f64> = summary["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .map(|v| v.as_f64().expect("a finite loss is a JSON number"))
        .collect();
    assert_eq!(losses.len(), STEPS, "{summary}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    assert!(train_dir
        .join("run/checkpoints/last/pretrained_model")
        .is_dir());
}
