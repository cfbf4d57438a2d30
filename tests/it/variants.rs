//! Randomized targets (`variants`, `prompts` / `prior_prompts`, `prior_strength` / `guidance` ranges) in the expanded
//! layout, with the demo edge model and prior at their own 24x40 and one denoising step: the same bytes under kill -9
//! + --resume and under shards + merge; every recorded draw regenerates its episode alone, frame for frame; the
//! camera-replaced output has the new frames under the source key with recomputed stats, keeps the source episodes'
//! columns bit-exact, and loads in lerobot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float32Array, Int64Array, StringArray};
use vadapt::compute::Compute;
use vadapt::episode::{Episode, EpisodeIndex};
use vadapt::io::lerobot::stats::{image_stats, merge_into, stats_json, Stats};
use vadapt::io::open_dataset;
use vadapt::io::video::{decode_all, encode_frames, EncoderOptions, VideoCodec};
use vadapt::pipeline::regenerate::regenerate;
use vadapt::pipeline::units::WorkDir;
use vadapt::pipeline::{self, PipelineConfig};
use vadapt::rng::NoiseRng;
use vadapt::vision::tiles::{shuffle_tiles, REFERENCE_PERMUTATION_SEED};

use crate::common::{
    assert_columns_equal_but_indices, f32_list_column, repo, vadapt, vadapt_fails,
};
use crate::pipeline::{
    assert_same_dataset, killed_then_resumed, opts, run_py, sharded_then_merged, small_dataset, KEY,
};

const PROMPTS: [&str; 3] = [
    "{task}, claymation style",
    "{task}, night style",
    "{task}, neon style",
];

