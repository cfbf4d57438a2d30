//! The output side of a run: the work directory's state (`OUT/.vadapt/state.json`, which config, input and shard
//! an output belongs to, and whether it is complete), and publishing a finished dataset: provenance into
//! `meta/augmentation.json`, then the staged dataset moved into `OUT`, `meta/` last, so an output only looks like a
//! dataset once it is whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{Layout, PipelineConfig};
use super::options::{RunOptions, Shard};
use super::plan::Plan;
use super::units::WorkDir;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::fs::write_atomic;

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

impl RunState {
    /// The state of a run of `cfg` with `opts`, not yet complete.
    pub(super) fn new(cfg: &PipelineConfig, opts: &RunOptions) -> Self {
        Self {
            config: cfg.clone(),
            input: opts.input.clone(),
            limit: opts.limit,
            shard: opts.shard,
            complete: false,
        }
    }
}

/// `out` holds a dataset that a run with `state`'s config, input, limit and shard completed.
pub(super) fn already_complete(out: &Path, work: &WorkDir, state: &RunState) -> Result<bool> {
    if !out.join("meta").join("info.json").exists() {
        return Ok(false);
    }
    Ok(read_state(work)?.is_some_and(|old| old.complete && same_run(&old, state)))
}

/// The same config, input, `--limit` and `--shard`: a work directory `resume` may continue.
pub(super) fn same_run(a: &RunState, b: &RunState) -> bool {
    a.config == b.config && a.input == b.input && a.limit == b.limit && a.shard == b.shard
}

/// Check or create the output directory and its work directory.
pub(super) fn prepare_output(
    out: &Path,
    work: &WorkDir,
    state: &RunState,
    resume: bool,
) -> Result<()> {
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

/// Publish the dataset the writer finished in `staging`: provenance, then every top-level directory moved into
/// `out` (`meta/` last), the staging directory removed and the state marked complete.
pub(super) fn publish(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    plan: &Plan,
    hashes: &[(String, Vec<String>)],
    skipped: &[(u64, String)],
    work: &WorkDir,
    state: RunState,
) -> Result<()> {
    let out = &opts.output;
    let staging = work.staging();
    let prov = provenance(cfg, opts, plan, hashes, skipped);
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
        work,
        &RunState {
            complete: true,
            ..state
        },
    )
}

/// `meta/augmentation.json`: what made the dataset (version, input, config, each target's models with their
/// hashes and seeds), `source_episodes[i]` the source episode of output episode `i`, and the skipped episodes.
fn provenance(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    plan: &Plan,
    hashes: &[(String, Vec<String>)],
    skipped: &[(u64, String)],
) -> serde_json::Value {
    let targets = &plan.loaded.targets;
    let written: Vec<u64> = plan
        .episodes
        .iter()
        .map(|(_, i)| i.0)
        .filter(|i| !skipped.iter().any(|(s, _)| s == i))
        .collect();
    let mut prov = json!({
        "vadapt_version": env!("CARGO_PKG_VERSION"),
        "input": opts.input.to_string_lossy(),
        "input_format": plan.format,
        "limit": opts.limit,
        "layout": cfg.output.layout,
        "config": cfg,
        "seed_rule": "rng::derive_seed(target seed, source episode index, target name, window index); window u64::MAX seeds ancestral noise",
        "targets": targets.iter().zip(hashes).map(|(t, (ah, ph))| json!({
            "name": t.cfg.name,
            "camera_key": match cfg.output.layout {
                Layout::Paired => t.cfg.camera_key(),
                Layout::Expanded => super::variants::expanded_key(cfg).to_string(),
            },
            "seed": t.seed(cfg.seed),
            "adapter": {"path": t.cfg.adapter.to_string_lossy(), "hash": ah},
            "priors": t.cfg.all_priors().iter().zip(ph).enumerate().map(|(j, (p, h))| json!({
                "path": p.dir.to_string_lossy(), "hash": h,
                "strength": super::variants::strength_json(&t.cfg, j, p.strength),
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
    });
    // Targets that keep the source under a mask camera (`pipeline::keep`) say which.
    for (i, t) in targets.iter().enumerate() {
        if let Some(m) = &t.cfg.keep_mask {
            prov["targets"][i]["keep_mask"] = json!({
                "camera": m,
                "rule": "out = m * source + (1 - m) * generated, m = mean(R, G, B) / 255 of the mask frame",
            });
        }
    }
    // The expanded layout: what each output episode is (source, target, variant and what it drew).
    if cfg.output.layout == Layout::Expanded {
        prov["episodes"] = json!(super::variants::episode_entries(cfg, &written));
    }
    prov
}
