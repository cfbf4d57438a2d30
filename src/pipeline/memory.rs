//! How much memory a run will need, worked out at plan time from the shapes alone, and the refusal of a run that
//! would not fit (issue 24: a 100000x100000 output passed every check, sampled, then aborted on a 120 GB
//! allocation). The estimate adds:
//! * the process itself (binary, FFmpeg and its codecs, allocator arenas): [`PROCESS_BASE`], measured;
//! * every model directory's weights, once (safetensors headers: element count x the dtype it is loaded in);
//! * per sampler thread, the largest target: the UNet's activations at its window shape (the down path's skip
//!   tensors, a working set of the widest level, attention scores where the attention is not fused), the VAE
//!   decoder's for a latent model, and the episode state the windowed sampler keeps (x, ε accumulators, the
//!   conditioning channels, the frames at the target's resolution);
//! * the frames in flight: decoded source episodes held by the bounded channels, and the writer's episode with
//!   every camera at the output resolution;
//! * one video encoder per output camera (with the decoder of a source camera): [`ENCODER_FIXED`] plus
//!   [`ENCODER_PER_PIXEL`] per pixel of a frame, measured with libsvtav1 at preset 12.
//!
//! The constants were measured on this crate's release build (x86_64, glibc, FFmpeg 7 with libsvtav1), `vadapt
//! inspect` / `vadapt convert` at 90x160, 180x320 and 360x640; the estimate for `pipelines/demo.toml` lands within
//! 30% of the measured peak RSS (docs/design.md, "Memory"). It is an estimate for refusing runs that cannot fit,
//! not an accounting: it errs on the high side for long episodes and fused attention.

use std::path::{Path, PathBuf};

use super::target::LoadedTarget;
use crate::error::{Error, Location, Result};
use crate::model_dir::ModelDir;

const MIB: u64 = 1 << 20;
/// Resident size of the process before any episode or model: `vadapt inspect` of the sample, 47 MiB.
pub const PROCESS_BASE: u64 = 45 * MIB;
/// One video encoder (and the decoder of a source camera) whatever its size: libsvtav1's buffers at 90x160.
pub const ENCODER_FIXED: u64 = 24 * MIB;
/// One video encoder per pixel of its frames: libsvtav1's reference and lookahead pictures (66 MiB at 360x640).
pub const ENCODER_PER_PIXEL: u64 = 213;
/// Tensors of the widest UNet level alive at once (a resnet's input, norm, activation and conv outputs, the up
/// path's concatenation of skip and hidden state).
const WORKING_COPIES: u64 = 6;
/// Episode-sized tensors the windowed sampler keeps alive at once (x, the scaled model input, the ε accumulator
/// and one padded window ε, the scheduler's output and its noise).
const EPISODE_COPIES: u64 = 6;

/// What one part of the estimate is, in bytes, and the config key (or input property) that drives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub what: String,
    pub bytes: u64,
    pub key: String,
}

/// The estimate of one target (per sampler thread), and of the whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Per target: its name and parts (weights of models only it uses are in the run's parts).
    pub targets: Vec<(String, Vec<Part>)>,
    /// The run's parts: process, weights, per-thread sampling (the largest target), frames in flight, encoders.
    pub run: Vec<Part>,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.run.iter().map(|p| p.bytes).sum()
    }

    /// The part that weighs most, whose key a refusal names.
    pub fn largest(&self) -> &Part {
        self.run
            .iter()
            .max_by_key(|p| p.bytes)
            .expect("an estimate has parts")
    }

    /// The lines `--dry-run` prints: one per target, then the run.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (name, parts) in &self.targets {
            let total: u64 = parts.iter().map(|p| p.bytes).sum();
            s.push_str(&format!(
                "memory: target {name:<12} about {} per sampler thread ({})\n",
                mib(total),
                list(parts)
            ));
        }
        s.push_str(&format!(
            "memory: run about {} peak ({})\n",
            mib(self.total()),
            list(&self.run)
        ));
        s
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

