"""Load a LeRobot dataset with lerobot's own LeRobotDataset (local root, frames decoded by its video backend) and
dump every value, so a Rust test can compare them with what vadapt wrote.

usage: dump_lerobot.py DATASET_ROOT OUT.safetensors

Writes, per episode i and feature key k (non-video): `ep{i}.{k}` (T, ...) in the feature's dtype (bool -> uint8);
per video key v: `ep{i}.{v}` uint8 (T, H, W, 3); `ep{i}.task` as uint8 UTF-8 bytes, and a string feature's rows
joined by newlines, as uint8 UTF-8 bytes.
Prints a JSON summary (episodes, frames, fps, keys) on stdout.
"""

import json
import sys
from collections import defaultdict

import numpy as np
from safetensors.numpy import save_file

from lerobot.datasets.lerobot_dataset import LeRobotDataset


def main() -> None:
    root, out = sys.argv[1], sys.argv[2]
    ds = LeRobotDataset("vadapt/check", root=root)
    per_ep = defaultdict(lambda: defaultdict(list))
    tasks = {}
    for i in range(len(ds)):
        item = ds[i]
        ep = int(item["episode_index"])
        tasks[ep] = item["task"]
        for key, value in item.items():
            if key == "task":
                continue
            if isinstance(value, str):
                # A string column (vadapt's augmentation.target / .prompt): kept as text, saved as UTF-8 below.
                per_ep[ep][key].append(value)
                continue
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            if key in ds.meta.video_keys or key in ds.meta.image_keys:
                # lerobot returns float (C, H, W) in [0, 1]; back to uint8 HWC exactly as its decoder produced it.
                arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            per_ep[ep][key].append(arr)
    tensors = {}
    for ep, cols in per_ep.items():
        for key, rows in cols.items():
            if isinstance(rows[0], str):
                tensors[f"ep{ep}.{key}"] = np.frombuffer("\n".join(rows).encode(), np.uint8).copy()
                continue
            arr = np.stack(rows)
            if arr.dtype == bool:
                arr = arr.astype(np.uint8)
            tensors[f"ep{ep}.{key}"] = np.ascontiguousarray(arr)
        tensors[f"ep{ep}.task"] = np.frombuffer(tasks[ep].encode(), np.uint8).copy()
    save_file(tensors, out)
    print(json.dumps({"episodes": len(per_ep), "frames": len(ds), "fps": ds.fps,
                      "video_keys": list(ds.meta.video_keys), "features": list(ds.features)}))


if __name__ == "__main__":
    main()
