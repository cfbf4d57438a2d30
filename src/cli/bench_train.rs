//! `vadapt bench --train [RECIPE]`: training steps per second of a recipe's UNet, and with `--peer` the same steps
//! in PyTorch/diffusers (`benches/peer/diffusers_train.py`) in a child process: the speed ratio and the two loss
//! sequences.
//!
//! No dataset is read: the recipe's `[model]` is built from the seeded initialisation (`init_from` and `[data]` are
//! ignored) and every step gets a seeded synthetic batch of the recipe's batch size (clean clips and conditioning
//! uniform in [-1, 1], fixed random text embeddings of `text_encoder.max_tokens` × `cross_attention_dim`), noised by
//! the trainer's own code (`train::step::Draws`: offset noise, timestep bias, text and conditioning dropout). The
//! batches are made before the timed steps and both sides read the same tensors.
//!
//! A step is `train::step::step_on_batch`, the trainer's: forward, MSE against the recipe's prediction target,
//! backward, global-norm clipping, AdamW at the scheduled learning rate, EMA. The text encoder is not part of the
//! step (diffusers' UNet3DConditionModel has none; the recipe's encoder would train too in `vadapt train`), nor are
//! the clip cut, the noising or a latent recipe's VAE encode.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use vadapt::models::unet_3d::{UNet3DConditionModel, UNet3DConfig};
use vadapt::rng::{derive_seed, NoiseRng};
use vadapt::schedulers::{NoiseSchedule, SchedulerConfig};
use vadapt::train::config::TimestepDraw;
use vadapt::train::init::seeded_var_builder;
use vadapt::train::optim::{AdamW, Ema, Params};
use vadapt::train::step::{new_optimizer, step_on_batch, Batch, Draws};
use vadapt::train::{StepStats, TrainConfig};

use super::bench::{cpu_model, peak_rss_mib, run_peer_script, tempfile_dir, Args};

/// The largest relative difference of the two loss sequences that still counts as agreement. Both sides start
/// from the same weights and see the same batches; what separates them is float rounding (summation order in
/// GEMM, convolution, GroupNorm and softmax, ~1e-6 relative per step), which AdamW's normalised update carries
/// into the weights of the next step. Measured on the demo prior's recipe over 12 steps: see docs/performance.md.
pub const LOSS_RTOL: f64 = 1e-3;

const PREFIX: &str = "unet.";

/// The recipe's model with its optimizer, and the batches of every step.
struct Setup {
    config: TrainConfig,
    unet_config: Value,
    unet: UNet3DConditionModel,
    params: Params,
    opt: AdamW,
    ema: Option<Ema>,
    batches: Vec<Batch>,
    /// Tokens per text embedding.
    tokens: usize,
}

fn setup(recipe: &Path, steps: usize, dev: &Device) -> anyhow::Result<Setup> {
    let config = TrainConfig::from_file_without_data(recipe)?;
    let vae = config.vae_config(recipe)?;
    let unet_config = config.unet_config_json(vae.as_ref().map(|(_, c)| c));
    let parsed: UNet3DConfig = serde_json::from_value(unet_config.clone())?;
    let (vb, varmap) = seeded_var_builder(config.seed, dev);
    let unet = UNet3DConditionModel::new(vb.pp("unet"), parsed.clone())?;
    let params: Params = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (opt, ema) = new_optimizer(&params, &config)?;
    let sched: SchedulerConfig = serde_json::from_value(config.scheduler_config_json())?;
    let schedule = NoiseSchedule::from_config(&sched);
    let draw = TimestepDraw::new(&config.optim, config.scheduler.num_train_timesteps);
    let m = &config.model;
    let s = vae.as_ref().map_or(1, |(_, c)| c.downscale());
    let (b, f, h, w) = (config.optim.batch_size, m.frames, m.height / s, m.width / s);
    let cond: usize = m.conditioning.iter().map(|c| c.channels()).sum();
    let tokens = config.text_encoder.as_ref().map_or(1, |t| t.max_tokens);
    // One fixed embedding per batch slot, as if each clip had its own prompt; a dropped text is zeros (the
    // unconditional embedding of an encoder that stores none).
    let text = NoiseRng::new(derive_seed(config.seed, 0, "bench-train-text", 0))
        .randn((b, tokens, m.cross_attention_dim), dev)?;
    let mut batches = Vec::with_capacity(steps);
    for step in 0..steps {
        let mut rng = NoiseRng::new(derive_seed(config.seed, step as u64, "bench-train", 0));
        let x0 = uniform(&mut rng, (b, parsed.out_channels, f, h, w), dev)?;
        let channels = match cond {
            0 => None,
            k => Some(uniform(&mut rng, (b, k, f, h, w), dev)?),
        };
        let draws = Draws::draw(&x0, &config, &draw, &mut rng)?;
        let keep: Vec<f32> = draws.keep_text.iter().map(|&k| k as u8 as f32).collect();
        let text = text.broadcast_mul(&Tensor::from_vec(keep, (b, 1, 1), dev)?)?;
        batches.push(draws.into_batch(
            x0,
            channels.as_ref(),
            text,
            &schedule,
            m.prediction_type,
        )?);
    }
    Ok(Setup {
        config,
        unet_config,
        unet,
        params,
        opt,
        ema,
        batches,
        tokens,
    })
}