fn list(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {}", p.what, mib(p.bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the estimate needs to know of a run besides its targets.
pub struct Shapes<'a> {
    /// The pipeline file (its keys are named).
    pub file: &'a Path,
    /// Longest selected episode, in frames.
    pub longest: usize,
    /// The input camera's (height, width).
    pub input_size: (usize, usize),
    /// Output cameras' (height, width), and the key that sets them (`output.resolution`, which overrides the
    /// input camera's size).
    pub output_size: (usize, usize),
    pub output_key: &'static str,
    /// Cameras the writer encodes (source cameras re-encoded, and the targets').
    pub cameras: usize,
    /// Mask cameras (the targets' `keep_mask`) decoded with the input camera and held at the output size while an
    /// episode is written (assumed at the input camera's size).
    pub masks: usize,
    pub threads: usize,
    /// Bytes per element of the UNets' and VAEs' weights and activations.
    pub dtype_bytes: u64,
    /// Attention scores are never materialized (the fused CPU f32 kernels).
    pub fused_attention: bool,
}

/// The estimate of a run of `targets` (their `cfg` indexed as in the pipeline file).
pub(super) fn estimate(targets: &[LoadedTarget], s: &Shapes) -> Result<Estimate> {
    let mut per_target = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut weights = 0u64;
    for (i, t) in targets.iter().enumerate() {
        let mut parts = Vec::new();
        // The key that lowers it: a target's resolution (set, or the model's vadapt.json size it overrides).
        let res_key = format!("target[{i}].resolution");
        let models = std::iter::once((&t.small, t.resolution, &res_key))
            .chain(t.priors.iter().map(|(m, _, _)| (m, t.resolution, &res_key)));
        let mut act = 0u64;
        for (m, (h, w), _) in models {
            if !dirs.contains(&m.path) {
                dirs.push(m.path.clone());
                weights += weight_bytes(&m.path, s.dtype_bytes)?;
            }
            act = act.max(model_activations(m, h, w, s));
        }
        let mut episode = episode_state(&t.small, t.resolution, s.longest, s.dtype_bytes);
        for st in &t.stages {
            if !dirs.contains(&st.model.path) {
                dirs.push(st.model.path.clone());
                weights += weight_bytes(&st.model.path, s.dtype_bytes)?;
            }
            let (h, w) = st.resolution;
            act = act.max(model_activations(&st.model, h, w, s));
            episode = episode.max(episode_state(
                &st.model,
                st.resolution,
                s.longest,
                s.dtype_bytes,
            ));
        }
        parts.push(Part {
            what: "activations".into(),
            bytes: act,
            key: res_key.clone(),
        });
        parts.push(Part {
            what: format!("episode state ({} frames)", s.longest),
            bytes: episode,
            key: res_key.clone(),
        });
        per_target.push((t.cfg.name.clone(), parts));
    }
    let sampling = per_target
        .iter()
        .map(|(_, parts)| parts.iter().map(|p| p.bytes).sum::<u64>())
        .zip(&per_target)
        .max_by_key(|(b, _)| *b)
        .map(|(b, (_, parts))| {
            let key = parts
                .iter()
                .max_by_key(|p| p.bytes)
                .map(|p| p.key.clone())
                .unwrap_or_default();
            (b * s.threads.max(1) as u64, key)
        })
        .unwrap_or((0, String::new()));
    let (oh, ow) = s.output_size;
    let (ih, iw) = s.input_size;
    let n = s.longest as u64;
    let threads = s.threads.max(1) as u64;
    // Source episodes held by the channels (read 2, the reader's and prepare's own, the writer's queue of
    // 2 x threads + 2), each as decoded frames and the writer's copy; the writer's episode at the output size.
    let decoded = 1 + s.masks as u64;
    let in_flight = (6 + 2 * threads) * n * (ih * iw * 3) as u64 * decoded;
    let keep = if s.masks > 0 { decoded } else { 0 };
    let writer = (s.cameras as u64 + keep) * n * (oh * ow * 3) as u64;
    let encoders = s.cameras as u64 * (ENCODER_FIXED + ENCODER_PER_PIXEL * (oh * ow) as u64);
    let run = vec![
        Part {
            what: "process".into(),
            bytes: PROCESS_BASE,
            key: "the vadapt process".into(),
        },
        Part {
            what: format!("weights of {} model(s)", dirs.len()),
            bytes: weights,
            key: "target.adapter".into(),
        },
        Part {
            what: format!("sampling x {threads} thread(s)"),
            bytes: sampling.0,
            key: sampling.1,
        },
        Part {
            what: format!("frames in flight ({} frames at {ih}x{iw})", s.longest),
            bytes: in_flight + writer,
            key: if in_flight > writer {
                "input.image_key"
            } else {
                s.output_key
            }
            .to_string(),
        },
        Part {
            what: format!("{} encoder(s) at {oh}x{ow}", s.cameras),
            bytes: encoders,
            key: s.output_key.to_string(),
        },
    ];
    Ok(Estimate {
        targets: per_target,
        run,
    })
}

