//! Writing episodes as an RLDS builder directory in the LanguageTable layout: TFRecord shards of one
//! `tf.train.Example` per episode, `features.json` (tfds FeaturesDict proto JSON) and `dataset_info.json`,
//! laid out the way tfds' own writer lays them out so that our reader and `tfds.builder_from_directory`
//! both read the result.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt8Type,
};
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::example::{Example, Feature as TfFeature};
use super::tfrecord::TfRecordWriter;
use super::{encode_instruction, item_type, RldsMapping};
use crate::episode::Episode;
use crate::error::{Error, Location, Result};

/// Columns LeRobot derives itself; not written to RLDS.
const BOOKKEEPING: [&str; 5] = [
    "timestamp",
    "frame_index",
    "episode_index",
    "index",
    "task_index",
];

#[derive(Debug, Clone)]
pub struct RldsWriteOptions {
    /// Builder name (`{DATASET}` in shard names).
    pub name: String,
    pub version: String,
    pub split: String,
    /// Episodes per TFRecord shard.
    pub episodes_per_shard: usize,
    pub jpeg_quality: u8,
    /// Length of the int32 instruction codes (LanguageTable: 512).
    pub instruction_len: usize,
    /// Column and camera keys -> feature paths: the inverse of this mapping (LanguageTable by default).
    pub mapping: RldsMapping,
}

