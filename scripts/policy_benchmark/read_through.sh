#!/usr/bin/env bash
# The policy benchmark's test-time arm (docs/results.md, "Reading new looks back through sim_aug"): an evaluation
# dataset in which each listed camera is also read back to the simulator's default look by sim_aug, so that a
# policy trained on the default look alone can be scored on what edge_to_sim makes of new looks. OUT has every
# column of EVAL plus observation.images.canon_<camera> per camera: scripts/language_table/base_outputs.sh (the
# pipeline's sim_aug alone, the base at 40x72, no SR stage: the policy reads 48x80; one chained `vadapt augment`
# per camera, resumable) with those names, H.264 (the policy decodes it with lerobot's pyav).
#
#   bash scripts/policy_benchmark/read_through.sh EVAL OUT rgb appearance_0 appearance_1 ...
#   # then: bc.py --source SOURCE --eval OUT --in-key observation.images.canon_rgb \
#   #          --out-key observation.images.canon_appearance_0,... --arms source ...
#
# LIMIT=N reads only the first N episodes (a quick check). ~0.14 s a frame on 2 cores (1695 frames x 5 cameras of
# seeds 900-931: 19 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 3 ] || { echo "usage: $0 EVAL OUT CAMERA..." >&2; exit 2; }
PREFIX=canon_ CODEC=h264 exec bash scripts/language_table/base_outputs.sh "$@"
