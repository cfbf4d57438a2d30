//! One composed sampling step against the forwards it is made of.
//!
//! The composed ε at a step inside the window costs one batched small-model forward (cond + uncond) and one prior
//! forward; everything else (concatenation, guidance arithmetic, the scheduler update) should be noise next to them.
//! Uses the tiny diffusers UNets of tests/fixtures/compose (VADAPT_FIXTURES overrides the fixtures folder).

use std::hint::black_box;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use vadapt::models::unet_3d::UNet3DConditionModel;
use vadapt::models::{Denoiser, Parameterization};
use vadapt::sampling::{composed_eps, ComposeSettings, Conditioned, Prior, Rule, Strength};
use vadapt::schedulers::SchedulerConfig;

fn fixtures() -> PathBuf {
    let root = std::env::var_os("VADAPT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let p = root.join("compose");
    assert!(
        p.exists(),
        "fixture {} is missing: the reference fixtures are committed under tests/fixtures/ (or set VADAPT_FIXTURES)",
        p.display()
    );
    p
}

/// A "model" that returns a stored output: composing cached outputs times the composition's own work
/// (concatenation, batching, guidance arithmetic) without any network.
struct Cached {
    out: Tensor,
    in_channels: usize,
}

impl Denoiser for Cached {
    fn forward(&self, sample: &Tensor, _t: &Tensor, _ctx: &Tensor) -> vadapt::Result<Tensor> {
        Ok(self.out.narrow(0, 0, sample.dim(0)?)?)
    }
    fn in_channels(&self) -> usize {
        self.in_channels
    }
    fn out_channels(&self) -> usize {
        3
    }
    fn cross_attention_dim(&self) -> usize {
        16
    }
    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }
}

fn bench_compose(c: &mut Criterion) {
    let dir = fixtures();
    let dev = Device::Cpu;
    let adapter = UNet3DConditionModel::load(&dir.join("adapter"), &dev).expect("adapter UNet");
    let prior = UNet3DConditionModel::load(&dir.join("prior"), &dev).expect("prior UNet");
    let inputs =
        candle_core::safetensors::load(dir.join("inputs.safetensors"), &dev).expect("inputs");
    let get = |k: &str| inputs[k].to_dtype(DType::F32).expect(k);
    let (x, edge) = (get("x_T"), get("edge"));
    let small = Conditioned {
        model: &adapter,
        channels: Some(edge.clone()),
        text: get("adapter_text"),
        uncond: get("adapter_uncond"),
        schedule: None,
    };
    let priors = [Prior {
        input: Conditioned {
            model: &prior,
            channels: Some(edge.clone()),
            text: get("prior_text"),
            uncond: get("prior_uncond"),
            schedule: None,
        },
        strength: Strength::Constant(0.4),
    }];
    let cfg =
        SchedulerConfig::from_file(&dir.join("scheduler_config.json")).expect("scheduler config");
    let mut scheduler = cfg.build().expect("scheduler");
    scheduler.set_timesteps(10).expect("timesteps");
    let schedule = scheduler.schedule().clone();
    let t = scheduler.timesteps()[0];
    let settings = ComposeSettings {
        rule: Rule::Composed,
        guidance: 3.0,
        compose_min_t: 100,
    };

    let inp = Tensor::cat(&[&x, &edge], 1).expect("cat");
    let inp2 = Tensor::cat(&[&inp, &inp], 0).expect("cat");
    let ctx2 = Tensor::cat(&[&small.uncond, &small.text], 0).expect("cat");
    let t1 = Tensor::full(t as f32, 1, &dev).expect("t");
    let t2 = Tensor::full(t as f32, 2, &dev).expect("t");

    let mut g = c.benchmark_group("compose_step");
    g.sample_size(10);
    g.bench_function("small_forward_cond_uncond_batch2", |b| {
        b.iter(|| black_box(adapter.forward(&inp2, &t2, &ctx2).expect("forward")))
    });
    g.bench_function("prior_forward_batch1", |b| {
        b.iter(|| {
            black_box(
                prior
                    .forward(&inp, &t1, &priors[0].input.text)
                    .expect("forward"),
            )
        })
    });
    g.bench_function("composed_eps", |b| {
        b.iter(|| {
            let mut calls = 0;
            black_box(
                composed_eps(&small, &priors, &x, t, &settings, &schedule, &mut calls)
                    .expect("eps"),
            )
        })
    });
    g.bench_function("composed_eps_plus_ddim_step", |b| {
        b.iter(|| {
            let mut calls = 0;
            let eps = composed_eps(&small, &priors, &x, t, &settings, &schedule, &mut calls)
                .expect("eps");
            black_box(scheduler.step(&eps, t, &x, None).expect("step").prev_sample)
        })
    });
    g.finish();

    // The composition's own cost: the same step with both networks replaced by their cached outputs.
    let out = UNet3DConditionModel::forward(&adapter, &inp2, &t2, &ctx2).expect("forward");
    let cached = Cached {
        out,
        in_channels: 4,
    };
    let small_c = Conditioned {
        model: &cached,
        ..small
    };
    let priors_c = [Prior {
        input: Conditioned {
            model: &cached,
            channels: Some(edge.clone()),
            text: get("prior_text"),
            uncond: get("prior_uncond"),
            schedule: None,
        },
        strength: Strength::Constant(0.4),
    }];
    let mut g = c.benchmark_group("compose_overhead");
    g.bench_function("composed_eps_cached_models", |b| {
        b.iter(|| {
            let mut calls = 0;
            black_box(
                composed_eps(&small_c, &priors_c, &x, t, &settings, &schedule, &mut calls)
                    .expect("eps"),
            )
        })
    });
    g.bench_function("composed_eps_cached_models_plus_ddim_step", |b| {
        b.iter(|| {
            let mut calls = 0;
            let eps = composed_eps(&small_c, &priors_c, &x, t, &settings, &schedule, &mut calls)
                .expect("eps");
            black_box(scheduler.step(&eps, t, &x, None).expect("step").prev_sample)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_compose);
criterion_main!(benches);