/// An expanded pipeline over the demo models: one randomized target (`variants` variants drawing the prior's
/// prompt, λ and guidance) and `extra_output` lines in `[output]`.
fn randomized_toml(dir: &Path, variants: usize, extra_output: &str) -> PathBuf {
    let p = dir.join(format!("dr_{variants}.toml"));
    let models = repo().join("models/demo");
    let prompts: Vec<String> = PROMPTS.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "seed = 11\n[input]\nimage_key = \"{KEY}\"\n[output]\nlayout = \"expanded\"\ncodec = \"h264\"\n{extra_output}\n\
         [[target]]\nname = \"dr\"\nadapter = \"{}\"\nprior = \"{}\"\nvariants = {variants}\n\
         prior_prompts = [{}]\nprior_strength = [0.2, 0.8]\nguidance = [1.0, 2.0]\nsteps = 1\nwindow_overlap = 2\n",
        models.join("edge_to_sim").display(),
        models.join("prior").display(),
        prompts.join(", ")
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn column<'a, T: 'static>(ep: &'a Episode, name: &str) -> &'a T {
    ep.columns
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

fn provenance(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap()).unwrap()
}

/// The unit (sampled frames, lossless) of `(episode, label)` in an output's work directory.
fn unit(out: &Path, episode: u64, label: &str) -> Vec<image::RgbImage> {
    let work = WorkDir::new(out);
    let done = work.finished().unwrap();
    let rec = done
        .get(&(episode, label.to_string()))
        .unwrap_or_else(|| panic!("no unit {label} of episode {episode}"));
    work.load(rec).unwrap()
}

#[test]
fn variants_are_recorded_and_byte_identical_under_kill_resume_and_shards_merge() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 3, 10);
    let toml = randomized_toml(dir.path(), 3, "keep_source = true");
    let cfg = PipelineConfig::load(&toml).unwrap();

    let reference = dir.path().join("ref");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &reference)).unwrap();
    // Per source episode: the kept source, then variants 0, 1, 2.
    assert_eq!((s.episodes_written, s.units_sampled), (12, 9));

    // Every draw is recorded twice, in the columns and in augmentation.json, and both agree.
    let prov = provenance(&reference);
    let entries = prov["episodes"].as_array().unwrap();
    assert_eq!(entries.len(), 12);
    let (src, out) = (
        open_dataset(&data).unwrap(),
        open_dataset(&reference).unwrap(),
    );
    let mut prompts_seen = std::collections::BTreeSet::new();
    for (k, e) in entries.iter().enumerate() {
        let ep = out.read_episode(EpisodeIndex(k as u64)).unwrap();
        let s_idx = e["source_episode"].as_u64().unwrap();
        assert_eq!(s_idx, k as u64 / 4);
        let source = column::<Int64Array>(&ep, "augmentation.source_episode_index");
        assert!(source.values().iter().all(|&v| v == s_idx as i64));
        let target = column::<StringArray>(&ep, "augmentation.target").value(0);
        let variant = column::<Int64Array>(&ep, "augmentation.variant").value(0);
        let prior_prompt = column::<StringArray>(&ep, "augmentation.prior_prompt").value(0);
        let strength = column::<Float32Array>(&ep, "augmentation.prior_strength").value(0);
        let guidance = column::<Float32Array>(&ep, "augmentation.guidance").value(0);
        if k % 4 == 0 {
            assert_eq!(
                (target, e["target"].as_str().unwrap()),
                ("source", "source")
            );
            continue;
        }
        assert_eq!(target, "dr");
        let d = &e["draw"];
        assert_eq!(variant, (k % 4 - 1) as i64);
        assert_eq!(d["variant"].as_i64().unwrap(), variant);
        assert_eq!(d["prior_strength"].as_f64().unwrap() as f32, strength);
        assert_eq!(d["guidance"].as_f64().unwrap() as f32, guidance);
        assert!((0.2..=0.8).contains(&strength) && (1.0..=2.0).contains(&guidance));
        let template = d["prior_prompt"].as_str().unwrap();
        assert!(PROMPTS.contains(&template), "{template}");
        let task = src.read_episode(EpisodeIndex(s_idx)).unwrap().task;
        assert_eq!(prior_prompt, template.replace("{task}", &task));
        prompts_seen.insert(template.to_string());
    }
    assert!(
        prompts_seen.len() >= 2,
        "9 variants drew only {prompts_seen:?}"
    );

    // kill -9 at several points, then --resume, with two sampler threads: the same bytes.
    let killed = dir.path().join("killed");
    killed_then_resumed(&toml, &data, &killed, &[500, 1200, 2500, 4000]);
    assert_same_dataset(&reference, &killed);

    // --shard 0/2 + --shard 1/2 + merge: the same bytes.
    sharded_then_merged(dir.path(), &cfg, &toml, &data, &|_, _, _| {});
    assert_same_dataset(&reference, &dir.path().join("merged"));

    // Each recorded draw regenerates its episode alone: the run's unit frame for frame, the same table and the
    // same decoded camera.
    for (k, e) in entries.iter().enumerate() {
        let dest = dir.path().join(format!("regen{k}"));
        if k % 4 == 0 {
            let err = regenerate(&reference, k, &dest, Compute::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("kept source"), "{err}");
            assert!(!dest.exists());
            continue;
        }
        let r = if k == 1 {
            // Once through the CLI.
            let stdout = vadapt(&[
                "regenerate",
                reference.to_str().unwrap(),
                "--episode",
                "1",
                "--output",
                dest.to_str().unwrap(),
            ]);
            assert!(stdout.contains("variant 0"), "{stdout}");
            None
        } else {
            Some(regenerate(&reference, k, &dest, Compute::default()).unwrap())
        };
        let s_idx = e["source_episode"].as_u64().unwrap();
        let label = match e["draw"]["variant"].as_u64().unwrap() {
            0 => "dr".to_string(),
            v => format!("dr.v{v}"),
        };
        if let Some(r) = r {
            assert!(
                r.frames == unit(&reference, s_idx, &label),
                "episode {k}: regenerated frames differ from the run's unit {label}"
            );
        }
        let (a, b) = (
            out.read_episode(EpisodeIndex(k as u64)).unwrap(),
            open_dataset(&dest)
                .unwrap()
                .read_episode(EpisodeIndex(0))
                .unwrap(),
        );
        assert_columns_equal_but_indices(&a, &b, &format!("episode {k}"));
        assert!(
            a.cameras[KEY].decode().unwrap() == b.cameras[KEY].decode().unwrap(),
            "episode {k}: the regenerated camera decodes to other frames"
        );
        assert_eq!(provenance(&dest)["episodes"][0], *e);
    }
    let err = vadapt_fails(&[
        "regenerate",
        reference.to_str().unwrap(),
        "--episode",
        "12",
        "--output",
        dir.path().join("past_end").to_str().unwrap(),
    ]);
    assert!(err.contains("12 episodes"), "{err}");
}

