"""PNG contact sheet of a generated LanguageTable dataset: each row one state (episode, frame), the default look
(observation.images.rgb) first, then every appearance camera of the same state, captioned with its name.

  ~/.cache/vadapt/langtable-venv/bin/python scripts/language_table/contact_sheet.py DATASET OUT.png \\
      [--episodes 0,1,2,3] [--frame middle] [--scale 2]
"""

import argparse
import json
import os
import subprocess
import textwrap

import cv2
import numpy as np
import pyarrow.parquet as pq


def decode(path, size):
  h, w = size
  raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-f", "rawvideo", "-pix_fmt",
                        "rgb24", "-"], check=True, capture_output=True).stdout
  return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("dataset")
  p.add_argument("out")
  p.add_argument("--episodes", default="0,1,2,3")
  p.add_argument("--frame", default="middle", help="'first', 'middle', 'last' or a frame index")
  p.add_argument("--scale", type=int, default=2)
  a = p.parse_args()
  with open(os.path.join(a.dataset, "meta", "info.json")) as f:
    info = json.load(f)
  keys = ["observation.images.rgb"] + sorted(k for k, v in info["features"].items()
                                             if v["dtype"] == "video" and k != "observation.images.rgb")
  h, w = info["features"][keys[0]]["shape"][:2]
  eps = pq.read_table(os.path.join(a.dataset, "meta", "episodes", "chunk-000", "file-000.parquet")).to_pylist()
  rows = []
  tile_w = w * a.scale
  for ep in [int(e) for e in a.episodes.split(",")]:
    m = eps[ep]
    n = m["length"]
    frame = {"first": 0, "middle": n // 2, "last": n - 1}.get(a.frame)
    frame = int(a.frame) if frame is None else frame
    tiles = []
    for k in keys:
      path = os.path.join(a.dataset, info["video_path"].format(video_key=k, chunk_index=m[f"videos/{k}/chunk_index"],
                                                                 file_index=m[f"videos/{k}/file_index"]))
      img = decode(path, (h, w))[frame]
      img = cv2.resize(img, (tile_w, h * a.scale), interpolation=cv2.INTER_NEAREST)
      caption = m.get(f"appearance/{k}/name") or f"default look: {m['tasks'][0]} (seed {m['language_table/seed']})"
      lines = textwrap.wrap(f"{k.split('.')[-1]} f{frame}: {caption}", width=max(20, tile_w // 9))
      band = np.full((14 * len(lines) + 4, tile_w, 3), 255, np.uint8)
      for i, line in enumerate(lines):
        cv2.putText(band, line, (3, 13 + 14 * i), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1, cv2.LINE_AA)
      tiles.append((img, band))
    band_h = max(b.shape[0] for _, b in tiles)
    cells = [np.concatenate([img, np.pad(b, ((0, band_h - b.shape[0]), (0, 0), (0, 0)), constant_values=255)])
             for img, b in tiles]
    rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=128) for c in cells], 1))
  sheet = np.concatenate(rows, 0)
  cv2.imwrite(a.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
  print(f"contact_sheet.py: wrote {a.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
  main()
