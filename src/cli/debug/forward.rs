//! `vadapt debug forward --model DIR --inputs IN.safetensors --output OUT.safetensors`
//!
//! Fixed interface: reads `sample` (B,C,F,H,W), `timestep` (B,) and `encoder_hidden_states` (B,L,D) and writes
//! `output` (F32), the key names of fixtures/unet3d/*/io.safetensors.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use vadapt::models::unet_3d::UNet3DConditionModel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// diffusers UNet3DConditionModel directory (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors with `sample`, `timestep`, `encoder_hidden_states`.
    #[arg(long)]
    pub inputs: PathBuf,
    /// safetensors to write with `output`.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let model = UNet3DConditionModel::load(&args.model, &device)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    let get = |k: &str| {
        inputs
            .get(k)
            .with_context(|| format!("{}: missing tensor {k:?}", args.inputs.display()))
            .and_then(|t| Ok(t.to_dtype(DType::F32)?))
    };
    let output = model.forward(
        &get("sample")?,
        &get("timestep")?,
        &get("encoder_hidden_states")?,
    )?;
    write_tensors(&args.output, &[("output", output)])
}

/// Write F32 tensors to a safetensors file atomically (temp name, then rename).
pub fn write_tensors(path: &std::path::Path, tensors: &[(&str, Tensor)]) -> anyhow::Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.to_string(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<anyhow::Result<_>>()?;
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
