#!/usr/bin/env python3
"""Reference fixture tests/fixtures/compose/: trajectories of the Video Adapter composed sampler (Probabilistic
Adaptation of Text-to-Video Models, arXiv 2306.01872, Algorithm 1 with classifier-free guidance) and of the CFG-mix
ablation, with two small random-weight diffusers UNet3DConditionModels and DDIM (eta = 0), for src/compose.rs.

    nice -n 19 .venv/bin/python tests/parity/gen_compose.py [--out tests/fixtures/compose] [--f64-check]

The rules (lam = 0.4, w = 3.0, compose_min_t = 100; eps_a = adapter, eps_p = prior; e = the edge video):
    composed: eps = eps_a(u) + w * ((eps_a(c) + lam * eps_p(c)) - eps_a(u))
    cfg_mix:  eps = (1 - lam) * (eps_a(u) + w * (eps_a(c) - eps_a(u))) + lam * (eps_p(u) + w * (eps_p(c) - eps_p(u)))
    t < compose_min_t: eps = eps_a(u) + w * (eps_a(c) - eps_a(u))   (both rules; the prior is not called)
Both models take cat([x_t, edge], dim=1). --f64-check re-runs both samplers in float64 (a few minutes on 2 cores)
and records the f32-vs-f64 spread in generation_report.json; without it those checks are left out.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler, UNet3DConditionModel
from safetensors.torch import save_file
from skimage import data as skdata

from fixture_common import FIXTURES, command, diff, randomize_parameters, setup_torch, sha256, versions, write_json

LAM, W, STEPS, COMPOSE_MIN_T = 0.4, 3.0, 10, 100
SEED_PRIOR, SEED_ADAPTER, SEED_INPUTS = 1111, 2222, 3333
FRAMES, H, WIDTH = 8, 24, 40

BASE = {
    "in_channels": 4,
    "out_channels": 3,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
PRIOR = {**BASE, "block_out_channels": [32, 64], "cross_attention_dim": 32}
ADAPTER = {**BASE, "block_out_channels": [16, 32], "cross_attention_dim": 16}


def build(config: dict, seed: int, dir: Path) -> UNet3DConditionModel:
    model = UNet3DConditionModel(**config)
    randomize_parameters(model, seed)
    model.save_pretrained(dir, safe_serialization=True)
    return UNet3DConditionModel.from_pretrained(dir).eval()


def edge_video() -> torch.Tensor:
    """8 crops of skimage's astronaut panning right by 8 px a frame, each area-resized to 40x24; the Sobel
    x-gradient (sobel/'s convention) of their gray, divided by its max |value| over the clip -> [-1, 1]."""
    img = skdata.astronaut()
    gxs = []
    for f in range(FRAMES):
        crop = np.ascontiguousarray(img[100:340, 40 + 8 * f : 440 + 8 * f])
        small = cv2.resize(crop, (WIDTH, H), interpolation=cv2.INTER_AREA)
        x = small.astype(np.float32) / np.float32(255.0)
        gray = (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)) + x[..., 2] * np.float32(0.114)
        gxs.append(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE))
    gx = np.stack(gxs)
    gx = gx / np.abs(gx).max()
    return torch.from_numpy(gx.astype(np.float32)).reshape(1, 1, FRAMES, H, WIDTH)


def scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )


def call(model, inp, t, ctx):
    with torch.no_grad():
        return model(inp, t, encoder_hidden_states=ctx).sample


