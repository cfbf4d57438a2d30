//! RLDS datasets as tensorflow-datasets writes them: TFRecord shards of `tf.train.Example`s, one
//! Example per episode, described by the builder's `features.json` (a tfds `FeaturesDict` in proto JSON)
//! and `dataset_info.json` (splits, shard lengths, shard file template).
//!
//! How tfds flattens an episode (`tensorflow_datasets/core/features/{features_dict,dataset_feature,
//! sequence_feature}.py` and `core/example_serializer.py`): nested dict keys are joined with `/`
//! (`steps/observation/rgb`); a `Dataset` (the RLDS `steps`) is stored like a `Sequence`, i.e. every
//! per-step leaf becomes ONE list holding all steps back to back: images as a BytesList of encoded
//! images (one per step), floats as a FloatList of `steps * prod(shape)` values, bools and integers
//! as an Int64List, strings as a BytesList.

pub mod example;
pub mod reader;
pub mod tfrecord;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array,
};
use arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Location, Result};

pub use reader::RldsDataset;
pub use writer::{RldsWriteOptions, RldsWriter};

/// One leaf of a tfds `FeaturesDict`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafSpec {
    /// Flattened path, e.g. `steps/observation/rgb`.
    pub path: String,
    /// Inside the `steps` Dataset (one value per step) or episode-level.
    pub per_step: bool,
    pub kind: LeafKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeafKind {
    /// A tensor: dtype name as tfds writes it (`float32`, `int32`, `bool`, `string`, ...) and shape
    /// (`None` for an unknown dimension).
    Tensor {
        dtype: String,
        shape: Vec<Option<usize>>,
    },
    /// An encoded image (`jpeg` / `png`) of shape (H, W, C), dimensions possibly unknown.
    Image {
        encoding: String,
        shape: Vec<Option<usize>>,
    },
}

impl LeafKind {
    /// Values per step (product of the known shape; unknown dimensions are not supported for tensors).
    pub fn values_per_item(&self) -> Option<usize> {
        match self {
            LeafKind::Tensor { shape, .. } => shape
                .iter()
                .try_fold(1usize, |acc, d| d.and_then(|d| acc.checked_mul(d))),
            LeafKind::Image { .. } => Some(1),
        }
    }
}

