//! `vadapt debug forward --model DIR --inputs IN.safetensors --output OUT.safetensors`
//!
//! Fixed interface: reads `sample` (B,C,F,H,W), `timestep` (B,) and `encoder_hidden_states` (B,L,D) and writes
//! `output` (F32), the key names of fixtures/unet3d/*/io.safetensors.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use vadapt::compute::{DeviceSpec, Precision};
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
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `--device` / `--dtype` of the debug commands (the GPU check runs the fixtures on CUDA in F32, F16 and BF16).
#[derive(Debug, clap::Args)]
pub struct ComputeArgs {
    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision of the weights and compute: f32, f16 or bf16 (CUDA only); outputs are written in F32.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device.open()?;
    let model =
        UNet3DConditionModel::load_with_dtype(&args.model, &device, args.compute.dtype.dtype())?;
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
        .map(|(k, t)| {
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            Ok((k.to_string(), t.contiguous()?))
        })
        .collect::<anyhow::Result<_>>()?;
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
