#!/bin/bash
# The restyle model against issue 21's styles bar (docs/results.md, "Restyle"): every episode of EVAL (generated,
# seeds no model saw: 900-907) rendered from its default look's edges with a still of its appearance_0 camera (the
# episode's last frame) as the reference, scored against that camera at 90x160; sim_aug (the shipped edge_to_sim)
# alongside as the histogram baseline. Development time: needs the interop venv (PyAV, pyarrow) for the stills.
# About 6 minutes for 8 episodes (400 frames) on 2 cores.
#
#   bash scripts/language_table/restyle_eval.sh models/language_table/restyle out/language_table/eval out/restyle_eval
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$(realpath "$1"); EVAL=$(realpath "$2"); OUT=$3
V=$PWD/target/release/vadapt; PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/refs"
"$PY" - "$EVAL" "$OUT/refs" <<'PY'
import sys, glob, av, pyarrow.parquet as pq
root, out = sys.argv[1], sys.argv[2]
key = "observation.images.appearance_0"
for ep in pq.read_table(glob.glob(f"{root}/meta/episodes/chunk-*/*.parquet")[0]).to_pylist():
    c, f = ep[f"videos/{key}/chunk_index"], ep[f"videos/{key}/file_index"]
    t0, t1 = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"]
    with av.open(f"{root}/videos/{key}/chunk-{c:03d}/file-{f:03d}.mp4") as cont:
        last = [fr for fr in cont.decode(video=0) if t0 - 1e-3 <= float(fr.pts * fr.time_base) < t1 - 1e-3][-1]
    last.to_image().save(f"{out}/e{ep['episode_index']}.png")
PY
N=$(ls "$OUT/refs" | wc -l)
for ((e = 0; e < N; e++)); do
  cat > "$OUT/e$e.toml" <<TOML
seed = 0
[input]
image_key = "observation.images.rgb"
[output]
layout = "paired"
codec = "h264"
[[target]]
name = "sim_aug"
adapter = "$PWD/models/language_table/edge_to_sim"
guidance = 1.0
steps = 10
window_overlap = 2
[[target]]
name = "restyled"
adapter = "$MODEL"
reference = "$(realpath "$OUT/refs/e$e.png")"
guidance = 1.0
steps = 10
window_overlap = 2
TOML
  rm -rf "$OUT/e$e"
  "$V" augment --pipeline "$OUT/e$e.toml" --input "$EVAL" --output "$OUT/e$e" --shard "$e/$N" --threads 2 --quiet
  for k in sim_aug restyled; do
    "$V" eval "$OUT/e$e" --key "observation.images.$k" --condition-key observation.images.rgb \
        --reference-key observation.images.appearance_0 --size 90x160 --json "$OUT/e$e.$k.json" > /dev/null
  done
done
"$PY" - "$OUT" <<'PY'
import json, sys, glob
out = sys.argv[1]
for k in ["sim_aug", "restyled"]:
    tot, n = {}, 0
    for f in sorted(glob.glob(f"{out}/e*.{k}.json")):
        for _, m in json.load(open(f))["episodes"]:
            n += m["frames"]
            for q in ["histogram_distance", "edge_correlation", "psnr", "ssim"]:
                tot[q] = tot.get(q, 0) + m["frames"] * m[q]
    print(k, {q: round(v / n, 4) for q, v in tot.items()}, "frames", n)
PY