/// `frames` encoded as the pipelines here write a camera (H.264, crf 30, a fresh encoder per episode) and decoded.
fn roundtrip(frames: &[image::RgbImage], path: &Path) -> Vec<image::RgbImage> {
    let opts = EncoderOptions {
        codec: Some(VideoCodec::H264),
        crf: 30,
        ..EncoderOptions::default()
    };
    let _ = std::fs::remove_file(path);
    encode_frames(path, frames, 10.0, &opts).unwrap();
    decode_all(path)
        .unwrap()
        .into_iter()
        .map(|t| t.image)
        .collect()
}

/// The same JSON shape with numbers equal to 1e-12 (relative).
fn same_numbers(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0)
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_numbers(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_numbers(v, w)))
        }
        _ => a == b,
    }
}

/// Mean absolute difference of two equally long videos, per channel value.
fn mean_abs(a: &[image::RgbImage], b: &[image::RgbImage]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut sum, mut n) = (0.0, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            sum += (*p as f64 - *q as f64).abs();
            n += 1;
        }
    }
    sum / n as f64
}

#[test]
fn replace_camera_writes_variants_under_the_source_key_with_recomputed_stats_and_lerobot_loads_them(
) {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 2, 10);
    let toml = randomized_toml(dir.path(), 2, "replace_camera = true\nkeep_source = true");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let out = dir.path().join("out");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &out)).unwrap();
    assert_eq!(s.episodes_written, 6);

    let (src, ds) = (open_dataset(&data).unwrap(), open_dataset(&out).unwrap());
    let cameras: Vec<&String> = ds
        .features()
        .iter()
        .filter(|(_, f)| f.is_visual())
        .map(|(k, _)| k)
        .collect();
    let src_cameras: Vec<&String> = src
        .features()
        .iter()
        .filter(|(_, f)| f.is_visual())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        cameras, src_cameras,
        "no new camera key: the variants replace {KEY}"
    );

    // The writer's stats, recomputed from what each episode holds under KEY: the decoded source for a kept source
    // episode, the sampled unit (already at the 24x40 output size) for a variant.
    let mut expected = Stats::new();
    for k in 0..6u64 {
        let (s_idx, slot) = (k / 3, k % 3);
        let (a, b) = (
            src.read_episode(EpisodeIndex(s_idx)).unwrap(),
            ds.read_episode(EpisodeIndex(k)).unwrap(),
        );
        let source_frames = a.cameras[KEY].decode().unwrap();
        let written = if slot == 0 {
            // keep_source: every source column bit-exact (the index columns renumbered), the camera re-encoded.
            assert_columns_equal_but_indices(&a, &b, &format!("kept source episode {k}"));
            let got = b.cameras[KEY].decode().unwrap();
            assert!(
                got == roundtrip(&source_frames, &dir.path().join(format!("s{k}.mp4"))),
                "kept source episode {k}: {KEY} is not the source's frames re-encoded"
            );
            source_frames.clone()
        } else {
            let label = if slot == 1 { "dr" } else { "dr.v1" };
            let frames = unit(&out, s_idx, label);
            let got = b.cameras[KEY].decode().unwrap();
            // The variant's frames through the writer's encoder settings, frame for frame; not the source's.
            assert!(
                got == roundtrip(&frames, &dir.path().join(format!("v{k}.mp4"))),
                "episode {k}: {KEY} is not the variant's frames encoded"
            );
            let to_source = mean_abs(&got, &source_frames);
            assert!(
                to_source > 5.0,
                "episode {k}: {KEY} is {to_source} from the source's frames"
            );
            assert_eq!(
                a.columns.column_by_name("action"),
                b.columns.column_by_name("action")
            );
            frames
        };
        let mut ep_stats = Stats::new();
        ep_stats.insert(KEY.to_string(), image_stats(&written));
        merge_into(&mut expected, &ep_stats);
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/stats.json")).unwrap()).unwrap();
    let src_stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("meta/stats.json")).unwrap()).unwrap();
    // (Within 1e-12: serde_json's default float parser is not exact to the last bit.)
    assert!(
        same_numbers(&stats[KEY], &stats_json(&expected)[KEY]),
        "stats of {KEY}: {} written, {} expected",
        stats[KEY],
        stats_json(&expected)[KEY]
    );
    assert_ne!(
        stats[KEY]["mean"], src_stats[KEY]["mean"],
        "stats were copied, not recomputed"
    );

    // lerobot loads it: six episodes, the variants' frames under KEY, the source's actions.
    let dump = dir.path().join("dump.safetensors");
    let summary = run_py("dump_lerobot.py", &[&out, &dump]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["episodes"], 6, "{summary}");
    assert_eq!(summary["frames"], 60, "{summary}");
    let got = crate::common::load_f32(&dump);
    for k in 0..6u64 {
        let a = src.read_episode(EpisodeIndex(k / 3)).unwrap();
        let b = ds.read_episode(EpisodeIndex(k)).unwrap();
        let cam = &got[&format!("ep{k}.{KEY}")];
        assert_eq!(cam.0, vec![10, 24, 40, 3], "episode {k}");
        let ours: Vec<f32> = b.cameras[KEY]
            .decode()
            .unwrap()
            .iter()
            .flat_map(|f| f.as_raw().iter().map(|&v| v as f32))
            .collect();
        let diff = ours
            .iter()
            .zip(&cam.1)
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / ours.len() as f32;
        assert!(
            diff < 1.5,
            "episode {k}: lerobot's frames are {diff} from vadapt's"
        );
        assert_eq!(
            got[&format!("ep{k}.action")].1,
            f32_list_column(&a, "action"),
            "episode {k}"
        );
    }

    // replace_camera = false: the source camera stays, the variants go under observation.images.augmented.
    let toml = randomized_toml(dir.path(), 1, "replace_camera = false");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let beside = dir.path().join("beside");
    pipeline::run(&cfg, &toml, &opts(&data, &beside)).unwrap();
    let ds = open_dataset(&beside).unwrap();
    let ep = ds.read_episode(EpisodeIndex(1)).unwrap();
    let a = src.read_episode(EpisodeIndex(1)).unwrap();
    let source_frames = a.cameras[KEY].decode().unwrap();
    let tmp = dir.path().join("beside.mp4");
    assert!(
        ep.cameras[KEY].decode().unwrap() == roundtrip(&source_frames, &tmp),
        "replace_camera = false: {KEY} is the source's"
    );
    let aug = ep.cameras["observation.images.augmented"].decode().unwrap();
    assert!(
        aug == roundtrip(&unit(&beside, 1, "dr"), &tmp),
        "replace_camera = false: the variant goes under observation.images.augmented"
    );
}

