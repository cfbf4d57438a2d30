"""A diagnostic for the LanguageTable policy benchmark, not an augmentation: bc.py with the source's robot arm pasted
back into every `--augmented` episode, to measure what the restyle model's missing arm costs a policy
(docs/results.md, "What the bar needs, and the arm"). Takes bc.py's arguments; the first `--source` dataset must be
the default-look camera the augmented episodes were made from (their `augmentation.source_episode_index` and
`frame_index` pair each augmented frame with its source frame; the actions are checked to agree).

The arm mask is keyed on colour in the simulator's default look, at the policy's input size: the robot is bright and
unsaturated, the board dark. A pixel is arm where the frame is bright (mean > 100) and grey (channel spread < 40)
and either lies on the board (the episode's per-pixel median frame is dark there) or has moved (it differs from
that median by more than 25); then grown by one pixel for the arm's shaded rim. It misses the parts of the arm that
sit still over the white background (the same colour as the arm there). This only works for the default look, which
is why it is a diagnostic. `--mask DS:KEY` takes the mask from a camera instead: the simulator's own robot matte
(`generate.py --robot-mask`, the same seeds as the source; its actions must match the source's), blended as alpha.

  .venv/bin/python scripts/policy_benchmark/arm_paste.py --source /work/data/language_table:observation.images.rgb \
      --augmented out/pb_lt2/augmented:observation.images.rgb --targets randomized --eval /work/data/lt_heldout ... \
      --arms source+vadapt --out out/pb_arm.json [--mask /work/data/lt_mask:observation.images.robot_mask]
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bc  # noqa: E402


def arm_mask(frames: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) bool: the robot arm in default-look frames (N, 3, H, W) uint8 of the episodes `episode`."""
    mask = np.zeros((len(frames), 1) + frames.shape[2:], bool)
    for e in np.unique(episode):
        rows = np.nonzero(episode == e)[0]
        x = frames[rows].astype(np.int16)
        median = np.median(x, axis=0)
        board = median.mean(0) < 80
        moving = np.abs(x - median[None]).mean(1) > 25
        bright = x.mean(1) > 100
        grey = (x.max(1) - x.min(1)) < 40
        m = torch.from_numpy((bright & grey & (board[None] | moving))[:, None].astype(np.float32))
        mask[rows] = (F.max_pool2d(m, 3, 1, 1) > 0).numpy()
    return mask


def main() -> None:
    load_camera = bc.load_camera
    sources: list[bc.Camera] = []
    augmented_specs = set()
    argv = sys.argv[1:]
    mask_spec = None
    if "--mask" in argv:
        i = argv.index("--mask")
        mask_spec = argv[i + 1]
        del sys.argv[i + 1 : i + 3]  # bc.py does not know the flag
    for flag, value in zip(argv, argv[1:]):
        if flag == "--augmented":
            augmented_specs.add(value)
    alpha = {}

    def load(spec, default_key, size, targets=None):
        cam = load_camera(spec, default_key, size, targets)
        if spec not in augmented_specs:
            sources.append(cam)
            return cam
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        ds = LeRobotDataset("vadapt/arm-paste", root=Path(spec.partition(":")[0]).resolve(), video_backend="pyav")
        table = ds.hf_dataset
        keep = np.isin(np.asarray(table["augmentation.target"]), targets) if targets else slice(None)
        source_episode = np.asarray(table["augmentation.source_episode_index"])[keep]
        frame = np.asarray(table["frame_index"])[keep]
        src = sources[0]
        first = {e: np.nonzero(src.episode == e)[0][0] for e in np.unique(src.episode)}
        rows = np.array([first[e] + i for e, i in zip(source_episode, frame)])
        if not np.allclose(src.actions[rows], cam.actions):
            sys.exit(f"{spec}: its frames do not pair with {src.name} (actions differ)")
        if mask_spec is None:
            mask = arm_mask(src.frames, src.episode)[rows].astype(np.float32)
        else:
            if "matte" not in alpha:
                matte = load_camera(mask_spec, default_key, size)
                if not np.array_equal(matte.actions, src.actions):
                    sys.exit(f"{mask_spec}: its episodes do not pair with {src.name} (actions differ)")
                alpha["matte"] = matte.frames[:, :1].astype(np.float32) / 255.0
            mask = alpha["matte"][rows]
        blend = mask * src.frames[rows] + (1.0 - mask) * cam.frames
        cam.frames = np.round(blend).clip(0, 255).astype(np.uint8)
        bc.log(f"{spec}: the source's arm pasted into {mask.mean() * 100:.1f}% of the pixels")
        return cam

    bc.load_camera = load
    bc.main()


if __name__ == "__main__":
    main()
