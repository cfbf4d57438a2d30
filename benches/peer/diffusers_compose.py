"""The diffusers peer of `vadapt bench --peer`: the same composed sampling run in PyTorch.

Same weights (the small model's and the prior's `unet/` directories, loaded with diffusers'
UNet3DConditionModel.from_pretrained), same inputs (written by vadapt: x_T, edge video, text and unconditional
embeddings), same DDIM scheduler config, same rule and thread count. Prints a JSON report on stdout and writes the
final sample to --output so that vadapt can compare it with its own.

The rule is vadapt's `compose::Rule::Composed` (Video Adapter, arXiv 2306.01872, Alg. 1 with guidance around the
small model), with model outputs converted to epsilon before they are summed (the demo models predict x0):
    eps_text = eps_s(x_t, t | c, e) + lam * eps_p(x_t, t | c)
    eps      = eps_s(x_t, t | 0, e) + w * (eps_text - eps_s(x_t, t | 0, e))      for t >= 100
    eps      = eps_s(x_t, t | 0, e) + w * (eps_s(x_t, t | c, e) - eps_s(x_t, t | 0, e))  for t < 100
The small model's cond and uncond passes are one batch-2 forward (uncond first), as in vadapt.

Its packages come with the project's venv (scripts/setup.sh): tests/parity/requirements.txt pins torch 2.10.0 and
diffusers 0.35.2.
"""

import argparse
import json
import time

import torch
from diffusers import DDIMScheduler, UNet3DConditionModel
from safetensors.torch import load_file, save_file


def to_eps(out, kind, x, a):
    if kind == "epsilon":
        return out
    if kind == "sample":
        return (x - out * a.sqrt()) / (1 - a).sqrt()
    if kind == "v_prediction":
        return out * a.sqrt() + x * (1 - a).sqrt()
    raise ValueError(kind)


def from_eps(eps, kind, x, a):
    x0 = (x - eps * (1 - a).sqrt()) / a.sqrt()
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    return eps * a.sqrt() - x0 * (1 - a).sqrt()


def prediction_type(model_dir):
    with open(f"{model_dir}/config.json") as f:
        return json.load(f).get("prediction_type", "epsilon")


def main():
    ap = argparse.ArgumentParser()
    for k in ["small", "prior", "scheduler-config", "inputs", "output"]:
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lam", type=float, default=0.4)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--compose-min-t", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"])
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    # The precision vadapt's GEMMs ran in (`vadapt --matmul-precision`), granted to torch too: "medium" lets
    # oneDNN compute f32 matmuls in bf16 (AMX where present); convolutions have their own switch.
    torch.set_float32_matmul_precision(a.matmul_precision)
    if a.matmul_precision == "medium" and hasattr(torch.backends.mkldnn, "conv"):
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
    small = UNet3DConditionModel.from_pretrained(a.small).eval()
    prior = UNet3DConditionModel.from_pretrained(a.prior).eval()
    kinds = {"small": prediction_type(a.small), "prior": prediction_type(a.prior)}
    with open(a.scheduler_config) as f:
        sched_cfg = json.load(f)
    scheduler = DDIMScheduler.from_config(sched_cfg)
    inp = load_file(a.inputs)
    x_T, edge = inp["x_T"], inp["edge"]
    ctx_small = torch.cat([inp["small_uncond"], inp["small_text"]])
    prior_text = inp["prior_text"]
    lam, w = a.lam, a.guidance

    def run():
        scheduler.set_timesteps(a.steps)
        x = x_T.clone()
        for t in scheduler.timesteps:
            ti = int(t)
            al = scheduler.alphas_cumprod[ti]
            small_in = torch.cat([x, edge], dim=1)
            out = small(torch.cat([small_in, small_in]), t, encoder_hidden_states=ctx_small).sample
            eps2 = to_eps(out, kinds["small"], torch.cat([x, x]), al)
            eu, ec = eps2[:1], eps2[1:]
            if ti >= a.compose_min_t:
                prior_in = torch.cat([x, edge], dim=1) if prior.config.in_channels == 4 else x
                ep = to_eps(prior(prior_in, t, encoder_hidden_states=prior_text).sample, kinds["prior"], x, al)
                text = ec + ep * lam
                eps = eu + (text - eu) * w
            else:
                eps = eu + (ec - eu) * w
            model_output = from_eps(eps, scheduler.config.prediction_type, x, al)
            x = scheduler.step(model_output, t, x, eta=0.0).prev_sample
        return x

    with torch.inference_mode():
        # Warm-up (one-off allocations, oneDNN primitive caches), as vadapt's side does.
        x0 = run()
        best = float("inf")
        for _ in range(max(a.reps, 1)):
            t0 = time.perf_counter()
            x0 = run()
            best = min(best, time.perf_counter() - t0)
    save_file({"x0": x0.contiguous()}, a.output)
    import diffusers

    print(json.dumps({
        "seconds": best,
        "seconds_per_step": best / a.steps,
        "threads": torch.get_num_threads(),
        "matmul_precision": a.matmul_precision,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "prediction_types": kinds,
    }))


if __name__ == "__main__":
    main()
