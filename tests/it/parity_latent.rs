//! The pieces of a latent text-to-video prior against diffusers 0.35.2 / transformers 4.57.6 on tiny random-weight
//! models (tests/fixtures/parity, written by tests/parity/gen_latent_parity.py; its README gives the conventions):
//! AutoencoderKL encode (latent mean) and decode, CLIP `last_hidden_state` (quick_gelu and gelu), and the tiny CLIP
//! BPE tokenizer; then the diffusers text-to-video directory loader and a composed latent sampling run end to end.
//! Only the committed files are read: no Python at test time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vadapt::model_dir::ModelDir;
use vadapt::models::text::{load_text_encoder, ClipText, TextEncoder};
use vadapt::models::unet_3d::{UNet3DConditionModel, UNet3DConfig};
use vadapt::models::vae::AutoencoderKL;
use vadapt::models::Denoiser;
use vadapt::rng::NoiseRng;
use vadapt::sampling::{sample, ComposeSettings, Conditioned, Prior, Rule, Strength};
use vadapt::schedulers::SchedulerKind;

use crate::common::{max_abs_diff, repo};

/// tests/fixtures/parity/README.md.
const TOL: f32 = 1e-4;

/// `tests/fixtures/parity/<rel>`; fails naming the file and how to regenerate it.
pub(crate) fn parity_fixture(rel: &str) -> PathBuf {
    let p = repo().join("tests/fixtures/parity").join(rel);
    assert!(
        p.exists(),
        "parity fixture {} is missing: it is committed with the repository; regenerate it with \
         `nice -n 19 .venv/bin/python tests/parity/gen_latent_parity.py` (see tests/fixtures/parity/README.md)",
        p.display()
    );
    p
}

fn load_io(rel: &str) -> HashMap<String, Tensor> {
    let p = parity_fixture(rel);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("parity fixture {}: {e}", p.display()))
}

fn get<'a>(io: &'a HashMap<String, Tensor>, name: &str, file: &str) -> &'a Tensor {
    io.get(name)
        .unwrap_or_else(|| panic!("parity fixture {file} has no tensor {name:?}"))
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn diff(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_abs_diff(&flat(got), &flat(want));
    let scale = flat(want).iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{what}: max abs diff {d:.3e} (reference max |x| {scale:.3})");
    d
}

fn vae() -> AutoencoderKL {
    AutoencoderKL::load(&parity_fixture("t2v/vae"), &Device::Cpu).unwrap()
}

#[test]
fn vae_encode_mean_matches_diffusers() {
    let vae = vae();
    assert_eq!((vae.downscale(), vae.latent_channels()), (2, 4));
    let io = load_io("vae_io.safetensors");
    let video = get(&io, "video", "vae_io.safetensors");
    let want = get(&io, "latents_mean", "vae_io.safetensors");
    let got = vae.encode(video).unwrap();
    let d = diff("VAE encode (mean * scaling_factor)", &got, want);
    assert!(d <= TOL, "VAE encode: max abs diff {d} > {TOL}");

    // Unscaled, frame by frame: the same mean, and the clamped log variance.
    let frames = video
        .permute((0, 2, 1, 3, 4))
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((2, 3, 16, 24))
        .unwrap();
    let dist = vae.encode_images(&frames).unwrap();
    let fold = |t: &Tensor| {
        t.permute((0, 2, 1, 3, 4))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((2, 4, 8, 12))
            .unwrap()
    };
    let want_mean = (fold(want) / vae.config().scaling_factor).unwrap();
    let d_mean = diff("VAE latent_dist.mean (unscaled)", &dist.mean, &want_mean);
    assert!(d_mean <= TOL, "{d_mean}");
    let d_logvar = diff(
        "VAE latent_dist.logvar",
        &dist.logvar,
        &fold(get(&io, "logvar", "vae_io.safetensors")),
    );
    assert!(d_logvar <= TOL, "{d_logvar}");

    // Sampling: seeded, reproducible, and mean + std * noise (not the mean).
    let s1 = vae.encode_sample(video, &mut NoiseRng::new(7)).unwrap();
    let s2 = vae.encode_sample(video, &mut NoiseRng::new(7)).unwrap();
    let s3 = vae.encode_sample(video, &mut NoiseRng::new(8)).unwrap();
    assert_eq!(flat(&s1), flat(&s2), "same seed, same latents");
    assert!(max_abs_diff(&flat(&s1), &flat(&s3)) > 1e-3, "seed matters");
    let off = max_abs_diff(&flat(&s1), &flat(&got));
    assert!(off > 1e-3, "a sample is not the mean (max diff {off})");
    // exp(logvar / 2) * scaling_factor bounds |sample - mean| / |noise|; noise of 8 sigma never happens here.
    let max_std = flat(&dist.logvar)
        .iter()
        .map(|l| (l / 2.0).exp())
        .fold(0f32, f32::max)
        * vae.config().scaling_factor as f32;
    assert!(off < 8.0 * max_std, "{off} vs std {max_std}");
}

