//! Reading an RLDS builder directory one episode (= one TFRecord record) at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use image::RgbImage;
use rayon::prelude::*;
use serde_json::Value;

use super::example::{Example, Feature as TfFeature, Kind};
use super::tfrecord::{count_records, TfRecordReader};
use super::{
    bool_array, column, decode_instruction, f32_array, i32_array, i64_array, parse_features,
    LeafKind, LeafSpec, RldsMapping,
};
use crate::episode::{Episode, EpisodeIndex, Feature, Features, FrameSource, Frames, Provenance};
use crate::error::{Error, Location, Result};
use crate::io::lerobot::writer::default_features;
use crate::io::{stays_inside_root, EpisodeSource};

/// An RLDS dataset (one split) on disk.
pub struct RldsDataset {
    dir: PathBuf,
    name: String,
    split: String,
    /// Shard files in order, with their record counts from `shardLengths`.
    shards: Vec<(PathBuf, u64)>,
    leaves: Vec<LeafSpec>,
    mapping: RldsMapping,
    features: Features,
    /// Where sequential reading left off: (shard, next record in shard, reader).
    cursor: Mutex<Option<(usize, u64, TfRecordReader<BufReader<File>>)>>,
    /// Steps per episode, learnt while reading (needed for the global `index` column).
    lengths: Mutex<BTreeMap<u64, usize>>,
    /// Tasks in order of first appearance, for `task_index`.
    tasks: Mutex<Vec<String>>,
}

impl fmt::Debug for RldsDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RldsDataset")
            .field("dir", &self.dir)
            .field("split", &self.split)
            .field("shards", &self.shards)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(e, path))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(Location::file(path), format!("bad JSON: {e}")))
}

/// `path` itself when it holds `dataset_info.json`, else the highest version directory below it.
pub fn resolve_version_dir(path: &Path) -> Result<PathBuf> {
    if path.join("dataset_info.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(e, path))?;
    let mut versions: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(e, path))?.path();
        if p.join("dataset_info.json").is_file() {
            let name = p
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            // Numeric compare so that 0.10.0 > 0.9.0; non-numeric parts sort first.
            let key = name
                .split('.')
                .map(|s| s.parse::<u64>().unwrap_or(0))
                .collect();
            versions.push((key, p));
        }
    }
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        Error::invalid(
            Location::file(path),
            "not an RLDS dataset: no dataset_info.json here nor in a version directory below",
        )
    })
}

fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl RldsDataset {
    /// Open with the LanguageTable mapping and the `train` split (or the only split).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RldsMapping::language_table(), None)
    }

    pub fn open_with(
        path: impl AsRef<Path>,
        mapping: RldsMapping,
        split: Option<&str>,
    ) -> Result<Self> {
        let dir = resolve_version_dir(path.as_ref())?;
        let info_path = dir.join("dataset_info.json");
        let info = read_json(&info_path)?;
        let features_path = dir.join("features.json");
        let leaves = parse_features(&read_json(&features_path)?, &Location::file(&features_path))?;

        let name = info
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("dataset")
            .to_string();
        let file_format = info
            .get("fileFormat")
            .and_then(Value::as_str)
            .unwrap_or("tfrecord")
            .to_string();
        if file_format != "tfrecord" {
            return Err(Error::unsupported(
                Location::file(&info_path).field("fileFormat"),
                format!("file format {file_format:?}"),
            ));
        }
        let splits = info
            .get("splits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let chosen = match split {
            Some(s) => splits
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(s)),
            None => splits
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some("train"))
                .or(if splits.len() == 1 {
                    splits.first()
                } else {
                    None
                }),
        }
        .ok_or_else(|| {
            Error::invalid(
                Location::file(&info_path).field("splits"),
                format!(
                    "no split {:?} (use one of the splits listed)",
                    split.unwrap_or("train")
                ),
            )
        })?;
        let split_name = chosen
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("train")
            .to_string();
        let lengths: Vec<u64> = chosen
            .get("shardLengths")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(json_u64).collect::<Option<Vec<u64>>>())
            .unwrap_or(Some(Vec::new()))
            .ok_or_else(|| {
                Error::invalid(
                    Location::file(&info_path).field("shardLengths"),
                    "shard lengths must be integers",
                )
            })?;
        let template = chosen
            .get("filepathTemplate")
            .and_then(Value::as_str)
            .unwrap_or("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}");
        let n = lengths.len();
        let shards: Vec<(PathBuf, u64)> = lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let file = template
                    .replace("{DATASET}", &name)
                    .replace("{SPLIT}", &split_name)
                    .replace("{FILEFORMAT}", &file_format)
                    .replace("{SHARD_X_OF_Y}", &format!("{i:05}-of-{n:05}"))
                    .replace("{SHARD_INDEX}", &format!("{i:05}"))
                    .replace("{NUM_SHARDS}", &format!("{n:05}"));
                // The shard name comes from this file (template, name, split): it must not lead out of `dir`.
                if !stays_inside_root(Path::new(&file)) {
                    return Err(Error::invalid(
                        Location::file(&info_path).field("filepathTemplate"),
                        format!(
                            "template {template:?} resolves to {file:?}, outside the dataset directory"
                        ),
                    ));
                }
                Ok((dir.join(file), len))
            })
            .collect::<Result<_>>()?;
        check_shard_lengths(&shards, &info_path)?;

        let features = build_features(&leaves, &mapping);
        Ok(Self {
            dir,
            name,
            split: split_name,
            shards,
            leaves,
            mapping,
            features,
            cursor: Mutex::new(None),
            lengths: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The version directory (with dataset_info.json).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn split(&self) -> &str {
        &self.split
    }
    pub fn leaves(&self) -> &[LeafSpec] {
        &self.leaves
    }
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.1).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serialized Example of episode `index`, reusing the open shard when reading in order.
    fn read_record(&self, index: u64) -> Result<(Vec<u8>, PathBuf)> {
        let mut start = 0;
        let mut located = None;
        for (s, (_, len)) in self.shards.iter().enumerate() {
            if index < start + len {
                located = Some((s, index - start));
                break;
            }
            start += len;
        }
        let (shard, local) = located.ok_or_else(|| {
            Error::invalid(
                Location::file(&self.dir).episode(index),
                format!("no episode {index}: the split has {}", self.len()),
            )
        })?;
        let path = self.shards[shard].0.clone();
        let mut cursor = self
            .cursor
            .lock()
            .map_err(|_| Error::Cancelled("RLDS reader lock poisoned".into()))?;
        let reuse = matches!(&*cursor, Some((s, next, _)) if *s == shard && *next == local);
        if !reuse {
            let mut reader = TfRecordReader::open(&path).map_err(|e| e.in_episode(index))?;
            // Records skipped on the way report their own dataset-wide episode index.
            let base = index - local;
            for _ in 0..local {
                let at = base + reader.record_index();
                if !reader.skip_record().map_err(|e| relabel(e, at))? {
                    return Err(Error::invalid(
                        Location::file(&path).episode(at),
                        format!(
                            "shard ends before record {local} (dataset_info.json says {})",
                            self.shards[shard].1
                        ),
                    ));
                }
            }
            *cursor = Some((shard, local, reader));
        }
        let Some((_, next, reader)) = cursor.as_mut() else {
            return Err(Error::Cancelled("RLDS cursor vanished".into()));
        };
        let data = reader
            .next_record()
            .map_err(|e| relabel(e, index))?
            .ok_or_else(|| {
                Error::invalid(
                    Location::file(&path).episode(index),
                    format!(
                        "shard ends before record {local} (dataset_info.json says {})",
                        self.shards[shard].1
                    ),
                )
            })?;
        *next += 1;
        Ok((data, path))
    }

    fn steps_in(&self, map: &BTreeMap<String, TfFeature>, loc: &Location) -> Result<usize> {
        for leaf in self.leaves.iter().filter(|l| l.per_step) {
            if let (Some(f), Some(per)) = (map.get(&leaf.path), leaf.kind.values_per_item()) {
                let len = list_len(f);
                if per == 0 {
                    continue;
                }
                if len % per != 0 {
                    return Err(Error::invalid(
                        loc.clone().field(&leaf.path),
                        format!("{len} values is not a multiple of {per} per step"),
                    ));
                }
                return Ok(len / per);
            }
        }
        Ok(0)
    }

    /// First frame's global row index: the steps of every episode before `index`.
    fn start_of(&self, index: u64) -> Result<u64> {
        let missing: Vec<u64> = {
            let lengths = self
                .lengths
                .lock()
                .map_err(|_| Error::Cancelled("lock poisoned".into()))?;
            (0..index).filter(|j| !lengths.contains_key(j)).collect()
        };
        for j in missing {
            let (data, path) = self.read_record(j)?;
            let loc = Location::file(&path).episode(j);
            let map = Example::decode_at(&data, &loc)?.into_map();
            let n = self.steps_in(&map, &loc)?;
            self.lengths
                .lock()
                .map_err(|_| Error::Cancelled("lock poisoned".into()))?
                .insert(j, n);
        }
        let lengths = self
            .lengths
            .lock()
            .map_err(|_| Error::Cancelled("lock poisoned".into()))?;
        Ok(lengths.range(..index).map(|(_, &n)| n as u64).sum())
    }

    fn task_index(&self, task: &str) -> Result<i64> {
        let mut tasks = self
            .tasks
            .lock()
            .map_err(|_| Error::Cancelled("lock poisoned".into()))?;
        let i = match tasks.iter().position(|t| t == task) {
            Some(i) => i,
            None => {
                tasks.push(task.to_string());
                tasks.len() - 1
            }
        };
        Ok(i as i64)
    }
}

