//! Decoding: whole files, and the frames of one episode inside a (possibly shared) file, matched to their
//! timestamps within lerobot's tolerance.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, frame, media, Packet};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::types::{FrameQuery, TimedFrame};
use super::{open_input, video_err};
use crate::error::{Error, Result};

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
