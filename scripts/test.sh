#!/usr/bin/env bash
# README's second command, and what CI runs: installs what is missing, then the whole test suite
# (unit, property and integration tests, which mount real FUSE filesystems), then one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --benches --quiet # benchmarks must keep compiling
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
