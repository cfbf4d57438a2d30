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

use std::path::{Path, PathBuf};
use std::sync::Once;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, encoder, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use crate::episode::FrameSource;
use crate::error::{Error, Location, Result};
use crate::io::fs::temp_path_for;

/// lerobot's default `tolerance_s`: a decoded frame matches a query timestamp only if it is closer than this.
pub const DEFAULT_TOLERANCE_S: f64 = 1e-4;

static INIT: Once = Once::new();

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

fn open_input(
    path: &Path,
    episode: Option<u64>,
    key: Option<&str>,
) -> Result<format::context::Input> {
    init();
    if !path.exists() {
        return Err(Error::io(
            std::io::Error::new(std::io::ErrorKind::NotFound, "video file not found"),
            path,
        )
        .in_episode_opt(episode, key));
    }
    format::input(&path).map_err(|e| video_err(path, episode, key, format!("cannot open: {e}")))
}

// Small helper so the missing-file error also names episode and camera.
trait WithEpisode {
    fn in_episode_opt(self, episode: Option<u64>, key: Option<&str>) -> Self;
}
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

fn pixel_name(p: Pixel) -> String {
    p.descriptor()
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{p:?}").to_lowercase())
}

/// A decoded frame and its presentation time in seconds.
#[derive(Debug, Clone)]
pub struct TimedFrame {
    pub timestamp: f64,
    pub image: RgbImage,
}

/// Where the frames go while decoding; the label names the episode and camera in errors.
struct DecodeTarget<'a> {
    path: &'a Path,
    episode: Option<u64>,
    key: Option<&'a str>,
}

impl DecodeTarget<'_> {
    fn err(&self, message: impl Into<String>) -> Error {
        video_err(self.path, self.episode, self.key, message)
    }
}

/// Decode the frames of the best video stream whose timestamps lie in `[start, end)` (seconds);
/// `end = None` decodes to the end of the file. Seeks to the keyframe before `start`.
fn decode_window(t: &DecodeTarget<'_>, start: f64, end: Option<f64>) -> Result<Vec<TimedFrame>> {
    let mut ictx = open_input(t.path, t.episode, t.key)?;
    let (index, time_base, params) = {
        let s = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| t.err("no video stream"))?;
        (s.index(), s.time_base(), s.parameters())
    };
    let mut ctx = codec::context::Context::from_parameters(params)
        .map_err(|e| t.err(format!("stream {index}: bad codec parameters: {e}")))?;
    // Let the decoder pick its thread count (dav1d, h264 frame threads): decoding is the hot path of readers.
    ctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: 0,
        ..Default::default()
    });
    let codec_id = ctx.id();
    // Prefer dav1d for AV1: FFmpeg 5.1's native AV1 decoder only works through a hardware accelerator.
    let mut decoder = match (codec_id, ffmpeg::decoder::find_by_name("libdav1d")) {
        (codec::Id::AV1, Some(dav1d)) => ctx.decoder().open_as(dav1d).and_then(|d| d.video()),
        _ => ctx.decoder().video(),
    }
    .map_err(|e| {
        t.err(format!(
            "stream {index}: cannot open {:?} decoder: {e}",
            codec_id
        ))
    })?;

    let tb = f64::from(time_base);
    if start > 0.0 {
        let target = (start * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        // max_ts = target: land on the last keyframe at or before the range start.
        ictx.seek(target, ..target)
            .map_err(|e| t.err(format!("stream {index}: seek to {start:.4}s failed: {e}")))?;
    }

    let mut scaler: Option<scaling::Context> = None;
    let mut out = Vec::new();
    let mut decoded = frame::Video::empty();
    let mut done = false;
    let mut receive = |decoder: &mut ffmpeg::decoder::Video,
                       out: &mut Vec<TimedFrame>,
                       done: &mut bool|
     -> Result<()> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            let pts = decoded
                .timestamp()
                .or(decoded.pts())
                .ok_or_else(|| t.err(format!("stream {index}: frame without timestamp")))?;
            let ts = pts as f64 * tb;
            if let Some(end) = end {
                if ts >= end {
                    *done = true;
                    continue;
                }
            }
            if ts < start {
                continue;
            }
            out.push(TimedFrame {
                timestamp: ts,
                image: to_rgb(&decoded, &mut scaler)
                    .map_err(|e| t.err(format!("stream {index}: {e}")))?,
            });
        }
        Ok(())
    };
    let mut packet = Packet::empty();
    loop {
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            // A damaged packet: skip it like FFmpeg's demux loop; missing frames are caught by the frame count.
            Err(ffmpeg::Error::InvalidData) => continue,
            Err(e) => {
                return Err(t.err(format!(
                    "stream {index}: read failed (truncated file?): {e}"
                )))
            }
        }
        if packet.stream() != index {
            continue;
        }
        if let Err(e) = decoder.send_packet(&packet) {
            return Err(t.err(format!(
                "stream {index}: corrupt packet at pts {:?}: {e}",
                packet.pts()
            )));
        }
        receive(&mut decoder, &mut out, &mut done)?;
        if done {
            break;
        }
    }
    if !done {
        decoder
            .send_eof()
            .map_err(|e| t.err(format!("stream {index}: flush failed: {e}")))?;
        receive(&mut decoder, &mut out, &mut done)?;
    }
    // B-frames leave the decoder in presentation order already; sort anyway so callers can rely on it.
    out.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
    Ok(out)
}

