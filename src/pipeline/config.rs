//! The TOML pipeline config (`pipelines/*.toml`, docs/design.md "Pipeline config"): what to read, how to write, and one
//! `[[target]]` per augmented camera. Everything is checked by [`PipelineConfig::load`] before any work starts, so
//! a typo fails in a second with the key and the file named, not after an hour of sampling.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::sampling::Rule;

/// The whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub edges: EdgesConfig,
    /// Global seed; every (episode, target, window) seed derives from it (`rng::derive_seed`).
    #[serde(default)]
    pub seed: u64,
    #[serde(rename = "target", default)]
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// The camera whose edges condition every target.
    #[serde(default = "d_image_key")]
    pub image_key: String,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            image_key: d_image_key(),
        }
    }
}

fn d_image_key() -> String {
    "observation.images.rgb".into()
}

/// `paired`: same episodes, one new camera per target. `expanded`: one episode per (source episode, target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    #[default]
    Paired,
    Expanded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// AV1 where an encoder exists (and the frame size suits it), else H.264.
    #[default]
    Av1,
    H264,
}

/// How the output dataset stores its cameras (generated and copied source cameras alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// One mp4 per camera under `videos/` (lerobot `dtype: "video"`), encoded with `codec` and `crf`.
    #[default]
    Video,
    /// PNG frames in the data parquet (lerobot `dtype: "image"`, `use_videos=False`): lossless and needs no video
    /// I/O, so a `--no-default-features` build (the GPU check's) can write it.
    Images,
}

impl Storage {
    fn is_video(&self) -> bool {
        *self == Storage::Video
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    #[serde(default)]
    pub layout: Layout,
    /// `video` (default) or `images`. Left out of the recorded config when `video`, so the state and provenance
    /// of configs written before this key existed stay byte-identical.
    #[serde(default, skip_serializing_if = "Storage::is_video")]
    pub storage: Storage,
    #[serde(default)]
    pub codec: Codec,
    /// Constant rate factor of the encoded cameras.
    #[serde(default = "d_crf")]
    pub crf: u32,
    /// [height, width] of the generated cameras; default: the source camera's size.
    #[serde(default)]
    pub resolution: Option<[usize; 2]>,
    /// `expanded` only: each variant is written under the input camera's key, replacing it (default `true`: a
    /// policy trained on that key reads the new episodes unchanged), or, with `false`, under
    /// `observation.images.augmented` next to the source camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_camera: Option<bool>,
    /// `expanded` only: every source episode is written too (before its variants, `augmentation.target =
    /// "source"`), so one dataset holds the originals and their augmentations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_source: bool,
}

impl OutputConfig {
    /// Whether the expanded layout writes the generated frames under the input camera's key.
    pub fn replaces_camera(&self) -> bool {
        self.layout == Layout::Expanded && self.replace_camera.unwrap_or(true)
    }
}

fn d_crf() -> u32 {
    30
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            layout: Layout::Paired,
            storage: Storage::Video,
            codec: Codec::Av1,
            crf: d_crf(),
            resolution: None,
            replace_camera: None,
            keep_source: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// Sobel dx / 4 (the models' training conditioning, `vision::edges::edge_channel`).
    #[default]
    SobelX,
}

/// `[edges]`: the edge channel that conditions every edge-conditioned model. The plan refuses a kind the sampler
/// does not compute for such a model (`plan::check_edges`); like the rest of the config it is recorded in
/// `meta/augmentation.json` and `.vadapt/state.json` (resume and merge refuse a different one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EdgesConfig {
    #[serde(default)]
    pub kind: EdgeKind,
}

/// Which sampler drives a target's denoising (the small model's scheduler config with this algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    #[default]
    Ddim,
    Ddpm,
    #[serde(rename = "dpmpp_2m")]
    Dpmpp2m,
}

impl Sampler {
    /// diffusers' `_class_name` of the scheduler.
    pub fn class_name(self) -> &'static str {
        match self {
            Sampler::Ddim => "DDIMScheduler",
            Sampler::Ddpm => "DDPMScheduler",
            Sampler::Dpmpp2m => "DPMSolverMultistepScheduler",
        }
    }
}