/// Peak activations of one model's forward at a `h` x `w` pixel window: the UNet (batch 2: the guided pair) and,
/// for a latent model, the VAE decoder on one frame.
fn model_activations(m: &ModelDir, h: usize, w: usize, s: &Shapes) -> u64 {
    let ds = m.downscale().max(1);
    let frames = if m.any_frames {
        s.longest.max(1)
    } else {
        m.meta.frames
    };
    let unet = unet_activations(
        m.unet.config(),
        2,
        frames,
        h / ds,
        w / ds,
        s.fused_attention,
    );
    let vae = m.vae.as_ref().map_or(0, |v| {
        let widest = v
            .config()
            .block_out_channels
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        (WORKING_COPIES * (widest * h * w) as u64) * 4
    });
    // Counted in f32 above; other dtypes scale it.
    (unet + vae) / 4 * s.dtype_bytes
}

/// Elements alive at the peak of a UNet3D forward on (batch, in_channels, frames, h, w), times 4 bytes: every
/// skip tensor of the down path, [`WORKING_COPIES`] of the widest level, and the attention scores of each
/// cross-attention level (spatial: frames x heads x (h w)^2; temporal: h w x heads x frames^2) unless fused.
pub fn unet_activations(
    cfg: &crate::models::unet_3d::UNet3DConfig,
    batch: usize,
    frames: usize,
    h: usize,
    w: usize,
    fused_attention: bool,
) -> u64 {
    let levels = cfg.block_out_channels.len();
    let (mut hl, mut wl) = (h as u64, w as u64);
    let f = frames as u64;
    let first = *cfg.block_out_channels.first().unwrap_or(&0) as u64;
    let mut skips = first * f * hl * wl;
    let mut widest = 0u64;
    let mut scores = 0u64;
    for (l, &c) in cfg.block_out_channels.iter().enumerate() {
        let c = c as u64;
        let hw = hl * wl;
        skips += cfg.layers_per_block as u64 * c * f * hw;
        // The up path concatenates a skip onto the hidden state: twice the channels.
        widest = widest.max(2 * c * f * hw);
        let attends = cfg
            .down_block_types
            .get(l)
            .is_some_and(|t| t.contains("CrossAttn"));
        if attends && !fused_attention {
            let head_dim = match &cfg.attention_head_dim {
                crate::models::unet_3d::PerBlock::One(d) => *d,
                crate::models::unet_3d::PerBlock::Each(v) => v.get(l).copied().unwrap_or(1),
            }
            .max(1) as u64;
            let heads = (c / head_dim).max(1);
            scores = scores.max(f * heads * hw * hw + hw * heads * f * f);
        }
        if l + 1 < levels {
            hl = hl.div_ceil(2);
            wl = wl.div_ceil(2);
            skips += c * f * hl * wl;
        }
    }
    batch as u64 * (skips + WORKING_COPIES * widest + scores) * 4
}

/// The episode a sampler thread holds for one target: [`EPISODE_COPIES`] episode-sized f32 tensors of the sample
/// and the conditioning channels, plus the source frames at the target's resolution and the sampled frames.
fn episode_state(m: &ModelDir, (h, w): (usize, usize), longest: usize, _dtype_bytes: u64) -> u64 {
    let ds = m.downscale().max(1);
    let n = longest.max(m.meta.frames) as u64;
    let sample = (m.sample_channels() * (h / ds) * (w / ds)) as u64 * n;
    let cond: usize = m.conditioning.iter().map(|c| c.channels()).sum();
    let cond = (cond * (h / ds) * (w / ds)) as u64 * n;
    let frames = 2 * n * (h * w * 3) as u64;
    (EPISODE_COPIES * sample + cond) * 4 + frames
}

