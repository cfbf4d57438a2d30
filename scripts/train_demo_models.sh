#!/usr/bin/env bash
# Retrain the demo models from scratch, reproducibly (same seeds, same bytes on the same machine):
#   1. procedural training data: 64 paired sim/real episodes and 160 styled episodes at 48x80;
#   2. `vadapt train` with pipelines/train_{edge_to_sim,edge_to_real,prior}.toml (runs in out/train/<name>/);
#   3. copy each final EMA model to models/demo/<name>/ (what pipelines/demo.toml loads).
# Usage: scripts/train_demo_models.sh [edge_to_sim edge_to_real prior]   (default: all three)
# Runs resume where they stopped (checkpoints every 50-100 steps): re-run the script after an interruption.
# Time on 2 laptop cores: about 3.4 s per step for the edge models (500 steps each), roughly twice that for the prior (3000 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
VADAPT=target/release/vadapt
if [ ! -d out/demo_train_data/lerobot ]; then
    "$VADAPT" sample-data --out out/demo_train_data --episodes 64 --frames 32 --size 48x80 --seed 1
fi
if [ ! -d out/demo_train_styled/lerobot ]; then
    "$VADAPT" sample-data --out out/demo_train_styled --episodes 160 --frames 32 --size 48x80 --seed 2 --styles
fi
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(edge_to_sim edge_to_real prior)
for n in "${models[@]}"; do
    resume=()
    [ -d "out/train/$n/checkpoints" ] && resume=(--resume)
    "$VADAPT" train --config "pipelines/train_$n.toml" "${resume[@]}"
    rm -rf "models/demo/$n"
    mkdir -p models/demo
    cp -r "out/train/$n/model" "models/demo/$n"
    cp "out/train/$n/loss.png" "models/demo/$n/loss.png"
    echo "models/demo/$n: $(du -sh "models/demo/$n" | cut -f1)" >&2
done
