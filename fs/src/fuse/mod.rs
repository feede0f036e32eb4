//! The FUSE adapter: a thin `fuser::Filesystem` over an [`ImageView`]. Each method resolves the
//! inode to a merged-tree node, asks the view or the layer for the answer and replies; errors
//! become errno values in [`errno`] only. The lower layers never change, so every reply carries
//! long cache lifetimes and files and directories keep their kernel caches.

pub(crate) mod attr;
mod dir_listing;
pub mod errno;
mod handles;
mod io_modes;
pub mod mount;
pub mod overlay_fs;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};
use handles::{Handles, NO_HANDLE};

use crate::layer::index::{Kind, XattrPair};
use crate::layer::whiteout::is_internal_xattr;
use crate::layer::FileReader;
use crate::merge::NodeId;
use crate::view::ImageView;

/// Lower layers are immutable: the kernel may cache names, attributes and data for this long.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Largest read the kernel sends once FUSE_MAX_PAGES is negotiated; the size of a read buffer.
pub(crate) const MAX_READ: usize = 1 << 20;

/// Buffers for READ replies, shared by the serving threads rather than one per thread: a buffer
/// stays resident once a large read has touched it. One idle buffer is kept, which is all a
/// single reader needs; buffers of reads that overlapped it (a reader's request and its
/// readahead, mostly) are freed when done, so the daemon's resident set does not keep the
/// high-water mark of concurrent reads (after reading every file of a debootstrap tree on 4
/// threads: three buffers otherwise, 3 MiB).
const KEPT_READ_BUFFERS: usize = 1;
static READ_BUFFERS: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A read-only mount of an image.
pub struct ImageFs {
    view: ImageView,
    open_files: Handles<FileReader>,
    /// Every layer is a tar, so a read needs no open file: answering `open` with ENOSYS makes the
    /// kernel stop sending open/release (zero-message opens, page cache kept).
    opens_unneeded: bool,
    /// The kernel supports zero-message opendir: listings need no handle either.
    opendirs_unneeded: bool,
}

impl ImageFs {
    pub fn new(view: ImageView) -> ImageFs {
        let opens_unneeded = view.layers.iter().all(|l| l.host_dir().is_none());
        ImageFs { view, open_files: Handles::default(), opens_unneeded, opendirs_unneeded: false }
    }

    /// The bytes of the file at `ino`, for reads made without an open.
    fn reader_of(&self, ino: INodeNo) -> Result<FileReader, Errno> {
        let node = self.view.tree.node(self.node(ino)?);
        let entry = self.view.entry(node).filter(|e| e.kind == Kind::File).ok_or(Errno::EBADF)?;
        self.view.layers[node.layer as usize].open(entry).map_err(|e| errno::from_io(&e))
    }

    fn node(&self, ino: INodeNo) -> Result<NodeId, Errno> {
        attr::node_of(ino).filter(|&id| self.view.tree.get(id).is_some()).ok_or(Errno::ENOENT)
    }

    fn attr(&self, id: NodeId) -> fuser::FileAttr {
        let node = self.view.tree.node(id);
        attr::attr(node, self.view.entry(node))
    }

    fn is_dir(&self, id: NodeId) -> bool {
        self.view.kind_of(id) == Kind::Dir
    }

    fn xattrs(&self, ino: INodeNo) -> Result<impl Iterator<Item = &XattrPair> + '_, Errno> {
        let id = self.node(ino)?;
        let list = self.view.entry_of(id).map(|e| e.xattrs.as_slice()).unwrap_or_default();
        Ok(list.iter().filter(|(name, _)| !is_internal_xattr(name)))
    }

    /// Directory listing entries after `offset`: (next offset, inode, kind, name, node).
    fn listing(&self, dir: NodeId, offset: u64) -> impl Iterator<Item = (u64, NodeId, &[u8])> {
        let node = self.view.tree.node(dir);
        let dots = [(dir, &b"."[..]), (node.parent, &b".."[..])];
        let kids = self.view.tree.children(dir).iter().map(|&k| (k, self.view.tree.name(k)));
        dots.into_iter().chain(kids).enumerate().skip(offset as usize).map(|(i, (id, name))| (i as u64 + 1, id, name))
    }
}

/// Takes the wanted capabilities the kernel offers (a missing one only costs speed) and as much
/// readahead as it allows, up to 1 MiB.
pub(crate) fn negotiate(config: &mut KernelConfig, wanted: InitFlags) {
    let _ = config.add_capabilities(wanted & config.capabilities());
    if let Err(max) = config.set_max_readahead(MAX_READ as u32) {
        let _ = config.set_max_readahead(max);
    }
}

/// Positional reads, from a layer or from a host file.
pub(crate) trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for FileReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileReader::read_at(self, buf, offset)
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

/// Answers FUSE_LSEEK (the kernel sends only SEEK_DATA and SEEK_HOLE) with `seek`.
pub(crate) fn reply_lseek(
    offset: i64,
    whence: i32,
    seek: impl FnOnce(u64, libc::c_int) -> Result<u64, Errno>,
    reply: ReplyLseek,
) {
    let found = match u64::try_from(offset) {
        Ok(offset) if whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE => seek(offset, whence),
        _ => Err(Errno::EINVAL),
    };
    match found.and_then(|at| i64::try_from(at).map_err(|_| Errno::EOVERFLOW)) {
        Ok(at) => reply.offset(at),
        Err(e) => reply.error(e),
    }
}

