//! Is the training graph's gradient right at a given size? A random UNet3D shaped like the LanguageTable recipes
//! ([16, 32, 64], attention at the lowest level, edges channel, cross-attention 64) and a trained byte text encoder,
//! batch 2 at two timesteps; for each parameter group (a name prefix) the directional derivative along a random
//! direction from our backward (`loss.backward()` through the fused training kernels) against a central finite
//! difference of the loss. f32 noise puts agreement at 1e-5..1e-2 relative; a wrong backward is off by O(1).
//!
//!   cargo run --release --example train_grad_check -- FRAMES HEIGHT WIDTH PREFIX...
//!   cargo run --release --example train_grad_check -- 8 40 72 unet.conv_in unet.transformer_in unet.mid text_encoder
//!
//! Session 13 (docs/results.md, "Text-conditioned LanguageTable models"): every group of the LanguageTable shape
//! within 1.2e-5..6.1e-3.
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use vadapt::models::text::{ByteEncoderConfig, ByteTextEncoder, TextEncoder};
use vadapt::models::unet_3d::{UNet3DConditionModel, UNet3DConfig};

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 5,
        "usage: train_grad_check FRAMES HEIGHT WIDTH PREFIX... (e.g. 8 40 72 unet.conv_in text_encoder)"
    );
    let (f, h, w): (usize, usize, usize) = (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let cin = 4;
    let cfg: UNet3DConfig = serde_json::from_value(serde_json::json!({
        "_class_name": "UNet3DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [16, 32, 64], "cross_attention_dim": 64,
        "down_block_types": ["DownBlock3D", "DownBlock3D", "CrossAttnDownBlock3D"], "downsample_padding": 1,
        "in_channels": cin, "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
        "norm_num_groups": 8, "out_channels": 3, "sample_size": w,
        "up_block_types": ["CrossAttnUpBlock3D", "UpBlock3D", "UpBlock3D"]
    }))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let unet = UNet3DConditionModel::new(vb.pp("unet"), cfg)?;
    let tcfg: ByteEncoderConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
        "max_position_embeddings": 32, "words": ["red", "board"], "padded_rows": "prompt"
    }))?;
    let text = ByteTextEncoder::new(vb.pp("text_encoder"), &tcfg)?;
    let vars: Vec<(String, Var)> = {
        let d = varmap.data().lock().unwrap();
        let mut v: Vec<_> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for (_, v) in &vars {
        let t = v.as_tensor();
        let n = Tensor::randn(0f32, 0.05, t.shape(), &dev)?;
        v.set(&(t + n)?)?;
    }
    let b = 2;
    let x = Tensor::randn(0f32, 1.0, (b, cin, f, h, w), &dev)?;
    let target = Tensor::randn(0f32, 1.0, (b, 3, f, h, w), &dev)?;
    let ts = Tensor::new(&[10f32, 700.0], &dev)?;
    let loss_fn = || -> anyhow::Result<Tensor> {
        let emb = text.encode(&["red board, a wooden board", "a board here"])?;
        let out = unet.forward(&x, &ts, &emb)?;
        Ok((out - &target)?.sqr()?.mean_all()?)
    };
    let loss = loss_fn()?;
    let grads = loss.backward()?;
    let groups: Vec<String> = args[4..].to_vec();
    for group in &groups {
        let sel: Vec<&(String, Var)> = vars
            .iter()
            .filter(|(k, _)| k.starts_with(group.as_str()))
            .collect();
        let dirs: Vec<Tensor> = sel
            .iter()
            .map(|(_, v)| Tensor::randn(0f32, 1.0, v.as_tensor().shape(), &dev).unwrap())
            .collect();
        let mut analytic = 0f64;
        for ((_, v), d) in sel.iter().zip(&dirs) {
            if let Some(g) = grads.get(v.as_tensor()) {
                analytic += (g * d)?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let eps = 1e-3f64;
        let orig: Vec<Tensor> = sel
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        let at = |s: f64| -> anyhow::Result<f64> {
            for (((_, v), d), o) in sel.iter().zip(&dirs).zip(&orig) {
                v.set(&(o + (d * s)?)?)?;
            }
            Ok(loss_fn()?.to_scalar::<f32>()? as f64)
        };
        let (lp, lm) = (at(eps)?, at(-eps)?);
        at(0.0)?;
        let fd = (lp - lm) / (2.0 * eps);
        println!(
            "{group:28} vars {:3} analytic {analytic:+.6e} fd {fd:+.6e} rel {:.2e}",
            sel.len(),
            (analytic - fd).abs() / fd.abs().max(1e-12)
        );
    }
    Ok(())
}