/// A number of a target that is either fixed or drawn per variant from a range: `guidance = 3.0` or
/// `guidance = [1.0, 4.0]` (`pipeline::variants` draws it). A fixed value serializes as the plain number, so a
/// config without ranges records exactly as before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drawn {
    Fixed(f32),
    /// `[lo, hi]`, drawn uniformly from `lo <= x < hi`.
    Range(f32, f32),
}

impl Drawn {
    /// The fixed value, or a range's low end.
    pub fn low(self) -> f32 {
        match self {
            Drawn::Fixed(x) | Drawn::Range(x, _) => x,
        }
    }

    pub fn is_range(self) -> bool {
        matches!(self, Drawn::Range(..))
    }
}

impl std::fmt::Display for Drawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drawn::Fixed(x) => write!(f, "{x}"),
            Drawn::Range(lo, hi) => write!(f, "[{lo}, {hi}]"),
        }
    }
}

impl Serialize for Drawn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            Drawn::Fixed(x) => s.serialize_f32(x),
            Drawn::Range(lo, hi) => [lo, hi].serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Drawn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Drawn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a range [lo, hi]")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Drawn, E> {
                Ok(Drawn::Fixed(v as f32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Drawn, E> {
                Ok(Drawn::Fixed(v as f32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Drawn, E> {
                Ok(Drawn::Fixed(v as f32))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Drawn, A::Error> {
                let mut v: Vec<f32> = Vec::new();
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                match v[..] {
                    [lo, hi] => Ok(Drawn::Range(lo, hi)),
                    _ => Err(serde::de::Error::custom(format!(
                        "a range is [lo, hi], got {} values",
                        v.len()
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One prior of a composition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorConfig {
    pub dir: PathBuf,
    /// λ.
    #[serde(default = "d_strength")]
    pub strength: f32,
    /// The prior's prompt template (default: the target's).
    #[serde(default)]
    pub prompt: Option<String>,
}

fn d_strength() -> f32 {
    0.4
}

/// One augmented camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Camera key suffix (`observation.images.<name>`) and seed salt.
    pub name: String,
    /// The small task model (ModelDir).
    pub adapter: PathBuf,
    /// Shorthand for one prior: `prior` + `prior_strength` (+ `prior_prompt`).
    #[serde(default)]
    pub prior: Option<PathBuf>,
    /// λ of the shorthand prior: a number, or a range `[lo, hi]` drawn per variant.
    #[serde(default)]
    pub prior_strength: Option<Drawn>,
    #[serde(default)]
    pub prior_prompt: Option<String>,
    /// Prompt templates of the shorthand prior, one drawn per variant (instead of `prior_prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_prompts: Option<Vec<String>>,
    /// Several priors: `[[target.priors]]` with `dir`, `strength`, `prompt`.
    #[serde(default)]
    pub priors: Vec<PriorConfig>,
    /// w: a number, or a range `[lo, hi]` drawn per variant.
    #[serde(default = "d_guidance")]
    pub guidance: Drawn,
    /// Prompt template; `{task}` is replaced by the episode's task, `{episode:COLUMN}` by a per-episode string
    /// column (`pipeline::prompt`). Default: `{task}` for models with a text
    /// encoder, empty for models without one.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Prompt templates, one drawn per variant (instead of `prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
    /// A reference image of the look to render (PNG/JPEG): for a restyle adapter (`reference` conditioning,
    /// `pipelines/train_lt_restyle.toml`) its reference channel, tiles shuffled as its `vadapt.json` says; for an
    /// adapter with first-frame conditioning alone, every window's first-frame channel instead of the source's
    /// frame. Relative paths as for `adapter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
    /// Reference images, one drawn per variant (instead of `reference`): domain randomization over named looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<Vec<PathBuf>>,
    /// Outputs per source episode (`expanded` layout), each with its own noise and its own draws of `prompts`,
    /// `prior_prompts` and the ranges (`pipeline::variants`).
    #[serde(default = "d_variants", skip_serializing_if = "is_one")]
    pub variants: usize,
    #[serde(default = "d_min_t")]
    pub compose_min_t: usize,
    #[serde(default)]
    pub rule: Rule,
    #[serde(default)]
    pub sampler: Sampler,
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// [height, width] the model samples at; default: the adapter's vadapt.json.
    #[serde(default)]
    pub resolution: Option<[usize; 2]>,
    /// Frames two neighbouring windows share (default: half the model's frame count).
    #[serde(default)]
    pub window_overlap: Option<usize>,
    /// Per-target seed (default: the global seed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A super-resolution cascade after the base model: `[[target.stages]]`, each a model conditioned on the
    /// previous stage's output upsampled to its resolution (`low_res`) and on the edges at that resolution. The
    /// target's camera is the last stage's output.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// A camera of the dataset that masks what to keep (e.g. `observation.images.robot_mask`, white on the
    /// robot): the output is `m * source + (1 - m) * generated` at the output size, `m` the mask frame's
    /// brightness in [0, 1], so only the scene around the robot is generated (`pipeline::keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_mask: Option<String>,
}

/// One super-resolution stage of a target (the paper's 24x40 -> 48x80 -> 192x320 cascade). Composition with
/// priors happens at the base stage; stages refine what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage model (ModelDir; its conditioning lists `low_res`).
    pub adapter: PathBuf,
    /// [height, width]; default: the stage model's vadapt.json.
    #[serde(default)]
    pub resolution: Option<[usize; 2]>,
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default)]
    pub sampler: Sampler,
    /// Classifier-free guidance on the stage's text (1: none).
    #[serde(default = "d_stage_guidance")]
    pub guidance: f32,
    /// Prompt template (default: `{task}` for models with a text encoder, empty otherwise).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub window_overlap: Option<usize>,
}

fn d_stage_guidance() -> f32 {
    1.0
}

fn d_guidance() -> Drawn {
    Drawn::Fixed(3.0)
}
fn d_variants() -> usize {
    1
}
fn is_one(n: &usize) -> bool {
    *n == 1
}
fn d_min_t() -> usize {
    100
}
fn d_steps() -> usize {
    20
}

impl TargetConfig {
    /// The priors, whichever of the two spellings was used.
    pub fn all_priors(&self) -> Vec<PriorConfig> {
        let mut out = Vec::new();
        if let Some(dir) = &self.prior {
            out.push(PriorConfig {
                dir: dir.clone(),
                // A range's low end; each variant draws its own (`variants::draw`).
                strength: self.prior_strength.map_or_else(d_strength, Drawn::low),
                prompt: self.prior_prompt.clone(),
            });
        }
        out.extend(self.priors.iter().cloned());
        out
    }

    /// The output camera key of this target.
    pub fn camera_key(&self) -> String {
        format!("observation.images.{}", self.name)
    }
}

/// A name usable as a path component and a camera key suffix: `[A-Za-z0-9_-]`, not empty, not starting with `-`.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl PipelineConfig {
    /// Read, parse and validate a pipeline file. Relative model paths are resolved against the file's directory
    /// when they exist there, else against the working directory (so `pipelines/x.toml` may say `models/...`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parse TOML; unknown keys and wrong types are errors naming the key (`file: field "target.guidnce": ...`).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            // toml names an unknown field in the message; point at the line as well.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let named = msg.split('`').nth(1).map(str::to_string);
            // "unknown field `x`" / "missing field `x`" name the key; a wrong type or value ("invalid type:
            // string \"high\", expected f32", "unknown variant `euler`") is named by the key its span sits on.
            let by_name = ["unknown field", "missing field", "duplicate field"]
                .iter()
                .any(|p| msg.starts_with(p));
            let at_span = e.span().and_then(|s| key_at(text, s.start));
            let key = if by_name {
                named.or(at_span)
            } else {
                at_span.or(named)
            }
            .unwrap_or_default();
            let mut loc = Location::file(path);
            if !key.is_empty() {
                loc = loc.field(key);
            }
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            Error::config(loc, format!("{msg}{at}"))
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() && base.join(&*p).exists() {
                *p = base.join(&*p);
            }
        };
        for t in &mut self.targets {
            fix(&mut t.adapter);
            if let Some(p) = &mut t.prior {
                fix(p);
            }
            for p in &mut t.priors {
                fix(&mut p.dir);
            }
            for st in &mut t.stages {
                fix(&mut st.adapter);
            }
        }
    }

    /// Check values that parse but cannot work. `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err =
            |key: String, msg: String| Err(Error::config(Location::file(path).field(key), msg));
        if self.targets.is_empty() {
            return err(
                "target".into(),
                "no [[target]]: the pipeline would produce nothing".into(),
            );
        }
        if self.input.image_key.is_empty() {
            return err("input.image_key".into(), "must not be empty".into());
        }
        if let Some([h, w]) = self.output.resolution {
            if h == 0 || w == 0 || h % 2 == 1 || w % 2 == 1 {
                return err(
                    "output.resolution".into(),
                    format!("[{h}, {w}]: height and width must be positive and even (video encoders need it)"),
                );
            }
            check_side(
                path,
                "output.resolution",
                [h, w],
                crate::limits::MAX_OUTPUT_SIDE,
            )?;
        }
        if self.output.storage == Storage::Video && !cfg!(feature = "video") {
            return err(
                "output.storage".into(),
                "\"video\" needs video I/O, and this vadapt was built without it (no cargo feature `video`): \
                 set `[output] storage = \"images\"` to write the cameras as PNG frames in the data parquet"
                    .into(),
            );
        }
        if self.output.crf > 63 {
            return err(
                "output.crf".into(),
                format!("{} is above 63", self.output.crf),
            );
        }
        if self.output.layout == Layout::Paired {
            let o = &self.output;
            for (set, key) in [
                (o.replace_camera.is_some(), "replace_camera"),
                (o.keep_source, "keep_source"),
            ] {
                if set {
                    return err(
                        format!("output.{key}"),
                        "applies to layout = \"expanded\" only (paired keeps every source episode and adds a camera per target)".into(),
                    );
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let k = |f: &str| format!("target[{i}].{f}");
            // `k("")` is the prefix `target[i].`.
            if !safe_name(&t.name) {
                return err(
                    k("name"),
                    format!("{:?} must be letters, digits, '_' or '-' (it names a camera key and files)", t.name),
                );
            }
            if self.output.keep_source && t.name == SOURCE_TARGET {
                return err(
                    k("name"),
                    format!(
                        "{:?} names the kept source episodes (output.keep_source)",
                        t.name
                    ),
                );
            }
            if !names.insert(t.name.clone()) {
                return err(k("name"), format!("{:?} is used by two targets", t.name));
            }
            if format!("observation.images.{}", t.name) == self.input.image_key {
                return err(
                    k("name"),
                    format!("{:?} would overwrite the input camera", t.name),
                );
            }
            check_model_dir(&t.adapter, path, &k("adapter"))?;
            check_draws(t, &k(""), path, self.output.layout)?;
            if let Some(m) = &t.keep_mask {
                if m.is_empty() || *m == self.input.image_key {
                    return err(
                        k("keep_mask"),
                        format!(
                            "{m:?} must name a mask camera of the dataset other than the input camera (e.g. \
                             \"observation.images.robot_mask\")"
                        ),
                    );
                }
            }
            if t.prior.is_none() && (t.prior_strength.is_some() || t.prior_prompt.is_some()) {
                return err(
                    k("prior_strength"),
                    "prior_strength/prior_prompt without prior".into(),
                );
            }
            for (j, p) in t.all_priors().iter().enumerate() {
                let key = if t.prior.is_some() && j == 0 {
                    k("prior")
                } else {
                    k(&format!(
                        "priors[{}].dir",
                        j - usize::from(t.prior.is_some())
                    ))
                };
                check_model_dir(&p.dir, path, &key)?;
                if !(p.strength.is_finite() && p.strength >= 0.0) {
                    let key = if t.prior.is_some() && j == 0 {
                        k("prior_strength")
                    } else {
                        k(&format!(
                            "priors[{}].strength",
                            j - usize::from(t.prior.is_some())
                        ))
                    };
                    return err(
                        key,
                        format!("λ = {} must be a finite number >= 0", p.strength),
                    );
                }
            }
            let n_priors = t.all_priors().len();
            if t.rule == Rule::Inverse && n_priors != 1 {
                return err(
                    k("rule"),
                    format!("the inverse rule needs exactly one prior, got {n_priors}"),
                );
            }
            if t.rule == Rule::CfgMix && n_priors == 0 {
                return err(k("rule"), "cfg_mix needs at least one prior".into());
            }
            check_sampling(path, &k(""), t.steps, t.resolution, t.prompt.as_deref())?;
            for (j, st) in t.stages.iter().enumerate() {
                let key = k(&format!("stages[{j}]."));
                check_model_dir(&st.adapter, path, &format!("{key}adapter"))?;
                check_sampling(path, &key, st.steps, st.resolution, st.prompt.as_deref())?;
                if !(st.guidance.is_finite() && st.guidance >= 0.0) {
                    return err(
                        format!("{key}guidance"),
                        format!("{} must be a finite number >= 0", st.guidance),
                    );
                }
            }
        }
        Ok(())
    }
}

/// What `augmentation.target` says of a source episode kept by `output.keep_source`.
pub const SOURCE_TARGET: &str = "source";

/// At most this many variants per source episode and target.
pub const MAX_VARIANTS: usize = 10_000;

/// A target's drawn values: `variants`, the prompt lists and the ranges. `prefix` is `target[i].`. Every refusal
/// names the key and the target.
fn check_draws(t: &TargetConfig, prefix: &str, path: &Path, layout: Layout) -> Result<()> {
    let err = |key: &str, msg: String| {
        Err(Error::config(
            Location::file(path).field(format!("{prefix}{key}")),
            format!("{msg} (target {:?})", t.name),
        ))
    };
    if t.variants == 0 || t.variants > MAX_VARIANTS {
        return err(
            "variants",
            format!("{} must be in 1..={MAX_VARIANTS}", t.variants),
        );
    }
    let ranges = [
        ("prior_strength", t.prior_strength),
        ("guidance", Some(t.guidance)),
    ];
    for (key, d) in ranges {
        match d {
            Some(Drawn::Fixed(x)) if !(x.is_finite() && x >= 0.0) => {
                return err(key, format!("{x} must be a finite number >= 0"));
            }
            Some(Drawn::Range(lo, hi)) => {
                if !(lo.is_finite() && hi.is_finite() && lo >= 0.0) {
                    return err(
                        key,
                        format!(
                            "[{lo}, {hi}] is out of bounds: both ends must be finite numbers >= 0"
                        ),
                    );
                }
                if lo > hi {
                    return err(
                        key,
                        format!("[{lo}, {hi}] is inverted: lo must be below hi"),
                    );
                }
                if lo == hi {
                    return err(
                        key,
                        format!("[{lo}, {hi}] is empty: lo must be below hi (write {lo} for a fixed value)"),
                    );
                }
            }
            _ => {}
        }
    }
    for (list, single, key, single_key) in [
        (&t.prompts, &t.prompt, "prompts", "prompt"),
        (
            &t.prior_prompts,
            &t.prior_prompt,
            "prior_prompts",
            "prior_prompt",
        ),
    ] {
        let Some(list) = list else { continue };
        if list.is_empty() {
            return err(key, "is empty: list at least one prompt template".into());
        }
        if single.is_some() {
            return err(key, format!("set {single_key} or {key}, not both"));
        }
        for (j, p) in list.iter().enumerate() {
            if let Some(problem) = super::prompt::template_problem(p) {
                return Err(Error::config(
                    Location::file(path).field(format!("{prefix}{key}[{j}]")),
                    format!("{problem} (target {:?})", t.name),
                ));
            }
        }
    }
    if t.prior_prompts.is_some() && t.prior.is_none() {
        return err(
            "prior_prompts",
            "prior_prompts without prior (it draws the shorthand prior's prompt)".into(),
        );
    }
    if layout == Layout::Paired {
        let randomizing = [
            (t.variants > 1, "variants"),
            (t.prompts.is_some(), "prompts"),
            (t.prior_prompts.is_some(), "prior_prompts"),
            (t.references.is_some(), "references"),
            (
                t.prior_strength.is_some_and(Drawn::is_range),
                "prior_strength",
            ),
            (t.guidance.is_range(), "guidance"),
        ];
        if let Some((_, key)) = randomizing.iter().find(|(on, _)| *on) {
            return err(
                key,
                "draws per variant need [output] layout = \"expanded\" (one episode per variant)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Checks shared by a target and its cascade stages; `prefix` ends in `.` (`target[0].`, `target[0].stages[1].`).
fn check_sampling(
    path: &Path,
    prefix: &str,
    steps: usize,
    resolution: Option<[usize; 2]>,
    prompt: Option<&str>,
) -> Result<()> {
    let err = |key: &str, msg: String| {
        Err(Error::config(
            Location::file(path).field(format!("{prefix}{key}")),
            msg,
        ))
    };
    if steps == 0 || steps > crate::limits::MAX_STEPS {
        return err(
            "steps",
            format!("{steps} must be in 1..={}", crate::limits::MAX_STEPS),
        );
    }
    if let Some([h, w]) = resolution {
        // Two UNet downsamplings at least; 8 keeps every demo model valid.
        if h == 0 || w == 0 || h % 8 != 0 || w % 8 != 0 {
            return err(
                "resolution",
                format!("[{h}, {w}]: height and width must be positive multiples of 8"),
            );
        }
        let key = format!("{prefix}resolution");
        check_side(path, &key, [h, w], crate::limits::MAX_MODEL_SIDE)?;
    }
    if let Some(problem) = prompt.and_then(super::prompt::template_problem) {
        return err("prompt", problem);
    }
    Ok(())
}

/// A resolution's height and width must stay within `max` pixels (crate::limits): 100000x100000 passed every other
/// check, then aborted on a 120 GB allocation.
fn check_side(path: &Path, key: &str, [h, w]: [usize; 2], max: usize) -> Result<()> {
    if h > max || w > max {
        return Err(Error::config(
            Location::file(path).field(key),
            format!("[{h}, {w}]: height and width must be at most {max} pixels"),
        ));
    }
    Ok(())
}

/// The dotted key of the `key = value` line holding byte `pos` of a TOML text, with its table
/// (`target[1].steps` for the second `[[target]]`), if that line is one.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (lhs, _) = line.split_once('=')?;
    let key = lhs.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    // The last table header above the line; for an array of tables, which element.
    let mut table: Option<String> = None;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_string());
        }
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn check_model_dir(dir: &Path, file: &Path, key: &str) -> Result<()> {
    let has_config =
        dir.join("config.json").exists() || dir.join("unet").join("config.json").exists();
    // A symlink loop is reported as one (naming the key), not as a missing directory.
    let there = crate::io::fs::exists(dir).map_err(|e| {
        Error::config(
            Location::file(file).field(key),
            format!("model directory {e}"),
        )
    })?;
    if !there || !dir.is_dir() {
        return Err(Error::config(
            Location::file(file).field(key),
            format!("model directory {} does not exist", dir.display()),
        ));
    }
    if !has_config {
        return Err(Error::config(
            Location::file(file).field(key),
            format!(
                "{} is not a model directory (no config.json or unet/config.json)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PipelineConfig> {
        PipelineConfig::parse(s, Path::new("p.toml"))
    }

    #[test]
    fn storage_parses_is_recorded_only_when_images_and_video_needs_a_video_build() {
        let c =
            parse("[output]\nstorage = \"images\"\n[[target]]\nname = \"a\"\nadapter = \"x\"\n")
                .unwrap();
        assert_eq!(c.output.storage, Storage::Images);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["output"]["storage"], "images");
        // The default is left out of the recorded config: older state files and provenance keep their bytes.
        let d = parse("[[target]]\nname = \"a\"\nadapter = \"x\"\n").unwrap();
        assert_eq!(d.output.storage, Storage::Video);
        assert!(serde_json::to_value(&d).unwrap()["output"]
            .get("storage")
            .is_none());
        let e = parse("[output]\nstorage = \"png\"\n[[target]]\nname = \"a\"\nadapter = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage") && e.contains("p.toml"), "{e}");
        // Validation (the adapter "x" is no model dir, so validation fails on it after the storage check).
        let video = d.validate(Path::new("p.toml")).unwrap_err().to_string();
        let images = c.validate(Path::new("p.toml")).unwrap_err().to_string();
        assert!(images.contains("adapter"), "{images}");
        if cfg!(feature = "video") {
            assert!(video.contains("adapter"), "{video}");
        } else {
            assert!(
                video.contains("output.storage") && video.contains("storage = \"images\""),
                "{video}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[[target]]\nname = \"a\"\nadapter = \"x\"\nguidnce = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("guidnce") && e.contains("p.toml"), "{e}");
    }

    #[test]
    fn defaults_and_both_prior_spellings() {
        let c = parse(
            "seed = 3\n[[target]]\nname = \"a\"\nadapter = \"x\"\nprior = \"p\"\nprior_strength = 0.5\n[[target.priors]]\ndir = \"q\"\nstrength = 0.1\n",
        )
        .unwrap();
        assert_eq!(c.output.layout, Layout::Paired);
        assert_eq!(c.input.image_key, "observation.images.rgb");
        let p = c.targets[0].all_priors();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].strength, p[1].strength), (0.5, 0.1));
        assert_eq!(c.targets[0].sampler, Sampler::Ddim);
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let dir = std::env::temp_dir();
        let good = |extra: &str| {
            format!(
                "[[target]]\nname = \"a\"\nadapter = \"{}\"\n{extra}",
                dir.display()
            )
        };
        // The temp dir is not a model dir: the adapter key is named.
        let e = parse(&good(""))
            .unwrap()
            .validate(Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target[0].adapter"), "{e}");
        let e = parse("[[target]]\nname = \"../x\"\nadapter = \"m\"\n")
            .unwrap()
            .validate(Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("target[0].name"), "{e}");
        let e = parse("[[target]]\nname = \"a\"\nadapter = \"m\"\nsampler = \"euler\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("euler"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key_with_its_table() {
        for (text, key) in [
            ("seed = -1\n", "seed"),
            ("[output]\ncrf = \"low\"\n", "output.crf"),
            (
                "[[target]]\nname = \"a\"\nadapter = \"x\"\n[[target]]\nname = \"b\"\nadapter = \"x\"\nsteps = 2.5\n",
                "target[1].steps",
            ),
            (
                "[[target]]\nname = \"a\"\nadapter = \"x\"\nsampler = \"euler\"\n",
                "target[0].sampler",
            ),
        ] {
            let e = parse(text).unwrap_err();
            let field = e.location().and_then(|l| l.field.clone());
            assert_eq!(field.as_deref(), Some(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_config_without_draws_records_as_before_and_ranges_round_trip() {
        // meta/augmentation.json and .vadapt/state.json hold the config: the new keys stay out of a config that
        // does not use them, so such outputs keep their bytes.
        let c = parse("[[target]]\nname = \"a\"\nadapter = \"x\"\nprior = \"p\"\nprior_strength = 0.4\nguidance = 1.0\n")
            .unwrap();
        let j = serde_json::to_value(&c).unwrap();
        for key in ["variants", "prompts", "prior_prompts"] {
            assert!(j["target"][0].get(key).is_none(), "{key}: {j}");
        }
        assert!(
            j["output"].get("replace_camera").is_none() && j["output"].get("keep_source").is_none()
        );
        assert_eq!(j["target"][0]["guidance"], serde_json::json!(1.0));
        assert_eq!(j["target"][0]["prior_strength"], serde_json::json!(0.4f32));
        let r = parse("[output]\nlayout = \"expanded\"\n[[target]]\nname = \"a\"\nadapter = \"x\"\nguidance = [1, 2.5]\nvariants = 3\n")
            .unwrap();
        assert_eq!(r.targets[0].guidance, Drawn::Range(1.0, 2.5));
        let back: PipelineConfig =
            serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
