//! Read a LeRobot dataset (v3.0 or v2.1) one episode at a time. Follows lerobot's
//! `LeRobotDataset.load_hf_dataset` / `_query_videos` (`lerobot_dataset.py`): rows of an episode are
//! `[dataset_from_index, dataset_to_index)` of its data file, frames are the time range
//! `[from_timestamp, to_timestamp)` of its (possibly shared) mp4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use image::RgbImage;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use super::checks;
use super::layout::{self, Arg};
use super::meta::{self, EpisodeMeta, Info, Version};
use crate::episode::{Episode, EpisodeIndex, Features, FrameSource, Frames, Provenance};
use crate::error::{Error, Location, Result};
use crate::io::video::Mp4Frames;
use crate::io::{stays_inside_root, EpisodeSource};

/// An opened LeRobot dataset. Holds only metadata; episodes are read on demand.
#[derive(Debug)]
pub struct LeRobotDataset {
    root: PathBuf,
    info: Info,
    features: Features,
    episodes: Vec<EpisodeMeta>,
    position: BTreeMap<u64, usize>,
    tasks: BTreeMap<i64, String>,
    /// v3.0: first global row index of each data file (lerobot writes episodes in order).
    file_start: BTreeMap<(u64, u64), u64>,
    /// Check each episode's video range against the file's duration when it is read.
    check_video_duration: bool,
}

