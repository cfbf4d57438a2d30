//! `vadapt debug compose --adapter DIR --prior DIR --scheduler-config FILE --inputs IN.safetensors --rule R --lam L
//!  --guidance W --steps N --compose-min-t T --output OUT.safetensors`
//!
//! Fixed interface: inputs use the keys of fixtures/compose/inputs.safetensors (`x_T`, `edge`, `adapter_text`,
//! `adapter_uncond`, `prior_text`, `prior_uncond`); both models get `cat([x_t, edge])`. Writes `x0` and `xs`
//! (every step, `xs[0] = x_T`).

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Tensor};
use vadapt::models::unet_3d::UNet3DConditionModel;
use vadapt::rng::NoiseRng;
use vadapt::sampling::{sample, ComposeSettings, Conditioned, Prior, Strength};
use vadapt::schedulers::SchedulerConfig;

use crate::cli::sample::RuleArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The small task model (diffusers UNet3DConditionModel directory).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The prior (diffusers UNet3DConditionModel directory).
    #[arg(long)]
    pub prior: PathBuf,
    /// diffusers scheduler_config.json (DDPM, DDIM or DPM-Solver++).
    #[arg(long)]
    pub scheduler_config: PathBuf,
    #[arg(long)]
    pub inputs: PathBuf,
    #[arg(long, value_enum, default_value = "composed")]
    pub rule: RuleArg,
    /// Prior strength λ.
    #[arg(long, default_value_t = 0.4)]
    pub lam: f32,
    /// Guidance weight w.
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f32,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// The prior is used for t >= this.
    #[arg(long, default_value_t = 100)]
    pub compose_min_t: usize,
    /// Seed of the ancestral noise (DDPM / DDIM with eta > 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub compute: super::forward::ComputeArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device.open()?;
    let dtype = args.compute.dtype.dtype();
    let adapter = UNet3DConditionModel::load_with_dtype(&args.adapter, &device, dtype)?;
    let prior = UNet3DConditionModel::load_with_dtype(&args.prior, &device, dtype)?;
    let mut scheduler = SchedulerConfig::from_file(&args.scheduler_config)?.build()?;
    scheduler.set_timesteps(args.steps)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)
        .with_context(|| format!("reading {}", args.inputs.display()))?;
    let get = |k: &str| -> anyhow::Result<Tensor> {
        Ok(inputs
            .get(k)
            .with_context(|| format!("{}: missing tensor {k:?}", args.inputs.display()))?
            .to_dtype(DType::F32)?)
    };
    let edge = get("edge")?;
    let small = Conditioned {
        model: &adapter,
        channels: Some(edge.clone()),
        text: get("adapter_text")?,
        uncond: get("adapter_uncond")?,
        schedule: None,
    };
    let priors = [Prior {
        input: Conditioned {
            model: &prior,
            channels: Some(edge),
            text: get("prior_text")?,
            uncond: get("prior_uncond")?,
            schedule: None,
        },
        strength: Strength::Constant(args.lam),
    }];
    let settings = ComposeSettings {
        rule: args.rule.into(),
        guidance: args.guidance,
        compose_min_t: args.compose_min_t,
    };
    let traj = sample(
        &small,
        &priors,
        scheduler.as_mut(),
        get("x_T")?,
        &settings,
        &mut NoiseRng::new(args.seed),
        true,
    )?;
    let xs = Tensor::stack(&traj.xs, 0)?;
    super::forward::write_tensors(&args.output, &[("x0", traj.x0), ("xs", xs)])
}
