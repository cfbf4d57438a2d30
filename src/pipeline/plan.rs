//! What a run will do, worked out before anything is written: the dataset opened, the episodes this shard takes,
//! the output size, and every target's models loaded and checked. `--dry-run` prints the plan; `run` follows it
//! with the models loaded here (each model directory is loaded once, however many targets use it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::config::{EdgeKind, Layout, PipelineConfig};
use super::memory::{self, Estimate, Shapes};
use super::options::RunOptions;
use super::target::{LoadedTarget, ModelCache};
use crate::episode::EpisodeIndex;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::{open_dataset, EpisodeSource};
use crate::model_dir::Conditioning;
use crate::sampling::window_starts;

/// The plan `--dry-run` prints and `run` follows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub format: String,
    pub fps: f64,
    /// (position in dataset, source episode index).
    pub episodes: Vec<(usize, EpisodeIndex)>,
    pub targets: Vec<TargetPlan>,
    pub output_size: (usize, usize),
    /// The memory the run is estimated to need (checked against what is available before anything is written).
    pub memory: Estimate,
    /// The targets with their models, loaded once; `run` samples with these.
    pub(super) loaded: Loaded,
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
    /// Outputs per source episode (`variants`).
    pub variants: usize,
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
                .map(|&n| window_starts(n, t.frames, t.overlap).len() * t.variants)
                .sum();
            let stages: String = t
                .stages
                .iter()
                .map(|(h, w)| format!(" -> SR {h}x{w}"))
                .collect();
            let stages = match t.variants {
                1 => stages,
                n => format!("{stages}, {n} variants per episode"),
            };
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
        s.push_str(&self.memory.describe());
        s
    }
}

/// The loaded side of a [`Plan`]: the targets' models and the device they live on (the samplers compute there).
#[derive(Clone)]
pub(super) struct Loaded {
    pub targets: Vec<LoadedTarget>,
    pub device: Device,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("targets", &self.targets.len())
            .field("device", &self.device)
            .finish()
    }
}

/// `[edges] kind`: the edge channel of edge-conditioned models. The samplers compute Sobel dx / 4
/// (`vision::edges::edge_channel`), the channel `Conditioning::Edges` models are trained on: `sobel_x`. Any other
/// kind is refused for a target with an edge-conditioned model, until the sampler's conditioning computes it.
fn check_edges(kind: EdgeKind, target: &LoadedTarget, file: &Path) -> Result<()> {
    const COMPUTED: EdgeKind = EdgeKind::SobelX;
    if kind == COMPUTED {
        return Ok(());
    }
    let models = std::iter::once(&target.small)
        .chain(target.priors.iter().map(|(m, _, _)| m))
        .chain(target.stages.iter().map(|s| &s.model));
    for m in models {
        if m.conditioning.contains(&Conditioning::Edges) {
            return Err(Error::config(
                Location::file(file).field("edges.kind"),
                format!(
                    "{kind:?}: {} is conditioned on {COMPUTED:?} edges, the only kind the sampler computes",
                    m.path.display()
                ),
            ));
        }
    }
    Ok(())
}

