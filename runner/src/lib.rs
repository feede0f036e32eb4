//! strata's container runner: namespaces, rootfs set-up (pivot_root, /proc, /dev), cgroups and the
//! container process. Empty until the runner issue lands; it will consume `strata_fs` mounts and must
//! not reach into the filesystem's internals (layer index, merged view).
