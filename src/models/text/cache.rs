//! Per-prompt embedding cache: augmenting thousands of episodes with the same prompt (or a handful of task
//! strings) encodes each distinct prompt once.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Tensor};

use super::TextEncoder;
use crate::error::{Error, Location, Result};

#[derive(Debug, Default)]
struct State {
    /// prompt -> (embedding (1, tokens, dim), last use)
    entries: HashMap<String, (Tensor, u64)>,
    clock: u64,
    hits: u64,
    encoded: u64,
}

/// A [`TextEncoder`] that remembers the embedding of up to `capacity` distinct prompts, evicting the least
/// recently used. Misses of one `encode` call are encoded together in one batch. The lock is held while
/// encoding, so two threads asking for the same new prompt still encode it once.
#[derive(Debug)]
pub struct CachedTextEncoder<E> {
    inner: E,
    capacity: usize,
    state: Mutex<State>,
}

impl<E: TextEncoder> CachedTextEncoder<E> {
    /// Cache up to `capacity` (at least 1) prompts in front of `inner`.
    pub fn new(inner: E, capacity: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// Prompts answered without the inner encoder so far (repeats within one call count too).
    pub fn hits(&self) -> u64 {
        self.lock().map(|s| s.hits).unwrap_or(0)
    }

    /// Prompts sent to the inner encoder so far.
    pub fn encoded(&self) -> u64 {
        self.lock().map(|s| s.encoded).unwrap_or(0)
    }

    /// Distinct prompts held now.
    pub fn len(&self) -> usize {
        self.lock().map(|s| s.entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        if let Ok(mut s) = self.lock() {
            s.entries.clear();
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| {
            Error::Cancelled("text embedding cache: a thread panicked while encoding".into())
        })
    }
}

impl<E: TextEncoder> TextEncoder for CachedTextEncoder<E> {
    fn encode(&self, prompts: &[&str]) -> Result<Tensor> {
        let mut s = self.lock()?;
        // Distinct prompts not cached, in first-seen order.
        let mut missing: Vec<&str> = Vec::new();
        for p in prompts {
            if !s.entries.contains_key(*p) && !missing.contains(p) {
                missing.push(p);
            }
        }
        // This call's new rows live here until the result is built, so a call with more distinct prompts
        // than `capacity` still works.
        let mut fresh: HashMap<&str, Tensor> = HashMap::new();
        if !missing.is_empty() {
            let out = self.inner.encode(&missing)?;
            for (i, p) in missing.iter().enumerate() {
                // Own the row (not a view of the batch) so evicting one entry frees its memory.
                fresh.insert(*p, out.narrow(0, i, 1)?.contiguous()?);
            }
            s.encoded += missing.len() as u64;
        }
        s.hits += (prompts.len() - missing.len().min(prompts.len())) as u64;
        s.clock += 1;
        let now = s.clock;
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let row = match fresh.get(*p) {
                Some(t) => t.clone(),
                None => match s.entries.get_mut(*p) {
                    Some((t, used)) => {
                        *used = now;
                        t.clone()
                    }
                    None => {
                        return Err(Error::invalid(
                            Location::none(),
                            format!("text embedding cache lost prompt {p:?}"),
                        ))
                    }
                },
            };
            rows.push(row);
        }
        for (p, t) in fresh {
            s.entries.insert(p.to_string(), (t, now));
        }
        while s.entries.len() > self.capacity {
            let oldest = s
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => s.entries.remove(&k),
                None => break,
            };
        }
        drop(s);
        if rows.is_empty() {
            let (l, d) = (self.inner.max_tokens(), self.inner.dim());
            return Ok(Tensor::zeros(
                (0, l, d),
                candle_core::DType::F32,
                self.inner.device(),
            )?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }
    fn unconditional(&self, batch: usize) -> Result<Tensor> {
        self.inner.unconditional(batch)
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn unknown_words(&self, prompt: &str) -> Vec<String> {
        self.inner.unknown_words(prompt)
    }
}
