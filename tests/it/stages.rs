//! Latent targets and super-resolution cascades through `vadapt augment` (`pipeline::run`), with random-weight
//! models written here: a latent small model (the t2v fixture's VAE in `vae/`) composed with the diffusers
//! text-to-video fixture directory as prior, a pixel adapter refused next to a latent prior, and a base model
//! followed by an SR stage that writes the camera at the stage's resolution.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::common::fixture;
use crate::parity_latent::{copy_dir, parity_fixture};
use crate::pipeline::{opts, small_dataset, KEY};
use vadapt::io::open_dataset;
use vadapt::model_dir::{Conditioning, ModelDir, SampleSpace};
use vadapt::models::unet_3d::{UNet3DConditionModel, UNet3DConfig};
use vadapt::pipeline::{self, PipelineConfig};

/// A random-weight UNet3D model directory: `unet/` from `unet` (a diffusers config), plus `vadapt.json`.
fn random_model(dir: &Path, unet: serde_json::Value, meta: serde_json::Value) -> PathBuf {
    let unet_dir = dir.join("unet");
    std::fs::create_dir_all(&unet_dir).unwrap();
    let cfg: UNet3DConfig = serde_json::from_value(unet.clone()).unwrap();
    let vars = VarMap::new();
    UNet3DConditionModel::new(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        cfg,
    )
    .unwrap();
    vars.save(unet_dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    std::fs::write(unet_dir.join("config.json"), unet.to_string()).unwrap();
    std::fs::write(dir.join("vadapt.json"), meta.to_string()).unwrap();
    dir.to_path_buf()
}

fn tiny_unet(in_channels: usize, out_channels: usize) -> serde_json::Value {
    serde_json::json!({
        "in_channels": in_channels, "out_channels": out_channels,
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
        "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4,
        "cross_attention_dim": 16, "attention_head_dim": 4
    })
}

/// A latent small model in the t2v fixture's latent space (4 channels at 1/2 size), conditioned on edges.
fn latent_adapter(dir: &Path) -> PathBuf {
    let m = random_model(
        dir,
        tiny_unet(5, 4),
        serde_json::json!({"conditioning": ["edges"], "frames": 4, "height": 24, "width": 40}),
    );
    copy_dir(&parity_fixture("t2v/vae"), &m.join("vae"));
    m
}

fn write_toml(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("seed = 3\n[input]\nimage_key = \"{KEY}\"\n[output]\ncodec = \"h264\"\n{body}"),
    )
    .unwrap();
    p
}

fn camera(out: &Path, key: &str) -> Vec<Vec<image::RgbImage>> {
    let ds = open_dataset(out).unwrap();
    ds.episode_indices()
        .into_iter()
        .map(|i| ds.read_episode(i).unwrap().cameras[key].decode().unwrap())
        .collect()
}

fn spread(frames: &[image::RgbImage]) -> u8 {
    let px = frames.iter().flat_map(|f| f.as_raw().iter().copied());
    let (lo, hi) = px.fold((255u8, 0u8), |(lo, hi), v| (lo.min(v), hi.max(v)));
    hi - lo
}

