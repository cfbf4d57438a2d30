//! Randomized targets (docs/design.md "Pipeline config", "Domain randomization"): a `[[target]]` with
//! `variants = N` makes N outputs per source episode, each drawing its prompt from `prompts` (or its prior's from
//! `prior_prompts`) and its `prior_strength` / `guidance` from `[lo, hi]` ranges. This module says what each variant
//! draws, the label that salts its noise and names its unit, which episodes the expanded layout writes for a source
//! episode (the kept source, then every target's variants), and what is recorded of each: the `augmentation.*`
//! columns and one `episodes` entry per output episode in `meta/augmentation.json`.
//!
//! Every draw comes from its own stream, seeded with `rng::derive_seed(target seed, source episode,
//! "<target>/draw/<key>", variant)`, like every other seed of a run: the draws, and so the bytes, do not depend on
//! sharding, resume or thread count. Variant 0 is labelled with the target's name alone, so a target with one
//! variant and fixed values samples exactly as before variants existed.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{Drawn, Layout, PipelineConfig, TargetConfig, SOURCE_TARGET};
use crate::episode::{Episode, EpisodeIndex, Feature, Features, Frames};
use crate::error::{Error, Location, Result};
use crate::io::EpisodeSource;
use crate::rng::{derive_seed, NoiseRng};

/// The camera of `replace_camera = false` in the expanded layout: the variant, next to the untouched source camera.
pub const AUGMENTED_KEY: &str = "observation.images.augmented";

/// What one variant of a target uses for one source episode: drawn, or the target's fixed values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    pub variant: usize,
    /// Salts the variant's noise seeds and names its unit: the target's name for variant 0, `<name>.v<k>` after.
    pub label: String,
    /// The target's prompt template (`prompts` drawn, or `prompt`); `None`: the model's default.
    pub prompt: Option<String>,
    /// The shorthand prior's prompt template (`prior_prompts` drawn, or `prior_prompt`); `None`: the target's.
    pub prior_prompt: Option<String>,
    /// The shorthand prior's λ; `None` without a shorthand prior.
    pub prior_strength: Option<f32>,
    pub guidance: f32,
    /// The reference image (`references` drawn, or `reference`), as the config names it; `None`: the source's
    /// first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
}

/// The label of variant `variant` of target `name` (target names are `[A-Za-z0-9_-]`, so `.` cannot collide).
pub fn label(name: &str, variant: usize) -> String {
    if variant == 0 {
        name.to_string()
    } else {
        format!("{name}.v{variant}")
    }
}

/// The target draws something per variant (more than one variant, a prompt list or a range).
pub fn randomized(t: &TargetConfig) -> bool {
    t.variants > 1
        || t.prompts.is_some()
        || t.prior_prompts.is_some()
        || t.references.is_some()
        || t.prior_strength.is_some_and(Drawn::is_range)
        || t.guidance.is_range()
}

/// The output records the draws (the `augmentation.variant`, `.prompt`, `.prior_prompt`, `.prior_strength`,
/// `.guidance` columns): an expanded layout with at least one randomized target.
pub fn records_draws(cfg: &PipelineConfig) -> bool {
    cfg.output.layout == Layout::Expanded && cfg.targets.iter().any(randomized)
}

/// What variant `variant` of `t` uses for source episode `episode`; `seed` is the target's seed.
pub fn draw(t: &TargetConfig, seed: u64, episode: u64, variant: usize) -> Draw {
    let stream = |key: &str| {
        let salt = format!("{}/draw/{key}", t.name);
        NoiseRng::new(derive_seed(seed, episode, &salt, variant as u64))
    };
    // One item of `list` (uniformly, from the key's stream), or `single` without a list.
    fn pick<T: Clone>(
        list: &Option<Vec<T>>,
        single: &Option<T>,
        mut stream: impl FnMut() -> NoiseRng,
    ) -> Option<T> {
        match list {
            Some(l) if !l.is_empty() => Some(l[stream().below(l.len())].clone()),
            _ => single.clone(),
        }
    }
    let value = |d: Drawn, key: &str| match d {
        Drawn::Fixed(x) => x,
        Drawn::Range(lo, hi) => lo + stream(key).uniform() * (hi - lo),
    };
    let prior_strength = t.prior.as_ref().map(|_| match t.prior_strength {
        Some(d) => value(d, "prior_strength"),
        None => t.all_priors()[0].strength,
    });
    Draw {
        variant,
        label: label(&t.name, variant),
        prompt: pick(&t.prompts, &t.prompt, || stream("prompt")),
        prior_prompt: pick(&t.prior_prompts, &t.prior_prompt, || stream("prior_prompt")),
        prior_strength,
        guidance: value(t.guidance, "guidance"),
        reference: pick(&t.references, &t.reference, || stream("reference")),
    }
}

