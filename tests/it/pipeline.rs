//! `vadapt augment` / `merge` / `preview` end to end on tiny data and the random-weight fixture models: config
//! errors, paired output with bit-exact source columns, kill -9 + --resume and shards + merge byte-identical to one
//! run, the expanded layout with a skipped bad episode, and seamless overlapping windows.

use std::collections::BTreeMap;

use arrow::array::Array;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{fixture, vadapt, vadapt_bin, vadapt_fails};
use vadapt::episode::EpisodeIndex;
use vadapt::io::lerobot::writer::{LeRobotWriter, WriterOptions};
use vadapt::io::open_dataset;
use vadapt::pipeline::{self, PipelineConfig, RunOptions, Shard};

pub(crate) const KEY: &str = "observation.images.real";

/// `vadapt sample-data` at the fixture models' resolution (24x40): no resizing, cheap sampling.
pub(crate) fn small_dataset(dir: &Path, episodes: usize, frames: usize) -> PathBuf {
    let out = dir.join("data");
    vadapt(&[
        "sample-data",
        "--out",
        out.to_str().unwrap(),
        "--episodes",
        &episodes.to_string(),
        "--frames",
        &frames.to_string(),
        "--size",
        "24x40",
    ]);
    out.join("lerobot")
}

/// One adapter-only target, one denoising step: the cheapest real pipeline.
pub(crate) fn pipeline_toml(dir: &Path, layout: &str, extra_target: &str) -> PathBuf {
    let p = dir.join(format!("p_{layout}.toml"));
    let text = format!(
        "seed = 7\n[input]\nimage_key = \"{KEY}\"\n[output]\nlayout = \"{layout}\"\ncodec = \"h264\"\n\
         [[target]]\nname = \"edge_sim\"\nadapter = \"{}\"\nguidance = 1.5\nsteps = 1\n{extra_target}",
        fixture("compose/adapter").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn opts(input: &Path, output: &Path) -> RunOptions {
    RunOptions {
        compute: Default::default(),
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        shard: Shard::default(),
        resume: false,
        limit: None,
        strict: false,
        threads: 1,
        progress: None,
        max_memory: None,
        stop: None,
        fail: None,
    }
}

/// Every file under `root` except the work directory, with its bytes.
fn dataset_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.file_name().unwrap() == ".vadapt" || p.file_name().unwrap() == "preview.png" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub(crate) fn assert_same_dataset(a: &Path, b: &Path) {
    let (fa, fb) = (dataset_files(a), dataset_files(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "{} and {} hold different files",
        a.display(),
        b.display()
    );
    for (k, v) in &fa {
        assert!(
            v == &fb[k],
            "{} differs between {} and {}",
            k.display(),
            a.display(),
            b.display()
        );
    }
    assert!(fa.keys().any(|k| k.ends_with("info.json")));
}

#[test]
fn pipeline_config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 1, 4);
    let adapter = fixture("compose/adapter");
    let prior = fixture("compose/prior");
    let cases = [
        ("guidnce = 2.0\n", "guidnce"),
        ("prior = \"/nonexistent/model\"\n", "target[0].prior"),
        (
            &*format!("prior = \"{}\"\nprior_strength = -0.5\n", prior.display()),
            "target[0].prior_strength",
        ),
        ("sampler = \"euler\"\n", "euler"),
        ("steps = 0\n", "target[0].steps"),
        ("prompt = \"{task}, clay\"\n", "prompt"),
    ];
    for (extra, key) in cases {
        let p = dir.path().join("bad.toml");
        std::fs::write(
            &p,
            format!(
                "[input]\nimage_key = \"{KEY}\"\n[[target]]\nname = \"a\"\nadapter = \"{}\"\n{extra}",
                adapter.display()
            ),
        )
        .unwrap();
        let err = vadapt_fails(&[
            "augment",
            "--pipeline",
            p.to_str().unwrap(),
            "--input",
            data.to_str().unwrap(),
            "--output",
            dir.path().join("out").to_str().unwrap(),
            "--dry-run",
        ]);
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "{extra:?}: the error should name {key:?} and the file:\n{err}"
        );
        assert!(
            !dir.path().join("out").exists(),
            "nothing is written on a config error"
        );
    }
    // A camera the dataset lacks is named with the ones it has.
    let p = pipeline_toml(dir.path(), "paired", "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(KEY, "observation.images.wrist");
    std::fs::write(&p, text).unwrap();
    let err = vadapt_fails(&[
        "augment",
        "--pipeline",
        p.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(
        err.contains("input.image_key") && err.contains(KEY),
        "{err}"
    );
}

#[test]
fn pipeline_paired_output_resume_after_kill_and_shards_merge_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 3, 10);
    let toml = pipeline_toml(dir.path(), "paired", "");
    let cfg = PipelineConfig::load(&toml).unwrap();

    // The reference: one uninterrupted run.
    let reference = dir.path().join("ref");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &reference)).unwrap();
    assert_eq!(
        (s.episodes_written, s.frames_written, s.units_sampled),
        (3, 30, 3)
    );
    assert!(s.skipped.is_empty());

    // Paired: every source column bit-exact, the new camera decodes with the episode's frame count.
    let src = open_dataset(&data).unwrap();
    let out = open_dataset(&reference).unwrap();
    assert_eq!(out.episode_indices(), src.episode_indices());
    let f = &out.features()["observation.images.edge_sim"];
    assert_eq!(
        (f.dtype.as_str(), f.shape.as_slice()),
        ("video", &[24, 40, 3][..])
    );
    for idx in src.episode_indices() {
        let (a, b) = (
            src.read_episode(idx).unwrap(),
            out.read_episode(idx).unwrap(),
        );
        assert_eq!(a.columns, b.columns, "episode {}: source columns", idx.0);
        assert_eq!(a.task, b.task);
        let gen = b.cameras["observation.images.edge_sim"].decode().unwrap();
        assert_eq!(gen.len(), a.len());
        assert_eq!((gen[0].height(), gen[0].width()), (24, 40));
        assert_eq!(b.cameras[KEY].len(), a.len());
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert!(prov["targets"][0]["adapter"]["hash"]
        .as_str()
        .unwrap()
        .starts_with("crc32c:"));
    assert_eq!(prov["source_episodes"], serde_json::json!([0, 1, 2]));
    assert_eq!(prov["skipped"], serde_json::json!([]));
    assert_eq!(prov["config"]["seed"], 7);

    // Preview of the reference: rows source, edges, edge_sim; 4 columns of 40x24 frames with 2-pixel gaps.
    let png = dir.path().join("sheet.png");
    let mp4 = dir.path().join("sheet.mp4");
    vadapt(&[
        "preview",
        reference.to_str().unwrap(),
        "--columns",
        "4",
        "--out",
        png.to_str().unwrap(),
        "--mp4",
        mp4.to_str().unwrap(),
    ]);
    let sheet = image::open(&png).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (4 * 42 + 2, 3 * 26 + 2));
    assert_eq!(vadapt::io::video::decode_all(&mp4).unwrap().len(), 10);

    // kill -9 at several points, then --resume: same bytes (with two sampler threads, too).
    let killed = dir.path().join("killed");
    let resume = killed_then_resumed(&toml, &data, &killed, &[700, 2500, 5000, 9000]);
    assert_same_dataset(&reference, &killed);
    // Resuming a finished output does nothing; a plain rerun refuses to overwrite.
    let again = vadapt(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.contains("already complete"), "{again}");
    let plain = augment_args(&toml, &data, &killed, false);
    let refused = vadapt_fails(&plain.iter().map(String::as_str).collect::<Vec<_>>()[..]);
    assert!(refused.contains("--resume"), "{refused}");

    // --shard 0/2 + --shard 1/2 + merge == one run.
    let (parts, stdout) = sharded_then_merged(dir.path(), &cfg, &toml, &data, &|i, _, s| {
        assert_eq!(s.episodes_written, [2, 1][i]);
    });
    assert!(stdout.contains("3 episodes"), "{stdout}");
    assert_same_dataset(&reference, &dir.path().join("merged"));
    // A missing shard is refused.
    let err = vadapt_fails(&[
        "merge",
        dir.path().join("merged2").to_str().unwrap(),
        parts[0].to_str().unwrap(),
    ]);
    assert!(err.contains("shard 1/2 is missing"), "{err}");
}

