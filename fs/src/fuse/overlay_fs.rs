//! The FUSE adapter of a writable mount: a thin `fuser::Filesystem` over [`Overlay`]. Each
//! method converts arguments, calls the overlay, and replies; errno mapping is `errno::from_io`.
//! `flush` is deliberately not implemented: its ENOSYS makes the kernel stop sending one per
//! close (it still writes dirty pages back itself), saving a round trip per file. As root, upper
//! files are opened in FUSE passthrough (`io_modes::IoModes` keeps the kernel's per-inode rules);
//! otherwise the writeback cache batches writes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::dir_listing::Listings;
use super::handles::{Handles, NO_HANDLE};
use super::io_modes::{InodeIo, IoModes, Open, FMODE_EXEC};
use super::{attr, errno, read_into_reply, reply_lseek, reply_xattr, reply_xattr_names};
use crate::idshift::IdShift;
use crate::layer::cache::Cache;
use crate::layer::index::Kind;
use crate::layer::FileReader;
use crate::overlay::{has_privilege_bits, without_privilege_bits, AttrChange, Caller, NewObject, OpenFile, Overlay};
use crate::upper::FileAttrIoctl;

/// Every change goes through this mount, so the kernel's caches stay right for a long time.
const TTL: Duration = Duration::from_secs(3600);

pub struct OverlayFs {
    overlay: Overlay,
    files: Handles<OpenFile>,
    listings: Listings,
    /// The kernel takes ENOSYS to OPENDIR as "no opendir/releasedir from now on".
    opendirs_unneeded: bool,
    /// Owners as shown through the mount (fuse-overlayfs' uidmapping/squash options).
    ids: IdShift,
    io: IoModes,
    /// Serve read-only opens of tar-layer files from shared host copies in this cache (see
    /// `prefer_shared_copy`); set by the container runner.
    shared_files: Option<Cache>,
}

/// Files above this size stay served from their layer through the daemon: a first open would
/// otherwise copy them whole.
const SHARED_COPY_MAX: u64 = 64 << 20;

/// Every open says FOPEN_NOFLUSH: the daemon has nothing to do at close (writes reach the upper
/// file as they are made, locks are the kernel's), so a FLUSH round trip would only be answered
/// ENOSYS. With the writeback cache the kernel still writes dirty pages back at close.
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

impl OverlayFs {
    pub fn new(overlay: Overlay) -> OverlayFs {
        OverlayFs {
            overlay,
            files: Handles::default(),
            listings: Listings::default(),
            opendirs_unneeded: false,
            ids: IdShift::default(),
            io: IoModes::default(),
            shared_files: None,
        }
    }

    /// Shows owners through `ids` and stores the callers' ids back through it.
    pub fn with_id_shift(mut self, ids: IdShift) -> OverlayFs {
        self.ids = ids;
        self
    }

    /// Serves read-only opens of files still in tar layers from host copies in `cache`, made on
    /// first use and shared by every mount: under passthrough the kernel then reads them itself,
    /// one page cache for every container of an image instead of one per container.
    pub fn with_shared_files(mut self, cache: Cache) -> OverlayFs {
        self.shared_files = Some(cache);
        self
    }

    /// The shared copy of `ino`, a file still served from a tar layer, for a read-only open when
    /// passthrough is on and shared files are asked for. Larger files, and any failure to make the
    /// copy (a full cache disk...), give None: the open serves the layer.
    fn shared_copy(&self, ino: u64) -> Option<std::fs::File> {
        let (Some(cache), true) = (&self.shared_files, self.io.passthrough) else { return None };
        self.overlay.shared_lower_copy(ino, cache, SHARED_COPY_MAX).ok().flatten()
    }

    fn shown(&self, mut attr: FileAttr) -> FileAttr {
        attr.uid = self.ids.shown_uid(attr.uid);
        attr.gid = self.ids.shown_gid(attr.gid);
        attr
    }

    fn caller(&self, req: &Request) -> Caller {
        Caller { uid: self.ids.stored_uid(req.uid()), gid: self.ids.stored_gid(req.gid()) }
    }

