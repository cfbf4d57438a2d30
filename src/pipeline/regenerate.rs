//! `vadapt regenerate OUT --episode K --output DEST`: sample output episode `K` of an expanded `vadapt augment`
//! output again, alone, from what `OUT/meta/augmentation.json` recorded (the config, the input, and the episode's
//! entry: source episode, target and the variant's draws), and write it as a one-episode dataset with the same
//! features. Its frames are the run's, byte for byte: noise seeds derive from (target seed, source episode, the
//! variant's label, window) and the draws are the recorded ones, so no other episode, unit or shard is needed.
//! The models must be the ones the run used: their recorded hashes are checked first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde_json::{json, Value};

use super::config::{PipelineConfig, SOURCE_TARGET};
use super::plan::{model_hash, output_size};
use super::prompt::PromptContext;
use super::target::{frames_resized, LoadedTarget, ModelCache};
use super::variants::{self, Draw};
use super::workers::{read_camera, WriterSetup};
use crate::compute::Compute;
use crate::episode::{EpisodeIndex, Frames};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::fs::write_atomic;
use crate::io::open_dataset;

/// What [`regenerate`] sampled.
#[derive(Debug, Clone)]
pub struct Regenerated {
    pub source_episode: u64,
    pub target: String,
    pub draw: Draw,
    /// The sampled frames at the model's resolution (the run's unit), before upsampling to the output size.
    pub frames: Vec<RgbImage>,
}

/// The recorded run: its config, input and the entry of output episode `episode`.
struct Recorded {
    cfg: PipelineConfig,
    input: PathBuf,
    entry: Value,
    targets: Value,
}

fn read_record(out: &Path, episode: usize) -> Result<Recorded> {
    let path = out.join("meta").join("augmentation.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    let prov: Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(Location::file(&path), e.to_string()))?;
    let bad = |field: &str, msg: String| Error::invalid(Location::file(&path).field(field), msg);
    let cfg: PipelineConfig =
        serde_json::from_value(prov["config"].clone()).map_err(|e| bad("config", e.to_string()))?;
    let input = prov["input"]
        .as_str()
        .ok_or_else(|| bad("input", "missing".into()))?;
    let entries = prov["episodes"].as_array().ok_or_else(|| {
        bad(
            "episodes",
            "no per-episode records: regenerate takes an expanded output (a paired output's episodes are its \
             source episodes; augment them again with --limit)"
                .into(),
        )
    })?;
    let entry = entries.get(episode).cloned().ok_or_else(|| {
        Error::invalid(
            Location::file(&path).episode(episode as u64),
            format!("the output has {} episodes", entries.len()),
        )
    })?;
    Ok(Recorded {
        cfg,
        input: PathBuf::from(input),
        entry,
        targets: prov["targets"].clone(),
    })
}

/// Sample output episode `episode` of the expanded output `out` again and write it to `dest` (which must not
/// exist), as a one-episode LeRobot dataset with the output's features and a `meta/augmentation.json` naming where
/// it came from.
pub fn regenerate(
    out: &Path,
    episode: usize,
    dest: &Path,
    compute: Compute,
) -> Result<Regenerated> {
    let rec = read_record(out, episode)?;
    let file = out.join("meta").join("augmentation.json");
    let at = |field: &str| Location::file(&file).episode(episode as u64).field(field);
    let name = rec.entry["target"]
        .as_str()
        .ok_or_else(|| Error::invalid(at("target"), "missing"))?;
    if name == SOURCE_TARGET && rec.entry.get("draw").is_none() {
        return Err(Error::invalid(
            at("target"),
            "a kept source episode (output.keep_source): nothing was sampled",
        ));
    }
    let source_episode = rec.entry["source_episode"]
        .as_u64()
        .ok_or_else(|| Error::invalid(at("source_episode"), "missing"))?;
    let draw: Draw = serde_json::from_value(rec.entry["draw"].clone())
        .map_err(|e| Error::invalid(at("draw"), e.to_string()))?;
    let ti = rec
        .cfg
        .targets
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| Error::invalid(at("target"), format!("{name:?} is not in the config")))?;
    check_hashes(&rec, ti, &file)?;

    let device = compute.device.open()?;
    let mut models = ModelCache::new(device.clone(), compute.precision.dtype());
    let target = LoadedTarget::load(&rec.cfg.targets[ti], &file, &mut models)?;
    let source = open_dataset(&rec.input)?;
    let size = output_size(&rec.cfg, source.as_ref(), &file)?;
    let setup = WriterSetup::with(
        &rec.cfg,
        source.as_ref(),
        std::slice::from_ref(&target),
        size,
    )?;
    let idx = EpisodeIndex(source_episode);
    let key = &rec.cfg.input.image_key;
    let (mut ep, decoded) = read_camera(source.read_episode(idx)?, idx, key, setup.keep_masks())?;
    let at_res: Vec<Arc<Vec<RgbImage>>> = target
        .resolutions()
        .into_iter()
        .map(|(h, w)| Arc::new(frames_resized(&decoded, h, w)))
        .collect();
    let seed = target.seed(rec.cfg.seed);
    let prompt = PromptContext::of(&ep);
    let frames = target.sample_episode(
        &at_res,
        &prompt,
        seed,
        source_episode,
        &device,
        &|_| Ok(()),
        &draw,
    )?;
    // As the run's writer does: the source camera re-encoded from the decoded frames.
    ep.cameras.insert(key.clone(), Frames::from_images(decoded));

    let record = target.record(&prompt, &draw)?;
    let keep = setup.keep(&ep)?;
    let draws = variants::records_draws(&rec.cfg);
    let new = variants::expanded_episode(
        &ep,
        0,
        variants::expanded_key(&rec.cfg),
        setup.finish(&keep, &target, frames.clone()),
        &record,
        draws,
    )?;
    write_dataset(dest, &setup, &new, || {
        json!({
            "vadapt_version": env!("CARGO_PKG_VERSION"),
            "regenerated_from": {"output": out.to_string_lossy(), "episode": episode},
            "input": rec.input.to_string_lossy(),
            "config": rec.cfg,
            "episodes": [rec.entry],
        })
    })?;
    Ok(Regenerated {
        source_episode,
        target: name.to_string(),
        draw,
        frames,
    })
}