/// Parse a tfds `features.json` into its leaves, in file order.
pub fn parse_features(json: &Value, loc: &Location) -> Result<Vec<LeafSpec>> {
    let mut out = Vec::new();
    walk(json, "", false, loc, &mut out)?;
    for leaf in &out {
        let (LeafKind::Tensor { shape, .. } | LeafKind::Image { shape, .. }) = &leaf.kind;
        let known = shape
            .iter()
            .flatten()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if known.is_none_or(|n| n > MAX_VALUES_PER_STEP) {
            return Err(Error::invalid(
                loc.clone().field(&leaf.path),
                format!(
                    "declared shape {:?} is too large (more than {MAX_VALUES_PER_STEP} values per step)",
                    shape.iter().map(|d| d.map_or(-1, |d| d as i128)).collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(out)
}

/// Refuse declared shapes beyond this many values per step: no real feature is that large, and a corrupt
/// `features.json` must not make `steps * values` overflow or drive a huge allocation.
pub const MAX_VALUES_PER_STEP: usize = 1 << 31;

fn dims(shape: Option<&Value>) -> Vec<Option<usize>> {
    let Some(list) = shape
        .and_then(|s| s.get("dimensions"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|d| {
            // proto JSON writes int64 as strings; -1 means unknown.
            let v = d
                .as_i64()
                .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(-1);
            usize::try_from(v).ok()
        })
        .collect()
}

fn walk(
    node: &Value,
    prefix: &str,
    per_step: bool,
    loc: &Location,
    out: &mut Vec<LeafSpec>,
) -> Result<()> {
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    if let Some(fd) = node.get("featuresDict") {
        let features = fd
            .get("features")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::invalid(
                    loc.clone().field(prefix),
                    "featuresDict without a \"features\" object",
                )
            })?;
        for (name, child) in features {
            walk(child, &join(name), per_step, loc, out)?;
        }
        return Ok(());
    }
    if let Some(seq) = node.get("sequence") {
        if per_step {
            return Err(Error::unsupported(
                loc.clone().field(prefix),
                "nested sequences (ragged steps) are not supported",
            ));
        }
        let feature = seq.get("feature").ok_or_else(|| {
            Error::invalid(loc.clone().field(prefix), "sequence without \"feature\"")
        })?;
        return walk(feature, prefix, true, loc, out);
    }
    if let Some(img) = node.get("image") {
        let encoding = img
            .get("encodingFormat")
            .and_then(Value::as_str)
            .unwrap_or("png")
            .to_string();
        out.push(LeafSpec {
            path: prefix.to_string(),
            per_step,
            kind: LeafKind::Image {
                encoding,
                shape: dims(img.get("shape")),
            },
        });
        return Ok(());
    }
    if let Some(t) = node.get("tensor") {
        let dtype = t
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or("float32")
            .to_string();
        out.push(LeafSpec {
            path: prefix.to_string(),
            per_step,
            kind: LeafKind::Tensor {
                dtype,
                shape: dims(t.get("shape")),
            },
        });
        return Ok(());
    }
    let class = node
        .get("pythonClassName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    Err(Error::unsupported(
        loc.clone().field(prefix),
        format!("tfds feature class {class} is not supported"),
    ))
}

/// How an RLDS dataset maps onto an [`Episode`](crate::episode::Episode): feature path -> output key.
/// Unmapped per-step images become `observation.images.<last path component>`; unmapped per-step tensors
/// become their path without `steps/`, with `/` replaced by `.`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RldsMapping {
    /// Frames per second (RLDS does not record it).
    pub fps: f64,
    /// Image feature path -> camera key.
    #[serde(default)]
    pub cameras: BTreeMap<String, String>,
    /// Tensor feature path -> column key.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Feature holding the instruction: int32 UTF-8 codes (zero padded) or a string, per step or per episode.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Features to drop.
    #[serde(default)]
    pub ignore: Vec<String>,
}

impl RldsMapping {
    /// LanguageTable (`language_table` 0.0.1 on the RLDS/Open-X bucket), 10 Hz.
    pub fn language_table() -> Self {
        let columns = [
            (
                "steps/observation/effector_translation",
                "observation.state",
            ),
            (
                "steps/observation/effector_target_translation",
                "observation.effector_target_translation",
            ),
            ("steps/action", "action"),
            ("steps/reward", "next.reward"),
            ("steps/is_first", "is_first"),
            ("steps/is_last", "is_last"),
            ("steps/is_terminal", "is_terminal"),
        ];
        RldsMapping {
            fps: 10.0,
            cameras: [(
                "steps/observation/rgb".to_string(),
                "observation.images.rgb".to_string(),
            )]
            .into(),
            columns: columns
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            instruction: Some("steps/observation/instruction".to_string()),
            ignore: vec!["episode_id".to_string()],
        }
    }

    /// Output key of a leaf, or None when it is dropped (instruction, ignored, episode-level tensors).
    pub fn key_for(&self, leaf: &LeafSpec) -> Option<String> {
        if self.ignore.contains(&leaf.path)
            || self.instruction.as_deref() == Some(&leaf.path)
            || !leaf.per_step
        {
            return None;
        }
        match &leaf.kind {
            LeafKind::Image { .. } => {
                Some(self.cameras.get(&leaf.path).cloned().unwrap_or_else(|| {
                    format!(
                        "observation.images.{}",
                        leaf.path.rsplit('/').next().unwrap_or(&leaf.path)
                    )
                }))
            }
            LeafKind::Tensor { .. } => {
                Some(self.columns.get(&leaf.path).cloned().unwrap_or_else(|| {
                    leaf.path
                        .strip_prefix("steps/")
                        .unwrap_or(&leaf.path)
                        .replace('/', ".")
                }))
            }
        }
    }
}

impl Default for RldsMapping {
    fn default() -> Self {
        Self::language_table()
    }
}

/// Decode an instruction stored as UTF-8 byte codes in int32s, zero padded (LanguageTable).
/// Codes outside 0..=255 and invalid UTF-8 are errors at `loc`.
pub fn decode_instruction(codes: &[i64], loc: &Location) -> Result<String> {
    let end = codes.iter().position(|&c| c == 0).unwrap_or(codes.len());
    let bytes = codes[..end]
        .iter()
        .map(|&c| {
            u8::try_from(c).map_err(|_| {
                Error::invalid(loc.clone(), format!("instruction code {c} is not a byte"))
            })
        })
        .collect::<Result<Vec<u8>>>()?;
    String::from_utf8(bytes)
        .map_err(|e| Error::invalid(loc.clone(), format!("instruction is not valid UTF-8: {e}")))
}

/// Encode an instruction as `len` int32 UTF-8 codes, zero padded (LanguageTable's `instruction`).
pub fn encode_instruction(text: &str, len: usize, loc: &Location) -> Result<Vec<i64>> {
    let bytes = text.as_bytes();
    if bytes.len() > len {
        return Err(Error::invalid(
            loc.clone(),
            format!(
                "instruction of {} UTF-8 bytes does not fit in {len}",
                bytes.len()
            ),
        ));
    }
    if bytes.contains(&0) {
        return Err(Error::invalid(
            loc.clone(),
            "instruction contains a NUL byte (the padding value)",
        ));
    }
    let mut codes: Vec<i64> = bytes.iter().map(|&b| i64::from(b)).collect();
    codes.resize(len, 0);
    Ok(codes)
}

/// An arrow column of `rows` rows with `width` values each: a plain array for width 1 (LeRobot stores
/// shape [1] features as scalars), a FixedSizeList otherwise.
pub(crate) fn column(values: ArrayRef, width: usize) -> Result<ArrayRef> {
    if width == 1 {
        return Ok(values);
    }
    let field = Arc::new(Field::new("item", values.data_type().clone(), true));
    let list = FixedSizeListArray::try_new(field, width as i32, values, None)
        .map_err(|e| Error::table(Location::none(), e))?;
    Ok(Arc::new(list))
}

pub(crate) fn f32_array(v: Vec<f32>) -> ArrayRef {
    Arc::new(Float32Array::from(v))
}
pub(crate) fn i64_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}
pub(crate) fn i32_array(v: Vec<i32>) -> ArrayRef {
    Arc::new(Int32Array::from(v))
}
pub(crate) fn bool_array(v: Vec<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from(v))
}

/// The data type of the values inside a column (the list item type for FixedSizeList columns).
pub(crate) fn item_type(dt: &DataType) -> &DataType {
    match dt {
        DataType::FixedSizeList(f, _) => f.data_type(),
        other => other,
    }
}
