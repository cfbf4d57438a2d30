#!/usr/bin/env bash
# The main job on the bundled data: set up, build, then augment the bundled sample dataset with the bundled demo
# models (pipelines/demo.toml: edge-to-sim, edge-to-real, and two styled compositions with the demo prior).
# Writes out/demo/augmented (a LeRobot v3.0 dataset: every source column, plus one camera per target) and
# out/demo/preview.png (rows: source, edges, each target; columns: time).
set -euo pipefail
cd "$(dirname "$0")/.."
VADAPT_SKIP_PYTHON=1 bash scripts/setup.sh
cargo build --release
VADAPT=target/release/vadapt
OUT=out/demo
rm -rf "$OUT"
mkdir -p "$OUT"
"$VADAPT" augment --pipeline pipelines/demo.toml --input datasets/sample/lerobot --output "$OUT/augmented"
"$VADAPT" preview "$OUT/augmented" --out "$OUT/preview.png"
"$VADAPT" inspect "$OUT/augmented"
echo "demo: wrote $OUT/augmented (preview: $OUT/preview.png)" >&2