/// Every shard must hold the records `shardLengths` says: fewer would fail mid-run, more would be dropped without
/// a word (`inspect` showing 5 episodes of 24). Counted from the record headers at open; errors name the shard,
/// the first episode that is missing or unlisted, and both numbers.
fn check_shard_lengths(shards: &[(PathBuf, u64)], info_path: &Path) -> Result<()> {
    let mut start = 0u64;
    for (path, declared) in shards {
        let held = count_records(path).map_err(|e| match e {
            Error::Io { .. } => e.in_episode(start),
            e => {
                let local = e.location().and_then(|l| l.episode).unwrap_or(0);
                relabel(e, start + local)
            }
        })?;
        if held != *declared {
            return Err(Error::invalid(
                Location::file(path)
                    .episode(start + held.min(*declared))
                    .field("shardLengths"),
                format!(
                    "{} says the shard holds {declared} records (episodes), the file holds {held}",
                    info_path.display()
                ),
            ));
        }
        start += declared;
    }
    Ok(())
}

/// Record-level errors of the framing report the record within the shard as "episode"; re-label with the
/// dataset-wide episode index while keeping the file.
fn relabel(mut e: Error, index: u64) -> Error {
    if let Error::InvalidData { loc, .. } = &mut e {
        loc.episode = Some(index);
    }
    e
}

fn list_len(f: &TfFeature) -> usize {
    match &f.kind {
        Some(Kind::BytesList(l)) => l.value.len(),
        Some(Kind::FloatList(l)) => l.value.len(),
        Some(Kind::Int64List(l)) => l.value.len(),
        None => 0,
    }
}

fn is_float(dtype: &str) -> bool {
    matches!(dtype, "float16" | "bfloat16" | "float32" | "float64")
}

/// LeRobot dtype name of a tfds tensor dtype as we store it.
fn column_dtype(dtype: &str) -> &'static str {
    match dtype {
        d if is_float(d) => "float32",
        "bool" => "bool",
        "int8" | "int16" | "int32" | "uint8" | "uint16" => "int32",
        _ => "int64",
    }
}

fn known(shape: &[Option<usize>]) -> Vec<usize> {
    shape.iter().map(|d| d.unwrap_or(0)).collect()
}

fn build_features(leaves: &[LeafSpec], mapping: &RldsMapping) -> Features {
    let mut out = Features::new();
    for leaf in leaves {
        let Some(key) = mapping.key_for(leaf) else {
            continue;
        };
        let feature = match &leaf.kind {
            LeafKind::Image { shape, .. } => Feature {
                dtype: "video".into(),
                shape: known(shape),
                names: Some(serde_json::json!(["height", "width", "channels"])),
                info: None,
            },
            LeafKind::Tensor { dtype, shape } => Feature {
                dtype: column_dtype(dtype).into(),
                shape: if shape.is_empty() {
                    vec![1]
                } else {
                    known(shape)
                },
                names: None,
                info: None,
            },
        };
        out.insert(key, feature);
    }
    out.extend(default_features());
    out
}

/// Encoded images (JPEG/PNG), decoded on demand, in parallel.
pub struct EncodedFrames {
    images: Vec<Vec<u8>>,
    size: (u32, u32),
    loc: Location,
}

