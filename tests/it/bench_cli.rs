//! `vadapt bench --unet-config`: a random-weight UNet of any config (how a real-size prior is timed), and the
//! device / dtype flags.

use crate::common::{fixture, vadapt, vadapt_fails};

#[test]
fn bench_unet_config_counts_the_parameters_of_the_config() {
    let dir = fixture("unet3d/tiny");
    let out = vadapt(&[
        "bench",
        "--unet-config",
        dir.join("config.json").to_str().unwrap(),
        "--frames",
        "2",
        "--latent",
        "8x8",
        "--reps",
        "1",
        "--threads",
        "1",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The random model asks for exactly the tensors a trained checkpoint of that config holds.
    let weights = candle_core::safetensors::load(
        dir.join("diffusion_pytorch_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want: usize = weights.values().map(|t| t.elem_count()).sum();
    assert_eq!(report["parameters"].as_u64(), Some(want as u64), "{out}");
    assert!(report["seconds_per_guided_step"].as_f64().unwrap() > 0.0);
    assert!(report["gflop"].as_f64().unwrap() > 0.0);
    assert_eq!(report["dtype"], "F32");
}

#[test]
fn bench_refuses_devices_this_build_cannot_use() {
    let cfg = fixture("unet3d/tiny/config.json");
    if !cfg!(feature = "cuda") {
        let err = vadapt_fails(&[
            "bench",
            "--unet-config",
            cfg.to_str().unwrap(),
            "--device",
            "cuda",
        ]);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let err = vadapt_fails(&["bench", "--device", "tpu"]);
    assert!(err.contains("cuda:N"), "{err}");
    // The demo benchmarks and the peer are CPU F32 only.
    let err = vadapt_fails(&["bench", "--dtype", "f16"]);
    assert!(err.contains("--unet-config"), "{err}");
}

/// `--augment`: each target of a pipeline runs alone through `vadapt augment` on the first episodes, and the report
/// has its frames, time and rates.
#[test]
fn bench_augment_reports_each_target() {
    let repo = crate::common::repo();
    let out = vadapt(&[
        "bench",
        "--small",
        repo.join("models/demo/edge_to_sim").to_str().unwrap(),
        "--prior",
        repo.join("models/demo/prior").to_str().unwrap(),
        "--steps",
        "1",
        "--frames",
        "8",
        "--reps",
        "1",
        "--video",
        "/nonexistent.mp4",
        "--augment",
        repo.join("pipelines/example.toml").to_str().unwrap(),
        "--augment-input",
        repo.join("datasets/sample/lerobot").to_str().unwrap(),
        "--augment-episodes",
        "1",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let targets = report["augment"]["targets"].as_object().unwrap();
    assert_eq!(
        targets.keys().collect::<Vec<_>>(),
        ["edge_sim", "composed"],
        "every target of pipelines/example.toml, in its order"
    );
    for (name, t) in targets {
        assert_eq!(t["episodes"], 1, "{name}");
        assert_eq!(t["frames"], 24, "{name}: the sample's first episode");
        assert!(t["frames_per_s"].as_f64().unwrap() > 0.0, "{name}");
    }
}

/// A tiny recipe for `bench --train`: edge conditioning, text, offset noise and timestep bias (every draw of the
/// trainer's batch), and a dataset and `init_from` that do not exist (the bench synthesizes its batches and starts
/// from the seeded initialisation).
fn tiny_train_recipe(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        r#"
output = "/nonexistent/out"
steps = 50
seed = 3
[data]
dataset = "/nonexistent/dataset"
target_key = "observation.images.sim"
[model]
init_from = "/nonexistent/model"
frames = 4
height = 8
width = 16
conditioning = ["edges"]
block_out_channels = [8, 16]
attention_levels = [false, true]
cross_attention_dim = 16
prediction_type = "v_prediction"
[text_encoder]
max_tokens = 8
[optim]
batch_size = 2
lr = 1e-3
warmup_steps = 2
grad_clip = 1.0
noise_offset = 0.1
timestep_bias_strategy = "later"
timestep_bias_multiplier = 2.0
"#,
    )
    .unwrap();
    p
}

fn train_bench(recipe: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--train",
        recipe.to_str().unwrap(),
        "--train-steps",
        "2",
        "--train-warmup",
        "1",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = vadapt(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `--train`: warm-up + timed steps, each with a positive time and a finite loss, the learning rate of the recipe's
/// warmup, and the same losses on a second run (seeded batches and weights).
#[test]
fn bench_train_times_seeded_steps_of_a_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_train_recipe(dir.path());
    let report = train_bench(&recipe, &[]);
    let ours = &report["ours"];
    let times = f64s(&ours["step_seconds"]);
    let losses = f64s(&ours["losses"]);
    assert_eq!(times.len(), 3, "1 warm-up + 2 timed steps: {report}");
    assert_eq!(losses.len(), 3);
    assert!(times.iter().all(|&t| t > 0.0), "{times:?}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    for k in ["seconds_per_step", "forward_s", "backward_s", "update_s"] {
        assert!(ours[k].as_f64().unwrap() > 0.0, "{k}: {report}");
    }
    assert!(ours["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // lr 1e-3 with 2 warm-up steps: 5e-4, 1e-3, then the cosine over the recipe's 50 steps starts at 1e-3.
    let lrs = f64s(&ours["lrs"]);
    let want = [5e-4, 1e-3, 1e-3];
    assert!(
        lrs.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
        "{lrs:?}"
    );
    assert_eq!(report["model"]["text_tokens"], 8);
    assert!(report.get("peer").is_none(), "no peer without --peer");
    let again = train_bench(&recipe, &[]);
    assert_eq!(
        again["ours"]["losses"], ours["losses"],
        "the same seeded steps give the same losses"
    );
}

/// `--train --peer`: diffusers runs the same steps from the same weights on the same batches; the two loss
/// sequences agree within the bench's stated tolerance (`loss_rtol`, 1e-3 relative).
#[test]
fn bench_train_peer_losses_agree_with_diffusers() {
    let python = std::env::var_os("VADAPT_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::common::repo().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: the training peer needs the Python venv with torch and diffusers; run `bash scripts/setup.sh` (or set VADAPT_PYTHON)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_train_recipe(dir.path());
    let report = train_bench(&recipe, &["--peer", "--python", python.to_str().unwrap()]);
    let ours = f64s(&report["ours"]["losses"]);
    let theirs = f64s(&report["peer"]["losses"]);
    assert_eq!(ours.len(), 3);
    assert_eq!(theirs.len(), 3, "{report}");
    assert_eq!(report["loss_rtol"].as_f64(), Some(1e-3));
    let rel = report["loss_max_rel_diff"].as_f64().unwrap();
    assert!(
        rel <= 1e-3,
        "losses differ by {rel:.2e}: {ours:?} vs {theirs:?}"
    );
    assert_eq!(report["losses_agree"], true);
    // The same learning rates, and the same gradient norm at the first step (same weights, same batch; f32
    // rounding moves it by ~1e-4 on either side: gradients whose true value is ~0, such as those of biases ahead of a
    // GroupNorm, are rounding noise). Later steps start from weights that AdamW's normalised update has moved apart
    // by that noise, so their norms differ by up to a few 1e-3.
    for (a, b) in f64s(&report["ours"]["lrs"])
        .iter()
        .zip(f64s(&report["peer"]["lrs"]))
    {
        assert!((a - b).abs() <= 1e-12 * b, "learning rates {a} vs {b}");
    }
    let (gn, tgn) = (
        f64s(&report["ours"]["grad_norms"]),
        f64s(&report["peer"]["grad_norms"]),
    );
    assert!(
        (gn[0] - tgn[0]).abs() <= 1e-3 * tgn[0],
        "first grad norm {gn:?} vs {tgn:?}"
    );
    for (a, b) in gn.iter().zip(&tgn) {
        assert!(
            (a - b).abs() <= 5e-2 * b.abs(),
            "grad norms {gn:?} vs {tgn:?}"
        );
    }
    assert!(report["speedup_vs_peer"].as_f64().unwrap() > 0.0);
    assert_eq!(report["peer"]["parameters"], report["model"]["parameters"]);
}
