//! io::video: encode -> decode round trips (AV1, H.264), episodes sharing one mp4, and bad input.

use image::{Rgb, RgbImage};
use vadapt::episode::FrameSource;
use vadapt::io::video::{self, EncoderOptions, Mp4Encoder, Mp4Frames, VideoCodec};
use vadapt::Error;

/// Smooth synthetic frames (codec friendly): a gradient board whose blue level depends on `seed`,
/// a bright square moving right and a dark disc moving down.
pub fn synthetic_frames(n: usize, h: u32, w: u32, seed: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|t| {
            let t = t as i64;
            RgbImage::from_fn(w, h, |x, y| {
                let (xi, yi) = (x as i64, y as i64);
                let cx = 6 + 3 * t + seed as i64 * 5;
                let cy = 8 + 2 * seed as i64;
                if (xi - cx).abs() < 6 && (yi - cy).abs() < 6 {
                    return Rgb([230, 40, 40]);
                }
                let (dx, dy) = (xi - (w as i64 / 2), yi - (4 + 2 * t));
                if dx * dx + dy * dy < 49 {
                    return Rgb([30, 30, 90]);
                }
                Rgb([
                    (60 + x * 160 / w) as u8,
                    (80 + y * 140 / h) as u8,
                    (100 + 40 * seed % 150) as u8,
                ])
            })
        })
        .collect()
}

/// Mean absolute difference in u8 units over every pixel and channel.
pub fn mean_abs_err(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let s: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as i64 - y as i64).unsigned_abs())
        .sum();
    s as f64 / a.as_raw().len() as f64
}

fn opts(codec: VideoCodec) -> EncoderOptions {
    EncoderOptions {
        codec: Some(codec),
        crf: 18,
        gop: 4,
        preset: Some(10),
        threads: 0,
    }
}

fn round_trip(codec: VideoCodec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.mp4");
    let (n, h, w, fps) = (17, 64, 96, 10.0);
    let frames = synthetic_frames(n, h, w, 1);
    let enc = video::encode_frames(&path, &frames, fps, &opts(codec)).unwrap();
    assert_eq!(enc.frames, n as u64);
    assert!(path.exists() && !vadapt::io::fs::temp_path_for(&path).exists());
    let info = video::probe(&path).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    assert_eq!(info.fps, fps);
    assert_eq!(info.pix_fmt, "yuv420p");
    assert_eq!(
        info.codec,
        match codec {
            VideoCodec::Av1 => "av1",
            VideoCodec::H264 => "h264",
        }
    );
    assert!(
        (info.duration_s - n as f64 / fps).abs() < 1e-6,
        "duration {} != {}",
        info.duration_s,
        n as f64 / fps
    );

    let decoded = video::decode_all(&path).unwrap();
    assert_eq!(decoded.len(), n, "frame count");
    let mut worst = 0.0f64;
    for (k, (d, f)) in decoded.iter().zip(&frames).enumerate() {
        assert!(
            (d.timestamp - k as f64 / fps).abs() < 1e-9,
            "frame {k} at {}s",
            d.timestamp
        );
        worst = worst.max(mean_abs_err(&d.image, f));
    }
    eprintln!(
        "{codec:?} ({}) round trip: worst per-frame mean abs error {worst:.3}/255, {} bytes",
        enc.encoder, enc.bytes
    );
    assert!(
        worst <= 3.0,
        "{codec:?}: mean abs pixel error {worst} > 3/255"
    );
}

#[test]
fn av1_round_trip_exact_count_fps_timestamps() {
    round_trip(VideoCodec::Av1);
}

#[test]
fn h264_round_trip_exact_count_fps_timestamps() {
    round_trip(VideoCodec::H264);
}

#[test]
fn episodes_share_one_mp4_and_decode_exactly() {
    shared_mp4(VideoCodec::Av1);
    shared_mp4(VideoCodec::H264);
}

