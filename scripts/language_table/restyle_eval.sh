#!/bin/bash
# The restyle model against issue 21's styles bar (docs/results.md, "Restyle"): every episode of EVAL (generated,
# seeds no model saw: 900-907) rendered from its default look's edges with a still of an appearance_0 camera (that
# episode's last frame) as the reference, scored against the episode's own appearance_0 camera at 90x160; sim_aug
# (the shipped edge_to_sim) alongside as the histogram baseline.
#
# SHIFT=k takes the still from episode (e + k) mod N instead: another scene, as augmentation gives the model. Then
# the look is the other episode's and the histogram is not comparable, but the geometry is what matters: the
# restyled video is read back to the default look by sim_aug (a round trip) and scored against the source camera.
# A model that pastes the still's blocks and arm fails it; the baseline is sim_aug from the episode's own
# appearance_0 camera (issue 21's real-to-sim number), which the script scores beside it.
#
# Development time: needs the interop venv (PyAV, pyarrow) for the stills. About 6 minutes for 8 episodes (400
# frames) on 2 cores, twice that with SHIFT.
#
#   bash scripts/language_table/restyle_eval.sh models/language_table/restyle out/language_table/eval out/restyle_eval
#   SHIFT=1 bash scripts/language_table/restyle_eval.sh models/language_table/restyle out/language_table/eval out/rt
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$(realpath "$1"); EVAL=$(realpath "$2"); OUT=$3
V=$PWD/target/release/vadapt; PY=${PY:-.venv/bin/python}; SHIFT=${SHIFT:-0}
SIM=$PWD/models/language_table/edge_to_sim
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
# A one-target pipeline over IMAGE_KEY: name, adapter, optional reference.
pipeline() {
  printf 'seed = 0\n[input]\nimage_key = "observation.images.%s"\n[output]\nlayout = "paired"\ncodec = "h264"\n' "$1"
  shift
  while [ $# -gt 0 ]; do
    printf '[[target]]\nname = "%s"\nadapter = "%s"\nguidance = 1.0\nsteps = 6\nwindow_overlap = 2\n' "$1" "$2"
    [ -n "$3" ] && printf 'reference = "%s"\n' "$3"
    shift 3
  done
}
for ((e = 0; e < N; e++)); do
  ref=$(realpath "$OUT/refs/e$(( (e + SHIFT) % N )).png")
  pipeline rgb sim_aug "$SIM" "" restyled "$MODEL" "$ref" > "$OUT/e$e.toml"
  rm -rf "$OUT/e$e"
  "$V" augment --pipeline "$OUT/e$e.toml" --input "$EVAL" --output "$OUT/e$e" --shard "$e/$N" --threads 2 --quiet
  for k in sim_aug restyled; do
    "$V" eval "$OUT/e$e" --key "observation.images.$k" --condition-key observation.images.rgb \
        --reference-key observation.images.appearance_0 --size 90x160 --json "$OUT/e$e.$k.json" > /dev/null
  done
  [ "$SHIFT" = 0 ] && continue
  # The round trip: the restyled video and the true appearance_0 camera, each read back by sim_aug.
  for input in restyled appearance_0; do
    pipeline "$input" "back" "$SIM" "" > "$OUT/rt$e.$input.toml"
    rm -rf "$OUT/rt$e.$input"
    "$V" augment --pipeline "$OUT/rt$e.$input.toml" --input "$OUT/e$e" --output "$OUT/rt$e.$input" --threads 2 --quiet
    "$V" eval "$OUT/rt$e.$input" --key observation.images.back --condition-key "observation.images.$input" \
        --reference-key observation.images.rgb --size 90x160 --json "$OUT/e$e.back_from_$input.json" > /dev/null
  done
done
"$PY" - "$OUT" <<'PY'
import json, sys, glob
out = sys.argv[1]
for k in ["sim_aug", "restyled", "back_from_restyled", "back_from_appearance_0"]:
    tot, n = {}, 0
    for f in sorted(glob.glob(f"{out}/e*.{k}.json")):
        for _, m in json.load(open(f))["episodes"]:
            n += m["frames"]
            for q in ["histogram_distance", "edge_correlation", "psnr", "ssim"]:
                tot[q] = tot.get(q, 0) + m["frames"] * m[q]
    if n:
        print(k, {q: round(v / n, 4) for q, v in tot.items()}, "frames", n)
PY
