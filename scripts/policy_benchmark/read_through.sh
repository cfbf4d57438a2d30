#!/usr/bin/env bash
# The policy benchmark's test-time arm (docs/results.md, "Reading new looks back through sim_aug"): a copy of an
# evaluation dataset in which each listed camera is also read back to the simulator's default look by sim_aug, so
# that a policy trained on the default look alone can be scored on what edge_to_sim makes of new looks. Writes
# OUT with every column of EVAL plus observation.images.canon_<camera> per camera (paired layout, chained: one
# `vadapt augment` per camera, each over the previous one's output), with the pipeline's sim_aug target alone
# (the base at 40x72, no SR stage: the policy reads 48x80).
#
#   bash scripts/policy_benchmark/read_through.sh EVAL OUT rgb appearance_0 appearance_1 ...
#   # then: bc.py --source SOURCE --eval OUT --in-key observation.images.canon_rgb \
#   #          --out-key observation.images.canon_appearance_0,... --arms source ...
#
# LIMIT=N reads only the first N episodes (a quick check). ~0.15 s a frame on 2 cores (1695 frames x 5 cameras of seeds 900-931: ~20 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
V="${VADAPT:-target/release/vadapt}"
PIPELINE="${PIPELINE:-pipelines/language_table.toml}"
[ $# -ge 3 ] || { echo "usage: $0 EVAL OUT CAMERA..." >&2; exit 2; }
EVAL=$1 OUT=$2
shift 2
[ -f "$OUT/meta/info.json" ] && { echo "$OUT exists"; exit 0; }
mkdir -p "$OUT.parts"
input=$EVAL
for cam in "$@"; do
    part="$OUT.parts/$cam"
    toml="$OUT.parts/$cam.toml"
    # sim_aug alone, renamed canon_<camera>, reading <camera>; H.264 (the policy decodes it with lerobot's pyav).
    awk -v cam="$cam" '
        /^\[\[target\]\]/ { n++ }
        n >= 2 { next }
        /^image_key = / { print "image_key = \"observation.images." cam "\""; next }
        /^codec = / { print "codec = \"h264\""; next }
        /^name = "sim_aug"/ { print "name = \"canon_" cam "\""; next }
        { print }' "$PIPELINE" > "$toml"
    grep -q "^name = \"canon_$cam\"" "$toml" || { echo "$PIPELINE: no sim_aug target to read $cam with" >&2; exit 1; }
    [ -f "$part/meta/info.json" ] ||
        "$V" augment --pipeline "$toml" --input "$input" --output "$part" --threads "${THREADS:-2}" ${LIMIT:+--limit "$LIMIT"} --quiet
    input=$part
done
mv "$input" "$OUT"
rm -rf "$OUT.parts"
echo "wrote $OUT: $(printf 'observation.images.canon_%s ' "$@")"
