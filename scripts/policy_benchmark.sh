#!/usr/bin/env bash
# The policy benchmark: what vadapt's augmented episodes are worth to a policy (docs/results.md, "Policy benchmark").
#
#   1. N source episodes in the default look (`sample-data`, seed 21: no demo model trained on it), camera `real`;
#   2. vadapt augments them with $PIPELINE (default pipelines/demo.toml, its four targets) in the expanded layout:
#      one episode per (source episode, target), the generated video under the source camera's key;
#   3. held-out evaluation episodes (seed 22) with paired cameras of the same states: `real` (in-domain) and
#      `styled` in appearances no demo model and no policy saw (`sample-data --held-out-styles`: green felt,
#      magenta light, spotlight); or any LeRobot dataset with paired cameras: EVAL=DIR IN_KEY=... OUT_KEY=...;
#   4. scripts/policy_benchmark/bc.py trains a small CNN behaviour-cloning policy with the same number of steps on
#      (a) the source episodes, (b) the source plus the augmented episodes, and (c) for reference the source with
#      classical photometric jitter (no model), over $SEEDS seeds, and reports the action error in- and out-of-domain.
#
# Any LeRobot source instead of the procedural one: SOURCE=DIR IN_KEY=<its camera>; TARGETS=a,b trains only on those
# targets' episodes of the augmented output (e.g. the variants of a pipeline with keep_source = true); OUT_KEY may
# list several paired cameras (comma-separated, pooled). LanguageTable (docs/results.md, "Policy benchmark on
# LanguageTable"; datasets from scripts/language_table/generate.py, seeds 0-85 and 900-931; PIPELINE an expanded
# pipeline with keep_source = true whose randomized target is named in TARGETS):
#   SOURCE=DIR EVAL=DIR IN_KEY=observation.images.rgb TARGETS=randomized PIPELINE=... OUT=out/policy_benchmark_lt \
#   OUT_KEY=observation.images.appearance_0,observation.images.appearance_1,observation.images.appearance_2,observation.images.appearance_3 \
#   bash scripts/policy_benchmark.sh
# Writes out/policy_benchmark/{results.json,table.md}. Needs the interop venv (.venv, `bash scripts/setup.sh`).
# Runtime with the defaults (32 source episodes x 24 frames at 48x80, 24 held-out episodes, 3 arms x 2 seeds x
# 1000 steps), measured on 2 cores shared with four other jobs (load ~12): sample-data ~2 minutes, augment
# 33 minutes wall (11.5 CPU-minutes: 128 episode-target units of 6 DDIM steps), policies 6 minutes per run, 38 in
# all at one thread each; about 75 minutes wall. On 2 free cores expect about 20 minutes. Steps whose outputs exist
# are reused (delete $R to redo). Quick look: EPISODES=8 STEPS=300 SEEDS=1 bash scripts/policy_benchmark.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
V=target/release/vadapt
PY=${VADAPT_PYTHON:-.venv/bin/python}
R=${OUT:-out/policy_benchmark}
EPISODES=${EPISODES:-32}
EVAL_EPISODES=${EVAL_EPISODES:-24}
FRAMES=${FRAMES:-24}
SIZE=${SIZE:-48x80}
PIPELINE=${PIPELINE:-pipelines/demo.toml}
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-2}
IN_KEY=${IN_KEY:-observation.images.real}
OUT_KEY=${OUT_KEY:-observation.images.styled}
[ -x "$PY" ] || { echo "$PY is missing: run bash scripts/setup.sh (or set VADAPT_PYTHON)" >&2; exit 1; }
mkdir -p "$R"
t0=$(date +%s)

if [ -z "${SOURCE:-}" ]; then
    [ -d "$R/source/lerobot" ] ||
        "$V" sample-data --out "$R/source" --episodes "$EPISODES" --frames "$FRAMES" --size "$SIZE" --seed 21
    SOURCE="$R/source/lerobot"
fi
if [ -z "${EVAL:-}" ]; then
    [ -d "$R/heldout/lerobot" ] ||
        "$V" sample-data --out "$R/heldout" --episodes "$EVAL_EPISODES" --frames "$FRAMES" --size "$SIZE" \
            --seed 22 --held-out-styles
    EVAL="$R/heldout/lerobot"
fi
t1=$(date +%s)

# The pipeline in the expanded layout (a pipeline that already says so is taken as it is).
sed 's/^layout = "paired".*/layout = "expanded"/' "$PIPELINE" > "$R/pipeline.toml"
grep -q '^layout = "expanded"' "$R/pipeline.toml" ||
    { echo "$PIPELINE: could not set layout = \"expanded\"" >&2; exit 1; }
[ -d "$R/augmented" ] ||
    "$V" augment --pipeline "$R/pipeline.toml" --input "$SOURCE" --output "$R/augmented" \
        --threads "${THREADS:-2}" --quiet
t2=$(date +%s)

"$PY" scripts/policy_benchmark/bc.py --source "$SOURCE" --augmented "$R/augmented" --eval "$EVAL" \
    ${TARGETS:+--targets "$TARGETS"} \
    --in-key "$IN_KEY" --out-key "$OUT_KEY" --size "$SIZE" --steps "$STEPS" --seeds "$SEEDS" \
    --threads "${BC_THREADS:-1}" --out "$R/results.json" > "$R/table.md"
t3=$(date +%s)
cat "$R/table.md"
echo "policy benchmark: data $((t1 - t0)) s, augment $((t2 - t1)) s, policies $((t3 - t2)) s; $R/table.md" >&2
