//! `vadapt train`: the loss falls on a fixed batch, a resumed run ends bit-identical to an uninterrupted one, the
//! saved model loads and samples (alone and composed), and bad recipes are refused with the key named.

use std::path::Path;

use candle_core::Device;
use vadapt::models::Denoiser;
use vadapt::train::{TrainConfig, Trainer};

use crate::common::{repo, vadapt};

/// A tiny recipe on the bundled sample data (4 episodes x 24 frames): 4 frames at 8x16, two levels.
fn recipe(output: &Path, extra: &str) -> String {
    format!(
        r#"
output = "{out}"
steps = 6
seed = 7
{extra}
[data]
dataset = "{data}"
target_key = "observation.images.sim"
condition_key = "observation.images.real"
holdout_episodes = 1
frame_stride = 2
[model]
frames = 4
height = 8
width = 16
block_out_channels = [8, 16]
attention_head_dim = 8
cross_attention_dim = 16
[text_encoder]
num_hidden_layers = 1
max_tokens = 16
[optim]
batch_size = 2
warmup_steps = 2
[log]
checkpoint_every = 3
sample_steps = 2
sample_clips = 1
"#,
        out = output.display(),
        data = repo().join("datasets/sample/lerobot").display(),
    )
}

fn config(text: &str) -> TrainConfig {
    TrainConfig::from_toml(text, Path::new("test.toml")).expect("recipe parses")
}

/// For each training target (ε, and x0 as the demo recipes use): the loss falls by a large factor on one batch.
#[test]
fn loss_falls_on_a_fixed_batch() {
    for param in ["epsilon", "sample"] {
        let dir = tempfile::tempdir().unwrap();
        let text = recipe(dir.path(), "fixed_batch = true").replace(
            "cross_attention_dim = 16",
            &format!("cross_attention_dim = 16\nprediction_type = \"{param}\""),
        );
        let mut c = config(&text);
        c.steps = 200;
        c.optim.lr = 3e-3;
        c.optim.warmup_steps = 0;
        c.optim.min_lr_ratio = 1.0;
        c.optim.ema_decay = 0.0;
        c.guidance.drop_text = 0.0;
        let mut t = Trainer::new(c, &Device::Cpu).unwrap();
        let mut losses = Vec::new();
        for _ in 0..200 {
            losses.push(t.train_step().unwrap().loss);
        }
        let first = losses[0];
        let last: f64 = losses[190..].iter().sum::<f64>() / 10.0;
        println!(
            "{param}: fixed-batch loss {first:.4} -> {last:.5} ({:.0}x)",
            first / last
        );
        if param == "epsilon" {
            assert!(
                first > 0.3,
                "an untrained model's noise prediction is poor: {first}"
            );
        }
        assert!(
            last < first / 20.0,
            "{param}: the loss must fall by a large factor on one batch: {first} -> {last}"
        );
        let saved = dir.path().join("model/scheduler/scheduler_config.json");
        t.save_model(&dir.path().join("model")).unwrap();
        let saved = std::fs::read_to_string(saved).unwrap();
        assert!(
            saved.contains(&format!("\"prediction_type\": \"{param}\"")),
            "the saved scheduler samples the trained parameterization: {saved}"
        );
    }
}

#[test]
fn resumed_run_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let bar = vadapt::progress::Silent;
    let mut whole = Trainer::new(config(&recipe(&a, "")), &Device::Cpu).unwrap();
    whole.run(&bar, |_, _| true).unwrap();
    let mut first = Trainer::new(config(&recipe(&b, "")), &Device::Cpu).unwrap();
    first.run(&bar, |step, _| step < 4).unwrap();
    assert_eq!(first.step, 4, "stopped after step 4");
    drop(first);
    let mut resumed = Trainer::resume_or_new(config(&recipe(&b, "")), &Device::Cpu).unwrap();
    assert_eq!(
        resumed.step, 4,
        "resumes from the checkpoint written at the stop"
    );
    resumed.run(&bar, |_, _| true).unwrap();
    assert_eq!(resumed.step, 6);
    let (wa, wb) = (whole.weights(), resumed.weights());
    assert_eq!(wa.len(), wb.len());
    for (name, ta) in &wa {
        let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vb = wb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after resume"
        );
    }
    for f in [
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/text_encoder/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}: the saved EMA model is byte-identical"
        );
    }
    let losses = |p: &Path| std::fs::read_to_string(p.join("loss.csv")).unwrap();
    let strip = |s: String| {
        s.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(losses(&a)),
        strip(losses(&b)),
        "loss.csv rows (without wall time)"
    );
    let kept: Vec<_> = std::fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(kept.len(), 2, "keep_checkpoints = 2: {kept:?}");
}