/// The sample data with one mp4 per episode, then episode 1's video cut short: a bad episode.
pub(crate) fn dataset_with_bad_episode(dir: &Path) -> PathBuf {
    let data = small_dataset(dir, 3, 9);
    let src = open_dataset(&data).unwrap();
    let split = dir.join("split");
    let mut w = LeRobotWriter::create(
        &split,
        src.fps(),
        src.features(),
        WriterOptions {
            video_files_size_in_mb: 1e-9,
            data_files_size_in_mb: 1e-9,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for idx in src.episode_indices() {
        w.save_episode(&src.read_episode(idx).unwrap()).unwrap();
    }
    let summary = w.finalize().unwrap();
    let mut videos: Vec<PathBuf> = summary
        .video_files
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(KEY))
        .collect();
    videos.sort();
    assert_eq!(videos.len(), 3, "one mp4 per episode: {videos:?}");
    let bad = &videos[1];
    let bytes = std::fs::read(bad).unwrap();
    std::fs::write(bad, &bytes[..bytes.len() / 3]).unwrap();
    split
}

#[test]
fn pipeline_expanded_layout_skips_and_records_a_bad_episode_or_fails_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset_with_bad_episode(dir.path());
    let toml = pipeline_toml(dir.path(), "expanded", "");
    let cfg = PipelineConfig::load(&toml).unwrap();

    // --strict: the reader stage fails, the run stops with that episode named (no hang), nothing is finished.
    let strict_out = dir.path().join("strict");
    let mut o = opts(&data, &strict_out);
    o.strict = true;
    let err = pipeline::run(&cfg, &toml, &o).unwrap_err().to_string();
    assert!(err.contains("episode 1"), "{err}");
    assert!(!strict_out.join("meta/info.json").exists());

    let out = dir.path().join("expanded");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &out)).unwrap();
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].0, 1);
    assert_eq!(s.episodes_written, 2);
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert_eq!(prov["skipped"][0]["episode"], 1);
    assert!(!prov["skipped"][0]["reason"].as_str().unwrap().is_empty());
    assert_eq!(prov["source_episodes"], serde_json::json!([0, 2]));

    let ds = open_dataset(&out).unwrap();
    assert_eq!(ds.episode_indices(), vec![EpisodeIndex(0), EpisodeIndex(1)]);
    let src = open_dataset(&data).unwrap();
    for (idx, source) in [(0u64, 0i64), (1, 2)] {
        let ep = ds.read_episode(EpisodeIndex(idx)).unwrap();
        let cols = &ep.columns;
        let src_idx = cols
            .column_by_name("augmentation.source_episode_index")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert!(src_idx.values().iter().all(|&v| v == source));
        let target = cols
            .column_by_name("augmentation.target")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert!((0..target.len()).all(|i| target.value(i) == "edge_sim"));
        // The camera holds the generated video; the table's other columns are the source's.
        let s_ep = src.read_episode(EpisodeIndex(source as u64)).unwrap();
        assert_eq!(ep.cameras[KEY].decode().unwrap().len(), s_ep.len());
        assert_eq!(
            cols.column_by_name("action").unwrap().as_ref(),
            s_ep.columns.column_by_name("action").unwrap().as_ref()
        );
    }
}