impl Plan {
    /// Provenance hashes, each model directory read once: per target, the adapter's, then its priors' and its
    /// cascade stages' (in that order).
    pub(super) fn model_hashes(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut known: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut hash = |dir: &Path| -> Result<String> {
            if let Some(h) = known.get(dir) {
                return Ok(h.clone());
            }
            let h = model_hash(dir)?;
            known.insert(dir.to_path_buf(), h.clone());
            Ok(h)
        };
        let mut out = Vec::new();
        for t in &self.loaded.targets {
            let adapter = hash(&t.cfg.adapter)?;
            let mut others = Vec::new();
            for p in t.cfg.all_priors() {
                others.push(hash(&p.dir)?);
            }
            for st in &t.cfg.stages {
                others.push(hash(&st.adapter)?);
            }
            out.push((adapter, others));
        }
        Ok(out)
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

pub(super) fn select(source: &dyn EpisodeSource, opts: &RunOptions) -> Vec<(usize, EpisodeIndex)> {
    let mut all = source.episode_indices();
    if let Some(n) = opts.limit {
        all.truncate(n);
    }
    all.into_iter()
        .enumerate()
        .filter(|(p, _)| p % opts.shard.count == opts.shard.index)
        .collect()
}

pub(super) fn output_size(
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
                cameras(source)
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

/// A target's `keep_mask` names a camera of the dataset.
fn check_mask_camera(
    source: &dyn EpisodeSource,
    key: &str,
    target: &str,
    file: &Path,
) -> Result<()> {
    if source.features().get(key).is_some_and(|f| f.is_visual()) {
        return Ok(());
    }
    Err(Error::config(
        Location::file(file).field(format!("target.{target}.keep_mask")),
        format!(
            "the dataset has no camera {key:?} to keep the source under (cameras: {}); LanguageTable data \
             written by scripts/language_table/generate.py --robot-mask has observation.images.robot_mask",
            cameras(source)
        ),
    ))
}

/// The dataset's camera keys, for messages.
fn cameras(source: &dyn EpisodeSource) -> String {
    source
        .features()
        .iter()
        .filter(|(_, f)| f.is_visual())
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Frames of the longest selected episode: from the metadata where it says (LeRobot), else read from the first
/// [`LENGTHS_READ`] episodes (an episode that cannot be read counts as empty here; the run skips it).
fn longest_episode(source: &dyn EpisodeSource, episodes: &[(usize, EpisodeIndex)]) -> usize {
    let known: Option<Vec<usize>> = episodes
        .iter()
        .map(|&(_, i)| source.episode_len(i))
        .collect();
    match known {
        Some(lens) => lens.into_iter().max().unwrap_or(0),
        None => episodes
            .iter()
            .take(LENGTHS_READ)
            .filter_map(|&(_, i)| source.read_episode(i).ok().map(|e| e.len()))
            .max()
            .unwrap_or(0),
    }
}

/// Episodes read for their length where the metadata does not give it.
const LENGTHS_READ: usize = 64;

/// The input camera's (height, width), as the dataset declares it ((0, 0) when it does not: refused elsewhere).
fn input_size(cfg: &PipelineConfig, source: &dyn EpisodeSource) -> (usize, usize) {
    match source
        .features()
        .get(&cfg.input.image_key)
        .map(|f| f.shape.as_slice())
    {
        Some([h, w, _]) => (*h, *w),
        _ => (0, 0),
    }
}

/// Cameras the writer encodes: every camera of the source, plus one per target in the paired layout.
fn output_cameras(cfg: &PipelineConfig, source: &dyn EpisodeSource) -> usize {
    let source_cams = source.features().values().filter(|f| f.is_visual()).count();
    match cfg.output.layout {
        Layout::Paired => source_cams + cfg.targets.len(),
        Layout::Expanded => source_cams,
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
    super::variants::check_dataset(cfg, source.as_ref(), file)?;
    let device = opts.compute.device.open()?;
    let mut models = ModelCache::new(device.clone(), opts.compute.precision.dtype());
    let mut targets = Vec::new();
    let mut loaded = Vec::new();
    for t in &cfg.targets {
        if source.features().contains_key(&t.camera_key()) {
            return Err(Error::config(
                Location::file(file).field(format!("target.{}.name", t.name)),
                format!("the dataset already has {}", t.camera_key()),
            ));
        }
        let lt = LoadedTarget::load(t, file, &mut models)?;
        check_edges(cfg.edges.kind, &lt, file)?;
        if let Some(m) = &t.keep_mask {
            check_mask_camera(source.as_ref(), m, &t.name, file)?;
        }
        targets.push(TargetPlan {
            name: t.name.clone(),
            camera_key: match cfg.output.layout {
                Layout::Paired => t.camera_key(),
                Layout::Expanded => super::variants::expanded_key(cfg).to_string(),
            },
            frames: lt.small.meta.frames,
            overlap: lt.overlap,
            resolution: lt.resolution,
            steps: t.steps,
            priors: lt.priors.len(),
            stages: lt.stages.iter().map(|s| s.resolution).collect(),
            variants: t.variants,
        });
        loaded.push(lt);
    }
    let episodes = select(source.as_ref(), opts);
    let shapes = Shapes {
        file,
        longest: longest_episode(source.as_ref(), &episodes),
        input_size: input_size(cfg, source.as_ref()),
        output_size,
        output_key: "output.resolution",
        cameras: output_cameras(cfg, source.as_ref()),
        masks: super::keep::mask_keys(&cfg.targets).len(),
        threads: opts.threads,
        dtype_bytes: opts.compute.precision.dtype().size_in_bytes() as u64,
        fused_attention: device.is_cpu()
            && opts.compute.precision.dtype() == candle_core::DType::F32,
    };
    let estimate = memory::estimate(&loaded, &shapes)?;
    memory::check(&estimate, file, opts.max_memory)?;
    let plan = Plan {
        format: source.format().to_string(),
        fps: source.fps(),
        episodes,
        targets,
        output_size,
        memory: estimate,
        loaded: Loaded {
            targets: loaded,
            device,
        },
    };
    Ok((plan, source))
}
