"""Random-weight model directories for the composed benchmark at the issue's larger sizes (docs/performance.md):
a 5.1 M-parameter edge-conditioned adapter and a 28.3 M-parameter prior that takes the edge too, both
diffusers `UNet3DConditionModel`s with seeded default initialisation, DDIM (epsilon) schedulers and `vadapt.json`
(edges, 16 frames at 24x40), no text encoder (`vadapt bench` then feeds both sides the same random 77-row context).

usage: random_model_dirs.py OUT_DIR        -> OUT_DIR/adapter_5m, OUT_DIR/prior_28m
then:  vadapt bench --small OUT_DIR/adapter_5m --prior OUT_DIR/prior_28m --frames 16 --size 24x40 --steps 6 \\
           --lam 0.2 --guidance 2.5 --threads 2 --peer
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet3DConditionModel

COMMON = dict(
    in_channels=4, out_channels=3, cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    sample_size=40,
)
MODELS = {
    "adapter_5m": dict(block_out_channels=(32, 64, 128), layers_per_block=1, seed=1),
    "prior_28m": dict(block_out_channels=(64, 128, 256), layers_per_block=2, seed=2),
}


def main(out: Path) -> None:
    for name, spec in MODELS.items():
        spec = dict(spec)
        torch.manual_seed(spec.pop("seed"))
        unet = UNet3DConditionModel(**COMMON, **spec)
        d = out / name
        unet.save_pretrained(d / "unet", safe_serialization=True)
        DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1).save_pretrained(d / "scheduler")
        (d / "vadapt.json").write_text(json.dumps(
            {"conditioning": ["edges"], "frames": 16, "height": 24, "width": 40, "fps": 10.0}, indent=2))
        n = sum(p.numel() for p in unet.parameters())
        print(f"{d}: {n / 1e6:.1f} M parameters")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
