//! The video module's plain types, the same in every build: what a decode asks for and returns, what an encoder is
//! told and reports. The FFmpeg backend (`decode.rs`, `encode.rs`) and the build without video (`disabled.rs`)
//! provide only the functions and the encoder, so the types (and `EncoderOptions`' lerobot defaults) exist once.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{video_err, VideoInfo, DEFAULT_TOLERANCE_S};
use crate::episode::FrameSource;
use crate::error::Result;

/// A decoded frame and its presentation time in seconds.
#[derive(Debug, Clone)]
pub struct TimedFrame {
    pub timestamp: f64,
    pub image: RgbImage,
}

/// The `len` frames of one episode inside a (possibly shared) file: frame `i` is the decoded frame
/// nearest to `from_timestamp + i / fps`, and it must lie within `tolerance_s` of it (lerobot's rule,
/// `decode_video_frames_torchcodec`). Errors name the file, episode and camera key.
#[derive(Debug, Clone)]
pub struct FrameQuery<'a> {
    pub path: &'a Path,
    pub from_timestamp: f64,
    pub fps: f64,
    pub len: usize,
    pub tolerance_s: f64,
    pub episode: Option<u64>,
    pub key: Option<&'a str>,
}

/// The frames of one camera of one episode, decoded lazily from an mp4 time range
/// (LeRobot v3.0: `videos/<key>/from_timestamp`; v2.1: 0). `len` and `size` come from the
/// dataset metadata, so nothing is decoded until [`FrameSource::decode`] is called.
#[derive(Debug, Clone)]
pub struct Mp4Frames {
    pub path: PathBuf,
    pub from_timestamp: f64,
    pub fps: f64,
    pub len: usize,
    /// (height, width)
    pub size: (u32, u32),
    pub tolerance_s: f64,
    pub episode: Option<u64>,
    pub key: Option<String>,
}

impl Mp4Frames {
    pub fn new(
        path: impl Into<PathBuf>,
        from_timestamp: f64,
        fps: f64,
        len: usize,
        size: (u32, u32),
    ) -> Self {
        Self {
            path: path.into(),
            from_timestamp,
            fps,
            len,
            size,
            tolerance_s: DEFAULT_TOLERANCE_S,
            episode: None,
            key: None,
        }
    }
    /// Name the episode and camera in errors.
    pub fn labelled(mut self, episode: u64, key: impl Into<String>) -> Self {
        self.episode = Some(episode);
        self.key = Some(key.into());
        self
    }
    pub fn with_tolerance(mut self, tolerance_s: f64) -> Self {
        self.tolerance_s = tolerance_s;
        self
    }
}

impl FrameSource for Mp4Frames {
    fn len(&self) -> usize {
        self.len
    }
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn decode(&self) -> Result<Vec<RgbImage>> {
        let frames = super::decode_episode(&FrameQuery {
            path: &self.path,
            from_timestamp: self.from_timestamp,
            fps: self.fps,
            len: self.len,
            tolerance_s: self.tolerance_s,
            episode: self.episode,
            key: self.key.as_deref(),
        })?;
        if let Some(f) = frames.first() {
            if (f.height(), f.width()) != self.size {
                return Err(video_err(
                    &self.path,
                    self.episode,
                    self.key.as_deref(),
                    format!(
                        "frames are {}x{} (h x w) but the metadata says {}x{}",
                        f.height(),
                        f.width(),
                        self.size.0,
                        self.size.1
                    ),
                ));
            }
        }
        Ok(frames)
    }
}

/// Video codec for encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    Av1,
    H264,
}

/// Encoder settings (lerobot defaults: AV1, crf 30, g 2, yuv420p).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderOptions {
    /// `None`: AV1 if available, else H.264.
    pub codec: Option<VideoCodec>,
    /// Constant rate factor (lower is better quality). libaom-av1 and libx264 read it too.
    pub crf: u32,
    /// Keyframe interval (GOP size) in frames.
    pub gop: u32,
    /// Encoder speed preset: libsvtav1 0..13 (lerobot uses 12), libaom-av1 `cpu-used` 0..8.
    /// libx264 uses "veryfast" whatever the value.
    pub preset: Option<u32>,
    /// Encoder threads (0: let the encoder decide).
    pub threads: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            codec: None,
            crf: 30,
            gop: 2,
            preset: Some(12),
            threads: 0,
        }
    }
}

/// Half-open time range of one episode inside a shared mp4.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeSpan {
    pub from_timestamp: f64,
    pub to_timestamp: f64,
    pub first_frame: u64,
    pub frames: u64,
}

/// A finished mp4.
#[derive(Debug, Clone)]
pub struct EncodedVideo {
    pub path: PathBuf,
    pub frames: u64,
    pub bytes: u64,
    pub encoder: &'static str,
    pub info: VideoInfo,
}
