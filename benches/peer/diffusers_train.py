"""The diffusers peer of `vadapt bench --train`: the same training steps in PyTorch.

vadapt writes the UNet's initial weights (a diffusers `unet/` directory, loaded here with
UNet3DConditionModel.from_pretrained), the seeded batches of every step (the noisy input with its conditioning
channels, the timesteps, the text embeddings and the regression target) and the recipe's optimiser settings. Each
step here does the work of one step of vadapt's trainer (src/train/step.rs):

    forward   out = unet(input, t, encoder_hidden_states=text).sample;  loss = mse(out, target)
    backward  loss.backward()
    update    clip_grad_norm_(grad_clip); torch.optim.AdamW at the trainer's learning rate of that step (linear warmup,
              cosine decay to min_lr_ratio over the recipe's steps); zero_grad; the EMA of the weights
              (diffusers' EMAModel.step arithmetic, vadapt's decay min(decay, (1 + t) / (10 + t)))

The batch synthesis (clip cut, noise, offset noise, timestep draw, dropout) happens before the timed steps on
both sides: vadapt draws it once and both sides read the same tensors. Prints a JSON report on stdout: per-step
losses, gradient norms, learning rates and seconds (total and forward / backward / update).

Its packages come with the project's venv (scripts/setup.sh): tests/parity/requirements.txt pins torch 2.10.0 and
diffusers 0.35.2.
"""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from safetensors.torch import load_file


def learning_rate(step, total, lr, warmup, min_ratio):
    """vadapt's optim::learning_rate: linear warmup from 0, then cosine decay to lr * min_ratio at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (min_ratio + (1.0 - min_ratio) * cosine)


def peak_rss_mib():
    """This process's peak RSS: VmHWM of its own address space. (getrusage's ru_maxrss would not do: Linux carries
    it over fork and exec, so it reports the parent's peak when that was larger.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    for k in ["unet", "batches", "settings"]:
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    with open(a.settings) as f:
        st = json.load(f)
    model = UNet3DConditionModel.from_pretrained(a.unet)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=st["lr"],
        betas=(st["beta1"], st["beta2"]),
        eps=st["eps"],
        weight_decay=st["weight_decay"],
    )
    ema = [p.detach().clone() for p in params] if st["ema_decay"] > 0 else None
    batches = load_file(a.batches)
    max_norm = st["grad_clip"] if st["grad_clip"] > 0 else float("inf")
    out = {"losses": [], "grad_norms": [], "lrs": [], "seconds": [], "forward": [], "backward": [], "update": []}
    for s in range(st["steps"]):
        x = batches[f"{s}.input"]
        t = batches[f"{s}.timesteps"]
        text = batches[f"{s}.text"]
        target = batches[f"{s}.target"]
        t0 = time.perf_counter()
        pred = model(x, t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred, target, reduction="mean")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = learning_rate(s, st["total_steps"], st["lr"], st["warmup_steps"], st["min_lr_ratio"])
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            step = s + 1
            one_minus = 1.0 - min(st["ema_decay"], (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.sub_(one_minus * (e - p))
        t3 = time.perf_counter()
        out["losses"].append(loss.item())
        out["grad_norms"].append(float(norm))
        out["lrs"].append(lr)
        out["seconds"].append(t3 - t0)
        out["forward"].append(t1 - t0)
        out["backward"].append(t2 - t1)
        out["update"].append(t3 - t2)
    import diffusers

    out.update({
        "parameters": sum(p.numel() for p in params),
        "parameter_tensors": len(params),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peak_rss_mib": peak_rss_mib(),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
