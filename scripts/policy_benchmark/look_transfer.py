"""A diagnostic for the LanguageTable policy benchmark, not an augmentation: bc.py with every `--augmented` episode's
colours moved the rest of the way to its reference still's (docs/results.md, "Keeping the robot"), to measure what
the restyle model's muted looks cost a policy once the robot is kept. Takes bc.py's arguments plus `--mask KEY`, a
mask camera of the augmented datasets (the robot, kept from the source by `keep_mask`; the transfer leaves it as it
is). Each augmented episode's reference still is the one its `meta/augmentation.json` entry drew.

The transfer is Reinhard et al.'s (2001) colour transfer in CIE Lab, at the policy's input size: per channel, the
episode's non-robot pixels are shifted and scaled to the mean and standard deviation of the still's pixels.

  .venv/bin/python scripts/policy_benchmark/look_transfer.py --source /work/data/lt_mask:observation.images.rgb \
      --augmented out/pb_keep2:observation.images.rgb --targets randomized --eval /work/data/lt_heldout ... \
      --arms source+vadapt --mask observation.images.robot_mask --out out/pb_transfer.json
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bc  # noqa: E402


def lab(frames: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 RGB -> (N, H, W, 3) float32 Lab."""
    x = frames.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in x])


def rgb(lab_frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float32 Lab -> (N, 3, H, W) uint8 RGB."""
    x = np.stack([cv2.cvtColor(f, cv2.COLOR_LAB2RGB) for f in lab_frames.astype(np.float32)])
    return np.round(x * 255.0).clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def main() -> None:
    argv = sys.argv[1:]
    if "--mask" not in argv:
        sys.exit("--mask KEY: the augmented datasets' mask camera (the kept robot)")
    i = argv.index("--mask")
    mask_key = argv[i + 1]
    del sys.argv[i + 1 : i + 3]  # bc.py does not know the flag
    # --no-transfer: leave the looks' colours; --arm-shade: multiply the kept robot's pixels by a grey shade drawn
    # per episode from the held-out looks' range (appearance.py: 0.55-1.0, each channel 0.93-1.0 of it).
    transfer = "--no-transfer" not in sys.argv
    arm_shade = "--arm-shade" in sys.argv
    sys.argv = [a for a in sys.argv if a not in ("--no-transfer", "--arm-shade")]
    augmented = {v for f, v in zip(argv, argv[1:]) if f == "--augmented"}
    load_camera = bc.load_camera

    def load(spec, default_key, size, targets=None):
        cam = load_camera(spec, default_key, size, targets)
        if spec not in augmented:
            return cam
        root = Path(spec.partition(":")[0])
        masks = load_camera(f"{root}:{mask_key}", default_key, size, targets)
        if not np.array_equal(masks.episode, cam.episode):
            sys.exit(f"{root}: {mask_key} does not pair with the camera")
        entries = json.loads((root / "meta" / "augmentation.json").read_text())["episodes"]
        weight = masks.frames[:, :1].astype(np.float32).transpose(0, 2, 3, 1) / 255.0  # (N, H, W, 1)
        moved = 0
        for e in np.unique(cam.episode):
            ref = (entries[int(e)].get("draw") or {}).get("reference")
            if ref is None:
                continue
            rows = np.nonzero(cam.episode == e)[0]
            still = cv2.cvtColor(cv2.imread(ref), cv2.COLOR_BGR2RGB)
            still = cv2.resize(still, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            target = lab(still.transpose(2, 0, 1)[None])[0].reshape(-1, 3)
            w = weight[rows]
            if transfer:
                x = lab(cam.frames[rows])
                scene = x[(w[..., 0] < 0.5)]
                mu, sd = scene.mean(0), scene.std(0) + 1e-3
                moved_x = (x - mu) / sd * target.std(0) + target.mean(0)
                cam.frames[rows] = rgb(w * x + (1.0 - w) * moved_x)
            if arm_shade:
                rng = np.random.default_rng([int(e), 0xA2])
                gain = rng.uniform(0.55, 1.0) * rng.uniform(0.93, 1.0, 3)
                x = cam.frames[rows].astype(np.float32)
                wc = w.transpose(0, 3, 1, 2)  # (n, 1, H, W)
                shaded = x * gain[None, :, None, None].astype(np.float32)
                cam.frames[rows] = np.round(wc * shaded + (1.0 - wc) * x).clip(0, 255).astype(np.uint8)
            moved += len(rows)
        bc.log(f"{spec}: {moved} frames (colours moved to their stills: {transfer}; arm shaded: {arm_shade})")
        return cam

    bc.load_camera = load
    bc.main()


if __name__ == "__main__":
    main()
