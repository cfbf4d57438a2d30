#!/usr/bin/env bash
# The 40x72 base's own outputs on the training episodes, as extra cameras, for the super-resolution stage's
# training (pipelines/train_lt_sr_92x160.toml, data.low_res_key): in training the stage then sees the base's
# actual errors (the arm drawn as a pale ghost, blocks as blobs) instead of the truth through a small size, so it
# learns to take what the base got wrong from the edges. Development-time only (CI never runs it).
#
#   bash scripts/language_table/base_outputs.sh [IN] [OUT] [CAMERAS...]
#
# IN defaults to out/language_table/train, OUT to out/language_table/train_base; CAMERAS to rgb appearance_0
# appearance_1. Each camera adds observation.images.base_<camera>: models/language_table/edge_to_sim with the
# shipped pipeline's sampler (6 trailing DDIM steps) on that camera, written at the source's size. The runs chain
# (each reads the previous one's output, the paired layout keeps every column), so OUT ends with all of them.
# Time on 2 cores (2026-12-07, Sapphire Rapids): ~0.14 s a frame, 4372 frames a camera, ~10 minutes a camera.
# PREFIX (default base_) names the new cameras PREFIX<camera>; CODEC overrides the pipeline's codec; LIMIT=N reads
# only the first N episodes (scripts/policy_benchmark/read_through.sh uses all three).
set -euo pipefail
cd "$(dirname "$0")/../.."
VADAPT="${VADAPT:-target/release/vadapt}"
IN="${1:-out/language_table/train}"
OUT="${2:-out/language_table/train_base}"
shift $(( $# > 2 ? 2 : $# )) || true
CAMERAS=("$@")
PREFIX="${PREFIX:-base_}"
codec=()
[ -z "${CODEC:-}" ] || codec=(-e "s|^codec = .*|codec = \"$CODEC\"|")
[ ${#CAMERAS[@]} -gt 0 ] || CAMERAS=(rgb appearance_0 appearance_1)
work="$OUT.parts"
mkdir -p "$work"
prev="$IN"
for cam in "${CAMERAS[@]}"; do
    step="$work/$cam"
    if [ ! -f "$step/.done" ]; then
        pipeline="$work/$PREFIX$cam.toml"
        # The shipped pipeline's base target, renamed and reading this camera.
        sed -e '/^\[\[target\]\]/,$d' -e "s|^image_key = .*|image_key = \"observation.images.$cam\"|" \
            "${codec[@]}" pipelines/language_table.toml > "$pipeline"
        sed -n '/^\[\[target\]\]/,/^$/p' pipelines/language_table.toml | sed -n '1,/^$/p' \
            | sed -e "s|^name = .*|name = \"$PREFIX$cam\"|" >> "$pipeline"
        more=(${LIMIT:+--limit "$LIMIT"})
        [ -d "$step" ] && more+=(--resume)
        "$VADAPT" augment --pipeline "$pipeline" --input "$prev" --output "$step" --threads 2 --quiet "${more[@]}"
        touch "$step/.done"
    fi
    prev="$step"
done
rm -rf "$OUT"
ln -s "$(realpath "$prev")" "$OUT"
echo "$OUT -> $prev"
