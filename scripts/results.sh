#!/usr/bin/env bash
# Reproduce docs/results.md: held-out procedural episodes (a seed no training set used) -> every target of
# pipelines/results.toml -> `vadapt eval` of each against its paired ground truth -> out/results/table.md.
# Needs the demo models in models/demo/ (shipped; scripts/train_demo_models.sh retrains them). ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
V=target/release/vadapt
R=out/results
EPISODES=${EPISODES:-4}
rm -rf "$R"
mkdir -p "$R"
"$V" sample-data --out "$R/heldout" --episodes "$EPISODES" --frames 16 --size 48x80 --seed 11 --styles
"$V" augment --pipeline pipelines/results.toml --input "$R/heldout/lerobot" --output "$R/augmented"
"$V" preview "$R/augmented" --out "$R/preview.png"
ev() { # row-name camera ground-truth-camera
    "$V" eval "$R/augmented" --key "observation.images.$2" --condition-key observation.images.real \
        --reference-key "observation.images.$3" --size 24x40 --json "$R/eval_$1.json" >/dev/null
}
# Reconstruction of the paired renderings from the real camera's edges, and the trivial baseline: the input camera
# itself, area-downsampled to 24x40 (a blur), scored against the same ground truth.
ev "input vs sim" real sim
ev "edge_to_sim vs sim" sim_aug sim
ev "edge_to_real vs real" real_aug real
# Styles (ground truth: the styled camera, the episode's motion in the style its task names).
ev "input vs styled" real styled
for t in sim_aug prior_alone composed_l01 composed_l02 composed_l04 composed_l06 cfg_mix_l04; do
    ev "$t vs styled" "$t" styled
done
python3 - "$R" <<'PY' > "$R/table.md"
import glob, json, os, sys
rows = []
for p in sorted(glob.glob(os.path.join(sys.argv[1], "eval_*.json")), key=os.path.getmtime):
    m = json.load(open(p))["mean"]
    name = os.path.basename(p)[5:-5]
    rows.append(f"| {name} | {m['edge_correlation']:.3f} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                f"{m['flicker']:.2f} ({m['reference_flicker']:.2f}) | {m['histogram_distance']:.3f} | {m['frechet_distance']:.3f} |")
print("| output vs ground truth | edge corr. ↑ | PSNR dB ↑ | SSIM ↑ | flicker (truth) | hist. dist. ↓ | Fréchet ↓ |")
print("| --- | --- | --- | --- | --- | --- | --- |")
print("\n".join(rows))
PY
cat "$R/table.md"
echo "results: $R/table.md, preview $R/preview.png" >&2
