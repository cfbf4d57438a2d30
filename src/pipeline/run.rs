//! `vadapt augment` as a library call: the [`plan`](super::plan()) (models loaded once), then the
//! [`workers`](super::workers) on their own threads, connected by bounded crossbeam channels, then the
//! [`output`](super::output) published.
//!
//! ```text
//! read (episode + decode) -> prepare (resize to each model resolution) -> sample × threads -> write (upsample,
//! encode, LeRobotWriter)
//! ```
//! Channel capacities bound memory (a few episodes in flight, whatever the dataset size). Any worker failing sets a
//! shared cancel flag and drops its channel ends, so every other worker stops at its next receive or send (a
//! sampler at its next denoising step) and the run returns the first real error (never a deadlock). Ctrl-C
//! ([`RunOptions::stop`]) stops the workers the same way and leaves a state `--resume` finishes. The dataset is
//! written to `OUT/.vadapt/staging` and moved into `OUT` only once complete (`meta/` last), so a crash never leaves
//! a dataset that looks finished.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::bounded;

use super::config::PipelineConfig;
use super::output::{already_complete, prepare_output, publish, RunState};
use super::plan::{plan, Plan};
use super::units::WorkDir;
use super::workers::{
    self, interrupted, Halt, ProgressLines, Shared, Timers, WriterDone, WriterSetup,
};
use crate::error::{Error, Result};
use crate::io::EpisodeSource;

pub use super::options::{FailAt, FailPoint, Progress, RunOptions, Shard, INTERRUPTED};

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub episodes_written: u64,
    pub frames_written: u64,
    pub skipped: Vec<(u64, String)>,
    pub units_sampled: u64,
    pub units_reused: u64,
    /// Seconds spent in each worker (read, prepare, sample, write; summed over its threads).
    pub worker_seconds: BTreeMap<&'static str, f64>,
    pub wall_seconds: f64,
    /// The run found a finished dataset and did nothing.
    pub already_complete: bool,
}

impl RunSummary {
    fn already_complete(start: Instant) -> Self {
        Self {
            already_complete: true,
            wall_seconds: start.elapsed().as_secs_f64(),
            ..Self::default()
        }
    }
}

/// Run the pipeline `cfg` (read from `file`, named in errors) with `opts`.
pub fn run(cfg: &PipelineConfig, file: &Path, opts: &RunOptions) -> Result<RunSummary> {
    let start = Instant::now();
    let out = &opts.output;
    let work = WorkDir::new(out);
    let state = RunState::new(cfg, opts);
    // Resuming a finished output: nothing to do, nothing loaded.
    if opts.resume && already_complete(out, &work, &state)? {
        return Ok(RunSummary::already_complete(start));
    }
    // Everything the config or the input can get wrong (cameras, models, prompts) fails here, before the output
    // directory is touched.
    let (plan, source) = plan(cfg, file, opts)?;
    let hashes = plan.model_hashes()?;
    prepare_output(out, &work, &state, opts.resume)?;
    if already_complete(out, &work, &state)? {
        return Ok(RunSummary::already_complete(start));
    }
    let halt = Halt::new(opts.stop.as_deref(), opts.fail);
    // Loading big models takes a while: a Ctrl-C meanwhile stops here.
    halt.check()?;
    let sh = Shared {
        halt,
        timers: Timers::default(),
        progress: ProgressLines::new(
            opts.progress.as_deref(),
            &plan.loaded.targets,
            plan.episodes.len() as u64,
        ),
        targets: &plan.loaded.targets,
        units: super::variants::unit_slots(&cfg.targets),
        image_key: &cfg.input.image_key,
        keep_masks: super::keep::mask_keys(&cfg.targets),
        sampled: AtomicU64::new(0),
        reused: AtomicU64::new(0),
    };
    let written = run_workers(&sh, cfg, opts, &plan, source.as_ref(), &work)?;
    sh.progress.finish();

    // Provenance, then move the finished dataset into place, meta/ last. A Ctrl-C that came too late to stop a
    // worker still stops here: staging is rebuilt by --resume.
    sh.halt.check()?;
    let t0 = Instant::now();
    publish(cfg, opts, &plan, &hashes, &written.skipped, &work, state)?;
    Timers::add(&sh.timers.write, t0);
    Ok(RunSummary {
        episodes_written: written.episodes,
        frames_written: written.frames,
        skipped: written.skipped,
        units_sampled: sh.sampled.load(Ordering::Relaxed),
        units_reused: sh.reused.load(Ordering::Relaxed),
        worker_seconds: sh.timers.seconds(),
        wall_seconds: start.elapsed().as_secs_f64(),
        already_complete: false,
    })
}

/// Run the workers on their own threads until the writer has written the dataset into staging (or one fails),
/// then return the writer's result or the first error that is not a consequence of another worker stopping.
fn run_workers(
    sh: &Shared,
    cfg: &PipelineConfig,
    opts: &RunOptions,
    plan: &Plan,
    source: &dyn EpisodeSource,
    work: &WorkDir,
) -> Result<WriterDone> {
    let finished = work.finished()?;
    let threads = opts.threads.max(1);
    let (read_tx, read_rx) = bounded(2);
    let (job_tx, job_rx) = bounded(threads * 2);
    let (write_tx, write_rx) = bounded(threads * 2 + 2);
    let setup = WriterSetup::new(cfg, source, plan)?;
    let staging = work.staging();
    let halt = &sh.halt;
    std::thread::scope(|s| {
        let episodes = plan.episodes.clone();
        let reader = s.spawn(|| {
            halt.guard(|| workers::read(sh, &opts.input, episodes, opts.strict, read_tx))
        });
        let prep_write_tx = write_tx.clone();
        let finished = &finished;
        let prep = s.spawn(move || {
            halt.guard(|| workers::prepare(sh, finished, read_rx, prep_write_tx, job_tx))
        });
        let samplers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, tx) = (job_rx.clone(), write_tx.clone());
                let device = &plan.loaded.device;
                s.spawn(move || halt.guard(|| workers::sample(sh, work, device, cfg.seed, rx, tx)))
            })
            .collect();
        drop(job_rx);
        drop(write_tx);
        let writer =
            s.spawn(|| halt.guard(|| workers::write(sh, write_rx, &setup, &staging, &opts.input)));

        let mut errors: Vec<Error> = Vec::new();
        let mut keep = |r: std::thread::Result<Result<()>>| match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(Error::Cancelled("a pipeline stage panicked".into())),
        };
        keep(reader.join());
        keep(prep.join());
        for w in samplers {
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
        // The first error that is not a consequence of another worker stopping.
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
    })
}
