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
