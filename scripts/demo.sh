#!/usr/bin/env bash
# The main job on the bundled data: set up, build, then augment
# * the bundled LanguageTable sample (datasets/language_table: 6 real simulator episodes) with the LanguageTable models
#   (pipelines/language_table.toml: sim_aug, any appearance -> the simulator's default look, and two restyled
#   looks after reference stills), into
#   out/demo/language_table (+ language_table_preview.png);
# * the procedural sample (datasets/sample/lerobot) with the demo models (pipelines/demo.toml: edge-to-sim,
#   edge-to-real, and two styled compositions with the demo prior), into out/demo/augmented (+ preview.png).
# Each output is a LeRobot v3.0 dataset: every source column, plus one camera per target; previews have rows source,
# edges, each target, and time in columns.
set -euo pipefail
cd "$(dirname "$0")/.."
VADAPT_SKIP_PYTHON=1 bash scripts/setup.sh
cargo build --release
VADAPT=target/release/vadapt
OUT=out/demo
rm -rf "$OUT"
mkdir -p "$OUT"
"$VADAPT" augment --pipeline pipelines/language_table.toml --input datasets/language_table \
    --output "$OUT/language_table"
"$VADAPT" preview "$OUT/language_table" --out "$OUT/language_table_preview.png"
"$VADAPT" augment --pipeline pipelines/demo.toml --input datasets/sample/lerobot --output "$OUT/augmented"
"$VADAPT" preview "$OUT/augmented" --out "$OUT/preview.png"
"$VADAPT" inspect "$OUT/augmented"
echo "demo: wrote $OUT/language_table (preview: $OUT/language_table_preview.png) and $OUT/augmented" \
    "(preview: $OUT/preview.png)" >&2