#[test]
fn vae_decode_matches_diffusers() {
    let vae = vae();
    let io = load_io("vae_io.safetensors");
    let z = get(&io, "z", "vae_io.safetensors");
    let got = vae.decode(z).unwrap();
    assert_eq!(got.dims(), &[1, 3, 2, 16, 24]);
    let d = diff(
        "VAE decode",
        &got,
        get(&io, "decoded", "vae_io.safetensors"),
    );
    assert!(d <= TOL, "VAE decode: max abs diff {d} > {TOL}");
}

/// Three blocks (downscale 4), two layers per block, 3 latent channels, no quant convs, no mid-block attention and a
/// shift_factor: the config drives the graph.
#[test]
fn vae_variant_matches_diffusers() {
    let vae = AutoencoderKL::load(&parity_fixture("vae_variant"), &Device::Cpu).unwrap();
    assert_eq!((vae.downscale(), vae.latent_channels()), (4, 3));
    let file = "vae_variant_io.safetensors";
    let io = load_io(file);
    let got = vae.encode(get(&io, "video", file)).unwrap();
    let d = diff(
        "VAE variant encode ((mean - shift) * scale)",
        &got,
        get(&io, "latents_mean", file),
    );
    assert!(d <= TOL, "VAE variant encode: max abs diff {d} > {TOL}");
    let got = vae.decode(get(&io, "z", file)).unwrap();
    let d = diff("VAE variant decode", &got, get(&io, "decoded", file));
    assert!(d <= TOL, "VAE variant decode: max abs diff {d} > {TOL}");
}

#[test]
fn vae_bad_inputs_are_named() {
    let vae = vae();
    let dev = Device::Cpu;
    let err = vae
        .encode(&Tensor::zeros((1, 3, 2, 15, 24), candle_core::DType::F32, &dev).unwrap())
        .err()
        .expect("odd height")
        .to_string();
    assert!(err.contains("multiples of 2"), "{err}");
    let err = vae
        .decode(&Tensor::zeros((1, 3, 2, 8, 12), candle_core::DType::F32, &dev).unwrap())
        .err()
        .expect("3 latent channels")
        .to_string();
    assert!(err.contains("latents") && err.contains("takes 4"), "{err}");
    let err = vae
        .decode(&Tensor::zeros((4, 8, 12), candle_core::DType::F32, &dev).unwrap())
        .err()
        .expect("not a video")
        .to_string();
    assert!(err.contains("frames"), "{err}");

    // Config and weight errors name the file and the field / tensor.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    std::fs::create_dir_all(&dir).unwrap();
    let src = parity_fixture("t2v/vae");
    let cfg_text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let write_cfg = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
        edit(&mut v);
        std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    };
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    write_cfg(&|v| v["norm_num_groups"] = 3.into());
    let err = AutoencoderKL::load(&dir, &dev).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("norm_num_groups"),
        "{err}"
    );
    write_cfg(&|v| v["down_block_types"][1] = "AttnDownEncoderBlock2D".into());
    let err = AutoencoderKL::load(&dir, &dev).err().unwrap().to_string();
    assert!(err.contains("down_block_types"), "{err}");
    write_cfg(&|v| v["latent_channels"] = 8.into());
    let err = AutoencoderKL::load(&dir, &dev).err().unwrap().to_string();
    assert!(
        err.contains("diffusion_pytorch_model.safetensors") && err.contains("shape"),
        "{err}"
    );
    // Without the mid-block attention the checkpoint still loads (unused tensors are ignored) and decodes
    // differently: the flag is honoured.
    write_cfg(&|v| v["mid_block_add_attention"] = false.into());
    let no_attn = AutoencoderKL::load(&dir, &dev).unwrap();
    let io = load_io("vae_io.safetensors");
    let z = get(&io, "z", "vae_io.safetensors");
    let d = max_abs_diff(
        &flat(&no_attn.decode(z).unwrap()),
        &flat(&vae.decode(z).unwrap()),
    );
    assert!(d > 1e-3, "mid_block_add_attention ignored ({d})");
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let err = AutoencoderKL::load(&dir, &dev).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
}

