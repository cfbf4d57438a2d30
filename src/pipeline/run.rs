//! `vadapt augment` as a library call: stages on their own threads, connected by bounded crossbeam channels.
//!
//! ```text
//! read (episode + decode) -> prepare (resize to each model resolution) -> sample × threads -> write (upsample,
//! encode, LeRobotWriter)
//! ```
//! Channel capacities bound memory (a few episodes in flight, whatever the dataset size). Any stage failing sets a
//! shared cancel flag and drops its channel ends, so every other stage stops at its next receive or send (a sampler
//! at its next denoising step) and the run returns the first real error (never a deadlock). Ctrl-C
//! ([`RunOptions::stop`]) stops the stages the same way and leaves a state `--resume` finishes. The dataset is written to `OUT/.vadapt/staging` and moved
//! into `OUT` only once complete (`meta/` last), so a crash never leaves a dataset that looks finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use candle_core::{DType, Device};
use crossbeam_channel::{bounded, Receiver, Sender};
use image::RgbImage;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{render_prompt, Codec, Layout, PipelineConfig, StageConfig, TargetConfig};
use super::units::{UnitRecord, WorkDir};
use crate::compute::Compute;
use crate::episode::{Episode, EpisodeIndex, Feature, Features, Frames};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::lerobot::writer::{write_atomic, LeRobotWriter, WriterOptions};
use crate::io::video::{EncoderOptions, VideoCodec};
use crate::io::{open_dataset, EpisodeSource};
use crate::model_dir::{Conditioning, ModelDir};
use crate::sampling::{window_starts, ComposeSettings, ModelUse, TargetSampler};
use crate::vision::resize::resize_rgb;

/// `--shard i/n`: this run takes the episodes at positions `p` (in dataset order) with `p % n == i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected i/n, e.g. 0/4")?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("bad shard index {i:?}"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("bad shard count {n:?}"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= i < n"));
        }
        Ok(Self { index, count })
    }
}

/// How to run (everything that is not the pipeline file).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub shard: Shard,
    pub resume: bool,
    /// Only the first N episodes of the dataset (before sharding).
    pub limit: Option<usize>,
    pub strict: bool,
    /// Sampler threads.
    pub threads: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Device and precision of the models.
    pub compute: Compute,
    /// Set from outside (the CLI's Ctrl-C handler) to stop the run: every stage stops at its next check (a sampler
    /// between denoising steps), in-flight episodes are dropped, nothing unfinished is moved into the output, and
    /// `run` returns [`Error::Cancelled`] with [`INTERRUPTED`]. Finished units stay; `resume` completes the run.
    pub stop: Option<Arc<AtomicBool>>,
    /// Test hook, never set by the CLI: make one stage fail at one episode, to prove that any stage failing ends
    /// the run with that stage's error in bounded time.
    #[doc(hidden)]
    pub fail: Option<FailPoint>,
}

/// The message of the [`Error::Cancelled`] a run stopped through [`RunOptions::stop`] returns.
pub const INTERRUPTED: &str = "interrupted";

/// Where [`RunOptions::fail`] injects a failure (test hook).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reader thread, before reading the episode's table.
    Read,
    /// Reader thread, before decoding the input camera.
    Decode,
    /// Prepare thread (resize, job dispatch).
    Prepare,
    /// Sampler thread, once the edge channel is computed.
    Edges,
    /// Sampler thread, at the first denoising step.
    Sample,
    /// Writer thread, before encoding and writing the episode.
    Encode,
    /// Writer thread, when the dataset's metadata is written (after the last episode).
    Write,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Read,
        Stage::Decode,
        Stage::Prepare,
        Stage::Edges,
        Stage::Sample,
        Stage::Encode,
        Stage::Write,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Decode => "decode",
            Stage::Prepare => "prepare",
            Stage::Edges => "edges",
            Stage::Sample => "sample",
            Stage::Encode => "encode",
            Stage::Write => "write",
        }
    }
}

/// A failure injected at `stage` for the episode at `position` (in dataset order; ignored for [`Stage::Write`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPoint {
    pub stage: Stage,
    pub position: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub episodes_written: u64,
    pub frames_written: u64,
    pub skipped: Vec<(u64, String)>,
    pub units_sampled: u64,
    pub units_reused: u64,
    /// Seconds spent in each stage (summed over its threads).
    pub stage_seconds: BTreeMap<&'static str, f64>,
    pub wall_seconds: f64,
    /// The run found a finished dataset and did nothing.
    pub already_complete: bool,
}

/// `OUT/.vadapt/state.json`: what a work directory belongs to. Resume and merge refuse a different config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub config: PipelineConfig,
    pub input: PathBuf,
    pub limit: Option<usize>,
    pub shard: Shard,
    #[serde(default)]
    pub complete: bool,
}

/// The plan `--dry-run` prints and `run` follows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub format: String,
    pub fps: f64,
    /// (position in dataset, source episode index).
    pub episodes: Vec<(usize, EpisodeIndex)>,
    pub targets: Vec<TargetPlan>,
    pub output_size: (usize, usize),
}

#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub name: String,
    pub camera_key: String,
    pub frames: usize,
    pub overlap: usize,
    pub resolution: (usize, usize),
    pub steps: usize,
    pub priors: usize,
    /// The super-resolution stages' resolutions.
    pub stages: Vec<(usize, usize)>,
}

impl Plan {
    /// Human-readable plan (for `--dry-run`).
    pub fn describe(&self, source: &dyn EpisodeSource) -> String {
        let mut s = format!(
            "input: {} at {} fps, {} episodes selected; output cameras at {}x{}\n",
            self.format,
            self.fps,
            self.episodes.len(),
            self.output_size.0,
            self.output_size.1
        );
        let mut lens = Vec::new();
        for &(_, idx) in &self.episodes {
            lens.push(source.read_episode(idx).map(|e| e.len()).unwrap_or(0));
        }
        for t in &self.targets {
            let windows: usize = lens
                .iter()
                .map(|&n| window_starts(n, t.frames, t.overlap).len())
                .sum();
            let stages: String = t
                .stages
                .iter()
                .map(|(h, w)| format!(" -> SR {h}x{w}"))
                .collect();
            s.push_str(&format!(
                "target {:<12} -> {}: {}x{} x {} frames (overlap {}), {} steps, {} prior(s), {} windows in all{stages}\n",
                t.name,
                t.camera_key,
                t.resolution.0,
                t.resolution.1,
                t.frames,
                t.overlap,
                t.steps,
                t.priors,
                windows
            ));
        }
        s
    }
}

