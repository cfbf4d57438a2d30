//! The four workers of a run, each a plain function over crossbeam channels, run on their own threads by
//! [`run`](super::run::run):
//!
//! ```text
//! read (episode + decode) -> prepare (resize to each model resolution) -> sample × threads -> write (upsample,
//! encode, LeRobotWriter)
//! ```
//! Every worker checks [`Halt`] between pieces of work: Ctrl-C, a sibling's failure, and the test hook that
//! injects a failure at a [`FailAt`] point.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;
use serde_json::json;

use super::config::{Codec, Layout, PipelineConfig, Storage};
use super::keep::{mask_keys, Keep};
use super::options::{FailAt, FailPoint, Progress, INTERRUPTED};
use super::plan::Plan;
use super::prompt::PromptContext;
use super::target::{frames_resized, LoadedTarget};
use super::units::{UnitRecord, WorkDir};
use super::variants::{self, Record, Slot, UnitSlot};
use crate::episode::{Episode, EpisodeIndex, Feature, Features, Frames};
use crate::error::{Error, Location, Result};
use crate::io::lerobot::writer::{LeRobotWriter, Numbering, WriterOptions};
use crate::io::lerobot::CameraStorage;
use crate::io::video::{EncoderOptions, VideoCodec};
use crate::io::{open_dataset, EpisodeSource};
use crate::progress::{Observer, Silent};
use crate::vision::resize::resize_rgb;

pub(super) enum ReadMsg {
    Episode(usize, Episode, Arc<Vec<RgbImage>>),
    Skip(usize, u64, String),
}

pub(super) struct Job {
    pos: usize,
    episode: u64,
    /// Index into [`Shared::units`]: which target's which variant.
    unit: usize,
    /// The episode's task and per-episode columns, for the targets' prompt templates.
    prompt: Arc<PromptContext>,
    /// The source frames at each resolution the target samples at (base, then each cascade stage).
    frames: Vec<Arc<Vec<RgbImage>>>,
    done: Option<UnitRecord>,
}

pub(super) enum WriteMsg {
    Episode(usize, Episode),
    Unit(usize, usize, Vec<RgbImage>),
    Skip(usize, u64, String),
}

/// Time spent in each worker (summed over its threads).
#[derive(Default)]
pub(super) struct Timers {
    read: AtomicU64,
    prepare: AtomicU64,
    sample: AtomicU64,
    pub write: AtomicU64,
}

impl Timers {
    pub fn add(slot: &AtomicU64, since: Instant) {
        slot.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Seconds per worker, by name.
    pub fn seconds(&self) -> BTreeMap<&'static str, f64> {
        let secs = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed)).as_secs_f64();
        BTreeMap::from([
            ("read", secs(&self.read)),
            ("prepare", secs(&self.prepare)),
            ("sample", secs(&self.sample)),
            ("write", secs(&self.write)),
        ])
    }
}

pub(super) fn cancelled() -> Error {
    Error::Cancelled("another stage failed".into())
}

pub(super) fn interrupted() -> Error {
    Error::Cancelled(INTERRUPTED.into())
}

/// What every worker checks between pieces of work: Ctrl-C, a sibling's failure, and the test hook.
pub(super) struct Halt<'a> {
    /// Set by the first worker that fails.
    cancel: AtomicBool,
    stop: Option<&'a AtomicBool>,
    fail: Option<FailPoint>,
}