fn clip_io() -> (HashMap<String, Tensor>, Tensor) {
    let io = load_io("clip_io.safetensors");
    let ids = get(&io, "input_ids", "clip_io.safetensors").clone();
    (io, ids)
}

fn clip_parity(enc: &ClipText, which: &str) -> f32 {
    let (io, ids) = clip_io();
    let want = get(
        &io,
        &format!("last_hidden_state_{which}"),
        "clip_io.safetensors",
    );
    let got = enc.encode_ids(&ids).unwrap();
    diff(&format!("CLIP {which} last_hidden_state"), &got, want)
}

#[test]
fn clip_quick_gelu_matches_transformers() {
    let dir = parity_fixture("t2v/text_encoder");
    let enc = ClipText::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        (
            enc.config().hidden_act.as_str(),
            enc.dim(),
            enc.max_tokens()
        ),
        ("quick_gelu", 32, 77)
    );
    let d = clip_parity(&enc, "quick_gelu");
    assert!(d <= TOL, "CLIP quick_gelu: max abs diff {d} > {TOL}");
}

#[test]
fn clip_gelu_matches_transformers() {
    // clip_gelu/ holds only config.json; its weights are the quick_gelu encoder's (README.md).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text_encoder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        parity_fixture("clip_gelu/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        parity_fixture("t2v/text_encoder/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let tk = tmp.path().join("tokenizer");
    std::fs::create_dir_all(&tk).unwrap();
    std::fs::copy(
        parity_fixture("t2v/tokenizer/tokenizer.json"),
        tk.join("tokenizer.json"),
    )
    .unwrap();
    let enc = ClipText::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        (
            enc.config().hidden_act.as_str(),
            enc.config().layer_norm_eps
        ),
        ("gelu", 1e-6)
    );
    let d = clip_parity(&enc, "gelu");
    assert!(d <= TOL, "CLIP gelu: max abs diff {d} > {TOL}");

    // The activation matters at this tolerance: the two references differ by far more than TOL.
    let (io, _) = clip_io();
    let apart = max_abs_diff(
        &flat(&io["last_hidden_state_gelu"]),
        &flat(&io["last_hidden_state_quick_gelu"]),
    );
    assert!(apart > 100.0 * TOL, "{apart}");
}

