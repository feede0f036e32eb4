//! Inode flags (`lsattr`/`chattr`: immutable, append-only, nodump…) and extended file attributes
//! (`FS_IOC_FSGETXATTR`: project id, extent size hints) of upper objects, through the ioctls the
//! kernel forwards to FUSE for them. Layers carry none: lower objects show none until copied up.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `struct fsxattr`: 28 bytes.
const FSXATTR_SIZE: usize = 28;
/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// One of the ioctls served, as FUSE carries it (the kernel's `fuse_fileattr_get/set`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAttrIoctl {
    GetFlags,
    SetFlags,
    GetXattr,
    SetXattr,
}

impl FileAttrIoctl {
    /// The request `cmd` names, None for any other ioctl.
    pub fn from_cmd(cmd: u32) -> Option<FileAttrIoctl> {
        match cmd {
            c if c == libc::FS_IOC_GETFLAGS as u32 => Some(FileAttrIoctl::GetFlags),
            c if c == libc::FS_IOC_SETFLAGS as u32 => Some(FileAttrIoctl::SetFlags),
            FS_IOC_FSGETXATTR => Some(FileAttrIoctl::GetXattr),
            FS_IOC_FSSETXATTR => Some(FileAttrIoctl::SetXattr),
            _ => None,
        }
    }

    /// The argument's size: an `int` of flags (whatever the request number says), or an fsxattr.
    pub fn arg_size(self) -> usize {
        match self {
            FileAttrIoctl::GetFlags | FileAttrIoctl::SetFlags => std::mem::size_of::<libc::c_int>(),
            FileAttrIoctl::GetXattr | FileAttrIoctl::SetXattr => FSXATTR_SIZE,
        }
    }

    pub fn changes(self) -> bool {
        matches!(self, FileAttrIoctl::SetFlags | FileAttrIoctl::SetXattr)
    }

    fn request(self) -> libc::Ioctl {
        match self {
            FileAttrIoctl::GetFlags => libc::FS_IOC_GETFLAGS,
            FileAttrIoctl::SetFlags => libc::FS_IOC_SETFLAGS,
            FileAttrIoctl::GetXattr => FS_IOC_FSGETXATTR as libc::Ioctl,
            FileAttrIoctl::SetXattr => FS_IOC_FSSETXATTR as libc::Ioctl,
        }
    }
}

/// Performs `op` on the host object at `path` (a regular file or directory, not followed if a
/// symlink), reading its argument from or writing its result to `arg` ([`FileAttrIoctl::arg_size`]).
pub fn ioctl(path: &Path, op: FileAttrIoctl, arg: &mut [u8]) -> io::Result<()> {
    assert_eq!(arg.len(), op.arg_size(), "the argument of {op:?}");
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path)?;
    // SAFETY: an open descriptor and a buffer of the size the request reads or writes.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), op.request(), arg.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `FS_APPEND_FL` and `FS_IMMUTABLE_FL` (linux/fs.h): flags that forbid unlinking a file.
const UNREMOVABLE_FLAGS: libc::c_int = 0x20 | 0x10;

/// Clears the append-only and immutable flags of the object at `path`, so that it can be
/// removed; Ok(false) when it had neither (or cannot have flags: a symlink, a device).
pub fn clear_unremovable_flags(path: &Path) -> io::Result<bool> {
    let mut flags = [0u8; std::mem::size_of::<libc::c_int>()];
    match ioctl(path, FileAttrIoctl::GetFlags, &mut flags) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTTY | libc::EOPNOTSUPP | libc::ENXIO)) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let current = libc::c_int::from_ne_bytes(flags);
    if current & UNREMOVABLE_FLAGS == 0 {
        return Ok(false);
    }
    let mut cleared = (current & !UNREMOVABLE_FLAGS).to_ne_bytes();
    ioctl(path, FileAttrIoctl::SetFlags, &mut cleared)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::FileAttrIoctl;

    #[test]
    fn requests_are_recognised_with_their_argument_sizes() {
        assert_eq!(FileAttrIoctl::from_cmd(0x8008_6601), Some(FileAttrIoctl::GetFlags));
        assert_eq!(FileAttrIoctl::from_cmd(0x4008_6602), Some(FileAttrIoctl::SetFlags));
        assert_eq!(FileAttrIoctl::from_cmd(0x801c_581f).map(FileAttrIoctl::arg_size), Some(28));
        assert_eq!(FileAttrIoctl::GetFlags.arg_size(), 4);
        assert!(FileAttrIoctl::SetXattr.changes() && !FileAttrIoctl::GetXattr.changes());
        // FIONREAD, FS_IOC_GETVERSION: not served.
        assert_eq!(FileAttrIoctl::from_cmd(0x541b), None);
        assert_eq!(FileAttrIoctl::from_cmd(0x8008_7601), None);
    }
}