/// Ranges and lists that cannot work are refused before anything is written, naming the key and the target.
#[test]
fn bad_draws_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 1, 4);
    let models = repo().join("models/demo");
    let cases: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        (
            "empty",
            ("prior_strength = [0.5, 0.5]", "target[0].prior_strength"),
        ),
        (
            "inverted",
            ("prior_strength = [0.8, 0.2]", "target[0].prior_strength"),
        ),
        (
            "negative",
            ("prior_strength = [-0.1, 0.5]", "target[0].prior_strength"),
        ),
        ("nan", ("guidance = [1.0, nan]", "target[0].guidance")),
        (
            "three",
            ("guidance = [1.0, 2.0, 3.0]", "target[0].guidance"),
        ),
        (
            "no_prompts",
            ("prior_prompts = []", "target[0].prior_prompts"),
        ),
        ("zero", ("variants = 0", "target[0].variants")),
        (
            "bad_placeholder",
            ("prompts = [\"{style}\"]", "target[0].prompts[0]"),
        ),
    ]);
    for (name, (line, key)) in cases {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[input]\nimage_key = \"{KEY}\"\n[output]\nlayout = \"expanded\"\n\
                 [[target]]\nname = \"claymation\"\nadapter = \"{}\"\nprior = \"{}\"\n{line}\n",
                models.join("edge_to_sim").display(),
                models.join("prior").display()
            ),
        )
        .unwrap();
        let out = dir.path().join(format!("out_{name}"));
        let err = vadapt_fails(&[
            "augment",
            "--pipeline",
            p.to_str().unwrap(),
            "--input",
            data.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(
            err.contains(key) && err.contains(&format!("{name}.toml")),
            "{name}: the error should name {key:?} and the file:\n{err}"
        );
        assert!(
            !out.exists(),
            "{name}: nothing is written on a config error"
        );
    }
}

