//! strata's container runner: starts a process whose root filesystem is a writable strata mount
//! of an image, in new namespaces, under cgroup limits, as root or rootless.
//!
//! - [`spec`]: the container as data: image config + user options resolved into what to run (pure).
//! - [`user`]: `/etc/passwd` and `/etc/group` lookups for `--user` and the image's `User` (pure).
//! - [`cgroup`]: limits (memory, swap, pids, cpu) on cgroup v2 or v1, creation and removal.
//! - [`tty`]: the pseudo-terminal of `-t`: raw mode, window size, the relay loop.
//! - [`state`]: the state directory: container records, `ps`, `rm`, crash clean-up.
//! - [`container`]: one container's life across supervisor, filesystem daemon and container process.
//! - [`affinity`]: the container's setup and its daemon on one CPU until exec.
//! - [`idmap`]: the user namespace's uid/gid maps for rootless containers.
//! - [`rootfs`]: the mount plan (/proc, /dev, /sys, masks, volumes) as data, applied; `pivot_root`.
//! - [`resolve`]: container paths resolved inside the root (`openat2` `RESOLVE_IN_ROOT`).
//! - [`process`]: identity, capabilities ([`caps`]), descriptors, exec, and the `--init` PID 1.
//! - [`net`]: loopback up in a `--net none` namespace.
//!
//! The runner consumes strata-fs through its public mount API (`strata_fs::fuse::mount`,
//! `strata_fs::overlay`) and must not reach into the layer index or the merged view.

pub mod affinity;
pub mod caps;
pub mod cgroup;
pub mod container;
pub mod error;
pub mod idmap;
pub mod net;
pub mod process;
pub mod resolve;
pub mod rootfs;
pub mod spec;
pub mod state;
pub mod tty;
pub mod user;

pub use error::{Error, Result};
