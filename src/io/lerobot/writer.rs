//! Write a LeRobot v3.0 dataset, with lerobot's lifecycle (`lerobot_dataset.py`: `create`,
//! `save_episode`, `finalize`) and its file layout: episodes appended to shared data parquet files and
//! shared mp4s, each rolled over by size (`data_files_size_in_mb`, `video_files_size_in_mb`) into
//! `chunk-XXX/file-YYY` with `chunks_size` files per chunk (`_save_episode_data`, `_save_episode_video`).
//! With [`CameraStorage::Images`] the cameras are PNG columns of the data files instead (`images.rs`).
//!
//! Every file is written under a hidden temporary name in its final directory and renamed once complete;
//! `meta/info.json` is written last, by [`LeRobotWriter::finalize`], so a crashed or abandoned write never
//! looks like a dataset. Dropping an unfinalized writer deletes its temporary files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use image::RgbImage;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};

use super::episode_columns;
use super::images::{self, CameraStorage};
use super::layout::{self, CODEBASE_VERSION};
use super::meta;
use super::stats::{self, FeatureStats, Stats};
use super::table::{self, renumber, TableSpec, Tasks};
use crate::episode::{Episode, EpisodeColumns, Feature, Features};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::fs::{temp_path_for, write_atomic};
use crate::io::video::{EncoderOptions, Mp4Encoder};

/// The columns every LeRobot dataset has (`DEFAULT_FEATURES` in lerobot's `utils.py`), in its order.
pub const DEFAULT_FEATURES: [(&str, &str); 5] = [
    ("timestamp", "float32"),
    ("frame_index", "int64"),
    ("episode_index", "int64"),
    ("index", "int64"),
    ("task_index", "int64"),
];

/// [`DEFAULT_FEATURES`] as features: one scalar each, as lerobot declares them.
pub fn default_features() -> impl Iterator<Item = (String, Feature)> {
    DEFAULT_FEATURES.iter().map(|(k, dtype)| {
        let f = Feature {
            dtype: dtype.to_string(),
            shape: vec![1],
            names: None,
            info: None,
        };
        (k.to_string(), f)
    })
}

pub use super::table::Numbering;

/// Writer settings; defaults are lerobot's.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Files per chunk directory.
    pub chunks_size: u64,
    /// A data parquet file is closed when the next episode would take it past this size.
    pub data_files_size_in_mb: f64,
    /// An mp4 is closed when the next episode would take it past this size.
    pub video_files_size_in_mb: f64,
    pub video: EncoderOptions,
    /// How cameras are stored: mp4 videos, or PNG images in the data parquet.
    pub storage: CameraStorage,
    /// How `episode_index`, `index` and `task_index` are numbered.
    pub numbering: Numbering,
    pub robot_type: Option<String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            chunks_size: layout::DEFAULT_CHUNK_SIZE,
            data_files_size_in_mb: layout::DEFAULT_DATA_FILE_SIZE_IN_MB,
            video_files_size_in_mb: layout::DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            video: EncoderOptions::default(),
            storage: CameraStorage::Video,
            numbering: Numbering::Source,
            robot_type: None,
        }
    }
}

/// What [`LeRobotWriter::finalize`] wrote.
#[derive(Debug, Clone)]
#[must_use]
pub struct WriteSummary {
    pub root: PathBuf,
    pub episodes: u64,
    pub frames: u64,
    pub tasks: u64,
    pub data_files: Vec<PathBuf>,
    pub video_files: Vec<PathBuf>,
    pub episodes_files: Vec<PathBuf>,
}

struct DataFile {
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    tmp: PathBuf,
    path: PathBuf,
    frames: u64,
}

struct VideoState {
    encoder: Option<Mp4Encoder>,
    chunk: u64,
    file: u64,
    started: bool,
    info: Option<Value>,
}

struct EpisodeRow {
    episode_index: u64,
    tasks: Vec<String>,
    length: u64,
    data: (u64, u64),
    from_index: u64,
    videos: Vec<(String, u64, u64, f64, f64)>,
    stats: Stats,
    /// The source's extra episodes-table columns, written back after lerobot's.
    columns: EpisodeColumns,
}

