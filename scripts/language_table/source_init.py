"""The starting point of the source-conditioned restyle model (pipelines/train_lt_restyle_source.toml): a copy of a
model directory conditioned on [edges, first_frame, reference] with a fourth input, `source` (the source frames
themselves), whose conv_in weights are the first frame's, moved: the first-frame weights become zero. At step 0
the model then sees each frame where it used to see the clip's first frame, so it starts out rendering each frame's
own content (the moving arm and blocks) in the look it learned to read from the reference. Zero weights for the new
channel (as `model.init_from` gives) left it unused: after 1500 steps its weights were 0.006 against 0.14 for the
others, and the arm stayed a cloud (docs/results.md, "Restyle with the source video").

    python scripts/language_table/source_init.py models/language_table/restyle out/train/restyle_source_init

Development time (the interop venv: torch and safetensors).
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((src / "vadapt.json").read_text())
if meta["conditioning"] != ["edges", "first_frame", "reference"]:
    sys.exit(f"{src}: conditioning {meta['conditioning']}, expected edges, first_frame, reference")
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp)
weights = next((tmp / "unet").glob("*.safetensors"))
w = load_file(weights)
conv = w["conv_in.weight"]  # (out, 3 noisy + 1 edges + 3 first frame + 3 reference, kt?, kh, kw)
first = slice(4, 7)
source = conv[:, first].clone()
conv[:, first] = 0
w["conv_in.weight"] = torch.cat([conv, source], dim=1).contiguous()
save_file(w, weights)
cfg = json.loads((tmp / "unet" / "config.json").read_text())
cfg["in_channels"] = w["conv_in.weight"].shape[1]
(tmp / "unet" / "config.json").write_text(json.dumps(cfg, indent=2))
meta["conditioning"].append("source")
(tmp / "vadapt.json").write_text(json.dumps(meta, indent=2))
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
print(f"{dst}: conv_in {tuple(w['conv_in.weight'].shape)}, source weights from first_frame's")
