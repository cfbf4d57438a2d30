"""What augmentation is worth to a policy: a small vision behaviour-cloning policy trained on source episodes alone
and on the same episodes plus vadapt's augmented ones, evaluated on held-out episodes in the look it was trained in
and in appearances nobody trained on. Driven by scripts/policy_benchmark.sh; the numbers go to docs/results.md.

usage:
  bc.py --source DS[:KEY] [--augmented DS[:KEY] ...] --eval DS --in-key KEY --out-key KEY [options] --out RESULT.json

* `--source`: the N source episodes in the default look; `--augmented`: LeRobot datasets written by `vadapt augment`
  (expanded layout: one episode per source episode and target, the generated video under the source camera's key,
  the source's actions). KEY defaults to `--in-key`.
* `--eval`: any LeRobot dataset whose cameras `--in-key` and `--out-key` show the same states (paired renderings);
  held out from training. `--out-key` may list several cameras (comma-separated); their frames are pooled. If its tasks end in ", <name> style" the out-of-domain error is also broken down by style.
* The policy sees the frames t-1 and t (6 channels, the velocity is then visible) at `--size`, and predicts the
  action at t (normalised by the source actions' mean and std). A small CNN with a spatial-softmax
  keypoint head (shared by both frames) and an MLP; no normalisation layers; AdamW with a one-cycle schedule.
* Every arm gets the same number of optimisation steps and batch size, and the same seeds; an arm with augmented
  data draws each batch `--aug-fraction` from the augmented episodes and the rest from the source episodes.
* Arms: `source` (a), `source+vadapt` (b) and, for reference, `source+jitter` (classical photometric augmentation:
  random brightness, contrast, per-channel gain and colour shifts on the source frames, no model), and
  `source+vadapt+jitter` (both; not in the default `--arms`).
* Reported per arm (mean and spread over `--seeds`): action error (root mean squared, in units of the action,
  x1000: mm per step for the sample data) in-domain and out-of-domain, plus the error of always predicting the
  mean action, which a policy that sees nothing reaches.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Local datasets only: never ask the hub (lerobot would for a root it cannot read).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def log(msg: str) -> None:
    print(f"[bc {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Data: a camera of a LeRobot dataset as uint8 frames at the policy's size, with actions and episode boundaries.


class Camera:
    """Every frame of one camera of one dataset, resized, with its episode's actions."""

    def __init__(self, frames: np.ndarray, actions: np.ndarray, episode: np.ndarray, tasks: list[str], name: str):
        self.frames = frames  # (N, 3, H, W) uint8
        self.actions = actions  # (N, A) float32
        self.episode = episode  # (N,) int64, the episode of each frame
        self.tasks = tasks  # (N,) the episode task of each frame
        self.name = name
        # Index of the previous frame of the same episode (itself at an episode's first frame).
        prev = np.arange(len(episode)) - 1
        prev[0] = 0
        first = np.concatenate([[True], episode[1:] != episode[:-1]])
        prev[first] = np.nonzero(first)[0]
        self.prev = prev

    def __len__(self) -> int:
        return len(self.actions)