/// Paired layout with a skipped episode: lerobot refuses a dataset whose episode indices have a gap ("Cached dataset
/// doesn't contain all requested episodes") and fails on a task index past its task table, so the output numbers
/// its episodes 0..n, `index` by rows and tasks by first use; `meta/augmentation.json` maps the episodes back
/// (`source_episodes`), and every other column is the source's, bit-exact. lerobot 0.4.4 loads it.
#[test]
fn pipeline_paired_output_with_a_skipped_episode_is_renumbered_and_loads_in_lerobot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset_with_bad_episode(dir.path());
    let toml = pipeline_toml(dir.path(), "paired", "");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let out = dir.path().join("paired");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &out)).unwrap();
    assert_eq!((s.episodes_written, s.skipped.len()), (2, 1));
    assert_eq!(s.skipped[0].0, 1);
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert_eq!(prov["source_episodes"], serde_json::json!([0, 2]));
    assert_eq!(prov["skipped"][0]["episode"], 1);

    let (src, ds) = (open_dataset(&data).unwrap(), open_dataset(&out).unwrap());
    assert_eq!(ds.episode_indices(), vec![EpisodeIndex(0), EpisodeIndex(1)]);
    let mut row = 0i64;
    for (o, s_idx) in [(0u64, 0u64), (1, 2)] {
        let (a, b) = (
            src.read_episode(EpisodeIndex(s_idx)).unwrap(),
            ds.read_episode(EpisodeIndex(o)).unwrap(),
        );
        assert_eq!(a.columns.schema(), b.columns.schema());
        for f in a.columns.schema().fields() {
            let (x, y) = (
                a.columns.column_by_name(f.name()).unwrap(),
                b.columns.column_by_name(f.name()).unwrap(),
            );
            let ints = |c: &dyn Array| {
                arrow::compute::cast(c, &arrow::datatypes::DataType::Int64)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            };
            match f.name().as_str() {
                "episode_index" => assert!(ints(y.as_ref()).iter().all(|&v| v == o as i64)),
                "index" => {
                    let n = b.len() as i64;
                    assert_eq!(ints(y.as_ref()), (row..row + n).collect::<Vec<_>>());
                }
                // This dataset's task numbering; the task itself is the source's.
                "task_index" => assert_eq!(a.task, b.task),
                name => assert_eq!(
                    x, y,
                    "output episode {o}: column {name} differs from the source's"
                ),
            }
        }
        row += b.len() as i64;
        assert_eq!(
            b.cameras["observation.images.edge_sim"]
                .decode()
                .unwrap()
                .len(),
            a.len()
        );
    }

    // lerobot loads it: both episodes, every frame, the source's actions.
    let dump = dir.path().join("dump.safetensors");
    let summary = run_py("dump_lerobot.py", &[&out, &dump]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["episodes"], 2, "{summary}");
    assert_eq!(summary["frames"], row, "{summary}");
    let got = crate::common::load_f32(&dump);
    assert_eq!(
        got["ep1.action"].1,
        crate::common::f32_list_column(&src.read_episode(EpisodeIndex(2)).unwrap(), "action"),
        "lerobot's episode 1 is source episode 2"
    );
    assert_eq!(
        got["ep1.observation.images.edge_sim"].0[0],
        src.read_episode(EpisodeIndex(2)).unwrap().len()
    );
}