/// Writes a LeRobot v3.0 dataset one episode at a time.
pub struct LeRobotWriter {
    root: PathBuf,
    fps: f64,
    features: Vec<(String, Feature)>,
    opts: WriterOptions,
    tasks: Tasks,
    /// [`Numbering::Renumber`]: the source's task_index -> this dataset's, in order of first use.
    source_tasks: BTreeMap<i64, i64>,
    rows: Vec<EpisodeRow>,
    seen_episodes: std::collections::HashSet<u64>,
    data: Option<DataFile>,
    data_pos: (u64, u64),
    /// Set once the current `save_episode` call has started writing files: an error after that
    /// leaves the files inconsistent with the metadata, so the writer refuses to go on.
    writing: bool,
    data_files: Vec<PathBuf>,
    schema: Option<SchemaRef>,
    videos: BTreeMap<String, VideoState>,
    video_files: Vec<PathBuf>,
    stats: Stats,
    total_frames: u64,
    failed: Option<String>,
}

impl std::fmt::Debug for LeRobotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeRobotWriter")
            .field("root", &self.root)
            .field("episodes", &self.rows.len())
            .field("frames", &self.total_frames)
            .finish()
    }
}

/// HF `datasets` feature JSON for an arrow type (datasets 4: `Value`, `List`), stored in the parquet
/// schema's `huggingface` metadata like `datasets.Dataset.to_parquet` does.
fn hf_feature(t: &DataType) -> Value {
    let value = |d: &str| json!({"dtype": d, "_type": "Value"});
    match t {
        DataType::Boolean => value("bool"),
        DataType::Int8 => value("int8"),
        DataType::Int16 => value("int16"),
        DataType::Int32 => value("int32"),
        DataType::Int64 => value("int64"),
        DataType::UInt8 => value("uint8"),
        DataType::UInt16 => value("uint16"),
        DataType::UInt32 => value("uint32"),
        DataType::UInt64 => value("uint64"),
        DataType::Float16 => value("float16"),
        DataType::Float32 => value("float32"),
        DataType::Float64 => value("float64"),
        DataType::Utf8 => value("string"),
        DataType::LargeUtf8 => value("large_string"),
        DataType::Binary => value("binary"),
        DataType::FixedSizeList(f, n) => {
            json!({"feature": hf_feature(f.data_type()), "length": n, "_type": "List"})
        }
        DataType::List(f) | DataType::LargeList(f) => {
            json!({"feature": hf_feature(f.data_type()), "_type": "List"})
        }
        other => value(&other.to_string().to_lowercase()),
    }
}

