//! `vadapt bench`: the numbers issue 8 asks for, measured in one process and printed as JSON.
//!
//! * `matmul`: f32 1024³ GFLOP/s on this machine (the roofline the UNet is compared to);
//! * `unet_forward`: one forward per model at the benchmark shape (the small model batched cond + uncond, as the
//!   sampler calls it), with its FLOP count (`unet_3d::forward_flops`), GFLOP/s and % of the matmul rate;
//! * `compose`: a full composed sampling run (Video Adapter rule, DDIM, small + prior), seconds per run and step;
//! * `peer` (with `--peer`): the same sampling run in diffusers (`benches/peer/diffusers_compose.py`, PyTorch CPU,
//!   same weights, inputs, thread count and rule) in a child process started by this one, its time, our speed-up
//!   and the largest difference of the two final samples;
//! * `edges`, `video`: Sobel edge and decode / encode frames per second on the bundled sample videos;
//! * `peak_rss_mib`: the process's peak resident memory (getrusage), after everything above.
//!
//! `--train [RECIPE]` times training steps instead (`bench_train.rs`), `--unet-config` one random-weight UNet.
//!
//! Ratios, not absolute times, are what to compare across machines: both sides run on the same cores in one run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vadapt::sampling::{sample, ComposeSettings, Conditioned, Prior, Rule, Strength};

use candle_nn::VarBuilder;
use vadapt::compute::{DeviceSpec, Precision};
use vadapt::model_dir::ModelDir;
use vadapt::models::unet_3d::{forward_flops, UNet3DConditionModel, UNet3DConfig};
use vadapt::models::Denoiser;
use vadapt::rng::NoiseRng;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The small (edge-conditioned) model directory.
    #[arg(long, default_value = "models/demo/edge_to_sim")]
    pub small: PathBuf,
    /// The prior model directory.
    #[arg(long, default_value = "models/demo/prior")]
    pub prior: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// HxW of the sampled video.
    #[arg(long, default_value = "24x40")]
    pub size: String,
    /// DDIM steps of the composed sampling run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Prior strength λ.
    #[arg(long, default_value_t = 0.4)]
    pub lam: f32,
    /// Guidance weight w.
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f32,
    /// Threads for both sides (RAYON_NUM_THREADS here, torch.set_num_threads in the peer). 0: all cores.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed repetitions of each measurement (the best is reported, as criterion's lower bound would be).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Also run the diffusers peer on the same inputs and report the ratio.
    #[arg(long)]
    pub peer: bool,
    /// Python with torch + diffusers for the peer (default: .venv/bin/python, made by scripts/setup.sh).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// A video for the decode / encode / edge numbers (default: the bundled sample's real camera).
    #[arg(
        long,
        default_value = "datasets/sample/lerobot/videos/observation.images.real/chunk-000/file-000.mp4"
    )]
    pub video: PathBuf,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the peer's inputs and outputs (safetensors) in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Where the models run: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision of the UNets: f32, f16 or bf16 (CUDA only).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Instead of the demo benchmarks: time a random-weight UNet3D of this diffusers config.json, e.g. a real-size
    /// prior (`benches/configs/modelscope_t2v_unet.json`), at `--frames` and `--latent`, batch 2 (the conditional and
    /// unconditional passes of one guided step).
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// Also time `vadapt augment` with this pipeline, one target at a time (frames/s per target, episodes/hour).
    #[arg(long)]
    pub augment: Option<PathBuf>,
    /// The dataset `--augment` reads.
    #[arg(long, default_value = "datasets/sample/lerobot")]
    pub augment_input: PathBuf,
    /// Episodes `--augment` samples (the first N of the dataset).
    #[arg(long, default_value_t = 2)]
    pub augment_episodes: usize,
    /// HxW of the latents for `--unet-config` (32x32: a 256x256 video through an SD VAE).
    #[arg(long, default_value = "32x32")]
    pub latent: String,
    /// Instead of the sampling benchmarks: time training steps of this recipe's UNet on seeded synthetic batches
    /// (`bench_train.rs`); with `--peer`, diffusers runs the same steps. Without a value: the demo prior's recipe.
    #[arg(long, value_name = "RECIPE", num_args = 0..=1,
          default_missing_value = "pipelines/train_prior_words.toml")]
    pub train: Option<PathBuf>,
    /// Timed training steps of `--train` (median reported), after `--train-warmup` untimed ones.
    #[arg(long, default_value_t = 10)]
    pub train_steps: usize,
    #[arg(long, default_value_t = 2)]
    pub train_warmup: usize,
    /// The matmul precision granted to the diffusers peer (torch.set_float32_matmul_precision; "medium" also lets
    /// oneDNN's convolutions use bf16). Default: what vadapt's GEMMs compute in on this machine
    /// (`--matmul-precision` where the CPU has AMX, highest elsewhere). `highest` measures a reduced-precision
    /// vadapt against the f32 reference.
    #[arg(long)]
    pub peer_matmul_precision: Option<vadapt::models::kernels::MatmulPrecision>,
}

fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (h, w) = s
        .split_once('x')
        .with_context(|| format!("--size {s:?}: expected HxW, e.g. 24x40"))?;
    Ok((h.parse()?, w.parse()?))
}

/// Best of `reps` timings of `f` (seconds), after one untimed warm-up call.
fn best_of<T>(reps: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut out = f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        out = f()?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok((best, out))
}

fn matmul_gflops(reps: usize) -> anyhow::Result<f64> {
    let n = 1024;
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let (secs, _) = best_of(reps.max(5), || Ok(a.matmul(&b)?))?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

pub(super) fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

struct Setup {
    small: ModelDir,
    prior: ModelDir,
    x_t: Tensor,
    edge: Tensor,
    small_text: Tensor,
    small_uncond: Tensor,
    prior_text: Tensor,
    prior_uncond: Tensor,
}

const PROMPT: &str = "push the red star to the blue cube";

fn setup(args: &Args, device: &Device) -> anyhow::Result<Setup> {
    let (h, w) = parse_size(&args.size)?;
    let small = ModelDir::load(&args.small, device)?;
    let prior = ModelDir::load(&args.prior, device)?;
    if small.unet.in_channels() != 4 || !matches!(prior.unet.in_channels(), 3 | 4) {
        bail!(
            "the benchmark composes an edge-conditioned small model (4 input channels) with a prior that takes the \
             video alone (3) or the edge too (4); {} has {} and {} has {}",
            args.small.display(),
            small.unet.in_channels(),
            args.prior.display(),
            prior.unet.in_channels()
        );
    }
    let mut rng = NoiseRng::new(7);
    let x_t = rng.randn((1, 3, args.frames, h, w), device)?;
    // A smooth moving edge pattern in [-1, 1] (the values matter little for timing; both sides get these).
    let edge = rng
        .randn((1, 1, args.frames, h, w), device)?
        .tanh()?
        .to_dtype(DType::F32)?;
    let (small_text, small_uncond) = bench_text(&small, PROMPT, &mut rng, device)?;
    let (prior_text, prior_uncond) = bench_text(
        &prior,
        &format!("{PROMPT}, claymation style"),
        &mut rng,
        device,
    )?;
    Ok(Setup {
        small,
        prior,
        x_t,
        edge,
        small_text,
        small_uncond,
        prior_text,
        prior_uncond,
    })
}

/// The text and unconditional embeddings a model gets: its encoder's, or for a random-weight model directory
/// without one (the 5.1 M + 28.3 M pair) a seeded random context of CLIP's 77 rows, zeros unconditional.
fn bench_text(
    model: &ModelDir,
    prompt: &str,
    rng: &mut NoiseRng,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    if model.text_encoder.is_some() {
        return Ok(model.embed(prompt, 1, device)?);
    }
    let text = (rng.randn((1, 77, model.unet.cross_attention_dim()), device)? * 0.5)?;
    let uncond = text.zeros_like()?;
    Ok((text, uncond))
}

/// The prior's conditioning channels: the edge when it takes one (4 input channels), none otherwise.
fn prior_channels(s: &Setup) -> Option<Tensor> {
    (s.prior.unet.in_channels() == 4).then(|| s.edge.clone())
}

fn compose_once(s: &Setup, args: &Args) -> anyhow::Result<Tensor> {
    let small = Conditioned {
        model: &s.small.unet,
        channels: Some(s.edge.clone()),
        text: s.small_text.clone(),
        uncond: s.small_uncond.clone(),
        schedule: None,
    };
    let priors = [Prior {
        input: Conditioned {
            model: &s.prior.unet,
            channels: prior_channels(s),
            text: s.prior_text.clone(),
            uncond: s.prior_uncond.clone(),
            schedule: None,
        },
        strength: Strength::Constant(args.lam),
    }];
    let mut scheduler = s.small.scheduler.build()?;
    scheduler.set_timesteps(args.steps)?;
    let settings = ComposeSettings {
        rule: Rule::Composed,
        guidance: args.guidance,
        compose_min_t: 100,
    };
    let traj = sample(
        &small,
        &priors,
        scheduler.as_mut(),
        s.x_t.clone(),
        &settings,
        &mut NoiseRng::new(0),
        false,
    )?;
    Ok(traj.x0)
}

/// The CPU's f32 FMA peak on `threads` cores (`kernels::bench::measure_fma_peak`: measured clock and FMA lanes
/// per cycle), logged with its formula; None off x86-64 or without AVX2 + FMA.
fn fma_peak(threads: usize, reps: usize) -> Option<vadapt::models::kernels::bench::FmaPeak> {
    let peak = vadapt::models::kernels::bench::measure_fma_peak(threads, reps);
    if let Some(p) = peak {
        eprintln!(
            "f32 FMA peak: {} cores x {} lanes/cycle x 2 x {:.2} GHz = {:.0} GFLOP/s (measured {:.1} FLOP/cycle/core)",
            p.cores,
            p.fma_lanes_per_cycle,
            p.clock_ghz,
            p.peak_gflop_per_s(),
            p.measured_flop_per_cycle
        );
    }
    peak
}

fn unet_forward(s: &Setup, args: &Args, matmul: f64, peak: Option<f64>) -> anyhow::Result<Value> {
    let dev = Device::Cpu;
    let (h, w) = parse_size(&args.size)?;
    let mut out = serde_json::Map::new();
    let small_in = Tensor::cat(&[&s.x_t, &s.edge], 1)?;
    let cases: [(&str, &dyn Denoiser, &ModelDir, Tensor, Tensor); 2] = [
        (
            "small_batch2",
            &s.small.unet,
            &s.small,
            Tensor::cat(&[&small_in, &small_in], 0)?,
            Tensor::cat(&[&s.small_uncond, &s.small_text], 0)?,
        ),
        (
            "prior_batch1",
            &s.prior.unet,
            &s.prior,
            match prior_channels(s) {
                Some(edge) => Tensor::cat(&[&s.x_t, &edge], 1)?,
                None => s.x_t.clone(),
            },
            s.prior_text.clone(),
        ),
    ];
    for (name, model, dir, x, ctx) in cases {
        let b = x.dim(0)?;
        let t = Tensor::full(500f32, b, &dev)?;
        let (secs, _) = best_of(args.reps, || Ok(model.forward(&x, &t, &ctx)?))?;
        let flops = forward_flops(dir.unet.config(), b, args.frames, h, w, ctx.dim(1)?);
        let gflops = flops / secs / 1e9;
        out.insert(
            name.into(),
            json!({
                "ms": secs * 1e3,
                "gflop": flops / 1e9,
                "gflop_per_s": gflops,
                "percent_of_matmul": 100.0 * gflops / matmul,
                "percent_of_fma_peak": peak.map(|p| 100.0 * gflops / p),
            }),
        );
    }
    Ok(Value::Object(out))
}

/// End-to-end `vadapt augment` throughput, each target of `pipeline` alone (read, edges, sampling, encode, write)
/// on the first `--augment-episodes` episodes, one sampler thread (augment's default) over the `--threads` pool:
/// what a dataset of N episodes costs per target.
fn augment_numbers(args: &Args, pipeline: &Path) -> anyhow::Result<Value> {
    let cfg = vadapt::pipeline::PipelineConfig::load(pipeline)?;
    let mut out = serde_json::Map::new();
    let tmp = tempfile_dir()?.join("augment");
    for target in &cfg.targets {
        let one = vadapt::pipeline::PipelineConfig {
            targets: vec![target.clone()],
            ..cfg.clone()
        };
        let opts = vadapt::pipeline::RunOptions {
            input: args.augment_input.clone(),
            output: tmp.join(&target.name),
            shard: Default::default(),
            resume: false,
            limit: Some(args.augment_episodes),
            strict: true,
            threads: 1,
            progress: None,
            compute: Default::default(),
            max_memory: None,
            stop: None,
            fail: None,
        };
        let s = vadapt::pipeline::run(&one, pipeline, &opts)?;
        let frames_per_s = s.frames_written as f64 / s.wall_seconds;
        let episodes_per_hour = s.episodes_written as f64 * 3600.0 / s.wall_seconds;
        eprintln!(
            "augment {}: {} episodes, {} frames in {:.1} s: {frames_per_s:.1} frames/s, {episodes_per_hour:.0} episodes/hour",
            target.name, s.episodes_written, s.frames_written, s.wall_seconds
        );
        out.insert(
            target.name.clone(),
            json!({
                "episodes": s.episodes_written,
                "frames": s.frames_written,
                "seconds": s.wall_seconds,
                "frames_per_s": frames_per_s,
                "episodes_per_hour": episodes_per_hour,
                "stage_seconds": s.worker_seconds,
            }),
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(json!({
        "pipeline": pipeline.display().to_string(),
        "input": args.augment_input.display().to_string(),
        "sampler_threads": 1,
        "targets": out,
    }))
}

fn video_numbers(path: &Path, reps: usize) -> anyhow::Result<Value> {
    vadapt::io::video::init();
    let (decode_s, frames) = best_of(reps, || Ok(vadapt::io::video::decode_all(path)?))?;
    let images: Vec<_> = frames.into_iter().map(|f| f.image).collect();
    let n = images.len();
    if n == 0 {
        bail!("{}: no frames", path.display());
    }
    let (hgt, wid) = (images[0].height() as usize, images[0].width() as usize);
    let (edge_s, _) = best_of(reps, || {
        for im in &images {
            std::hint::black_box(vadapt::vision::edges::sobel(im.as_raw(), hgt, wid));
        }
        Ok(())
    })?;
    let dir = tempfile_dir()?;
    let out = dir.join("bench.mp4");
    let (encode_s, _) = best_of(reps, || {
        Ok(vadapt::io::video::encode_frames(
            &out,
            &images,
            10.0,
            &vadapt::io::video::EncoderOptions::default(),
        )?)
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "video": path.display().to_string(),
        "frames": n,
        "size": format!("{hgt}x{wid}"),
        "decode_fps": n as f64 / decode_s,
        "encode_fps": n as f64 / encode_s,
        "edges_fps": n as f64 / edge_s,
    }))
}

pub(super) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vadapt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Run `benches/peer/<script>` with `python` and these arguments (offline: nothing is downloaded); its stdout is its
/// JSON report. The one place vadapt starts a process: the diffusers peers of `bench --peer` and `bench --train`.
pub(super) fn run_peer_script(
    python: &Path,
    script: &str,
    peer_args: &[std::ffi::OsString],
) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peer")
        .join(script);
    let run = Command::new(python)
        .arg(&script)
        .args(peer_args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .with_context(|| {
            format!(
                "starting the peer with {} (make it with scripts/setup.sh, or pass --python)",
                python.display()
            )
        })?;
    if !run.status.success() {
        bail!(
            "the diffusers peer {} failed ({}):\n{}",
            script.display(),
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
    }
    serde_json::from_slice(&run.stdout).with_context(|| {
        format!(
            "peer output is not JSON: {}",
            String::from_utf8_lossy(&run.stdout)
        )
    })
}

/// Run the diffusers peer on the same inputs; returns its JSON report with `max_abs_diff_x0` added.
fn run_peer(s: &Setup, args: &Args, ours_x0: &Tensor) -> anyhow::Result<Value> {
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => tempfile_dir()?,
    };
    let inputs = dir.join("inputs.safetensors");
    let output = dir.join("peer_output.safetensors");
    candle_core::safetensors::save(
        &[
            ("x_T", s.x_t.clone()),
            ("edge", s.edge.clone()),
            ("small_text", s.small_text.clone()),
            ("small_uncond", s.small_uncond.clone()),
            ("prior_text", s.prior_text.clone()),
            ("prior_uncond", s.prior_uncond.clone()),
            ("ours_x0", ours_x0.clone()),
        ]
        .into_iter()
        .collect(),
        &inputs,
    )?;
    let mut peer_args: Vec<std::ffi::OsString> =
        vec!["--small".into(), unet_dir(&args.small).into()];
    peer_args.extend(["--prior".into(), unet_dir(&args.prior).into()]);
    peer_args.extend([
        "--scheduler-config".into(),
        args.small.join("scheduler/scheduler_config.json").into(),
    ]);
    peer_args.extend(["--inputs".into(), inputs.clone().into()]);
    peer_args.extend(["--output".into(), output.clone().into()]);
    for (flag, value) in [
        ("--steps", args.steps.to_string()),
        ("--lam", args.lam.to_string()),
        ("--guidance", args.guidance.to_string()),
        ("--threads", args.threads.to_string()),
        ("--reps", args.reps.to_string()),
        (
            "--matmul-precision",
            args.peer_matmul_precision
                .unwrap_or_else(vadapt::models::kernels::effective_matmul_precision)
                .to_string(),
        ),
    ] {
        peer_args.extend([flag.into(), value.into()]);
    }
    let mut report = run_peer_script(&args.python, "diffusers_compose.py", &peer_args)?;
    let theirs = candle_core::safetensors::load(&output, &Device::Cpu)?;
    let x0 = theirs
        .get("x0")
        .with_context(|| format!("{}: no x0", output.display()))?;
    let diff = (x0 - ours_x0)?.abs()?.max_all()?.to_scalar::<f32>()?;
    report["max_abs_diff_x0"] = json!(diff);
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

fn unet_dir(model: &Path) -> PathBuf {
    let u = model.join("unet");
    if u.join("config.json").exists() {
        u
    } else {
        model.to_path_buf()
    }
}

/// Weights drawn from N(0, 0.02²) as the model asks for them, one tensor at a time (a `VarMap` keeps gradient
/// bookkeeping and needed ~2.7x the weights' memory for a 1.4 B model); counts what it hands out.
#[derive(Default)]
struct RandomWeights {
    count: Arc<AtomicUsize>,
}

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        _name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.count.fetch_add(s.elem_count(), Ordering::Relaxed);
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: random weights need a shape")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// `--unet-config`: one guided step of a random-weight UNet of any size (a real-size prior), with its parameter
/// count, weight memory, FLOPs and rate. Weights are random: the time of a forward does not depend on their values.
fn unet_config_only(args: &Args, config: &Path) -> anyhow::Result<Value> {
    let dev = args.device.open()?;
    let dtype = args.dtype.dtype();
    let (h, w) = parse_size(&args.latent)?;
    let cfg = UNet3DConfig::from_file(config)?;
    let t0 = Instant::now();
    let weights = RandomWeights::default();
    let params = Arc::clone(&weights.count);
    let unet = UNet3DConditionModel::new(
        VarBuilder::from_backend(Box::new(weights), dtype, dev.clone()),
        cfg.clone(),
    )?;
    let init_s = t0.elapsed().as_secs_f64();
    let params = params.load(Ordering::Relaxed);
    eprintln!(
        "{}: {:.3} B parameters ({dtype:?}, random init {init_s:.1} s)",
        config.display(),
        params as f64 / 1e9
    );
    let mut rng = NoiseRng::new(7);
    let b = 2;
    let x = rng.randn((b, cfg.in_channels, args.frames, h, w), &dev)?;
    let tokens = 77;
    let ctx = rng.randn((b, tokens, cfg.cross_attention_dim), &dev)?;
    let t = Tensor::full(500f32, b, &dev)?;
    // Reading one number back waits for the device (CUDA kernels run asynchronously).
    let (secs, _) = best_of(args.reps, || {
        Ok(unet.forward(&x, &t, &ctx)?.sum_all()?.to_scalar::<f32>()?)
    })?;
    let flops = forward_flops(&cfg, b, args.frames, h, w, tokens);
    eprintln!(
        "forward, batch 2 (one guided step), {} frames at {h}x{w} latents: {secs:.2} s, {:.1} GFLOP/s",
        args.frames,
        flops / secs / 1e9
    );
    Ok(json!({
        "unet_config": config.display().to_string(),
        "device": args.device.to_string(),
        "dtype": format!("{dtype:?}"),
        "parameters": params,
        "weights_gib": (params * dtype.size_in_bytes()) as f64 / (1u64 << 30) as f64,
        "frames": args.frames,
        "latent": args.latent,
        "seconds_per_guided_step": secs,
        "seconds_per_20_step_window": 20.0 * secs,
        "gflop": flops / 1e9,
        "gflop_per_s": flops / secs / 1e9,
        "threads": rayon::current_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    }))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.threads > 0 {
        // Before the first parallel op: rayon's global pool (ours and candle's gemm) and candle's own pool size
        // themselves from this variable once.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    if let Some(config) = &args.unet_config {
        return emit(&unet_config_only(&args, config)?, &args);
    }
    if let Some(recipe) = &args.train {
        return emit(&super::bench_train::run(&args, recipe)?, &args);
    }
    if args.device != DeviceSpec::Cpu || args.dtype != Precision::F32 {
        bail!(
            "the demo benchmarks (and the diffusers peer) run on the CPU in F32; --device / --dtype apply to \
             --unet-config"
        );
    }
    let dev = Device::Cpu;
    let threads = rayon::current_num_threads();
    let matmul = matmul_gflops(args.reps)?;
    eprintln!("matmul 1024^3: {matmul:.1} GFLOP/s on {threads} threads");
    let peak = fma_peak(threads, args.reps);
    let s = setup(&args, &dev)?;
    let forward = unet_forward(&s, &args, matmul, peak.map(|p| p.peak_gflop_per_s()))?;
    eprintln!("unet forward: {forward}");
    let (compose_s, x0) = best_of(args.reps, || compose_once(&s, &args))?;
    eprintln!(
        "composed sampling, {} DDIM steps: {compose_s:.2} s",
        args.steps
    );
    let mut report = json!({
        "machine": {
            "threads": threads,
            "cpu": cpu_model(),
            "avx2_fma": vadapt::models::kernels::bench::has_avx2_fma(),
            "matmul_precision": vadapt::models::kernels::matmul_precision().to_string(),
            "matmul_precision_effective": vadapt::models::kernels::effective_matmul_precision().to_string(),
        },
        "shape": {"frames": args.frames, "size": args.size, "steps": args.steps, "lam": args.lam,
                  "guidance": args.guidance, "rule": "composed", "scheduler": "DDIM",
                  "small": args.small.display().to_string(), "prior": args.prior.display().to_string()},
        "matmul_gflop_per_s": matmul,
        "fma_peak": peak.map(|p| json!({
            "formula": "cores x fma_lanes_per_cycle x 2 FLOP x clock_ghz",
            "cores": p.cores,
            "clock_ghz": p.clock_ghz,
            "vector_lanes": p.vector_lanes,
            "measured_flop_per_cycle": p.measured_flop_per_cycle,
            "fma_lanes_per_cycle": p.fma_lanes_per_cycle,
            "gflop_per_s": p.peak_gflop_per_s(),
        })),
        "unet_forward": forward,
        "compose": {"seconds": compose_s, "seconds_per_step": compose_s / args.steps as f64},
    });
    if args.peer {
        let peer = run_peer(&s, &args, &x0)?;
        let their_s = peer["seconds"]
            .as_f64()
            .context("peer report has no seconds")?;
        eprintln!(
            "diffusers peer: {their_s:.2} s; vadapt is {:.2}x faster; max |x0 diff| {}",
            their_s / compose_s,
            peer["max_abs_diff_x0"]
        );
        report["peer"] = peer;
        report["speedup_vs_peer"] = json!(their_s / compose_s);
    }
    if let Some(pipeline) = &args.augment {
        report["augment"] = augment_numbers(&args, pipeline)?;
    }
    if args.video.exists() {
        report["video"] = video_numbers(&args.video, args.reps)?;
    } else {
        eprintln!("{}: not found, no video numbers", args.video.display());
    }
    report["peak_rss_mib"] = json!(peak_rss_mib());
    emit(&report, &args)
}

/// The report to stdout, and to `--json` when given.
fn emit(report: &Value, args: &Args) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if let Some(p) = &args.json {
        vadapt::io::fs::write_atomic(p, text.as_bytes())?;
    }
    println!("{text}");
    Ok(())
}

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default()
}
