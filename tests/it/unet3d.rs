//! UNet3DConditionModel against diffusers (tests/fixtures/unet3d), plus configs the fixtures do not cover.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vadapt::models::unet_3d::{UNet3DConditionModel, UNet3DConfig};

use crate::common::{fixture, load_f32, max_abs_diff, vadapt};

const TOL: f32 = 1e-4; // fixtures/unet3d/*/README.md

fn load_io(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("unet3d/{name}/io.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn parity(name: &str) {
    let model =
        UNet3DConditionModel::load(&fixture(&format!("unet3d/{name}")), &Device::Cpu).unwrap();
    let io = load_io(name);
    let out = model
        .forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"])
        .unwrap();
    assert_eq!(out.dims(), io["output"].dims());
    let d = max_abs_diff(&flat(&out), &flat(&io["output"]));
    let d64 = max_abs_diff(&flat(&out), &flat(&io["output_fp64_reference"]));
    eprintln!("{name}: max abs diff vs diffusers f32 {d:.3e}, vs f64 reference {d64:.3e}");
    assert!(d <= TOL, "{name}: max abs diff {d} > {TOL}");
}

#[test]
fn tiny_matches_diffusers() {
    parity("tiny");
}

#[test]
fn modelscope_mini_matches_diffusers() {
    parity("modelscope_mini");
}

#[test]
fn modelscope_mini_intermediates_match() {
    let dir = fixture("unet3d/modelscope_mini");
    let model = UNet3DConditionModel::load(&dir, &Device::Cpu).unwrap();
    let io = load_io("modelscope_mini");
    let want = load_f32(&dir.join("intermediates.safetensors"));
    let (_, inter) = model
        .forward_with_intermediates(&io["sample"], &io["timestep"], &io["encoder_hidden_states"])
        .unwrap();
    for (k, (shape, vals)) in &want {
        let got = inter
            .get(k)
            .unwrap_or_else(|| panic!("no intermediate {k}"));
        assert_eq!(got.dims(), shape.as_slice(), "{k} shape");
        let d = max_abs_diff(&flat(got), vals);
        assert!(d <= TOL, "{k}: max abs diff {d}");
    }
}

/// `vadapt --matmul-precision PRECISION debug forward` on the fixture `name`'s model and inputs, writing into
/// `dir`: the output.
fn cli_forward(name: &str, precision: &str, dir: &std::path::Path) -> Vec<f32> {
    let model = fixture(&format!("unet3d/{name}"));
    let inputs = fixture(&format!("unet3d/{name}/io.safetensors"));
    let out = dir.join(format!("{name}_{precision}.safetensors"));
    vadapt(&[
        "--matmul-precision",
        precision,
        "debug",
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    load_f32(&out)["output"].1.clone()
}

#[test]
fn debug_forward_cli_matches_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let got = cli_forward("tiny", "highest", dir.path());
    let want = load_f32(&fixture("unet3d/tiny/io.safetensors"));
    assert!(max_abs_diff(&got, &want["output"].1) <= TOL);
}

fn config(json: &str) -> UNet3DConfig {
    let cfg: UNet3DConfig = serde_json::from_str(json).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn random_model(cfg: UNet3DConfig, seed: u64) -> UNet3DConditionModel {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = UNet3DConditionModel::new(vb, cfg).unwrap();
    // VarMap initialises weights (zeros/ones for some); overwrite every variable with seeded noise so every path
    // carries signal.
    let mut rng = seed;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let scale = if name.ends_with("weight") && var.rank() == 1 {
            0.05
        } else {
            0.1
        };
        let noise = Tensor::randn(0f32, scale, var.shape(), &Device::Cpu).unwrap();
        let base = if name.contains("norm") && name.ends_with("weight") {
            1.0
        } else {
            0.0
        };
        var.set(&(noise + base).unwrap()).unwrap();
    }
    let _ = rng;
    model
}

const THREE_LEVEL: &str = r#"{"in_channels": 5, "out_channels": 3, "block_out_channels": [16, 32, 32],
  "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnDownBlock3D"],
  "up_block_types": ["CrossAttnUpBlock3D", "UpBlock3D", "CrossAttnUpBlock3D"],
  "layers_per_block": 2, "norm_num_groups": 4, "cross_attention_dim": 12, "attention_head_dim": [8, 16, 8]}"#;

