//! `vadapt sample`: one model, and a composition, conditioned on the edges of a video.

use crate::common::{fixture, vadapt};
use vadapt::io::video::{decode_all, encode_frames, EncoderOptions, VideoCodec};

pub(crate) fn edge_video(dir: &std::path::Path) -> std::path::PathBuf {
    let frames: Vec<image::RgbImage> = (0..10)
        .map(|t| {
            image::RgbImage::from_fn(80, 48, |x, y| {
                if (x as i32 - 10 - 4 * t).abs() < 8 && y > 10 && y < 30 {
                    image::Rgb([220, 40, 40])
                } else {
                    image::Rgb([90, 110, 130])
                }
            })
        })
        .collect();
    let p = dir.join("clip.mp4");
    encode_frames(
        &p,
        &frames,
        10.0,
        &EncoderOptions {
            codec: Some(VideoCodec::H264),
            crf: 18,
            ..Default::default()
        },
    )
    .unwrap();
    p
}

#[test]
fn sample_single_model_and_composition() {
    let dir = tempfile::tempdir().unwrap();
    let clip = edge_video(dir.path());
    let adapter = fixture("compose/adapter");
    let prior = fixture("compose/prior");
    let one = dir.path().join("one.mp4");
    let out = vadapt(&[
        "sample",
        "--model",
        adapter.to_str().unwrap(),
        "--edges",
        clip.to_str().unwrap(),
        "--steps",
        "3",
        "--seed",
        "1",
        "--out",
        one.to_str().unwrap(),
        "--png",
    ]);
    assert!(out.contains("0 prior calls"), "{out}");
    let frames = decode_all(&one).unwrap();
    assert_eq!(frames.len(), 8, "the model's frame count");
    assert_eq!(
        (frames[0].image.width(), frames[0].image.height()),
        (40, 24)
    );
    assert!(one.with_extension("png").exists());

    let two = dir.path().join("two.mp4");
    let out = vadapt(&[
        "sample",
        "--adapter",
        adapter.to_str().unwrap(),
        "--prior",
        prior.to_str().unwrap(),
        "--lam",
        "0.4",
        "--edges",
        clip.to_str().unwrap(),
        "--steps",
        "3",
        "--seed",
        "1",
        "--out",
        two.to_str().unwrap(),
    ]);
    // DDIM leading, 3 steps: 666, 333, 0 -> the prior joins at the two steps with t >= 100.
    assert!(out.contains("2 prior calls"), "{out}");
    let a: Vec<u8> = decode_all(&one)
        .unwrap()
        .iter()
        .flat_map(|f| f.image.as_raw().clone())
        .collect();
    let b: Vec<u8> = decode_all(&two)
        .unwrap()
        .iter()
        .flat_map(|f| f.image.as_raw().clone())
        .collect();
    assert_ne!(a, b, "the prior must change the sample");
}

#[test]
fn sample_refuses_what_the_model_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::common::vadapt_bin())
        .args([
            "sample",
            "--model",
            fixture("compose/adapter").to_str().unwrap(),
            "--out",
            dir.path().join("x.mp4").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("edges"),
        "an edge-conditioned model without --edges: {err}"
    );
    assert!(!dir.path().join("x.mp4").exists());
}
