"""Train a policy on a LeRobot dataset with lerobot's OWN training loop (`lerobot.scripts.lerobot_train.train`,
what the `lerobot-train` command runs), for a few steps on CPU, offline, and check that it learned something finite.

usage: lerobot_train.py DATASET_ROOT OUT_DIR [--camera KEY] [--steps N] [--batch-size B]

* The dataset is read from DATASET_ROOT only (HF_HUB_OFFLINE=1; any network connection fails the run).
* The policy is a tiny ACT (lerobot's `ACTConfig`, minimal sizes) whose only image input is `--camera` (default
  `observation.images.real`, the key `vadapt augment`'s expanded layout writes the generated video under), plus
  `observation.state`. Its ResNet-18 backbone starts from random weights (`pretrained_backbone_weights=None`), so
  nothing is downloaded; TORCH_HOME points into OUT_DIR and must still be empty at the end.
* Every step's loss is recorded by wrapping `lerobot_train.update_policy` (the loop itself is lerobot's, unchanged);
  the script fails unless every loss is finite. The last checkpoint that lerobot saved is then loaded back with
  `ACTPolicy.from_pretrained` and asked for an action on one frame of the dataset, which must be finite too.

Prints one JSON line on stdout: steps, losses, episodes, frames, camera, seconds.
"""

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path


def refuse_network() -> None:
    """Make any internet connection an error, so a hidden download (hub file, torchvision weights) fails loudly."""

    def connect(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"lerobot_train.py is offline, yet something tried to connect to {address!r}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    socket.socket.connect = connect


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset_root", type=Path)
    p.add_argument("out_dir", type=Path, help="a new directory for lerobot's outputs (checkpoint, logs)")
    p.add_argument("--camera", default="observation.images.real", help="the one image key the policy reads")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=False)
    torch_home = args.out_dir / "torch_home"
    os.environ["TORCH_HOME"] = str(torch_home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_LEROBOT_HOME"] = str(args.out_dir / "hf_lerobot_home")
    os.environ.setdefault("WANDB_MODE", "disabled")
    refuse_network()

    import torch
    from lerobot.configs.default import DatasetConfig, WandBConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.scripts import lerobot_train

    root = args.dataset_root.resolve()
    repo_id = "vadapt/train-check"
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    features = dataset_to_policy_features(meta.features)
    if args.camera not in meta.video_keys + meta.image_keys:
        sys.exit(f"{root}: no camera {args.camera!r}; its cameras are {meta.video_keys + meta.image_keys}")
    for key in ("observation.state", "action"):
        if key not in features:
            sys.exit(f"{root}: no {key!r} feature; the policy needs it (features: {sorted(meta.features)})")

    policy = ACTConfig(
        device="cpu",
        push_to_hub=False,
        input_features={args.camera: features[args.camera], "observation.state": features["observation.state"]},
        # Random init: the default ImageNet weights would be fetched from download.pytorch.org.
        pretrained_backbone_weights=None,
        vision_backbone="resnet18",
        chunk_size=4,
        n_action_steps=4,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_vae_encoder_layers=1,
        latent_dim=8,
        optimizer_lr=1e-4,
        optimizer_lr_backbone=1e-4,
    )
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=repo_id, root=str(root), video_backend="pyav"),
        policy=policy,
        output_dir=args.out_dir / "run",
        job_name="vadapt_train_check",
        seed=0,
        num_workers=0,
        batch_size=args.batch_size,
        steps=args.steps,
        eval_freq=0,
        log_freq=1,
        save_checkpoint=True,
        save_freq=args.steps,
        wandb=WandBConfig(enable=False),
    )

    losses = []
    real_update = lerobot_train.update_policy

    def recording_update(train_metrics, *a, **kw):
        train_metrics, output = real_update(train_metrics, *a, **kw)
        losses.append(float(train_metrics.loss.val))
        return train_metrics, output

    lerobot_train.update_policy = recording_update
    sys.argv = [sys.argv[0]]  # lerobot's config parser also reads sys.argv; ours are not its flags
    t0 = time.perf_counter()
    lerobot_train.train(cfg)
    seconds = time.perf_counter() - t0

    if len(losses) != args.steps:
        sys.exit(f"lerobot's loop ran {len(losses)} updates, expected {args.steps}")
    bad = [(i, v) for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        sys.exit(f"non-finite losses (step, value): {bad}; all: {losses}")

    # The checkpoint lerobot wrote loads back and acts on a frame of the dataset.
    ckpt = cfg.output_dir / "checkpoints" / "last" / "pretrained_model"
    if not ckpt.is_dir():
        sys.exit(f"lerobot saved no checkpoint at {ckpt}")
    trained = ACTPolicy.from_pretrained(ckpt)
    trained.eval()
    pre, post = make_pre_post_processors(trained.config, pretrained_path=ckpt)
    ds = LeRobotDataset(repo_id, root=root, video_backend="pyav")
    item = ds[0]
    obs = {k: item[k].unsqueeze(0) for k in (args.camera, "observation.state")}
    with torch.no_grad():
        action = post(trained.select_action(pre(obs)))
    action = action.reshape(-1)
    if action.numel() != features["action"].shape[0] or not torch.isfinite(action).all():
        sys.exit(f"the reloaded policy's action is {action.tolist()}")

    downloaded = [str(p) for p in torch_home.rglob("*") if p.is_file()] if torch_home.exists() else []
    if downloaded:
        sys.exit(f"files were downloaded during training: {downloaded}")
    print(json.dumps({
        "steps": len(losses),
        "losses": losses,
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "camera": args.camera,
        "action": action.tolist(),
        "seconds": round(seconds, 2),
    }))


if __name__ == "__main__":
    main()