impl fmt::Debug for EncodedFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedFrames")
            .field("frames", &self.images.len())
            .field("size", &self.size)
            .field("loc", &self.loc)
            .finish()
    }
}

impl EncodedFrames {
    /// `size` (height, width) is taken from `expected` when both are known, else from the first image's header.
    pub fn new(
        images: Vec<Vec<u8>>,
        expected: (Option<usize>, Option<usize>),
        loc: Location,
    ) -> Result<Self> {
        let header = match images.first() {
            Some(first) => {
                let reader = image::ImageReader::new(Cursor::new(first))
                    .with_guessed_format()
                    .map_err(|e| {
                        Error::invalid(loc.clone().frame(0), format!("unreadable image: {e}"))
                    })?;
                let (w, h) = reader.into_dimensions().map_err(|e| {
                    Error::invalid(loc.clone().frame(0), format!("unreadable image: {e}"))
                })?;
                Some((h, w))
            }
            None => None,
        };
        let size = match (header, expected) {
            (Some((h, w)), (eh, ew)) => {
                if eh.is_some_and(|eh| eh as u32 != h) || ew.is_some_and(|ew| ew as u32 != w) {
                    return Err(Error::invalid(
                        loc.frame(0),
                        format!(
                            "image is {h}x{w}, features.json says {}x{}",
                            eh.map_or("?".into(), |v| v.to_string()),
                            ew.map_or("?".into(), |v| v.to_string())
                        ),
                    ));
                }
                (h, w)
            }
            (None, (eh, ew)) => (eh.unwrap_or(0) as u32, ew.unwrap_or(0) as u32),
        };
        Ok(Self { images, size, loc })
    }
}

impl FrameSource for EncodedFrames {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn decode(&self) -> Result<Vec<RgbImage>> {
        self.images
            .par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                crate::episode::decode_image(bytes, self.size, self.loc.clone().frame(i as u64))
            })
            .collect()
    }
}

impl EpisodeSource for RldsDataset {
    fn format(&self) -> &str {
        "rlds"
    }
    fn fps(&self) -> f64 {
        self.mapping.fps
    }
    fn features(&self) -> &Features {
        &self.features
    }
    fn episode_indices(&self) -> Vec<EpisodeIndex> {
        (0..self.len()).map(EpisodeIndex).collect()
    }

    fn read_episode(&self, index: EpisodeIndex) -> Result<Episode> {
        let (data, path) = self.read_record(index.0)?;
        let loc = Location::file(&path).episode(index.0);
        let mut map = Example::decode_at(&data, &loc)?.into_map();
        let n = self.steps_in(&map, &loc)?;
        self.lengths
            .lock()
            .map_err(|_| Error::Cancelled("lock poisoned".into()))?
            .insert(index.0, n);

        let mut cameras = BTreeMap::new();
        let mut fields: Vec<Field> = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut task = String::new();
        for leaf in &self.leaves {
            let floc = loc.clone().field(&leaf.path);
            let is_instruction = self.mapping.instruction.as_deref() == Some(leaf.path.as_str());
            let key = self.mapping.key_for(leaf);
            if key.is_none() && !is_instruction {
                continue;
            }
            let feature = match map.remove(&leaf.path) {
                Some(f) => f,
                None if n == 0 => TfFeature { kind: None },
                None => {
                    return Err(Error::invalid(
                        floc,
                        "feature listed in features.json is missing from the record",
                    ))
                }
            };
            if is_instruction {
                task = instruction_text(&feature, leaf, n, &floc)?;
                continue;
            }
            let Some(key) = key else { continue };
            match &leaf.kind {
                LeafKind::Image { shape, .. } => {
                    cameras.insert(key, image_frames(feature, shape, n, floc)?);
                }
                LeafKind::Tensor { dtype, .. } => {
                    let col = tensor_column(feature, leaf, dtype, n, floc)?;
                    fields.push(Field::new(key, col.data_type().clone(), false));
                    arrays.push(col);
                }
            }
        }

        let fps = self.mapping.fps;
        let start = self.start_of(index.0)? as i64;
        let task_index = self.task_index(&task)?;
        let rows = n as i64;
        let bookkeeping: [(&str, ArrayRef); 5] = [
            (
                "timestamp",
                f32_array((0..n).map(|i| (i as f64 / fps) as f32).collect()),
            ),
            ("frame_index", i64_array((0..rows).collect())),
            ("episode_index", i64_array(vec![index.0 as i64; n])),
            ("index", i64_array((start..start + rows).collect())),
            ("task_index", i64_array(vec![task_index; n])),
        ];
        for (name, array) in bookkeeping {
            fields.push(Field::new(name, array.data_type().clone(), false));
            arrays.push(array);
        }
        let columns = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::table(loc.clone(), e))?;
        Ok(Episode {
            index,
            task,
            fps,
            cameras,
            columns,
            episode_columns: Default::default(),
            provenance: Provenance {
                source: self.dir.display().to_string(),
                format: "rlds".into(),
                source_episode_index: index.0,
            },
        })
    }
}

