#!/usr/bin/env python3
"""Reference fixture tests/fixtures/schedulers/: trajectories of diffusers' DDPM, DDIM and DPM-Solver++(2M)
driven by a deterministic analytic "model", for src/schedulers/.

    nice -n 19 .venv/bin/python tests/parity/gen_schedulers.py [--out tests/fixtures/schedulers]

The model: eps(x, t) = tanh(x) * (t / 1000) + 0.1 * x, with t the integer timestep (for v_prediction runs the same
function is read as v). Every trajectory starts from the same x_T (seed 7); DDPM's ancestral noise is drawn up front
(seed 99) and handed to diffusers step by step. See tests/fixtures/schedulers/README.md for every setting.
"""

import argparse
from pathlib import Path

import diffusers.schedulers.scheduling_ddpm as ddpm_module
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import save_file

from fixture_common import FIXTURES, command, setup_torch, sha256, versions, write_json

SHAPE = (1, 3, 4, 8, 8)
SEED_X = 7
SEED_NOISE = 99
SEED_ADD_NOISE = 123
MODEL = "eps(x,t) = tanh(x)*(t/1000) + 0.1*x"
SCHEDULES = ["linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction"]


def model(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.tanh(x) * (t / 1000) + 0.1 * x


def betas_kwargs(schedule: str) -> dict:
    # The SD-style linear range (a plain linspace, not scaled_linear); squaredcos_cap_v2 ignores beta_start/end.
    return {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "linear" else {}


def make(kind: str, schedule: str, prediction: str, clip: bool):
    common = dict(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction, **betas_kwargs(schedule))
    if kind == "ddpm":
        return DDPMScheduler(**common, variance_type="fixed_small", clip_sample=clip), 20
    if kind == "ddim":
        return (
            DDIMScheduler(
                **common, clip_sample=clip, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
            ),
            50,
        )
    return (
        DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            timestep_spacing="linspace",
            final_sigmas_type="zero",
            lower_order_final=True,
        ),
        20,
    )


def run(kind, sched, steps, x_T, noise=None, generator=None):
    """One trajectory: xs (n+1, ...), the x0 prediction of each step, and for DDPM the variance and noise use."""
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    xs, x0s, variance, used = [x], [], [], []
    original = ddpm_module.randn_tensor
    try:
        for i, t in enumerate(sched.timesteps):
            ti = int(t)
            inp = sched.scale_model_input(x, t)
            out_model = model(inp, ti)
            if kind == "ddpm":
                # The variance the step applies: diffusers adds no noise at t = 0, so 0 there (not the 1e-20 clamp).
                variance.append(float(sched._get_variance(t)) if ti > 0 else 0.0)
                used.append(1.0 if ti > 0 else 0.0)
                if noise is not None:
                    ddpm_module.randn_tensor = lambda *a, _n=noise[i], **k: _n.to(k.get("dtype") or _n.dtype)
                out = sched.step(out_model, t, x, generator=generator)
            elif kind == "ddim":
                out = sched.step(out_model, t, x, eta=0.0)
            else:
                out = sched.step(out_model, t, x)
            x = out.prev_sample
            xs.append(x)
            x0s.append(sched.model_outputs[-1] if kind == "dpmpp2m" else out.pred_original_sample)
    finally:
        ddpm_module.randn_tensor = original
    return torch.stack(xs), torch.stack(x0s), variance, used


def max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES / "schedulers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    setup_torch()

    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(SEED_X))
    gen = torch.Generator().manual_seed(SEED_NOISE)
    noise = torch.stack([torch.randn(SHAPE, generator=gen) for _ in range(20)])

    runs = [(k, s, p, False) for k in ("ddpm", "ddim", "dpmpp2m") for s in SCHEDULES for p in PREDICTIONS]
    runs += [(k, "squaredcos_cap_v2", "epsilon", True) for k in ("ddpm", "ddim")]
    report = {"command": command(), "versions": versions(), "trajectories": {}}
    for kind, schedule, prediction, clip in runs:
        stem = f"{kind}_{schedule}_{prediction}" + ("_clip" if clip else "")
        sched, steps = make(kind, schedule, prediction, clip)
        (args.out / f"{stem}.config.json").write_text(sched.to_json_string())
        xs, x0s, variance, used = run(kind, sched, steps, x_T, noise if kind == "ddpm" else None)
        timesteps = sched.timesteps.clone()
        tensors = {
            "timesteps": timesteps.float(),
            "x_T": x_T.clone(),
            "xs": xs.float(),
            "x_final": xs[-1].float().clone(),
            "pred_original_samples": x0s.float(),
        }
        if kind == "ddpm":
            tensors.update(
                noise=noise, noise_used=torch.tensor(used, dtype=torch.float32), variance=torch.tensor(variance)
            )
        if kind == "dpmpp2m":
            tensors["sigmas"] = sched.sigmas.float()
        save_file(
            {k: v.contiguous().clone() for k, v in tensors.items()},
            str(args.out / f"{stem}.safetensors"),
            metadata={"model": MODEL, "scheduler": type(sched).__name__, "steps": str(steps)},
        )

        checks = {"rerun_max_abs": max_abs(run(kind, make(kind, schedule, prediction, clip)[0], steps, x_T, noise)[0], xs)}
        if kind == "ddpm":
            via_gen = run(
                kind, make(kind, schedule, prediction, clip)[0], steps, x_T, generator=torch.Generator().manual_seed(SEED_NOISE)
            )[0]
            checks["stored_noise_vs_generator_path_max_abs"] = max_abs(via_gen, xs)
        xs64 = run(kind, make(kind, schedule, prediction, clip)[0], steps, x_T.double(), noise.double())[0]
        d = (xs.double() - xs64.double()).abs()
        checks["f32_vs_f64_xs_max_abs"] = d.max().item()
        checks["f32_vs_f64_xs_max_rel"] = (d / xs64.double().abs().clamp_min(1.0)).max().item()
        report["trajectories"][stem] = {
            "steps": steps,
            "timesteps": [int(t) for t in timesteps],
            "checks": checks,
            "x_final_absmax": xs[-1].abs().max().item(),
        }
        print(f"{stem}: f32 vs f64 max abs {checks['f32_vs_f64_xs_max_abs']:.2e}")

    schedules, add_noise = {}, {}
    gen = torch.Generator().manual_seed(SEED_ADD_NOISE)
    x0 = torch.randn((4, *SHAPE[1:]), generator=gen)
    eps = torch.randn((4, *SHAPE[1:]), generator=gen)
    ts = torch.tensor([0, 10, 500, 999], dtype=torch.int64)
    add_noise.update(x0=x0, noise=eps, timesteps=ts.float())
    for schedule in SCHEDULES:
        s = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, **betas_kwargs(schedule))
        schedules[f"{schedule}.betas"] = s.betas.float()
        schedules[f"{schedule}.alphas_cumprod"] = s.alphas_cumprod.float()
        add_noise[f"{schedule}.add_noise"] = s.add_noise(x0, eps, ts)
        add_noise[f"{schedule}.get_velocity"] = s.get_velocity(x0, eps, ts)
    save_file(schedules, str(args.out / "schedules.safetensors"))
    save_file({k: v.contiguous() for k, v in add_noise.items()}, str(args.out / "add_noise.safetensors"))
    report["files_sha256"] = {
        p.name: sha256(p) for p in sorted(args.out.iterdir()) if p.suffix in (".safetensors", ".json") and p.name != "generation_report.json"
    }
    write_json(args.out / "generation_report.json", report)
    print(f"schedulers: wrote {args.out}")


if __name__ == "__main__":
    main()
