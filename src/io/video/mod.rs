//! MP4 video through FFmpeg (ffmpeg-next): decode to RGB u8 frames, encode RGB frames to AV1 or H.264.
//!
//! Conventions follow lerobot's `datasets/video_utils.py` so that what we write is what lerobot reads:
//! * the encoder time base is `1/fps`, frame `k` of a file has pts `k` (so its timestamp is `k / fps`);
//! * several episodes may share one mp4 (LeRobot v3.0); an episode is the half-open time range
//!   `[from_timestamp, to_timestamp)` of that file and its frame `i` is the frame nearest to
//!   `from_timestamp + i / fps`, accepted only within a tolerance (lerobot's `decode_video_frames`
//!   default `tolerance_s = 1e-4`);
//! * yuv420p, GOP `g` (lerobot default 2) and CRF (lerobot default 30), AV1 through libsvtav1 where
//!   available (lerobot's default `vcodec`), else libaom-av1, else libx264.

use std::path::Path;
#[cfg(feature = "video")]
use std::sync::Once;

#[cfg(feature = "video")]
use ffmpeg::format::Pixel;
#[cfg(feature = "video")]
use ffmpeg::{codec, format, media, Rational};
#[cfg(feature = "video")]
use ffmpeg_next as ffmpeg;

#[cfg(feature = "video")]
use crate::error::Result;
use crate::error::{Error, Location};

#[cfg(feature = "video")]
mod decode;
#[cfg(feature = "video")]
mod encode;
mod types;
// Without FFmpeg (cargo feature `video` off): the same API, every mp4 access an error.
#[cfg(not(feature = "video"))]
mod disabled;
#[cfg(not(feature = "video"))]
use disabled::{decode, encode};
#[cfg(not(feature = "video"))]
pub use disabled::{init, probe};

pub use decode::{decode_all, decode_episode};
pub use encode::{encode_frames, Mp4Encoder};
pub use types::{
    EncodedVideo, EncoderOptions, EpisodeSpan, FrameQuery, Mp4Frames, TimedFrame, VideoCodec,
};

/// lerobot's default `tolerance_s`: a decoded frame matches a query timestamp only if it is closer than this.
pub const DEFAULT_TOLERANCE_S: f64 = 1e-4;

#[cfg(feature = "video")]
static INIT: Once = Once::new();

#[cfg(feature = "video")]
/// Initialise FFmpeg once per process and quiet its logging (errors only): our own errors carry
/// the file, episode and stream, and FFmpeg's per-frame warnings would flood a batch run.
pub fn init() {
    INIT.call_once(|| {
        // `ffmpeg::init` only registers devices/networking on FFmpeg >= 4 and cannot fail in practice;
        // if it ever does, opening a file reports the real problem with its path.
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

#[cfg(feature = "video")]
/// `fps` as an exact rational where it is one (30 -> 30/1, 29.97 -> 2997/100 via av_d2q).
fn fps_rational(fps: f64) -> Rational {
    if fps.fract() == 0.0 && fps > 0.0 && fps <= i32::MAX as f64 {
        Rational(fps as i32, 1)
    } else {
        Rational::from(fps)
    }
}

fn video_err(
    path: &Path,
    episode: Option<u64>,
    key: Option<&str>,
    message: impl Into<String>,
) -> Error {
    let mut loc = Location::file(path);
    loc.episode = episode;
    loc.field = key.map(str::to_string);
    Error::video(loc, message)
}

/// What a video stream is (the `info` block lerobot stores for a video feature).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Stream frame rate (`r_frame_rate`).
    pub fps: f64,
    /// Codec name as FFmpeg's descriptor calls it ("av1", "h264").
    pub codec: String,
    /// Pixel format ("yuv420p").
    pub pix_fmt: String,
    /// Number of frames the container declares (0 when unknown).
    pub frames: u64,
    /// Stream duration in seconds (lerobot's `get_video_duration_in_s`).
    pub duration_s: f64,
    pub has_audio: bool,
}

impl VideoInfo {
    /// The `info` block of a lerobot video feature (`video.height`, ..., `has_audio`).
    pub fn to_feature_info(&self) -> serde_json::Value {
        let channels = if self.pix_fmt.contains("gray") {
            1
        } else if self.pix_fmt.contains("rgba") || self.pix_fmt.contains("yuva") {
            4
        } else {
            3
        };
        serde_json::json!({
            "video.height": self.height,
            "video.width": self.width,
            "video.codec": self.codec,
            "video.pix_fmt": self.pix_fmt,
            "video.is_depth_map": false,
            "video.fps": self.fps.round() as i64,
            "video.channels": channels,
            "has_audio": self.has_audio,
        })
    }
}

#[cfg(feature = "video")]
fn open_input(
    path: &Path,
    episode: Option<u64>,
    key: Option<&str>,
) -> Result<format::context::Input> {
    init();
    if !crate::io::fs::exists(path).map_err(|e| e.in_episode_opt(episode, key))? {
        return Err(Error::io(
            std::io::Error::new(std::io::ErrorKind::NotFound, "video file not found"),
            path,
        )
        .in_episode_opt(episode, key));
    }
    format::input(&path).map_err(|e| video_err(path, episode, key, format!("cannot open: {e}")))
}

// Small helper so the missing-file error also names episode and camera.
#[cfg(feature = "video")]
trait WithEpisode {
    fn in_episode_opt(self, episode: Option<u64>, key: Option<&str>) -> Self;
}
#[cfg(feature = "video")]
impl WithEpisode for Error {
    fn in_episode_opt(mut self, episode: Option<u64>, key: Option<&str>) -> Self {
        if let Some(e) = episode {
            self = self.in_episode(e);
        }
        if let (Some(k), Error::Io { loc, .. }) = (key, &mut self) {
            loc.field.get_or_insert_with(|| k.to_string());
        }
        self
    }
}

#[cfg(feature = "video")]
/// Probe a video file: size, rate, codec, pixel format, frame count and duration.
pub fn probe(path: impl AsRef<Path>) -> Result<VideoInfo> {
    let path = path.as_ref();
    let ictx = open_input(path, None, None)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| video_err(path, None, None, "no video stream"))?;
    let params = stream.parameters();
    let ctx = codec::context::Context::from_parameters(params)
        .map_err(|e| video_err(path, None, None, format!("stream {}: {e}", stream.index())))?;
    let dec = ctx
        .decoder()
        .video()
        .map_err(|e| video_err(path, None, None, format!("stream {}: {e}", stream.index())))?;
    let rate = stream.rate();
    let fps = if rate.denominator() != 0 {
        f64::from(rate)
    } else {
        f64::from(stream.avg_frame_rate())
    };
    let tb = f64::from(stream.time_base());
    let duration_s = if stream.duration() > 0 {
        stream.duration() as f64 * tb
    } else if ictx.duration() > 0 {
        ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
    } else {
        0.0
    };
    let pix_fmt = pixel_name(dec.format());
    Ok(VideoInfo {
        width: dec.width(),
        height: dec.height(),
        fps,
        codec: dec.id().name().to_string(),
        pix_fmt,
        frames: stream.frames().max(0) as u64,
        duration_s,
        has_audio: ictx.streams().best(media::Type::Audio).is_some(),
    })
}

#[cfg(feature = "video")]
fn pixel_name(p: Pixel) -> String {
    p.descriptor()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{p:?}").to_lowercase())
}
