#!/usr/bin/env bash
# The whole test suite: set up, build once (release), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release --all-targets "$@"
