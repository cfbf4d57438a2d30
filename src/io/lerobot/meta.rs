//! LeRobot metadata: `meta/info.json`, the per-episode table (v3.0 `meta/episodes/*/*.parquet`,
//! v2.1 `meta/episodes.jsonl`) and the tasks (v3.0 `meta/tasks.parquet`, v2.1 `meta/tasks.jsonl`).
//! Mirrors lerobot's `LeRobotDatasetMetadata.load_metadata` (`lerobot_dataset.py`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::Value;

use super::episode_columns;
use super::layout::{self, CODEBASE_VERSION, LEGACY_CODEBASE_VERSION};
use crate::episode::{EpisodeColumns, Feature, Features};
use crate::error::{Error, IoResultExt, Location, Result};

/// Which on-disk layout a dataset uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One parquet and one mp4 per episode, jsonl metadata.
    V2_1,
    /// Episodes share parquet and mp4 files; metadata in parquet.
    V3_0,
}

impl Version {
    pub fn format_name(self) -> &'static str {
        match self {
            Version::V2_1 => "lerobot-v2.1",
            Version::V3_0 => "lerobot-v3.0",
        }
    }
}

/// The parts of `meta/info.json` a reader needs; the raw JSON is kept for everything else.
#[derive(Debug, Clone)]
pub struct Info {
    pub version: Version,
    pub fps: f64,
    pub chunks_size: u64,
    pub data_path: String,
    pub video_path: Option<String>,
    pub total_episodes: u64,
    pub total_frames: u64,
    pub total_tasks: u64,
    /// Features in info.json order.
    pub features: Vec<(String, Feature)>,
    pub raw: serde_json::Map<String, Value>,
}

impl Info {
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(layout::INFO_PATH);
        let text = std::fs::read_to_string(&path).at(&path)?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(Location::file(&path), format!("not JSON: {e}")))?;
        let raw = match raw {
            Value::Object(m) => m,
            _ => return Err(Error::invalid(Location::file(&path), "not a JSON object")),
        };
        let field = |k: &str| Location::file(&path).field(k);
        let get = |k: &str| {
            raw.get(k)
                .ok_or_else(|| Error::invalid(field(k), "missing"))
        };
        let version = match get("codebase_version")?.as_str() {
            Some(CODEBASE_VERSION) => Version::V3_0,
            Some(LEGACY_CODEBASE_VERSION) | Some("v2.0") => Version::V2_1,
            Some(v) => {
                return Err(Error::unsupported(
                    field("codebase_version"),
                    format!("codebase_version {v:?} (vadapt reads {CODEBASE_VERSION} and {LEGACY_CODEBASE_VERSION})"),
                ))
            }
            None => return Err(Error::invalid(field("codebase_version"), "not a string")),
        };
        let fps = get("fps")?
            .as_f64()
            .filter(|f| *f > 0.0)
            .ok_or_else(|| Error::invalid(field("fps"), "must be a positive number"))?;
        crate::limits::check_fps(fps, field("fps"))?;
        let uint = |k: &str, default: Option<u64>| -> Result<u64> {
            match raw.get(k) {
                Some(v) => v.as_u64().ok_or_else(|| {
                    Error::invalid(field(k), format!("must be a non-negative integer, got {v}"))
                }),
                None => default.ok_or_else(|| Error::invalid(field(k), "missing")),
            }
        };
        let chunks_size = uint("chunks_size", Some(layout::DEFAULT_CHUNK_SIZE))?.max(1);
        let default_data = if version == Version::V3_0 {
            layout::DEFAULT_DATA_PATH
        } else {
            layout::LEGACY_DATA_PATH
        };
        let data_path = raw
            .get("data_path")
            .and_then(Value::as_str)
            .unwrap_or(default_data)
            .to_string();
        let video_path = raw
            .get("video_path")
            .and_then(Value::as_str)
            .map(str::to_string);
        let features_json = get("features")?
            .as_object()
            .ok_or_else(|| Error::invalid(field("features"), "must be an object"))?;
        if features_json.is_empty() {
            return Err(Error::invalid(field("features"), "no features"));
        }
        let mut features = Vec::with_capacity(features_json.len());
        for (k, v) in features_json {
            let f: Feature = serde_json::from_value(v.clone()).map_err(|e| {
                Error::invalid(
                    Location::file(&path).field(format!("features.{k}")),
                    e.to_string(),
                )
            })?;
            features.push((k.clone(), f));
        }
        for (k, f) in &features {
            check_declared_size(k, f, &path)?;
        }
        // A template with an unknown placeholder, or one that leads outside the dataset root (also through a camera
        // key), is an error of this file, found now rather than at the first read.
        let video_keys: Vec<&str> = features
            .iter()
            .filter(|(_, f)| f.dtype == "video")
            .map(|(k, _)| k.as_str())
            .collect();
        for (field, template) in [
            ("data_path", Some(&data_path)),
            ("video_path", video_path.as_ref()),
        ] {
            let Some(template) = template else { continue };
            for video_key in video_keys.iter().copied().chain(["key"]) {
                let args = [
                    ("video_key", layout::Arg::Str(video_key)),
                    ("chunk_index", layout::Arg::Int(0)),
                    ("file_index", layout::Arg::Int(0)),
                    ("episode_chunk", layout::Arg::Int(0)),
                    ("episode_index", layout::Arg::Int(0)),
                ];
                if let Err(Error::InvalidData { message, .. }) =
                    layout::format_path(template, &args, field)
                {
                    return Err(Error::invalid(Location::file(&path).field(field), message));
                }
            }
        }
        if features.iter().any(|(_, f)| f.dtype == "video") && video_path.is_none() {
            return Err(Error::invalid(
                field("video_path"),
                "video features but no video_path",
            ));
        }
        Ok(Self {
            version,
            fps,
            chunks_size,
            data_path,
            video_path,
            total_episodes: uint("total_episodes", Some(0))?,
            total_frames: uint("total_frames", Some(0))?,
            total_tasks: uint("total_tasks", Some(0))?,
            features,
            raw,
        })
    }

    pub fn features_map(&self) -> Features {
        self.features.iter().cloned().collect()
    }

    pub fn video_keys(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|(_, f)| f.dtype == "video")
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn image_keys(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|(_, f)| f.dtype == "image")
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Most values one frame of one feature may declare (`prod(shape)`), and most pixels a declared frame may have.
/// Far above any real feature; they keep a corrupt `info.json` from overflowing `rows * values` or driving a
/// huge allocation.
pub const MAX_VALUES_PER_FRAME: u64 = 1 << 31;
pub const MAX_PIXELS_PER_FRAME: u64 = 1 << 28;