#[test]
fn other_layouts_batches_and_frame_counts() {
    let model = random_model(config(THREE_LEVEL), 1);
    for (b, f, h, w) in [
        (3usize, 5usize, 12usize, 20usize),
        (1, 1, 8, 8),
        (2, 3, 10, 6),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, 5, f, h, w), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(
            (0..b).map(|i| (100 * i + 7) as f32).collect::<Vec<_>>(),
            b,
            &Device::Cpu,
        )
        .unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (b, 4, 12), &Device::Cpu).unwrap();
        let out = model.forward(&x, &t, &ctx).unwrap();
        assert_eq!(out.dims(), &[b, 3, f, h, w]);
        let v = flat(&out);
        assert!(v.iter().all(|x| x.is_finite()));
        // Batched == per-sample.
        for i in 0..b {
            let one = model
                .forward(
                    &x.narrow(0, i, 1).unwrap(),
                    &t.narrow(0, i, 1).unwrap(),
                    &ctx.narrow(0, i, 1).unwrap(),
                )
                .unwrap();
            let d = max_abs_diff(&flat(&one), &flat(&out.narrow(0, i, 1).unwrap()));
            assert!(
                d <= 1e-5,
                "batch {b} f {f} {h}x{w}: element {i} differs by {d}"
            );
        }
    }
}