/// Bytes of every safetensors file under `dir` once loaded: text encoders in f32, everything else at `dtype_bytes`
/// (element counts from the files' headers; no tensor is read).
pub fn weight_bytes(dir: &Path, dtype_bytes: u64) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                let per = if p.components().any(|c| c.as_os_str() == "text_encoder") {
                    4
                } else {
                    dtype_bytes
                };
                total += safetensors_elements(&p)? * per;
            }
        }
    }
    Ok(total)
}

/// Elements in a safetensors file, from its JSON header (`{name: {dtype, shape, data_offsets}}`).
fn safetensors_elements(path: &Path) -> Result<u64> {
    use std::io::Read;
    let bad = |m: String| Error::model(Location::file(path), m);
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(e, path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(e, path))?;
    let len = u64::from_le_bytes(len);
    if len > 100 * MIB {
        return Err(bad(format!("safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(e, path))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("safetensors header is not JSON: {e}")))?;
    let mut n = 0u64;
    for (name, t) in v.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let numel = t
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|s| s.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>())
            .unwrap_or(0);
        n = n.saturating_add(numel);
    }
    Ok(n)
}

/// Memory a run may use: `--max-memory` when given, else `/proc/meminfo`'s MemAvailable, or less where the
/// process's cgroup (v2: a container, a Slurm job) has a lower limit left (None where the system does not say).
pub fn available(max_memory: Option<u64>) -> Option<(u64, &'static str)> {
    if let Some(m) = max_memory {
        return Some((m, "--max-memory"));
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let system = (kib * 1024, "MemAvailable in /proc/meminfo");
    match cgroup_left() {
        Some(left) if left < system.0 => {
            Some((left, "the cgroup's memory.max less memory.current"))
        }
        _ => Some(system),
    }
}

/// What the cgroup v2 limit of this process leaves (`memory.max - memory.current`), where one is set.
fn cgroup_left() -> Option<u64> {
    let rel = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = rel.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let max = read("memory.max")?; // "max" (no limit) does not parse
    Some(max.saturating_sub(read("memory.current").unwrap_or(0)))
}

/// Refuse a run whose estimate exceeds what is available, naming the key of its largest part and the estimate.
pub fn check(est: &Estimate, file: &Path, max_memory: Option<u64>) -> Result<()> {
    let Some((have, source)) = available(max_memory) else {
        return Ok(());
    };
    if est.total() <= have {
        return Ok(());
    }
    let big = est.largest();
    Err(Error::config(
        Location::file(file).field(big.key.clone()),
        format!(
            "the run needs about {} ({}) but {} is {}; the largest part, {} ({}), follows from {}",
            mib(est.total()),
            list(&est.run),
            source,
            mib(have),
            big.what,
            mib(big.bytes),
            big.key
        ),
    ))
}

/// A `--max-memory` value: bytes, or a number with K, M, G or T (powers of 1024; "8G", "512MiB").
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 8G, 512M or 1000000"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?}: must be a positive size"));
    }
    Ok((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }

    #[test]
    fn unet_activations_grow_with_the_window() {
        let cfg: crate::models::unet_3d::UNet3DConfig = serde_json::from_str(
            r#"{"block_out_channels": [16, 32], "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D"],
                "up_block_types": ["CrossAttnUpBlock3D", "UpBlock3D"], "layers_per_block": 1, "attention_head_dim": 8}"#,
        )
        .unwrap();
        let small = unet_activations(&cfg, 2, 8, 24, 40, true);
        let big = unet_activations(&cfg, 2, 8, 240, 400, true);
        assert!(small > 0 && big > 90 * small, "{small} {big}");
        assert!(unet_activations(&cfg, 2, 8, 24, 40, false) > small);
    }
}