/// Refuse declared shapes (and video sizes) that overflow or exceed the limits above, naming the feature.
fn check_declared_size(key: &str, f: &Feature, path: &Path) -> Result<()> {
    let loc = || Location::file(path).field(format!("features.{key}"));
    let values = f
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    if values.is_none_or(|n| n > MAX_VALUES_PER_FRAME) {
        return Err(Error::invalid(
            loc(),
            format!(
                "declared shape {:?} is too large (more than {MAX_VALUES_PER_FRAME} values per frame)",
                f.shape
            ),
        ));
    }
    if f.is_visual() {
        let dim = |k: &str| {
            f.info
                .as_ref()
                .and_then(|i| i.get(k))
                .and_then(Value::as_u64)
        };
        if let (Some(h), Some(w)) = (dim("video.height"), dim("video.width")) {
            if h.checked_mul(w).is_none_or(|n| n > MAX_PIXELS_PER_FRAME) {
                return Err(Error::invalid(
                    loc(),
                    format!("declared frame size {h}x{w} is too large (more than {MAX_PIXELS_PER_FRAME} pixels)"),
                ));
            }
        }
        if values.is_some_and(|n| n > 4 * MAX_PIXELS_PER_FRAME) {
            return Err(Error::invalid(
                loc(),
                format!("declared frame shape {:?} is too large", f.shape),
            ));
        }
    }
    Ok(())
}

