"""Helpers shared by the reference-fixture generators in tests/parity/ (gen_sobel.py, gen_schedulers.py,
gen_unet3d.py, gen_compose.py): library versions, the weight re-initialisation of the random UNets, diff statistics
and the report/README writers. Each generator is run from the repository root with the pinned venv:

    nice -n 19 .venv/bin/python tests/parity/gen_<family>.py [--out tests/fixtures/<family>]
"""

import hashlib
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
THREADS = 2  # the reference runs pin torch to 2 threads so reruns on other machines reduce in the same order


def versions() -> dict:
    """Versions of everything that can change a stored number."""
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
    }
    for name, module in [
        ("diffusers", "diffusers"),
        ("transformers", "transformers"),
        ("safetensors", "safetensors"),
        ("opencv", "cv2"),
        ("scikit-image", "skimage"),
    ]:
        try:
            out[name] = __import__(module).__version__
        except ImportError:
            pass
    return out


def command() -> str:
    """How this file was run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def randomize_parameters(model: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter so that no path of the model is zero or the identity, with one generator
    visiting `named_parameters()` in order: GroupNorm/LayerNorm weight = 1 + N(0, 0.05^2), their bias =
    N(0, 0.05^2); every other weight with ndim >= 2 = N(0, s^2), s = clip(1/sqrt(fan_in), 0.02, 0.1),
    fan_in = prod(shape[1:]); every other 1-d parameter = N(0, 0.05^2)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                value = (1.0 + 0.05 * noise) if name.endswith("weight") else 0.05 * noise
            elif p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                s = min(max(1.0 / math.sqrt(fan_in), 0.02), 0.1)
                value = s * noise
            else:
                value = 0.05 * noise
            p.copy_(value)


def diff(a, b) -> dict:
    """max/mean abs difference, max relative difference (÷ max(1e-6, |b|)), and the reference's size."""
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    d = (a - b).abs()
    return {
        "max_abs": d.max().item(),
        "mean_abs": d.mean().item(),
        "max_rel": (d / b.abs().clamp_min(1e-6)).max().item(),
        "ref_max_abs": b.abs().max().item(),
        "ref_std": b.std().item(),
    }


def key_table(tensors: dict, label: str | None = None) -> str:
    """A markdown table of key / shape / dtype / min / max, for the READMEs."""
    head = "| file | key | shape | dtype | min | max |" if label else "| key | shape | dtype (file) | min | max |"
    rows = [head, "| --- " * (head.count("|") - 1) + "|"]
    for k, v in tensors.items():
        t = torch.as_tensor(v)
        dtype = {torch.float32: "F32", torch.uint8: "U8", torch.float16: "F16"}.get(t.dtype, str(t.dtype))
        lo, hi = t.double().min().item(), t.double().max().item()
        cells = [f"`{k}`", str(tuple(t.shape)), dtype, f"{lo:.4g}", f"{hi:.4g}"]
        rows.append("| " + " | ".join(([label] if label else []) + cells) + " |")
    return "\n".join(rows)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def setup_torch() -> None:
    torch.set_num_threads(THREADS)