#[test]
fn train_cli_writes_a_model_that_samples_alone_and_composed() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let prior = dir.path().join("prior");
    let recipe_path = dir.path().join("small.toml");
    std::fs::write(&recipe_path, recipe(&small, "")).unwrap();
    let out = vadapt(&[
        "train",
        "--config",
        recipe_path.to_str().unwrap(),
        "--steps",
        "3",
    ]);
    assert!(out.contains("step 3"), "{out}");
    for f in [
        "model/unet/config.json",
        "model/vadapt.json",
        "model/scheduler/scheduler_config.json",
        "loss.png",
    ] {
        assert!(small.join(f).exists(), "{f} written");
    }
    let sheets: Vec<_> = std::fs::read_dir(small.join("samples"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(sheets.len(), 1, "one sample sheet at the end");
    let sheet = image::open(sheets[0].path()).unwrap().to_rgb8();
    // 4 rows (condition, edges, truth, sample) of 4 frames, 3x scaled 8x16 frames, 2 px gaps.
    assert_eq!(
        (sheet.width(), sheet.height()),
        (4 * (48 + 2) + 2, 4 * (24 + 2) + 2)
    );

    // Refuses to overwrite a run without --resume; --resume continues it.
    let err = crate::common::vadapt_fails(&["train", "--config", recipe_path.to_str().unwrap()]);
    assert!(err.contains("--resume"), "{err}");
    let out = vadapt(&[
        "train",
        "--config",
        recipe_path.to_str().unwrap(),
        "--steps",
        "4",
        "--resume",
    ]);
    assert!(out.contains("step 4"), "{out}");

    // A text-only "prior" (no conditioning channels) from the same data, then a composition of the two.
    let prior_recipe = recipe(&prior, "").replace("[model]\n", "[model]\nconditioning = []\n");
    let prior_path = dir.path().join("prior.toml");
    std::fs::write(&prior_path, prior_recipe).unwrap();
    vadapt(&[
        "train",
        "--config",
        prior_path.to_str().unwrap(),
        "--steps",
        "2",
    ]);
    let clip = crate::sample_cli::edge_video(dir.path());
    let video = dir.path().join("composed.mp4");
    let out = vadapt(&[
        "sample",
        "--adapter",
        small.join("model").to_str().unwrap(),
        "--prior",
        prior.join("model").to_str().unwrap(),
        "--prompt",
        "push the red star to the blue cube",
        "--edges",
        clip.to_str().unwrap(),
        "--lam",
        "0.3",
        "--steps",
        "3",
        "--out",
        video.to_str().unwrap(),
    ]);
    assert!(out.contains("prior calls"), "{out}");
    let frames = vadapt::io::video::decode_all(&video).unwrap();
    assert_eq!(frames.len(), 4, "the model's frame count");
    assert_eq!((frames[0].image.width(), frames[0].image.height()), (16, 8));
}

#[test]
fn bad_recipes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = recipe(dir.path(), "");
    let cases = [
        (
            base.replace("seed = 7", "seed = 7\nlearning_rate = 1"),
            "learning_rate",
        ),
        (
            base.replace("batch_size = 2", "batch_size = 0"),
            "optim.batch_size",
        ),
        (
            base.replace("warmup_steps = 2", "warmup_steps = 2\nlr = -1.0"),
            "optim.lr",
        ),
        (base.replace("height = 8", "height = 9"), "model.height"),
        (base.replace("frames = 4", "frames = \"four\""), "frames"),
        (
            base.replace("sample/lerobot", "sample/nowhere"),
            "data.dataset",
        ),
        (
            base.replace("holdout_episodes = 1", "holdout_episodes = 1\nprompt = 3"),
            "prompt",
        ),
        (
            base.replace(
                "holdout_episodes = 1",
                "holdout_episodes = 1\nprompt_clause_dropout = 1.0",
            ),
            "data.prompt_clause_dropout",
        ),
        (
            base.replace(
                "condition_key = \"observation.images.real\"",
                "condition_key = []",
            ),
            "data.condition_key",
        ),
        (
            base.replace(
                "condition_key = \"observation.images.real\"",
                "condition_key = [\"observation.images.real\", \"observation.images.real\"]",
            ),
            "data.condition_key",
        ),
    ];
    for (text, key) in cases {
        let err = TrainConfig::from_toml(&text, Path::new("bad.toml"))
            .expect_err(key)
            .to_string();
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "error names {key} and the file: {err}"
        );
    }
    // A camera the dataset lacks is refused when the data loads.
    let c = config(&base.replace("observation.images.sim", "observation.images.wrist"));
    let err = Trainer::new(c, &Device::Cpu)
        .err()
        .expect("unknown camera")
        .to_string();
    assert!(
        err.contains("observation.images.wrist") && err.contains("no such camera"),
        "{err}"
    );
}

/// A list of condition cameras makes one training episode per (episode, camera), every one with the same target
/// frames and its own camera's edges and first frame; held-out episodes go whole, with all their cameras.
#[test]
fn condition_key_list_pairs_the_target_with_each_camera() {
    use vadapt::train::data::ClipSet;
    let dir = tempfile::tempdir().unwrap();
    let text = recipe(dir.path(), "").replace(
        "condition_key = \"observation.images.real\"",
        "condition_key = [\"observation.images.real\", \"observation.images.sim\"]",
    );
    let c = config(&text);
    assert_eq!(
        c.data.condition_key.as_ref().map(|k| k.keys().len()),
        Some(2)
    );
    let single = ClipSet::load(&config(&recipe(dir.path(), ""))).unwrap();
    let set = ClipSet::load(&c).unwrap();
    // The sample has 4 episodes, one held out.
    assert_eq!((single.train.len(), single.holdout.len()), (3, 1));
    assert_eq!((set.train.len(), set.holdout.len()), (6, 2));
    for (i, pair) in set.train.chunks(2).enumerate() {
        let one = &single.train[i];
        let (real, sim) = (&pair[0], &pair[1]);
        assert!(
            real.name.contains("observation.images.real")
                && sim.name.contains("observation.images.sim")
        );
        assert!(
            real.target == one.target && sim.target == one.target,
            "same target frames"
        );
        assert!(
            real.condition == one.condition && real.edges == one.edges,
            "the real camera's conditioning"
        );
        assert!(
            sim.condition == *one.target,
            "the sim camera conditions its own entry"
        );
        assert!(
            sim.edges != real.edges,
            "each entry has its own camera's edges"
        );
    }
    assert!(set
        .holdout
        .iter()
        .all(|e| e.target == single.holdout[0].target));
}

