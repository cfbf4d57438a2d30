#!/usr/bin/env bash
# Peak memory (RSS) of `vadapt augment` as the number of episodes grows: 1, 10, 100 episodes of 8 frames at 24x40,
# one adapter-only target (the fixture model), one step. Memory is bounded by the pipeline's channel capacities, so
# the peak should stay flat. Needs GNU time (/usr/bin/time -v). Usage: examples/bench_augment_rss.sh [WORKDIR]
set -euo pipefail
BIN=${VADAPT:-target/release/vadapt}
FIX=${VADAPT_FIXTURES:-$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures}
W=${1:-$(mktemp -d)}
cat > "$W/p.toml" <<TOML
[input]
image_key = "observation.images.real"
[[target]]
name = "edge_sim"
adapter = "$FIX/compose/adapter"
guidance = 1.0
steps = 1
TOML
for n in 1 10 100; do
  rm -rf "$W/d$n" "$W/o$n"
  "$BIN" sample-data --out "$W/d$n" --episodes "$n" --frames 8 --size 24x40 >/dev/null
  /usr/bin/time -v "$BIN" augment --pipeline "$W/p.toml" --input "$W/d$n/lerobot" --output "$W/o$n" --quiet \
    >"$W/out$n.txt" 2>"$W/time$n.txt"
  rss=$(grep "Maximum resident" "$W/time$n.txt" | awk '{print $NF}')
  wall=$(grep "Elapsed" "$W/time$n.txt" | awk '{print $NF}')
  echo "$n episodes: peak RSS $((rss / 1024)) MiB, wall $wall"
done
