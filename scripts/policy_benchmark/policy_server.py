"""Serves bc.py's saved policies to closed_loop.py, which runs in the simulator's venv (no torch there): one request
per line on stdin, `POLICY H W` followed by H*W*6 bytes (frames t-1 and t, channels first, uint8), answered with one
line `dx dy` (the action, de-normalised). Run by closed_loop.py as `.venv/bin/python policy_server.py DIR`."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bc  # noqa: E402


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    policies = {}
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while line := stdin.readline():
        name, h, w = line.decode().split()
        h, w = int(h), int(w)
        frames = np.frombuffer(stdin.read(h * w * 6), np.uint8).reshape(1, 6, h, w)
        if name not in policies:
            policies[name] = bc.load_policy(root / name)
        policy, (mean, std) = policies[name]
        with torch.no_grad():
            action = policy(torch.from_numpy(frames.copy()).float().div_(255.0)).numpy()[0] * std + mean
        stdout.write(" ".join(f"{a:.9g}" for a in action) + "\n")
        stdout.flush()


if __name__ == "__main__":
    main()