/// Convert one decoded frame (any pixel format) to RGB u8 with swscale (BT.601, like PyAV's `to_ndarray("rgb24")`).
fn to_rgb(
    src: &frame::Video,
    scaler: &mut Option<scaling::Context>,
) -> std::result::Result<RgbImage, ffmpeg::Error> {
    let (w, h) = (src.width(), src.height());
    let rebuild = match scaler {
        Some(s) => {
            s.input().format != src.format() || s.input().width != w || s.input().height != h
        }
        None => true,
    };
    if rebuild {
        *scaler = Some(scaling::Context::get(
            src.format(),
            w,
            h,
            Pixel::RGB24,
            w,
            h,
            scaling::Flags::BILINEAR,
        )?);
    }
    let mut rgb = frame::Video::empty();
    if let Some(s) = scaler.as_mut() {
        s.run(src, &mut rgb)?;
    }
    let stride = rgb.stride(0);
    let row = 3 * w as usize;
    let data = rgb.data(0);
    let mut buf = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        buf.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w, h, buf).ok_or(ffmpeg::Error::InvalidData)
}

/// Decode every frame of a file, with its timestamp in seconds.
pub fn decode_all(path: impl AsRef<Path>) -> Result<Vec<TimedFrame>> {
    let path = path.as_ref();
    decode_window(
        &DecodeTarget {
            path,
            episode: None,
            key: None,
        },
        0.0,
        None,
    )
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

pub fn decode_episode(q: &FrameQuery<'_>) -> Result<Vec<RgbImage>> {
    let t = DecodeTarget {
        path: q.path,
        episode: q.episode,
        key: q.key,
    };
    if q.len == 0 {
        return Ok(Vec::new());
    }
    let last = q.from_timestamp + (q.len - 1) as f64 / q.fps;
    let slack = q.tolerance_s.max(0.0);
    let frames = decode_window(
        &t,
        (q.from_timestamp - slack).max(0.0),
        Some(last + slack + 1e-9),
    )?;
    let mut out = Vec::with_capacity(q.len);
    let mut j = 0usize;
    for i in 0..q.len {
        let want = q.from_timestamp + i as f64 / q.fps;
        // Frames are sorted: advance while the next one is at least as close.
        while j + 1 < frames.len()
            && (frames[j + 1].timestamp - want).abs() <= (frames[j].timestamp - want).abs()
        {
            j += 1;
        }
        match frames.get(j) {
            Some(f) if (f.timestamp - want).abs() < q.tolerance_s => out.push(f.image.clone()),
            other => {
                let nearest = other
                    .map(|f| format!("nearest decoded frame at {:.6}s", f.timestamp))
                    .unwrap_or_else(|| "no frame decoded in range".into());
                return Err(t.err(format!(
                    "frame {i} of {} (t = {want:.6}s) not in the video: {nearest}, tolerance {}s; {} frames decoded in [{:.4}s, {:.4}s] (fewer frames than the episode needs, or metadata points past the video end)",
                    q.len,
                    q.tolerance_s,
                    frames.len(),
                    q.from_timestamp,
                    last
                )));
            }
        }
    }
    Ok(out)
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
        let frames = decode_episode(&FrameQuery {
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

impl VideoCodec {
    /// FFmpeg encoders to try, best first.
    fn encoder_names(self) -> &'static [&'static str] {
        match self {
            VideoCodec::Av1 => &["libsvtav1", "libaom-av1"],
            VideoCodec::H264 => &["libx264"],
        }
    }
    /// The first available encoder for this codec.
    pub fn find_encoder(self) -> Option<&'static str> {
        init();
        self.encoder_names()
            .iter()
            .copied()
            .find(|n| encoder::find_by_name(n).is_some())
    }
    /// AV1 where the FFmpeg build has an AV1 encoder, else H.264.
    pub fn best_available() -> Option<(VideoCodec, &'static str)> {
        [VideoCodec::Av1, VideoCodec::H264]
            .into_iter()
            .find_map(|c| c.find_encoder().map(|n| (c, n)))
    }
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

// swscale contexts are plain heap state with no thread affinity; the encoder owns its context
// exclusively, so moving it to another thread is sound.
struct SendScaler(scaling::Context);
unsafe impl Send for SendScaler {}

/// How to open one codec instance (kept so every episode gets an identically configured encoder).
#[derive(Debug, Clone)]
struct CodecSetup {
    name: &'static str,
    width: u32,
    height: u32,
    rate: Rational,
    opts: EncoderOptions,
    global_header: bool,
}

impl CodecSetup {
    fn open(&self, path: &Path) -> Result<(encoder::Video, ffmpeg::Codec)> {
        let err = |m: String| video_err(path, None, None, m);
        let name = self.name;
        let codec =
            encoder::find_by_name(name).ok_or_else(|| err(format!("encoder {name} not found")))?;
        let mut ctx = codec::context::Context::new_with_codec(codec);
        if self.opts.threads > 0 {
            ctx.set_threading(codec::threading::Config {
                kind: codec::threading::Type::Frame,
                count: self.opts.threads,
                ..Default::default()
            });
        }
        let mut enc = ctx
            .encoder()
            .video()
            .map_err(|e| err(format!("{name}: {e}")))?;
        enc.set_width(self.width);
        enc.set_height(self.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(self.rate.invert());
        enc.set_frame_rate(Some(self.rate));
        enc.set_gop(self.opts.gop.max(1));
        // No B-frames: episodes are appended packet by packet, so decode order must equal presentation
        // order (AV1 never reorders at the container level; H.264 would without this).
        enc.set_max_b_frames(0);
        if self.global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut dict = Dictionary::new();
        dict.set("crf", &self.opts.crf.to_string());
        match name {
            "libsvtav1" => {
                if let Some(p) = self.opts.preset {
                    dict.set("preset", &p.to_string());
                }
            }
            "libaom-av1" => {
                dict.set(
                    "cpu-used",
                    &self.opts.preset.unwrap_or(6).min(8).to_string(),
                );
                dict.set("row-mt", "1");
                // Constant-quality mode: libaom needs b:v 0 for crf to mean CQ.
                enc.set_bit_rate(0);
            }
            "libx264" => {
                dict.set("preset", "veryfast");
            }
            _ => {}
        }
        let opened = enc.open_as_with(codec, dict).map_err(|e| {
            err(format!(
                "cannot open {name} (crf {}, gop {}): {e}",
                self.opts.crf, self.opts.gop
            ))
        })?;
        Ok((opened, codec))
    }
}

/// Streaming mp4 writer: RGB frames in, one mp4 out. Several episodes can be appended to one file
/// (LeRobot v3.0): each episode is encoded by its own, identically configured encoder instance (so it
/// starts on a keyframe and its compressed size is exact once it ends, which is what file roll-over
/// needs), and its packets are muxed at the running frame offset, like lerobot's
/// `concatenate_video_files` does with stream copy. Each episode reports its `[from, to)` timestamps.
/// The file is written under a temporary name in the same directory and renamed by [`finish`](Self::finish);
/// dropping an unfinished encoder deletes the temporary file.
pub struct Mp4Encoder {
    path: PathBuf,
    tmp_path: PathBuf,
    octx: format::context::Output,
    setup: CodecSetup,
    /// The current episode's encoder (None between episodes).
    encoder: Option<encoder::Video>,
    encoder_frames: u64,
    scaler: SendScaler,
    stream_tb: Rational,
    enc_tb: Rational,
    fps: f64,
    next_pts: i64,
    episode_start: Option<u64>,
    bytes: u64,
    finished: bool,
}

impl std::fmt::Debug for Mp4Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Encoder")
            .field("path", &self.path)
            .field("frames", &self.next_pts)
            .field("encoder", &self.setup.name)
            .finish()
    }
}

impl Mp4Encoder {
    /// Start an mp4 of `width` x `height` frames at `fps`. Width and height must be even (yuv420p).
    pub fn create(
        path: impl AsRef<Path>,
        width: u32,
        height: u32,
        fps: f64,
        opts: &EncoderOptions,
    ) -> Result<Self> {
        init();
        let path = path.as_ref().to_path_buf();
        let err = |m: String| video_err(&path, None, None, m);
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(err(format!(
                "frame size {width}x{height} must be non-zero and even for yuv420p"
            )));
        }
        if !(fps > 0.0 && fps.is_finite()) {
            return Err(err(format!("fps must be positive, got {fps}")));
        }
        // Encoders to try, best first. SVT-AV1 refuses frames under 64 px on a side ("Forced Max Height must be at
        // least 64"), which the small models' 24x40 outputs are, so it is skipped there rather than tried.
        let svt_fits = width >= 64 && height >= 64;
        let codecs = match opts.codec {
            Some(c) => vec![c],
            None => vec![VideoCodec::Av1, VideoCodec::H264],
        };
        let candidates: Vec<&'static str> = codecs
            .iter()
            .flat_map(|c| c.encoder_names().iter().copied())
            .filter(|n| encoder::find_by_name(n).is_some())
            .filter(|&n| svt_fits || n != "libsvtav1")
            .collect();
        if candidates.is_empty() {
            return Err(err(format!(
                "no {} encoder in this FFmpeg build usable at {width}x{height} (tried {:?})",
                codecs
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                codecs
                    .iter()
                    .flat_map(|c| c.encoder_names().iter())
                    .collect::<Vec<_>>()
            )));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(e, parent))?;
        }
        let tmp_path = temp_path_for(&path);
        let mut octx = format::output_as(&tmp_path, "mp4")
            .map_err(|e| err(format!("cannot create mp4: {e}")))?;
        let rate = fps_rational(fps);
        let enc_tb = rate.invert();
        let mut setup = CodecSetup {
            name: candidates[0],
            width,
            height,
            rate,
            opts: opts.clone(),
            global_header: octx.format().flags().contains(format::Flags::GLOBAL_HEADER),
        };
        // The first encoder instance gives the stream its parameters and encodes the first episode. An encoder that
        // refuses these settings hands over to the next candidate.
        let mut opened = setup.open(&path);
        for &next in &candidates[1..] {
            if opened.is_ok() {
                break;
            }
            setup.name = next;
            opened = setup.open(&path);
        }
        let (first, codec) = match opened {
            Ok(x) => x,
            Err(e) => {
                drop(octx);
                let _ = std::fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        let header = (|| -> Result<Rational> {
            let mut ost = octx
                .add_stream(codec)
                .map_err(|e| err(format!("add stream: {e}")))?;
            ost.set_parameters(&first);
            ost.set_time_base(enc_tb);
            ost.set_rate(rate);
            ost.set_avg_frame_rate(rate);
            octx.write_header()
                .map_err(|e| err(format!("write header: {e}")))?;
            // The mp4 muxer may pick a finer time base (it multiplies small timescales); packets are rescaled to it.
            Ok(octx.stream(0).map(|s| s.time_base()).unwrap_or(enc_tb))
        })();
        let scaler = scaling::Context::get(
            Pixel::RGB24,
            width,
            height,
            Pixel::YUV420P,
            width,
            height,
            scaling::Flags::BILINEAR,
        )
        .map_err(|e| err(format!("swscale rgb24 -> yuv420p: {e}")));
        let (stream_tb, scaler) = match (header, scaler) {
            (Ok(tb), Ok(s)) => (tb, s),
            (Err(e), _) | (_, Err(e)) => {
                drop(octx);
                let _ = std::fs::remove_file(&tmp_path);
                return Err(e);
            }
        };
        Ok(Self {
            path,
            tmp_path,
            octx,
            setup,
            encoder: Some(first),
            encoder_frames: 0,
            scaler: SendScaler(scaler),
            stream_tb,
            enc_tb,
            fps,
            next_pts: 0,
            episode_start: None,
            bytes: 0,
            finished: false,
        })
    }

    /// The FFmpeg encoder in use ("libsvtav1", "libaom-av1", "libx264").
    pub fn encoder_name(&self) -> &'static str {
        self.setup.name
    }
    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.next_pts as u64
    }
    /// Compressed bytes of the episodes ended so far (exact), plus whatever the current encoder has emitted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Final path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start a new episode at the current end of the file (ending the previous one if it is still open).
    pub fn begin_episode(&mut self) -> Result<()> {
        if self.encoder_frames > 0 {
            self.end_current()?;
        }
        self.episode_start = Some(self.next_pts as u64);
        Ok(())
    }

    /// End the current episode (started by [`begin_episode`](Self::begin_episode), or everything since
    /// the last one ended): flush its encoder into the file and report its time range.
    pub fn end_episode(&mut self) -> Result<EpisodeSpan> {
        self.end_current()?;
        let first = self.episode_start.take().unwrap_or(0);
        let end = self.next_pts as u64;
        Ok(EpisodeSpan {
            from_timestamp: first as f64 / self.fps,
            to_timestamp: end as f64 / self.fps,
            first_frame: first,
            frames: end - first,
        })
    }

    fn end_current(&mut self) -> Result<()> {
        if let Some(mut enc) = self.encoder.take() {
            if self.encoder_frames > 0 {
                enc.send_eof().map_err(|e| {
                    video_err(
                        &self.path,
                        None,
                        None,
                        format!("{}: flush: {e}", self.setup.name),
                    )
                })?;
                self.drain(&mut enc)?;
            }
        }
        self.encoder_frames = 0;
        Ok(())
    }

    /// Append one frame.
    pub fn push(&mut self, img: &RgbImage) -> Result<()> {
        let (w, h) = (self.setup.width, self.setup.height);
        if (img.width(), img.height()) != (w, h) {
            return Err(video_err(
                &self.path,
                None,
                None,
                format!(
                    "frame {} is {}x{}, the video is {w}x{h}",
                    self.next_pts,
                    img.width(),
                    img.height()
                ),
            ));
        }
        let mut rgb = frame::Video::new(Pixel::RGB24, w, h);
        let stride = rgb.stride(0);
        let row = 3 * w as usize;
        {
            let dst = rgb.data_mut(0);
            for (y, src) in img.as_raw().chunks_exact(row).enumerate() {
                dst[y * stride..y * stride + row].copy_from_slice(src);
            }
        }
        let mut yuv = frame::Video::empty();
        self.scaler
            .0
            .run(&rgb, &mut yuv)
            .map_err(|e| video_err(&self.path, None, None, format!("swscale: {e}")))?;
        yuv.set_pts(Some(self.next_pts));
        yuv.set_kind(ffmpeg::picture::Type::None);
        let mut enc = match self.encoder.take() {
            Some(e) => e,
            None => self.setup.open(&self.path)?.0,
        };
        let sent = enc.send_frame(&yuv).map_err(|e| {
            video_err(
                &self.path,
                None,
                None,
                format!("{}: encode frame {}: {e}", self.setup.name, self.next_pts),
            )
        });
        let drained = sent.and_then(|_| self.drain(&mut enc));
        self.encoder = Some(enc);
        drained?;
        self.encoder_frames += 1;
        self.next_pts += 1;
        Ok(())
    }

    fn drain(&mut self, enc: &mut encoder::Video) -> Result<()> {
        let mut pkt = Packet::empty();
        while enc.receive_packet(&mut pkt).is_ok() {
            if pkt.duration() == 0 {
                pkt.set_duration(1);
            }
            pkt.set_stream(0);
            pkt.rescale_ts(self.enc_tb, self.stream_tb);
            self.bytes += pkt.size() as u64;
            pkt.write_interleaved(&mut self.octx)
                .map_err(|e| video_err(&self.tmp_path, None, None, format!("mux: {e}")))?;
        }
        Ok(())
    }

    /// Flush the encoder, write the mp4 trailer and move the file to its final name.
    pub fn finish(mut self) -> Result<EncodedVideo> {
        self.end_current()?;
        self.octx
            .write_trailer()
            .map_err(|e| video_err(&self.tmp_path, None, None, format!("write trailer: {e}")))?;
        std::fs::rename(&self.tmp_path, &self.path).map_err(|e| Error::io(e, &self.path))?;
        self.finished = true;
        let bytes = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| Error::io(e, &self.path))?;
        let info = probe(&self.path)?;
        Ok(EncodedVideo {
            path: self.path.clone(),
            frames: self.next_pts as u64,
            bytes,
            encoder: self.setup.name,
            info,
        })
    }
}

impl Drop for Mp4Encoder {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: an abandoned encoder leaves nothing behind under any name.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

pub fn encode_frames(
    path: impl AsRef<Path>,
    frames: &[RgbImage],
    fps: f64,
    opts: &EncoderOptions,
) -> Result<EncodedVideo> {
    let path = path.as_ref();
    let first = frames
        .first()
        .ok_or_else(|| video_err(path, None, None, "no frames to encode"))?;
    let mut enc = Mp4Encoder::create(path, first.width(), first.height(), fps, opts)?;
    enc.begin_episode()?;
    for f in frames {
        enc.push(f)?;
    }
    enc.end_episode()?;
    enc.finish()
}
