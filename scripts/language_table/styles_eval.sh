#!/usr/bin/env bash
# Issue 21's styles bar for the styled targets of a pipeline (default pipelines/language_table.toml): each styled
# target against the simulator's own renders of its look on the same states. The unseen evaluation seeds (900-907)
# are generated with every appearance camera fixed to a target's pool look (generate.py --looks: appearance_0 =
# pool-005, the fabric-crimson still's look, appearance_1 = pool-019, painted-grey-violet's; same states and motion as
# out/language_table/eval, whose rgb camera is bit-identical), the pipeline augments their default look, and
# `vadapt eval` scores each styled target and sim_aug against the look's camera at 90x160: histogram distance
# (the bar: the styled target's at least 40% lower than sim_aug's) and edge correlation with the source (bar 0.5).
# Development time (the simulator venv, scripts/language_table/setup.sh); about 3 minutes to generate with
# --jobs 2 and 3 to augment on 2 cores.
#
#   bash scripts/language_table/styles_eval.sh [PIPELINE] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-$HOME/.cache/vadapt/langtable-venv/bin/python}"
V="${VADAPT:-target/release/vadapt}"
PIPELINE="${1:-pipelines/language_table.toml}"
OUT="${2:-out/language_table/styles_eval}"
LOOKS=${LOOKS:-out/language_table/eval_looks}
# target name : its look's camera in $LOOKS (PAIRS="a:appearance_0 b:appearance_1 ..." scores other targets
# against another LOOKS, e.g. candidates on other seeds)
read -r -a PAIRS <<< "${PAIRS:-fabric_crimson:appearance_0 painted_grey_violet:appearance_1}"
[ -d "$LOOKS/meta" ] || "$PY" scripts/language_table/generate.py --out "$LOOKS" --seeds 900-907 --size 180x320 \
    --appearance-pool 64 --looks 5,19 --jobs 2
rm -rf "$OUT"
"$V" augment --pipeline "$PIPELINE" --input "$LOOKS" --output "$OUT" --threads 2 --quiet
for pair in "${PAIRS[@]}"; do
    target=${pair%%:*}; cam=${pair#*:}
    for key in "$target" sim_aug; do
        echo "== $key against the $target look ($cam)"
        "$V" eval "$OUT" --key "observation.images.$key" --condition-key observation.images.rgb \
            --reference-key "observation.images.$cam" --size 90x160 --json "$OUT.$key.$cam.json"
    done
done
