//! `keep_mask` (`pipeline::keep`): a target keeps the source camera's pixels under a mask camera of the dataset and
//! its own frames elsewhere, blended by the mask in between, exactly as the formula says; the run records it and
//! `vadapt regenerate` gives the same frames; a mask camera the dataset lacks is refused naming the key. On the
//! fixture adapter at 24x40 with lossless (PNG) cameras, so every pixel can be checked.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::json;
use vadapt::compute::Compute;
use vadapt::episode::{EpisodeIndex, Feature, Frames};
use vadapt::io::lerobot::writer::{LeRobotWriter, WriterOptions};
use vadapt::io::lerobot::CameraStorage;
use vadapt::io::open_dataset;
use vadapt::pipeline::regenerate::regenerate;
use vadapt::pipeline::{self, PipelineConfig};

use crate::common::fixture;
use crate::pipeline::{opts, small_dataset, KEY};

const MASK: &str = "observation.images.robot_mask";

/// The mask of frame `t`: a white band of columns that moves with `t`, a grey (128) column on each side of it,
/// black elsewhere (grey on every channel, as `generate.py --robot-mask` writes it).
fn mask_frame(t: usize, h: u32, w: u32) -> RgbImage {
    let lo = 4 + 2 * t as u32;
    RgbImage::from_fn(w, h, |x, _| {
        let v = match x {
            x if x > lo && x < lo + 8 => 255,
            x if x == lo || x == lo + 8 => 128,
            _ => 0,
        };
        image::Rgb([v, v, v])
    })
}

/// `source` with a mask camera added (every episode), written with PNG cameras to `out`.
fn with_mask(source: &Path, out: &Path) -> PathBuf {
    let src = open_dataset(source).unwrap();
    let mut features = src.features().clone();
    let shape = src.features()[KEY].shape.clone();
    features.insert(
        MASK.to_string(),
        Feature {
            dtype: "video".into(),
            shape: shape.clone(),
            names: Some(json!(["height", "width", "channels"])),
            info: None,
        },
    );
    let options = WriterOptions {
        storage: CameraStorage::Images,
        ..WriterOptions::default()
    };
    let mut w = LeRobotWriter::create(out, src.fps(), &features, options).unwrap();
    for idx in src.episode_indices() {
        let mut ep = src.read_episode(idx).unwrap();
        let masks = (0..ep.len())
            .map(|t| mask_frame(t, shape[0] as u32, shape[1] as u32))
            .collect();
        ep.cameras
            .insert(MASK.to_string(), Frames::from_images(masks));
        w.save_episode(&ep).unwrap();
    }
    let _ = w.finalize().unwrap();
    out.to_path_buf()
}

/// An expanded, camera-replacing pipeline with PNG cameras: the fixture adapter as target `edge_sim`, with
/// `extra` target lines.
fn toml(dir: &Path, file: &str, extra: &str) -> PathBuf {
    let p = dir.join(file);
    let text = format!(
        "seed = 7\n[input]\nimage_key = \"{KEY}\"\n[output]\nlayout = \"expanded\"\nstorage = \"images\"\n\
         replace_camera = true\nkeep_source = false\n\
         [[target]]\nname = \"edge_sim\"\nadapter = \"{}\"\nguidance = 1.5\nsteps = 1\n{extra}",
        fixture("compose/adapter").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn frames(ds: &Path, episode: u64, key: &str) -> Vec<RgbImage> {
    open_dataset(ds)
        .unwrap()
        .read_episode(EpisodeIndex(episode))
        .unwrap()
        .cameras[key]
        .decode()
        .unwrap()
}

#[test]
fn keep_mask_keeps_the_source_under_the_mask_and_the_target_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_mask(
        &small_dataset(dir.path(), 2, 10),
        &dir.path().join("masked"),
    );
    let run = |file: &str, extra: &str| {
        let p = toml(dir.path(), file, extra);
        let cfg = PipelineConfig::load(&p).unwrap();
        let out = dir.path().join(file).with_extension("out");
        pipeline::run(&cfg, &p, &opts(&data, &out)).unwrap();
        out
    };
    // The same target with and without the mask: the same noise (seeds derive from the target's name), so the
    // generated frames are the same and the kept output must be exactly the blend.
    let plain = run("plain.toml", "");
    let kept = run("kept.toml", &format!("keep_mask = {MASK:?}\n"));

    let (mut under, mut blended, mut around, mut changed) = (0usize, 0usize, 0usize, 0usize);
    for e in 0..2u64 {
        let source = frames(&data, e, KEY);
        let (p, k) = (frames(&plain, e, KEY), frames(&kept, e, KEY));
        // The mask camera is copied through, like every other source camera.
        assert!(
            frames(&kept, e, MASK) == frames(&data, e, MASK),
            "episode {e}: the mask camera changed"
        );
        assert_eq!(k.len(), source.len());
        for t in 0..source.len() {
            let mask = mask_frame(t, source[t].height(), source[t].width());
            for (x, y, m) in mask.enumerate_pixels() {
                let m = m.0[0] as u32;
                let (s, g, got) = (
                    source[t].get_pixel(x, y).0,
                    p[t].get_pixel(x, y).0,
                    k[t].get_pixel(x, y).0,
                );
                let want: [u8; 3] = std::array::from_fn(|c| {
                    ((m * s[c] as u32 + (255 - m) * g[c] as u32 + 127) / 255) as u8
                });
                assert_eq!(
                    got, want,
                    "episode {e}, frame {t}, pixel ({x}, {y}), mask {m}: source {s:?}, generated {g:?}"
                );
                match m {
                    255 => {
                        under += 1;
                        changed += usize::from(s != g);
                    }
                    0 => around += 1,
                    _ => blended += 1,
                }
            }
        }
    }
    assert!(under > 0 && blended > 0 && around > 0);
    // The check has teeth only where the target changed the pixels it must give back.
    assert!(
        changed * 2 > under,
        "the target left {} of {under} masked pixels as they were",
        under - changed
    );

    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert_eq!(prov["config"]["target"][0]["keep_mask"], json!(MASK));
    assert_eq!(prov["targets"][0]["keep_mask"]["camera"], json!(MASK));

    // regenerate samples one episode alone and keeps the source the same way.
    let dest = dir.path().join("regen");
    regenerate(&kept, 1, &dest, Compute::default()).unwrap();
    assert!(
        frames(&dest, 0, KEY) == frames(&kept, 1, KEY),
        "regenerated episode 1 differs from the run's"
    );
}

#[test]
fn keep_mask_naming_a_camera_the_dataset_lacks_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 1, 4);
    let p = toml(dir.path(), "kept.toml", &format!("keep_mask = {MASK:?}\n"));
    let cfg = PipelineConfig::load(&p).unwrap();
    let err = pipeline::run(&cfg, &p, &opts(&data, &dir.path().join("out")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target.edge_sim.keep_mask") && err.contains(MASK),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "a refused run wrote {err}"
    );

    // The input camera itself is no mask.
    let p = toml(dir.path(), "self.toml", &format!("keep_mask = {KEY:?}\n"));
    let err = PipelineConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("target[0].keep_mask"), "{err}");
}
