//! `vadapt merge OUT PART...`: join the outputs of `--shard i/n` runs into the dataset one machine would have
//! written. The parts' units (the sampled videos, lossless) are gathered into `OUT/.vadapt/` and the dataset is
//! written from them in source order with the same writer settings, so the merged bytes equal a single run's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::output::{read_state, write_state, RunState};
use super::run::{run, Progress, RunOptions, RunSummary, Shard};
use super::units::WorkDir;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::fs::copy_atomic;

/// Merge shard outputs `parts` into `out` (which must not exist or be empty), reporting to `progress`.
pub fn merge(
    out: &Path,
    parts: &[PathBuf],
    progress: Option<Arc<dyn Progress>>,
) -> Result<RunSummary> {
    if parts.is_empty() {
        return Err(Error::config(
            Location::none().field("PART"),
            "no parts to merge",
        ));
    }
    let mut states = Vec::new();
    for p in parts {
        let st = read_state(&WorkDir::new(p))?.ok_or_else(|| {
            Error::invalid(
                Location::file(p),
                "not a vadapt augment output (no .vadapt/state.json)",
            )
        })?;
        if !st.complete {
            return Err(Error::invalid(
                Location::file(p),
                "this part is unfinished: finish it with `vadapt augment ... --resume` first",
            ));
        }
        states.push(st);
    }
    let first = &states[0];
    let n = first.shard.count;
    let mut seen = vec![false; n];
    for (p, st) in parts.iter().zip(&states) {
        if st.config != first.config || st.input != first.input || st.limit != first.limit {
            return Err(Error::config(
                Location::file(p),
                format!(
                    "made with another pipeline config, input or --limit than {}",
                    parts[0].display()
                ),
            ));
        }
        if st.shard.count != n {
            return Err(Error::config(
                Location::file(p).field("shard"),
                format!(
                    "shard {}/{} does not belong with {}/{n}",
                    st.shard.index, st.shard.count, first.shard.index
                ),
            ));
        }
        if std::mem::replace(&mut seen[st.shard.index], true) {
            return Err(Error::config(
                Location::file(p).field("shard"),
                format!("shard {}/{n} is given twice", st.shard.index),
            ));
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(Error::config(
            Location::none().field("shard"),
            format!("shard {missing}/{n} is missing"),
        ));
    }
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::invalid(
            Location::file(out),
            "merge output exists and is not empty",
        ));
    }
    let work = WorkDir::new(out);
    let state = RunState {
        config: first.config.clone(),
        input: first.input.clone(),
        limit: first.limit,
        shard: Shard::default(),
        complete: false,
    };
    write_state(&work, &state)?;
    work.create()?;
    for p in parts {
        let pw = WorkDir::new(p);
        for rec in pw.finished()?.into_values() {
            let from = pw.units_dir().join(&rec.file);
            let to = work.units_dir().join(&rec.file);
            if std::fs::hard_link(&from, &to).is_err() {
                copy_atomic(&from, &to)?;
            }
            work.append(&rec)?;
        }
    }
    let opts = RunOptions {
        compute: Default::default(),
        input: state.input.clone(),
        output: out.to_path_buf(),
        shard: Shard::default(),
        resume: true,
        limit: state.limit,
        strict: false,
        threads: 1,
        progress,
        max_memory: None,
        stop: None,
        fail: None,
    };
    run(&state.config, &work.state(), &opts)
}