impl LeRobotDataset {
    /// Open `root`, detecting v3.0 or v2.1 from `meta/info.json`'s `codebase_version`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let info = Info::load(&root)?;
        let video_keys = info.video_keys();
        let episodes = match info.version {
            Version::V3_0 => meta::load_episodes_v3(&root, &video_keys)?,
            Version::V2_1 => meta::load_episodes_v2(&root, info.chunks_size, &video_keys)?,
        };
        let tasks = meta::load_tasks(&root, info.version)?;
        let mut position = BTreeMap::new();
        for (i, e) in episodes.iter().enumerate() {
            if position.insert(e.episode_index, i).is_some() {
                return Err(Error::invalid(
                    Location::file(root.join(layout::EPISODES_DIR))
                        .episode(e.episode_index)
                        .field("episode_index"),
                    "episode listed twice",
                ));
            }
        }
        let mut file_start: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for e in &episodes {
            let s = file_start
                .entry((e.data_chunk_index, e.data_file_index))
                .or_insert(e.dataset_from_index);
            *s = (*s).min(e.dataset_from_index);
        }
        let features = info.features_map();
        tracing::info!(root = %root.display(), format = info.version.format_name(), episodes = episodes.len(), "opened LeRobot dataset");
        Ok(Self {
            root,
            info,
            features,
            episodes,
            position,
            tasks,
            file_start,
            check_video_duration: true,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn info(&self) -> &Info {
        &self.info
    }
    pub fn version(&self) -> Version {
        self.info.version
    }
    /// The episodes table, in episode order.
    pub fn episodes(&self) -> &[EpisodeMeta] {
        &self.episodes
    }
    /// Tasks by task_index.
    pub fn tasks(&self) -> &BTreeMap<i64, String> {
        &self.tasks
    }
    pub fn episode_meta(&self, index: EpisodeIndex) -> Result<&EpisodeMeta> {
        self.position
            .get(&index.0)
            .map(|&i| &self.episodes[i])
            .ok_or_else(|| {
                Error::invalid(
                    Location::file(self.root.join(layout::INFO_PATH)).episode(index.0),
                    "no such episode in the dataset",
                )
            })
    }

    /// The tasks table (`meta/tasks.parquet`, v2.1 `meta/tasks.jsonl`).
    pub fn tasks_path(&self) -> PathBuf {
        self.root.join(match self.info.version {
            Version::V3_0 => layout::DEFAULT_TASKS_PATH,
            Version::V2_1 => layout::LEGACY_TASKS_PATH,
        })
    }

    /// Path of the data parquet file holding an episode.
    pub fn data_path(&self, m: &EpisodeMeta) -> Result<PathBuf> {
        let rel = match self.info.version {
            Version::V3_0 => {
                layout::data_file(&self.info.data_path, m.data_chunk_index, m.data_file_index)?
            }
            Version::V2_1 => layout::format_path(
                &self.info.data_path,
                &[
                    ("episode_chunk", Arg::Int(m.data_chunk_index)),
                    ("episode_index", Arg::Int(m.episode_index)),
                    ("chunk_index", Arg::Int(m.data_chunk_index)),
                    ("file_index", Arg::Int(m.data_file_index)),
                ],
                "data_path",
            )?,
        };
        Ok(self.root.join(rel))
    }

    /// Path of the mp4 holding an episode's frames of camera `key`.
    pub fn video_path(&self, m: &EpisodeMeta, key: &str) -> Result<PathBuf> {
        let template = self.info.video_path.as_deref().ok_or_else(|| {
            Error::invalid(
                Location::file(self.root.join(layout::INFO_PATH)).field("video_path"),
                "missing",
            )
        })?;
        let v = m.videos.get(key).ok_or_else(|| {
            Error::invalid(
                Location::file(self.root.join(layout::EPISODES_DIR))
                    .episode(m.episode_index)
                    .field(format!("videos/{key}")),
                "missing",
            )
        })?;
        let rel = layout::format_path(
            template,
            &[
                ("video_key", Arg::Str(key)),
                ("chunk_index", Arg::Int(v.chunk_index)),
                ("file_index", Arg::Int(v.file_index)),
                ("episode_chunk", Arg::Int(m.data_chunk_index)),
                ("episode_index", Arg::Int(m.episode_index)),
            ],
            "video_path",
        )?;
        Ok(self.root.join(rel))
    }

    /// Read the rows of one episode: in v3.0 only the row groups that overlap its row range.
    fn read_rows(&self, m: &EpisodeMeta, path: &Path) -> Result<RecordBatch> {
        let ep = m.episode_index;
        let table_err =
            |e: &dyn std::fmt::Display| Error::table(Location::file(path).episode(ep), e);
        let builder = meta::open_parquet(path).map_err(|e| e.in_episode(ep))?;
        let schema = Arc::new(Schema::new(builder.schema().fields().clone()));
        let total_rows = builder.metadata().file_metadata().num_rows() as u64;
        let (offset, len) = match self.info.version {
            Version::V3_0 => {
                let start = self
                    .file_start
                    .get(&(m.data_chunk_index, m.data_file_index))
                    .copied()
                    .unwrap_or(0);
                (m.dataset_from_index - start, m.length)
            }
            Version::V2_1 => (0, total_rows),
        };
        if offset + len > total_rows {
            return Err(Error::invalid(
                Location::file(path).episode(ep).field("dataset_to_index"),
                format!(
                    "episode rows [{offset}, {}) of this file, but it has {total_rows} rows",
                    offset + len
                ),
            ));
        }
        // Pick the row groups overlapping [offset, offset + len) and select inside them.
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        let mut first_row = 0u64;
        for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
            let n = rg.num_rows() as u64;
            let (lo, hi) = (first_row, first_row + n);
            first_row = hi;
            let (a, b) = (offset.max(lo), (offset + len).min(hi));
            if a >= b {
                continue;
            }
            groups.push(i);
            if a > lo {
                selectors.push(RowSelector::skip((a - lo) as usize));
            }
            selectors.push(RowSelector::select((b - a) as usize));
            if hi > b {
                selectors.push(RowSelector::skip((hi - b) as usize));
            }
        }
        let reader = builder
            .with_row_groups(groups)
            .with_row_selection(RowSelection::from(selectors))
            .build()
            .map_err(|e| table_err(&e))?;
        let batches: Vec<RecordBatch> = reader
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| table_err(&e))?;
        let batch = arrow::compute::concat_batches(&schema, &batches).map_err(|e| table_err(&e))?;
        if self.info.version == Version::V3_0 && !rows_belong_to(&batch, ep) {
            // Row ranges disagree with the episode_index column (files written out of order):
            // fall back to scanning the file for this episode's rows.
            return self.scan_rows(m, path, schema);
        }
        Ok(batch)
    }

    fn scan_rows(&self, m: &EpisodeMeta, path: &Path, schema: Arc<Schema>) -> Result<RecordBatch> {
        let ep = m.episode_index;
        let table_err =
            |e: &dyn std::fmt::Display| Error::table(Location::file(path).episode(ep), e);
        let reader = meta::open_parquet(path)?
            .build()
            .map_err(|e| table_err(&e))?;
        let mut parts = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| table_err(&e))?;
            let col = batch.column_by_name("episode_index").ok_or_else(|| {
                Error::invalid(
                    Location::file(path).episode(ep).field("episode_index"),
                    "required column is missing",
                )
            })?;
            let col = arrow::compute::cast(col, &DataType::Int64).map_err(|e| table_err(&e))?;
            let mask: arrow::array::BooleanArray = col
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| Some(v == Some(ep as i64)))
                .collect();
            parts.push(
                arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| table_err(&e))?,
            );
        }
        arrow::compute::concat_batches(&schema, &parts).map_err(|e| table_err(&e))
    }

    /// Skip the check of each episode's `to_timestamp` against its mp4's duration (one header read per
    /// camera per episode).
    pub fn without_video_duration_check(mut self) -> Self {
        self.check_video_duration = false;
        self
    }
}

