//! DDPM / DDIM / DPM-Solver++(2M) against the diffusers trajectories in tests/fixtures/schedulers.
//! The "model" is the README's analytic function `eps(x, t) = tanh(x) * (t / 1000) + 0.1 * x`.

use candle_core::{Device, Tensor};
use vadapt::schedulers::{
    ddpm::DdpmScheduler, to_epsilon, to_sample, to_velocity, BetaSchedule, NoiseSchedule,
    PredictionType, Scheduler, SchedulerConfig,
};

use crate::common::{fixture, load_f32};

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

fn analytic_model(x: &Tensor, t: usize) -> Tensor {
    // In PyTorch `t / 1000` is a Python float (f64) rounded to f32 when it multiplies the f32 tensor.
    let scale = (t as f64 / 1000.0) as f32 as f64;
    ((x.tanh().unwrap() * scale).unwrap() + (x * 0.1).unwrap()).unwrap()
}

fn slice(all: &[f32], i: usize, n: usize) -> &[f32] {
    &all[i * n..(i + 1) * n]
}

/// |ours - want| <= tol * max(1, |want|) elementwise; returns the worst ratio.
fn check_rel(ours: &[f32], want: &[f32], tol: f32, what: &str) -> f32 {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (k, (a, b)) in ours.iter().zip(want).enumerate() {
        let r = (a - b).abs() / b.abs().max(1.0);
        assert!(
            r <= tol,
            "{what}: element {k}: ours {a} vs diffusers {b} (rel {r:e} > {tol:e})"
        );
        worst = worst.max(r);
    }
    worst
}

fn run_trajectory(stem: &str) {
    run_trajectory_in(&fixture("schedulers"), stem);
}

/// The trajectory `<dir>/<stem>.*` (the committed fixtures, or another reference set: tests/it/shared_fixtures.rs).
pub(crate) fn run_trajectory_in(dir: &std::path::Path, stem: &str) {
    let tol = if stem == "dpmpp2m_squaredcos_cap_v2_epsilon" {
        1e-3
    } else {
        1e-5
    };
    let cfg = SchedulerConfig::from_file(&dir.join(format!("{stem}.config.json"))).unwrap();
    let data = load_f32(&dir.join(format!("{stem}.safetensors")));
    let (shape, x_t) = &data["x_T"];
    let numel: usize = shape.iter().product();
    let want_ts: Vec<usize> = data["timesteps"].1.iter().map(|&t| t as usize).collect();
    let mut sched = cfg.build().unwrap();
    sched.set_timesteps(want_ts.len()).unwrap();
    assert_eq!(sched.timesteps(), &want_ts[..], "{stem}: timesteps");
    let xs = &data["xs"].1;
    let x0s = &data["pred_original_samples"].1;
    let mut x = tensor(shape, x_t);
    let mut worst = 0.0f32;
    for (i, &t) in want_ts.iter().enumerate() {
        let eps = analytic_model(&x, t);
        let noise = data
            .get("noise")
            .map(|(_, n)| tensor(shape, slice(n, i, numel)));
        let out = sched.step(&eps, t, &x, noise.as_ref()).unwrap();
        let ours = out
            .prev_sample
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        worst = worst.max(check_rel(
            &ours,
            slice(xs, i + 1, numel),
            tol,
            &format!("{stem} step {i} (t={t}) prev_sample"),
        ));
        let ours_x0 = out
            .pred_original_sample
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        check_rel(
            &ours_x0,
            slice(x0s, i, numel),
            tol,
            &format!("{stem} step {i} pred_original_sample"),
        );
        // Continue from diffusers' own trajectory so an error does not compound across steps... but only after
        // checking ours: the next step also starts from our value, which is within tolerance.
        x = out.prev_sample;
    }
    eprintln!(
        "{stem}: {} steps, worst rel err {worst:.3e} (tol {tol:e})",
        want_ts.len()
    );
}

macro_rules! trajectory_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run_trajectory(stringify!($name)); } )*
    };
}

trajectory_tests!(
    ddpm_linear_epsilon,
    ddpm_linear_v_prediction,
    ddpm_squaredcos_cap_v2_epsilon,
    ddpm_squaredcos_cap_v2_v_prediction,
    ddpm_squaredcos_cap_v2_epsilon_clip,
    ddim_linear_epsilon,
    ddim_linear_v_prediction,
    ddim_squaredcos_cap_v2_epsilon,
    ddim_squaredcos_cap_v2_v_prediction,
    ddim_squaredcos_cap_v2_epsilon_clip,
    dpmpp2m_linear_epsilon,
    dpmpp2m_linear_v_prediction,
    dpmpp2m_squaredcos_cap_v2_epsilon,
    dpmpp2m_squaredcos_cap_v2_v_prediction,
);

#[test]
fn ddpm_variance_and_noise_use_match_diffusers() {
    for stem in ["ddpm_linear_epsilon", "ddpm_squaredcos_cap_v2_v_prediction"] {
        let cfg = SchedulerConfig::from_file(&fixture(&format!("schedulers/{stem}.config.json")))
            .unwrap();
        let data = load_f32(&fixture(&format!("schedulers/{stem}.safetensors")));
        let mut s = DdpmScheduler::new(cfg);
        s.set_timesteps(20).unwrap();
        let ts = s.timesteps().to_vec();
        for (i, &t) in ts.iter().enumerate() {
            let want = data["variance"].1[i];
            let got = s.variance(t);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{stem} variance at t={t}: {got} vs {want}"
            );
            assert_eq!(
                s.needs_noise(t),
                data["noise_used"].1[i] != 0.0,
                "{stem} noise use at t={t}"
            );
        }
    }
}

