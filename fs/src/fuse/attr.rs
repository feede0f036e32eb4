//! Translation of merged-tree nodes into FUSE attributes: pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::layer::index::{Entry, Kind, Timestamp};
use crate::merge::{Node, NodeId};

/// The inode number of a node: shared by every name of a hard-link set, root = 1.
pub fn ino_of(node: &Node) -> INodeNo {
    INodeNo(node.inode_node as u64 + 1)
}

/// The node an inode number stands for.
pub fn node_of(ino: INodeNo) -> Option<NodeId> {
    u64::from(ino).checked_sub(1).and_then(|n| NodeId::try_from(n).ok())
}

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

pub fn time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

/// Linux's `new_encode_dev`, the rdev encoding the kernel expects from FUSE.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Attributes of a node; `entry` is None for a directory implied by deeper entries.
pub fn attr(node: &Node, entry: Option<&Entry>) -> FileAttr {
    let mut a = match entry {
        Some(e) => of_entry(e),
        None => of_entry(&Entry::implied_dir()),
    };
    a.ino = ino_of(node);
    a.nlink = node.nlink;
    a
}

/// Attributes of a layer entry, with inode number 0 and one link (the caller's to set).
pub fn of_entry(e: &Entry) -> FileAttr {
    let t = time(e.mtime);
    let size = e.size;
    FileAttr {
        ino: INodeNo(0),
        size,
        blocks: e.host_blocks.unwrap_or(size.div_ceil(512)),
        atime: t,
        mtime: t,
        ctime: e.ctime.map_or(t, time),
        crtime: t,
        kind: file_type(e.kind),
        perm: e.mode as u16,
        nlink: 1,
        uid: e.uid,
        gid: e.gid,
        rdev: encode_dev(e.rdev_major, e.rdev_minor),
        blksize: 4096,
        flags: 0,
    }
}

/// A negative entry: node id 0 tells the kernel to cache the name's absence for the entry's
/// timeout (the other fields are not looked at).
pub fn negative() -> FileAttr {
    let t = time(Timestamp::default());
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(Kind::File),
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes of an upper object from the host's lstat, under the overlay's inode number.
pub fn from_metadata(meta: &std::fs::Metadata, ino: u64) -> FileAttr {
    use std::os::unix::fs::MetadataExt;
    let at = |sec: i64, nsec: i64| time(Timestamp { sec, nsec: nsec as u32 });
    let kind = Kind::of_host(meta.file_type());
    FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: at(meta.atime(), meta.atime_nsec()),
        mtime: at(meta.mtime(), meta.mtime_nsec()),
        ctime: at(meta.ctime(), meta.ctime_nsec()),
        crtime: at(meta.mtime(), meta.mtime_nsec()),
        kind: file_type(kind),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: encode_dev(libc::major(meta.rdev()), libc::minor(meta.rdev())),
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_devices_like_the_kernel() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(7, 0), 0x700);
        assert_eq!(encode_dev(259, 0x12345), (0x45) | (259 << 8) | (0x12300 << 12));
    }

    #[test]
    fn converts_sub_second_and_negative_times() {
        assert_eq!(time(Timestamp { sec: 1, nsec: 5 }), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(time(Timestamp { sec: -2, nsec: 500_000_000 }), UNIX_EPOCH - Duration::from_millis(1500));
    }

    #[test]
    fn inode_numbers_round_trip() {
        assert_eq!(node_of(INodeNo(1)), Some(0));
        assert_eq!(node_of(INodeNo(0)), None);
    }
}