/// Prior `j`'s λ as `meta/augmentation.json` records it: the number, or the shorthand prior's drawn range.
pub fn strength_json(t: &TargetConfig, j: usize, strength: f32) -> serde_json::Value {
    match t.prior_strength {
        Some(d @ Drawn::Range(..)) if j == 0 && t.prior.is_some() => json!(d),
        _ => json!(strength),
    }
}

/// One sampled video of a source episode: variant `variant` of target `target` (an index into the run's targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSlot {
    pub target: usize,
    pub variant: usize,
}

/// Every unit of a source episode, target by target, variant by variant (the order the expanded layout writes).
pub fn unit_slots<'a>(targets: impl IntoIterator<Item = &'a TargetConfig>) -> Vec<UnitSlot> {
    targets
        .into_iter()
        .enumerate()
        .flat_map(|(target, t)| (0..t.variants).map(move |variant| UnitSlot { target, variant }))
        .collect()
}

/// One output episode of the expanded layout: the kept source episode, or a target's variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    Source,
    Variant { target: usize, draw: Draw },
}

/// The expanded layout's output episodes of source episode `episode`, in order: the source (with
/// `output.keep_source`), then every unit of [`unit_slots`].
pub fn slots(cfg: &PipelineConfig, episode: u64) -> Vec<Slot> {
    let source = cfg.output.keep_source.then_some(Slot::Source);
    let variants = unit_slots(&cfg.targets).into_iter().map(|u| {
        let t = &cfg.targets[u.target];
        Slot::Variant {
            target: u.target,
            draw: draw(t, t.seed.unwrap_or(cfg.seed), episode, u.variant),
        }
    });
    source.into_iter().chain(variants).collect()
}

/// `meta/augmentation.json` `episodes`: one entry per output episode of the expanded layout, in output order,
/// with everything its variant drew; `vadapt regenerate` samples an entry's episode again from it alone.
pub fn episode_entries(cfg: &PipelineConfig, written: &[u64]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for &s in written {
        for slot in slots(cfg, s) {
            let entry = match slot {
                Slot::Source => json!({"source_episode": s, "target": SOURCE_TARGET}),
                Slot::Variant { target, draw } => json!({
                    "source_episode": s,
                    "target": cfg.targets[target].name,
                    "draw": draw,
                }),
            };
            out.push(entry);
        }
    }
    out
}

/// What the `augmentation.*` columns of one output episode hold (prompts as the models got them).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub target: String,
    pub variant: usize,
    pub prompt: String,
    pub prior_prompt: String,
    pub prior_strength: f32,
    pub guidance: f32,
}

impl Record {
    /// The record of a kept source episode: nothing drawn.
    pub fn source() -> Self {
        Self {
            target: SOURCE_TARGET.into(),
            variant: 0,
            prompt: String::new(),
            prior_prompt: String::new(),
            prior_strength: 0.0,
            guidance: 0.0,
        }
    }
}

fn scalar(dtype: &str) -> Feature {
    Feature {
        dtype: dtype.into(),
        shape: vec![1],
        names: None,
        info: None,
    }
}

/// The features of the `augmentation.*` columns of the expanded layout (`draws`: [`records_draws`]).
pub fn record_features(features: &mut Features, draws: bool) {
    features.insert("augmentation.source_episode_index".into(), scalar("int64"));
    features.insert("augmentation.target".into(), scalar("string"));
    if draws {
        features.insert("augmentation.variant".into(), scalar("int64"));
        features.insert("augmentation.prompt".into(), scalar("string"));
        features.insert("augmentation.prior_prompt".into(), scalar("string"));
        features.insert("augmentation.prior_strength".into(), scalar("float32"));
        features.insert("augmentation.guidance".into(), scalar("float32"));
    }
}

/// Output episode `index` of the expanded layout: source episode `ep`'s columns, bit-exact, with the
/// `augmentation.*` columns appended, and `frames` as camera `key`.
pub fn expanded_episode(
    ep: &Episode,
    index: u64,
    key: &str,
    frames: Vec<RgbImage>,
    rec: &Record,
    draws: bool,
) -> Result<Episode> {
    let n = ep.len();
    let mut e = ep.clone();
    e.index = EpisodeIndex(index);
    e.cameras
        .insert(key.to_string(), Frames::from_images(frames));
    let mut fields: Vec<Field> = ep
        .columns
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut cols: Vec<ArrayRef> = ep.columns.columns().to_vec();
    let mut push = |name: &str, t: DataType, c: ArrayRef| {
        fields.push(Field::new(name, t, false));
        cols.push(c);
    };
    let text = |s: &str| -> ArrayRef { Arc::new(StringArray::from(vec![s; n])) };
    let float = |x: f32| -> ArrayRef { Arc::new(Float32Array::from(vec![x; n])) };
    let source = Arc::new(Int64Array::from(vec![ep.index.0 as i64; n]));
    push("augmentation.source_episode_index", DataType::Int64, source);
    push("augmentation.target", DataType::Utf8, text(&rec.target));
    if draws {
        let variant = Arc::new(Int64Array::from(vec![rec.variant as i64; n]));
        push("augmentation.variant", DataType::Int64, variant);
        push("augmentation.prompt", DataType::Utf8, text(&rec.prompt));
        push(
            "augmentation.prior_prompt",
            DataType::Utf8,
            text(&rec.prior_prompt),
        );
        push(
            "augmentation.prior_strength",
            DataType::Float32,
            float(rec.prior_strength),
        );
        push(
            "augmentation.guidance",
            DataType::Float32,
            float(rec.guidance),
        );
    }
    e.columns = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|err| Error::invalid(Location::none().episode(ep.index.0), err.to_string()))?;
    Ok(e)
}