#[test]
fn latent_target_composes_with_a_text_to_video_directory() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = latent_adapter(&dir.path().join("latent_adapter"));
    let m = ModelDir::load(&adapter, &Device::Cpu).unwrap();
    assert_eq!(
        m.space(),
        SampleSpace::Latents {
            channels: 4,
            downscale: 2,
            scaling_factor: 0.18215,
            shift_factor: None
        }
    );
    let prior = ModelDir::load(&parity_fixture("t2v"), &Device::Cpu).unwrap();
    assert!(prior.any_frames && prior.space() == m.space());

    let data = small_dataset(dir.path(), 2, 6);
    let t2v = parity_fixture("t2v");
    let toml = write_toml(
        dir.path(),
        "latent.toml",
        &format!(
            "[[target]]\nname = \"alone\"\nadapter = \"{a}\"\nguidance = 1.0\nsteps = 3\nwindow_overlap = 2\n\
             [[target]]\nname = \"composed\"\nadapter = \"{a}\"\nprior = \"{p}\"\nprior_strength = 0.5\n\
             prior_prompt = \"{{task}}, claymation style\"\nguidance = 1.0\nsteps = 3\nwindow_overlap = 2\n",
            a = adapter.display(),
            p = t2v.display()
        ),
    );
    let cfg = PipelineConfig::load(&toml).unwrap();
    let out = dir.path().join("out");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &out)).unwrap();
    assert_eq!((s.episodes_written, s.units_sampled), (2, 4));
    let alone = camera(&out, "observation.images.alone");
    let composed = camera(&out, "observation.images.composed");
    for (a, c) in alone.iter().zip(&composed) {
        assert_eq!(a.len(), 6, "every source frame, decoded by the VAE");
        assert_eq!(
            (a[0].width(), a[0].height()),
            (40, 24),
            "pixels, not latents"
        );
        assert!(
            spread(a) > 0 && spread(c) > 0,
            "decoded frames are not flat"
        );
    }
    assert_ne!(alone, composed, "the latent prior changed the samples");
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert!(prov["targets"][1]["priors"][0]["hash"]
        .as_str()
        .unwrap()
        .starts_with("crc32c:"));

    // A pixel-space adapter next to a latent prior is refused before any work, naming both spaces.
    let toml = write_toml(
        dir.path(),
        "mixed.toml",
        &format!(
            "[[target]]\nname = \"mixed\"\nadapter = \"{}\"\nprior = \"{}\"\nsteps = 1\n",
            fixture("compose/adapter").display(),
            t2v.display()
        ),
    );
    let cfg = PipelineConfig::load(&toml).unwrap();
    let err = pipeline::run(&cfg, &toml, &opts(&data, &dir.path().join("mixed")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mixed.toml")
            && err.contains("target.mixed.prior")
            && err.contains("VAE latents")
            && err.contains("RGB pixels"),
        "{err}"
    );
    assert!(!dir.path().join("mixed/meta").exists(), "nothing written");
}

#[test]
fn latent_model_with_mismatched_parts_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A UNet predicting 3 channels next to a 4-channel VAE.
    let m = random_model(
        &dir.path().join("bad"),
        tiny_unet(4, 3),
        serde_json::json!({"conditioning": ["edges"], "frames": 4}),
    );
    copy_dir(&parity_fixture("t2v/vae"), &m.join("vae"));
    let err = ModelDir::load(&m, &Device::Cpu).err().unwrap().to_string();
    assert!(
        err.contains("unet/config.json")
            && err.contains("out_channels")
            && err.contains("latents have 4"),
        "{err}"
    );
}

/// An SR stage model: 48x80, conditioned on the upsampled base output and the edges.
fn sr_model(dir: &Path) -> PathBuf {
    random_model(
        dir,
        tiny_unet(7, 3),
        serde_json::json!({"conditioning": ["low_res", "edges"], "frames": 8, "height": 48, "width": 80}),
    )
}

#[test]
fn cascade_stage_writes_the_camera_at_its_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let sr = sr_model(&dir.path().join("sr"));
    assert_eq!(
        ModelDir::load(&sr, &Device::Cpu).unwrap().conditioning,
        vec![Conditioning::LowRes, Conditioning::Edges]
    );
    let data = small_dataset(dir.path(), 2, 10);
    let base = fixture("compose/adapter");
    let body = format!(
        "[[target]]\nname = \"hd\"\nadapter = \"{}\"\nguidance = 1.0\nsteps = 2\n\
         [[target.stages]]\nadapter = \"{}\"\nsteps = 2\n",
        base.display(),
        sr.display()
    );
    let toml = write_toml(dir.path(), "cascade.toml", &body);
    // Cameras are written at [output] resolution (default: the source camera's, 24x40 here): ask for the stage's
    // 48x80 so the file holds what the stage made.
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("[output]\n", "[output]\nresolution = [48, 80]\n");
    std::fs::write(&toml, text).unwrap();
    let cfg = PipelineConfig::load(&toml).unwrap();
    let (plan, source) = pipeline::plan(&cfg, &toml, &opts(&data, &dir.path().join("x"))).unwrap();
    assert!(
        plan.describe(source.as_ref()).contains("-> SR 48x80"),
        "{}",
        plan.describe(source.as_ref())
    );
    let out = dir.path().join("out");
    let s = pipeline::run(&cfg, &toml, &opts(&data, &out)).unwrap();
    assert_eq!(s.episodes_written, 2);
    let hd = camera(&out, "observation.images.hd");
    for ep in &hd {
        assert_eq!(ep.len(), 10);
        assert_eq!((ep[0].width(), ep[0].height()), (80, 48));
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    let stage = &prov["targets"][0]["stages"][0];
    assert_eq!(stage["resolution"], serde_json::json!([48, 80]));
    assert!(stage["hash"].as_str().unwrap().starts_with("crc32c:"));

    // The same run again gives the same bytes (stage seeds derive from the target's).
    let again = dir.path().join("again");
    pipeline::run(&cfg, &toml, &opts(&data, &again)).unwrap();
    assert_eq!(camera(&again, "observation.images.hd"), hd);
}