/// Mean absolute difference between consecutive frames, per transition (i -> i + 1).
fn transitions(frames: &[image::RgbImage]) -> Vec<f64> {
    frames
        .windows(2)
        .map(|p| {
            let (a, b) = (p[0].as_raw(), p[1].as_raw());
            a.iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .sum::<f64>()
                / a.len() as f64
        })
        .collect()
}

/// Largest consecutive-frame difference over the transitions `at` and over all the others.
fn border_and_inside_max(frames: &[image::RgbImage], border: &[usize]) -> (f64, f64) {
    let d = transitions(frames);
    let max = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0, f64::max);
    let b = max(&mut border.iter().map(|&i| d[i]));
    let inside = max(&mut (0..d.len()).filter(|i| !border.contains(i)).map(|i| d[i]));
    (b, inside)
}

/// Windows whose predictions disagree (each window pulls its frames towards a brightness ramp plus its own offset,
/// as independent samples would): averaged at every step they blend into one video whose window borders change no
/// more than its insides; the control, the same windows without overlap, shows the seam the test looks for.
#[test]
fn pipeline_overlapping_windows_leave_no_seams() {
    use vadapt::rng::NoiseRng;
    use vadapt::sampling::{denoise_windows, window_starts};
    use vadapt::schedulers::SchedulerConfig;
    use vadapt::vision::tensor::tensor_to_frames;

    let cfg = SchedulerConfig::from_json(
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2", "clip_sample": false}"#,
        Path::new("test"),
    )
    .unwrap();
    let (n, f, h, w) = (16usize, 8usize, 4usize, 6usize);
    let device = candle_core::Device::Cpu;
    let run = |starts: &[usize]| {
        let mut sched = cfg.build().unwrap();
        sched.set_timesteps(4).unwrap();
        let schedule = sched.schedule().clone();
        let x = NoiseRng::new(3).randn((1, 3, n, h, w), &device).unwrap();
        let starts_c = starts.to_vec();
        let x0 = denoise_windows(
            sched.as_mut(),
            x,
            starts,
            f,
            &mut NoiseRng::new(4),
            &mut |wi, xi, t| {
                // ε whose x0 prediction is this window's target: ramp over the episode + 0.3 on odd windows.
                let s = starts_c[wi];
                let target: Vec<f32> = (0..3 * f * h * w)
                    .map(|i| {
                        let k = (i / (h * w)) % f;
                        -0.5 + 0.05 * (s + k) as f32 + 0.3 * (wi % 2) as f32
                    })
                    .collect();
                let target = candle_core::Tensor::from_vec(target, (1, 3, f, h, w), &device)?;
                let ab = schedule.alpha_bar(t) as f64;
                Ok(((xi - (target * ab.sqrt())?)? / (1.0 - ab).sqrt())?)
            },
        )
        .unwrap();
        tensor_to_frames(&x0.get(0).unwrap()).unwrap()
    };
    let starts = window_starts(n, f, 4);
    assert_eq!(starts, vec![0, 4, 8]);
    // Transitions i -> i + 1 where a window starts (i + 1 = s) or ends (i + 1 = s + f).
    let border: Vec<usize> = starts
        .iter()
        .flat_map(|&s| [s.checked_sub(1), Some(s + f - 1)])
        .flatten()
        .filter(|&i| i + 1 < n)
        .collect();
    let (b, inside) = border_and_inside_max(&run(&starts), &border);
    eprintln!("averaged windows: largest frame difference {b:.2} at borders, {inside:.2} inside");
    assert!(
        b <= inside + 1.0,
        "seam: {b:.2} at window borders vs {inside:.2} inside"
    );
    // Control: no overlap, nothing to average: the jump between the windows is a seam.
    let (b, inside) = border_and_inside_max(&run(&[0, 8]), &[7]);
    eprintln!("independent windows: {b:.2} at the border, {inside:.2} inside");
    assert!(
        b > 2.0 * inside,
        "the control should show a seam: {b:.2} vs {inside:.2}"
    );
}