def load_camera(spec: str, default_key: str, size: tuple[int, int], targets: list[str] | None = None) -> Camera:
    """`spec` = ROOT or ROOT:KEY; every episode of ROOT (only those whose `augmentation.target` is in `targets`, when
    given), the camera decoded by lerobot's own video decoder."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import decode_video_frames

    root, _, key = spec.partition(":")
    key = key or default_key
    root = Path(root).resolve()
    if not (root / "meta" / "info.json").is_file():
        sys.exit(f"{root}: not a LeRobot dataset (no meta/info.json)")
    ds = LeRobotDataset("vadapt/policy-benchmark", root=root, video_backend="pyav")
    if key not in ds.meta.video_keys:
        sys.exit(f"{root}: no video camera {key!r}; its cameras are {ds.meta.video_keys}")
    if "action" not in ds.features:
        sys.exit(f"{root}: no 'action' feature")
    table = ds.hf_dataset.with_format("numpy")
    ep_col = np.asarray(table["episode_index"]).reshape(-1).astype(np.int64)
    ts_col = np.asarray(table["timestamp"]).reshape(-1)
    actions = np.stack(table["action"]).astype(np.float32).reshape(len(ep_col), -1)
    task_col = np.asarray(table["task_index"]).reshape(-1)
    task_names = {int(i): t for t, i in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"])}
    if targets:
        if "augmentation.target" not in table.column_names:
            sys.exit(f"{root}: no augmentation.target column to select targets {targets} by")
        names = np.asarray(ds.hf_dataset["augmentation.target"])
        # Several --augmented datasets may each hold some of the targets (e.g. restyled and real_aug episodes
        # written by separate runs); each must hold at least one.
        if not set(targets) & set(names.tolist()):
            sys.exit(f"{root}: no episodes of targets {sorted(targets)}; it has {sorted(set(names.tolist()))}")
        keep = np.isin(names, targets)
        ep_col, ts_col, actions, task_col = ep_col[keep], ts_col[keep], actions[keep], task_col[keep]
    frames = np.empty((len(ep_col), 3, size[0], size[1]), np.uint8)
    for ep_idx in np.unique(ep_col):
        rows = np.nonzero(ep_col == ep_idx)[0]
        ep = ds.meta.episodes[int(ep_idx)]
        start = ep[f"videos/{key}/from_timestamp"]
        path = root / ds.meta.get_video_file_path(int(ep_idx), key)
        video = decode_video_frames(path, [start + float(t) for t in ts_col[rows]], ds.tolerance_s, "pyav")
        if video.shape[0] != len(rows):
            sys.exit(f"{path}: episode {ep_idx} decoded {video.shape[0]} frames of {key}, expected {len(rows)}")
        video = F.interpolate(video.float(), size=size, mode="area") if video.shape[-2:] != size else video
        frames[rows] = (video * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    tasks = [task_names[int(t)] for t in task_col]
    log(f"{root.name}:{key}: {len(np.unique(ep_col))} episodes, {len(ep_col)} frames")
    return Camera(frames, actions, ep_col, tasks, f"{root.name}:{key}")


def concat(cams: list[Camera]) -> Camera:
    offset, eps = 0, []
    for c in cams:
        eps.append(c.episode + offset)
        offset += int(c.episode.max()) + 1
    return Camera(
        np.concatenate([c.frames for c in cams]),
        np.concatenate([c.actions for c in cams]),
        np.concatenate(eps),
        sum((c.tasks for c in cams), []),
        "+".join(c.name for c in cams),
    )


def inputs(cam: Camera, idx: np.ndarray) -> torch.Tensor:
    """Frames t-1 and t as (B, 6, H, W) in [0, 1]."""
    x = np.concatenate([cam.frames[cam.prev[idx]], cam.frames[idx]], axis=1)
    return torch.from_numpy(x).float().div_(255.0)


def jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Classical photometric augmentation, the same draw for both frames of a sample."""
    b = x.shape[0]
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(b, *shape, 1, 1, generator=gen)  # noqa: E731
    gain = u(0.6, 1.4, 1) * u(0.7, 1.3, 3)  # brightness x per-channel gain
    shift = u(-0.15, 0.15, 3)
    contrast = u(0.6, 1.4, 1)
    x = x.view(b, 2, 3, *x.shape[-2:])
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    x = ((x - mean) * contrast.unsqueeze(1) + mean) * gain.unsqueeze(1) + shift.unsqueeze(1)
    return x.clamp(0, 1).view(b, 6, *x.shape[-2:])


# ---------------------------------------------------------------------------------------------------------------
# The policy.


class Policy(nn.Module):
    """A shared convolutional encoder turns each of the two frames into `keypoints` image points (spatial softmax:
    the expected (x, y) of each feature map, the usual visuomotor-policy head, Levine et al. 2016); an MLP maps the
    points of frames t-1 and t and their difference to the action. About 25k parameters, ~6 MFLOP per frame at 48x80."""

    def __init__(self, size: tuple[int, int], action_dim: int, width: int = 16, keypoints: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, keypoints, 1),
        )
        h, w = (size[0] + 1) // 2, (size[1] + 1) // 2
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))  # (h*w, 2)
        self.temperature = nn.Parameter(torch.ones(()))
        self.head = nn.Sequential(
            nn.Linear(3 * 2 * keypoints, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, action_dim)
        )

    def points(self, frame: torch.Tensor) -> torch.Tensor:
        f = self.encoder(frame - 0.5)  # (B, K, h, w)
        attn = torch.softmax(f.flatten(2) / self.temperature, dim=-1)  # (B, K, h*w)
        return (attn @ self.grid).flatten(1)  # (B, 2K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pts = self.points(x.view(b * 2, 3, *x.shape[-2:])).view(b, 2, -1)
        prev, now = pts[:, 0], pts[:, 1]
        return self.head(torch.cat([prev, now, (now - prev) * 10.0], dim=1))