/// The expanded layout's camera: the input camera's key, or [`AUGMENTED_KEY`] with `replace_camera = false`.
pub fn expanded_key(cfg: &PipelineConfig) -> &str {
    if cfg.output.replaces_camera() {
        &cfg.input.image_key
    } else {
        AUGMENTED_KEY
    }
}

/// Checks against the dataset, before anything is written: `replace_camera = false` needs a free
/// [`AUGMENTED_KEY`].
pub fn check_dataset(
    cfg: &PipelineConfig,
    source: &dyn EpisodeSource,
    file: &std::path::Path,
) -> Result<()> {
    if cfg.output.layout == Layout::Expanded
        && !cfg.output.replaces_camera()
        && source.features().contains_key(AUGMENTED_KEY)
    {
        return Err(Error::config(
            Location::file(file).field("output.replace_camera"),
            format!(
                "the dataset already has {AUGMENTED_KEY}, where replace_camera = false would write"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn target(extra: &str) -> TargetConfig {
        let text = format!(
            "[output]\nlayout = \"expanded\"\n[[target]]\nname = \"clay\"\nadapter = \"a\"\nprior = \"p\"\n{extra}"
        );
        PipelineConfig::parse(&text, Path::new("p.toml"))
            .unwrap()
            .targets
            .remove(0)
    }

    #[test]
    fn fixed_values_draw_themselves_and_variant_zero_keeps_the_name() {
        let t = target(
            "prior_strength = 0.4\nprior_prompt = \"{task}, night style\"\nguidance = 1.0\n",
        );
        assert!(!randomized(&t));
        let d = draw(&t, 0, 3, 0);
        assert_eq!(d.label, "clay");
        assert_eq!(d.prior_prompt.as_deref(), Some("{task}, night style"));
        assert_eq!(
            (d.prior_strength, d.guidance, d.prompt),
            (Some(0.4), 1.0, None)
        );
    }

    #[test]
    fn draws_stay_in_their_ranges_and_lists_and_depend_only_on_their_seed() {
        let t = target(
            "variants = 4\nprior_strength = [0.2, 0.6]\nguidance = [1.0, 2.0]\nprior_prompts = [\"a\", \"b\", \"c\"]\n",
        );
        assert!(randomized(&t));
        let mut seen = std::collections::BTreeSet::new();
        for ep in 0..20 {
            for v in 0..4 {
                let d = draw(&t, 7, ep, v);
                assert_eq!(d, draw(&t, 7, ep, v), "same seed, same draw");
                let s = d.prior_strength.unwrap();
                assert!((0.2..=0.6).contains(&s), "{s}");
                assert!((1.0..=2.0).contains(&d.guidance), "{}", d.guidance);
                seen.insert(d.prior_prompt.unwrap());
            }
        }
        assert_eq!(seen.len(), 3, "every prompt of the list is drawn: {seen:?}");
        assert_ne!(draw(&t, 7, 0, 1), draw(&t, 7, 0, 2));
        assert_eq!(draw(&t, 7, 0, 2).label, "clay.v2");
    }

    #[test]
    fn slots_put_the_kept_source_first_then_targets_by_variant() {
        let text = "[output]\nlayout = \"expanded\"\nkeep_source = true\n\
                    [[target]]\nname = \"a\"\nadapter = \"m\"\nvariants = 2\n\
                    [[target]]\nname = \"b\"\nadapter = \"m\"\n";
        let cfg = PipelineConfig::parse(text, Path::new("p.toml")).unwrap();
        let s = slots(&cfg, 5);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], Slot::Source);
        let labels: Vec<_> = s[1..]
            .iter()
            .map(|x| match x {
                Slot::Variant { draw, .. } => draw.label.clone(),
                Slot::Source => unreachable!(),
            })
            .collect();
        assert_eq!(labels, ["a", "a.v1", "b"]);
        let entries = episode_entries(&cfg, &[5]);
        assert_eq!(entries[0]["target"], "source");
        assert_eq!(entries[2]["draw"]["variant"], 1);
    }
}
