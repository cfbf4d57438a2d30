//! The bundled LanguageTable sample (`datasets/language_table`, written by scripts/language_table/generate.py from
//! the real simulator): LanguageTable's column names, environment seeds below 1000 (seeds from 1000 up are
//! reserved for acceptance checks), paired appearance cameras frame-aligned with the default camera, every
//! appearance named. Needs no simulator: it reads the committed files.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use vadapt::io::{open_dataset, EpisodeSource};
use vadapt::vision::resize::resize_rgb;

use crate::common;

const DEFAULT_CAMERA: &str = "observation.images.rgb";
const ROBOT_MASK: &str = "observation.images.robot_mask";
const COLUMNS: [&str; 7] = [
    "observation.state",
    "observation.effector_target_translation",
    "action",
    "next.reward",
    "is_first",
    "is_last",
    "is_terminal",
];
/// The bundle's budget in the repository.
const MAX_BYTES: u64 = 8 << 20;

fn root() -> PathBuf {
    let p = common::repo().join("datasets/language_table");
    assert!(
        p.join("meta/info.json").exists(),
        "{} is missing: the LanguageTable sample is committed there (scripts/language_table/README.md \
         regenerates it)",
        p.display()
    );
    p
}

fn open() -> Box<dyn EpisodeSource> {
    open_dataset(&root()).expect("open datasets/language_table")
}