def train(arm: str, source: Camera, augmented: Camera | None, args, seed: int, norm) -> Policy:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    mean, std = norm
    policy = Policy(args.size, source.actions.shape[1], args.width)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    n_aug = int(round(args.batch_size * args.aug_fraction)) if augmented is not None else 0
    t0 = time.perf_counter()
    for step in range(args.steps):
        parts = [(source, rng.integers(0, len(source), args.batch_size - n_aug))]
        if n_aug:
            parts.append((augmented, rng.integers(0, len(augmented), n_aug)))
        x = torch.cat([inputs(c, i) for c, i in parts])
        if arm.endswith("+jitter"):
            x = jitter(x, gen)
        y = torch.cat([torch.from_numpy((c.actions[i] - mean) / std) for c, i in parts])
        loss = F.mse_loss(policy(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            sys.exit(f"{arm} seed {seed}: loss {loss.item()} at step {step}")
        if (step + 1) % max(1, args.steps // 5) == 0:
            log(f"{arm} seed {seed}: step {step + 1}/{args.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    return policy


def save_policy(policy: Policy, stem: Path, args, norm) -> None:
    """`stem`.safetensors (the weights) and `stem`.json (what rebuilds and feeds it): for closed_loop.py."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(stem) + ".safetensors")
    meta = {"size": list(args.size), "width": args.width, "action_dim": int(norm[0].shape[0]),
            "mean": norm[0].tolist(), "std": norm[1].tolist()}
    Path(str(stem) + ".json").write_text(json.dumps(meta))


def load_policy(stem: Path) -> tuple[Policy, tuple[np.ndarray, np.ndarray]]:
    from safetensors.torch import load_file

    meta = json.loads(Path(str(stem) + ".json").read_text())
    policy = Policy(tuple(meta["size"]), meta["action_dim"], meta["width"])
    policy.load_state_dict(load_file(str(stem) + ".safetensors"))
    policy.eval()
    return policy, (np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32))


@torch.no_grad()
def predict(policy: Policy, cam: Camera, norm) -> np.ndarray:
    policy.eval()
    mean, std = norm
    out = []
    for s in range(0, len(cam), 256):
        idx = np.arange(s, min(s + 256, len(cam)))
        out.append(policy(inputs(cam, idx)).numpy() * std + mean)
    return np.concatenate(out)


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((pred - truth) ** 2, axis=1))))


def style_of(task: str) -> str:
    return task.rsplit(", ", 1)[1].removesuffix(" style") if task.endswith(" style") and ", " in task else "all"


# ---------------------------------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True)
    p.add_argument("--augmented", action="append", default=[])
    p.add_argument("--eval", required=True)
    p.add_argument("--in-key", default="observation.images.real")
    p.add_argument("--out-key", type=lambda v: v.split(","), default=["observation.images.styled"],
                   help="out-of-domain camera(s) of --eval, comma-separated: pooled")
    p.add_argument("--size", default="48x80", help="policy input HxW")
    p.add_argument("--save-policies", type=Path, help="write each trained policy here (ARM.seedS.safetensors + .json)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--targets", type=lambda v: v.split(","), default=None,
                   help="only these targets' episodes of each --augmented (its augmentation.target column; "
                        "each dataset must hold at least one of them)")
    p.add_argument("--aug-fraction", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--arms", default="source,source+vadapt,source+jitter")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BC_THREADS", "2")))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    h, _, w = a.size.partition("x")
    a.size = (int(h), int(w))
    a.arms = a.arms.split(",")
    unknown = set(a.arms) - {"source", "source+vadapt", "source+jitter", "source+vadapt+jitter"}
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}")
    if any("vadapt" in arm for arm in a.arms) and not a.augmented:
        p.error("the source+vadapt arms need --augmented")
    if not 0.0 < a.aug_fraction < 1.0:
        p.error("--aug-fraction must lie in (0, 1)")
    return a


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    source = load_camera(args.source, args.in_key, args.size)
    augmented = (
        concat([load_camera(s, args.in_key, args.size, args.targets) for s in args.augmented])
        if args.augmented else None
    )
    ev_in = load_camera(args.eval, args.in_key, args.size)
    # Several out-of-domain cameras (LanguageTable's appearance_0..3: four random looks of each held-out episode)
    # are pooled: every state is scored once per camera, against the same truth.
    outs = [load_camera(args.eval, key, args.size) for key in args.out_key]
    for cam in outs:
        if not np.array_equal(ev_in.actions, cam.actions):
            sys.exit(f"the evaluation cameras {args.in_key} and {cam.name} do not come from the same rows")
    ev_out = concat(outs)
    mean = source.actions.mean(axis=0)
    std = source.actions.std(axis=0) + 1e-8
    norm = (mean, std)
    truth = ev_in.actions
    truth_out = ev_out.actions
    styles = sorted({style_of(t) for t in ev_out.tasks})
    results = {
        "config": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                   for k, v in vars(args).items() if k != "out"},
        "train_frames": {"source": len(source), "augmented": 0 if augmented is None else len(augmented)},
        "eval_frames": len(ev_in),
        "mean_action_rmse": rmse(np.broadcast_to(mean, truth.shape), truth),
        "arms": {},
    }
    for arm in args.arms:
        runs = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            policy = train(arm, source, augmented if "vadapt" in arm else None, args, seed, norm)
            if args.save_policies:
                save_policy(policy, args.save_policies / f"{arm}.seed{seed}", args, norm)
            p_in, p_out = predict(policy, ev_in, norm), predict(policy, ev_out, norm)
            run = {"seed": seed, "in_domain": rmse(p_in, truth), "out_of_domain": rmse(p_out, truth_out),
                   "train_s": round(time.perf_counter() - t0, 1)}
            if len(styles) > 1:
                st = np.array([style_of(t) for t in ev_out.tasks])
                run["out_of_domain_by_style"] = {s: rmse(p_out[st == s], truth_out[st == s]) for s in styles}
            log(f"{arm} seed {seed}: in-domain {run['in_domain'] * 1e3:.3f}, out-of-domain "
                f"{run['out_of_domain'] * 1e3:.3f} (x1e-3)")
            runs.append(run)
        summary = {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
                   for k in ("in_domain", "out_of_domain")}
        results["arms"][arm] = {"runs": runs, **summary}
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.rename(args.out)
    print(table(results))


def table(r: dict) -> str:
    """The markdown table docs/results.md shows."""
    base = r["arms"].get("source")
    lines = [
        "| arm | in-domain action RMSE (x1e-3) | out-of-domain action RMSE (x1e-3) | OOD vs source | in-domain vs source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arm, a in r["arms"].items():
        rel = lambda k: f"{(a[k]['mean'] / base[k]['mean'] - 1) * 100:+.1f}%" if base and arm != "source" else "-"  # noqa: E731
        lines.append(
            f"| {arm} | {a['in_domain']['mean'] * 1e3:.3f} ± {a['in_domain']['std'] * 1e3:.3f} | "
            f"{a['out_of_domain']['mean'] * 1e3:.3f} ± {a['out_of_domain']['std'] * 1e3:.3f} | "
            f"{rel('out_of_domain')} | {rel('in_domain')} |"
        )
    lines.append(f"| always the mean action | {r['mean_action_rmse'] * 1e3:.3f} | {r['mean_action_rmse'] * 1e3:.3f} | | |")
    by_style = [run.get("out_of_domain_by_style") for a in r["arms"].values() for run in a["runs"]]
    if by_style and by_style[0]:
        styles = list(by_style[0])
        lines += ["", "| arm | " + " | ".join(f"OOD RMSE, {s} (x1e-3)" for s in styles) + " |",
                  "| --- |" + " --- |" * len(styles)]
        for arm, a in r["arms"].items():
            cells = [np.mean([run["out_of_domain_by_style"][s] for run in a["runs"]]) * 1e3 for s in styles]
            lines.append(f"| {arm} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def merge(out: Path, parts: list[Path]) -> None:
    """Arms trained in separate runs (same data and settings) into one result and table."""
    rs = [json.loads(p.read_text()) for p in parts]
    base = dict(rs[0])
    base["arms"] = {}
    for r in rs:
        mismatched = {k for k in ("steps", "batch_size", "lr", "seeds", "size", "source", "eval")
                      if r["config"][k] != rs[0]["config"][k]}
        if mismatched:
            sys.exit(f"cannot merge runs with different {sorted(mismatched)}")
        base["arms"].update(r["arms"])
        base["train_frames"]["augmented"] = max(base["train_frames"]["augmented"], r["train_frames"]["augmented"])
    base["seconds"] = sum(r["seconds"] for r in rs)
    out.write_text(json.dumps(base, indent=2))
    print(table(base))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "merge":  # bc.py merge OUT.json RUN1.json RUN2.json ...
        merge(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
    else:
        main()