fn rows_belong_to(batch: &RecordBatch, ep: u64) -> bool {
    match batch
        .column_by_name("episode_index")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok())
    {
        Some(c) => c
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .all(|v| v == Some(ep as i64)),
        None => true,
    }
}

/// Frames stored in parquet as encoded images (lerobot `dtype: "image"`: struct{bytes, path}).
#[derive(Debug, Clone)]
pub struct EncodedImageFrames {
    images: Arc<Vec<Vec<u8>>>,
    size: (u32, u32),
    path: PathBuf,
    episode: u64,
    key: String,
}

impl FrameSource for EncodedImageFrames {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn decode(&self) -> Result<Vec<RgbImage>> {
        self.images
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let loc = Location::file(&self.path)
                    .episode(self.episode)
                    .frame(i as u64)
                    .field(self.key.clone());
                crate::episode::decode_image(b, self.size, loc)
            })
            .collect()
    }
}

/// The encoded bytes of an image column (struct{bytes, path}); a null `bytes` falls back to the file at `path`
/// (relative to the dataset root).
fn image_bytes(a: &ArrayRef, root: &Path, path: &Path, ep: u64, key: &str) -> Result<Vec<Vec<u8>>> {
    let loc = |row: usize| {
        Location::file(path)
            .episode(ep)
            .frame(row as u64)
            .field(key)
    };
    let s = match a.data_type() {
        DataType::Struct(_) => a.as_struct(),
        t => {
            return Err(Error::invalid(
                loc(0),
                format!("image column should be struct{{bytes, path}}, got {t}"),
            ))
        }
    };
    let bytes = s
        .column_by_name("bytes")
        .map(|b| arrow::compute::cast(b, &DataType::LargeBinary))
        .transpose()
        .map_err(|e| Error::table(loc(0), e))?;
    let paths = s
        .column_by_name("path")
        .map(|p| arrow::compute::cast(p, &DataType::LargeUtf8))
        .transpose()
        .map_err(|e| Error::table(loc(0), e))?;
    (0..s.len())
        .map(|row| {
            if let Some(b) = bytes
                .as_ref()
                .map(|b| b.as_binary::<i64>())
                .filter(|b| b.is_valid(row))
            {
                return Ok(b.value(row).to_vec());
            }
            if let Some(p) = paths
                .as_ref()
                .map(|p| p.as_string::<i64>())
                .filter(|p| p.is_valid(row))
            {
                let relative = p.value(row);
                if !stays_inside_root(Path::new(relative)) {
                    return Err(Error::invalid(
                        loc(row),
                        format!("image path {relative:?} leads outside the dataset root"),
                    ));
                }
                let f = root.join(relative);
                return std::fs::read(&f).map_err(|e| Error::io(e, &f).in_episode(ep));
            }
            Err(Error::invalid(loc(row), "image has neither bytes nor path"))
        })
        .collect()
}

impl EpisodeSource for LeRobotDataset {
    fn format(&self) -> &str {
        self.info.version.format_name()
    }
    fn fps(&self) -> f64 {
        self.info.fps
    }
    fn features(&self) -> &Features {
        &self.features
    }
    fn episode_indices(&self) -> Vec<EpisodeIndex> {
        self.episodes
            .iter()
            .map(|e| EpisodeIndex(e.episode_index))
            .collect()
    }

    fn episode_len(&self, index: EpisodeIndex) -> Option<usize> {
        self.episode_meta(index).ok().map(|m| m.length as usize)
    }