/// Values uniform in [-1, 1] (the data range of clips and conditioning).
fn uniform(
    rng: &mut NoiseRng,
    shape: (usize, usize, usize, usize, usize),
    dev: &Device,
) -> anyhow::Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3 * shape.4;
    let v: Vec<f32> = (0..n).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// The initial weights as a diffusers `unet/` directory, the batches and the optimiser settings, for the peer.
fn write_peer_inputs(s: &Setup, dir: &Path) -> anyhow::Result<()> {
    let unet = dir.join("unet");
    std::fs::create_dir_all(&unet).with_context(|| format!("creating {}", unet.display()))?;
    vadapt::io::fs::write_atomic(
        &unet.join("config.json"),
        serde_json::to_string_pretty(&s.unet_config)?.as_bytes(),
    )?;
    let weights: HashMap<String, Tensor> = s
        .params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(PREFIX)
                .map(|n| (n.to_string(), v.as_tensor().detach()))
        })
        .collect();
    candle_core::safetensors::save(&weights, unet.join("diffusion_pytorch_model.safetensors"))?;
    let mut tensors = HashMap::new();
    for (i, b) in s.batches.iter().enumerate() {
        tensors.insert(format!("{i}.input"), b.input.clone());
        tensors.insert(format!("{i}.timesteps"), b.timesteps.clone());
        tensors.insert(format!("{i}.text"), b.text.clone());
        tensors.insert(format!("{i}.target"), b.target.clone());
    }
    candle_core::safetensors::save(&tensors, dir.join("batches.safetensors"))?;
    let o = &s.config.optim;
    let settings = json!({
        "steps": s.batches.len(),
        "total_steps": s.config.steps,
        "lr": o.lr, "warmup_steps": o.warmup_steps, "min_lr_ratio": o.min_lr_ratio,
        "beta1": o.beta1, "beta2": o.beta2, "eps": o.eps, "weight_decay": o.weight_decay,
        "grad_clip": o.grad_clip, "ema_decay": o.ema_decay,
    });
    vadapt::io::fs::write_atomic(
        &dir.join("settings.json"),
        serde_json::to_string_pretty(&settings)?.as_bytes(),
    )?;
    Ok(())
}

/// Our steps: the stats and the wall time of each.
fn run_ours(s: &mut Setup) -> anyhow::Result<Vec<(StepStats, f64)>> {
    let mut out = Vec::with_capacity(s.batches.len());
    for (i, batch) in s.batches.iter().enumerate() {
        let t0 = Instant::now();
        let stats = step_on_batch(
            &s.unet,
            batch,
            i,
            &s.config,
            &s.params,
            &mut s.opt,
            s.ema.as_mut(),
        )?;
        out.push((stats, t0.elapsed().as_secs_f64()));
    }
    Ok(out)
}

fn run_peer(args: &Args, dir: &Path) -> anyhow::Result<Value> {
    let mut peer_args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, file) in [
        ("--unet", "unet"),
        ("--batches", "batches.safetensors"),
        ("--settings", "settings.json"),
    ] {
        peer_args.extend([flag.into(), dir.join(file).into()]);
    }
    peer_args.extend(["--threads".into(), args.threads.to_string().into()]);
    run_peer_script(&args.python, "diffusers_train.py", &peer_args)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn f64s(v: &Value, key: &str) -> anyhow::Result<Vec<f64>> {
    v[key]
        .as_array()
        .with_context(|| format!("peer report has no {key}"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .with_context(|| format!("peer {key}: {x} is not a number"))
        })
        .collect()
}

/// The largest |a − b| / |b| over the pairs.
fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