/// The models on disk are the ones the run recorded (adapter, priors, stages), or the frames could not match.
fn check_hashes(rec: &Recorded, ti: usize, file: &Path) -> Result<()> {
    let t = &rec.cfg.targets[ti];
    let recorded = &rec.targets[ti];
    let mut expect: Vec<(PathBuf, Value)> =
        vec![(t.adapter.clone(), recorded["adapter"]["hash"].clone())];
    for (j, p) in t.all_priors().iter().enumerate() {
        expect.push((p.dir.clone(), recorded["priors"][j]["hash"].clone()));
    }
    for (j, st) in t.stages.iter().enumerate() {
        expect.push((st.adapter.clone(), recorded["stages"][j]["hash"].clone()));
    }
    for (dir, want) in expect {
        let have = model_hash(&dir)?;
        if want.as_str() != Some(have.as_str()) {
            return Err(Error::invalid(
                Location::file(file).field(format!("targets[{ti}]")),
                format!(
                    "{} hashes to {have}, the run recorded {want}: the model changed since, so its frames would too",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Write `episode` as a dataset at `dest`, built in a sibling temporary directory and renamed into place whole.
fn write_dataset(
    dest: &Path,
    setup: &WriterSetup,
    episode: &crate::episode::Episode,
    provenance: impl FnOnce() -> Value,
) -> Result<()> {
    if dest.exists() {
        return Err(Error::invalid(
            Location::file(dest),
            "exists: regenerate writes a new dataset",
        ));
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "regenerated".into());
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    let mut writer = setup.create_writer(&tmp)?;
    writer.save_episode(episode)?;
    let _ = writer.finalize()?;
    let text = serde_json::to_string_pretty(&provenance()).expect("json");
    write_atomic(&tmp.join("meta").join("augmentation.json"), text.as_bytes())?;
    std::fs::rename(&tmp, dest).at(dest)
}