/// `{episode:COLUMN}` in a prompt template is the source episode's per-episode string column: on the bundled
/// LanguageTable sample, each output records the name of the episode's own `appearance_0` camera as its prompt
/// (what `vadapt eval --reference-key observation.images.appearance_0` then scores against); a column the episode
/// lacks fails the episode naming the column; a malformed placeholder is refused naming the key.
#[test]
fn episode_column_placeholders_fill_prompts_per_episode() {
    let dir = tempfile::tempdir().unwrap();
    let lt = repo().join("datasets/language_table");
    let column_name = "appearance/observation.images.appearance_0/name";
    let toml = |template: &str| {
        let p = dir.path().join("lt.toml");
        std::fs::write(
            &p,
            format!(
                "seed = 3\n[input]\nimage_key = \"observation.images.rgb\"\n[output]\nlayout = \"expanded\"\n\
                 codec = \"h264\"\n[[target]]\nname = \"named\"\nadapter = \"{}\"\nprior = \"{}\"\n\
                 prior_prompts = [{template:?}]\nprior_strength = 0.4\nguidance = 1.0\nsteps = 1\n",
                repo().join("models/demo/edge_to_sim").display(),
                repo().join("models/demo/prior").display(),
            ),
        )
        .unwrap();
        p
    };
    let path = toml(&format!("{{episode:{column_name}}}, night style"));
    let cfg = PipelineConfig::load(&path).unwrap();
    let out = dir.path().join("out");
    let mut o = opts(&lt, &out);
    o.limit = Some(2);
    let s = pipeline::run(&cfg, &path, &o).unwrap();
    assert_eq!(s.episodes_written, 2);
    let (src, dst) = (open_dataset(&lt).unwrap(), open_dataset(&out).unwrap());
    let mut names = std::collections::BTreeSet::new();
    for k in 0..2u64 {
        let name = src
            .read_episode(EpisodeIndex(k))
            .unwrap()
            .episode_columns
            .string(column_name)
            .expect("the sample names its appearance cameras");
        let ep = dst.read_episode(EpisodeIndex(k)).unwrap();
        let recorded = column::<StringArray>(&ep, "augmentation.prior_prompt").value(0);
        assert_eq!(recorded, format!("{name}, night style"), "episode {k}");
        names.insert(name);
    }
    assert_eq!(names.len(), 2, "each episode its own name: {names:?}");

    // A column no episode has: the episode is skipped (recorded), or under --strict the run fails naming it.
    let path = toml("{episode:appearance/observation.images.nope/name}");
    let cfg = PipelineConfig::load(&path).unwrap();
    let mut o = opts(&lt, &dir.path().join("missing"));
    o.limit = Some(1);
    o.strict = true;
    let err = pipeline::run(&cfg, &path, &o).unwrap_err().to_string();
    assert!(
        err.contains("appearance/observation.images.nope/name") && err.contains("episode 0"),
        "{err}"
    );

    let err = PipelineConfig::load(&toml("{episode:}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("prior_prompts[0]"), "{err}");
}

/// `reference` / `references`: a still of the look to render replaces the source's first frame in every window of
/// an adapter with a first-frame channel. The drawn reference is recorded per output episode and samples exactly
/// what a fixed `reference` of the same image does; bad uses are refused naming the key.
#[test]
fn reference_images_replace_the_first_frame_and_are_drawn_per_variant() {
    let dir = tempfile::tempdir().unwrap();
    let lt = repo().join("datasets/language_table");
    let still = |name: &str, rgb: [u8; 3]| {
        let p = dir.path().join(name);
        image::RgbImage::from_pixel(72, 40, image::Rgb(rgb))
            .save(&p)
            .unwrap();
        p
    };
    let (red, blue) = (
        still("red.png", [200, 30, 30]),
        still("blue.png", [30, 30, 200]),
    );
    let run = |name: &str, adapter: &str, extra: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "seed = 5\n[input]\nimage_key = \"observation.images.rgb\"\n[output]\nlayout = \"expanded\"\n\
                 codec = \"h264\"\n[[target]]\nname = \"restyled\"\nadapter = \"{}\"\nguidance = 1.0\nsteps = 2\n\
                 {extra}\n",
                repo().join(adapter).display(),
            ),
        )
        .unwrap();
        let cfg = PipelineConfig::load(&p)?;
        let out = dir.path().join(name);
        let mut o = opts(&lt, &out);
        o.limit = Some(1);
        pipeline::run(&cfg, &p, &o).map(|_| out)
    };
    let lt_model = "models/language_table/edge_to_sim";
    let drawn = run(
        "drawn",
        lt_model,
        &format!("references = [{:?}, {:?}]\nvariants = 3", red, blue),
    )
    .unwrap();
    let fixed_red = run("red", lt_model, &format!("reference = {red:?}")).unwrap();
    let plain = run("plain", lt_model, "").unwrap();

    let entries = provenance(&drawn)["episodes"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 3);
    let refs: Vec<PathBuf> = entries
        .iter()
        .map(|e| {
            PathBuf::from(
                e["draw"]["reference"]
                    .as_str()
                    .expect("the draw names its reference"),
            )
        })
        .collect();
    assert!(refs.iter().all(|r| *r == red || *r == blue), "{refs:?}");
    let with_red = unit(&fixed_red, 0, "restyled");
    assert!(
        mean_abs(&with_red, &unit(&plain, 0, "restyled")) > 0.5,
        "a reference changes what the model draws"
    );
    // Variant 0 has the target's own label, so the same noise as the fixed run: equal exactly when it drew red.
    let v0 = unit(&drawn, 0, "restyled");
    assert_eq!(
        v0 == with_red,
        refs[0] == red,
        "variant 0 drew {:?}",
        refs[0]
    );
    // A drawn reference regenerates its episode alone (the record names the image).
    let again = regenerate(&drawn, 2, &dir.path().join("regen2"), Compute::default()).unwrap();
    assert!(
        again.frames == unit(&drawn, 0, "restyled.v2"),
        "variant 2 regenerated"
    );

    // A model trained on tile-shuffled stills (vadapt.json `reference_tiles`) gets its reference shuffled by the
    // fixed sampling permutation: the same frames as the plain model given the shuffled still.
    let tiled = dir.path().join("tiled");
    crate::parity_latent::copy_dir(&repo().join(lt_model), &tiled);
    let meta_path = tiled.join("vadapt.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["reference_tiles"] = 4.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let ramp = image::RgbImage::from_fn(72, 40, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 6) as u8, 128])
    });
    let (ramp_path, shuffled_path) = (dir.path().join("ramp.png"), dir.path().join("shuffled.png"));
    ramp.save(&ramp_path).unwrap();
    shuffle_tiles(&ramp, 4, &mut NoiseRng::new(REFERENCE_PERMUTATION_SEED))
        .save(&shuffled_path)
        .unwrap();
    let reference = |p: &Path| format!("reference = {p:?}");
    let by_tiled = unit(
        &run(
            "tiled_ramp",
            tiled.to_str().unwrap(),
            &reference(&ramp_path),
        )
        .unwrap(),
        0,
        "restyled",
    );
    let by_plain = unit(
        &run("plain_ramp", lt_model, &reference(&ramp_path)).unwrap(),
        0,
        "restyled",
    );
    let pre_shuffled = unit(
        &run("plain_shuffled", lt_model, &reference(&shuffled_path)).unwrap(),
        0,
        "restyled",
    );
    assert!(
        by_tiled == pre_shuffled,
        "the tiled model shuffles its reference by the fixed permutation"
    );
    let moved = mean_abs(&by_tiled, &by_plain);
    assert!(
        moved > 0.2,
        "the shuffled reference changes the frames (mean abs {moved})"
    );

    let err = |adapter: &str, extra: &str| run("bad", adapter, extra).unwrap_err().to_string();
    let both = err(
        lt_model,
        &format!("reference = {red:?}\nreferences = [{blue:?}]"),
    );
    assert!(both.contains("target.restyled.references"), "{both}");
    let empty = err(lt_model, "references = []");
    assert!(empty.contains("target.restyled.references"), "{empty}");
    let missing = err(lt_model, "reference = \"nope.png\"");
    assert!(
        missing.contains("target.restyled.reference") && missing.contains("nope.png"),
        "{missing}"
    );
    let paired = dir.path().join("paired.toml");
    std::fs::write(
        &paired,
        format!(
            "[input]\nimage_key = \"observation.images.rgb\"\n[output]\nlayout = \"paired\"\n[[target]]\n\
             name = \"restyled\"\nadapter = \"{}\"\nreferences = [{red:?}]\n",
            repo().join(lt_model).display()
        ),
    )
    .unwrap();
    let err_paired = PipelineConfig::load(&paired).unwrap_err().to_string();
    assert!(
        err_paired.contains("references") && err_paired.contains("expanded"),
        "{err_paired}"
    );
    let no_channel = err("models/demo/prior", &format!("reference = {red:?}"));
    assert!(
        no_channel.contains("target.restyled.reference") && no_channel.contains("first-frame"),
        "{no_channel}"
    );
}