/// Fills a reply from `reader` through a shared read buffer: full reads except at end of file.
pub(crate) fn read_into_reply(reader: &impl ReadAt, offset: u64, size: u32, reply: ReplyData) {
    let taken = READ_BUFFERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut buf = taken.unwrap_or_else(|| vec![0; MAX_READ].into_boxed_slice());
    let want = (size as usize).min(buf.len());
    let mut filled = 0;
    let outcome = loop {
        if filled == want {
            break Ok(());
        }
        match reader.read_at(&mut buf[filled..want], offset + filled as u64) {
            Ok(0) => break Ok(()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(()) => reply.data(&buf[..filled]),
        Err(e) => reply.error(errno::from_io(&e)),
    }
    let mut kept = READ_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() < KEPT_READ_BUFFERS {
        kept.push(buf);
    }
}

/// Answers listxattr(2) with `names`, leaving out `trusted.*` names for callers other than root,
/// as kernel overlayfs and the host filesystems list them only to CAP_SYS_ADMIN (which FUSE does
/// not report; root stands for it).
pub(crate) fn reply_xattr_names<'a>(
    reply: ReplyXattr,
    size: u32,
    names: impl Iterator<Item = &'a [u8]>,
    req: &Request,
) {
    let listed = names.filter(|name| req.uid() == 0 || !name.starts_with(b"trusted."));
    let list: Vec<u8> = listed.flat_map(|name| name.iter().copied().chain([0])).collect();
    reply_xattr(reply, size, &list)
}

pub(crate) fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_READ;
        negotiate(config, wanted);
        self.opens_unneeded &= config.capabilities().contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.opendirs_unneeded = config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let dir = match self.node(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        if name.len() > 255 {
            return reply.error(Errno::ENAMETOOLONG);
        }
        match self.view.tree.lookup_child(dir, name.as_bytes()) {
            Some(id) => reply.entry(&TTL, &self.attr(id), Generation(0)),
            None if self.is_dir(dir) => reply.entry(&TTL, &attr::negative(), Generation(0)),
            None => reply.error(Errno::ENOTDIR),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(id) => reply.attr(&TTL, &self.attr(id)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|id| self.view.entry_of(id)) {
            Ok(Some(e)) if e.kind == Kind::Symlink => reply.data(&e.link_target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.opens_unneeded {
            return reply.error(Errno::ENOSYS);
        }
        let id = match self.node(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        let node = self.view.tree.node(id);
        let Some(entry) = self.view.entry(node).filter(|e| e.kind == Kind::File) else {
            return reply.error(if self.is_dir(id) { Errno::EISDIR } else { Errno::EINVAL });
        };
        match self.view.layers[node.layer as usize].open(entry) {
            Ok(reader) => self.open_files.reply_opened(reader, reply),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(reader) = self.open_files.get(fh.0) {
            return read_into_reply(&*reader, offset, size, reply);
        }
        match fh.0 {
            NO_HANDLE => match self.reader_of(ino) {
                Ok(reader) => read_into_reply(&reader, offset, size, reply),
                Err(e) => reply.error(e),
            },
            _ => reply.error(Errno::EBADF),
        }
    }

    /// SEEK_DATA/SEEK_HOLE, so `cp` and `tar --sparse` find a directory layer's holes.
    fn lseek(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let seek =
            |reader: &FileReader, at, whence| reader.seek_data_or_hole(at, whence).map_err(|e| errno::from_io(&e));
        reply_lseek(
            offset,
            whence,
            |at, whence| match self.open_files.get(fh.0) {
                Some(reader) => seek(&reader, at, whence),
                None => seek(&self.reader_of(ino)?, at, whence),
            },
            reply,
        )
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open_files.remove(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.opendirs_unneeded {
            // ENOSYS makes the kernel skip opendir/releasedir from now on and keep its cached
            // listings (the default of a zero-message opendir).
            return reply.error(Errno::ENOSYS);
        }
        match self.node(ino) {
            Ok(id) if self.is_dir(id) => {
                reply.opened(FileHandle(NO_HANDLE), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        for (next, id, name) in self.listing(dir, offset) {
            let node = self.view.tree.node(id);
            let kind = self.view.kind_of(id);
            if reply.add(attr::ino_of(node), next, attr::file_type(kind), OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        for (next, id, name) in self.listing(dir, offset) {
            if reply.add(
                attr::ino_of(self.view.tree.node(id)),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &self.attr(id),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes: u64 = self.view.layers.iter().map(|l| l.info.uncompressed_size).sum();
        reply.statfs(bytes.div_ceil(4096), 0, 0, self.view.tree.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino).map(|mut list| list.find(|(n, _)| **n == *name.as_bytes())) {
            Ok(Some((_, value))) => reply_xattr(reply, size, value),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino) {
            Ok(list) => reply_xattr_names(reply, size, list.map(|(name, _)| &name[..]), req),
            Err(e) => reply.error(e),
        }
    }

    /// `lsattr` and fsxattr reads: layers carry no inode flags (changes are EROFS before here).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        match crate::upper::FileAttrIoctl::from_cmd(cmd).filter(|op| !op.changes()) {
            Some(op) => reply.ioctl(0, &vec![0; op.arg_size().min(out_size as usize)]),
            None => reply.error(Errno::ENOTTY),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