/// The real sampler over an episode longer than the model's window: every frame comes back, the same seed gives
/// the same frames, another episode index another sample.
#[test]
fn pipeline_window_sampler_is_deterministic_per_episode() {
    use vadapt::model_dir::ModelDir;
    use vadapt::sampling::TargetSampler;

    let device = candle_core::Device::Cpu;
    let model = ModelDir::load(&fixture("compose/adapter"), &device).unwrap();
    let frames: Vec<image::RgbImage> = (0..11)
        .map(|t| {
            image::RgbImage::from_fn(40, 24, |x, y| {
                if (x as i32 - 4 - 2 * t).abs() < 5 && (6..18).contains(&y) {
                    image::Rgb([230, 60, 40])
                } else {
                    image::Rgb([80, 100, 120])
                }
            })
        })
        .collect();
    let sampler = TargetSampler::alone("t", &model, 1, 4);
    let a = sampler.sample_episode(&frames, 1, 0, &device).unwrap();
    assert_eq!(a.len(), 11);
    assert_eq!(a, sampler.sample_episode(&frames, 1, 0, &device).unwrap());
    assert_ne!(a, sampler.sample_episode(&frames, 1, 5, &device).unwrap());
}

pub(crate) fn run_py(script: &str, args: &[&Path]) -> String {
    let python = std::env::var_os("VADAPT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::common::repo().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup.sh` (or set VADAPT_PYTHON)",
        python.display()
    );
    let out = std::process::Command::new(python)
        .arg(crate::common::repo().join("tests/interop").join(script))
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

/// Data written by the real libraries in, a dataset `lerobot` loads out: a LeRobot v3.0 dataset from lerobot 0.4.4
/// (AV1, shared mp4s, 96x128, one episode shorter than a model window) and an RLDS dataset from
/// tensorflow-datasets (JPEG steps at 360x640). Every source column as lerobot loads it equals the input's, and the
/// new camera decodes with each episode's frame count at the source size.
#[test]
fn pipeline_lerobot_and_rlds_inputs_give_datasets_lerobot_loads() {
    let dir = tempfile::tempdir().unwrap();
    run_py("make_lerobot.py", &[dir.path()]);
    run_py("make_rlds.py", &[dir.path()]);
    let inputs = [
        (
            "lerobot",
            dir.path().join("dataset"),
            "observation.images.rgb",
        ),
        (
            "rlds",
            dir.path().join("data/language_table"),
            "observation.images.rgb",
        ),
    ];
    for (name, input, key) in inputs {
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "[input]\nimage_key = \"{key}\"\n[[target]]\nname = \"sim\"\nadapter = \"{}\"\nguidance = 1.0\nsteps = 1\n",
                fixture("compose/adapter").display()
            ),
        )
        .unwrap();
        let out = dir.path().join(format!("{name}_out"));
        vadapt(&[
            "augment",
            "--pipeline",
            toml.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        let (dump_in, dump_out) = (
            dir.path().join(format!("{name}_in.safetensors")),
            dir.path().join(format!("{name}_out.safetensors")),
        );
        let summary = run_py("dump_lerobot.py", &[&out, &dump_out]);
        assert!(summary.contains("observation.images.sim"), "{summary}");
        let got = crate::common::load_f32(&dump_out);
        let src = open_dataset(&input).unwrap();
        let (h, w) = match src.features()[key].shape.as_slice() {
            [h, w, 3] => (*h, *w),
            s => panic!("{s:?}"),
        };
        // The source columns as lerobot loads them: from the input itself where lerobot can read it.
        let expected = if name == "lerobot" {
            run_py("dump_lerobot.py", &[&input, &dump_in]);
            Some(crate::common::load_f32(&dump_in))
        } else {
            None
        };
        for (i, idx) in src.episode_indices().into_iter().enumerate() {
            let n = src.read_episode(idx).unwrap().len();
            let cam = &got[&format!("ep{i}.observation.images.sim")];
            assert_eq!(cam.0, vec![n, h, w, 3], "{name} episode {i}");
            for (k, (shape, vals)) in got
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("ep{i}.")))
            {
                if k.contains("observation.images") || k.ends_with(".task") {
                    continue;
                }
                match &expected {
                    Some(e) => assert_eq!(
                        (shape, vals),
                        (&e[k].0, &e[k].1),
                        "{name}: {k} differs from the source as lerobot loads it"
                    ),
                    None => assert_eq!(shape[0], n, "{name}: {k}"),
                }
            }
        }
        // RLDS: the converted columns equal what vadapt reads from the TFRecords, bit for bit.
        if name == "rlds" {
            let ours = open_dataset(&out).unwrap();
            for idx in src.episode_indices() {
                let (a, b) = (
                    src.read_episode(idx).unwrap(),
                    ours.read_episode(idx).unwrap(),
                );
                for f in a.columns.schema().fields() {
                    assert_eq!(
                        a.columns.column_by_name(f.name()).unwrap().as_ref(),
                        b.columns.column_by_name(f.name()).unwrap().as_ref(),
                        "rlds episode {}: {}",
                        idx.0,
                        f.name()
                    );
                }
            }
        }
    }
}