fn appearance_keys(ds: &dyn EpisodeSource) -> Vec<String> {
    ds.features()
        .iter()
        .filter(|(k, f)| f.dtype == "video" && k.starts_with("observation.images.appearance_"))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The episodes table (meta/episodes/*/*.parquet), every column, in one batch per file.
fn episodes_table() -> Vec<RecordBatch> {
    let dir = root().join("meta/episodes");
    let mut files = Vec::new();
    for chunk in std::fs::read_dir(&dir).expect("meta/episodes") {
        for f in std::fs::read_dir(chunk.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no episodes parquet under {}",
        dir.display()
    );
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("episodes table has no column {name}"));
    let col = col.as_string::<i32>();
    (0..col.len()).map(|i| col.value(i).to_string()).collect()
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn language_table_sample_has_the_language_table_columns() {
    let ds = open();
    assert_eq!(ds.format(), "lerobot-v3.0");
    assert_eq!(ds.fps(), 10.0, "LanguageTable's control frequency");
    let features = ds.features();
    for k in COLUMNS {
        assert!(features.contains_key(k), "feature {k} missing");
    }
    assert_eq!(features[DEFAULT_CAMERA].dtype, "video");
    let appearances = appearance_keys(ds.as_ref());
    assert!(
        !appearances.is_empty()
            && appearances
                .iter()
                .all(|k| k.starts_with("observation.images.appearance_")),
        "appearance cameras: {appearances:?}"
    );
    let n = ds.episode_indices().len();
    assert!((4..=8).contains(&n), "{n} episodes (the sample holds 4-8)");
    for i in ds.episode_indices() {
        let ep = ds.read_episode(i).unwrap();
        assert!(!ep.task.is_empty(), "episode {i} has no instruction");
        for k in COLUMNS {
            assert!(
                ep.columns.column_by_name(k).is_some(),
                "episode {i}: column {k}"
            );
        }
    }
    let bytes = dir_bytes(&root());
    assert!(
        bytes <= MAX_BYTES,
        "datasets/language_table is {bytes} bytes (budget {MAX_BYTES})"
    );
}

#[test]
fn language_table_sample_seeds_are_below_1000() {
    let mut seeds = Vec::new();
    for batch in episodes_table() {
        let col = batch
            .column_by_name("language_table/seed")
            .expect("episodes table has no language_table/seed column");
        seeds.extend(col.as_primitive::<Int64Type>().values().iter().copied());
    }
    assert_eq!(seeds.len(), open().episode_indices().len());
    assert!(
        seeds.iter().all(|s| (0..1000).contains(s)),
        "seeds {seeds:?}: environment seeds 0-999 only (1000 and up are reserved for acceptance checks)"
    );
    let distinct: BTreeSet<_> = seeds.iter().collect();
    assert_eq!(distinct.len(), seeds.len(), "a seed twice: {seeds:?}");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("meta/info.json")).unwrap())
            .unwrap();
    let listed: Vec<i64> = info["language_table"]["seeds"]
        .as_array()
        .expect("info.json language_table.seeds")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(listed, seeds, "info.json's seeds and the episodes table's");
}

#[test]
fn language_table_paired_cameras_have_the_same_frames() {
    let ds = open();
    let mut keys = vec![DEFAULT_CAMERA.to_string()];
    keys.extend(appearance_keys(ds.as_ref()));
    for i in ds.episode_indices() {
        let ep = ds.read_episode(i).unwrap();
        let size = ep.cameras[DEFAULT_CAMERA].size();
        for k in &keys {
            let frames = ep.cameras[k].decode().unwrap();
            assert_eq!(
                frames.len(),
                ep.len(),
                "episode {i}: camera {k} has {} frames, the table {} rows",
                frames.len(),
                ep.len()
            );
            assert_eq!(ep.cameras[k].size(), size, "episode {i}: camera {k} size");
            // Not black, not flat: a rendered scene.
            let px = frames[0].as_raw();
            let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
            let var = px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / px.len() as f64;
            assert!(
                mean > 20.0 && var.sqrt() > 8.0,
                "episode {i} {k}: mean {mean}, std {}",
                var.sqrt()
            );
        }
        let flags = |name: &str| -> Vec<bool> {
            let c = ep.columns.column_by_name(name).unwrap().as_boolean();
            (0..c.len()).map(|r| c.value(r)).collect()
        };
        let (first, last) = (flags("is_first"), flags("is_last"));
        assert!(
            first[0] && first.iter().filter(|&&f| f).count() == 1,
            "episode {i}: is_first"
        );
        assert!(
            last[ep.len() - 1] && last.iter().filter(|&&f| f).count() == 1,
            "episode {i}: is_last"
        );
    }
}

/// The robot's matte (`generate.py --robot-mask`): one grey frame per row at the default camera's size, white on
/// the arm and effector: a few percent of the picture (0.85-16% in the bundle), moving as the arm does.
#[test]
fn language_table_robot_mask_covers_the_moving_arm() {
    let ds = open();
    for i in ds.episode_indices() {
        let ep = ds.read_episode(i).unwrap();
        let masks = ep.cameras[ROBOT_MASK].decode().unwrap();
        assert_eq!(masks.len(), ep.len(), "episode {i}: {ROBOT_MASK} frames");
        assert_eq!(
            ep.cameras[ROBOT_MASK].size(),
            ep.cameras[DEFAULT_CAMERA].size()
        );
        for (t, m) in masks.iter().enumerate() {
            let px: Vec<[u8; 3]> = m.pixels().map(|p| p.0).collect();
            let robot = px.iter().filter(|p| p[0] > 127).count() as f64 / px.len() as f64;
            assert!(
                (0.005..0.25).contains(&robot),
                "episode {i} frame {t}: {:.2}% robot",
                100.0 * robot
            );
            let chroma = px
                .iter()
                .map(|p| p[0].abs_diff(p[1]).max(p[1].abs_diff(p[2])))
                .max();
            assert!(
                chroma <= Some(8),
                "episode {i} frame {t}: not grey ({chroma:?})"
            );
        }
        let (first, last) = (masks[0].as_raw(), masks[masks.len() - 1].as_raw());
        let moved = first
            .iter()
            .zip(last)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / first.len() as f64;
        assert!(
            moved > 2.0,
            "episode {i}: the mask did not move ({moved:.2})"
        );
    }
}

/// The restyle target with `keep_mask` on the first bundled episode: under the robot's matte the output is the
/// source's arm (both through H.264 twice: 2.6 mean abs difference measured), elsewhere the new look (100 from the
/// source).
#[test]
fn language_table_restyle_keeps_the_robot_under_its_mask() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open();
    let index = ds.episode_indices()[0];
    let ep = ds.read_episode(index).unwrap();
    let still = dir.path().join("still.png");
    ep.cameras["observation.images.appearance_0"]
        .decode()
        .unwrap()[0]
        .save(&still)
        .unwrap();
    let pipeline = dir.path().join("keep.toml");
    write_pipeline(
        &pipeline,
        DEFAULT_CAMERA,
        &[target(
            "kept",
            "models/language_table/restyle",
            &format!("reference = {still:?}\nkeep_mask = {ROBOT_MASK:?}"),
        )],
    );
    let out = dir.path().join("out");
    augment_first_episode(&pipeline, &root(), &out);
    let kept = open_dataset(&out)
        .unwrap()
        .read_episode(index)
        .unwrap()
        .cameras["observation.images.kept"]
        .decode()
        .unwrap();
    let source = ep.cameras[DEFAULT_CAMERA].decode().unwrap();
    let masks = ep.cameras[ROBOT_MASK].decode().unwrap();
    let (mut robot, mut scene) = ((0.0, 0usize), (0.0, 0usize));
    for ((k, s), m) in kept.iter().zip(&source).zip(&masks) {
        for ((a, b), w) in k.pixels().zip(s.pixels()).zip(m.pixels()) {
            let d = (0..3).map(|c| a.0[c].abs_diff(b.0[c]) as f64).sum::<f64>() / 3.0;
            match w.0[0] {
                250.. => robot = (robot.0 + d, robot.1 + 1),
                0..=5 => scene = (scene.0 + d, scene.1 + 1),
                _ => {}
            }
        }
    }
    let (robot, scene) = (robot.0 / robot.1 as f64, scene.0 / scene.1 as f64);
    println!("mean abs difference to the source: robot {robot:.2}, scene {scene:.2}");
    assert!(
        robot < 6.0,
        "under the mask the output is {robot:.2} from the source"
    );
    assert!(
        scene > 20.0,
        "around the robot the output is {scene:.2} from the source: not restyled"
    );
}

#[test]
fn language_table_appearances_are_named() {
    let ds = open();
    let keys = appearance_keys(ds.as_ref());
    let mut all_names = BTreeSet::new();
    for batch in episodes_table() {
        for k in &keys {
            let names = strings(&batch, &format!("appearance/{k}/name"));
            let params = strings(&batch, &format!("appearance/{k}/params"));
            for (name, params) in names.iter().zip(&params) {
                assert!(name.contains(" board, "), "appearance name {name:?}");
                let p: serde_json::Value = serde_json::from_str(params).unwrap();
                assert_eq!(p["name"].as_str(), Some(name.as_str()), "{k}: params' name");
                all_names.insert(name.clone());
            }
        }
    }
    let drawn = keys.len() * ds.episode_indices().len();
    assert!(
        all_names.len() * 10 >= drawn * 9,
        "appearances are drawn at random: only {} distinct names in {drawn}",
        all_names.len()
    );
}

#[test]
fn language_table_generator_refuses_reserved_seeds() {
    // Seeds from 1000 up are reserved for acceptance checks: the generator refuses them before it simulates or
    // writes anything (the seed check needs no simulator, only Python).
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("lt");
    let run = std::process::Command::new("python3")
        .arg(common::repo().join("scripts/language_table/generate.py"))
        .args(["--out", target.to_str().unwrap(), "--seeds", "998-1001"])
        .output()
        .expect("python3 is needed to run scripts/language_table/generate.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "seeds 998-1001 accepted; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("[1000, 1001]") && stderr.contains("reserved for acceptance checks"),
        "stderr:\n{stderr}"
    );
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "the refused run wrote something"
    );
}

/// Floors of `sim_aug`'s reconstruction of the first bundled episode at 90x160: the shipped base (step 3000 continued
/// 4000 steps, session 19) measures 23.22 dB and 0.846 here at 6 trailing DDIM steps, 23.23 dB at the pipeline's 4
/// (session 20) (step 3000: 22.17 and 0.816; 10
/// leading steps: 22.33 and 0.819; step 900: 21.25 and 0.759; step 400: 19.22 and 0.569); docs/results.md has the
/// unseen seeds; the demo's procedural models 7.2 dB and 0.41.
const PSNR_FLOOR: f64 = 18.0;
const EDGE_FLOOR: f64 = 0.6;

/// `pipelines/language_table.toml` with the shipped LanguageTable model on the first bundled episode: `sim_aug` is
/// written at the source camera's size and reconstructs the default look well above what the demo's procedural
/// models managed on these scenes (7.2 dB, coloured streaks). The bounds are floors for regressions, not the
/// quality bar of issue 21: the sample's episodes were in the training data (seeds 0-5); docs/results.md has the
/// numbers on unseen seeds.
#[test]
fn language_table_pipeline_reconstructs_the_default_look() {
    reconstructs_the_default_look("pipelines/language_table.toml");
}

/// The same through `pipelines/language_table_sr.toml`: the 40x72 base, then the shipped super-resolution stage
/// at 92x160 (24.40 dB and edge correlation 0.919 on this episode, against the base's 23.22 and 0.846).
#[test]
fn language_table_cascade_reconstructs_the_default_look() {
    reconstructs_the_default_look("pipelines/language_table_sr.toml");
}

fn reconstructs_the_default_look(pipeline: &str) {
    let repo = common::repo();
    let pipeline = repo.join(pipeline);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    augment_first_episode(&pipeline, &root(), &out);
    let ds = open_dataset(&out).unwrap();
    let cam = &ds.features()["observation.images.sim_aug"];
    assert_eq!(
        cam.shape,
        open().features()[DEFAULT_CAMERA].shape,
        "sim_aug at the source's size"
    );
    let e = eval_at_90x160(
        &out,
        "observation.images.sim_aug",
        DEFAULT_CAMERA,
        DEFAULT_CAMERA,
    );
    let (psnr, edges) = (
        e["mean"]["psnr"].as_f64().unwrap(),
        e["mean"]["edge_correlation"].as_f64().unwrap(),
    );
    println!(
        "{}: sim_aug vs source: {psnr:.2} dB, edge correlation {edges:.3}",
        pipeline.display()
    );
    assert!(
        psnr >= PSNR_FLOOR && edges >= EDGE_FLOOR,
        "{}: sim_aug reconstructs its source at {psnr:.2} dB, edge correlation {edges:.3} (floors {PSNR_FLOOR} dB, \
         {EDGE_FLOOR})",
        pipeline.display()
    );
}

/// The restyled video's colour-histogram distance to its reference's camera, at most this fraction of sim_aug's
/// (issue 21's styles bar: 40% lower). The shipped model measures 0.602 against 1.397 here (0.43; 1.417 with the
/// step-3000 sim_aug); 0.626 against 1.112 on unseen seeds (docs/results.md).
const RESTYLE_HISTOGRAM_RATIO: f64 = 0.6;
/// The round trip's floor (restyled, then read back by sim_aug, against the source camera): 20.12 dB here with the
/// continued sim_aug (19.18 dB with the step-3000 one); on unseen
/// seeds 19.08 dB, against 19.60 dB for the true appearance camera read back the same way.
const RESTYLE_ROUND_TRIP_FLOOR: f64 = 17.0;

/// The shipped restyle model (`models/language_table/restyle`) on the first bundled episode, whose appearance cameras
/// show looks it never trained on (the bundle draws a fresh look per camera; the model learned 54 pooled ones): with
/// a still of the episode's `appearance_0` camera as the reference (its last frame: the arm and the pushed block
/// elsewhere), the restyled video's colour histogram is much nearer that camera's than sim_aug's default look is
/// (issue 21's styles bar asks for 40% lower), and it keeps the scene: read back by sim_aug, it still reconstructs
/// the default look.
#[test]
fn language_table_restyle_takes_the_look_of_its_reference() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open();
    let index = ds.episode_indices()[0];
    let frames = ds.read_episode(index).unwrap().cameras["observation.images.appearance_0"]
        .decode()
        .unwrap();
    let still = dir.path().join("still.png");
    frames.last().unwrap().save(&still).unwrap();
    let pipeline = dir.path().join("restyle.toml");
    write_pipeline(
        &pipeline,
        DEFAULT_CAMERA,
        &[
            target("sim_aug", "models/language_table/edge_to_sim", ""),
            target(
                "restyled",
                "models/language_table/restyle",
                &format!("reference = {:?}", still),
            ),
        ],
    );
    let out = dir.path().join("out");
    augment_first_episode(&pipeline, &root(), &out);
    let eval = |out: &Path, key: &str, condition: &str, reference: &str| {
        let e = eval_at_90x160(out, key, condition, reference);
        (
            e["mean"]["histogram_distance"].as_f64().unwrap(),
            e["mean"]["psnr"].as_f64().unwrap(),
        )
    };
    let look = "observation.images.appearance_0";
    let (restyled, _) = eval(&out, "observation.images.restyled", DEFAULT_CAMERA, look);
    let (sim_aug, _) = eval(&out, "observation.images.sim_aug", DEFAULT_CAMERA, look);
    println!("histogram distance to {look}: restyled {restyled:.3}, sim_aug {sim_aug:.3}");
    assert!(
        restyled <= RESTYLE_HISTOGRAM_RATIO * sim_aug,
        "restyled {restyled:.3} vs sim_aug {sim_aug:.3}: not {RESTYLE_HISTOGRAM_RATIO} of it"
    );
    // The round trip: sim_aug reads the restyled video back to the default look.
    let back = dir.path().join("back.toml");
    write_pipeline(
        &back,
        "observation.images.restyled",
        &[target("back", "models/language_table/edge_to_sim", "")],
    );
    let back_out = dir.path().join("back");
    augment_first_episode(&back, &out, &back_out);
    let (_, psnr) = eval(
        &back_out,
        "observation.images.back",
        "observation.images.restyled",
        DEFAULT_CAMERA,
    );
    println!("round trip: {psnr:.2} dB against the source");
    assert!(
        psnr >= RESTYLE_ROUND_TRIP_FLOOR,
        "the restyled video read back by sim_aug reaches {psnr:.2} dB against its source (floor \
         {RESTYLE_ROUND_TRIP_FLOOR} dB): the scene was not kept"
    );
}

/// real_aug's floor on the first bundled episode (environment seed 0, in edge_to_real's training data), first and
/// last frame against the simulator's render of the photo look at 90x160: the shipped model measures 25.62 dB
/// here (27.31 dB on the unseen seeds 900-907, docs/results.md; the default look itself 9.6 dB).
const REAL_AUG_PSNR_FLOOR: f64 = 22.0;
/// real_aug's colour-histogram distance to the photo look, at most this fraction of sim_aug's: 0.140 against 1.693
/// here (0.08).
const REAL_AUG_HISTOGRAM_RATIO: f64 = 0.3;

/// The shipped edge_to_real model (`models/language_table/edge_to_real`, the pipeline's real_aug) on the first
/// bundled episode: its first and last frames match the simulator's own render of the same states in the photo look
/// (`photo_look_seed0_{first,last}.png` beside the bundle, from `generate.py --photo`), and its colours are those of
/// that look, not of the default look sim_aug draws.
#[test]
fn language_table_real_aug_renders_the_photo_look() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("real.toml");
    write_pipeline(
        &pipeline,
        DEFAULT_CAMERA,
        &[
            target("sim_aug", "models/language_table/edge_to_sim", ""),
            target("real_aug", "models/language_table/edge_to_real", ""),
        ],
    );
    let out = dir.path().join("out");
    augment_first_episode(&pipeline, &root(), &out);
    let ds = open_dataset(&out).unwrap();
    let episode = ds.read_episode(ds.episode_indices()[0]).unwrap();
    let small = |f: &image::RgbImage| resize_rgb(f, 90, 160);
    let ends = |key: &str| {
        let frames = episode.cameras[key].decode().unwrap();
        [small(&frames[0]), small(frames.last().unwrap())]
    };
    let (real, sim) = (
        ends("observation.images.real_aug"),
        ends("observation.images.sim_aug"),
    );
    let look = ["first", "last"].map(|end| {
        let path = root().join(format!("photo_look_seed0_{end}.png"));
        small(
            &image::open(&path)
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (datasets/language_table/README.md regenerates it)",
                        path.display()
                    )
                })
                .to_rgb8(),
        )
    });
    let psnr = vadapt::eval::psnr(&real, &look);
    let (to_real, to_sim) = (
        vadapt::eval::histogram_distance(&real, &look),
        vadapt::eval::histogram_distance(&sim, &look),
    );
    println!(
        "real_aug vs the photo look: {psnr:.2} dB; histogram distance real_aug {to_real:.3}, sim_aug {to_sim:.3}"
    );
    assert!(
        psnr >= REAL_AUG_PSNR_FLOOR,
        "real_aug reaches {psnr:.2} dB against the photo look's render (floor {REAL_AUG_PSNR_FLOOR} dB)"
    );
    assert!(
        to_real <= REAL_AUG_HISTOGRAM_RATIO * to_sim,
        "real_aug's histogram distance {to_real:.3} to the photo look is not {REAL_AUG_HISTOGRAM_RATIO} of \
         sim_aug's {to_sim:.3}"
    );
}

/// A `[[target]]` block: `name` rendered by the repository's `model` at 6 DDIM steps, plus `extra` lines.
fn target(name: &str, model: &str, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nadapter = \"{}\"\nguidance = 1.0\nsteps = 6\nwindow_overlap = 2\n{extra}\n",
        common::repo().join(model).display()
    )
}

/// A paired, H.264 pipeline file at `path` reading camera `input` into `targets`.
fn write_pipeline(path: &Path, input: &str, targets: &[String]) {
    std::fs::write(
        path,
        format!(
            "seed = 0\n[input]\nimage_key = \"{input}\"\n[output]\nlayout = \"paired\"\ncodec = \"h264\"\n{}",
            targets.concat()
        ),
    )
    .unwrap();
}

/// `vadapt augment` of the first episode of `input` through `pipeline` into `out`, on 2 threads.
fn augment_first_episode(pipeline: &Path, input: &Path, out: &Path) {
    common::vadapt(&[
        "augment",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--limit",
        "1",
        "--threads",
        "2",
        "--quiet",
    ]);
}

/// `vadapt eval` of camera `key` of `out` at 90x160 (edges against `condition`, pixels against `reference`): its
/// JSON report.
fn eval_at_90x160(out: &Path, key: &str, condition: &str, reference: &str) -> serde_json::Value {
    let json = out.with_extension(format!("{key}.{reference}.json"));
    common::vadapt(&[
        "eval",
        out.to_str().unwrap(),
        "--key",
        key,
        "--condition-key",
        condition,
        "--reference-key",
        reference,
        "--size",
        "90x160",
        "--json",
        json.to_str().unwrap(),
    ]);
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}
