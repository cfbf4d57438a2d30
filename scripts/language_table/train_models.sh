#!/usr/bin/env bash
# Replays the LanguageTable models from scratch: simulator data, training, export, evaluation. Development-time only
# (CI never runs it: it needs the simulator venv and hours of CPU). Environment seeds 0-999 only (1000+ are reserved
# for acceptance checks): training seeds 0-85, evaluation seeds 900-907.
#
#   bash scripts/language_table/train_models.sh            # every stage; each resumes where it stopped
#   STOP_AFTER=300 bash scripts/language_table/train_models.sh   # train at most 300 more steps, then export + eval
#
# Time on 2 cores (2026-12-06, beside builds): data 86 episodes x 5 cameras at 180x320 ~50 min with --jobs 2
# (66 s an episode alone); edge_to_sim 1.3-1.5 s a step at 40x72 since the training kernels got their own backward
# (session 12; 8-12 s before), batch 2, 8 frames, 1.7 M parameters, 2 threads, so its recipe's 3000 steps take about
# 70 minutes on a quiet machine (the shipped run was split across sessions); it resumes bit-exactly from
# out/train/lt_edge_to_sim/checkpoints (or, without that directory, from the shipped F16 model with
# model.init_from: a warm restart with fresh AdamW moments); its continuation (stage 3a) 4000 more steps, ~75 minutes
# at ~1.1 s a step on 2 Sapphire Rapids cores. sr_92x160 (stage 3b): the base's outputs on three
# cameras ~33 minutes, then 800 steps at 92x160, batch 1, 1.2 M parameters, 2.2 s a step on 2 Sapphire Rapids cores
# (31 minutes; 5-6 s a step on the older EPYC hosts). Evaluation: 8 episodes ~2 min with --threads 2 for the base
# alone, ~2.5 min with the SR stage (Sapphire Rapids).
# The restyle model (stage 5): its pooled-look data ~25 minutes, 1000 steps ~17 minutes, evaluation ~15 minutes.
# edge_to_real (stage 6, session 20): its photo-look data 7 minutes with --jobs 2, 1500 steps ~28 minutes alone
# (35 beside other work), evaluation 1 minute.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-$HOME/.cache/vadapt/langtable-venv/bin/python}"
VADAPT="${VADAPT:-target/release/vadapt}"
DATA=out/language_table
[ -x "$VADAPT" ] || cargo build --release

# 1. Data from the real simulator (scripts/language_table/README.md).
bash scripts/language_table/setup.sh >/dev/null
[ -d "$DATA/train/meta" ] || "$PY" scripts/language_table/generate.py --out "$DATA/train" --seeds 0-85 \
    --size 180x320 --appearances 4 --jobs 2
[ -d "$DATA/eval/meta" ] || "$PY" scripts/language_table/generate.py --out "$DATA/eval" --seeds 900-907 \
    --size 180x320 --appearances 4 --jobs 2

# train_or_continue RUN NAME: pipelines/train_lt_NAME.toml into RUN, resumed from RUN's checkpoints; without them,
# a warm restart from the shipped models/language_table/NAME (model.init_from: fresh AdamW moments) unless
# FROM_SCRATCH is set.
train_or_continue() {
    local recipe="pipelines/train_lt_$2.toml"
    local more=(${STOP_AFTER:+--stop-after "$STOP_AFTER"})
    if [ -d "$1/checkpoints" ]; then
        more+=(--resume)
    elif [ -d "models/language_table/$2" ] && [ -z "${FROM_SCRATCH:-}" ]; then
        local warm="$DATA/train_lt_$2.continue.toml"
        sed -e '/^init_from = /d' -e "s|^\[model\]\$|[model]\ninit_from = \"models/language_table/$2\"|" "$recipe" > "$warm"
        recipe="$warm"
    fi
    "$VADAPT" train --config "$recipe" "${more[@]}"
}

# 2. edge_to_sim: any appearance (and the default look itself) -> the default look, 40x72.
RUN=out/train/lt_edge_to_sim
train_or_continue "$RUN" edge_to_sim

# 3. Export: the newest checkpoint's EMA model of run $1 into models/language_table/$2, weights stored as F16 (half
#    the bytes; loaded as F32).
export_f16() {
    local latest
    latest=$(ls -d "$1"/checkpoints/step-* | sort | tail -1)
    rm -rf "models/language_table/$2.tmp"
    "$PY" scripts/language_table/to_f16.py "$latest" "models/language_table/$2.tmp"
    rm -rf "models/language_table/$2"
    mv "models/language_table/$2.tmp" "models/language_table/$2"
    # x0-prediction models: trailing timesteps start their few DDIM steps at t = 999, where the input is pure noise.
    sed -i 's/"timestep_spacing": "leading"/"timestep_spacing": "trailing"/; s/"steps_offset": 1/"steps_offset": 0/' \
        "models/language_table/$2/scheduler/scheduler_config.json"
    echo "exported $latest"
}
export_f16 "$RUN" edge_to_sim