/// (height, width) of a visual feature: its `info` block if it has one, else its shape read through its
/// `names` (`["height", "width", "channels"]`, lerobot's default, or channel-first).
pub fn visual_size(key: &str, f: &Feature) -> Result<(u32, u32)> {
    let loc = || Location::file(layout::INFO_PATH).field(format!("features.{key}"));
    if let Some(info) = &f.info {
        if let (Some(h), Some(w)) = (
            info.get("video.height").and_then(Value::as_u64),
            info.get("video.width").and_then(Value::as_u64),
        ) {
            return Ok((h as u32, w as u32));
        }
    }
    if f.shape.len() != 3 {
        return Err(Error::invalid(
            loc(),
            format!("shape {:?} is not (height, width, channels)", f.shape),
        ));
    }
    let names: Vec<String> = match &f.names {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let pos = |n: &str| names.iter().position(|x| x == n);
    match (pos("height"), pos("width")) {
        (Some(h), Some(w)) => Ok((f.shape[h] as u32, f.shape[w] as u32)),
        _ if f.shape[0] == 3 && f.shape[2] != 3 => Ok((f.shape[1] as u32, f.shape[2] as u32)),
        _ => Ok((f.shape[0] as u32, f.shape[1] as u32)),
    }
}

/// Where one episode's video lives.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoRef {
    pub chunk_index: u64,
    pub file_index: u64,
    pub from_timestamp: f64,
    pub to_timestamp: f64,
}

/// One row of the episodes table.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeMeta {
    pub episode_index: u64,
    pub tasks: Vec<String>,
    pub length: u64,
    /// v3.0: data file and global row range; v2.1: the per-episode file (chunk = index / chunks_size).
    pub data_chunk_index: u64,
    pub data_file_index: u64,
    pub dataset_from_index: u64,
    pub dataset_to_index: u64,
    pub videos: BTreeMap<String, VideoRef>,
    /// v3.0: the columns of this row beyond lerobot's own (see [`episode_columns`]).
    pub columns: EpisodeColumns,
    /// The metadata file this row was read from (named by the cross-checks of `checks`).
    pub table: PathBuf,
}

fn col<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|a| a.as_ref())
        .ok_or_else(|| {
            Error::invalid(
                Location::file(path).field(name),
                "required column is missing",
            )
        })
}

/// Integer value of row `row` of an integer column, whatever its width.
pub fn int_at(a: &dyn Array, row: usize, path: &Path, name: &str) -> Result<i64> {
    let loc = || Location::file(path).field(name).frame(row as u64);
    if a.is_null(row) {
        return Err(Error::invalid(loc(), "null"));
    }
    let c = arrow::compute::cast(&a.slice(row, 1), &DataType::Int64)
        .map_err(|e| Error::table(loc(), e))?;
    Ok(c.as_primitive::<Int64Type>().value(0))
}

fn f64_at(a: &dyn Array, row: usize, path: &Path, name: &str) -> Result<f64> {
    let loc = || Location::file(path).field(name).frame(row as u64);
    if a.is_null(row) {
        return Err(Error::invalid(loc(), "null"));
    }
    let c = arrow::compute::cast(&a.slice(row, 1), &DataType::Float64)
        .map_err(|e| Error::table(loc(), e))?;
    Ok(c.as_primitive::<Float64Type>().value(0))
}

fn strings_at(a: &dyn Array, row: usize, path: &Path, name: &str) -> Result<Vec<String>> {
    let loc = || Location::file(path).field(name).frame(row as u64);
    let values = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(row),
        DataType::LargeList(_) => a.as_list::<i64>().value(row),
        DataType::Utf8 | DataType::LargeUtf8 => a.slice(row, 1),
        t => {
            return Err(Error::invalid(
                loc(),
                format!("expected a list of strings, got {t}"),
            ))
        }
    };
    let s = arrow::compute::cast(&values, &DataType::Utf8).map_err(|e| Error::table(loc(), e))?;
    Ok(s.as_string::<i32>()
        .iter()
        .flatten()
        .map(str::to_string)
        .collect())
}

/// Every parquet file `dir/*/*.parquet`, sorted (lerobot's `load_nested_dataset` glob).
pub fn nested_parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for chunk in std::fs::read_dir(dir).at(dir)? {
        let chunk = chunk.at(dir)?.path();
        if !chunk.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&chunk).at(&chunk)? {
            let f = f.at(&chunk)?.path();
            if f.extension().is_some_and(|e| e == "parquet")
                && !f
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Open a parquet file for reading; errors name the file.
pub fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let f = File::open(path).at(path)?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| Error::table(Location::file(path), e))
}