impl Default for RldsWriteOptions {
    fn default() -> Self {
        Self {
            name: "language_table".into(),
            version: "0.0.1".into(),
            split: "train".into(),
            episodes_per_shard: 64,
            jpeg_quality: 95,
            instruction_len: 512,
            mapping: RldsMapping::language_table(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Image {
        key: String,
        height: u32,
        width: u32,
    },
    /// `dtype` as tfds names it; `width` values per step (shape [] when 1 and the column is scalar).
    Tensor {
        key: String,
        dtype: &'static str,
        shape: Vec<usize>,
    },
}

/// Streams episodes into TFRecord shards; [`finish`](Self::finish) names the shards and writes the JSON files.
pub struct RldsWriter {
    dir: PathBuf,
    opts: RldsWriteOptions,
    /// Feature path -> leaf, fixed by the first episode.
    schema: Option<BTreeMap<String, Leaf>>,
    current: Option<TfRecordWriter<BufWriter<File>>>,
    /// Temporary shard files and their record counts.
    shards: Vec<(PathBuf, u64)>,
}

impl RldsWriter {
    /// Writes into `dataset_dir/<version>/` (so both `dataset_dir` and the version directory open with the reader).
    pub fn create(dataset_dir: impl AsRef<Path>, opts: RldsWriteOptions) -> Result<Self> {
        let dir = dataset_dir.as_ref().join(&opts.version);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(e, &dir))?;
        if opts.episodes_per_shard == 0 {
            return Err(Error::config(
                Location::none().field("episodes_per_shard"),
                "must be at least 1",
            ));
        }
        Ok(Self {
            dir,
            opts,
            schema: None,
            current: None,
            shards: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for_camera(&self, key: &str) -> String {
        if let Some((p, _)) = self
            .opts
            .mapping
            .cameras
            .iter()
            .find(|(_, k)| k.as_str() == key)
        {
            return p.clone();
        }
        let leaf = key
            .strip_prefix("observation.images.")
            .unwrap_or(key)
            .replace('.', "_");
        format!("steps/observation/{leaf}")
    }

    fn path_for_column(&self, key: &str) -> String {
        if let Some((p, _)) = self
            .opts
            .mapping
            .columns
            .iter()
            .find(|(_, k)| k.as_str() == key)
        {
            return p.clone();
        }
        // The reader's default maps `steps/a/b` back to `a.b`.
        format!("steps/{}", key.replace('.', "/"))
    }

    fn schema_of(&self, ep: &Episode, loc: &Location) -> Result<BTreeMap<String, Leaf>> {
        let mut schema = BTreeMap::new();
        for (key, frames) in &ep.cameras {
            let (height, width) = frames.size();
            schema.insert(
                self.path_for_camera(key),
                Leaf::Image {
                    key: key.clone(),
                    height,
                    width,
                },
            );
        }
        for field in ep.columns.schema().fields() {
            let key = field.name();
            if BOOKKEEPING.contains(&key.as_str()) {
                continue;
            }
            let floc = loc.clone().field(key);
            let dtype = match item_type(field.data_type()) {
                DataType::Float16 | DataType::Float32 => "float32",
                DataType::Float64 => "float64",
                DataType::Boolean => "bool",
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::UInt8
                | DataType::UInt16 => "int32",
                DataType::Int64 | DataType::UInt32 => "int64",
                other => {
                    return Err(Error::unsupported(
                        floc,
                        format!("column type {other} cannot be written to RLDS"),
                    ))
                }
            };
            let shape = match field.data_type() {
                DataType::FixedSizeList(_, n) => vec![*n as usize],
                _ => Vec::new(),
            };
            schema.insert(
                self.path_for_column(key),
                Leaf::Tensor {
                    key: key.clone(),
                    dtype,
                    shape,
                },
            );
        }
        if let Some(p) = &self.opts.mapping.instruction {
            schema.insert(
                p.clone(),
                Leaf::Tensor {
                    key: String::new(),
                    dtype: "int32",
                    shape: vec![self.opts.instruction_len],
                },
            );
        }
        schema.insert(
            "episode_id".into(),
            Leaf::Tensor {
                key: String::new(),
                dtype: "string",
                shape: Vec::new(),
            },
        );
        Ok(schema)
    }

    /// Append one episode (one record).
    pub fn write_episode(&mut self, ep: &Episode) -> Result<()> {
        let loc = Location::file(&self.dir).episode(ep.index.0);
        let schema = self.schema_of(ep, &loc)?;
        match &self.schema {
            None => self.schema = Some(schema.clone()),
            Some(first) if *first != schema => {
                return Err(Error::invalid(loc, "episode's cameras, sizes or columns differ from the first episode's; RLDS needs one schema"));
            }
            Some(_) => {}
        }
        let n = ep.len();
        let mut map = BTreeMap::new();
        for (path, leaf) in &schema {
            let floc = loc.clone().field(path);
            let feature = match leaf {
                Leaf::Image { key, .. } => {
                    let frames = ep
                        .cameras
                        .get(key)
                        .ok_or_else(|| Error::invalid(floc.clone(), "camera missing"))?
                        .decode()?;
                    if frames.len() != n {
                        return Err(Error::invalid(
                            floc,
                            format!("{} frames for {n} rows", frames.len()),
                        ));
                    }
                    let quality = self.opts.jpeg_quality;
                    let encoded = frames
                        .par_iter()
                        .enumerate()
                        .map(|(i, img)| {
                            let mut buf = Vec::new();
                            JpegEncoder::new_with_quality(&mut buf, quality)
                                .encode_image(img)
                                .map_err(|e| {
                                    Error::invalid(
                                        floc.clone().frame(i as u64),
                                        format!("JPEG encoding failed: {e}"),
                                    )
                                })?;
                            Ok(buf)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    TfFeature::bytes(encoded)
                }
                Leaf::Tensor {
                    dtype: "string", ..
                } => TfFeature::bytes(vec![ep.index.0.to_string().into_bytes()]),
                Leaf::Tensor { key, .. } if key.is_empty() => {
                    let codes = encode_instruction(&ep.task, self.opts.instruction_len, &floc)?;
                    let mut all = Vec::with_capacity(codes.len() * n);
                    for _ in 0..n {
                        all.extend_from_slice(&codes);
                    }
                    TfFeature::int64s(all)
                }
                Leaf::Tensor { key, .. } => {
                    let col = ep
                        .columns
                        .column_by_name(key)
                        .ok_or_else(|| Error::invalid(floc.clone(), "column missing"))?;
                    column_feature(col, &floc)?
                }
            };
            map.insert(path.clone(), feature);
        }
        let bytes = Example::from_features(map).to_bytes();

        if self.current.is_none() {
            let tmp = self
                .dir
                .join(format!(".shard-{:05}.tmp", self.shards.len()));
            self.current = Some(TfRecordWriter::create(&tmp)?);
            self.shards.push((tmp, 0));
        }
        if let (Some(w), Some(last)) = (self.current.as_mut(), self.shards.last_mut()) {
            w.write_record(&bytes)?;
            last.1 += 1;
            if last.1 as usize >= self.opts.episodes_per_shard {
                if let Some(w) = self.current.take() {
                    w.finish()?;
                }
            }
        }
        Ok(())
    }

    /// Close the last shard, give shards their final names, write `features.json` and `dataset_info.json`.
    /// Returns the version directory.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(w) = self.current.take() {
            w.finish()?;
        }
        let total = self.shards.len();
        let mut num_bytes = 0u64;
        let mut lengths = Vec::new();
        for (i, (tmp, count)) in self.shards.iter().enumerate() {
            let name = format!(
                "{}-{}.tfrecord-{i:05}-of-{total:05}",
                self.opts.name, self.opts.split
            );
            let dst = self.dir.join(name);
            num_bytes += std::fs::metadata(tmp).map_err(|e| Error::io(e, tmp))?.len();
            std::fs::rename(tmp, &dst).map_err(|e| Error::io(e, &dst))?;
            lengths.push(count.to_string());
        }
        let schema = self.schema.clone().unwrap_or_default();
        let features = features_json(&schema);
        let info = json!({
            "name": self.opts.name,
            "version": self.opts.version,
            "fileFormat": "tfrecord",
            "moduleName": "vadapt",
            "description": "Written by vadapt (RLDS, LanguageTable layout).",
            "splits": [{
                "name": self.opts.split,
                "numBytes": num_bytes.to_string(),
                "shardLengths": lengths,
                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            }],
        });
        for (file, value) in [("features.json", features), ("dataset_info.json", info)] {
            let path = self.dir.join(file);
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| Error::invalid(Location::file(&path), e.to_string()))?;
            crate::io::fs::write_atomic(&path, text.as_bytes())?;
        }
        Ok(self.dir)
    }
}

/// One column as a tf.train.Feature: floats as a FloatList, ints and bools as an Int64List, rows back to back.
fn column_feature(col: &ArrayRef, loc: &Location) -> Result<TfFeature> {
    let flat: ArrayRef = match col.data_type() {
        DataType::FixedSizeList(_, width) => {
            let list: &FixedSizeListArray = col.as_fixed_size_list();
            if list.is_empty() {
                list.values().slice(0, 0)
            } else {
                list.values()
                    .slice(list.value_offset_at(0), list.len() * *width as usize)
            }
        }
        _ => col.clone(),
    };
    if flat.null_count() > 0 {
        return Err(Error::invalid(
            loc.clone(),
            "column has nulls; RLDS cannot store them",
        ));
    }
    macro_rules! ints {
        ($t:ty) => {
            TfFeature::int64s(
                flat.as_primitive::<$t>()
                    .values()
                    .iter()
                    .map(|&v| v as i64)
                    .collect(),
            )
        };
    }
    Ok(match flat.data_type() {
        DataType::Float32 => {
            TfFeature::floats(flat.as_primitive::<Float32Type>().values().to_vec())
        }
        DataType::Float64 => TfFeature::floats(
            flat.as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|&v| v as f32)
                .collect(),
        ),
        DataType::Boolean => TfFeature::int64s(
            flat.as_boolean()
                .iter()
                .map(|v| i64::from(v.unwrap_or(false)))
                .collect(),
        ),
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        other => {
            return Err(Error::unsupported(
                loc.clone(),
                format!("column type {other} cannot be written to RLDS"),
            ))
        }
    })
}

fn tensor_json(dtype: &str, shape: &[usize], class: &str) -> Value {
    let shape = if shape.is_empty() {
        json!({})
    } else {
        json!({ "dimensions": shape.iter().map(|d| d.to_string()).collect::<Vec<_>>() })
    };
    json!({
        "pythonClassName": format!("tensorflow_datasets.core.features.{class}"),
        "tensor": { "dtype": dtype, "encoding": "none", "shape": shape },
    })
}

fn leaf_json(path: &str, leaf: &Leaf) -> Value {
    match leaf {
        Leaf::Image { height, width, .. } => json!({
            "pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {
                "dtype": "uint8",
                "encodingFormat": "jpeg",
                "shape": { "dimensions": [height.to_string(), width.to_string(), "3"] },
            },
        }),
        // LanguageTable declares its reward as a Scalar (a rank-0 Tensor subclass).
        Leaf::Tensor { dtype, shape, .. } if shape.is_empty() && path.ends_with("/reward") => {
            tensor_json(dtype, shape, "scalar.Scalar")
        }
        Leaf::Tensor { dtype, shape, .. } => tensor_json(dtype, shape, "tensor_feature.Tensor"),
    }
}

/// A FeaturesDict node holding `children` (JSON objects keep insertion order; the schema map is sorted).
fn features_dict(children: Map<String, Value>) -> Value {
    json!({
        "featuresDict": { "features": children },
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
    })
}

/// Nested tfds FeaturesDict JSON for the flattened schema; `steps` becomes a Dataset of its children.
fn features_json(schema: &BTreeMap<String, Leaf>) -> Value {
    #[derive(Default)]
    struct Node {
        leaf: Option<Value>,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for (path, leaf) in schema {
        let mut node = &mut root;
        for part in path.split('/') {
            node = node.children.entry(part.to_string()).or_default();
        }
        node.leaf = Some(leaf_json(path, leaf));
    }
    fn render(node: Node, name: &str, top: bool) -> Value {
        if let Some(leaf) = node.leaf {
            return leaf;
        }
        let children: Map<String, Value> = node
            .children
            .into_iter()
            .map(|(k, v)| {
                let r = render(v, &k, false);
                (k, r)
            })
            .collect();
        let dict = features_dict(children);
        if top && name == "steps" {
            json!({
                "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                "sequence": { "feature": dict, "length": "-1" },
            })
        } else {
            dict
        }
    }
    let children: Map<String, Value> = root
        .children
        .into_iter()
        .map(|(k, v)| {
            let r = render(v, &k, true);
            (k, r)
        })
        .collect();
    features_dict(children)
}