    fn read_episode(&self, index: EpisodeIndex) -> Result<Episode> {
        let m = self.episode_meta(index)?;
        let ep = m.episode_index;
        let data_path = self.data_path(m)?;
        let batch = meta::decoding(&data_path, || self.read_rows(m, &data_path))
            .map_err(|e| e.in_episode(m.episode_index))?;
        if batch.num_rows() as u64 != m.length {
            return Err(Error::invalid(
                Location::file(&data_path).episode(ep).field("length"),
                format!(
                    "metadata says {} frames, the data file holds {} rows of this episode",
                    m.length,
                    batch.num_rows()
                ),
            ));
        }
        // After the rows: a length that disagrees with them is named as such, not as a span that disagrees.
        if self.info.version == Version::V3_0 {
            for key in m.videos.keys() {
                checks::check_video_span(m, key, self.info.fps)?;
            }
        }
        checks::check_task_indices(
            &batch,
            &self.tasks,
            &m.tasks,
            &data_path,
            ep,
            &self.tasks_path(),
        )?;
        let mut cameras = BTreeMap::new();
        // Image features leave the table and become frame sources; every other column passes through untouched.
        let mut keep_fields = Vec::new();
        let mut keep_cols = Vec::new();
        for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
            match self.features.get(field.name()) {
                Some(f) if f.dtype == "image" => {
                    let size = meta::visual_size(field.name(), f)?;
                    let images = image_bytes(col, &self.root, &data_path, ep, field.name())?;
                    cameras.insert(
                        field.name().clone(),
                        Frames::new(EncodedImageFrames {
                            images: Arc::new(images),
                            size,
                            path: data_path.clone(),
                            episode: ep,
                            key: field.name().clone(),
                        }),
                    );
                }
                _ => {
                    keep_fields.push(field.clone());
                    keep_cols.push(col.clone());
                }
            }
        }
        for (key, f) in self.features.iter().filter(|(_, f)| f.dtype != "video") {
            let present = if f.dtype == "image" {
                cameras.contains_key(key)
            } else {
                keep_fields.iter().any(|x| x.name() == key)
            };
            if !present {
                return Err(Error::invalid(
                    Location::file(&data_path).episode(ep).field(key),
                    format!(
                        "required column is missing (info.json declares a {} feature)",
                        f.dtype
                    ),
                ));
            }
        }
        // A column whose width disagrees with the declared shape would be carried on with the wrong metadata.
        for (field, col) in keep_fields.iter().zip(&keep_cols) {
            let Some(f) = self.features.get(field.name()) else {
                continue;
            };
            let declared: usize = f.shape.iter().product();
            if let Some(width) = fixed_width(col.data_type()) {
                if width != declared {
                    return Err(Error::invalid(
                        Location::file(&data_path).episode(ep).field(field.name()),
                        format!(
                            "{} declares shape {:?} ({declared} values per frame) but the column holds {width}",
                            layout::INFO_PATH,
                            f.shape
                        ),
                    ));
                }
            }
        }
        for (key, f) in self.features.iter().filter(|(_, f)| f.dtype == "video") {
            let path = self.video_path(m, key)?;
            let there =
                crate::io::fs::exists(&path).map_err(|e| e.in_episode(ep).with_field(key))?;
            if !there || !path.is_file() {
                return Err(Error::io(
                    std::io::Error::new(std::io::ErrorKind::NotFound, "video file not found"),
                    &path,
                )
                .in_episode(ep)
                .with_field(key));
            }
            let v = &m.videos[key];
            if self.info.version == Version::V3_0 && self.check_video_duration {
                checks::check_video_duration(m, key, self.info.fps, &path)
                    .map_err(|e| e.with_field(key))?;
            }
            let size = meta::visual_size(key, f)?;
            cameras.insert(
                key.clone(),
                Frames::new(
                    Mp4Frames::new(
                        path,
                        v.from_timestamp,
                        self.info.fps,
                        m.length as usize,
                        size,
                    )
                    .labelled(ep, key.clone()),
                ),
            );
        }
        let columns = RecordBatch::try_new(Arc::new(Schema::new(keep_fields)), keep_cols)
            .map_err(|e| Error::table(Location::file(&data_path).episode(ep), e))?;
        let task = match m.tasks.first() {
            Some(t) => t.clone(),
            None => columns
                .column_by_name("task_index")
                .filter(|c| !c.is_empty())
                .and_then(|c| meta::int_at(c.as_ref(), 0, &data_path, "task_index").ok())
                .and_then(|i| self.tasks.get(&i).cloned())
                .unwrap_or_default(),
        };
        Ok(Episode {
            index: EpisodeIndex(ep),
            task,
            fps: self.info.fps,
            cameras,
            columns,
            episode_columns: m.columns.clone(),
            provenance: Provenance {
                source: self.root.display().to_string(),
                format: self.info.version.format_name().to_string(),
                source_episode_index: ep,
            },
        })
    }
}

/// Values per row of a column of scalars or (nested) fixed-size lists of scalars; None for variable-width
/// columns (lists, strings of several values, structs), which are not checked against the declared shape.
fn fixed_width(dt: &DataType) -> Option<usize> {
    match dt {
        DataType::FixedSizeList(f, n) => fixed_width(f.data_type()).map(|w| w * *n as usize),
        DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) | DataType::Map(_, _) => {
            None
        }
        _ => Some(1),
    }
}

trait WithField {
    fn with_field(self, key: &str) -> Self;
}
impl WithField for Error {
    fn with_field(mut self, key: &str) -> Self {
        if let Error::Io { loc, .. } | Error::Video { loc, .. } | Error::InvalidData { loc, .. } =
            &mut self
        {
            loc.field.get_or_insert_with(|| key.to_string());
        }
        self
    }
}
