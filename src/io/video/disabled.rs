//! The video API of a build without the `video` cargo feature (no FFmpeg linked): the same functions and encoder
//! (the plain types are shared, `types.rs`), each call that would touch an mp4 failing with an error that names the
//! file and says how to get video back.
//!
//! Why such a build exists: the GPU machines have the NVIDIA driver and PyTorch but not Debian's FFmpeg shared
//! libraries (134 of them, 165 MB, 51 MB xz-compressed: more than the 64 MiB a GPU check can carry), so
//! `scripts/gpu_check.sh` runs a `--no-default-features --features cuda` binary: the UNet, composition, VAE/CLIP
//! parity, the benchmarks, training on RLDS (JPEG frames, no FFmpeg) and `augment` writing its cameras as PNG
//! (`[output] storage = "images"`) all work there; LeRobot mp4 input and output do not. CI checks that this build compiles, so the API below cannot drift from the real
//! one (`decode.rs`, `encode.rs`) without failing there.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::types::{EncodedVideo, EncoderOptions, EpisodeSpan, FrameQuery, TimedFrame, VideoCodec};
use super::{video_err, VideoInfo};
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

    pub fn decode_all(path: impl AsRef<Path>) -> Result<Vec<TimedFrame>> {
        Err(no_video(path.as_ref(), None, None))
    }

    pub fn decode_episode(q: &FrameQuery<'_>) -> Result<Vec<RgbImage>> {
        Err(no_video(q.path, q.episode, q.key))
    }
}

pub mod encode {
    use super::*;

    impl VideoCodec {
        /// No encoder without FFmpeg.
        pub fn find_encoder(self) -> Option<&'static str> {
            None
        }
        pub fn best_available() -> Option<(VideoCodec, &'static str)> {
            None
        }
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