#[test]
fn frames_interact_through_temporal_layers() {
    // Changing frame 0 must change the output at frame 2 (temporal conv + temporal attention), and a
    // 1-frame video must still work.
    let model = random_model(config(THREE_LEVEL), 2);
    let x = Tensor::randn(0f32, 1.0, (1, 5, 4, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 4, 12), &Device::Cpu).unwrap();
    let a = model.forward(&x, &t, &ctx).unwrap();
    let bump = Tensor::zeros((1, 5, 4, 8, 8), DType::F32, &Device::Cpu)
        .unwrap()
        .slice_assign(
            &[0..1, 0..5, 0..1, 0..8, 0..8],
            &Tensor::ones((1, 5, 1, 8, 8), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let b = model.forward(&(x + bump).unwrap(), &t, &ctx).unwrap();
    let d = max_abs_diff(
        &flat(&a.narrow(2, 2, 1).unwrap()),
        &flat(&b.narrow(2, 2, 1).unwrap()),
    );
    assert!(d > 1e-4, "frame 2 did not see frame 0 (diff {d})");
}

#[test]
fn bad_configs_give_clear_errors() {
    let err = |json: &str| {
        serde_json::from_str::<UNet3DConfig>(json)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"num_attention_heads": 8}"#);
    assert!(e.contains("num_attention_heads"), "{e}");
    let e = err(
        r#"{"down_block_types": ["CrossAttnDownBlock3D", "FancyBlock"], "up_block_types": ["UpBlock3D", "UpBlock3D"], "block_out_channels": [32, 64]}"#,
    );
    assert!(e.contains("FancyBlock"), "{e}");
    let e = err(
        r#"{"down_block_types": ["DownBlock3D"], "up_block_types": ["UpBlock3D", "UpBlock3D"], "block_out_channels": [32]}"#,
    );
    assert!(e.contains("up_block_types"), "{e}");
    let e = err(
        r#"{"down_block_types": ["DownBlock3D"], "up_block_types": ["UpBlock3D"], "block_out_channels": [30], "attention_head_dim": 8}"#,
    );
    assert!(e.contains("attention_head_dim"), "{e}");
}

#[test]
fn missing_tensor_and_non_safetensors_are_named() {
    let src = fixture("unet3d/tiny");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    tensors.remove("mid_block.resnets.1.conv2.weight").unwrap();
    candle_core::safetensors::save(
        &tensors,
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let e = UNet3DConditionModel::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mid_block.resnets.1.conv2.weight")
            && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );

    std::fs::write(
        dir.path().join("diffusion_pytorch_model.safetensors"),
        b"\x80\x04pickle",
    )
    .unwrap();
    let e = UNet3DConditionModel::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
}

#[test]
fn f16_and_sharded_weights_load() {
    let src = fixture("unet3d/tiny");
    let io = load_io("tiny");
    let reference = flat(&io["output"]);
    let tensors = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();

    // F16 weights: computed in F32 after conversion; within f16 rounding of the reference.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let f16: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&f16, dir.path().join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let m = UNet3DConditionModel::load(dir.path(), &Device::Cpu).unwrap();
    let out = m
        .forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"])
        .unwrap();
    let d = max_abs_diff(&flat(&out), &reference);
    assert!(d < 2e-2, "f16 weights: diff {d}");

    // Sharded: two files and an index.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (part, file) in [(a, "part-1.safetensors"), (b, "part-2.safetensors")] {
        let sub: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|k| ((*k).clone(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&sub, dir.path().join(file)).unwrap();
        for k in part {
            weight_map.insert((*k).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let m = UNet3DConditionModel::load(dir.path(), &Device::Cpu).unwrap();
    let out = m
        .forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"])
        .unwrap();
    assert!(max_abs_diff(&flat(&out), &reference) <= TOL);
}

/// Computing in F16 (a GPU dtype; candle runs it on CPU too, slowly): the forward runs in the weights' dtype and
/// returns F32, within half-precision rounding of diffusers' F32 output, on both fixtures. BF16 has no CPU matmul in
/// candle: refused at load on CPU, naming the model.
#[test]
fn f16_compute_stays_near_the_f32_reference_and_bf16_on_cpu_is_refused() {
    for name in ["tiny", "modelscope_mini"] {
        let io = load_io(name);
        let reference = flat(&io["output"]);
        let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = UNet3DConditionModel::load_with_dtype(
            &fixture(&format!("unet3d/{name}")),
            &Device::Cpu,
            DType::BF16,
        )
        .err()
        .expect("BF16 on CPU")
        .to_string();
        assert!(err.contains(name) && err.contains("BF16"), "{err}");
        for (dtype, rel) in [(DType::F16, 1e-2)] {
            let m = UNet3DConditionModel::load_with_dtype(
                &fixture(&format!("unet3d/{name}")),
                &Device::Cpu,
                dtype,
            )
            .unwrap();
            assert_eq!(m.dtype(), dtype);
            let out = m
                .forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"])
                .unwrap();
            assert_eq!(out.dtype(), DType::F32, "samplers get F32");
            let d = max_abs_diff(&flat(&out), &reference);
            eprintln!("{name} {dtype:?}: max abs diff {d:.3e} (output scale {scale:.2})");
            assert!(
                d <= rel * scale,
                "{name} {dtype:?}: diff {d} > {rel} x {scale}"
            );
        }
    }
}

/// `--matmul-precision` (the GEMMs in bf16 on AMX). `high` (three bf16 products) within twice the f32 parity
/// tolerance of diffusers (measured 8-9e-5; f32 5e-6). `medium` (one bf16 product) within 2e-2 of the output's
/// scale: twice the F16 bound above, since bf16 keeps 3 fewer significand bits than f16 (measured 1.4-1.5e-2 of the
/// scale, F16 3.8e-3). A CPU without AMX computes in f32 whatever is set, so there all three outputs are the same
/// bits. Through the CLI, one process per precision: the setting is process-wide and the other tests here run in
/// parallel threads.
#[test]
fn matmul_precision_high_and_medium_stay_near_the_f32_reference() {
    let amx = vadapt::models::kernels::bench::has_amx();
    eprintln!("AMX bf16 on this CPU: {amx}");
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny", "modelscope_mini"] {
        let reference = load_f32(&fixture(&format!("unet3d/{name}/io.safetensors")))["output"]
            .1
            .clone();
        let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        let run = |precision: &str| cli_forward(name, precision, dir.path());
        let highest = run("highest");
        for (precision, tol) in [("high", 2.0 * TOL), ("medium", 2e-2 * scale)] {
            let got = run(precision);
            let d = max_abs_diff(&got, &reference);
            eprintln!("{name} {precision}: max abs diff {d:.3e} (output scale {scale:.2}, tolerance {tol:.1e})");
            assert!(
                d <= tol,
                "{name} --matmul-precision {precision}: diff {d} > {tol}"
            );
            if !amx {
                assert_eq!(
                    got, highest,
                    "{name} {precision}: without AMX the GEMMs must stay f32"
                );
            }
        }
    }
}
