#!/usr/bin/env bash
# `podman run --rm` start-to-exit time of the runner image with each storage set-up podman
# offers here: kernel overlayfs, fuse-overlayfs as mount_program, strata-overlayfs as
# mount_program. Root, runc, cgroupfs, no network; RUNS runs each after a warm-up, set-ups
# interleaved; prints the median, min and max wall time per set-up. Needs podman, runc and
# fuse-overlayfs (scripts/setup.sh) and a release build (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-15}
dir=$(mktemp -d /var/tmp/strata-podman.XXXXXX)
trap 'for s in kernel fuse-overlayfs strata; do podman_in "$s" rm --all --force >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
target/release/strata-fixture docker "$dir/runner.tar" --image runner
ln -s "$PWD/target/release/strata" "$dir/strata-overlayfs"

podman_in() { # set-up, podman arguments...
  local setup=$1; shift
  local program=()
  case $setup in
    fuse-overlayfs) program=(--storage-opt "overlay.mount_program=$(command -v fuse-overlayfs)") ;;
    strata) program=(--storage-opt "overlay.mount_program=$dir/strata-overlayfs") ;;
  esac
  podman --root "$dir/$setup/graph" --runroot "$dir/$setup/run" --tmpdir "$dir/$setup/tmp" \
    --storage-driver overlay "${program[@]}" --cgroup-manager cgroupfs --events-backend file --runtime runc "$@"
}
run_once() {
  podman_in "$1" run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 runner:latest /bin/true
}

setups=(kernel fuse-overlayfs strata)
for s in "${setups[@]}"; do
  podman_in "$s" load --quiet --input "$dir/runner.tar" >/dev/null
  run_once "$s"
done
for _ in $(seq "$runs"); do
  for s in "${setups[@]}"; do
    start=$(date +%s%N)
    run_once "$s"
    echo "$s $(( ($(date +%s%N) - start) / 1000000 ))" >>"$dir/times"
  done
done
for s in "${setups[@]}"; do
  awk -v s="$s" '$1 == s { print $2 }' "$dir/times" | sort -n |
    awk -v s="$s" '{ t[NR] = $1 } END { printf "%-15s median %4d ms  min %4d  max %4d  (%d runs)\n", s, t[int((NR + 1) / 2)], t[1], t[NR], NR }'
done