/// The frames of an image leaf: one encoded image (JPEG/PNG) per step, decoded on demand.
fn image_frames(
    feature: TfFeature,
    shape: &[Option<usize>],
    n: usize,
    floc: Location,
) -> Result<Frames> {
    let images = match feature.kind {
        Some(Kind::BytesList(l)) => l.value,
        None => Vec::new(),
        _ => {
            return Err(Error::invalid(
                floc,
                format!("image feature stored as {}", feature.kind_name()),
            ))
        }
    };
    if images.len() != n {
        return Err(Error::invalid(
            floc,
            format!("{} images for {n} steps", images.len()),
        ));
    }
    let expected = (
        shape.first().copied().flatten(),
        shape.get(1).copied().flatten(),
    );
    Ok(Frames::new(EncodedFrames::new(images, expected, floc)?))
}

/// The column of a tensor leaf: `n` steps of its values, in the dtype vadapt stores for `dtype`
/// ([`column_dtype`]), one list of values per row when a step holds more than one.
fn tensor_column(
    feature: TfFeature,
    leaf: &LeafSpec,
    dtype: &str,
    n: usize,
    floc: Location,
) -> Result<ArrayRef> {
    let per = leaf.kind.values_per_item().ok_or_else(|| {
        Error::unsupported(
            floc.clone(),
            "tensors with unknown dimensions are not supported",
        )
    })?;
    let got = list_len(&feature);
    if n.checked_mul(per) != Some(got) {
        return Err(Error::invalid(
            floc,
            format!("{got} values, expected {n} steps x {per}"),
        ));
    }
    let values = match (feature.kind, column_dtype(dtype)) {
        (Some(Kind::FloatList(l)), "float32") => f32_array(l.value),
        (Some(Kind::Int64List(l)), "bool") => bool_array(l.value.iter().map(|&v| v != 0).collect()),
        (Some(Kind::Int64List(l)), "int32") => i32_array(
            l.value
                .iter()
                .map(|&v| {
                    i32::try_from(v).map_err(|_| {
                        Error::invalid(floc.clone(), format!("{v} does not fit {dtype}"))
                    })
                })
                .collect::<Result<_>>()?,
        ),
        (Some(Kind::Int64List(l)), "int64") => i64_array(l.value),
        (None, d) => match d {
            "float32" => f32_array(Vec::new()),
            "bool" => bool_array(Vec::new()),
            "int32" => i32_array(Vec::new()),
            _ => i64_array(Vec::new()),
        },
        (Some(k), _) => {
            let kind = TfFeature { kind: Some(k) }.kind_name();
            return Err(Error::invalid(
                floc,
                format!("dtype {dtype} stored as {kind}"),
            ));
        }
    };
    column(values, per)
}

/// The instruction of an episode: int codes (first step's, when per step) or a string.
fn instruction_text(
    feature: &TfFeature,
    leaf: &LeafSpec,
    n: usize,
    loc: &Location,
) -> Result<String> {
    match &feature.kind {
        Some(Kind::Int64List(l)) => {
            let per = if leaf.per_step {
                leaf.kind.values_per_item().unwrap_or(l.value.len())
            } else {
                l.value.len()
            };
            let first = &l.value[..per.min(l.value.len())];
            decode_instruction(first, loc)
        }
        Some(Kind::BytesList(l)) => match l.value.first() {
            Some(b) => String::from_utf8(b.clone()).map_err(|e| {
                Error::invalid(loc.clone(), format!("instruction is not valid UTF-8: {e}"))
            }),
            None => Ok(String::new()),
        },
        None if n == 0 => Ok(String::new()),
        _ => Err(Error::invalid(
            loc.clone(),
            format!("instruction stored as {}", feature.kind_name()),
        )),
    }
}
