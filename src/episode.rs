//! The in-memory episode: per camera the frames (decoded lazily, RGB u8), every non-image column as
//! Arrow arrays (kept bit-exact from source to output), the task text and provenance.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::FieldRef;
use arrow::record_batch::RecordBatch;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Index of an episode inside its dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EpisodeIndex(pub u64);

impl fmt::Display for EpisodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Something that can produce the RGB frames of one camera of one episode, on demand.
/// Implemented by the mp4 decoder (a time range inside a possibly shared file), by encoded image
/// lists (RLDS JPEG/PNG steps) and by frames already in memory.
pub trait FrameSource: Send + Sync + fmt::Debug {
    /// Number of frames this source yields.
    fn len(&self) -> usize;
    /// (height, width) of every frame.
    fn size(&self) -> (u32, u32);
    /// Decode every frame, in order. Must return exactly `len()` frames of `size()`.
    fn decode(&self) -> Result<Vec<RgbImage>>;
}

/// Frames already decoded.
#[derive(Debug, Clone)]
pub struct MemoryFrames {
    frames: Arc<Vec<RgbImage>>,
    size: (u32, u32),
}

impl MemoryFrames {
    /// All frames must share one size; an empty list has size (0, 0).
    pub fn new(frames: Vec<RgbImage>) -> Self {
        let size = frames
            .first()
            .map(|f| (f.height(), f.width()))
            .unwrap_or((0, 0));
        debug_assert!(frames.iter().all(|f| (f.height(), f.width()) == size));
        Self {
            frames: Arc::new(frames),
            size,
        }
    }
}

impl FrameSource for MemoryFrames {
    fn len(&self) -> usize {
        self.frames.len()
    }
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn decode(&self) -> Result<Vec<RgbImage>> {
        Ok(self.frames.as_ref().clone())
    }
}

/// The frames of one camera key, decoded lazily.
#[derive(Debug, Clone)]
pub struct Frames(pub Arc<dyn FrameSource>);

impl Frames {
    pub fn new(source: impl FrameSource + 'static) -> Self {
        Frames(Arc::new(source))
    }
    pub fn from_images(frames: Vec<RgbImage>) -> Self {
        Frames::new(MemoryFrames::new(frames))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
    /// (height, width)
    pub fn size(&self) -> (u32, u32) {
        self.0.size()
    }
    pub fn decode(&self) -> Result<Vec<RgbImage>> {
        self.0.decode()
    }
}

/// One feature of a dataset, as LeRobot's `meta/info.json` describes it
/// (`{"dtype": "float32", "shape": [2], "names": ...}`; video features have `dtype = "video"` and an `info` block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub dtype: String,
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

impl Feature {
    pub fn is_visual(&self) -> bool {
        self.dtype == "video" || self.dtype == "image"
    }
}

/// Features by key, in a stable order.
pub type Features = BTreeMap<String, Feature>;

/// Where an episode came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Dataset root or file the episode was read from.
    pub source: String,
    /// Format name: "lerobot-v3.0", "lerobot-v2.1", "rlds", "sample".
    pub format: String,
    /// Episode index in the source dataset.
    pub source_episode_index: u64,
}

/// One recorded episode.
#[derive(Debug, Clone)]
pub struct Episode {
    pub index: EpisodeIndex,
    /// Natural-language task ("push the red star to the blue cube").
    pub task: String,
    /// Frames per second of every camera and of the table rows.
    pub fps: f64,
    /// Camera key (e.g. `observation.images.rgb`) -> frames.
    pub cameras: BTreeMap<String, Frames>,
    /// Every non-image column, one row per frame, exactly as read. For LeRobot sources this includes
    /// `timestamp`, `frame_index`, `episode_index`, `index` and `task_index`.
    pub columns: RecordBatch,
    /// Values the source keeps per episode rather than per frame, beyond its format's own (LeRobot v3.0: the
    /// extra columns of `meta/episodes/…`); written back unchanged. Empty for formats without them.
    pub episode_columns: EpisodeColumns,
    pub provenance: Provenance,
}

/// One episode's row of extra per-episode columns: each column's field (name, arrow type, nullability,
/// metadata) and its value as a one-row arrow array, in the source's column order. Kept as arrow so the value
/// comes back bit-exact, whatever its type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeColumns(Vec<(FieldRef, ArrayRef)>);

impl EpisodeColumns {
    /// Append a column; `value` must hold exactly one row.
    pub fn push(&mut self, field: FieldRef, value: ArrayRef) {
        assert_eq!(value.len(), 1, "one value per episode column");
        self.0.push((field, value));
    }
    pub fn iter(&self) -> impl Iterator<Item = &(FieldRef, ArrayRef)> {
        self.0.iter()
    }
    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&ArrayRef> {
        self.0
            .iter()
            .find(|(f, _)| f.name() == name)
            .map(|(_, v)| v)
    }
    /// The value of string column `name` (Utf8, LargeUtf8 or Utf8View); `None` when absent, null or not a string.
    pub fn string(&self, name: &str) -> Option<String> {
        use arrow::array::{Array, AsArray};
        let a = self.get(name)?;
        if let Some(s) = a.as_string_opt::<i32>() {
            return s.is_valid(0).then(|| s.value(0).to_owned());
        }
        if let Some(s) = a.as_string_opt::<i64>() {
            return s.is_valid(0).then(|| s.value(0).to_owned());
        }
        let s = a.as_string_view_opt()?;
        s.is_valid(0).then(|| s.value(0).to_owned())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Episode {
    /// Number of frames (table rows).
    pub fn len(&self) -> usize {
        self.columns.num_rows()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decode one encoded image (JPEG / PNG / any format the `image` crate reads) to RGB and check it has the size
/// its dataset declares, as (height, width). Shared by every `FrameSource` over encoded image bytes (LeRobot image
/// columns, RLDS steps); `loc` names the file, episode, frame and field.
pub fn decode_image(
    bytes: &[u8],
    size: (u32, u32),
    loc: crate::error::Location,
) -> Result<RgbImage> {
    use crate::error::Error;
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::invalid(loc.clone(), format!("cannot decode image: {e}")))?
        .to_rgb8();
    if (img.height(), img.width()) != size {
        return Err(Error::invalid(
            loc,
            format!(
                "image is {}x{}, the dataset declares {}x{}",
                img.height(),
                img.width(),
                size.0,
                size.1
            ),
        ));
    }
    Ok(img)
}