#[test]
fn dpmpp_sigmas_match_diffusers() {
    for stem in [
        "dpmpp2m_linear_epsilon",
        "dpmpp2m_squaredcos_cap_v2_v_prediction",
    ] {
        let cfg = SchedulerConfig::from_file(&fixture(&format!("schedulers/{stem}.config.json")))
            .unwrap();
        let data = load_f32(&fixture(&format!("schedulers/{stem}.safetensors")));
        let mut s = vadapt::schedulers::dpmpp_2m::DpmSolverMultistepScheduler::new(cfg);
        s.set_timesteps(20).unwrap();
        for (k, (a, b)) in s.sigmas().iter().zip(&data["sigmas"].1).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{stem} sigma {k}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn beta_tables_match_diffusers() {
    let data = load_f32(&fixture("schedulers/schedules.safetensors"));
    for (name, s) in [
        (
            "linear",
            NoiseSchedule::new(BetaSchedule::Linear, 1000, 0.00085, 0.012),
        ),
        (
            "squaredcos_cap_v2",
            NoiseSchedule::new(BetaSchedule::SquaredcosCapV2, 1000, 0.0001, 0.02),
        ),
    ] {
        let betas = &data[&format!("{name}.betas")].1;
        let abar = &data[&format!("{name}.alphas_cumprod")].1;
        let db = betas
            .iter()
            .zip(&s.betas)
            .map(|(a, b)| (a - b).abs() / a.abs())
            .fold(0.0f32, f32::max);
        let da = abar
            .iter()
            .zip(&s.alphas_cumprod)
            .map(|(a, b)| (a - b).abs() / a.abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max rel diff betas {db:.2e}, alphas_cumprod {da:.2e}");
        assert!(db <= 1e-6, "{name} betas rel diff {db}");
        assert!(da <= 1e-6, "{name} alphas_cumprod rel diff {da}");
    }
}

#[test]
fn add_noise_and_velocity_exact() {
    let data = load_f32(&fixture("schedulers/add_noise.safetensors"));
    let (shape, x0) = &data["x0"];
    let x0 = tensor(shape, x0);
    let noise = tensor(shape, &data["noise"].1);
    let ts: Vec<usize> = data["timesteps"].1.iter().map(|&t| t as usize).collect();
    for (name, s) in [
        (
            "linear",
            NoiseSchedule::new(BetaSchedule::Linear, 1000, 0.00085, 0.012),
        ),
        (
            "squaredcos_cap_v2",
            NoiseSchedule::new(BetaSchedule::SquaredcosCapV2, 1000, 0.0001, 0.02),
        ),
    ] {
        let noisy = s
            .add_noise(&x0, &noise, &ts)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let vel = s
            .get_velocity(&x0, &noise, &ts)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dn = crate::common::max_abs_diff(&noisy, &data[&format!("{name}.add_noise")].1);
        let dv = crate::common::max_abs_diff(&vel, &data[&format!("{name}.get_velocity")].1);
        assert!(
            dn <= 1e-6 && dv <= 1e-6,
            "{name}: add_noise {dn:e}, get_velocity {dv:e}"
        );
    }
}

#[test]
fn parameterization_conversions_round_trip() {
    let s = NoiseSchedule::new(BetaSchedule::SquaredcosCapV2, 1000, 0.0, 0.0);
    let x0 = Tensor::randn(0f32, 1.0, (2, 3, 4), &Device::Cpu).unwrap();
    let eps = Tensor::randn(0f32, 1.0, (2, 3, 4), &Device::Cpu).unwrap();
    for t in [10usize, 500, 900] {
        let a = s.alpha_bar(t);
        let xt = s.add_noise(&x0, &eps, &[t, t]).unwrap();
        let v = s.get_velocity(&x0, &eps, &[t, t]).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        for (out, kind) in [
            (&eps, PredictionType::Epsilon),
            (&v, PredictionType::VPrediction),
            (&x0, PredictionType::Sample),
        ] {
            let tol = if kind == PredictionType::Sample && t == 900 {
                1e-4
            } else {
                2e-5
            };
            assert!(
                diff(&to_epsilon(out, kind, &xt, a).unwrap(), &eps) < tol,
                "{kind:?} -> eps at t={t}"
            );
            assert!(
                diff(&to_sample(out, kind, &xt, a).unwrap(), &x0) < tol * 10.0,
                "{kind:?} -> x0 at t={t}"
            );
            assert!(
                diff(&to_velocity(out, kind, &xt, a).unwrap(), &v) < tol * 10.0,
                "{kind:?} -> v at t={t}"
            );
        }
    }
}

#[test]
fn unsupported_config_values_are_named() {
    let p = std::path::Path::new("scheduler_config.json");
    let e = SchedulerConfig::from_json(
        r#"{"_class_name": "DDPMScheduler", "variance_type": "learned"}"#,
        p,
    )
    .unwrap_err();
    assert!(e.to_string().contains("variance_type"), "{e}");
    let e =
        SchedulerConfig::from_json(r#"{"_class_name": "EulerDiscreteScheduler"}"#, p).unwrap_err();
    assert!(e.to_string().contains("_class_name"), "{e}");
    let e = SchedulerConfig::from_json(r#"{"beta_schedule": "sigmoid"}"#, p).unwrap_err();
    assert!(e.to_string().contains("scheduler_config.json"), "{e}");
}