/// The shipped demo prior has a word vocabulary: `vadapt augment --dry-run` with its styled targets prints no
/// vocabulary warning, and one with a style it was never trained on ("watercolor") warns, naming the word, the
/// target's key and the model.
#[test]
fn demo_prior_warns_about_style_words_it_never_saw() {
    let repo = crate::common::repo();
    let dir = tempfile::tempdir().unwrap();
    let run = |pipeline: &Path| {
        let out = std::process::Command::new(vadapt_bin())
            .args([
                "augment",
                "--pipeline",
                pipeline.to_str().unwrap(),
                "--input",
                repo.join("datasets/sample/lerobot").to_str().unwrap(),
                "--output",
                dir.path().join("out").to_str().unwrap(),
                "--dry-run",
            ])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let demo = repo.join("pipelines/demo.toml");
    let quiet = run(&demo);
    assert!(!quiet.contains("has no token"), "{quiet}");
    let text = std::fs::read_to_string(&demo)
        .unwrap()
        .replace("night style", "watercolor style");
    let odd = dir.path().join("watercolor.toml");
    std::fs::write(&odd, text).unwrap();
    let warned = run(&odd);
    assert!(
        warned.contains("\"watercolor\"")
            && warned.contains("prior_prompt")
            && warned.contains("models/demo/prior"),
        "{warned}"
    );
}

/// `vadapt augment` of `toml` over `data` into `out` with two sampler threads, quiet (`--resume` when asked).
pub fn augment_args(toml: &Path, data: &Path, out: &Path, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = ["augment", "--pipeline"].map(String::from).to_vec();
    a.push(toml.to_str().unwrap().into());
    a.push("--input".into());
    a.push(data.to_str().unwrap().into());
    a.push("--output".into());
    a.push(out.to_str().unwrap().into());
    a.extend(["--threads", "2", "--quiet"].map(String::from));
    if resume {
        a.push("--resume".into());
    }
    a
}

/// `augment_args` killed (SIGKILL) after each of `delays_ms`, then resumed to the end into `out`. Fails when no run
/// was interrupted (the comparison would prove nothing). Returns the resuming arguments.
pub fn killed_then_resumed(toml: &Path, data: &Path, out: &Path, delays_ms: &[u64]) -> Vec<String> {
    let args = |resume: bool| augment_args(toml, data, out, resume);
    let kills = kill_runs(&args, delays_ms);
    assert!(
        kills >= 1,
        "no run was interrupted; the test proves nothing"
    );
    let resume = args(true);
    vadapt(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    resume
}

/// `--shard 0/2` and `--shard 1/2` into `dir/part0`, `dir/part1` (`check` sees each shard's output and summary),
/// then merged, the parts named in reverse order, into `dir/merged`. Returns the parts and merge's stdout.
pub fn sharded_then_merged(
    dir: &Path,
    cfg: &PipelineConfig,
    toml: &Path,
    data: &Path,
    check: &dyn Fn(usize, &Path, &pipeline::RunSummary),
) -> (Vec<PathBuf>, String) {
    let mut parts = Vec::new();
    for i in 0..2 {
        let part = dir.join(format!("part{i}"));
        let mut o = opts(data, &part);
        o.shard = Shard { index: i, count: 2 };
        let s = pipeline::run(cfg, toml, &o).unwrap();
        check(i, &part, &s);
        parts.push(part);
    }
    let merged = dir.join("merged");
    let stdout = vadapt(&[
        "merge",
        merged.to_str().unwrap(),
        parts[1].to_str().unwrap(),
        parts[0].to_str().unwrap(),
        "--quiet",
    ]);
    (parts, stdout)
}

/// Start the CLI once per delay (every start after the first with `args(true)`, i.e. resuming) and SIGKILL it after
/// that many milliseconds if it is still running. Returns how many runs were killed (a test must see at least one).
pub fn kill_runs(args: &dyn Fn(bool) -> Vec<String>, delays_ms: &[u64]) -> usize {
    let mut kills = 0;
    for (i, &delay_ms) in delays_ms.iter().enumerate() {
        let mut child = std::process::Command::new(vadapt_bin())
            .args(args(i > 0))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    kills
}

/// Every shipped pipeline (`pipelines/*.toml` but the training recipes) parses and validates, and the adapters,
/// stage models and reference stills it names exist. Every training recipe (`pipelines/train_*.toml`) is valid
/// apart from its data, which only the development-time generators make.
#[test]
fn every_shipped_pipeline_and_recipe_loads() {
    let repo = crate::common::repo();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let (mut pipelines, mut recipes) = (0, 0);
    for p in &files {
        let name = p.file_name().unwrap().to_str().unwrap();
        if name.starts_with("train_") {
            vadapt::train::TrainConfig::from_file_without_data(p)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            recipes += 1;
        } else {
            let cfg = PipelineConfig::load(p).unwrap_or_else(|e| panic!("{name}: {e}"));
            for t in &cfg.targets {
                let named = std::iter::once(&t.adapter)
                    .chain(t.prior.iter())
                    .chain(t.stages.iter().map(|s| &s.adapter))
                    .chain(t.reference.iter())
                    .chain(t.references.iter().flatten());
                for path in named {
                    assert!(
                        repo.join(path).exists(),
                        "{name}: {} is missing",
                        path.display()
                    );
                }
            }
            pipelines += 1;
        }
    }
    assert!(
        pipelines >= 8 && recipes >= 10,
        "{pipelines} pipelines, {recipes} recipes"
    );
}
