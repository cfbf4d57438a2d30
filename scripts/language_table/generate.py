"""LanguageTable training data from the real simulator, with paired cameras in random appearances.

Rolls out the simulator's scripted RRT push oracle (push_oracle_rrt_slowdown.ObstacleOrientedPushOracleBoard2dRRT,
as language_table/eval/main.py uses it) at the environment's 10 Hz control frequency, one episode per environment
seed. Seed s picks its reward type and block set deterministically (reward = REWARD_TYPES[s % 5], block set =
BLOCK_4 if (s // 5) % 2 == 0 else BLOCK_8), so any range of 10 consecutive seeds covers every combination.

ENVIRONMENT SEEDS 0-999 ONLY: seeds from 1000 up are reserved for acceptance checks, and this script refuses them.

Writes LeRobot v3.0 (lerobot_v3.py) with LanguageTable's column names:
  observation.images.rgb          the simulator's own camera image (its default look), a video
  observation.images.appearance_K the same state rendered in appearance K (K < --appearances), a video
  observation.state               effector translation (x, y), m
  observation.effector_target_translation   the commanded effector target (x, y), m
  action                          the oracle's (dx, dy) applied after this frame (zeros on the last frame)
  next.reward                     the reward after the action, divided by the goal reward (0 or 1)
  is_first, is_last, is_terminal  RLDS flags (is_terminal: the last frame of an episode that reached its goal)
  task                            the instruction
Per episode (meta/episodes): language_table/{seed,reward_type,block_mode,success,steps}, and for each appearance
camera appearance/<key>/name (e.g. "wooden tan board, grey concrete background, bright warm light from left,
shadows, cool soft grainy camera") and appearance/<key>/params (every drawn parameter, JSON). An appearance is drawn
once per episode and camera; appearance.py lists the randomized parameters and their ranges.

Frames are rendered at the simulator's native 180x320 (the published dataset stores 360x640) and resized with area
averaging to --size (e.g. 40x72, 90x160); sizes above native are rendered at that size with the native field of view.

Usage (after `bash scripts/language_table/setup.sh`):
  ~/.cache/vadapt/langtable-venv/bin/python scripts/language_table/generate.py \\
      --out /work/data/language_table --seeds 0-299 --size 90x160 --appearances 4
--jobs N stages seeds in N worker processes (the bytes do not depend on N); several runs may also stage disjoint
--seeds into one --stage directory with --no-finalize, then one run with --finalize-only lays out the dataset. An
interrupted run resumes: staged seeds are skipped.

The first training set (2026-12-06, on the development machine: 2 cores shared with four other jobs, load average
~12, niced):
  nohup nice -n 10 ~/.cache/vadapt/langtable-venv/bin/python scripts/language_table/generate.py \\
      --out /work/data/language_table --seeds 0-299 --size 180x320 --appearances 4 &
ran 95 min until the deadline stopped it: seeds 0-85 staged, 86 episodes, 4372 frames, 66 s per episode on average
(1.33 s per step wall, 5-300 s per episode; 74 of 86 reached their goal, the rest were cut at 100 steps), 141 MB.
They were laid out with `... --seeds 0-85 --finalize-only` (3.7 s) into /work/data/language_table. Rerunning the
same command resumes it. CPU per step: five tiny-renderer images (~0.13 s each at 180x320) plus the oracle's
pure-Python RRT* when it plans (seconds; every 10 steps while a plan fails, which makes cut episodes the slowest).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MAX_SEED = 999  # seeds from 1000 up are reserved for acceptance checks
REWARD_TYPES = ("blocktoblock", "blocktoabsolutelocation", "blocktoblockrelativelocation",
                "blocktorelativelocation", "separate")
SOURCE_COMMIT = "5b7bf0e9ff4edce323d5dd6d18e3341ae3ddb438"


def parse_seeds(text):
  seeds = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    if "-" in part:
      lo, hi = part.split("-", 1)
      seeds.extend(range(int(lo), int(hi) + 1))
    else:
      seeds.append(int(part))
  bad = [s for s in seeds if s < 0 or s > MAX_SEED]
  if bad:
    raise SystemExit(f"generate.py: seeds {bad[:5]}{'...' if len(bad) > 5 else ''} refused: environment seeds are "
                     f"0-{MAX_SEED} only (seeds from {MAX_SEED + 1} up are reserved for acceptance checks)")
  if len(set(seeds)) != len(seeds):
    raise SystemExit("generate.py: a seed is listed twice")
  return seeds


def parse_size(text):
  h, w = (int(x) for x in text.lower().split("x"))
  if h <= 0 or w <= 0 or h % 2 or w % 2:
    raise SystemExit(f"generate.py: --size {text}: need positive even height and width (H.264 4:2:0)")
  return h, w


def task_of_seed(seed):
  return REWARD_TYPES[seed % len(REWARD_TYPES)], ("BLOCK_4" if (seed // len(REWARD_TYPES)) % 2 == 0 else "BLOCK_8")


def _find_source():
  if any(os.path.isdir(os.path.join(p, "language_table")) for p in sys.path if p):
    return
  default = os.path.expanduser(f"~/.cache/vadapt/language-table-{SOURCE_COMMIT[:12]}")
  src = os.environ.get("LT_SRC", default)
  if not os.path.isfile(os.path.join(src, ".patched")):
    raise SystemExit(f"generate.py: no simulator source at {src}; run scripts/language_table/setup.sh")
  sys.path.insert(0, src)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="LeRobot v3.0 dataset directory to create")
  p.add_argument("--seeds", default="0-7", help="environment seeds, e.g. 0-299 or 3,5,8 (0-999 only)")
  p.add_argument("--size", default="90x160", help="stored frame size HxW (native render: 180x320)")
  p.add_argument("--appearances", type=int, default=4, help="paired appearance cameras per episode")
  p.add_argument("--appearance-pool", type=int, default=0,
                 help="draw every appearance camera from a pool of this many looks shared by all episodes (0: a "
                      "fresh look per camera); each is labelled appearance/<key>/look")
  p.add_argument("--looks", default="",
                 help="pool looks for the appearance cameras, one each, e.g. 5,47 (with --appearance-pool; sets "
                      "--appearances): every episode in those looks, to score styled targets against")
  p.add_argument("--photo", action="store_true",
                 help="one appearance camera, appearance_0, in the fixed photo-like look (appearance.photo_look: "
                      "photographed board and background, a real camera's optics): edge_to_real's data")
  p.add_argument("--robot-mask", action="store_true",
                 help="one more camera, observation.images.robot_mask: the robot's pixels (arm and effector, from "
                      "the renderer's segmentation) white on black, area-averaged to --size; other cameras unchanged")
  p.add_argument("--max-steps", type=int, default=100, help="oracle steps before an episode is cut")
  p.add_argument("--crf", type=int, default=18, help="x264 quality (lower: better, larger)")
  p.add_argument("--stage", help="staging directory (default: OUT.episodes)")
  p.add_argument("--no-finalize", action="store_true", help="only stage episodes")
  p.add_argument("--finalize-only", action="store_true", help="lay out the dataset from staged --seeds")
  p.add_argument("--force", action="store_true", help="replace an existing --out")
  p.add_argument("--jobs", type=int, default=1, help="worker processes staging seeds in parallel (same bytes)")
  args = p.parse_args(argv)
  args.look_list = [int(x) for x in args.looks.split(",") if x]
  if args.photo:
    if args.look_list or args.appearance_pool:
      p.error("--photo fixes the one appearance camera's look: no --looks or --appearance-pool with it")
    args.look_list, args.appearances = [0], 1
  elif args.look_list:
    if not all(0 <= i < args.appearance_pool for i in args.look_list):
      p.error(f"--looks {args.looks}: pool indices below --appearance-pool {args.appearance_pool}")
    args.appearances = len(args.look_list)
  return args


def _stage_in_parallel(args, todo, stage):
  """Run `jobs` copies of this script on interleaved subsets of `todo` (each episode depends only on its seed,
  so the staged bytes are the same as with one process)."""
  jobs = min(args.jobs, len(todo))
  common = ["--out", args.out, "--stage", stage, "--size", args.size, "--appearances", str(args.appearances),
            "--appearance-pool", str(args.appearance_pool), "--looks", args.looks,
            "--max-steps", str(args.max_steps), "--crf", str(args.crf), "--no-finalize"] + (
                ["--photo"] if args.photo else []) + (["--robot-mask"] if args.robot_mask else [])
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--seeds",
                             ",".join(str(s) for s in todo[j::jobs])] + common) for j in range(jobs)]
  failed = [j for j, p in enumerate(procs) if p.wait() != 0]
  if failed:
    raise SystemExit(f"generate.py: workers {failed} failed")


POOL_SEED = 0x9001  # the shared looks of --appearance-pool: the same pool in every run and process


def appearance_pool(n):
  """`n` appearance parameter sets drawn from POOL_SEED (none for 0)."""
  import numpy as np
  import appearance
  return [appearance.sample(np.random.default_rng([POOL_SEED, i])) for i in range(n)] or None


def main(argv=None):
  args = parse_args(argv)
  seeds = parse_seeds(args.seeds)
  size = parse_size(args.size)
  stage = args.stage or args.out.rstrip("/") + ".episodes"
  os.makedirs(stage, exist_ok=True)
  _find_source()
  import lerobot_v3
  import rollout

  if not args.finalize_only:
    done = set(lerobot_v3.staged_seeds(stage))
    todo = [s for s in seeds if s not in done]
    print(f"generate.py: {len(seeds) - len(todo)} of {len(seeds)} seeds already staged in {stage}", flush=True)
    pool = [rollout.appearance_module.photo_look()] if args.photo else appearance_pool(args.appearance_pool)
    if args.jobs > 1 and todo:
      _stage_in_parallel(args, todo, stage)
      todo = []
    for i, seed in enumerate(todo):
      t = time.time()
      reward, block_mode = task_of_seed(seed)
      ep = rollout.run_episode(stage, seed, reward, block_mode, size, args.appearances, args.max_steps, args.crf,
                               pool, args.look_list, args.robot_mask)
      print(f"seed {seed} ({i + 1}/{len(todo)}): {reward} {block_mode}, {ep['steps']} steps, "
            f"{'success' if ep['success'] else 'cut'}, {time.time() - t:.1f} s: {ep['instruction']!r}", flush=True)
  if args.no_finalize:
    return
  missing = sorted(set(seeds) - set(lerobot_v3.staged_seeds(stage)))
  if missing:
    raise SystemExit(f"generate.py: seeds {missing[:10]} are not staged in {stage}")
  if os.path.exists(args.out):
    if not args.force:
      raise SystemExit(f"generate.py: {args.out} exists (--force replaces it)")
    shutil.rmtree(args.out)
  extra = {
      "generator": "scripts/language_table/generate.py",
      "simulator": f"google-research/language-table@{SOURCE_COMMIT}",
      "native_render_size": list(rollout.NATIVE_SIZE),
      "stored_size": list(size),
      "control_frequency_hz": rollout.CONTROL_FREQUENCY,
      "seeds": seeds,
      "default_camera": "observation.images.rgb",
      "appearance_cameras": [f"observation.images.appearance_{k}" for k in range(args.appearances)],
      "appearance_vocabulary": rollout.appearance_module.VOCABULARY,
  }
  appearance = rollout.appearance_module
  info = lerobot_v3.finalize(
      stage, seeds, args.out, extra, size,
      name_of=lambda p: appearance.name(p, p["rendered_board_rgb"], p["rendered_background_rgb"]))
  print(f"generate.py: wrote {args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames",
        flush=True)


if __name__ == "__main__":
  main()
