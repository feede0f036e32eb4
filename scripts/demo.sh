#!/usr/bin/env bash
# README's first command: installs what is missing, builds strata, and runs the main job on the
# embedded default image (built on the spot from host files; no network, nothing to download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --quiet --release --bin strata -- demo