/// A prior's recipe over the bundled LanguageTable sample: every appearance camera is a target (its own condition),
/// and `{appearance}` in the prompt becomes that camera's name from the episodes table; a target list with a
/// condition list is refused, and a dataset without appearance names names the column it lacks.
#[test]
fn target_key_list_with_appearance_prompts_trains_a_prior_on_every_camera() {
    use vadapt::train::data::ClipSet;
    let dir = tempfile::tempdir().unwrap();
    let lt = repo().join("datasets/language_table");
    let cams: Vec<String> = (0..4)
        .map(|k| format!("observation.images.appearance_{k}"))
        .collect();
    let list = format!(
        "[{}]",
        cams.iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = recipe(dir.path(), "")
        .replace(
            &format!(
                "dataset = \"{}\"",
                repo().join("datasets/sample/lerobot").display()
            ),
            &format!("dataset = \"{}\"", lt.display()),
        )
        .replace(
            "target_key = \"observation.images.sim\"\ncondition_key = \"observation.images.real\"",
            &format!("target_key = {list}\nprompt = \"{{appearance}}\""),
        )
        .replace("frame_stride = 2", "frame_stride = 1");
    let set = ClipSet::load(&config(&text)).unwrap();
    let episodes = set.train.len() + set.holdout.len();
    assert!(
        episodes >= 8 && episodes % 4 == 0,
        "{episodes} entries: 4 cameras per episode"
    );
    for entry in set.train.iter().chain(&set.holdout) {
        let cam = cams
            .iter()
            .find(|c| entry.name.contains(c.as_str()))
            .expect("the entry names its camera");
        assert_eq!(entry.condition, *entry.target, "{cam} conditions on itself");
        assert!(
            entry.prompt.contains(" board, ") && !entry.prompt.contains("{appearance}"),
            "{cam}: the prompt is the appearance name, got {:?}",
            entry.prompt
        );
    }
    let prompts: std::collections::BTreeSet<&str> =
        set.train.iter().map(|e| e.prompt.as_str()).collect();
    assert!(
        prompts.len() > 4,
        "every camera of every episode has its own look: {prompts:?}"
    );

    // One condition camera for every target: each appearance learned from the default look's edges.
    let one = text.replace(
        "prompt = \"{appearance}\"",
        "prompt = \"{appearance}\"\ncondition_key = \"observation.images.rgb\"",
    );
    let shared = ClipSet::load(&config(&one)).unwrap();
    assert_eq!(shared.train.len(), set.train.len());
    for (a, b) in shared.train.iter().zip(&set.train) {
        assert_eq!(a.target, b.target, "the same targets in the same order");
        assert_eq!(a.prompt, b.prompt);
    }
    let rgb_entries: Vec<_> = shared.train.chunks(cams.len()).collect();
    for group in &rgb_entries {
        assert!(
            group.iter().all(|e| e.condition == group[0].condition),
            "every camera of an episode conditions on its rgb camera"
        );
        assert_ne!(
            group[0].condition, *group[0].target,
            "rgb is not the appearance"
        );
    }
    // A list of targets with a list of conditions is ambiguous: refused, naming the key.
    let both = text.replace(
        "prompt = \"{appearance}\"",
        &format!("prompt = \"{{appearance}}\"\ncondition_key = {list}"),
    );
    let err = TrainConfig::from_toml(&both, Path::new("test.toml"))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("data.condition_key"), "{err}");

    let procedural = recipe(dir.path(), "").replace(
        "condition_key = \"observation.images.real\"",
        "prompt = \"{appearance}\"",
    );
    let err = ClipSet::load(&config(&procedural))
        .err()
        .expect("no appearance names")
        .to_string();
    assert!(
        err.contains("appearance/observation.images.sim/name"),
        "{err}"
    );
}

