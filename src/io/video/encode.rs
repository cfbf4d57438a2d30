//! Encoding: RGB frames to an mp4 (AV1 or H.264, yuv420p), several episodes per file, written under a temporary
//! name and renamed when finished.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, encoder, format, frame, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::types::{EncodedVideo, EncoderOptions, EpisodeSpan, VideoCodec};
use super::{fps_rational, init, probe, video_err};
use crate::error::{Error, Result};
use crate::io::fs::temp_path_for;

/// What FFmpeg offers for each codec.
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
                // x264's macroblock tree reads memory a fresh encoder never wrote (Debian's x264 0.164 on an Intel
                // Xeon: every episode after the first came out different from run to run, 24x40 frames, the same
                // input bytes), and each episode gets a fresh encoder here. Output must be byte-identical across
                // runs, resumes and shards, so the tree is off: a few percent more bits at the same crf.
                dict.set("x264-params", "mbtree=0");
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