fn shared_mp4(codec: VideoCodec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("videos/cam/chunk-000/file-000.mp4");
    let (h, w, fps) = (64, 96, 15.0);
    let lens = [7usize, 12, 5];
    let episodes: Vec<Vec<RgbImage>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| synthetic_frames(n, h, w, i as u32 * 2))
        .collect();
    let mut enc = Mp4Encoder::create(&path, w, h, fps, &opts(codec)).unwrap();
    let mut spans = Vec::new();
    for ep in &episodes {
        enc.begin_episode().unwrap();
        for f in ep {
            enc.push(f).unwrap();
        }
        spans.push(enc.end_episode().unwrap());
    }
    assert!(
        !path.exists(),
        "nothing visible under the final name before finish"
    );
    let done = enc.finish().unwrap();
    assert_eq!(done.frames, lens.iter().sum::<usize>() as u64);
    let mut start = 0u64;
    for (span, &n) in spans.iter().zip(&lens) {
        assert_eq!((span.first_frame, span.frames), (start, n as u64));
        assert_eq!(span.from_timestamp, start as f64 / fps);
        assert_eq!(span.to_timestamp, (start + n as u64) as f64 / fps);
        start += n as u64;
    }
    // Decode each episode out of the shared file (in reverse order, so seeking is exercised).
    for (i, (span, ep)) in spans.iter().zip(&episodes).enumerate().rev() {
        let src = Mp4Frames::new(&path, span.from_timestamp, fps, ep.len(), (h, w))
            .labelled(i as u64, "cam");
        assert_eq!(src.len(), ep.len());
        let got = src.decode().unwrap();
        assert_eq!(got.len(), ep.len());
        for (k, (g, want)) in got.iter().zip(ep).enumerate() {
            let own = mean_abs_err(g, want);
            assert!(own <= 3.0, "episode {i} frame {k}: error {own}");
            // A frame of a neighbouring episode must be farther away than the right one.
            for (j, other) in episodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let o = other.get(k).or(other.last()).unwrap();
                assert!(
                    mean_abs_err(g, o) > own + 2.0,
                    "episode {i} frame {k} looks like episode {j}"
                );
            }
        }
    }
}

fn assert_names(e: &Error, file: &str, episode: Option<u64>, key: Option<&str>) {
    let msg = e.to_string();
    assert!(msg.contains(file), "error should name {file}: {msg}");
    let loc = e.location().expect("a location");
    assert_eq!(loc.episode, episode, "{msg}");
    assert_eq!(loc.field.as_deref(), key, "{msg}");
}

#[test]
fn bad_video_input_is_an_error_naming_file_episode_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w, fps) = (64, 96, 10.0);
    let frames = synthetic_frames(10, h, w, 0);
    let good = dir.path().join("good.mp4");
    video::encode_frames(&good, &frames, fps, &opts(VideoCodec::H264)).unwrap();

    // Missing file.
    let e = Mp4Frames::new(dir.path().join("missing.mp4"), 0.0, fps, 10, (h, w))
        .labelled(4, "cam")
        .decode()
        .unwrap_err();
    assert_names(&e, "missing.mp4", Some(4), Some("cam"));
    // It says so once, also printed with its chain as the CLI prints it (issue 19: the cause was said twice).
    assert_eq!(
        format!("{:#}", anyhow::Error::new(e)),
        format!(
            "episode 4, field \"cam\" ({}): video file not found",
            dir.path().join("missing.mp4").display()
        )
    );

    // More frames than the file holds (metadata pointing past the end).
    let e = Mp4Frames::new(&good, 0.0, fps, 11, (h, w))
        .labelled(5, "cam")
        .decode()
        .unwrap_err();
    assert_names(&e, "good.mp4", Some(5), Some("cam"));
    assert!(e.to_string().contains("frame 10 of 11"), "{e}");
    let e = Mp4Frames::new(&good, 0.5, fps, 6, (h, w))
        .labelled(5, "cam")
        .decode()
        .unwrap_err();
    assert!(e.to_string().contains("frame 5 of 6"), "{e}");

    // Wrong size in the metadata.
    let e = Mp4Frames::new(&good, 0.0, fps, 10, (h, w + 2))
        .labelled(1, "cam")
        .decode()
        .unwrap_err();
    assert_names(&e, "good.mp4", Some(1), Some("cam"));

    // Garbage and truncated files.
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not an mp4 at all").unwrap();
    let e = Mp4Frames::new(&junk, 0.0, fps, 10, (h, w))
        .labelled(2, "cam")
        .decode()
        .unwrap_err();
    assert_names(&e, "junk.mp4", Some(2), Some("cam"));
    let bytes = std::fs::read(&good).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 200, 64] {
        let cut = dir.path().join(format!("cut{keep}.mp4"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let e = Mp4Frames::new(&cut, 0.0, fps, 10, (h, w))
            .labelled(3, "cam")
            .decode()
            .unwrap_err();
        assert_names(&e, &format!("cut{keep}.mp4"), Some(3), Some("cam"));
    }
    assert!(video::probe(&junk).is_err());
}

#[test]
fn unfinished_encoder_leaves_nothing_and_bad_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mp4");
    {
        let mut enc = Mp4Encoder::create(&path, 96, 64, 10.0, &opts(VideoCodec::H264)).unwrap();
        for f in synthetic_frames(3, 64, 96, 0) {
            enc.push(&f).unwrap();
        }
        assert!(enc.push(&RgbImage::new(10, 10)).is_err());
        assert!(vadapt::io::fs::temp_path_for(&path).exists());
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "dropped encoder left files behind"
    );
    assert!(Mp4Encoder::create(&path, 95, 64, 10.0, &EncoderOptions::default()).is_err());
    assert!(Mp4Encoder::create(&path, 96, 64, 0.0, &EncoderOptions::default()).is_err());
}