/// A recipe with a `reference` channel: the first frame stays the condition camera's, the reference is the target
/// camera's far still with its tiles shuffled per clip (the same for the same clip, so a resumed run sees the same
/// stills); `reference_tiles` is refused without that channel or out of range.
#[test]
fn reference_channel_takes_the_far_still_with_its_tiles_shuffled() {
    use vadapt::train::data::{ClipRef, ClipSet};
    let dir = tempfile::tempdir().unwrap();
    let plain = recipe(dir.path(), "");
    let with_reference = plain
        .replace(
            "holdout_episodes = 1",
            "holdout_episodes = 1\nreference_tiles = 2",
        )
        .replace(
            "width = 16",
            "width = 16\nconditioning = [\"edges\", \"first_frame\", \"reference\"]",
        );
    let (a, b) = (
        ClipSet::load(&config(&plain)).unwrap(),
        ClipSet::load(&config(&with_reference)).unwrap(),
    );
    let ep = &b.train[0];
    let last = ep.target.len() - 1;
    let early = ClipRef {
        episode: 0,
        start: 0,
    };
    assert!(
        a.reference_image(early, false).is_none(),
        "no reference channel"
    );
    assert_eq!(*b.first_frame_image(early, false), ep.condition[0]);
    let sorted = |img: &image::RgbImage| {
        let mut p: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        p.sort_unstable();
        p
    };
    let still = b.reference_image(early, false).unwrap();
    assert_eq!(
        sorted(&still),
        sorted(&ep.target[last]),
        "the far still's pixels, moved"
    );
    assert_eq!(Some(still), b.reference_image(early, false));
    let moved = (0..8)
        .filter(|&start| {
            b.reference_image(ClipRef { episode: 0, start }, false)
                .unwrap()
                != ep.target[last]
        })
        .count();
    assert!(
        moved >= 4,
        "only {moved} of 8 clips' stills were rearranged"
    );
    // `same_look`: a whole frame of another episode of the same look (this camera has no appearance columns, so
    // one look in every episode).
    let same_look = ClipSet::load(&config(
        &with_reference.replace("reference_tiles = 2", "reference = \"same_look\""),
    ))
    .unwrap();
    for start in 0..4 {
        let r = same_look
            .reference_image(ClipRef { episode: 0, start }, false)
            .unwrap();
        let from: Vec<usize> = (0..same_look.train.len())
            .filter(|&e| same_look.train[e].target.contains(&r))
            .collect();
        assert!(
            !from.is_empty() && !from.contains(&0),
            "clip {start}'s reference is a frame of episodes {from:?}, not of another episode"
        );
    }
    for (bad, why) in [
        (
            plain.replace(
                "holdout_episodes = 1",
                "holdout_episodes = 1\nreference = \"same_look\"",
            ),
            "channel",
        ),
        (
            plain.replace(
                "holdout_episodes = 1",
                "holdout_episodes = 1\nreference_tiles = 4",
            ),
            "channel",
        ),
        (
            with_reference.replace("reference_tiles = 2", "reference_tiles = 0"),
            "1..=16",
        ),
        (
            with_reference.replace("reference_tiles = 2", "reference_tiles = 17"),
            "1..=16",
        ),
    ] {
        let err = TrainConfig::from_toml(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.reference") && err.contains(why), "{err}");
    }
}

/// A `reference` channel added to a trained model (`init_from` a model conditioned on edges and the first frame):
/// the UNet takes three more input channels whose conv_in weights start at zero, every other weight as stored, so
/// the run starts where the stored model was; the exported `vadapt.json` lists the channel and its tile grid.
#[test]
fn a_reference_channel_added_to_a_trained_model_starts_at_zero_weight() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let first_frame = |text: String| {
        text.replace(
            "width = 16",
            "width = 16\nconditioning = [\"edges\", \"first_frame\"]",
        )
    };
    run_to_end(config(
        &first_frame(recipe(&base_dir, "")).replace("steps = 6", "steps = 1"),
    ));
    let widened_dir = dir.path().join("widened");
    let widened = recipe(&widened_dir, "")
        .replace("steps = 6", "steps = 1")
        .replace(
            "width = 16",
            &format!(
                "width = 16\nconditioning = [\"edges\", \"first_frame\", \"reference\"]\ninit_from = \"{}\"",
                base_dir.join("model").display()
            ),
        );
    let mut c = config(&widened);
    c.optim.lr = 1e-12; // one step that barely moves the weights
    c.optim.ema_decay = 0.0;
    run_to_end(c);
    assert_conv_in_widened(&base_dir, &widened_dir, 7, 3);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(widened_dir.join("model/vadapt.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta["conditioning"],
        serde_json::json!(["edges", "first_frame", "reference"])
    );
    assert!(
        meta.get("reference_tiles").is_none(),
        "whole stills by default: {meta}"
    );
}

/// A `source` channel (the condition camera's own frames) added to a trained model conditioned on edges and the
/// first frame: it starts at zero weight, a batch's last three channels are the clip's condition frames (the
/// source camera, not the target), and the exported model samples through the window sampler from a source video.
#[test]
fn a_source_channel_carries_the_condition_frames_and_starts_at_zero_weight() {
    use vadapt::model_dir::{Conditioning, ModelDir};
    use vadapt::sampling::TargetSampler;
    use vadapt::train::data::ClipRef;
    use vadapt::vision::tensor::frames_to_tensor;

    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let with = |list: &str, text: String| {
        text.replace("width = 16", &format!("width = 16\nconditioning = {list}"))
    };
    run_to_end(config(
        &with(r#"["edges", "first_frame"]"#, recipe(&base_dir, ""))
            .replace("steps = 6", "steps = 1"),
    ));
    let widened_dir = dir.path().join("widened");
    let widened = with(
        &format!(
            "[\"edges\", \"first_frame\", \"source\"]\ninit_from = \"{}\"",
            base_dir.join("model").display()
        ),
        recipe(&widened_dir, ""),
    )
    .replace("steps = 6", "steps = 1");
    let mut c = config(&widened);
    c.optim.lr = 1e-12;
    c.optim.ema_decay = 0.0;
    let (t, losses) = run_to_end(c);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_conv_in_widened(&base_dir, &widened_dir, 7, 3);

    let clip = ClipRef {
        episode: 1,
        start: 2,
    };
    let batch = t.data.batch(&[clip], false, &Device::Cpu).unwrap();
    let ch = batch.channels.unwrap();
    assert_eq!(
        ch.dims(),
        &[1, 7, 4, 8, 16],
        "edges (1) + first frame (3) + source (3)"
    );
    let source = t.data.condition_frames(clip, false);
    let want = frames_to_tensor(&source, &Device::Cpu).unwrap();
    let got = ch.get(0).unwrap().narrow(0, 4, 3).unwrap();
    assert!(
        max_abs_diff(&got, &want) < 1e-6,
        "source channels are the condition frames"
    );
    let target = frames_to_tensor(&t.data.target_frames(clip, false), &Device::Cpu).unwrap();
    assert!(
        max_abs_diff(&got, &target) > 0.05,
        "the source camera, not the target"
    );

    let model = ModelDir::load(&widened_dir.join("model"), &Device::Cpu).unwrap();
    assert_eq!(
        model.conditioning,
        vec![
            Conditioning::Edges,
            Conditioning::FirstFrame,
            Conditioning::Source
        ]
    );
    let out = TargetSampler::alone("restyle", &model, 2, 0)
        .sample_episode_checked(&source, None, 1, 0, &Device::Cpu, &|_| Ok(()))
        .unwrap();
    assert_eq!(out.len(), source.len());
    assert!(out.iter().all(|f| f.dimensions() == (16, 8)));
}

/// The exported conv_in of run `widened` is run `base`'s (`have` input channels) with `more` zero channels after.
fn assert_conv_in_widened(base: &Path, widened: &Path, have: usize, more: usize) {
    let conv_in = |run: &Path| {
        let t = candle_core::safetensors::load(
            run.join("model/unet/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        t["conv_in.weight"].clone()
    };
    let (stored, grown) = (conv_in(base), conv_in(widened));
    assert_eq!(stored.dim(1).unwrap(), have);
    assert_eq!(grown.dim(1).unwrap(), have + more);
    assert!(max_abs_diff(&grown.narrow(1, 0, have).unwrap(), &stored) < 1e-9);
    let zeros = grown.narrow(1, have, more).unwrap();
    assert!(max_abs_diff(&zeros, &zeros.zeros_like().unwrap()) < 1e-9);
}

/// Train `config` to its `steps` with the full loop (checkpoints, model export, sample sheet at the end); the
/// losses of every step.
fn run_to_end(c: TrainConfig) -> (Trainer, Vec<f64>) {
    let mut t = Trainer::new(c, &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    t.run(&vadapt::progress::Silent, |_, s| {
        losses.push(s.loss);
        true
    })
    .unwrap();
    (t, losses)
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The only sample sheet of a run, as an image.
fn only_sheet(run: &Path) -> image::RgbImage {
    let sheets: Vec<_> = std::fs::read_dir(run.join("samples"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(sheets.len(), 1, "one sample sheet at the end");
    image::open(sheets[0].path()).unwrap().to_rgb8()
}

/// A latent recipe (the fixture's 2x-downscaling VAE, given as the whole text-to-video pipeline dir): trains on
/// VAE latents, saves a model with a vae/ copy that `ModelDir::load` sees as latent, and that model samples
/// through the pipeline's window sampler to frames at pixel resolution.
#[test]
fn latent_recipe_trains_a_model_that_samples_in_pixels() {
    use vadapt::model_dir::{Conditioning, ModelDir, SampleSpace};
    use vadapt::sampling::TargetSampler;
    use vadapt::train::data::ClipRef;

    let dir = tempfile::tempdir().unwrap();
    let t2v = repo().join("tests/fixtures/parity/t2v");
    let text = recipe(dir.path(), "").replace(
        "[model]\n",
        &format!("[model]\nvae = \"{}\"\n", t2v.display()),
    );
    let mut c = config(&text);
    c.steps = 3;
    let (t, losses) = run_to_end(c);
    assert_eq!(losses.len(), 3);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

    let model_dir = dir.path().join("model");
    let model = ModelDir::load(&model_dir, &Device::Cpu).unwrap();
    assert!(model.vae.is_some(), "the saved model is a latent model");
    assert_eq!(
        model.space(),
        SampleSpace::Latents {
            channels: 4,
            downscale: 2,
            scaling_factor: 0.18215,
            shift_factor: None
        }
    );
    assert_eq!(model.conditioning, vec![Conditioning::Edges]);
    assert_eq!(
        (model.unet.in_channels(), model.unet.out_channels()),
        (5, 4),
        "4 latent channels + 1 edge channel in, 4 latent channels out"
    );
    let cfg = |p: &Path| std::fs::read_to_string(p.join("vae/config.json")).unwrap();
    assert_eq!(
        cfg(&model_dir),
        cfg(&t2v),
        "vae/config.json is the source's"
    );
    assert_eq!(
        std::fs::read(model_dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap(),
        std::fs::read(t2v.join("vae/diffusion_pytorch_model.safetensors")).unwrap(),
        "the VAE weights are the source's"
    );
    let ckpt = dir.path().join("checkpoints/step-00000003/vae/config.json");
    assert!(ckpt.exists(), "the checkpoint's model export has vae/ too");
    let sched = std::fs::read_to_string(model_dir.join("scheduler/scheduler_config.json")).unwrap();
    assert!(
        sched.contains("\"clip_sample\": false"),
        "latents are not clamped to [-1, 1]: {sched}"
    );
    // The sheet holds decoded frames: 8x16 pixels (latents would be 4x8), 4 rows of 4 frames.
    let sheet = only_sheet(dir.path());
    assert_eq!(
        (sheet.width(), sheet.height()),
        (4 * (48 + 2) + 2, 4 * (24 + 2) + 2)
    );

    // 6 frames through 4-frame windows overlapping by 2: two windows, decoded to pixels.
    let mut source = t.data.condition_frames(
        ClipRef {
            episode: 0,
            start: 0,
        },
        false,
    );
    source.extend(
        t.data.condition_frames(
            ClipRef {
                episode: 0,
                start: 2,
            },
            false,
        )[..2]
            .to_vec(),
    );
    let sampler = TargetSampler::alone("latent", &model, 2, 2);
    let out = sampler.sample_episode(&source, 1, 0, &Device::Cpu).unwrap();
    assert_eq!(out.len(), 6);
    assert!(
        out.iter().all(|f| f.dimensions() == (16, 8)),
        "pixel frames"
    );
}

/// The test recipe as a super-resolution stage from 4x8 (low_res, then edges).
fn sr_recipe(output: &Path) -> String {
    recipe(output, "").replace(
        "[model]\n",
        "[model]\nconditioning = [\"low_res\", \"edges\"]\nlow_res = [4, 8]\n",
    )
}

/// A super-resolution recipe: the low_res channels are the target resized to `model.low_res` and back with the
/// pipeline's resize, the saved model is a low_res-conditioned stage that the window sampler runs with a previous
/// stage's video, and `model.low_res` is required exactly when the conditioning lists low_res.
#[test]
fn sr_recipe_trains_a_low_res_stage() {
    use vadapt::model_dir::{Conditioning, ModelDir};
    use vadapt::sampling::TargetSampler;
    use vadapt::train::data::ClipRef;
    use vadapt::vision::resize::resize_rgb;
    use vadapt::vision::tensor::frames_to_tensor;

    let dir = tempfile::tempdir().unwrap();
    let base = recipe(dir.path(), "");
    let sr = sr_recipe(dir.path());
    let mut c = config(&sr);
    c.steps = 3;
    let (t, losses) = run_to_end(c);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

    // Channels 0..3 of a batch are the target through 4x8 and back to 8x16.
    let clip = ClipRef {
        episode: 1,
        start: 3,
    };
    let batch = t.data.batch(&[clip], false, &Device::Cpu).unwrap();
    let ch = batch.channels.unwrap();
    assert_eq!(ch.dims(), &[1, 4, 4, 8, 16], "low_res (3) + edges (1)");
    let want: Vec<_> = t
        .data
        .target_frames(clip, false)
        .iter()
        .map(|f| resize_rgb(&resize_rgb(f, 4, 8), 8, 16))
        .collect();
    let want = frames_to_tensor(&want, &Device::Cpu).unwrap();
    let got = ch.get(0).unwrap().narrow(0, 0, 3).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-6,
        "low_res channels differ from the resized target by {d}"
    );
    let sharp = frames_to_tensor(&t.data.target_frames(clip, false), &Device::Cpu).unwrap();
    assert!(
        max_abs_diff(&got, &sharp) > 0.05,
        "the low_res input has lost detail"
    );

    let model = ModelDir::load(&dir.path().join("model"), &Device::Cpu).unwrap();
    assert_eq!(
        model.conditioning,
        vec![Conditioning::LowRes, Conditioning::Edges]
    );
    assert_eq!(model.unet.in_channels(), 7);
    // Rows: condition, edges, low_res, truth, sample.
    let sheet = only_sheet(dir.path());
    assert_eq!(
        sheet.height(),
        5 * (24 + 2) + 2,
        "the sheet shows the low_res input"
    );

    let source = t.data.condition_frames(clip, false);
    let low_res: Vec<_> = t
        .data
        .target_frames(clip, false)
        .iter()
        .map(|f| resize_rgb(&resize_rgb(f, 4, 8), 8, 16))
        .collect();
    let sampler = TargetSampler::alone("sr", &model, 2, 0);
    let out = sampler
        .sample_episode_checked(&source, Some(&low_res), 1, 0, &Device::Cpu, &|_| Ok(()))
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|f| f.dimensions() == (16, 8)));

    let without = base.replace(
        "[model]\n",
        "[model]\nconditioning = [\"low_res\", \"edges\"]\n",
    );
    let err = TrainConfig::from_toml(&without, Path::new("bad.toml"))
        .expect_err("low_res without model.low_res")
        .to_string();
    assert!(
        err.contains("model.low_res") && err.contains("bad.toml"),
        "{err}"
    );
    let stray = base.replace("[model]\n", "[model]\nlow_res = [4, 8]\n");
    let err = TrainConfig::from_toml(&stray, Path::new("bad.toml"))
        .expect_err("model.low_res without low_res conditioning")
        .to_string();
    assert!(err.contains("model.low_res"), "{err}");
}

/// `data.low_res_key`: a super-resolution stage trained on the previous stage's own output, a camera of the dataset
/// (here the sample's `real` camera stands in for it): its low_res channels are that camera's frames at
/// `model.low_res` and back up, not the target's; the key list pairs with the condition cameras and names a
/// camera the dataset has. A first_frame channel added to the trained stage starts at zero weight.
#[test]
fn sr_recipe_takes_low_res_from_a_camera_of_the_dataset() {
    use vadapt::io::open_dataset;
    use vadapt::train::data::ClipRef;
    use vadapt::vision::resize::resize_rgb;

    let dir = tempfile::tempdir().unwrap();
    let base = sr_recipe(dir.path());
    let keyed = base.replace(
        "holdout_episodes = 1\n",
        "holdout_episodes = 1\nlow_res_key = \"observation.images.real\"\n",
    );
    let mut c = config(&keyed);
    c.steps = 1;
    let (t, losses) = run_to_end(c);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

    let clip = ClipRef {
        episode: 1,
        start: 3,
    };
    let data = repo().join("datasets/sample/lerobot");
    let ds = open_dataset(&data).unwrap();
    let ep = ds.read_episode(ds.episode_indices()[1]).unwrap();
    let real = ep.cameras["observation.images.real"].decode().unwrap();
    // frame_stride = 2: the clip's frames are 3, 5, 7, 9 of the source.
    let want: Vec<_> = (0..4)
        .map(|i| resize_rgb(&resize_rgb(&real[3 + 2 * i], 4, 8), 8, 16))
        .collect();
    let got = t
        .data
        .low_res_frames(clip, false)
        .expect("an SR recipe has low_res frames");
    assert!(
        got == want,
        "low_res frames are the real camera at 4x8 and back"
    );
    let from_target: Vec<_> = t
        .data
        .target_frames(clip, false)
        .iter()
        .map(|f| resize_rgb(&resize_rgb(f, 4, 8), 8, 16))
        .collect();
    assert!(got != from_target, "not the target's (sim) frames");

    // A first_frame channel added to that stage (init_from it): conv_in grows by three zero channels.
    let widened_dir = dir.path().join("widened");
    let mut c = config(
        &recipe(&widened_dir, "")
            .replace("steps = 6", "steps = 1")
            .replace(
                "[model]\n",
                &format!(
                    "[model]\nconditioning = [\"low_res\", \"edges\", \"first_frame\"]\nlow_res = [4, 8]\n\
                     init_from = \"{}\"\n",
                    dir.path().join("model").display()
                ),
            ),
    );
    c.optim.lr = 1e-12;
    c.optim.ema_decay = 0.0;
    run_to_end(c);
    assert_conv_in_widened(dir.path(), &widened_dir, 7, 3);

    let two = base.replace(
        "holdout_episodes = 1\n",
        "holdout_episodes = 1\nlow_res_key = [\"observation.images.real\", \"observation.images.sim\"]\n",
    );
    let err = TrainConfig::from_toml(&two, Path::new("bad.toml"))
        .expect_err("two low_res cameras for one condition camera")
        .to_string();
    assert!(
        err.contains("data.low_res_key")
            && err.contains("bad.toml")
            && err.contains("1 condition camera"),
        "{err}"
    );
    let plain = recipe(dir.path(), "").replace(
        "holdout_episodes = 1\n",
        "holdout_episodes = 1\nlow_res_key = \"observation.images.real\"\n",
    );
    let err = TrainConfig::from_toml(&plain, Path::new("bad.toml"))
        .expect_err("low_res_key without low_res conditioning")
        .to_string();
    assert!(err.contains("data.low_res_key"), "{err}");
    let missing = keyed.replace(
        "low_res_key = \"observation.images.real\"",
        "low_res_key = \"observation.images.base\"",
    );
    let err = match Trainer::new(config(&missing), &Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a low_res camera the dataset lacks"),
    };
    assert!(
        err.contains("observation.images.base") && err.contains("no such camera"),
        "{err}"
    );
}

/// `model.vae` must name a VAE (or pipeline) directory, and a latent model's pixel size must be a multiple of the
/// VAE's downscale.
#[test]
fn bad_vae_recipes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_vae");
    let text = recipe(dir.path(), "").replace(
        "[model]\n",
        &format!("[model]\nvae = \"{}\"\n", missing.display()),
    );
    let err = TrainConfig::from_toml(&text, Path::new("bad.toml"))
        .expect_err("missing vae")
        .to_string();
    assert!(
        err.contains("model.vae")
            && err.contains(&missing.display().to_string())
            && err.contains("bad.toml"),
        "{err}"
    );
    // A directory that is neither a VAE nor a pipeline.
    let text = recipe(dir.path(), "").replace(
        "[model]\n",
        &format!("[model]\nvae = \"{}\"\n", dir.path().display()),
    );
    let err = TrainConfig::from_toml(&text, Path::new("bad.toml"))
        .expect_err("not a vae")
        .to_string();
    assert!(
        err.contains("model.vae") && err.contains("config.json"),
        "{err}"
    );
    // 8x18 pixels: 9 latent columns cannot be halved by the UNet's second level; 8x17 is no multiple of 2.
    let vae = repo().join("tests/fixtures/parity/t2v/vae");
    for (width, why) in [("18", "divisible by 2"), ("17", "multiples of 2")] {
        let text = recipe(dir.path(), "")
            .replace(
                "[model]\n",
                &format!("[model]\nvae = \"{}\"\n", vae.display()),
            )
            .replace("width = 16", &format!("width = {width}"));
        let err = TrainConfig::from_toml(&text, Path::new("bad.toml"))
            .expect_err(width)
            .to_string();
        assert!(err.contains("model.height") && err.contains(why), "{err}");
    }
}

/// `[optim] timestep_bias_*` gives diffusers' `generate_timestep_weights` (SDXL training script): the biased
/// timesteps weigh `multiplier` times the others, normalised; the draw follows them; bad values name the key.
#[test]
fn timestep_bias_weights_follow_diffusers_and_the_draw_follows_them() {
    use vadapt::rng::NoiseRng;
    use vadapt::train::config::TimestepDraw;
    let dir = tempfile::tempdir().unwrap();
    let base = recipe(dir.path(), "");
    let with =
        |extra: &str| base.replace("warmup_steps = 2", &format!("warmup_steps = 2\n{extra}"));
    let c = config(&with(
        "timestep_bias_strategy = \"later\"\ntimestep_bias_multiplier = 3.0",
    ));
    let w = c.optim.timestep_weights(1000).unwrap();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!((w[999] - 3.0 / 1500.0).abs() < 1e-15 && (w[750] - 3.0 / 1500.0).abs() < 1e-15);
    assert!((w[749] - 1.0 / 1500.0).abs() < 1e-15 && (w[0] - 1.0 / 1500.0).abs() < 1e-15);
    let c2 = config(&with(
        "timestep_bias_strategy = \"range\"\ntimestep_bias_multiplier = 0.5\ntimestep_bias_begin = 100\ntimestep_bias_end = 200",
    ));
    let w2 = c2.optim.timestep_weights(1000).unwrap();
    assert!((w2[150] * 2.0 - w2[99]).abs() < 1e-15 && w2[200] == w2[99]);
    assert!(config(&base).optim.timestep_weights(1000).is_none());

    // Half the draws land in the noisiest quarter under "later" x3, a quarter when uniform.
    let frac_late = |c: &TrainConfig| {
        let draw = TimestepDraw::new(&c.optim, 1000);
        let mut rng = NoiseRng::new(1);
        let n = 20_000;
        let late = (0..n).filter(|_| draw.draw(&mut rng) >= 750).count();
        late as f64 / n as f64
    };
    let (biased, uniform) = (frac_late(&c), frac_late(&config(&base)));
    assert!((biased - 0.5).abs() < 0.02, "later x3: {biased}");
    assert!((uniform - 0.25).abs() < 0.02, "uniform: {uniform}");

    for (extra, key) in [
        (
            "timestep_bias_strategy = \"later\"\ntimestep_bias_multiplier = 0.0",
            "optim.timestep_bias_multiplier",
        ),
        (
            "timestep_bias_strategy = \"earlier\"\ntimestep_bias_portion = 1.5",
            "optim.timestep_bias_portion",
        ),
        (
            "timestep_bias_strategy = \"range\"\ntimestep_bias_end = 2000",
            "optim.timestep_bias_end",
        ),
        (
            "timestep_bias_strategy = \"sooner\"",
            "timestep_bias_strategy",
        ),
        ("noise_offset = -0.1", "optim.noise_offset"),
    ] {
        let err = TrainConfig::from_toml(&with(extra), Path::new("bad.toml"))
            .expect_err(key)
            .to_string();
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "{key}: {err}"
        );
    }
}

/// `[text_encoder] tokens = "words"` fine-tuning a bytes model (the demo prior's second phase): the vocabulary
/// comes from the training prompts and is saved; the byte rows of the token embedding are the loaded model's and
/// the word rows are new.
#[test]
fn words_recipe_extends_a_bytes_model_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("bytes");
    let text = recipe(&first, "").replace("max_tokens = 16", "max_tokens = 16\ntrain = true");
    let mut c = config(&text);
    c.steps = 1;
    run_to_end(c);
    let second = dir.path().join("words");
    let text = recipe(&second, "")
        .replace(
            "max_tokens = 16",
            "max_tokens = 16\ntrain = true\ntokens = \"words\"\nmin_word_count = 1",
        )
        .replace(
            "cross_attention_dim = 16",
            &format!(
                "cross_attention_dim = 16\ninit_from = \"{}\"",
                first.join("model").display()
            ),
        );
    let mut c = config(&text);
    c.steps = 1;
    c.optim.lr = 1e-12; // one step that barely moves the weights
    c.optim.ema_decay = 0.0;
    run_to_end(c);
    let load = |d: &Path| {
        candle_core::safetensors::load(d.join("model/text_encoder/model.safetensors"), &Device::Cpu)
            .unwrap()
            .remove("embeddings.token_embedding.weight")
            .unwrap()
    };
    let (old, new) = (load(&first), load(&second));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(second.join("model/text_encoder/config.json")).unwrap(),
    )
    .unwrap();
    let words = cfg["words"]
        .as_array()
        .expect("the saved config lists its words");
    assert!(words.iter().any(|w| w == "push"), "{words:?}");
    assert_eq!(old.dims()[0], 259);
    assert_eq!(new.dims()[0], 259 + words.len());
    let d = max_abs_diff(&old, &new.narrow(0, 0, 259).unwrap());
    assert!(d < 1e-6, "byte rows changed by {d}");
    // The word rows are a fresh initialisation, not copies of byte rows.
    let fresh = new.narrow(0, 259, words.len()).unwrap();
    assert!(max_abs_diff(&fresh, &fresh.zeros_like().unwrap()) > 1e-3);
}

/// `[optim] noise_offset`: zero leaves training bit-identical to a recipe without the key (no extra random draws),
/// a positive offset changes the noise and so the loss.
#[test]
fn noise_offset_changes_the_noise_and_zero_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first_loss = |extra: &str| {
        let text = recipe(dir.path(), "")
            .replace("warmup_steps = 2", &format!("warmup_steps = 2\n{extra}"));
        let mut t = Trainer::new(config(&text), &Device::Cpu).unwrap();
        t.train_step().unwrap().loss
    };
    let plain = first_loss("");
    assert_eq!(plain, first_loss("noise_offset = 0.0"));
    let offset = first_loss("noise_offset = 0.5");
    assert!((offset - plain).abs() > 1e-6 * plain, "{offset} vs {plain}");
}

/// `data.first_frame = "target_far"`: the first-frame channel shows the target camera's frame farthest from the
/// clip (a still of the look with the scene elsewhere), not the condition camera's frame at the clip's start;
/// `target_far_mirrored` the same still mirrored left-right; an unknown value is refused naming the key.
#[test]
fn first_frame_from_the_far_end_of_the_target_episode() {
    use vadapt::train::data::{ClipRef, ClipSet};
    let dir = tempfile::tempdir().unwrap();
    let plain = recipe(dir.path(), "");
    let far = plain.replace(
        "condition_key = \"observation.images.real\"",
        "condition_key = \"observation.images.real\"\nfirst_frame = \"target_far\"",
    );
    let (a, b) = (
        ClipSet::load(&config(&plain)).unwrap(),
        ClipSet::load(&config(&far)).unwrap(),
    );
    let ep = &b.train[0];
    let last = ep.target.len() - 1;
    let span = 3 * 2 + 1; // 4 frames, stride 2
    let early = ClipRef {
        episode: 0,
        start: 0,
    };
    let late = ClipRef {
        episode: 0,
        start: last + 1 - span,
    };
    assert_eq!(*a.first_frame_image(early, false), a.train[0].condition[0]);
    assert_eq!(*b.first_frame_image(early, false), ep.target[last]);
    assert_eq!(*b.first_frame_image(late, false), ep.target[0]);
    assert_ne!(
        ep.target[0], ep.condition[0],
        "target and condition cameras differ"
    );
    let mirrored =
        ClipSet::load(&config(&far.replace("target_far", "target_far_mirrored"))).unwrap();
    assert_eq!(
        *mirrored.first_frame_image(early, false),
        image::imageops::flip_horizontal(&ep.target[last])
    );
    let err = TrainConfig::from_toml(&far.replace("target_far", "sideways"), Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("first_frame"), "{err}");
}