def sample(rule, prior, adapter, inputs, batched_adapter=False):
    """The composed sampler; returns xs (steps+1, ...) and the first step's traces."""
    sched = scheduler()
    sched.set_timesteps(STEPS)
    x = inputs["x_T"]
    edge = inputs["edge"].to(x.dtype)
    xs, traces = [x], {}
    for i, t in enumerate(sched.timesteps):
        inp = torch.cat([x, edge], dim=1)
        if batched_adapter:
            both = call(adapter, torch.cat([inp, inp]), t, torch.cat([inputs["adapter_uncond"], inputs["adapter_text"]]))
            ea_u, ea_c = both[0:1], both[1:2]
        else:
            ea_u = call(adapter, inp, t, inputs["adapter_uncond"])
            ea_c = call(adapter, inp, t, inputs["adapter_text"])
        step = {"eps_adapter_uncond": ea_u, "eps_adapter_text": ea_c}
        if int(t) < COMPOSE_MIN_T:
            eps = ea_u + W * (ea_c - ea_u)
        elif rule == "composed":
            ep_c = call(prior, inp, t, inputs["prior_text"])
            eps = ea_u + W * ((ea_c + LAM * ep_c) - ea_u)
            step["eps_prior_text"] = ep_c
        else:
            ep_c = call(prior, inp, t, inputs["prior_text"])
            ep_u = call(prior, inp, t, inputs["prior_uncond"])
            eps = (1 - LAM) * (ea_u + W * (ea_c - ea_u)) + LAM * (ep_u + W * (ep_c - ep_u))
            step.update(eps_prior_text=ep_c, eps_prior_uncond=ep_u)
        step["eps"] = eps
        if i == 0:
            traces = {f"step0.{k}": v for k, v in step.items()}
        x = sched.step(eps, t, x, eta=0.0).prev_sample
        xs.append(x)
    return torch.stack(xs), traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES / "compose")
    ap.add_argument("--f64-check", action="store_true", help="also run both samplers in float64 (slow)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    setup_torch()

    prior = build(PRIOR, SEED_PRIOR, args.out / "prior")
    adapter = build(ADAPTER, SEED_ADAPTER, args.out / "adapter")
    (args.out / "scheduler_config.json").write_text(scheduler().to_json_string())

    g = torch.Generator().manual_seed(SEED_INPUTS)
    x_T = torch.randn((1, 3, FRAMES, H, WIDTH), generator=g)
    prior_text = torch.randn((1, 7, 32), generator=g)
    adapter_text = torch.randn((1, 7, 16), generator=g)
    sched = scheduler()
    sched.set_timesteps(STEPS)
    inputs = {
        "x_T": x_T,
        "edge": edge_video(),
        "prior_text": prior_text,
        "prior_uncond": torch.zeros_like(prior_text),
        "adapter_text": adapter_text,
        "adapter_uncond": torch.zeros_like(adapter_text),
        "timesteps": sched.timesteps.float(),
    }
    save_file(
        inputs,
        str(args.out / "inputs.safetensors"),
        metadata={"lam": str(LAM), "w": str(W), "layout": "(batch, channels, frames, height, width)"},
    )

    checks = {}
    for rule in ("composed", "cfg_mix"):
        xs, traces = sample(rule, prior, adapter, inputs)
        tensors = {"xs": xs, "x0": xs[-1].clone(), **traces}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / f"{rule}.safetensors"), metadata={"rule": rule})
        # rerun, threads_1_vs_2 and batched_adapter_forward_vs_reference compare every stored step (xs).
        c = {"rerun": diff(sample(rule, prior, adapter, inputs)[0], xs)}
        torch.set_num_threads(1)
        c["threads_1_vs_2"] = diff(sample(rule, prior, adapter, inputs)[0], xs)
        torch.set_num_threads(2)
        if args.f64_check:
            inputs64 = {k: v.double() for k, v in inputs.items()}
            xs64 = sample(rule, prior.double(), adapter.double(), inputs64)[0]
            prior.float(), adapter.float()
            c["float32_vs_float64_x0"] = diff(xs[-1], xs64[-1])
            c["float32_vs_float64_all_xs_max_abs"] = (xs.double() - xs64).abs().max().item()
        if rule == "composed":
            c["batched_adapter_forward_vs_reference"] = diff(sample(rule, prior, adapter, inputs, True)[0], xs)
        c["per_step_absmax"] = [x.abs().max().item() for x in xs]
        checks[rule] = c
        print(f"compose/{rule}: max |x0| {xs[-1].abs().max().item():.3f}")

    ac = sched.alphas_cumprod
    schedule = []
    for t in sched.timesteps.tolist():
        t_prev = t - 1000 // STEPS
        schedule.append(
            {
                "t": t,
                "t_prev": t_prev,
                "alpha_bar_t": ac[t].item(),
                "alpha_bar_prev": ac[t_prev].item() if t_prev >= 0 else 1.0,
            }
        )
    files = ["inputs.safetensors", "composed.safetensors", "cfg_mix.safetensors", "scheduler_config.json"]
    files += ["prior/config.json", "adapter/config.json"]
    write_json(
        args.out / "generation_report.json",
        {
            "command": command(),
            "params_cli": {
                "lam": LAM,
                "w": W,
                "steps": STEPS,
                "compose_min_t": COMPOSE_MIN_T,
                "seed_prior": SEED_PRIOR,
                "seed_adapter": SEED_ADAPTER,
                "seed_inputs": SEED_INPUTS,
            },
            "versions": versions(),
            "params": {"prior": sum(p.numel() for p in prior.parameters()), "adapter": sum(p.numel() for p in adapter.parameters())},
            "sha256": {m: sha256(args.out / m / "diffusion_pytorch_model.safetensors") for m in ("prior", "adapter")},
            "timesteps": sched.timesteps.tolist(),
            "checks": checks,
            "schedule": schedule,
            "files_sha256": {f: sha256(args.out / f) for f in files},
        },
    )
    print(f"compose: wrote {args.out}")


if __name__ == "__main__":
    main()