/// The `--train` report (also printed as lines on stderr).
pub fn run(args: &Args, recipe: &Path) -> anyhow::Result<Value> {
    if args.train_steps == 0 {
        bail!("--train-steps must be at least 1");
    }
    let dev = Device::Cpu;
    let warm = args.train_warmup;
    let total = warm + args.train_steps;
    let mut s = setup(recipe, total, &dev)?;
    let n_params: usize = s.params.values().map(|v| v.elem_count()).sum();
    let m = s.config.model.clone();
    eprintln!(
        "train bench: {} — UNet {:?}, {} parameters, batch {} of {} frames at {}x{}, {} text tokens; {warm} warm-up + {} timed steps, {} threads (text encoder not included)",
        recipe.display(),
        m.block_out_channels,
        n_params,
        s.config.optim.batch_size,
        m.frames,
        m.height,
        m.width,
        s.tokens,
        args.train_steps,
        rayon::current_num_threads()
    );
    let peer_dir = if args.peer {
        let dir = match &args.keep {
            Some(d) => d.clone(),
            None => tempfile_dir()?,
        };
        write_peer_inputs(&s, &dir)?;
        Some(dir)
    } else {
        None
    };
    let ours = run_ours(&mut s)?;
    let rss = peak_rss_mib();
    let timed = &ours[warm..];
    let col = |f: &dyn Fn(&(StepStats, f64)) -> f64| timed.iter().map(f).collect::<Vec<_>>();
    let our_s = median(&col(&|(_, w)| *w));
    let split = [0, 1, 2].map(|i| median(&col(&|(st, _)| st.seconds[i])));
    let losses: Vec<f64> = ours.iter().map(|(st, _)| st.loss).collect();
    eprintln!(
        "vadapt: {our_s:.3} s/step median (forward {:.3}, backward {:.3}, update {:.3}), peak RSS {rss:.0} MiB",
        split[0], split[1], split[2]
    );
    eprintln!("vadapt losses: {losses:.5?}");
    let mut report = json!({
        "machine": {"threads": rayon::current_num_threads(), "cpu": cpu_model()},
        "recipe": recipe.display().to_string(),
        "model": {
            "block_out_channels": m.block_out_channels, "layers_per_block": m.layers_per_block,
            "frames": m.frames, "height": m.height, "width": m.width,
            "cross_attention_dim": m.cross_attention_dim, "text_tokens": s.tokens,
            "prediction_type": m.prediction_type, "parameters": n_params,
        },
        "batch_size": s.config.optim.batch_size,
        "warmup_steps": warm,
        "timed_steps": args.train_steps,
        "measured": "forward + MSE + backward + grad clip + AdamW + EMA on pre-made batches; no text encoder, data or noising",
        "ours": {
            "seconds_per_step": our_s,
            "steps_per_s": 1.0 / our_s,
            "forward_s": split[0], "backward_s": split[1], "update_s": split[2],
            "step_seconds": ours.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            "losses": losses,
            "grad_norms": ours.iter().map(|(st, _)| st.grad_norm).collect::<Vec<_>>(),
            "lrs": ours.iter().map(|(st, _)| st.lr).collect::<Vec<_>>(),
            "peak_rss_mib": rss,
        },
    });
    if let Some(dir) = peer_dir {
        let peer = run_peer(args, &dir)?;
        if peer["parameters"].as_u64() != Some(n_params as u64) {
            bail!(
                "the peer's UNet has {} parameters, ours {n_params}: the weights did not load as the same model",
                peer["parameters"]
            );
        }
        let their_losses = f64s(&peer, "losses")?;
        let their_s = median(&f64s(&peer, "seconds")?[warm..]);
        let their_split = ["forward", "backward", "update"].map(|k| {
            f64s(&peer, k)
                .map(|v| median(&v[warm..]))
                .unwrap_or(f64::NAN)
        });
        let rel = max_rel_diff(&losses, &their_losses);
        let ratio = their_s / our_s;
        eprintln!(
            "diffusers: {their_s:.3} s/step median (forward {:.3}, backward {:.3}, update {:.3}), torch {} with {} threads",
            their_split[0], their_split[1], their_split[2], peer["torch"], peer["threads"]
        );
        eprintln!("diffusers losses: {their_losses:.5?}");
        eprintln!(
            "ratio diffusers / vadapt: {ratio:.2} ({}); largest relative loss difference {rel:.2e} over {total} steps ({} {LOSS_RTOL:e})",
            if ratio > 1.0 { "vadapt faster" } else { "vadapt slower" },
            if rel <= LOSS_RTOL { "within" } else { "OUTSIDE" }
        );
        report["peer"] = peer;
        report["peer"]["seconds_per_step"] = json!(their_s);
        report["peer"]["forward_s"] = json!(their_split[0]);
        report["peer"]["backward_s"] = json!(their_split[1]);
        report["peer"]["update_s"] = json!(their_split[2]);
        report["speedup_vs_peer"] = json!(ratio);
        report["loss_max_rel_diff"] = json!(rel);
        report["loss_rtol"] = json!(LOSS_RTOL);
        report["losses_agree"] = json!(rel <= LOSS_RTOL);
        if args.keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(report)
}
