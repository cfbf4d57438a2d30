#!/usr/bin/env bash
# vadapt augment as a Slurm job array: one shard per array task, then one merge job.
#
#   sbatch --array=0-7 examples/slurm_array.sh                      # 8 shards
#   sbatch --dependency=afterok:<array job id> --wrap \
#     "vadapt merge $OUT $(printf "$PARTS/part-%d " $(seq 0 7))"   # join them
#
# Every shard writes its own dataset under $PARTS; the split is by episode and deterministic, and seeds depend only
# on (global seed, episode, target, window), so the merged dataset is byte-identical to a single-machine run.
# A shard that is preempted or killed is simply resubmitted: --resume reuses its finished episodes.
# Slurm sends SIGTERM to the job's processes before a preemption or the time limit: vadapt stops cleanly, keeping its
# finished units (exit 130), so the requeued task loses at most the episodes in flight.
#SBATCH --job-name=vadapt-augment
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=logs/vadapt-%A_%a.out
set -euo pipefail

PIPELINE=${PIPELINE:-pipelines/demo.toml}
INPUT=${INPUT:-datasets/sample/lerobot}
PARTS=${PARTS:-out/parts}
OUT=${OUT:-out/augmented}
SHARDS=${SLURM_ARRAY_TASK_COUNT:?run as an array job: sbatch --array=0-N}
INDEX=${SLURM_ARRAY_TASK_ID:?run as an array job}

mkdir -p "$PARTS" logs
# --resume makes a requeued task continue where it stopped (and is harmless on the first attempt of a fresh dir:
# it only refuses when the directory belongs to another config).
RESUME=()
if [ -d "$PARTS/part-$INDEX/.vadapt" ]; then RESUME=(--resume); fi
vadapt augment --pipeline "$PIPELINE" --input "$INPUT" --output "$PARTS/part-$INDEX" \
  --shard "$INDEX/$SHARDS" --threads "${SLURM_CPUS_PER_TASK:-1}" --quiet "${RESUME[@]}"