#[test]
fn clip_tokenizer_matches_transformers() {
    let prompts_path = parity_fixture("prompts.json");
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&prompts_path).unwrap()).unwrap();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    // The diffusers layout: text_encoder/ with the tokenizer in the sibling tokenizer/.
    let enc = ClipText::load(&parity_fixture("t2v/text_encoder"), &Device::Cpu).unwrap();
    let got = enc.token_ids(&refs).unwrap().to_vec2::<u32>().unwrap();
    let (_, ids) = clip_io();
    let want: Vec<Vec<u32>> = ids
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect();
    assert_eq!(want.len(), refs.len(), "{}", prompts_path.display());
    for ((g, w), p) in got.iter().zip(&want).zip(&refs) {
        assert_eq!(g, w, "token ids of {p:?}");
    }
    // The fixture exercises BOS, EOS padding and truncation.
    assert!(want[2][1..].iter().all(|&v| v == 999), "empty prompt");
    assert!(
        want[3][1..76].iter().all(|&v| v != 999) && want[3][76] == 999,
        "the long prompt is truncated to 75 tokens between BOS and EOS"
    );

    // encode() = tokenize + encode_ids, through the generic loader too.
    let generic = load_text_encoder(&parity_fixture("t2v/text_encoder"), &Device::Cpu).unwrap();
    let (io, _) = clip_io();
    let d = diff(
        "CLIP encode(prompts) via load_text_encoder",
        &generic.encode(&refs).unwrap(),
        &io["last_hidden_state_quick_gelu"],
    );
    assert!(d <= TOL, "{d}");
}

#[test]
fn clip_unsupported_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("text_encoder");
    std::fs::create_dir_all(&dir).unwrap();
    let src: &Path = &parity_fixture("t2v/text_encoder");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_act"] = "relu".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = ClipText::load(&dir, &Device::Cpu)
        .err()
        .expect("relu")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden_act") && err.contains("relu"),
        "{err}"
    );
}

