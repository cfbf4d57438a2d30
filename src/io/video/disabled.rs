//! The video API of a build without the `video` cargo feature (no FFmpeg linked): the same types and functions,
//! each call that would touch an mp4 failing with an error that names the file and says how to get video back.
//!
//! Why such a build exists: the GPU machines have the NVIDIA driver and PyTorch but not Debian's FFmpeg shared
//! libraries (134 of them, 165 MB, 51 MB xz-compressed: more than the 64 MiB a GPU check can carry), so
//! `scripts/gpu_check.sh` runs a `--no-default-features --features cuda` binary: the UNet, composition, VAE/CLIP
//! parity, the benchmarks and training on RLDS (JPEG frames, no FFmpeg) all work there; LeRobot (mp4) input and
//! every output dataset do not. CI checks that this build compiles, so the API below cannot drift from the real
//! one (`decode.rs`, `encode.rs`) without failing there.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{video_err, VideoInfo, DEFAULT_TOLERANCE_S};
use crate::episode::FrameSource;
use crate::error::{Error, Result};

fn no_video(path: &Path, episode: Option<u64>, key: Option<&str>) -> Error {
    video_err(
        path,
        episode,
        key,
        "this vadapt was built without video I/O (cargo feature `video`, on by default; a \
         `--no-default-features` build leaves FFmpeg out)",
    )
}

/// No FFmpeg to initialise.
pub fn init() {}

/// Probe a video file: always the no-video error.
pub fn probe(path: impl AsRef<Path>) -> Result<VideoInfo> {
    Err(no_video(path.as_ref(), None, None))
}

pub mod decode {
    use super::*;

    /// A decoded frame and its presentation time in seconds.
    #[derive(Debug, Clone)]
    pub struct TimedFrame {
        pub timestamp: f64,
        pub image: RgbImage,
    }

    /// The `len` frames of one episode inside a (possibly shared) file (see `decode.rs`).
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

    pub fn decode_all(path: impl AsRef<Path>) -> Result<Vec<TimedFrame>> {
        Err(no_video(path.as_ref(), None, None))
    }

    pub fn decode_episode(q: &FrameQuery<'_>) -> Result<Vec<RgbImage>> {
        Err(no_video(q.path, q.episode, q.key))
    }

    /// One episode's frames of an mp4, decoded on demand (see `decode.rs`).
    #[derive(Debug, Clone)]
    pub struct Mp4Frames {
        pub path: PathBuf,
        pub from_timestamp: f64,
        pub fps: f64,
        pub len: usize,
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
            Err(no_video(&self.path, self.episode, self.key.as_deref()))
        }
    }
}

pub mod encode {
    use super::*;

    /// Video codec for encoding (the names pipeline configs use).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum VideoCodec {
        Av1,
        H264,
    }

    impl VideoCodec {
        /// No encoder without FFmpeg.
        pub fn find_encoder(self) -> Option<&'static str> {
            None
        }
        pub fn best_available() -> Option<(VideoCodec, &'static str)> {
            None
        }
    }

    /// Encoder settings (lerobot defaults: AV1, crf 30, g 2, yuv420p), as in `encode.rs`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct EncoderOptions {
        pub codec: Option<VideoCodec>,
        pub crf: u32,
        pub gop: u32,
        pub preset: Option<u32>,
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

    /// An mp4 being written: never created in this build (`create` fails), so its methods are unreachable.
    #[derive(Debug)]
    pub struct Mp4Encoder {
        path: PathBuf,
        never: std::convert::Infallible,
    }

    impl Mp4Encoder {
        pub fn create(
            path: impl AsRef<Path>,
            _width: u32,
            _height: u32,
            _fps: f64,
            _opts: &EncoderOptions,
        ) -> Result<Self> {
            Err(no_video(path.as_ref(), None, None))
        }
        pub fn encoder_name(&self) -> &'static str {
            match self.never {}
        }
        pub fn frames(&self) -> u64 {
            match self.never {}
        }
        pub fn bytes(&self) -> u64 {
            match self.never {}
        }
        pub fn path(&self) -> &Path {
            &self.path
        }
        pub fn begin_episode(&mut self) -> Result<()> {
            match self.never {}
        }
        pub fn end_episode(&mut self) -> Result<EpisodeSpan> {
            match self.never {}
        }
        pub fn push(&mut self, _img: &RgbImage) -> Result<()> {
            match self.never {}
        }
        pub fn finish(self) -> Result<EncodedVideo> {
            match self.never {}
        }
    }

    pub fn encode_frames(
        path: impl AsRef<Path>,
        _frames: &[RgbImage],
        _fps: f64,
        _opts: &EncoderOptions,
    ) -> Result<EncodedVideo> {
        Err(no_video(path.as_ref(), None, None))
    }
}
