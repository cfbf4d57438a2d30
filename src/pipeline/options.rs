//! What a run is asked to do besides the pipeline file: input, output, shard, resume, threads, device, where
//! progress goes, the Ctrl-C flag, and the test hook that injects failures.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compute::Compute;
use crate::progress::Observer;

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
    /// Where progress goes (the CLI draws bars); `None` reports nothing.
    pub progress: Option<Arc<dyn Progress>>,
    /// Device and precision of the models.
    pub compute: Compute,
    /// The memory the run may use (`--max-memory`); `None`: what `/proc/meminfo` says is available. A run whose
    /// estimate (`pipeline::memory`) exceeds it is refused at plan time.
    pub max_memory: Option<u64>,
    /// Set from outside (the CLI's Ctrl-C handler) to stop the run: every worker stops at its next check (a sampler
    /// between denoising steps), in-flight episodes are dropped, nothing unfinished is moved into the output, and
    /// `run` returns [`Error::Cancelled`](crate::error::Error::Cancelled) with [`INTERRUPTED`]. Finished units
    /// stay; `resume` completes the run.
    pub stop: Option<Arc<AtomicBool>>,
    /// Test hook, never set by the CLI: inject a failure at one point of one worker for one episode, to prove that
    /// any worker failing ends the run with that worker's error in bounded time.
    #[doc(hidden)]
    pub fail: Option<FailPoint>,
}

/// The message of the [`Error::Cancelled`](crate::error::Error::Cancelled) a run stopped through
/// [`RunOptions::stop`] returns.
pub const INTERRUPTED: &str = "interrupted";

/// Where a run reports progress: one line counting the episodes written, and one per target counting its units
/// (episodes sampled or reused), whose message is the frames per second it makes. The CLI draws them as bars.
pub trait Progress: Send + Sync {
    /// The line of episodes written (or skipped).
    fn episodes(&self) -> Box<dyn Observer>;
    /// The line of target `name`.
    fn target(&self, name: &str) -> Box<dyn Observer>;
}

impl std::fmt::Debug for dyn Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Where [`RunOptions::fail`] injects a failure (test hook).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAt {
    /// Read worker, before reading the episode's table.
    Read,
    /// Read worker, before decoding the input camera.
    Decode,
    /// Prepare worker (resize, job dispatch).
    Prepare,
    /// Sample worker, once the edge channel is computed.
    Edges,
    /// Sample worker, at the first denoising step.
    Sample,
    /// Write worker, before encoding and writing the episode.
    Encode,
    /// Write worker, when the dataset's metadata is written (after the last episode).
    Write,
}

impl FailAt {
    pub const ALL: [FailAt; 7] = [
        FailAt::Read,
        FailAt::Decode,
        FailAt::Prepare,
        FailAt::Edges,
        FailAt::Sample,
        FailAt::Encode,
        FailAt::Write,
    ];
    pub fn name(self) -> &'static str {
        match self {
            FailAt::Read => "read",
            FailAt::Decode => "decode",
            FailAt::Prepare => "prepare",
            FailAt::Edges => "edges",
            FailAt::Sample => "sample",
            FailAt::Encode => "encode",
            FailAt::Write => "write",
        }
    }
}

/// A failure injected at `at` for the episode at `position` (in dataset order; ignored for [`FailAt::Write`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPoint {
    pub at: FailAt,
    pub position: usize,
}