/// Run `decode` over the parquet file `path`, turning a panic into an error that names the file. arrow and parquet
/// panic on some corrupt files instead of returning an error (an "offset + len out of bounds" when a damaged page
/// declares more values than its buffer holds: tests/it/fuzz_props.rs found one with a single changed byte), and a
/// damaged table must be refused like any other bad input, never abort a batch run.
pub fn decoding<T>(path: &Path, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let cause = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(Error::table(
            Location::file(path),
            format!("corrupt file: the parquet decoder failed ({cause})"),
        ))
    })
}

/// v3.0 episodes table (every `meta/episodes/chunk-*/file-*.parquet`), without the `stats/` columns; every
/// episode must have the same extra columns.
pub fn load_episodes_v3(root: &Path, video_keys: &[String]) -> Result<Vec<EpisodeMeta>> {
    let dir = root.join(layout::EPISODES_DIR);
    let files = nested_parquet_files(&dir)?;
    if files.is_empty() {
        return Err(Error::invalid(
            Location::file(&dir),
            "no episodes parquet file",
        ));
    }
    let mut out = Vec::new();
    for path in files {
        decoding(&path, || episodes_in_file(&path, video_keys, &mut out))?;
    }
    out.sort_by_key(|m| m.episode_index);
    episode_columns::check_consistent(
        out.iter()
            .map(|m| (m.table.as_path(), m.episode_index, &m.columns)),
    )?;
    Ok(out)
}

/// The episodes of one v3.0 episodes parquet file, appended to `out`.
fn episodes_in_file(path: &Path, video_keys: &[String], out: &mut Vec<EpisodeMeta>) -> Result<()> {
    let builder = open_parquet(path)?;
    let keep: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("stats/"))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), keep);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::table(Location::file(&path), e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::table(Location::file(&path), e))?;
        for row in 0..batch.num_rows() {
            let ep = int_at(
                col(&batch, "episode_index", &path)?,
                row,
                &path,
                "episode_index",
            )? as u64;
            let with_ep = |e: Error| e.in_episode(ep);
            let int = |name: &str| -> Result<u64> {
                col(&batch, name, &path)
                    .and_then(|c| int_at(c, row, &path, name))
                    .map(|v| v as u64)
                    .map_err(with_ep)
            };
            let mut videos = BTreeMap::new();
            for key in video_keys {
                let k = |s: &str| format!("videos/{key}/{s}");
                let fl = |name: String| -> Result<f64> {
                    col(&batch, &name, &path)
                        .and_then(|c| f64_at(c, row, &path, &name))
                        .map_err(with_ep)
                };
                videos.insert(
                    key.clone(),
                    VideoRef {
                        chunk_index: int(&k("chunk_index"))?,
                        file_index: int(&k("file_index"))?,
                        from_timestamp: fl(k("from_timestamp"))?,
                        to_timestamp: fl(k("to_timestamp"))?,
                    },
                );
            }
            let tasks = match batch.column_by_name("tasks") {
                Some(a) => strings_at(a.as_ref(), row, &path, "tasks").map_err(with_ep)?,
                None => Vec::new(),
            };
            let meta = EpisodeMeta {
                episode_index: ep,
                tasks,
                length: int("length")?,
                data_chunk_index: int("data/chunk_index")?,
                data_file_index: int("data/file_index")?,
                dataset_from_index: int("dataset_from_index")?,
                dataset_to_index: int("dataset_to_index")?,
                videos,
                columns: episode_columns::from_row(&batch, row, path, ep)?,
                table: path.to_path_buf(),
            };
            if meta.dataset_to_index < meta.dataset_from_index
                || meta.dataset_to_index - meta.dataset_from_index != meta.length
            {
                return Err(Error::invalid(
                    Location::file(&path).episode(ep).field("dataset_to_index"),
                    format!(
                        "row range [{}, {}) does not hold length {} rows",
                        meta.dataset_from_index, meta.dataset_to_index, meta.length
                    ),
                ));
            }
            out.push(meta);
        }
    }
    Ok(())
}

fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(Value::Object(m)) => out.push((i + 1, m)),
            Ok(_) => {
                return Err(Error::invalid(
                    Location::file(path).frame(i as u64 + 1),
                    "line is not a JSON object",
                ))
            }
            Err(e) => {
                return Err(Error::invalid(
                    Location::file(path),
                    format!("line {}: {e}", i + 1),
                ))
            }
        }
    }
    Ok(out)
}

/// v2.1 `meta/episodes.jsonl`: `{"episode_index", "tasks", "length"}` per line; rows are laid out
/// one file per episode, so the global row range is the running sum of lengths.
pub fn load_episodes_v2(
    root: &Path,
    chunks_size: u64,
    video_keys: &[String],
) -> Result<Vec<EpisodeMeta>> {
    let path = root.join(layout::LEGACY_EPISODES_PATH);
    let mut rows = Vec::new();
    for (line, m) in read_jsonl(&path)? {
        let loc = |f: &str| Location::file(&path).field(f).frame(line as u64);
        let ep = m
            .get("episode_index")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                Error::invalid(
                    loc("episode_index"),
                    "missing or not an integer (line number in 'frame')",
                )
            })?;
        let length = m.get("length").and_then(Value::as_u64).ok_or_else(|| {
            Error::invalid(loc("length").episode(ep), "missing or not an integer")
        })?;
        let tasks = match m.get("tasks") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        rows.push((ep, length, tasks));
    }
    rows.sort_by_key(|r| r.0);
    let mut from = 0;
    Ok(rows
        .into_iter()
        .map(|(ep, length, tasks)| {
            let chunk = ep / chunks_size;
            let videos = video_keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        VideoRef {
                            chunk_index: chunk,
                            file_index: ep,
                            from_timestamp: 0.0,
                            to_timestamp: 0.0,
                        },
                    )
                })
                .collect();
            let m = EpisodeMeta {
                episode_index: ep,
                tasks,
                length,
                data_chunk_index: chunk,
                data_file_index: ep,
                dataset_from_index: from,
                dataset_to_index: from + length,
                videos,
                columns: EpisodeColumns::default(),
                table: path.clone(),
            };
            from += length;
            m
        })
        .collect())
}

/// Tasks by task_index. v3.0: `meta/tasks.parquet` (a pandas frame: `task_index` column, task strings
/// as the index, stored as `__index_level_0__` or a named column); v2.1: `meta/tasks.jsonl`.
pub fn load_tasks(root: &Path, version: Version) -> Result<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    match version {
        Version::V2_1 => {
            let path = root.join(layout::LEGACY_TASKS_PATH);
            for (line, m) in read_jsonl(&path)? {
                let loc = |f: &str| Location::file(&path).field(f).frame(line as u64);
                let i = m
                    .get("task_index")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| Error::invalid(loc("task_index"), "missing"))?;
                let t = m
                    .get("task")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::invalid(loc("task"), "missing"))?;
                out.insert(i, t.to_string());
            }
        }
        Version::V3_0 => {
            let path = root.join(layout::DEFAULT_TASKS_PATH);
            decoding(&path, || {
                let builder = open_parquet(&path)?;
                let schema = builder.schema().clone();
                // pandas stores the index column name in its metadata.
                let pandas_index = schema
                    .metadata()
                    .get("pandas")
                    .and_then(|m| serde_json::from_str::<Value>(m).ok())
                    .and_then(|v| v.get("index_columns")?.get(0)?.as_str().map(str::to_string));
                let task_col = [
                    pandas_index.as_deref(),
                    Some("task"),
                    Some("__index_level_0__"),
                ]
                .into_iter()
                .flatten()
                .find(|n| schema.field_with_name(n).is_ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::invalid(
                        Location::file(&path).field("task"),
                        "no task string column (pandas index or 'task')",
                    )
                })?;
                let reader = builder
                    .build()
                    .map_err(|e| Error::table(Location::file(&path), e))?;
                for batch in reader {
                    let batch = batch.map_err(|e| Error::table(Location::file(&path), e))?;
                    let idx = col(&batch, "task_index", &path)?;
                    let tasks = col(&batch, &task_col, &path)?;
                    for row in 0..batch.num_rows() {
                        let i = int_at(idx, row, &path, "task_index")?;
                        let t = strings_at(tasks, row, &path, &task_col)?
                            .pop()
                            .unwrap_or_default();
                        out.insert(i, t);
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(out)
}