#[test]
fn text_to_video_directory_loads() {
    let dir = parity_fixture("t2v");
    let p = ModelDir::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        (p.unet.in_channels(), p.unet.out_channels()),
        (4, 4),
        "latent UNet"
    );
    assert_eq!(p.vae.as_ref().expect("vae/").latent_channels(), 4);
    assert_eq!(
        (
            p.text_encoder.as_ref().unwrap().dim(),
            p.text_encoder.as_ref().unwrap().max_tokens()
        ),
        (32, 77)
    );
    assert_eq!(p.scheduler.kind().unwrap(), SchedulerKind::Ddim);
    // Its text encoder is the parity-tested one.
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(parity_fixture("prompts.json")).unwrap())
            .unwrap();
    let (io, _) = clip_io();
    let got = p
        .text_encoder
        .as_ref()
        .unwrap()
        .encode(&[prompts[0].as_str()])
        .unwrap();
    let want = io["last_hidden_state_quick_gelu"].narrow(0, 0, 1).unwrap();
    assert!(max_abs_diff(&flat(&got), &flat(&want)) <= TOL);

    // A directory of another pipeline, or one whose parts do not fit, is refused naming the component.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("t2v");
    copy_dir(&dir, &copy);
    let index_text = std::fs::read_to_string(copy.join("model_index.json")).unwrap();
    let mut index: serde_json::Value = serde_json::from_str(&index_text).unwrap();
    index["unet"] = serde_json::json!(["diffusers", "UNet2DConditionModel"]);
    std::fs::write(copy.join("model_index.json"), index.to_string()).unwrap();
    let err = ModelDir::load(&copy, &Device::Cpu)
        .err()
        .expect("2-D UNet")
        .to_string();
    assert!(
        err.contains("model_index.json")
            && err.contains("unet")
            && err.contains("UNet2DConditionModel"),
        "{err}"
    );
    std::fs::write(copy.join("model_index.json"), &index_text).unwrap();
    // A text encoder 48 wide (random weights written by candle under transformers' names) for a UNet whose
    // cross-attention takes 32.
    let te = copy.join("text_encoder");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(te.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = 48.into();
    std::fs::write(te.join("config.json"), cfg.to_string()).unwrap();
    let vars = VarMap::new();
    let c = candle_transformers::models::clip::text_model::ClipTextConfig {
        vocab_size: 1000,
        embed_dim: 48,
        activation: candle_transformers::models::clip::text_model::Activation::QuickGelu,
        intermediate_size: 37,
        max_position_embeddings: 77,
        pad_with: None,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        projection_dim: 32,
    };
    candle_transformers::models::clip::text_model::ClipTextTransformer::new(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu).pp("text_model"),
        &c,
    )
    .unwrap();
    vars.save(te.join("model.safetensors")).unwrap();
    let err = ModelDir::load(&copy, &Device::Cpu)
        .err()
        .expect("text encoder 48 wide, UNet cross-attention 32")
        .to_string();
    assert!(
        err.contains("unet") && err.contains("cross_attention_dim") && err.contains("48"),
        "{err}"
    );
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Composed sampling in latent space, end to end: noise -> DDIM with a tiny random latent small model and the
/// fixture's latent UNet as prior (text from its CLIP) -> VAE decode to pixels.
#[test]
fn composed_latent_sampling_end_to_end() {
    let dev = Device::Cpu;
    let prior = ModelDir::load(&parity_fixture("t2v"), &dev).unwrap();

    // The small task model: a tiny random UNet3D on the same 4 latent channels, unconditioned on text width 32.
    let small_cfg: UNet3DConfig = serde_json::from_value(serde_json::json!({
        "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock3D"], "up_block_types": ["CrossAttnUpBlock3D"],
        "block_out_channels": [8], "layers_per_block": 1, "norm_num_groups": 4,
        "cross_attention_dim": 32, "attention_head_dim": 4
    }))
    .unwrap();
    let vars = VarMap::new();
    let small =
        UNet3DConditionModel::new(VarBuilder::from_varmap(&vars, DType::F32, &dev), small_cfg)
            .unwrap();

    let (frames, h, w) = (2, 8, 12);
    let text = prior
        .text_encoder
        .as_ref()
        .unwrap()
        .encode(&["push the red star"])
        .unwrap();
    let uncond = prior
        .text_encoder
        .as_ref()
        .unwrap()
        .unconditional(1)
        .unwrap();
    let small_in = Conditioned {
        model: &small,
        channels: None,
        text: text.clone(),
        uncond: uncond.clone(),
        schedule: None,
    };
    let priors = [Prior {
        input: Conditioned {
            model: &prior.unet,
            channels: None,
            text,
            uncond,
            schedule: None,
        },
        strength: Strength::Constant(0.4),
    }];
    let mut scheduler = prior.scheduler.build().unwrap();
    scheduler.set_timesteps(3).unwrap();
    let x_t = NoiseRng::new(5).randn((1, 4, frames, h, w), &dev).unwrap();
    let settings = ComposeSettings {
        rule: Rule::Composed,
        guidance: 2.0,
        compose_min_t: 100,
    };
    let traj = sample(
        &small_in,
        &priors,
        scheduler.as_mut(),
        x_t.clone(),
        &settings,
        &mut NoiseRng::new(6),
        false,
    )
    .unwrap();
    assert_eq!(traj.x0.dims(), &[1, 4, frames, h, w]);
    assert!(traj.prior_calls >= 1, "the prior was composed in");
    let video = prior.vae.as_ref().unwrap().decode(&traj.x0).unwrap();
    let s = prior.downscale();
    assert_eq!(video.dims(), &[1, 3, frames, h * s, w * s]);
    let v = flat(&video);
    assert!(v.iter().all(|x| x.is_finite()), "decoded video is finite");
    assert!(
        v.iter().fold(0f32, |m, x| m.max(x.abs())) > 0.0,
        "decoded video is not all zeros"
    );

    // The prior changed the sample: without it the result differs.
    let mut scheduler = prior.scheduler.build().unwrap();
    scheduler.set_timesteps(3).unwrap();
    let alone = sample(
        &small_in,
        &[],
        scheduler.as_mut(),
        x_t,
        &settings,
        &mut NoiseRng::new(6),
        false,
    )
    .unwrap();
    assert!(max_abs_diff(&flat(&alone.x0), &flat(&traj.x0)) > 1e-4);
}
