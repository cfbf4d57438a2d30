"""Closed-loop success of bc.py's policies in the LanguageTable simulator, in the default look and in the held-out
random looks (issue 22's second measure: "closed-loop success in the LanguageTable simulator").

Each episode starts where the held-out dataset's episode of the same environment seed starts (generate.py's reset:
numpy seeded with the seed, reset until the oracle finds a plan) and is rendered as that dataset's cameras are: the
simulator's own camera (`rgb`, the look the policies trained in) or appearance camera K (the same draw as
`generate.py --appearances`: the held-out looks). The policy sees frames t-1 and t at its input size (area-resized
from the native 180x320 render), its action is applied at 10 Hz, and the episode succeeds when the simulator's
reward says the instruction is done, within `--max-steps` (the generator's oracle cut: 100). The policies carry no
instruction: bc.py regresses the oracle's action from pixels alone, so success measures what the images tell them.

Runs in the simulator's venv (scripts/language_table/setup.sh); the policies are evaluated by policy_server.py in the
venv that has torch (`--server-python`, default .venv/bin/python), one server per job.

  bc.py ... --arms source,source+vadapt --save-policies out/policies           # in .venv, writes ARM.seedS.*
  ~/.cache/vadapt/langtable-venv/bin/python scripts/policy_benchmark/closed_loop.py --policies out/policies \\
      --arms source.seed0,source+vadapt.seed0 --seeds 900-915 --looks rgb,appearance_0 --jobs 2 --out out/cl.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LT = os.path.join(os.path.dirname(HERE), "language_table")
sys.path.insert(0, LT)
import generate  # noqa: E402

generate._find_source()
import appearance as appearance_module  # noqa: E402
import rollout  # noqa: E402
import scene  # noqa: E402

_server = None


class Server:
    """policy_server.py in the torch venv, over pipes."""

    def __init__(self, python, policies):
        self.proc = subprocess.Popen([python, os.path.join(HERE, "policy_server.py"), policies],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def act(self, name, frames):
        _, h, w = frames.shape
        self.proc.stdin.write(f"{name} {h} {w}\n".encode() + np.ascontiguousarray(frames, np.uint8).tobytes())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("policy_server.py exited")
        return np.asarray([float(v) for v in line.split()], np.float32)


def _init(python, policies):
    global _server
    _server = Server(python, policies)


def run(task):
    """One episode: (seed, look, policy name, policy size, max steps) -> result dict."""
    seed, look, name, size, max_steps = task
    reward, block_mode = generate.task_of_seed(seed)
    native = scene.NATIVE_SIZE
    with tempfile.TemporaryDirectory() as textures:
        np.random.seed(seed)  # the oracle's planner, as generate.py's reset uses it
        env, oracle = scene.make_env(reward, block_mode, seed)
        scene.reset_with_plan(env, oracle)
        world = scene.RenderWorld(block_mode, textures)
        try:
            world.sync(env.pybullet_client)
            params, k = None, None
            if look != "rgb":
                k = int(look.removeprefix("appearance_"))
                params = rollout._draw_appearances(world, env, seed, k + 1, native, native)[k]
            prev, success, step = None, False, 0
            t0 = time.perf_counter()
            while step < max_steps:
                world.sync(env.pybullet_client)
                if params is None:
                    frame = env.render_default(native)
                else:
                    frame = appearance_module.post_process(world.render(native, params), params,
                                                           np.random.default_rng([seed, k, step]))
                small = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
                x = np.concatenate([small if prev is None else prev, small])
                prev = small
                _, _, done, _ = env.step(_server.act(name, x))
                step += 1
                if done:
                    success = True
                    break
        finally:
            world.close()
            env.pybullet_client.disconnect()
    return {"seed": seed, "look": look, "policy": name, "success": success, "steps": step,
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", required=True, help="bc.py --save-policies directory")
    p.add_argument("--arms", required=True, help="policy names in it, comma-separated (e.g. source.seed0)")
    p.add_argument("--seeds", default="900-915", help="environment seeds (0-999; the held-out set: 900-931)")
    p.add_argument("--looks", default="rgb,appearance_0", help="rgb and/or appearance_K, comma-separated")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--server-python", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), ".venv/bin/python"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    seeds = generate.parse_seeds(args.seeds)
    names = args.arms.split(",")
    looks = args.looks.split(",")
    sizes = {}
    for n in names:
        meta = os.path.join(args.policies, n + ".json")
        if not os.path.isfile(meta):
            sys.exit(f"{meta}: no such policy (bc.py --save-policies writes ARM.seedS.json)")
        sizes[n] = tuple(json.load(open(meta))["size"])
    tasks = [(s, lk, n, sizes[n], args.max_steps) for s in seeds for lk in looks for n in names]
    t0 = time.perf_counter()
    results = []
    with Pool(args.jobs, initializer=_init, initargs=(args.server_python, args.policies)) as pool:
        for r in pool.imap_unordered(run, tasks):
            results.append(r)
            print(f"[closed-loop] seed {r['seed']} {r['look']} {r['policy']}: "
                  f"{'success' if r['success'] else 'fail'} in {r['steps']} steps ({r['seconds']} s)", flush=True)
    summary = {}
    for n in names:
        for lk in looks + ["out_of_domain"]:
            rs = [r for r in results if r["policy"] == n and (r["look"] == lk or (lk == "out_of_domain" and r["look"] != "rgb"))]
            if rs:
                summary.setdefault(n, {})[lk] = {"success": float(np.mean([r["success"] for r in rs])), "episodes": len(rs)}
    out = {"config": vars(args), "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
           "episodes": sorted(results, key=lambda r: (r["seed"], r["look"], r["policy"]))}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.out)
    print("| policy | " + " | ".join(f"success, {lk}" for lk in looks + ["out_of_domain"]) + " |")
    for n in names:
        cells = [f"{summary[n][lk]['success'] * 100:.0f}% ({summary[n][lk]['episodes']})" if lk in summary[n] else "-"
                 for lk in looks + ["out_of_domain"]]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
