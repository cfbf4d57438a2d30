//! `vadapt debug latent --fixtures tests/fixtures/parity --output OUT.safetensors [--device D --dtype T]`
//!
//! The latent prior's frozen pieces on the parity fixtures' inputs, for checks outside the test suite (the GPU check
//! runs them on CUDA and compares with the fixtures' diffusers / transformers outputs): writes `vae_latents_mean`
//! (AutoencoderKL encode of `video`, vae_io.safetensors), `vae_decoded` (decode of `z`) and
//! `clip_last_hidden_state_quick_gelu` (CLIP text encoder of t2v/text_encoder on clip_io.safetensors' `input_ids`),
//! all F32. The text encoder runs in F32 whatever `--dtype` (as the pipelines run it).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Tensor;
use vadapt::models::text::ClipText;
use vadapt::models::vae::AutoencoderKL;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The parity fixture folder (t2v/vae, t2v/text_encoder, vae_io.safetensors, clip_io.safetensors).
    #[arg(long, default_value = "tests/fixtures/parity")]
    pub fixtures: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub compute: super::forward::ComputeArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device.open()?;
    let load = |file: &str| {
        let p = args.fixtures.join(file);
        candle_core::safetensors::load(&p, &device)
            .with_context(|| format!("reading {}", p.display()))
    };
    let get = |io: &std::collections::HashMap<String, Tensor>, k: &str, file: &str| {
        io.get(k)
            .cloned()
            .with_context(|| format!("{file}: missing tensor {k:?}"))
    };
    let vae_io = load("vae_io.safetensors")?;
    let vae = AutoencoderKL::load_with_dtype(
        &args.fixtures.join("t2v/vae"),
        &device,
        args.compute.dtype.dtype(),
    )?;
    let mean = vae.encode(&get(&vae_io, "video", "vae_io.safetensors")?)?;
    let decoded = vae.decode(&get(&vae_io, "z", "vae_io.safetensors")?)?;
    let clip_io = load("clip_io.safetensors")?;
    let clip = ClipText::load(&args.fixtures.join("t2v/text_encoder"), &device)?;
    let hidden = clip.encode_ids(&get(&clip_io, "input_ids", "clip_io.safetensors")?)?;
    super::forward::write_tensors(
        &args.output,
        &[
            ("vae_latents_mean", mean),
            ("vae_decoded", decoded),
            ("clip_last_hidden_state_quick_gelu", hidden),
        ],
    )
}
