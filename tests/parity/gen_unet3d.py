#!/usr/bin/env python3
"""Reference fixtures tests/fixtures/unet3d/{tiny,modelscope_mini}/: random-weight diffusers UNet3DConditionModels
and one forward pass each, for src/models/unet_3d.rs.

    nice -n 19 .venv/bin/python tests/parity/gen_unet3d.py [--out tests/fixtures/unet3d]

Each model is built from its config, every parameter is re-initialised (fixture_common.randomize_parameters), it is
saved with save_pretrained(safe_serialization=True) and the forward pass runs on the model re-loaded with
from_pretrained. io.safetensors holds the inputs, diffusers' f32 output and the same pass in f64 (rounded to f32);
modelscope_mini also stores submodule outputs (forward hooks) in intermediates.safetensors for bisecting.
"""

import argparse
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import save_file

from fixture_common import FIXTURES, command, diff, randomize_parameters, setup_torch, sha256, versions, write_json

MODELS = {
    "tiny": {
        "seed": 1234,
        "input_seed": 4321,
        "config": {
            "in_channels": 4,
            "out_channels": 3,
            "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
            "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        "sample_shape": [2, 4, 8, 24, 40],
        "ehs_shape": [2, 7, 32],
        "timesteps": [10, 500],
        "intermediates": False,
    },
    # The ModelScope text-to-video block structure (3 cross-attention down blocks + a plain one, mirrored up,
    # 2 layers per block) at narrow widths (16, 16, 32, 32), so the whole fixture set stays small.
    "modelscope_mini": {
        "seed": 2024,
        "input_seed": 4202,
        "config": {
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [16, 16, 32, 32],
            "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
            "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
            "layers_per_block": 2,
            "norm_num_groups": 8,
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
        },
        "sample_shape": [1, 4, 8, 16, 16],
        "ehs_shape": [1, 5, 64],
        "timesteps": [250],
        "intermediates": True,
    },
}

# Submodules whose outputs are stored, as (key, module path); a tuple output stores its first element.
HOOKS = [("time_proj", "time_proj"), ("time_embedding", "time_embedding"), ("conv_in", "conv_in")]
HOOKS += [("transformer_in", "transformer_in")]
HOOKS += [(f"down_blocks.{i}", f"down_blocks.{i}") for i in range(4)] + [("mid_block", "mid_block")]
HOOKS += [(f"up_blocks.{i}", f"up_blocks.{i}") for i in range(4)]
HOOKS += [("conv_norm_out_act", "conv_act"), ("conv_out", "conv_out")]


def build(spec: dict, dir: Path) -> UNet3DConditionModel:
    model = UNet3DConditionModel(**spec["config"])
    randomize_parameters(model, spec["seed"])
    model.save_pretrained(dir, safe_serialization=True)
    return UNet3DConditionModel.from_pretrained(dir).eval()


def forward(model, sample, t, ehs):
    with torch.no_grad():
        return model(sample, t, encoder_hidden_states=ehs).sample


def intermediates(model, sample, t, ehs) -> dict:
    modules = dict(model.named_modules())
    out, handles = {}, []
    for key, path in HOOKS:
        def hook(_m, _inp, o, key=key):
            o = o[0] if isinstance(o, tuple) else o
            o = getattr(o, "sample", o)
            out[key] = o.detach().float().contiguous().clone()

        handles.append(modules[path].register_forward_hook(hook))
    try:
        forward(model, sample, t, ehs)
    finally:
        for h in handles:
            h.remove()
    return {k: out[k] for k, _ in HOOKS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES / "unet3d")
    ap.add_argument("--only", choices=sorted(MODELS), help="generate one model only")
    args = ap.parse_args()
    setup_torch()

    for name, spec in MODELS.items():
        if args.only and name != args.only:
            continue
        dir = args.out / name
        model = build(spec, dir)
        g = torch.Generator().manual_seed(spec["input_seed"])
        sample = torch.randn(spec["sample_shape"], generator=g)
        ehs = torch.randn(spec["ehs_shape"], generator=g)
        t = torch.tensor(spec["timesteps"], dtype=torch.int64)
        out = forward(model, sample, t, ehs)

        model64 = UNet3DConditionModel.from_pretrained(dir).eval().double()
        out64 = forward(model64, sample.double(), t, ehs.double())
        del model64
        torch.set_num_threads(1)
        out_1thread = forward(model, sample, t, ehs)
        torch.set_num_threads(2)
        per_sample = torch.cat(
            [forward(model, sample[i : i + 1], t[i : i + 1], ehs[i : i + 1]) for i in range(sample.shape[0])]
        )
        checks = {
            "rerun_same_process": diff(forward(model, sample, t, ehs), out),
            "timestep_as_float32": diff(forward(model, sample, t.float(), ehs), out),
            "threads_1_vs_2": diff(out_1thread, out),
            "float32_vs_float64": diff(out, out64),
            "batched_vs_per_sample": diff(per_sample, out),
        }
        io = {
            "sample": sample,
            "timestep": t.float(),
            "encoder_hidden_states": ehs,
            "output": out,
            "output_fp64_reference": out64.float(),
        }
        save_file(
            {k: v.contiguous() for k, v in io.items()},
            str(dir / "io.safetensors"),
            metadata={
                "layout": "(batch, channels, frames, height, width)",
                "timestep_dtype_used_in_diffusers_call": "int64",
            },
        )
        if spec["intermediates"]:
            save_file(
                intermediates(model, sample, t, ehs),
                str(dir / "intermediates.safetensors"),
                metadata={"layout": "module outputs; spatial tensors are (batch*frames, C, H, W), batch-major then frame"},
            )
        weights = dir / "diffusion_pytorch_model.safetensors"
        write_json(
            dir / "generation_report.json",
            {
                "name": name,
                "seed": spec["seed"],
                "input_seed": spec["input_seed"],
                "params": sum(p.numel() for p in model.parameters()),
                "weights_sha256": sha256(weights),
                "checks": checks,
                "versions": versions(),
                "command": command(),
                "config": spec["config"],
                "sample_shape": spec["sample_shape"],
                "ehs_shape": spec["ehs_shape"],
                "timesteps": spec["timesteps"],
                "files_sha256": {
                    p.name: sha256(p) for p in sorted(dir.iterdir()) if p.name != "generation_report.json" and p.is_file()
                },
            },
        )
        print(f"unet3d/{name}: f32 vs f64 max abs {checks['float32_vs_float64']['max_abs']:.3e}")


if __name__ == "__main__":
    main()
