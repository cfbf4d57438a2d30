#!/usr/bin/env bash
# Retrain the demo models from scratch, reproducibly (same seeds, one thread per run: the same bytes on any machine
# with the same build):
#   1. procedural training data: 64 paired sim/real episodes and 160 styled episodes at 48x80;
#   2. `vadapt train` with pipelines/train_{edge_to_sim,edge_to_real,prior,sr_48x80}.toml, the runs side by side, one
#      thread each (on 2 cores this beats running them one after another with 2 threads each: candle's backward
#      pass scales poorly across threads at these sizes); runs live in out/train/<name>/;
#   3. copy each final EMA model to models/demo/<name>/ (what pipelines/demo.toml loads).
# Usage: scripts/train_demo_models.sh [edge_to_sim edge_to_real prior sr_48x80]   (default: all four)
# Runs resume where they stopped (checkpoints every 50 steps): re-run the script after an interruption.
# Time on 2 laptop cores, all three together: 4-6 s per step per run, about an hour for the edge models' 800 steps.
# sr_48x80 (the 24x40 -> 48x80 super-resolution stage, no text encoder) costs 10-11 s per step on one otherwise idle
# core (48x80 convolutions), 15-25 s beside other work: its 350 steps took 95 minutes beside builds and another
# training run (final loss 0.0123, mean 0.0153 over the last 50 steps). At 350 steps it is undertrained: objects are
# in place but their colours are off, and it does not yet beat its upsampled input: on one window of each of the 4
# held-out episodes, PSNR 23.4 dB vs 27.6 dB for the plain upsampled input, SSIM 0.73 vs 0.90 (examples/sr_psnr.rs;
# 20.0 dB at step 100). More steps are needed before it helps a cascade.
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
[ ${#models[@]} -eq 0 ] && models=(edge_to_sim edge_to_real prior sr_48x80)
# How the shipped models were trained: 400 steps, then resumed to the recipe's 800 (the cosine schedule restarts at
# the resume; `steps` may change on resume). A run interrupted in the first phase continues straight into the second.
# The prior has more phases (docs/results.md, "Teaching the prior its style words"): 400 steps, resumed to 550,
# resumed under a 4000-step schedule and stopped at 1400 (byte tokens: it denoises but ignores the style words);
# then pipelines/train_prior_words.toml starts from that model with word tokens, offset noise and late-timestep
# sampling (out/train/prior_words, 750 steps, about an hour alone on 2 cores), and that is the shipped prior.
# sr_48x80 trains straight to its recipe's 350 steps (the shipped model's first 50 steps ran under a 450-step
# schedule, then it was resumed with steps = 350 to finish in time: the learning rates of those 50 steps differ by
# under 1%).
latest_step() { # the newest checkpoint's step of run $1, or nothing
    ls "out/train/$1/checkpoints" 2>/dev/null | sed -n 's/^step-0*//p' | sort -n | tail -1
}
train_prior() {
    local run=(env RAYON_NUM_THREADS=1 "$VADAPT" train --config pipelines/train_prior.toml)
    [ -n "$(latest_step prior)" ] || "${run[@]}" --steps 400 || return 1
    [ "$(latest_step prior)" -ge 550 ] || "${run[@]}" --resume --stop-after $((550 - $(latest_step prior))) || return 1
    if [ "$(latest_step prior)" -lt 1400 ]; then
        "${run[@]}" --resume --steps 4000 --stop-after $((1400 - $(latest_step prior))) || return 1
    fi
    # Phase 2 as the shipped prior ran it (with 2 threads): 300 steps of the recipe's 600-step schedule, then
    # resumed under a 900-step schedule and stopped at 750.
    local words=(env RAYON_NUM_THREADS=1 "$VADAPT" train --config pipelines/train_prior_words.toml)
    [ -n "$(latest_step prior_words)" ] || "${words[@]}" --stop-after 300 || return 1
    local w
    w=$(latest_step prior_words)
    [ "$w" -ge 750 ] || "${words[@]}" --resume --steps 900 --stop-after $((750 - w))
}
train_one() {
    local n=$1
    if [ "$n" = prior ]; then
        train_prior
        return
    fi
    local run=(env RAYON_NUM_THREADS=1 "$VADAPT" train --config "pipelines/train_$n.toml")
    if [ "$n" = sr_48x80 ]; then
        "${run[@]}" --resume
        return
    fi
    if [ ! -d "out/train/$n/checkpoints" ]; then
        "${run[@]}" --steps 400 || return 1
    fi
    "${run[@]}" --resume
}
mkdir -p out/train
pids=()
for n in "${models[@]}"; do
    train_one "$n" > "out/train/$n.log" 2>&1 &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "training ${models[$i]} failed: see out/train/${models[$i]}.log" >&2; exit 1; }
done
for n in "${models[@]}"; do
    run="out/train/$n"
    [ "$n" = prior ] && run=out/train/prior_words
    rm -rf "models/demo/$n"
    mkdir -p models/demo
    cp -r "$run/model" "models/demo/$n"
    cp "$run/loss.png" "models/demo/$n/loss.png"
    echo "models/demo/$n: $(du -sh "models/demo/$n" | cut -f1)" >&2
done