#[test]
fn cascade_misuse_is_refused_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let sr = sr_model(&dir.path().join("sr"));
    let data = small_dataset(dir.path(), 1, 8);
    let base = fixture("compose/adapter");
    let cases = [
        // A base model listed as a stage: it takes no low_res.
        (
            format!(
                "[[target]]\nname = \"a\"\nadapter = \"{b}\"\nsteps = 1\n[[target.stages]]\nadapter = \"{b}\"\nsteps = 1\n",
                b = base.display()
            ),
            "target.a.stages[0].adapter",
            "no low_res",
        ),
        // An SR model as the base.
        (
            format!("[[target]]\nname = \"a\"\nadapter = \"{}\"\nsteps = 1\n", sr.display()),
            "target.a.adapter",
            "super-resolution stage",
        ),
        // A stage below the base resolution.
        (
            format!(
                "[[target]]\nname = \"a\"\nadapter = \"{}\"\nsteps = 1\n[[target.stages]]\nadapter = \"{}\"\nresolution = [16, 24]\n",
                base.display(),
                sr.display()
            ),
            "target.a.stages[0].resolution",
            "below the previous stage",
        ),
    ];
    for (i, (body, key, what)) in cases.iter().enumerate() {
        let toml = write_toml(dir.path(), &format!("c{i}.toml"), body);
        let cfg = PipelineConfig::load(&toml).unwrap();
        let err = pipeline::run(&cfg, &toml, &opts(&data, &dir.path().join(format!("o{i}"))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("c{i}.toml")) && err.contains(key) && err.contains(what),
            "case {i}: {err}"
        );
    }
    // Stage keys are checked when the file loads: a bad value names its stage.
    let toml = write_toml(
        dir.path(),
        "steps.toml",
        &format!(
            "[[target]]\nname = \"a\"\nadapter = \"{}\"\n[[target.stages]]\nadapter = \"{}\"\nsteps = 0\n",
            base.display(),
            sr.display()
        ),
    );
    let err = PipelineConfig::load(&toml).unwrap_err().to_string();
    assert!(err.contains("target[0].stages[0].steps"), "{err}");
}

/// The shipped cascade example plans with the shipped demo models on the bundled sample: the base at 24x40, then
/// the SR stage at 48x80 (what `vadapt augment --dry-run` prints).
#[test]
fn cascade_example_pipeline_plans_with_the_demo_models() {
    let repo = crate::common::repo();
    let toml = repo.join("pipelines/cascade.toml");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (plan, source) = pipeline::plan(
        &cfg,
        &toml,
        &opts(
            &repo.join("datasets/sample/lerobot"),
            &dir.path().join("out"),
        ),
    )
    .unwrap();
    let text = plan.describe(source.as_ref());
    let hd = plan.targets.iter().find(|t| t.name == "sim_48x80").unwrap();
    assert_eq!(
        (hd.resolution, hd.stages.clone()),
        ((24, 40), vec![(48, 80)]),
        "{text}"
    );
    assert!(text.contains("-> SR 48x80"), "{text}");
}
