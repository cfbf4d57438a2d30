"""Write a small LeRobot v3.0 dataset with lerobot's OWN writer, plus the exact values it was given.

usage: make_lerobot.py OUT_DIR

OUT_DIR/dataset/   the LeRobot v3.0 dataset (several episodes share one AV1 mp4: lerobot's default libsvtav1)
OUT_DIR/expected.safetensors
    ep{i}.frames           uint8 (T, H, W, 3)   the frames handed to add_frame
    ep{i}.observation.state, ep{i}.action, ep{i}.next.reward  float32 (T, d)
    ep{i}.next.done        uint8 (T, 1)
The Rust test reads the dataset with vadapt and compares against these.
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from lerobot.datasets.lerobot_dataset import LeRobotDataset

H, W, FPS = 96, 128, 10
LENGTHS = [12, 7, 15]
TASKS = ["push the red star to the blue cube", "move the green moon left", "push the red star to the blue cube"]


def frames_for(ep: int, n: int) -> np.ndarray:
    """Smooth, codec-friendly synthetic frames: a gradient board and a soft moving blob, so that the codec's own
    loss stays well under the 2/255 the tests allow for reading."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        cx, cy = 24 + 6 * t, 32 + 8 * ep
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 12.0**2))[..., None]
        board = np.stack([70 + xx * 0.75, 90 + yy * 0.75, np.full_like(xx, 110 + 30 * ep)], -1)
        img = board * (1 - blob) + np.array([210, 70, 60], np.float32) * blob
        out[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    features = {
        "observation.images.rgb": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="vadapt/interop", fps=FPS, features=features, root=out / "dataset",
                               use_videos=True, image_writer_threads=0)
    rng = np.random.default_rng(0)
    expected = {}
    for ep, (n, task) in enumerate(zip(LENGTHS, TASKS)):
        frames = frames_for(ep, n)
        state = rng.normal(size=(n, 2)).astype(np.float32)
        action = rng.normal(size=(n, 2)).astype(np.float32)
        reward = rng.random(size=(n, 1)).astype(np.float32)
        done = np.zeros((n, 1), bool)
        done[-1] = True
        for t in range(n):
            ds.add_frame({"observation.images.rgb": frames[t], "observation.state": state[t], "action": action[t],
                          "next.reward": reward[t], "next.done": done[t], "task": task})
        ds.save_episode()
        expected[f"ep{ep}.frames"] = frames
        expected[f"ep{ep}.observation.state"] = state
        expected[f"ep{ep}.action"] = action
        expected[f"ep{ep}.next.reward"] = reward
        expected[f"ep{ep}.next.done"] = done.astype(np.uint8)
    ds.finalize()
    save_file(expected, str(out / "expected.safetensors"))


if __name__ == "__main__":
    main()