    fn entry(&self, reply: ReplyEntry, result: io::Result<FileAttr>) {
        match result {
            Ok(attr) => reply.entry(&TTL, &self.shown(attr), Generation(0)),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    /// Registers an open file under a new handle and picks its io mode ([`IoModes::adopt`]),
    /// with the inodes' io state locked by the caller. Returns the handle and, for a passthrough
    /// open, its backing.
    fn adopt(
        &self,
        inodes: &mut HashMap<u64, InodeIo>,
        ino: u64,
        file: OpenFile,
        flags: i32,
        register: impl Fn(&std::fs::File) -> io::Result<BackingId>,
    ) -> (FileHandle, Option<Arc<BackingId>>) {
        let read_write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let reopen = || self.overlay.reopen_read_write(ino);
        // Only an upper file may go to passthrough with such bits: lower files are read-only.
        let privilege_bits = matches!(file, OpenFile::Upper(_))
            && self.overlay.getattr(ino).map_or(true, |a| has_privilege_bits(a.perm.into()));
        let open = Open { ino, file: &file, read_write, privilege_bits, reopen: &reopen, register: &register };
        let backing = self.io.adopt(inodes, open);
        let fh = self.files.insert(file);
        self.io.track(inodes, fh, ino, backing.is_some(), flags & FMODE_EXEC != 0);
        (FileHandle(fh), backing)
    }

    fn attr(&self, reply: ReplyAttr, result: io::Result<FileAttr>) {
        match result {
            Ok(attr) => reply.attr(&TTL, &self.shown(attr)),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }
}

/// Whether the caller may keep privilege bits while writing (CAP_FSETID): FUSE does not say, and
/// the kernel flags only writes; for truncation by open or setattr, root stands for the capability.
fn lacks_fsetid(req: &Request) -> bool {
    req.uid() != 0
}

fn empty(reply: ReplyEmpty, result: io::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno::from_io(&e)),
    }
}

fn timespec(t: TimeOrNow) -> libc::timespec {
    match t {
        TimeOrNow::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        TimeOrNow::SpecificTime(t) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let nsec = d.subsec_nanos() as i64;
                    if nsec == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (-(d.as_secs() as i64) - 1, 1_000_000_000 - nsec)
                    }
                }
            };
            libc::timespec { tv_sec: sec, tv_nsec: nsec }
        }
    }
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // KILLPRIV_V2: the daemon drops set-user-id/set-group-id bits on unprivileged writes and
        // truncations, so the kernel marks inodes S_NOSEC and stops sending a GETXATTR of
        // `security.capability` before every write (a round trip per write(2) otherwise). The
        // host drops file capabilities itself when the upper file is written.
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        // Passthrough needs CAP_SYS_ADMIN for its backing files, and the kernel does not combine
        // it with the writeback cache: root gets passthrough, others the writeback cache.
        self.io.passthrough = crate::upper::privileged()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok();
        wanted |= if self.io.passthrough { InitFlags::FUSE_PASSTHROUGH } else { InitFlags::FUSE_WRITEBACK_CACHE };
        self.opendirs_unneeded = config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        super::negotiate(config, wanted);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.overlay.lookup(parent.0, name.as_bytes()) {
            // Every change goes through this mount, which the kernel's dentry cache follows: an
            // absence can be cached like any entry (a later create turns it into the new object,
            // and a create after a failed stat needs no second lookup).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => reply.entry(&TTL, &attr::negative(), Generation(0)),
            result => self.entry(reply, result),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.overlay.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, self.overlay.getattr(ino.0))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // ftruncate goes to the open upper file: the kernel checked access when it was opened, and
        // the file may be read-only by now.
        let by_handle = match (size, fh.and_then(|fh| self.files.get(fh.0)).as_deref()) {
            (Some(size), Some(OpenFile::Upper(file))) => match file.set_len(size) {
                Ok(()) => true,
                Err(e) => return reply.error(errno::from_io(&e)),
            },
            _ => false,
        };
        // Nothing to change: the kernel dropping privileges, which FUSE_HANDLE_KILLPRIV_V2 leaves
        // to the filesystem. It sends this before a write, fallocate or copy into a file with
        // set-user-id or set-group-id bits by a caller without CAP_FSETID (also for a
        // passthrough write the daemon never sees, into a file made set-user-id while open),
        // and for a chown(2) naming neither id. It also sends it before any write into a file
        // with capabilities, which it has just removed: from root (CAP_FSETID) that write keeps
        // the bits, and root's chown(f, -1, -1) cannot be told from it (it keeps them too).
        let drops_privileges =
            [mode.is_none(), uid.is_none(), gid.is_none(), size.is_none(), atime.is_none(), mtime.is_none()]
                .into_iter()
                .all(|none| none)
                && lacks_fsetid(req);
        let mode = match drops_privileges {
            true => match self.overlay.getattr(ino.0) {
                Ok(attr) if attr.kind != FileType::Directory => {
                    without_privilege_bits(attr.perm.into(), attr.gid == self.caller(req).gid)
                }
                Ok(_) => None,
                Err(e) => return reply.error(errno::from_io(&e)),
            },
            false => mode,
        };
        let (uid, gid) = match self.ids.squashes() {
            true => (None, None),
            false => (uid.map(|u| self.ids.stored_uid(u)), gid.map(|g| self.ids.stored_gid(g))),
        };
        let change = AttrChange {
            mode,
            uid,
            gid,
            size: size.filter(|_| !by_handle),
            atime: atime.map(timespec),
            mtime: mtime.map(timespec),
        };
        // A size change is a data change: not while opens read the lower file (see `open`).
        let data_change = match size.map(|_| self.io.lock_for_data_change(ino.0, true)).transpose() {
            Ok(locked) => locked,
            Err(e) => return reply.error(errno::from_io(&e)),
        };
        let mut result = self.overlay.setattr(ino.0, &change);
        drop(data_change);
        if result.is_ok() && size.is_some() && mode.is_none() && lacks_fsetid(req) {
            result =
                self.overlay.drop_privilege_bits(ino.0, self.caller(req)).and_then(|()| self.overlay.getattr(ino.0));
        }
        self.attr(reply, result)
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.overlay.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = Kind::of_mode(mode);
        let dev = libc::makedev((rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
        self.entry(
            reply,
            self.overlay.make(
                parent.0,
                name.as_bytes(),
                &NewObject { rdev: dev, ..NewObject::of(kind, mode) },
                self.caller(req),
            ),
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        self.entry(
            reply,
            self.overlay.make(parent.0, name.as_bytes(), &NewObject::of(Kind::Dir, mode), self.caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.overlay.remove(parent.0, name.as_bytes(), false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.overlay.remove(parent.0, name.as_bytes(), true));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        self.entry(
            reply,
            self.overlay.make(
                parent.0,
                link_name.as_bytes(),
                &NewObject { target, ..NewObject::of(Kind::Symlink, 0o777) },
                self.caller(req),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.overlay.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits()));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.overlay.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let changes_data = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        // Made before taking the io lock: a first copy of a large file takes a while.
        let shared = if changes_data { None } else { self.shared_copy(ino.0) };
        // The kernel checks a writing open against running programs before it reaches the daemon.
        let checked_by_kernel = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let locked =
            if changes_data { self.io.lock_for_data_change(ino.0, checked_by_kernel) } else { Ok(self.io.lock()) };
        let mut inodes = match locked {
            Ok(inodes) => inodes,
            Err(e) => return reply.error(errno::from_io(&e)),
        };
        let file = match (self.overlay.open(ino.0, flags.0), shared) {
            (Ok(OpenFile::Lower(FileReader::InArchive { .. })), Some(copy)) => OpenFile::Lower(FileReader::Host(copy)),
            (Ok(file), _) => file,
            (Err(e), _) => return reply.error(errno::from_io(&e)),
        };
        if flags.0 & libc::O_TRUNC != 0 && lacks_fsetid(req) {
            if let Err(e) = self.overlay.drop_privilege_bits(ino.0, self.caller(req)) {
                self.overlay.release(ino.0);
                return reply.error(errno::from_io(&e));
            }
        }
        let may_need_direct_io = flags.0 & libc::O_APPEND != 0 || flags.0 & libc::O_ACCMODE == libc::O_WRONLY;
        let direct_io = may_need_direct_io && matches!(&file, OpenFile::Upper(f) if crate::upper::needs_direct_io(f));
        let (fh, backing) = self.adopt(&mut inodes, ino.0, file, flags.0, |f| reply.open_backing(f));
        match backing {
            // Keep-cache is not allowed with passthrough: the page cache is the backing file's.
            Some(backing) => reply.opened_passthrough(fh, NO_FLUSH, &backing),
            None if direct_io => reply.opened(fh, NO_FLUSH | FopenFlags::FOPEN_DIRECT_IO),
            None => reply.opened(fh, NO_FLUSH | FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // The new file comes back open read-write (the kernel checks this open's access mode).
        match self.overlay.create(parent.0, name.as_bytes(), mode, self.caller(req)) {
            Ok((attr, file)) => {
                let mut inodes = self.io.lock();
                let (fh, backing) =
                    self.adopt(&mut inodes, attr.ino.0, OpenFile::Upper(file), libc::O_RDWR, |f| reply.open_backing(f));
                let shown = self.shown(attr);
                match backing {
                    Some(backing) => reply.created_passthrough(&TTL, &shown, Generation(0), fh, NO_FLUSH, &backing),
                    None => reply.created(&TTL, &shown, Generation(0), fh, NO_FLUSH | FopenFlags::FOPEN_KEEP_CACHE),
                }
            }
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.files.get(fh.0).as_deref() {
            Some(OpenFile::Lower(reader)) => read_into_reply(reader, offset, size, reply),
            Some(OpenFile::Upper(file)) => read_into_reply(file, offset, size, reply),
            None => reply.error(Errno::EBADF),
        }
    }

    /// SEEK_DATA/SEEK_HOLE, so `cp` and `tar --sparse` find sparse files' holes. With the
    /// writeback cache the kernel asks without writing its dirty pages back first, so the upper
    /// file could show a hole (or its end) where the kernel holds data: ENOSYS then, after which
    /// the kernel treats every file of the mount as data up to its end.
    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        if !self.io.passthrough {
            return reply.error(Errno::ENOSYS);
        }
        let found = |result: io::Result<u64>| result.map_err(|e| errno::from_io(&e));
        reply_lseek(
            offset,
            whence,
            |at, whence| match self.files.get(fh.0).as_deref() {
                Some(OpenFile::Lower(reader)) => found(reader.seek_data_or_hole(at, whence)),
                Some(OpenFile::Upper(file)) => found(crate::layer::blob::seek_data_or_hole(file, at, whence)),
                None => Err(Errno::EBADF),
            },
            reply,
        )
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.files.get(fh.0).as_deref() {
            Some(OpenFile::Upper(file)) => {
                let mut result = file.write_all_at(data, offset);
                if result.is_ok() && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                    result = self.overlay.drop_privilege_bits(ino.0, self.caller(req));
                }
                match result {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(errno::from_io(&e)),
                }
            }
            _ => reply.error(Errno::EBADF),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(fh.0);
        self.io.released(fh.0);
        self.overlay.release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let result = match self.files.get(fh.0).as_deref() {
            Some(OpenFile::Upper(file)) if datasync => file.sync_data(),
            Some(OpenFile::Upper(file)) => file.sync_all(),
            _ => Ok(()),
        };
        empty(reply, result);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = match self.files.get(fh.0).as_deref() {
            // SAFETY: an open descriptor and plain integers.
            Some(OpenFile::Upper(file)) => {
                match unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) } {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            }
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        empty(reply, result);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.opendirs_unneeded {
            // Walking a tree then costs no OPENDIR/RELEASEDIR round trip per directory.
            return reply.error(Errno::ENOSYS);
        }
        // Changes made through this mount invalidate the kernel's cached listing itself.
        reply.opened(FileHandle(NO_HANDLE), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.listings.for_pass(ino.0, offset, || self.overlay.readdir(ino.0)) {
            Ok(listing) => {
                for (next, child, kind, name) in listing.after(ino.0, offset) {
                    if reply.add(INodeNo(child), next, attr::file_type(kind), OsStr::from_bytes(name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.overlay.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.overlay.change_xattr(ino.0, name.as_bytes(), Some(value), flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.overlay.xattr(ino.0, name.as_bytes()) {
            Ok(Some(value)) => reply_xattr(reply, size, &value),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.overlay.xattr_names(ino.0) {
            Ok(list) => reply_xattr_names(reply, size, list.iter().map(Vec::as_slice), req),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let Some(op) = FileAttrIoctl::from_cmd(cmd).filter(|_| !flags.contains(IoctlFlags::FUSE_IOCTL_COMPAT)) else {
            return reply.error(Errno::ENOTTY);
        };
        match self.overlay.file_attr(ino.0, op, in_data) {
            Ok(out) => reply.ioctl(0, &out[..out.len().min(out_size as usize)]),
            Err(e) => reply.error(errno::from_io(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.overlay.change_xattr(ino.0, name.as_bytes(), None, 0));
    }
}