impl<'a> Halt<'a> {
    pub fn new(stop: Option<&'a AtomicBool>, fail: Option<FailPoint>) -> Self {
        Self {
            cancel: AtomicBool::new(false),
            stop,
            fail,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// `Err` when the run must end: interrupted, or another worker failed.
    pub fn check(&self) -> Result<()> {
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

    /// Run one worker: its failure stops every other worker at its next check.
    pub fn guard<T>(&self, worker: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = worker();
        if r.is_err() {
            self.fail();
        }
        r
    }

    /// The injected failure at `at` for the episode at `position`, if the test hook asks for it. (Its text names the
    /// point as a "stage", as the error messages of a run always have.)
    fn inject(&self, at: FailAt, position: usize, episode: u64) -> Result<()> {
        match self.fail {
            Some(f) if f.at == at && (f.position == position || at == FailAt::Write) => {
                let loc = Location::none().field(format!("stage {}", at.name()));
                Err(Error::Io {
                    loc: if at == FailAt::Write {
                        loc
                    } else {
                        loc.episode(episode)
                    },
                    source: std::io::Error::other(format!(
                        "injected failure in the {} stage (test hook)",
                        at.name()
                    )),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The run's progress: one line counting episodes written, one per target counting its units (sampled or reused)
/// with the frames per second it makes.
pub(super) struct ProgressLines {
    episodes: Box<dyn Observer>,
    targets: Vec<(Box<dyn Observer>, AtomicU64)>,
    started: Instant,
}

impl ProgressLines {
    pub fn new(progress: Option<&dyn Progress>, targets: &[LoadedTarget], episodes: u64) -> Self {
        let line = |o: Box<dyn Observer>| {
            o.start(episodes);
            o
        };
        let silent = || -> Box<dyn Observer> { Box::new(Silent) };
        Self {
            episodes: line(progress.map_or_else(silent, |p| p.episodes())),
            targets: targets
                .iter()
                .map(|t| {
                    let o = progress.map_or_else(silent, |p| p.target(&t.cfg.name));
                    o.start(episodes * t.cfg.variants as u64);
                    (o, AtomicU64::new(0))
                })
                .collect(),
            started: Instant::now(),
        }
    }

    fn unit_done(&self, target: usize, frames: usize) {
        let (line, done) = &self.targets[target];
        line.advance(1);
        let done = done.fetch_add(1, Ordering::Relaxed) + 1;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        line.message(&format!(
            "{:.1} frames/s",
            done as f64 * frames as f64 / secs
        ));
    }

    fn episode_done(&self) {
        self.episodes.advance(1);
    }

    pub fn finish(&self) {
        self.episodes.finish();
        for (line, _) in &self.targets {
            line.finish();
        }
    }
}

/// What the workers of one run share.
pub(super) struct Shared<'a> {
    pub halt: Halt<'a>,
    pub timers: Timers,
    pub progress: ProgressLines,
    pub targets: &'a [LoadedTarget],
    /// Every unit of a source episode (each target's variants), in the order the expanded layout writes them.
    pub units: Vec<UnitSlot>,
    /// The input camera.
    pub image_key: &'a str,
    /// The mask cameras of the targets' `keep_mask`, decoded with the input camera (`pipeline::keep`).
    pub keep_masks: Vec<String>,
    pub sampled: AtomicU64,
    pub reused: AtomicU64,
}

/// Read worker: read each episode and decode its input camera. A bad episode is skipped (recorded) or, with
/// `strict`, ends the run.
pub(super) fn read(
    sh: &Shared,
    input: &Path,
    episodes: Vec<(usize, EpisodeIndex)>,
    strict: bool,
    tx: Sender<ReadMsg>,
) -> Result<()> {
    let halt = &sh.halt;
    // Dataset readers are not Sync: this worker opens its own.
    let source = open_dataset(input)?;
    for (pos, idx) in episodes {
        halt.check()?;
        halt.inject(FailAt::Read, pos, idx.0)?;
        let t0 = Instant::now();
        let got = read_one(source.as_ref(), idx, sh.image_key, &sh.keep_masks, &|| {
            halt.inject(FailAt::Decode, pos, idx.0)
        })?;
        Timers::add(&sh.timers.read, t0);
        let msg = match got {
            Ok((ep, frames)) => ReadMsg::Episode(pos, ep, Arc::new(frames)),
            Err(e) if !strict => {
                let why = e.to_string();
                super::skips::warn(idx.0, &why);
                ReadMsg::Skip(pos, idx.0, why)
            }
            Err(e) => return Err(e),
        };
        tx.send(msg).map_err(|_| cancelled())?;
    }
    Ok(())
}

/// Prepare worker: resize each episode's frames to every resolution a target samples at (once per resolution)
/// and dispatch one job per target; units finished by an earlier run are passed on to be loaded, not sampled.
pub(super) fn prepare(
    sh: &Shared,
    finished: &BTreeMap<(u64, String), UnitRecord>,
    rx: Receiver<ReadMsg>,
    write_tx: Sender<WriteMsg>,
    job_tx: Sender<Job>,
) -> Result<()> {
    for msg in rx {
        sh.halt.check()?;
        match msg {
            ReadMsg::Skip(pos, idx, why) => write_tx
                .send(WriteMsg::Skip(pos, idx, why))
                .map_err(|_| cancelled())?,
            ReadMsg::Episode(pos, ep, frames) => {
                sh.halt.inject(FailAt::Prepare, pos, ep.index.0)?;
                let t0 = Instant::now();
                let mut at_res: BTreeMap<(usize, usize), Arc<Vec<RgbImage>>> = BTreeMap::new();
                let mut jobs = Vec::new();
                let prompt = Arc::new(PromptContext::of(&ep));
                for (ui, u) in sh.units.iter().enumerate() {
                    let t = &sh.targets[u.target];
                    let unit = variants::label(&t.cfg.name, u.variant);
                    let done = finished.get(&(ep.index.0, unit)).cloned();
                    let at = if done.is_some() {
                        Vec::new()
                    } else {
                        t.resolutions()
                            .into_iter()
                            .map(|(h, w)| {
                                at_res
                                    .entry((h, w))
                                    .or_insert_with(|| Arc::new(frames_resized(&frames, h, w)))
                                    .clone()
                            })
                            .collect()
                    };
                    jobs.push(Job {
                        pos,
                        episode: ep.index.0,
                        unit: ui,
                        prompt: prompt.clone(),
                        frames: at,
                        done,
                    });
                }
                Timers::add(&sh.timers.prepare, t0);
                let mut ep = ep;
                // The writer re-encodes the decoded frames instead of decoding the source again.
                ep.cameras.insert(
                    sh.image_key.to_string(),
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
}

/// Sample worker (one per `--threads`): sample each job's unit, or load it when an earlier run finished it, and
/// save every new unit in the work directory before passing it to the writer.
pub(super) fn sample(
    sh: &Shared,
    work: &WorkDir,
    device: &Device,
    global_seed: u64,
    rx: Receiver<Job>,
    tx: Sender<WriteMsg>,
) -> Result<()> {
    let halt = &sh.halt;
    for job in rx {
        halt.check()?;
        let u = sh.units[job.unit];
        let t = &sh.targets[u.target];
        let t0 = Instant::now();
        let frames = match &job.done {
            Some(rec) => {
                sh.reused.fetch_add(1, Ordering::Relaxed);
                work.load(rec)?
            }
            None => {
                // Between denoising steps: stop on Ctrl-C or a sibling's failure.
                let check = |point: &'static str| {
                    halt.check()?;
                    let at = match point {
                        "edges" => FailAt::Edges,
                        _ => FailAt::Sample,
                    };
                    halt.inject(at, job.pos, job.episode)
                };
                let seed = t.seed(global_seed);
                let draw = variants::draw(&t.cfg, seed, job.episode, u.variant);
                let out = t
                    .sample_episode(
                        &job.frames,
                        &job.prompt,
                        seed,
                        job.episode,
                        device,
                        &check,
                        &draw,
                    )
                    .map_err(|e| with_episode(e, job.episode, &t.cfg.name))?;
                work.save(job.episode, &draw.label, &out)?;
                sh.sampled.fetch_add(1, Ordering::Relaxed);
                out
            }
        };
        Timers::add(&sh.timers.sample, t0);
        sh.progress.unit_done(u.target, frames.len());
        tx.send(WriteMsg::Unit(job.pos, job.unit, frames))
            .map_err(|_| cancelled())?;
    }
    Ok(())
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

/// Read episode `idx` and decode its camera `key` and the mask cameras `masks` (kept decoded in the episode). A
/// bad episode is `Ok(Err(..))` (skipped or fatal, as `--strict` says); `before_decode` (the test hook) failing is
/// a worker failure, `Err`.
fn read_one(
    source: &dyn EpisodeSource,
    idx: EpisodeIndex,
    key: &str,
    masks: &[String],
    before_decode: &dyn Fn() -> Result<()>,
) -> Result<Result<(Episode, Vec<RgbImage>)>> {
    let ep = match source.read_episode(idx) {
        Ok(ep) => ep,
        Err(e) => return Ok(Err(e)),
    };
    before_decode()?;
    Ok(read_camera(ep, idx, key, masks))
}

/// Episode `ep`'s camera `key`, decoded and checked against its rows; the cameras `masks` are decoded and
/// checked too, and replace their encoded selves in the episode (the writer blends and re-encodes them).
pub(super) fn read_camera(
    mut ep: Episode,
    idx: EpisodeIndex,
    key: &str,
    masks: &[String],
) -> Result<(Episode, Vec<RgbImage>)> {
    for m in masks {
        let frames = decode_camera(&ep, idx, m)?;
        ep.cameras.insert(m.clone(), Frames::from_images(frames));
    }
    let frames = decode_camera(&ep, idx, key)?;
    Ok((ep, frames))
}

/// Camera `key` of `ep`, decoded: refused naming the episode and key when it is missing, empty or not one frame per row.
pub(super) fn decode_camera(ep: &Episode, idx: EpisodeIndex, key: &str) -> Result<Vec<RgbImage>> {
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
    Ok(frames)
}

/// The writer's fixed settings: features and where each target's frames go.
pub(super) struct WriterSetup {
    /// The run's config (the expanded layout's slots and draws derive from it).
    cfg: PipelineConfig,
    layout: Layout,
    fps: f64,
    features: Features,
    options: WriterOptions,
    image_key: String,
    output_size: (usize, usize),
    /// (target name, camera key).
    targets: Vec<(String, String)>,
    /// The mask cameras the targets keep the source under (`pipeline::keep`).
    keep_masks: Vec<String>,
}

impl WriterSetup {
    pub fn new(cfg: &PipelineConfig, source: &dyn EpisodeSource, plan: &Plan) -> Result<Self> {
        Self::with(cfg, source, &plan.loaded.targets, plan.output_size)
    }

    /// The settings for `targets` (loaded from `cfg`) writing cameras of `output_size`.
    pub fn with(
        cfg: &PipelineConfig,
        source: &dyn EpisodeSource,
        targets: &[LoadedTarget],
        output_size: (usize, usize),
    ) -> Result<Self> {
        let (oh, ow) = output_size;
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
                features.insert(variants::expanded_key(cfg).to_string(), video(oh, ow));
                variants::record_features(&mut features, variants::records_draws(cfg));
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
            storage: match cfg.output.storage {
                Storage::Video => CameraStorage::Video,
                Storage::Images => CameraStorage::Images,
            },
            // Expanded episodes are new episodes. Paired keeps every source column bit-exact but the episode, row
            // and task numbers, which the writer renumbers like lerobot expects of a dataset.
            numbering: match cfg.output.layout {
                Layout::Paired => Numbering::Renumber,
                Layout::Expanded => Numbering::Reindex,
            },
            ..WriterOptions::default()
        };
        Ok(Self {
            cfg: cfg.clone(),
            layout: cfg.output.layout,
            fps: source.fps(),
            features,
            options,
            image_key: cfg.input.image_key.clone(),
            output_size,
            targets: targets
                .iter()
                .map(|t| (t.cfg.name.clone(), t.cfg.camera_key()))
                .collect(),
            keep_masks: mask_keys(targets.iter().map(|t| &t.cfg)),
        })
    }
}

impl WriterSetup {
    /// A writer of a dataset with these settings at `root`.
    pub fn create_writer(&self, root: &Path) -> Result<LeRobotWriter> {
        LeRobotWriter::create(root, self.fps, &self.features, self.options.clone())
    }

    /// The mask cameras to decode with the input camera.
    pub fn keep_masks(&self) -> &[String] {
        &self.keep_masks
    }

    /// Target `target`'s `frames` as written: at the output size, the source kept under its `keep_mask`.
    pub fn finish(
        &self,
        keep: &Keep,
        target: &LoadedTarget,
        frames: Vec<RgbImage>,
    ) -> Vec<RgbImage> {
        keep.apply(target.cfg.keep_mask.as_deref(), self.at_output_size(frames))
    }

    /// One episode's source and masks for [`finish`](Self::finish).
    pub fn keep(&self, ep: &Episode) -> Result<Keep> {
        Keep::of(ep, &self.image_key, &self.keep_masks, self.output_size)
    }

    /// `frames` at the output size (upsampled when a model sampled them smaller).
    pub fn at_output_size(&self, frames: Vec<RgbImage>) -> Vec<RgbImage> {
        let (oh, ow) = self.output_size;
        if frames
            .iter()
            .all(|x| (x.height() as usize, x.width() as usize) == (oh, ow))
        {
            return frames;
        }
        frames
            .iter()
            .map(|x| resize_rgb(x, oh as u32, ow as u32))
            .collect()
    }
}

pub(super) struct WriterDone {
    pub episodes: u64,
    pub frames: u64,
    pub skipped: Vec<(u64, String)>,
}

struct Pending {
    episode: Option<Episode>,
    units: Vec<Option<Vec<RgbImage>>>,
    skip: Option<(u64, String)>,
}

/// Write worker: gather each episode with its targets' units and write complete episodes in dataset order into
/// `staging`; the metadata is written once every sender is gone and no worker failed.
pub(super) fn write(
    sh: &Shared,
    rx: Receiver<WriteMsg>,
    setup: &WriterSetup,
    staging: &Path,
    input: &Path,
) -> Result<WriterDone> {
    let (halt, timers, n_units) = (&sh.halt, &sh.timers, sh.units.len());
    let mut writer = setup.create_writer(staging)?;
    let mut pending: BTreeMap<usize, Pending> = BTreeMap::new();
    let mut skipped = Vec::new();
    let (mut episodes, mut frames) = (0u64, 0u64);
    let new_pending = || Pending {
        episode: None,
        units: (0..n_units).map(|_| None).collect(),
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
                sh.progress.episode_done();
                continue;
            }
            let t0 = Instant::now();
            let ep = p.episode.expect("ready");
            halt.inject(FailAt::Encode, pos, ep.index.0)?;
            let units: Vec<Vec<RgbImage>> =
                p.units.into_iter().map(|u| u.expect("ready")).collect();
            frames += write_episode(&mut writer, setup, sh.targets, ep, units)?;
            // Output episodes (the expanded layout writes several per source episode).
            episodes = writer.num_episodes();
            Timers::add(&timers.write, t0);
            sh.progress.episode_done();
        }
    }
    if !pending.is_empty() {
        // Only reachable when an upstream worker stopped early; its error is reported instead.
        return Err(cancelled());
    }
    // Every sender is gone: if that is because a worker failed (or Ctrl-C), write no metadata.
    halt.check()?;
    if episodes == 0 && !skipped.is_empty() {
        return Err(super::skips::all_skipped(input, &skipped));
    }
    halt.inject(FailAt::Write, 0, 0)?;
    let t0 = Instant::now();
    let _ = writer.finalize()?;
    Timers::add(&timers.write, t0);
    Ok(WriterDone {
        episodes,
        frames,
        skipped,
    })
}

/// Write one source episode (paired) or one episode per slot (expanded: the kept source, then each target's
/// variants); returns frames written.
fn write_episode(
    writer: &mut LeRobotWriter,
    setup: &WriterSetup,
    targets: &[LoadedTarget],
    ep: Episode,
    units: Vec<Vec<RgbImage>>,
) -> Result<u64> {
    let up = |f: Vec<RgbImage>| setup.at_output_size(f);
    let keep = setup.keep(&ep)?;
    match setup.layout {
        Layout::Paired => {
            let mut ep = ep;
            for (((_, key), t), f) in setup.targets.iter().zip(targets).zip(units) {
                let f = setup.finish(&keep, t, f);
                ep.cameras.insert(key.clone(), Frames::from_images(f));
            }
            writer.save_episode(&ep)?;
            Ok(ep.len() as u64)
        }
        Layout::Expanded => {
            let cfg = &setup.cfg;
            let (key, draws) = (variants::expanded_key(cfg), variants::records_draws(cfg));
            let mut units = units.into_iter();
            let mut written = 0;
            let prompt = PromptContext::of(&ep);
            for slot in variants::slots(cfg, ep.index.0) {
                let (frames, rec) = match slot {
                    Slot::Source => {
                        let cam = ep.cameras.get(&setup.image_key).ok_or_else(|| {
                            Error::invalid(
                                Location::none().episode(ep.index.0).field(&setup.image_key),
                                "episode has no such camera",
                            )
                        })?;
                        (up(cam.decode()?), Record::source())
                    }
                    Slot::Variant { target, draw } => {
                        let f = units.next().ok_or_else(cancelled)?;
                        let rec = targets[target]
                            .record(&prompt, &draw)
                            .map_err(|e| with_episode(e, ep.index.0, &targets[target].cfg.name))?;
                        (setup.finish(&keep, &targets[target], f), rec)
                    }
                };
                let index = writer.num_episodes();
                let e = variants::expanded_episode(&ep, index, key, frames, &rec, draws)?;
                writer.save_episode(&e)?;
                written += ep.len() as u64;
            }
            Ok(written)
        }
    }
}