/// Models of one target, loaded once and shared by every sampler thread.
struct LoadedTarget {
    cfg: TargetConfig,
    small: ModelDir,
    priors: Vec<(ModelDir, f32, Option<String>)>,
    resolution: (usize, usize),
    overlap: usize,
    stages: Vec<LoadedStage>,
}

/// One super-resolution stage of a target.
struct LoadedStage {
    cfg: StageConfig,
    model: ModelDir,
    resolution: (usize, usize),
    overlap: usize,
}

/// The sampling resolution (explicit, or the model's) and window overlap of a model, checked: the overlap is below
/// the model's window and a latent model's resolution divides by its VAE's downscale.
fn resolution_and_overlap(
    model: &ModelDir,
    resolution: Option<[usize; 2]>,
    overlap: Option<usize>,
    loc: &dyn Fn(&str) -> Location,
) -> Result<((usize, usize), usize)> {
    let (h, w) = resolution
        .map(|[h, w]| (h, w))
        .unwrap_or((model.meta.height, model.meta.width));
    let frames = model.meta.frames;
    let overlap = overlap.unwrap_or(frames / 2);
    if overlap >= frames {
        return Err(Error::config(
            loc("window_overlap"),
            format!("{overlap} must be below the model's {frames} frames"),
        ));
    }
    model.sample_size(h, w, loc("resolution"))?;
    Ok(((h, w), overlap))
}

/// A prompt for a model without a text encoder cannot be honoured: refuse before any work. Words of the
/// template the model's vocabulary lacks (a style it was never trained on) get a warning: the model reads them
/// only as bytes.
fn check_prompt(model: &ModelDir, prompt: Option<&str>, loc: Location) -> Result<()> {
    let Some(prompt) = prompt.filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let Some(enc) = &model.text_encoder else {
        return Err(Error::config(
            loc,
            format!(
                "{} has no text_encoder/, so it takes no prompt",
                model.path.display()
            ),
        ));
    };
    let unknown = enc.unknown_words(&prompt.replace("{task}", ""));
    if !unknown.is_empty() {
        tracing::warn!(
            "{loc}: {} has no token for {:?}; it was not trained on those words and reads them only as bytes",
            model.path.display(),
            unknown
        );
    }
    Ok(())
}