impl LeRobotWriter {
    /// Start a dataset at `root` (which must not exist or be empty). `features` are the info.json
    /// features of the table columns and cameras; camera features (`video` or `image`, each written as
    /// `options.storage` says) need shape [height, width, 3]. lerobot's default columns (`timestamp`,
    /// `frame_index`, `episode_index`, `index`, `task_index`) are added when missing.
    pub fn create(
        root: impl AsRef<Path>,
        fps: f64,
        features: &Features,
        options: WriterOptions,
    ) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if root.exists() && std::fs::read_dir(&root).at(&root)?.next().is_some() {
            return Err(Error::invalid(
                Location::file(&root),
                "output directory exists and is not empty",
            ));
        }
        if !(fps > 0.0 && fps.is_finite()) {
            return Err(Error::config(
                Location::none().field("fps"),
                format!("must be positive, got {fps}"),
            ));
        }
        if options.chunks_size == 0
            || options.data_files_size_in_mb <= 0.0
            || options.video_files_size_in_mb <= 0.0
        {
            return Err(Error::config(
                Location::none().field("chunks_size"),
                "chunks_size and file sizes must be positive",
            ));
        }
        // lerobot order: cameras and user features first, its default columns last.
        let mut ordered: Vec<(String, Feature)> = Vec::new();
        for (k, f) in features
            .iter()
            .filter(|(k, _)| !DEFAULT_FEATURES.iter().any(|(d, _)| d == k))
        {
            if k.contains('/') {
                return Err(Error::config(
                    Location::none().field(k),
                    "feature names must not contain '/' (lerobot)",
                ));
            }
            let mut f = f.clone();
            if f.is_visual() {
                meta::visual_size(k, &f)?;
                let dtype = options.storage.dtype();
                if f.dtype != dtype {
                    tracing::info!(feature = %k, from = %f.dtype, "camera feature written as {dtype}");
                    f.dtype = dtype.into();
                }
                f.info = None;
                if f.names.is_none() {
                    f.names = Some(json!(["height", "width", "channels"]));
                }
            }
            ordered.push((k.clone(), f));
        }
        for (k, default) in default_features() {
            let f = features.get(&k).cloned().unwrap_or(default);
            ordered.push((k, f));
        }
        std::fs::create_dir_all(&root).at(&root)?;
        let videos = ordered
            .iter()
            .filter(|(_, f)| f.dtype == "video")
            .map(|(k, _)| {
                (
                    k.clone(),
                    VideoState {
                        encoder: None,
                        chunk: 0,
                        file: 0,
                        started: false,
                        info: None,
                    },
                )
            })
            .collect();
        Ok(Self {
            root,
            fps,
            features: ordered,
            opts: options,
            tasks: Tasks::default(),
            source_tasks: BTreeMap::new(),
            rows: Vec::new(),
            seen_episodes: Default::default(),
            data: None,
            data_pos: (0, 0),
            writing: false,
            data_files: Vec::new(),
            schema: None,
            videos,
            video_files: Vec::new(),
            stats: Stats::new(),
            total_frames: 0,
            failed: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Episodes saved so far.
    pub fn num_episodes(&self) -> u64 {
        self.rows.len() as u64
    }

    /// lerobot's name for [`save_episode`](Self::save_episode).
    pub fn add_episode(&mut self, episode: &Episode) -> Result<()> {
        self.save_episode(episode)
    }

    /// Append one episode: its rows to the current data file, its frames to each camera's current mp4.
    /// If this fails part-way the writer refuses further episodes and [`finalize`](Self::finalize) fails,
    /// so no inconsistent dataset is ever completed.
    pub fn save_episode(&mut self, ep: &Episode) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::invalid(
                Location::file(&self.root),
                format!("writer unusable after an earlier error: {why}"),
            ));
        }
        self.writing = false;
        let source_tasks = self.source_tasks.clone();
        let r = self.save_episode_inner(ep);
        if let Err(e) = &r {
            // Refused before any file was touched (bad columns, bad frames): the writer stays usable.
            if self.writing {
                self.failed = Some(e.to_string());
            } else {
                self.source_tasks = source_tasks;
            }
        }
        self.writing = false;
        r
    }

    fn save_episode_inner(&mut self, ep: &Episode) -> Result<()> {
        let renumbered;
        let ep = match self.opts.numbering {
            Numbering::Renumber => {
                let mut copy = ep.clone();
                renumber(
                    &mut copy,
                    self.rows.len() as u64,
                    self.total_frames,
                    &mut self.source_tasks,
                )?;
                renumbered = copy;
                &renumbered
            }
            Numbering::Source | Numbering::Reindex => ep,
        };
        let n = ep.len();
        let src = ep.index.0;
        let loc = Location::none().episode(src);
        if n == 0 {
            return Err(Error::invalid(loc, "episode has no frames"));
        }
        // Episode index in the output: re-indexed, or the source's episode_index column (constant).
        let reindex = self.opts.numbering == Numbering::Reindex;
        let episode_index = match ep.columns.column_by_name("episode_index") {
            Some(c) if !reindex => {
                let c = arrow::compute::cast(c, &DataType::Int64)
                    .map_err(|e| Error::table(loc.clone().field("episode_index"), e))?;
                let c = c.as_primitive::<Int64Type>();
                let first = c.value(0);
                if c.iter().any(|v| v != Some(first)) || first < 0 {
                    return Err(Error::invalid(
                        loc.field("episode_index"),
                        "episode_index is not one constant non-negative value",
                    ));
                }
                first as u64
            }
            _ if reindex => self.rows.len() as u64,
            _ => src,
        };
        if self.seen_episodes.contains(&episode_index) {
            return Err(Error::invalid(
                loc.field("episode_index"),
                format!("episode_index {episode_index} written twice (write with re-indexing)"),
            ));
        }
        // 1. Validate and prepare everything before touching any file.
        if let Some(first) = self.rows.first() {
            episode_columns::check_same(&first.columns, &ep.episode_columns, src)?;
        }
        let task_snapshot = self.tasks.clone();
        let prepared = self.prepare(ep, episode_index);
        let (batch, ep_tasks, frames) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.tasks = task_snapshot;
                return Err(e);
            }
        };
        let mut ep_stats = Stats::new();
        for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
            let is_string = self
                .features
                .iter()
                .any(|(k, f)| k == field.name() && f.dtype == "string");
            if let (false, Some(s)) = (is_string, stats::column_stats(col.as_ref())) {
                ep_stats.insert(field.name().clone(), s);
            }
        }
        for (key, fr) in &frames {
            ep_stats.insert(key.clone(), stats::image_stats(fr));
        }
        // 2. Data rows.
        self.writing = true;
        let from_index = self.total_frames;
        let data = self.write_rows(&batch)?;
        // 3. Videos.
        let mut videos = Vec::new();
        for (key, fr) in &frames {
            if self.videos.contains_key(key) {
                videos.push(self.write_video(key, fr, src)?);
            }
        }
        self.total_frames += n as u64;
        stats::merge_into(&mut self.stats, &ep_stats);
        self.seen_episodes.insert(episode_index);
        self.rows.push(EpisodeRow {
            episode_index,
            tasks: ep_tasks,
            length: n as u64,
            data,
            from_index,
            videos,
            stats: ep_stats,
            columns: ep.episode_columns.clone(),
        });
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        ep: &Episode,
        episode_index: u64,
    ) -> Result<(RecordBatch, Vec<String>, Vec<(String, Vec<RgbImage>)>)> {
        let n = ep.len();
        let spec = TableSpec {
            features: &self.features,
            fps: self.fps,
            numbering: self.opts.numbering,
            first_row: self.total_frames,
        };
        let (batch, ep_tasks) = table::episode_table(&spec, &mut self.tasks, ep, episode_index)?;
        let mut frames = Vec::new();
        for (key, f) in self.features.iter().filter(|(_, f)| f.is_visual()) {
            let loc = Location::none().episode(ep.index.0).field(key);
            let cam = ep.cameras.get(key).ok_or_else(|| {
                Error::invalid(loc.clone(), "the episode has no frames for this camera")
            })?;
            let (h, w) = meta::visual_size(key, f)?;
            if cam.len() != n || cam.size() != (h, w) {
                return Err(Error::invalid(
                    loc,
                    format!("camera has {} frames of {:?} (h, w); the episode has {n} rows and the feature is {:?}", cam.len(), cam.size(), (h, w)),
                ));
            }
            let decoded = cam.decode().map_err(|e| e.in_episode(ep.index.0))?;
            if decoded.len() != n {
                return Err(Error::invalid(
                    loc,
                    format!("decoded {} frames, expected {n}", decoded.len()),
                ));
            }
            frames.push((key.clone(), decoded));
        }
        let batch = self.with_image_columns(batch, &frames, ep.index.0)?;
        if let Some(s) = &self.schema {
            let same = s.fields().len() == batch.schema().fields().len()
                && s.fields()
                    .iter()
                    .zip(batch.schema().fields())
                    .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
            if !same {
                let diff = batch
                    .schema()
                    .fields()
                    .iter()
                    .find(|b| {
                        s.field_with_name(b.name())
                            .map(|a| a.data_type() != b.data_type())
                            .unwrap_or(true)
                    })
                    .map(|f| f.name().clone())
                    .unwrap_or_else(|| "columns".into());
                return Err(Error::invalid(
                    Location::none().episode(ep.index.0).field(diff),
                    "columns differ from the first episode's (names, order or types)",
                ));
            }
        }
        Ok((batch, ep_tasks, frames))
    }

    /// The table with one PNG column per `image` camera in front (lerobot puts cameras first), in feature order.
    fn with_image_columns(
        &self,
        batch: RecordBatch,
        frames: &[(String, Vec<RgbImage>)],
        episode: u64,
    ) -> Result<RecordBatch> {
        let mut fields: Vec<Field> = Vec::new();
        let mut cols: Vec<ArrayRef> = Vec::new();
        for (key, fr) in frames {
            if self
                .features
                .iter()
                .any(|(k, f)| k == key && f.dtype == "image")
            {
                fields.push(Field::new(key, images::image_type(), true));
                cols.push(images::image_column(fr, episode, key)?);
            }
        }
        if cols.is_empty() {
            return Ok(batch);
        }
        fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
        cols.extend(batch.columns().iter().cloned());
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::table(Location::none().episode(episode), e))
    }

    fn data_props(&self, schema: &Schema) -> Result<(SchemaRef, WriterProperties)> {
        let features: serde_json::Map<String, Value> = schema
            .fields()
            .iter()
            .map(|f| {
                let image = self
                    .features
                    .iter()
                    .any(|(k, g)| k == f.name() && g.dtype == "image");
                let hf = if image {
                    images::hf_image_feature()
                } else {
                    hf_feature(f.data_type())
                };
                (f.name().clone(), hf)
            })
            .collect();
        let hf = json!({"info": {"features": features}});
        let mut md = std::collections::HashMap::new();
        md.insert("huggingface".to_string(), hf.to_string());
        let schema = Arc::new(Schema::new(schema.fields().clone()).with_metadata(md));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        Ok((schema, props))
    }

    fn close_data(&mut self) -> Result<()> {
        if let Some(d) = self.data.take() {
            d.writer
                .close()
                .map_err(|e| Error::table(Location::file(&d.tmp), e))?;
            std::fs::rename(&d.tmp, &d.path).at(&d.path)?;
            self.data_files.push(d.path);
        }
        Ok(())
    }

    /// Append rows to the current data file, rolling over like lerobot's `_save_episode_data`:
    /// a new file when `size + mean_row_size * rows >= data_files_size_in_mb`.
    fn write_rows(&mut self, batch: &RecordBatch) -> Result<(u64, u64)> {
        let limit = self.opts.data_files_size_in_mb * 1024.0 * 1024.0;
        if let Some(d) = &self.data {
            let size = d.writer.bytes_written() as f64;
            let per_row = if d.frames > 0 {
                size / d.frames as f64
            } else {
                0.0
            };
            if size + per_row * batch.num_rows() as f64 >= limit {
                self.close_data()?;
                self.data_pos = layout::next_chunk_file(
                    self.data_pos.0,
                    self.data_pos.1,
                    self.opts.chunks_size,
                );
            }
        }
        if self.data.is_none() {
            let rel =
                layout::data_file(layout::DEFAULT_DATA_PATH, self.data_pos.0, self.data_pos.1)?;
            let path = self.root.join(rel);
            let parent = path.parent().unwrap_or(&self.root).to_path_buf();
            std::fs::create_dir_all(&parent).at(&parent)?;
            let tmp = temp_path_for(&path);
            let file = File::create(&tmp).at(&tmp)?;
            let (schema, props) = self.data_props(&batch.schema())?;
            self.schema.get_or_insert_with(|| batch.schema());
            let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
                .map_err(|e| Error::table(Location::file(&tmp), e))?;
            self.data = Some(DataFile {
                writer,
                schema,
                tmp,
                path,
                frames: 0,
            });
        }
        let pos = self.data_pos;
        if let Some(d) = self.data.as_mut() {
            let loc = || Location::file(&d.tmp);
            // Same fields as the file's schema, but with its metadata.
            let batch = RecordBatch::try_new(d.schema.clone(), batch.columns().to_vec())
                .map_err(|e| Error::table(loc(), e))?;
            d.writer.write(&batch).map_err(|e| Error::table(loc(), e))?;
            // One row group per episode (as pyarrow's write_table does), so readers can select episodes.
            d.writer.flush().map_err(|e| Error::table(loc(), e))?;
            d.frames += batch.num_rows() as u64;
        }
        Ok(pos)
    }

    /// Append frames to the camera's current mp4, rolling over like `_save_episode_video`.
    fn write_video(
        &mut self,
        key: &str,
        frames: &[RgbImage],
        src_episode: u64,
    ) -> Result<(String, u64, u64, f64, f64)> {
        let limit = self.opts.video_files_size_in_mb * 1024.0 * 1024.0;
        let (w, h) = (frames[0].width(), frames[0].height());
        let fps = self.fps;
        let enc_opts = self.opts.video.clone();
        let chunks_size = self.opts.chunks_size;
        let st = self
            .videos
            .get_mut(key)
            .ok_or_else(|| Error::invalid(Location::none().field(key), "not a video feature"))?;
        if let Some(enc) = &st.encoder {
            let size = enc.bytes() as f64;
            let per_frame = if enc.frames() > 0 {
                size / enc.frames() as f64
            } else {
                0.0
            };
            if size + per_frame * frames.len() as f64 >= limit {
                let done = st.encoder.take().map(|e| e.finish()).transpose()?;
                if let Some(done) = done {
                    st.info.get_or_insert_with(|| done.info.to_feature_info());
                    self.video_files.push(done.path);
                }
                (st.chunk, st.file) = layout::next_chunk_file(st.chunk, st.file, chunks_size);
            }
        }
        if st.encoder.is_none() {
            let rel = layout::video_file(layout::DEFAULT_VIDEO_PATH, key, st.chunk, st.file)?;
            st.encoder = Some(Mp4Encoder::create(
                self.root.join(rel),
                w,
                h,
                fps,
                &enc_opts,
            )?);
            st.started = true;
        }
        let enc = st
            .encoder
            .as_mut()
            .ok_or_else(|| Error::invalid(Location::none().field(key), "no encoder"))?;
        enc.begin_episode()?;
        for f in frames {
            enc.push(f).map_err(|e| e.in_episode(src_episode))?;
        }
        let span = enc.end_episode()?;
        Ok((
            key.to_string(),
            st.chunk,
            st.file,
            span.from_timestamp,
            span.to_timestamp,
        ))
    }

    /// The episodes table, lerobot's column order: episode_index, tasks, length, data/…, dataset_from/to_index,
    /// videos/<key>/…, stats/<feature>/…, meta/episodes/…; then the source's extra columns, as they were.
    fn episodes_batch(&self, rows: &[&EpisodeRow], meta_pos: (u64, u64)) -> Result<RecordBatch> {
        let loc = || Location::file(self.root.join(layout::EPISODES_DIR));
        let mut fields: Vec<Field> = Vec::new();
        let mut cols: Vec<ArrayRef> = Vec::new();
        let mut push = |name: &str, a: ArrayRef| {
            fields.push(Field::new(name, a.data_type().clone(), true));
            cols.push(a);
        };
        let ints = |f: &dyn Fn(&EpisodeRow) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from(
                rows.iter().map(|r| f(r) as i64).collect::<Vec<_>>(),
            ))
        };
        push("episode_index", ints(&|r| r.episode_index));
        let task_values: Vec<&str> = rows
            .iter()
            .flat_map(|r| r.tasks.iter().map(String::as_str))
            .collect();
        let tasks = ListArray::new(
            Arc::new(Field::new("element", DataType::Utf8, true)),
            OffsetBuffer::from_lengths(rows.iter().map(|r| r.tasks.len())),
            Arc::new(StringArray::from(task_values)),
            None,
        );
        push("tasks", Arc::new(tasks));
        push("length", ints(&|r| r.length));
        push("data/chunk_index", ints(&|r| r.data.0));
        push("data/file_index", ints(&|r| r.data.1));
        push("dataset_from_index", ints(&|r| r.from_index));
        push("dataset_to_index", ints(&|r| r.from_index + r.length));
        for (vi, key) in self.videos.keys().enumerate() {
            let get = |r: &EpisodeRow| r.videos.get(vi).cloned().filter(|v| &v.0 == key);
            let mut missing = false;
            let vals: Vec<(u64, u64, f64, f64)> = rows
                .iter()
                .map(|r| {
                    get(r).map(|v| (v.1, v.2, v.3, v.4)).unwrap_or_else(|| {
                        missing = true;
                        (0, 0, 0.0, 0.0)
                    })
                })
                .collect();
            if missing {
                return Err(Error::invalid(
                    loc().field(format!("videos/{key}")),
                    "episode without video",
                ));
            }
            push(
                &format!("videos/{key}/chunk_index"),
                Arc::new(Int64Array::from(
                    vals.iter().map(|v| v.0 as i64).collect::<Vec<_>>(),
                )),
            );
            push(
                &format!("videos/{key}/file_index"),
                Arc::new(Int64Array::from(
                    vals.iter().map(|v| v.1 as i64).collect::<Vec<_>>(),
                )),
            );
            push(
                &format!("videos/{key}/from_timestamp"),
                Arc::new(Float64Array::from(
                    vals.iter().map(|v| v.2).collect::<Vec<_>>(),
                )),
            );
            push(
                &format!("videos/{key}/to_timestamp"),
                Arc::new(Float64Array::from(
                    vals.iter().map(|v| v.3).collect::<Vec<_>>(),
                )),
            );
        }
        // Stats columns: features in info.json order, each episode's stats row concatenated.
        for (key, _) in &self.features {
            let per_row: Vec<Option<Vec<(String, ArrayRef)>>> = rows
                .iter()
                .map(|r| r.stats.get(key).map(FeatureStats::to_columns))
                .collect();
            let Some(template) = per_row.iter().flatten().next() else {
                continue;
            };
            if per_row.iter().any(Option::is_none) {
                return Err(Error::invalid(
                    loc().field(format!("stats/{key}")),
                    "stats missing for some episodes",
                ));
            }
            for (si, (stat, _)) in template.iter().enumerate() {
                let parts: Vec<&dyn Array> =
                    per_row.iter().flatten().map(|c| c[si].1.as_ref()).collect();
                let col = arrow::compute::concat(&parts)
                    .map_err(|e| Error::table(loc().field(format!("stats/{key}/{stat}")), e))?;
                push(&format!("stats/{key}/{stat}"), col);
            }
        }
        push("meta/episodes/chunk_index", ints(&|_| meta_pos.0));
        push("meta/episodes/file_index", ints(&|_| meta_pos.1));
        let extra: Vec<&EpisodeColumns> = rows.iter().map(|r| &r.columns).collect();
        for (field, col) in episode_columns::concat(&extra, loc)? {
            fields.push(field);
            cols.push(col);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::table(loc(), e))
    }

    /// Write the episodes table in groups of episodes, rolling files over by `data_files_size_in_mb`.
    fn write_episodes(&self) -> Result<Vec<PathBuf>> {
        const GROUP: usize = 100;
        let limit = self.opts.data_files_size_in_mb * 1024.0 * 1024.0;
        let mut files = Vec::new();
        let mut pos = (0u64, 0u64);
        let mut current: Option<(ArrowWriter<File>, PathBuf, PathBuf)> = None;
        let close = |w: Option<(ArrowWriter<File>, PathBuf, PathBuf)>,
                     files: &mut Vec<PathBuf>|
         -> Result<()> {
            if let Some((w, tmp, path)) = w {
                w.close()
                    .map_err(|e| Error::table(Location::file(&tmp), e))?;
                std::fs::rename(&tmp, &path).at(&path)?;
                files.push(path);
            }
            Ok(())
        };
        let rows: Vec<&EpisodeRow> = self.rows.iter().collect();
        for group in rows.chunks(GROUP) {
            if let Some((w, _, _)) = &current {
                if w.bytes_written() as f64 >= limit {
                    close(current.take(), &mut files)?;
                    pos = layout::next_chunk_file(pos.0, pos.1, self.opts.chunks_size);
                }
            }
            let batch = self.episodes_batch(group, pos)?;
            if current.is_none() {
                let path = self.root.join(layout::episodes_file(pos.0, pos.1));
                let parent = path.parent().unwrap_or(&self.root).to_path_buf();
                std::fs::create_dir_all(&parent).at(&parent)?;
                let tmp = temp_path_for(&path);
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let w =
                    ArrowWriter::try_new(File::create(&tmp).at(&tmp)?, batch.schema(), Some(props))
                        .map_err(|e| Error::table(Location::file(&tmp), e))?;
                current = Some((w, tmp, path));
            }
            if let Some((w, tmp, _)) = current.as_mut() {
                w.write(&batch)
                    .map_err(|e| Error::table(Location::file(&*tmp), e))?;
                w.flush()
                    .map_err(|e| Error::table(Location::file(&*tmp), e))?;
            }
        }
        close(current.take(), &mut files)?;
        Ok(files)
    }

    /// `meta/tasks.parquet` as pandas writes lerobot's task frame: `task_index` column and the task
    /// strings as the (unnamed) index, with the `pandas` schema metadata that restores it.
    fn write_tasks(&self) -> Result<()> {
        let path = self.root.join(layout::DEFAULT_TASKS_PATH);
        let pandas = json!({
            "index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": null, "field_name": null, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": null},
                {"name": null, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": null}
            ],
            "attributes": {},
            "creator": {"library": "vadapt", "version": env!("CARGO_PKG_VERSION")},
            "pandas_version": "2.2.0"
        });
        let mut md = std::collections::HashMap::new();
        md.insert("pandas".to_string(), pandas.to_string());
        let schema = Arc::new(
            Schema::new(vec![
                Field::new("task_index", DataType::Int64, true),
                Field::new("__index_level_0__", DataType::Utf8, true),
            ])
            .with_metadata(md),
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(
                    self.tasks.iter().map(|(i, _)| i).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    self.tasks.iter().map(|(_, t)| t).collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(|e| Error::table(Location::file(&path), e))?;
        let mut buf = Vec::new();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props))
            .map_err(|e| Error::table(Location::file(&path), e))?;
        w.write(&batch)
            .map_err(|e| Error::table(Location::file(&path), e))?;
        w.close()
            .map_err(|e| Error::table(Location::file(&path), e))?;
        write_atomic(&path, &buf)
    }

    /// Close every file and write the metadata (`meta/episodes/…`, `tasks.parquet`, `stats.json`, and
    /// last `info.json`). Until this returns Ok the directory is not a dataset.
    pub fn finalize(mut self) -> Result<WriteSummary> {
        if let Some(why) = &self.failed {
            return Err(Error::invalid(
                Location::file(&self.root),
                format!("not finalizing after an earlier error: {why}"),
            ));
        }
        if self.rows.is_empty() {
            return Err(Error::invalid(
                Location::file(&self.root),
                "no episodes were saved",
            ));
        }
        self.close_data()?;
        let keys: Vec<String> = self.videos.keys().cloned().collect();
        for key in keys {
            let Some(st) = self.videos.get_mut(&key) else {
                continue;
            };
            if let Some(enc) = st.encoder.take() {
                let done = enc.finish()?;
                st.info.get_or_insert_with(|| done.info.to_feature_info());
                self.video_files.push(done.path);
            }
        }
        let episodes_files = self.write_episodes()?;
        self.write_tasks()?;
        let stats_path = self.root.join(layout::STATS_PATH);
        let stats_text = serde_json::to_string_pretty(&stats::stats_json(&self.stats))
            .map_err(|e| Error::invalid(Location::file(&stats_path), e.to_string()))?;
        write_atomic(&stats_path, stats_text.as_bytes())?;

        let mut features = serde_json::Map::new();
        for (k, f) in &self.features {
            let mut f = f.clone();
            if let Some(info) = self.videos.get(k).and_then(|s| s.info.clone()) {
                f.info = Some(info);
            }
            let v = serde_json::to_value(&f)
                .map_err(|e| Error::invalid(Location::none().field(k), e.to_string()))?;
            features.insert(k.clone(), v);
        }
        let fps = if self.fps.fract() == 0.0 {
            json!(self.fps as i64)
        } else {
            json!(self.fps)
        };
        let num = |x: f64| {
            if x.fract() == 0.0 {
                json!(x as i64)
            } else {
                json!(x)
            }
        };
        let n_eps = self.rows.len() as u64;
        let info = json!({
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.opts.robot_type,
            "total_episodes": n_eps,
            "total_frames": self.total_frames,
            "total_tasks": self.tasks.len(),
            "chunks_size": self.opts.chunks_size,
            "data_files_size_in_mb": num(self.opts.data_files_size_in_mb),
            "video_files_size_in_mb": num(self.opts.video_files_size_in_mb),
            "fps": fps,
            "splits": {"train": format!("0:{n_eps}")},
            "data_path": layout::DEFAULT_DATA_PATH,
            "video_path": if self.videos.is_empty() { Value::Null } else { json!(layout::DEFAULT_VIDEO_PATH) },
            "features": features,
        });
        let info_path = self.root.join(layout::INFO_PATH);
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| Error::invalid(Location::file(&info_path), e.to_string()))?;
        write_atomic(&info_path, text.as_bytes())?;
        tracing::info!(root = %self.root.display(), episodes = n_eps, frames = self.total_frames, "wrote LeRobot v3.0 dataset");
        Ok(WriteSummary {
            root: self.root.clone(),
            episodes: n_eps,
            frames: self.total_frames,
            tasks: self.tasks.len() as u64,
            data_files: std::mem::take(&mut self.data_files),
            video_files: std::mem::take(&mut self.video_files),
            episodes_files,
        })
    }
}

impl Drop for LeRobotWriter {
    fn drop(&mut self) {
        // An unfinalized data file must not survive under any name; video encoders clean up after themselves.
        if let Some(d) = self.data.take() {
            let tmp = d.tmp.clone();
            drop(d);
            let _ = std::fs::remove_file(tmp);
        }
    }
}