# 3a. The continuation (pipelines/train_lt_edge_to_sim_continue.toml, session 19): from that export, 2000 steps under
#     a 2000-step schedule, then resumed to the file's 4000 (the schedule recomputed for the new length), exported
#     over it: the shipped base.
CONT=out/train/lt_edge_to_sim_continue
CONT_RECIPE=pipelines/train_lt_edge_to_sim_continue.toml
if [ ! -d "$CONT/checkpoints/step-00002000" ]; then
    "$VADAPT" train --config "$CONT_RECIPE" --steps 2000 $([ -d "$CONT/checkpoints" ] && echo --resume)
fi
"$VADAPT" train --config "$CONT_RECIPE" --resume ${STOP_AFTER:+--stop-after "$STOP_AFTER"}
export_f16 "$CONT" edge_to_sim

# 3b. sr_92x160: the super-resolution stage after edge_to_sim (the base's own output on a camera, upsampled, plus that
#     camera's edges and first frame at 92x160 -> the default look at 92x160), 800 steps (the shipped stage: two such
#     runs, the second a warm restart from the first's export). Its low_res cameras are the
#     base's outputs on three cameras of every training episode (base_outputs.sh, ~10 minutes a camera).
bash scripts/language_table/base_outputs.sh "$DATA/train" "$DATA/train_base" rgb appearance_0 appearance_1
SR_RUN=out/train/lt_sr_92x160
train_or_continue "$SR_RUN" sr_92x160
export_f16 "$SR_RUN" sr_92x160

# 4. Evaluation at 90x160 on the unseen seeds: reconstruction (default look in) and real-to-sim (appearance_0 in),
#    for the base alone (pipelines/language_table.toml) and with the SR stage (language_table_sr.toml).
for pipe in language_table language_table_sr; do
    for input in rgb appearance_0; do
        out="$DATA/eval${pipe#language_table}_$input"
        rm -rf "$out"
        sed "s|^image_key = .*|image_key = \"observation.images.$input\"|" "pipelines/$pipe.toml" > "$out.toml"
        "$VADAPT" augment --pipeline "$out.toml" --input "$DATA/eval" --output "$out" --threads 2 --quiet
        echo "== $pipe: sim_aug from $input, against the default look"
        "$VADAPT" eval "$out" --key observation.images.sim_aug --condition-key "observation.images.$input" \
            --reference-key observation.images.rgb --size 90x160
    done
done
"$VADAPT" preview "$DATA/eval_appearance_0" --out "$DATA/eval_appearance_0.png"

# 5. restyle: the default look's edges and first frame + a reference still -> the still's look (docs/results.md,
#    "Restyle"): its own data, whose appearance cameras come from a pool of 64 looks shared across episodes so that
#    a clip's reference can be another episode of the same look (~25 minutes with --jobs 2), then 1000 steps from
#    edge_to_sim (~17 minutes on 2 quiet cores), exported as F16 and scored with a reference from its own look and
#    from another episode's (the round trip through sim_aug).
[ -d "$DATA/pool/meta" ] || "$PY" scripts/language_table/generate.py --out "$DATA/pool" --seeds 0-85 \
    --size 180x320 --appearances 4 --appearance-pool 64 --jobs 2
train_or_continue out/train/lt_restyle restyle
export_f16 out/train/lt_restyle restyle
PY=.venv/bin/python bash scripts/language_table/restyle_eval.sh models/language_table/restyle "$DATA/eval" \
    "$DATA/restyle_eval"
PY=.venv/bin/python SHIFT=1 bash scripts/language_table/restyle_eval.sh models/language_table/restyle "$DATA/eval" \
    "$DATA/restyle_eval_shift"

# 6. edge_to_real (the pipeline's real_aug): the default look -> the photo-like look (appearance.photo_look), from
#    edge_to_sim: its data (generate.py --photo: the same seeds and states as $DATA/train, one camera in the photo
#    look; ~25 minutes with --jobs 2), then the recipe's steps, exported as F16 and scored on the unseen seeds
#    against the simulator's render of the photo look (docs/results.md, "real_aug").
[ -d "$DATA/photo/meta" ] || "$PY" scripts/language_table/generate.py --out "$DATA/photo" --seeds 0-85 \
    --size 180x320 --photo --jobs 2
[ -d "$DATA/photo_eval/meta" ] || "$PY" scripts/language_table/generate.py --out "$DATA/photo_eval" \
    --seeds 900-907 --size 180x320 --photo --jobs 2
train_or_continue out/train/lt_edge_to_real edge_to_real
export_f16 out/train/lt_edge_to_real edge_to_real
cat > "$DATA/real_eval.toml" <<TOML
seed = 0
[input]
image_key = "observation.images.rgb"
[output]
layout = "paired"
codec = "h264"
[[target]]
name = "real_aug"
adapter = "models/language_table/edge_to_real"
guidance = 1.0
steps = 6
window_overlap = 2
TOML
rm -rf "$DATA/real_eval"
"$VADAPT" augment --pipeline "$DATA/real_eval.toml" --input "$DATA/photo_eval" --output "$DATA/real_eval" \
    --threads 2 --quiet
echo "== real_aug from the default look, against the photo look"
"$VADAPT" eval "$DATA/real_eval" --key observation.images.real_aug --condition-key observation.images.rgb \
    --reference-key observation.images.appearance_0 --size 90x160