impl LoadedTarget {
    fn load(cfg: &TargetConfig, file: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let small = ModelDir::load_in(&cfg.adapter, device, dtype)?;
        let priors = cfg
            .all_priors()
            .into_iter()
            .map(|p| {
                Ok((
                    ModelDir::load_in(&p.dir, device, dtype)?,
                    p.strength,
                    p.prompt,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let loc = |k: &str| Location::file(file).field(format!("target.{}.{k}", cfg.name));
        let (resolution, overlap) =
            resolution_and_overlap(&small, cfg.resolution, cfg.window_overlap, &loc)?;
        let frames = small.meta.frames;
        check_prompt(&small, cfg.prompt.as_deref(), loc("prompt"))?;
        if small.conditioning.contains(&Conditioning::LowRes) {
            return Err(Error::config(
                loc("adapter"),
                format!(
                    "{} is a super-resolution stage (it takes low_res): list it under [[target.stages]], after a base model",
                    small.path.display()
                ),
            ));
        }
        for (p, _, prompt) in &priors {
            small.check_composes_with(p, loc("prior"))?;
            if !p.any_frames && p.meta.frames != frames {
                return Err(Error::config(
                    loc("prior"),
                    format!(
                        "{} samples {} frames, the adapter {frames}",
                        p.path.display(),
                        p.meta.frames
                    ),
                ));
            }
            check_prompt(
                p,
                prompt.as_deref().or(cfg.prompt.as_deref()),
                loc("prior_prompt"),
            )?;
        }
        let mut stages = Vec::new();
        let mut previous = resolution;
        for (i, st) in cfg.stages.iter().enumerate() {
            let model = ModelDir::load_in(&st.adapter, device, dtype)?;
            let key = |k: &str| {
                Location::file(file).field(format!("target.{}.stages[{i}].{k}", cfg.name))
            };
            if !model.conditioning.contains(&Conditioning::LowRes) {
                return Err(Error::config(
                    key("adapter"),
                    format!(
                        "{} is not a super-resolution model: its conditioning {:?} has no low_res",
                        model.path.display(),
                        model.conditioning
                    ),
                ));
            }
            let (res, overlap) =
                resolution_and_overlap(&model, st.resolution, st.window_overlap, &key)?;
            check_prompt(&model, st.prompt.as_deref(), key("prompt"))?;
            if res.0 < previous.0 || res.1 < previous.1 {
                return Err(Error::config(
                    key("resolution"),
                    format!(
                        "{}x{} is below the previous stage's {}x{}",
                        res.0, res.1, previous.0, previous.1
                    ),
                ));
            }
            previous = res;
            stages.push(LoadedStage {
                cfg: st.clone(),
                model,
                resolution: res,
                overlap,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            small,
            priors,
            resolution,
            overlap,
            stages,
        })
    }

    /// Every resolution the target samples at: the base model's, then each stage's.
    fn resolutions(&self) -> Vec<(usize, usize)> {
        std::iter::once(self.resolution)
            .chain(self.stages.iter().map(|s| s.resolution))
            .collect()
    }

    /// The sampler of cascade stage `i` (0-based): the stage model alone, seeded as `name/stage<i+1>`.
    fn stage_sampler(&self, i: usize, task: &str) -> TargetSampler<'_> {
        let st = &self.stages[i];
        let tpl = Self::template(&st.model, st.cfg.prompt.as_deref());
        let mut s = TargetSampler::alone(
            format!("{}/stage{}", self.cfg.name, i + 1),
            &st.model,
            st.cfg.steps,
            st.overlap,
        );
        s.small.prompt = render_prompt(&tpl, task);
        s.scheduler.class_name = Some(st.cfg.sampler.class_name().to_string());
        s.settings.guidance = st.cfg.guidance;
        s
    }

    /// One episode through the base model and every stage. `frames[i]` are the source frames at
    /// `self.resolutions()[i]`.
    fn sample_episode(
        &self,
        frames: &[Arc<Vec<RgbImage>>],
        task: &str,
        seed: u64,
        episode: u64,
        device: &Device,
        check: &dyn Fn(&'static str) -> Result<()>,
    ) -> Result<Vec<RgbImage>> {
        let mut out = self
            .sampler(task)
            .sample_episode_checked(&frames[0], None, seed, episode, device, check)?;
        for (i, st) in self.stages.iter().enumerate() {
            let (h, w) = st.resolution;
            let low_res = frames_resized(&out, h, w);
            out = self.stage_sampler(i, task).sample_episode_checked(
                &frames[i + 1],
                Some(&low_res),
                seed,
                episode,
                device,
                check,
            )?;
        }
        Ok(out)
    }

    fn template(model: &ModelDir, explicit: Option<&str>) -> String {
        match explicit {
            Some(p) => p.to_string(),
            None if model.text_encoder.is_some() => "{task}".into(),
            None => String::new(),
        }
    }

    fn sampler(&self, task: &str) -> TargetSampler<'_> {
        let small_tpl = Self::template(&self.small, self.cfg.prompt.as_deref());
        let mut scheduler = self.small.scheduler.clone();
        scheduler.class_name = Some(self.cfg.sampler.class_name().to_string());
        TargetSampler {
            name: self.cfg.name.clone(),
            small: ModelUse {
                model: &self.small,
                prompt: render_prompt(&small_tpl, task),
            },
            priors: self
                .priors
                .iter()
                .map(|(m, lam, p)| {
                    let tpl = Self::template(m, p.as_deref().or(self.cfg.prompt.as_deref()));
                    (
                        ModelUse {
                            model: m,
                            prompt: render_prompt(&tpl, task),
                        },
                        *lam,
                    )
                })
                .collect(),
            settings: ComposeSettings {
                rule: self.cfg.rule,
                guidance: self.cfg.guidance,
                compose_min_t: self.cfg.compose_min_t,
            },
            scheduler,
            steps: self.cfg.steps,
            frames: self.small.meta.frames,
            overlap: self.overlap,
        }
    }

    fn seed(&self, global: u64) -> u64 {
        self.cfg.seed.unwrap_or(global)
    }
}

/// CRC-32C of every file under a model directory, in path order (provenance for `meta/augmentation.json`).
pub fn model_hash(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .at(dir)?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut crc = 0u32;
    for f in &files {
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(f)
            .to_string_lossy()
            .to_string();
        crc = crc32c::crc32c_append(crc, rel.as_bytes());
        crc = crc32c::crc32c_append(crc, &std::fs::read(f).at(f)?);
    }
    Ok(format!("crc32c:{crc:08x}"))
}

fn select(source: &dyn EpisodeSource, opts: &RunOptions) -> Vec<(usize, EpisodeIndex)> {
    let mut all = source.episode_indices();
    if let Some(n) = opts.limit {
        all.truncate(n);
    }
    all.into_iter()
        .enumerate()
        .filter(|(p, _)| p % opts.shard.count == opts.shard.index)
        .collect()
}

fn output_size(
    cfg: &PipelineConfig,
    source: &dyn EpisodeSource,
    file: &Path,
) -> Result<(usize, usize)> {
    if let Some([h, w]) = cfg.output.resolution {
        return Ok((h, w));
    }
    let f = source.features().get(&cfg.input.image_key).ok_or_else(|| {
        Error::config(
            Location::file(file).field("input.image_key"),
            format!(
                "the dataset has no camera {:?} (cameras: {})",
                cfg.input.image_key,
                source
                    .features()
                    .iter()
                    .filter(|(_, f)| f.is_visual())
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    match f.shape.as_slice() {
        [h, w, 3] => Ok((*h, *w)),
        s => Err(Error::unsupported(
            Location::file(file).field("input.image_key"),
            format!("camera shape {s:?} (expected [height, width, 3])"),
        )),
    }
}

/// Load models, open the dataset and work out what the run will do, without writing anything.
pub fn plan(
    cfg: &PipelineConfig,
    file: &Path,
    opts: &RunOptions,
) -> Result<(Plan, Box<dyn EpisodeSource>)> {
    let source = open_dataset(&opts.input)?;
    let output_size = output_size(cfg, source.as_ref(), file)?;
    let device = opts.compute.device.open()?;
    let dtype = opts.compute.precision.dtype();
    let mut targets = Vec::new();
    for t in &cfg.targets {
        if source.features().contains_key(&t.camera_key()) {
            return Err(Error::config(
                Location::file(file).field(format!("target.{}.name", t.name)),
                format!("the dataset already has {}", t.camera_key()),
            ));
        }
        let lt = LoadedTarget::load(t, file, &device, dtype)?;
        targets.push(TargetPlan {
            name: t.name.clone(),
            camera_key: t.camera_key(),
            frames: lt.small.meta.frames,
            overlap: lt.overlap,
            resolution: lt.resolution,
            steps: t.steps,
            priors: lt.priors.len(),
            stages: lt.stages.iter().map(|s| s.resolution).collect(),
        });
    }
    let plan = Plan {
        format: source.format().to_string(),
        fps: source.fps(),
        episodes: select(source.as_ref(), opts),
        targets,
        output_size,
    };
    Ok((plan, source))
}

enum ReadMsg {
    Episode(usize, Episode, Arc<Vec<RgbImage>>),
    Skip(usize, u64, String),
}

struct Job {
    pos: usize,
    episode: u64,
    target: usize,
    task: String,
    /// The source frames at each resolution the target samples at (base, then each cascade stage).
    frames: Vec<Arc<Vec<RgbImage>>>,
    done: Option<UnitRecord>,
}

enum WriteMsg {
    Episode(usize, Episode),
    Unit(usize, usize, Vec<RgbImage>),
    Skip(usize, u64, String),
}

#[derive(Default)]
struct Timers {
    read: AtomicU64,
    prepare: AtomicU64,
    sample: AtomicU64,
    write: AtomicU64,
}

impl Timers {
    fn add(slot: &AtomicU64, since: Instant) {
        slot.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

fn cancelled() -> Error {
    Error::Cancelled("another stage failed".into())
}

fn interrupted() -> Error {
    Error::Cancelled(INTERRUPTED.into())
}

/// What every stage checks between pieces of work: Ctrl-C, a sibling's failure, and the test hook.
struct Halt<'a> {
    /// Set by the first stage that fails.
    cancel: AtomicBool,
    stop: Option<&'a AtomicBool>,
    fail: Option<FailPoint>,
}

impl Halt<'_> {
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// `Err` when the run must end: interrupted, or another stage failed.
    fn check(&self) -> Result<()> {
        if self.stopped() {
            return Err(interrupted());
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        Ok(())
    }

    fn fail(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// The injected failure of `stage` at `position`, if the test hook asks for it.
    fn inject(&self, stage: Stage, position: usize, episode: u64) -> Result<()> {
        match self.fail {
            Some(f) if f.stage == stage && (f.position == position || stage == Stage::Write) => {
                let loc = Location::none().field(format!("stage {}", stage.name()));
                Err(Error::Io {
                    loc: if stage == Stage::Write {
                        loc
                    } else {
                        loc.episode(episode)
                    },
                    source: std::io::Error::other(format!(
                        "injected failure in the {} stage (test hook)",
                        stage.name()
                    )),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Run the pipeline `cfg` (read from `file`, named in errors) with `opts`.
pub fn run(cfg: &PipelineConfig, file: &Path, opts: &RunOptions) -> Result<RunSummary> {
    let start = Instant::now();
    let out = &opts.output;
    let work = WorkDir::new(out);
    let state = RunState {
        config: cfg.clone(),
        input: opts.input.clone(),
        limit: opts.limit,
        shard: opts.shard,
        complete: false,
    };
    // Resuming a finished output: nothing to do, nothing loaded.
    if opts.resume && out.join("meta").join("info.json").exists() {
        if let Some(old) = read_state(&work)? {
            if old.complete && same_run(&old, &state) {
                return Ok(RunSummary {
                    already_complete: true,
                    wall_seconds: start.elapsed().as_secs_f64(),
                    ..RunSummary::default()
                });
            }
        }
    }

    // Everything the config or the input can get wrong (cameras, models, prompts) fails here, before the output
    // directory is touched.
    let (plan, source) = plan(cfg, file, opts)?;
    let device = opts.compute.device.open()?;
    let dtype = opts.compute.precision.dtype();
    let targets: Vec<LoadedTarget> = cfg
        .targets
        .iter()
        .map(|t| LoadedTarget::load(t, file, &device, dtype))
        .collect::<Result<_>>()?;
    let hashes: Vec<(String, Vec<String>)> = targets
        .iter()
        .map(|t| {
            Ok((
                model_hash(&t.cfg.adapter)?,
                t.cfg
                    .all_priors()
                    .iter()
                    .map(|p| model_hash(&p.dir))
                    .chain(t.cfg.stages.iter().map(|st| model_hash(&st.adapter)))
                    .collect::<Result<_>>()?,
            ))
        })
        .collect::<Result<_>>()?;
    prepare_output(out, &work, &state, opts.resume)?;
    if out.join("meta").join("info.json").exists() && read_state(&work)?.is_some_and(|s| s.complete)
    {
        return Ok(RunSummary {
            already_complete: true,
            wall_seconds: start.elapsed().as_secs_f64(),
            ..RunSummary::default()
        });
    }
    let finished = work.finished()?;
    let halt = Halt {
        cancel: AtomicBool::new(false),
        stop: opts.stop.as_deref(),
        fail: opts.fail,
    };
    // Loading big models takes a while: a Ctrl-C meanwhile stops here.
    halt.check()?;

    // Progress: one bar for episodes written, one per target for units.
    let mp = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let n_eps = plan.episodes.len() as u64;
    let ep_bar = mp.add(ProgressBar::new(n_eps));
    ep_bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} episodes, {elapsed} elapsed, ETA {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    ep_bar.set_prefix("written");
    let target_bars: Vec<ProgressBar> = targets
        .iter()
        .map(|t| {
            let b = mp.add(ProgressBar::new(n_eps));
            b.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.set_prefix(t.cfg.name.clone());
            b
        })
        .collect();

    let timers = Timers::default();
    let sampled = AtomicU64::new(0);
    let reused = AtomicU64::new(0);
    let threads = opts.threads.max(1);
    let image_key = cfg.input.image_key.clone();
    let n_targets = targets.len();

    let (read_tx, read_rx) = bounded::<ReadMsg>(2);
    let (job_tx, job_rx) = bounded::<Job>(threads * 2);
    let (write_tx, write_rx) = bounded::<WriteMsg>(threads * 2 + 2);

    let staging = work.staging();
    let writer_setup = WriterSetup::new(cfg, source.as_ref(), &plan, &targets)?;

    let results = std::thread::scope(|s| {
        // Stage 1: read + decode the input camera.
        let reader = {
            let (halt, timers, image_key) = (&halt, &timers, &image_key);
            let episodes = plan.episodes.clone();
            let input = opts.input.clone();
            let strict = opts.strict;
            s.spawn(move || -> Result<()> {
                let r = (|| {
                    // Dataset readers are not Sync: this stage opens its own.
                    let source = open_dataset(&input)?;
                    for (pos, idx) in episodes {
                        halt.check()?;
                        halt.inject(Stage::Read, pos, idx.0)?;
                        let t0 = Instant::now();
                        let got = read_one(source.as_ref(), idx, image_key, &|| {
                            halt.inject(Stage::Decode, pos, idx.0)
                        })?;
                        Timers::add(&timers.read, t0);
                        let msg = match got {
                            Ok((ep, frames)) => ReadMsg::Episode(pos, ep, Arc::new(frames)),
                            Err(e) if !strict => ReadMsg::Skip(pos, idx.0, e.to_string()),
                            Err(e) => return Err(e),
                        };
                        read_tx.send(msg).map_err(|_| cancelled())?;
                    }
                    Ok(())
                })();
                if r.is_err() {
                    halt.fail();
                }
                r
            })
        };
        // Stage 2: resize to each model resolution, dispatch one job per target.
        let prep = {
            let (halt, timers, targets, finished, image_key) =
                (&halt, &timers, &targets, &finished, &image_key);
            let write_tx = write_tx.clone();
            s.spawn(move || -> Result<()> {
                let r = (|| {
                    for msg in read_rx {
                        halt.check()?;
                        match msg {
                            ReadMsg::Skip(pos, idx, why) => write_tx
                                .send(WriteMsg::Skip(pos, idx, why))
                                .map_err(|_| cancelled())?,
                            ReadMsg::Episode(pos, ep, frames) => {
                                halt.inject(Stage::Prepare, pos, ep.index.0)?;
                                let t0 = Instant::now();
                                let mut at_res: BTreeMap<(usize, usize), Arc<Vec<RgbImage>>> =
                                    BTreeMap::new();
                                let mut jobs = Vec::new();
                                for (ti, t) in targets.iter().enumerate() {
                                    let done =
                                        finished.get(&(ep.index.0, t.cfg.name.clone())).cloned();
                                    let at = if done.is_some() {
                                        Vec::new()
                                    } else {
                                        t.resolutions()
                                            .into_iter()
                                            .map(|(h, w)| {
                                                at_res
                                                    .entry((h, w))
                                                    .or_insert_with(|| {
                                                        Arc::new(frames_resized(&frames, h, w))
                                                    })
                                                    .clone()
                                            })
                                            .collect()
                                    };
                                    jobs.push(Job {
                                        pos,
                                        episode: ep.index.0,
                                        target: ti,
                                        task: ep.task.clone(),
                                        frames: at,
                                        done,
                                    });
                                }
                                Timers::add(&timers.prepare, t0);
                                let mut ep = ep;
                                // The writer re-encodes the decoded frames instead of decoding the source again.
                                ep.cameras.insert(
                                    image_key.clone(),
                                    Frames::from_images(frames.to_vec()),
                                );
                                write_tx
                                    .send(WriteMsg::Episode(pos, ep))
                                    .map_err(|_| cancelled())?;
                                for j in jobs {
                                    job_tx.send(j).map_err(|_| cancelled())?;
                                }
                            }
                        }
                    }
                    Ok(())
                })();
                if r.is_err() {
                    halt.fail();
                }
                r
            })
        };
        // Stage 3: samplers.
        let mut workers = Vec::new();
        for _ in 0..threads {
            let job_rx: Receiver<Job> = job_rx.clone();
            let write_tx: Sender<WriteMsg> = write_tx.clone();
            let (halt, timers, targets, work, sampled, reused, bars) = (
                &halt,
                &timers,
                &targets,
                &work,
                &sampled,
                &reused,
                &target_bars,
            );
            let (device, global_seed) = (device.clone(), cfg.seed);
            workers.push(s.spawn(move || -> Result<()> {
                let r = (|| {
                    for job in job_rx {
                        halt.check()?;
                        let t = &targets[job.target];
                        let t0 = Instant::now();
                        let frames = match &job.done {
                            Some(rec) => {
                                reused.fetch_add(1, Ordering::Relaxed);
                                work.load(rec)?
                            }
                            None => {
                                // Between denoising steps: stop on Ctrl-C or a sibling's failure.
                                let check = |point: &'static str| {
                                    halt.check()?;
                                    let stage = match point {
                                        "edges" => Stage::Edges,
                                        _ => Stage::Sample,
                                    };
                                    halt.inject(stage, job.pos, job.episode)
                                };
                                let out = t
                                    .sample_episode(
                                        &job.frames,
                                        &job.task,
                                        t.seed(global_seed),
                                        job.episode,
                                        &device,
                                        &check,
                                    )
                                    .map_err(|e| with_episode(e, job.episode, &t.cfg.name))?;
                                work.save(job.episode, &t.cfg.name, &out)?;
                                sampled.fetch_add(1, Ordering::Relaxed);
                                out
                            }
                        };
                        Timers::add(&timers.sample, t0);
                        let bar = &bars[job.target];
                        bar.inc(1);
                        let secs = bar.elapsed().as_secs_f64().max(1e-3);
                        bar.set_message(format!(
                            "{:.1} frames/s",
                            bar.position() as f64 * frames.len() as f64 / secs
                        ));
                        write_tx
                            .send(WriteMsg::Unit(job.pos, job.target, frames))
                            .map_err(|_| cancelled())?;
                    }
                    Ok(())
                })();
                if r.is_err() {
                    halt.fail();
                }
                r
            }));
        }
        drop(job_rx);
        drop(write_tx);
        // Stage 4: write, in dataset order.
        let writer = {
            let (halt, timers, setup, ep_bar) = (&halt, &timers, &writer_setup, &ep_bar);
            let staging = staging.clone();
            s.spawn(move || -> Result<WriterDone> {
                let r = write_stage(write_rx, setup, &staging, n_targets, timers, halt, ep_bar);
                if r.is_err() {
                    halt.fail();
                }
                r
            })
        };
        let mut errors: Vec<Error> = Vec::new();
        let mut keep = |r: std::thread::Result<Result<()>>| match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(Error::Cancelled("a pipeline stage panicked".into())),
        };
        keep(reader.join());
        keep(prep.join());
        for w in workers {
            keep(w.join());
        }
        let written = match writer.join() {
            Ok(Ok(w)) => Some(w),
            Ok(Err(e)) => {
                errors.push(e);
                None
            }
            Err(_) => {
                errors.push(Error::Cancelled("the writer panicked".into()));
                None
            }
        };
        // The first error that is not a consequence of another stage stopping.
        if let Some(i) = errors
            .iter()
            .position(|e| !matches!(e, Error::Cancelled(_)))
        {
            return Err(errors.swap_remove(i));
        }
        if halt.stopped() {
            return Err(interrupted());
        }
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        Ok(written.expect("writer result"))
    })?;
    ep_bar.finish_and_clear();
    for b in &target_bars {
        b.finish_and_clear();
    }

    // Provenance, then move the finished dataset into place, meta/ last. A Ctrl-C that came too late to stop a
    // stage still stops here: staging is rebuilt by --resume.
    halt.check()?;
    let t0 = Instant::now();
    let prov = provenance(cfg, opts, &plan, &targets, &hashes, &results.skipped);
    write_atomic(
        &staging.join("meta").join("augmentation.json"),
        serde_json::to_string_pretty(&prov)
            .expect("json")
            .as_bytes(),
    )?;
    for name in ["data", "videos", "images", "meta"] {
        let from = staging.join(name);
        if from.exists() {
            let to = out.join(name);
            std::fs::rename(&from, &to).at(&to)?;
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    write_state(
        &work,
        &RunState {
            complete: true,
            ..state
        },
    )?;
    Timers::add(&timers.write, t0);

    let secs = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed)).as_secs_f64();
    Ok(RunSummary {
        episodes_written: results.episodes,
        frames_written: results.frames,
        skipped: results.skipped,
        units_sampled: sampled.load(Ordering::Relaxed),
        units_reused: reused.load(Ordering::Relaxed),
        stage_seconds: BTreeMap::from([
            ("read", secs(&timers.read)),
            ("prepare", secs(&timers.prepare)),
            ("sample", secs(&timers.sample)),
            ("write", secs(&timers.write)),
        ]),
        wall_seconds: start.elapsed().as_secs_f64(),
        already_complete: false,
    })
}

fn frames_resized(f: &[RgbImage], h: usize, w: usize) -> Vec<RgbImage> {
    f.iter()
        .map(|x| resize_rgb(x, h as u32, w as u32))
        .collect()
}

fn with_episode(e: Error, episode: u64, target: &str) -> Error {
    match e {
        Error::Tensor(t) => Error::invalid(
            Location::none()
                .episode(episode)
                .field(format!("target.{target}")),
            format!("sampling failed: {t}"),
        ),
        other => other,
    }
}

/// Read episode `idx` and decode its camera `key`. A bad episode is `Ok(Err(..))` (skipped or fatal, as
/// `--strict` says); `before_decode` (the test hook) failing is a stage failure, `Err`.
fn read_one(
    source: &dyn EpisodeSource,
    idx: EpisodeIndex,
    key: &str,
    before_decode: &dyn Fn() -> Result<()>,
) -> Result<Result<(Episode, Vec<RgbImage>)>> {
    let ep = match source.read_episode(idx) {
        Ok(ep) => ep,
        Err(e) => return Ok(Err(e)),
    };
    before_decode()?;
    Ok(read_camera(ep, idx, key))
}

fn read_camera(ep: Episode, idx: EpisodeIndex, key: &str) -> Result<(Episode, Vec<RgbImage>)> {
    let cam = ep.cameras.get(key).ok_or_else(|| {
        Error::invalid(
            Location::none().episode(idx.0).field(key),
            "episode has no such camera",
        )
    })?;
    let frames = cam.decode()?;
    if frames.is_empty() {
        return Err(Error::invalid(
            Location::none().episode(idx.0).field(key),
            "episode has no frames",
        ));
    }
    if frames.len() != ep.len() {
        return Err(Error::invalid(
            Location::none().episode(idx.0).field(key),
            format!("{} frames for {} table rows", frames.len(), ep.len()),
        ));
    }
    Ok((ep, frames))
}

/// The same config, input, `--limit` and `--shard`: a work directory `resume` may continue.
fn same_run(a: &RunState, b: &RunState) -> bool {
    a.config == b.config && a.input == b.input && a.limit == b.limit && a.shard == b.shard
}

/// Check or create the output directory and its work directory.
fn prepare_output(out: &Path, work: &WorkDir, state: &RunState, resume: bool) -> Result<()> {
    // A run killed before its state file was written left at most an empty work directory: start afresh.
    if out.exists() && read_state(work)?.is_none() {
        let entries: Vec<_> = std::fs::read_dir(out).at(out)?.flatten().collect();
        if entries.len() == 1 && entries[0].file_name() == ".vadapt" {
            std::fs::remove_dir_all(&work.root).at(&work.root)?;
        }
    }
    let non_empty = out.exists() && std::fs::read_dir(out).at(out)?.next().is_some();
    if non_empty {
        let Some(old) = read_state(work)? else {
            return Err(Error::invalid(
                Location::file(out),
                "output directory exists, is not empty and is not a vadapt augment output",
            ));
        };
        if !resume {
            return Err(Error::invalid(
                Location::file(out),
                "output directory exists: pass --resume to finish it, or choose another --output",
            ));
        }
        if !same_run(&old, state) {
            return Err(Error::config(
                Location::file(work.state()),
                "this output was started with another pipeline config, input, --limit or --shard; resume refuses to mix them",
            ));
        }
        if old.complete && out.join("meta").join("info.json").exists() {
            return Ok(());
        }
        // An unfinished dataset: whatever was staged or half-moved is rebuilt from the units.
        for name in ["data", "videos", "images", "meta"] {
            let p = out.join(name);
            if p.exists() {
                std::fs::remove_dir_all(&p).at(&p)?;
            }
        }
        let st = work.staging();
        if st.exists() {
            std::fs::remove_dir_all(&st).at(&st)?;
        }
    } else {
        // The state first: a directory holding it is recognisably ours.
        write_state(work, state)?;
    }
    work.create()
}

pub fn read_state(work: &WorkDir) -> Result<Option<RunState>> {
    let p = work.state();
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).at(&p)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::invalid(Location::file(&p), e.to_string()))
}

pub fn write_state(work: &WorkDir, state: &RunState) -> Result<()> {
    write_atomic(
        &work.state(),
        serde_json::to_string_pretty(state)
            .expect("json")
            .as_bytes(),
    )
}

/// The writer's fixed settings: features and where each target's frames go.
struct WriterSetup {
    layout: Layout,
    fps: f64,
    features: Features,
    options: WriterOptions,
    image_key: String,
    output_size: (usize, usize),
    /// (target name, camera key).
    targets: Vec<(String, String)>,
}

impl WriterSetup {
    fn new(
        cfg: &PipelineConfig,
        source: &dyn EpisodeSource,
        plan: &Plan,
        targets: &[LoadedTarget],
    ) -> Result<Self> {
        let (oh, ow) = plan.output_size;
        let mut features = source.features().clone();
        let video = |h: usize, w: usize| Feature {
            dtype: "video".into(),
            shape: vec![h, w, 3],
            names: Some(json!(["height", "width", "channels"])),
            info: None,
        };
        match cfg.output.layout {
            Layout::Paired => {
                for t in targets {
                    features.insert(t.cfg.camera_key(), video(oh, ow));
                }
            }
            Layout::Expanded => {
                features.insert(cfg.input.image_key.clone(), video(oh, ow));
                features.insert(
                    "augmentation.source_episode_index".into(),
                    Feature {
                        dtype: "int64".into(),
                        shape: vec![1],
                        names: None,
                        info: None,
                    },
                );
                features.insert(
                    "augmentation.target".into(),
                    Feature {
                        dtype: "string".into(),
                        shape: vec![1],
                        names: None,
                        info: None,
                    },
                );
            }
        }
        let options = WriterOptions {
            video: EncoderOptions {
                codec: match cfg.output.codec {
                    Codec::Av1 => None,
                    Codec::H264 => Some(VideoCodec::H264),
                },
                crf: cfg.output.crf,
                ..EncoderOptions::default()
            },
            // Expanded episodes are new episodes; paired keeps every source column bit-exact.
            reindex: cfg.output.layout == Layout::Expanded,
            ..WriterOptions::default()
        };
        Ok(Self {
            layout: cfg.output.layout,
            fps: source.fps(),
            features,
            options,
            image_key: cfg.input.image_key.clone(),
            output_size: plan.output_size,
            targets: targets
                .iter()
                .map(|t| (t.cfg.name.clone(), t.cfg.camera_key()))
                .collect(),
        })
    }
}

struct WriterDone {
    episodes: u64,
    frames: u64,
    skipped: Vec<(u64, String)>,
}

struct Pending {
    episode: Option<Episode>,
    units: Vec<Option<Vec<RgbImage>>>,
    skip: Option<(u64, String)>,
}

fn write_stage(
    rx: Receiver<WriteMsg>,
    setup: &WriterSetup,
    staging: &Path,
    n_targets: usize,
    timers: &Timers,
    halt: &Halt,
    bar: &ProgressBar,
) -> Result<WriterDone> {
    let mut writer =
        LeRobotWriter::create(staging, setup.fps, &setup.features, setup.options.clone())?;
    let mut pending: BTreeMap<usize, Pending> = BTreeMap::new();
    let mut skipped = Vec::new();
    let (mut episodes, mut frames) = (0u64, 0u64);
    // Paired layout: source task_index -> this dataset's, in order of first use.
    let mut task_map: BTreeMap<i64, i64> = BTreeMap::new();
    let new_pending = || Pending {
        episode: None,
        units: (0..n_targets).map(|_| None).collect(),
        skip: None,
    };
    for msg in rx {
        halt.check()?;
        match msg {
            WriteMsg::Episode(pos, ep) => {
                pending.entry(pos).or_insert_with(new_pending).episode = Some(ep);
            }
            WriteMsg::Unit(pos, ti, f) => {
                pending.entry(pos).or_insert_with(new_pending).units[ti] = Some(f)
            }
            WriteMsg::Skip(pos, idx, why) => {
                pending.entry(pos).or_insert_with(new_pending).skip = Some((idx, why));
            }
        }
        // Write every complete episode at the front, in dataset order.
        while let Some((&pos, p)) = pending.iter().next() {
            let ready =
                p.skip.is_some() || (p.episode.is_some() && p.units.iter().all(Option::is_some));
            if !ready {
                break;
            }
            let p = pending.remove(&pos).expect("present");
            if let Some(s) = p.skip {
                skipped.push(s);
                bar.inc(1);
                continue;
            }
            let t0 = Instant::now();
            let ep = p.episode.expect("ready");
            halt.inject(Stage::Encode, pos, ep.index.0)?;
            let units: Vec<Vec<RgbImage>> =
                p.units.into_iter().map(|u| u.expect("ready")).collect();
            frames += write_episode(
                &mut writer,
                setup,
                ep,
                units,
                (episodes, frames),
                &mut task_map,
            )?;
            episodes += 1;
            Timers::add(&timers.write, t0);
            bar.inc(1);
        }
    }
    if !pending.is_empty() {
        // Only reachable when an upstream stage stopped early; its error is reported instead.
        return Err(cancelled());
    }
    // Every sender is gone: if that is because a stage failed (or Ctrl-C), write no metadata.
    halt.check()?;
    halt.inject(Stage::Write, 0, 0)?;
    let t0 = Instant::now();
    let _ = writer.finalize()?;
    Timers::add(&timers.write, t0);
    Ok(WriterDone {
        episodes,
        frames,
        skipped,
    })
}

/// Write one source episode (paired) or one episode per target (expanded); returns frames written. `written` is
/// (episodes, frames) written before this one; `tasks` the paired layout's task renumbering so far.
fn write_episode(
    writer: &mut LeRobotWriter,
    setup: &WriterSetup,
    ep: Episode,
    units: Vec<Vec<RgbImage>>,
    written: (u64, u64),
    tasks: &mut BTreeMap<i64, i64>,
) -> Result<u64> {
    let (oh, ow) = setup.output_size;
    let up = |f: Vec<RgbImage>| -> Vec<RgbImage> {
        f.iter()
            .map(|x| {
                if (x.height() as usize, x.width() as usize) == (oh, ow) {
                    x.clone()
                } else {
                    resize_rgb(x, oh as u32, ow as u32)
                }
            })
            .collect()
    };
    match setup.layout {
        Layout::Paired => {
            let mut ep = ep;
            renumber(&mut ep, written.0, written.1, tasks)?;
            for ((_, key), f) in setup.targets.iter().zip(units) {
                ep.cameras.insert(key.clone(), Frames::from_images(up(f)));
            }
            writer.save_episode(&ep)?;
            Ok(ep.len() as u64)
        }
        Layout::Expanded => {
            let n = ep.len();
            let mut written = 0;
            for (ti, ((name, _), f)) in setup.targets.iter().zip(units).enumerate() {
                let mut e = ep.clone();
                e.index = EpisodeIndex(ep.index.0 * setup.targets.len() as u64 + ti as u64);
                e.cameras
                    .insert(setup.image_key.clone(), Frames::from_images(up(f)));
                let mut fields: Vec<Field> = ep
                    .columns
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let mut cols: Vec<ArrayRef> = ep.columns.columns().to_vec();
                fields.push(Field::new(
                    "augmentation.source_episode_index",
                    DataType::Int64,
                    false,
                ));
                cols.push(Arc::new(Int64Array::from(vec![ep.index.0 as i64; n])));
                fields.push(Field::new("augmentation.target", DataType::Utf8, false));
                cols.push(Arc::new(StringArray::from(vec![name.as_str(); n])));
                e.columns =
                    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|err| {
                        Error::invalid(Location::none().episode(ep.index.0), err.to_string())
                    })?;
                writer.save_episode(&e)?;
                written += n as u64;
            }
            Ok(written)
        }
    }
}

/// Paired layout: `episode_index` becomes the episode's position in the output, `index` the running row number and
/// `task_index` this dataset's task number (in order of first use). lerobot loads only datasets whose episodes are
/// `0..total_episodes`, with `index` counting rows and `task_index` a row of `meta/tasks.parquet` (it refuses a gap
/// in the episodes as "doesn't contain all requested episodes", and fails on a task index past its table), so an
/// output with a skipped episode, a `--shard` part or a subset of the source is numbered like that. For a whole
/// source numbered the same way (lerobot numbers tasks by first use when it records) nothing changes, and every
/// other column is the source's, bit-exact. `meta/augmentation.json` `source_episodes[i]` is the source episode
/// of output episode `i`.
fn renumber(
    ep: &mut Episode,
    episode: u64,
    first_row: u64,
    tasks: &mut BTreeMap<i64, i64>,
) -> Result<()> {
    let n = ep.len() as i64;
    let loc = || Location::none().episode(ep.index.0);
    let schema = ep.columns.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols: Vec<ArrayRef> = ep.columns.columns().to_vec();
    let mut changed = false;
    let mut replace =
        |fields: &mut Vec<Field>, cols: &mut Vec<ArrayRef>, name: &str, new: ArrayRef| {
            match fields.iter().position(|f| f.name() == name) {
                Some(i) => {
                    // The source's integer type, so the schema stays the source's.
                    let cast = arrow::compute::cast(&new, fields[i].data_type())
                        .map_err(|e| Error::table(loc().field(name), e))?;
                    if cast.as_ref() != cols[i].as_ref() {
                        cols[i] = cast;
                        changed = true;
                    }
                }
                // No such column: the writer numbers `index` and tasks itself, and takes the episode's index from here.
                None if name == "episode_index" => {
                    fields.push(Field::new(name, DataType::Int64, false));
                    cols.push(new);
                    changed = true;
                }
                None => {}
            }
            Ok::<(), Error>(())
        };
    replace(
        &mut fields,
        &mut cols,
        "episode_index",
        Arc::new(Int64Array::from(vec![episode as i64; n as usize])),
    )?;
    let first = first_row as i64;
    replace(
        &mut fields,
        &mut cols,
        "index",
        Arc::new(Int64Array::from((first..first + n).collect::<Vec<_>>())),
    )?;
    if let Some(i) = fields.iter().position(|f| f.name() == "task_index") {
        let src = arrow::compute::cast(&cols[i], &DataType::Int64)
            .map_err(|e| Error::table(loc().field("task_index"), e))?;
        let mapped: Int64Array = src
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64")
            .iter()
            .map(|v| {
                v.map(|t| {
                    let next = tasks.len() as i64;
                    *tasks.entry(t).or_insert(next)
                })
            })
            .collect();
        replace(&mut fields, &mut cols, "task_index", Arc::new(mapped))?;
    }
    if changed {
        ep.columns = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::table(loc(), e))?;
    }
    Ok(())
}

fn provenance(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    plan: &Plan,
    targets: &[LoadedTarget],
    hashes: &[(String, Vec<String>)],
    skipped: &[(u64, String)],
) -> serde_json::Value {
    let written: Vec<u64> = plan
        .episodes
        .iter()
        .map(|(_, i)| i.0)
        .filter(|i| !skipped.iter().any(|(s, _)| s == i))
        .collect();
    json!({
        "vadapt_version": env!("CARGO_PKG_VERSION"),
        "input": opts.input.to_string_lossy(),
        "input_format": plan.format,
        "limit": opts.limit,
        "layout": cfg.output.layout,
        "config": cfg,
        "seed_rule": "rng::derive_seed(target seed, source episode index, target name, window index); window u64::MAX seeds ancestral noise",
        "targets": targets.iter().zip(hashes).map(|(t, (ah, ph))| json!({
            "name": t.cfg.name,
            "camera_key": t.cfg.camera_key(),
            "seed": t.seed(cfg.seed),
            "adapter": {"path": t.cfg.adapter.to_string_lossy(), "hash": ah},
            "priors": t.cfg.all_priors().iter().zip(ph).map(|(p, h)| json!({
                "path": p.dir.to_string_lossy(), "hash": h, "strength": p.strength,
            })).collect::<Vec<_>>(),
            "stages": t.stages.iter().zip(&ph[t.priors.len()..]).map(|(st, h)| json!({
                "path": st.cfg.adapter.to_string_lossy(), "hash": h,
                "resolution": [st.resolution.0, st.resolution.1], "steps": st.cfg.steps,
            })).collect::<Vec<_>>(),
            "model_frames": t.small.meta.frames,
            "window_overlap": t.overlap,
            "resolution": [t.resolution.0, t.resolution.1],
        })).collect::<Vec<_>>(),
        "source_episodes": written,
        "skipped": skipped.iter().map(|(e, why)| json!({"episode": e, "reason": why})).collect::<Vec<_>>(),
    })
}
