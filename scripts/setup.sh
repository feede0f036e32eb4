#!/usr/bin/env bash
# Installs what strata needs on a fresh Debian machine, idempotently: fuse3 (fusermount3, /dev/fuse
# helpers), umoci (the independent reference the integration tests compare against), busybox-static
# (a static shell for images built from host files), uidmap (newuidmap/newgidmap for rootless
# containers), fuse-overlayfs (the tests compare strata-overlayfs with it), podman and runc (a test
# runs podman with strata-overlayfs as its mount_program; `strata-bench --runner` compares with
# runc), stress-ng (a test runs its filesystem stressors on writable mounts), a Rust toolchain
# check, and pjdfstest and fsx built from crates.io (see the end). With --bench it also installs the tools the macro benchmark
# uses: debootstrap, fio, ratarmount (PyPI), and bubblewrap.
set -euo pipefail

want_bench=0
[ "${1:-}" = "--bench" ] && want_bench=1

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_cmd fusermount3 || need+=(fuse3)
have_cmd umoci || need+=(umoci)
[ -x /bin/busybox ] || need+=(busybox-static)
# newuidmap/newgidmap: rootless containers map the caller's /etc/subuid ranges with them.
have_cmd newuidmap || need+=(uidmap)
# fuse-overlayfs: the peer strata-overlayfs replaces, also the oracle of the tests on the formats they share.
have_cmd fuse-overlayfs || need+=(fuse-overlayfs)
have_cmd podman || need+=(podman)
have_cmd runc || need+=(runc)
have_cmd stress-ng || need+=(stress-ng)
if [ "$want_bench" = 1 ]; then
  have_cmd debootstrap || need+=(debootstrap)
  have_cmd fio || need+=(fio)
  have_cmd pip3 || need+=(python3-pip)
  have_cmd bwrap || need+=(bubblewrap)
fi

if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$want_bench" = 1 ] && ! have_cmd ratarmount; then
  echo "setup: installing ratarmount from PyPI" >&2
  pip3 install --quiet ratarmount
fi

# /dev/fuse must exist (it does on any kernel with FUSE); load the module if it is missing.
[ -e /dev/fuse ] || { [ "$(id -u)" = 0 ] && modprobe fuse 2>/dev/null || true; }
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this kernel has no FUSE" >&2; exit 1; }

have_cmd cargo || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }

# pjdfstest (POSIX semantics of every path syscall) and fsx (file data under random I/O): third
# parties' conformance suites that tests/conformance.rs runs on mounts. Built from crates.io once,
# into target/test-tools (found there by the tests; `cargo clean` removes them, the next run
# rebuilds them).
# pjdfstest is linked statically: a test runs it inside a container of an image without a C library.
tools="$(cd "$(dirname "$0")/.." && pwd)/target/test-tools"
if [ ! -x "$tools/bin/pjdfstest" ]; then
  echo "setup: building pjdfstest 0.2.2 from crates.io into $tools" >&2
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$tools/build-static" cargo install --quiet \
    --locked --target "$(rustc -vV | sed -n 's/^host: //p')" --root "$tools" pjdfstest@0.2.2
fi
if [ ! -x "$tools/bin/fsx" ]; then
  echo "setup: building fsx 0.3.2 from crates.io into $tools" >&2
  CARGO_TARGET_DIR="$tools/build" cargo install --quiet --locked --root "$tools" fsx@0.3.2
fi
