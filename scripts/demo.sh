#!/usr/bin/env bash
# The main job on the bundled data: set up, build, then run vadapt end to end. Output lands in out/demo/.
# (Today: procedural sample data -> RLDS -> LeRobot v3.0 conversion -> inspect. The augmentation pipeline with the
# demo models replaces the middle steps as it lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
VADAPT_SKIP_PYTHON=1 bash scripts/setup.sh
cargo build --release
VADAPT=target/release/vadapt
OUT=out/demo
rm -rf "$OUT"
mkdir -p "$OUT"
"$VADAPT" sample-data --out "$OUT/sample" --episodes 4 --frames 24
"$VADAPT" convert "$OUT/sample/rlds" "$OUT/from_rlds"
"$VADAPT" inspect "$OUT/from_rlds"
"$VADAPT" inspect datasets/sample/lerobot
echo "demo: wrote $OUT" >&2
