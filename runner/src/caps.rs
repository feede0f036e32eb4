//! The capabilities a container keeps: Docker's default set, applied to the bounding set (so no
//! exec can regain more), the effective/permitted sets of a root process, and nothing inheritable
//! or ambient. Called by the container's process last, after every mount and the identity change.

use std::io;

use crate::error::{Error, Result};

/// Docker's default capability set (moby `oci/caps/defaults.go`) without CAP_MKNOD, as podman's
/// since 4.0, by number (linux/capability.h). Docker keeps CAP_MKNOD because its device cgroup
/// decides which nodes open; strata sets up no device cgroup, so a node made in the container's
/// /dev (a tmpfs that must honour nodes) would open any device of the host.
pub const DEFAULT_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// The default set as the two 32-bit words capset(2) takes.
pub fn default_mask() -> [u32; 2] {
    let mut words = [0u32; 2];
    for &(cap, _) in DEFAULT_CAPS {
        words[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    words
}

/// Drops every capability outside the default set from the bounding set.
pub fn limit_bounding_set() -> Result<()> {
    let keep = default_mask();
    for cap in 0..64u32 {
        if keep[(cap / 32) as usize] & (1 << (cap % 32)) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(Error::sys(format!("dropping capability {cap} from the bounding set"), e));
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the effective and permitted sets to `mask` (the default set for root, empty otherwise),
/// and clears the inheritable and ambient sets.
pub fn set_process_caps(mask: [u32; 2]) -> Result<()> {
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [0, 1].map(|i| CapData { effective: mask[i], permitted: mask[i], inheritable: 0 });
    // SAFETY: capset with a v3 header and the two data words it expects.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(Error::sys("setting the process capabilities", io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Error::sys("clearing the ambient capabilities", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_holds_exactly_the_default_set() {
        let mask = default_mask();
        assert_eq!(mask[0].count_ones() + mask[1].count_ones(), DEFAULT_CAPS.len() as u32);
        assert_ne!(mask[0] & (1 << 0), 0, "CAP_CHOWN");
        assert_eq!(mask[0] & (1 << 21), 0, "CAP_SYS_ADMIN stays out");
        assert_eq!(mask[0] & (1 << 19), 0, "CAP_SYS_PTRACE stays out");
    }
}
