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
