#!/usr/bin/env bash
# The main job on the bundled data: set up, build, then run vadapt end to end. Output lands in out/demo/.
# Today: procedural LanguageTable-like episodes (sim + real renderings of the same motion) -> LeRobot v3.0 and RLDS,
# RLDS -> LeRobot v3.0 conversion, inspection of what was written and of the bundled sample. The augmentation
# pipeline with the demo models (`vadapt augment --pipeline pipelines/demo.toml`) replaces the middle steps as it
# lands (issues 6 and 7).
set -euo pipefail
cd "$(dirname "$0")/.."
VADAPT_SKIP_PYTHON=1 bash scripts/setup.sh
cargo build --release
VADAPT=target/release/vadapt
OUT=out/demo
rm -rf "$OUT"
mkdir -p "$OUT"
"$VADAPT" sample-data --out "$OUT/sample" --episodes 4 --frames 24 --size 90x160 --preview "$OUT/sample_preview.png"
"$VADAPT" convert "$OUT/sample/rlds" "$OUT/from_rlds"
"$VADAPT" inspect "$OUT/from_rlds"
"$VADAPT" inspect datasets/sample/lerobot
echo "demo: wrote $OUT (preview: $OUT/sample_preview.png)" >&2
