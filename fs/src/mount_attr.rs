//! mount_setattr(2), the one wrapper of it: changes the flags of the mount a descriptor is on
//! (with `recursive`, of every mount below it too). Used for the private read-only view of a
//! directory layer and for the runner's read-only volumes. A thin syscall adapter, nothing else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets `set` and clears `clear` (`MOUNT_ATTR_*`) on the mount of `fd`.
pub fn set(fd: BorrowedFd, set: u64, clear: u64, recursive: bool) -> io::Result<()> {
    let attr = libc::mount_attr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: a live descriptor, an empty NUL-terminated path and a mount_attr of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
