//! The writable union: an inode table over the immutable lower layers ([`Lower`]) and the
//! private [`Upper`] directory, with kernel overlayfs' semantics. Lookups see the upper first
//! (whiteouts hide, opaque directories stop the merge), then the lower tree. Every change copies
//! the object up first (parents first, atomically via the work directory), deletions of lower
//! objects leave whiteouts, and an inode keeps its number across copy-up for the mount's life.
//! The FUSE adapter (`fuse::overlay_fs`) only translates requests into these calls.

mod inodes;
mod lower;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use fuser::FileAttr;

use crate::fuse::attr;
use crate::layer::cache::Cache;
use crate::layer::index::Kind;
use crate::layer::FileReader;
use crate::merge::{NodeId, ROOT};
use crate::upper::{CopySource, FileAttrIoctl, Upper, UpperEntry, XattrMode};
use inodes::{Inode, Table, ROOT_INO};
pub use lower::Lower;

pub use inodes::Ino;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// An open file: read from a lower layer, or the upper copy.
pub enum OpenFile {
    Lower(FileReader),
    Upper(File),
}

/// A name in a directory listing.
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: Kind,
}

/// A setattr request: each field that is Some changes.
#[derive(Clone, Copy, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<libc::timespec>,
    pub mtime: Option<libc::timespec>,
}

impl AttrChange {
    /// The change made to attributes alone (those of an object that is gone).
    fn apply_to(&self, attr: &mut FileAttr) {
        let time = |t: libc::timespec| match t.tv_nsec {
            libc::UTIME_NOW => std::time::SystemTime::now(),
            nsec => attr::time(crate::layer::index::Timestamp { sec: t.tv_sec, nsec: nsec as u32 }),
        };
        attr.perm = self.mode.map_or(attr.perm, |m| (m & 0o7777) as u16);
        attr.uid = self.uid.unwrap_or(attr.uid);
        attr.gid = self.gid.unwrap_or(attr.gid);
        attr.size = self.size.unwrap_or(attr.size);
        attr.atime = self.atime.map_or(attr.atime, time);
        attr.mtime = self.mtime.map_or(attr.mtime, time);
    }
}

/// What `make` creates: its kind, mode, device number (devices) and target (symlinks).
#[derive(Clone, Copy)]
pub struct NewObject<'a> {
    pub kind: Kind,
    pub mode: u32,
    pub rdev: u64,
    pub target: &'a [u8],
}

impl NewObject<'_> {
    pub fn of(kind: Kind, mode: u32) -> NewObject<'static> {
        NewObject { kind, mode, rdev: 0, target: b"" }
    }
}

/// Who creates an object: it is owned by them.
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The mode a write or truncation by a caller without CAP_FSETID leaves, as the kernel's
/// `setattr_should_drop_suidgid`: without set-user-id, and without set-group-id when group
/// execution is allowed or the caller is not in the file's group (otherwise the bit marks
/// mandatory locking and stays). None when nothing changes.
pub fn without_privilege_bits(mode: u32, caller_in_group: bool) -> Option<u32> {
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || !caller_in_group {
        kept &= !libc::S_ISGID;
    }
    (kept != mode).then_some(kept)
}

/// Refuses (EINVAL) a new name that the upper would read back as a whiteout or an opaque
/// marker (`.wh.NAME`, `.wh..wh..opq`), as fuse-overlayfs does: a user could otherwise hide
/// files of the lower layers from everyone, for good. (Kernel overlayfs, whose upper has no
/// such names, accepts them.)
fn refuse_whiteout_name(name: &[u8]) -> io::Result<()> {
    match name.starts_with(crate::layer::whiteout::WHITEOUT_PREFIX) {
        true => Err(errno(libc::EINVAL)),
        false => Ok(()),
    }
}

/// True for a mode whose writes may have to drop privilege bits ([`without_privilege_bits`]).
pub fn has_privilege_bits(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

/// The inode number of the upper object with host inode number `host_ino`: a copy-up keeps the
/// number it had in the lower (recorded when this mount copied it up); any other upper object
/// gets a number of its own.
fn upper_ino(table: &mut Table, host_ino: u64) -> Ino {
    table.origin(host_ino).unwrap_or_else(|| {
        let ino = table.new_ino();
        table.set_origin(host_ino, ino);
        ino
    })
}

/// What a name in a directory stands for.
enum Probe {
    /// An object, with the upper's lstat of it when it is in the upper.
    Found(Ino, Inode, Option<Box<std::fs::Metadata>>),
    /// Nothing; `whiteout` when the upper hides a lower object there.
    Absent { whiteout: bool },
}

/// The upper object `meta` describes has gone (or is about to): the host may reuse its inode
/// number for a new object, which must not inherit this one's overlay number.
fn forget_host_meta(table: &mut Table, meta: &std::fs::Metadata) {
    // A hard-linked object lives on under its other names, and keeps its number.
    if meta.is_dir() || meta.nlink() <= 1 {
        table.forget_origin(meta.ino());
    }
}

pub struct Overlay {
    lower: Lower,
    upper: Upper,
    table: Mutex<Table>,
}

/// Opens a writable overlay of `lower` with its upper and work directories (created if missing),
/// refusing an upper or work directory that overlaps a lower directory or each other: writes
/// would otherwise land in a lower layer. `stored_modes`: the xattr to keep owners and
/// permissions in (fuse-overlayfs' `xattr_permissions`, see `layer::override_stat`).
pub fn open(lower: Lower, upper: &Path, work: &Path, stored_modes: Option<&'static [u8]>) -> crate::Result<Overlay> {
    let refuse = |detail: String| crate::Error::Mount { path: upper.to_path_buf(), detail };
    for dir in [upper, work] {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| crate::Error::io(p, e));
    let (u, w) = (canonical(upper)?, canonical(work)?);
    if u.starts_with(&w) || w.starts_with(&u) {
        return Err(refuse(format!(
            "the upper and work directories ({}, {}) must not contain each other",
            u.display(),
            w.display()
        )));
    }
    for dir in lower.host_dirs() {
        let l = canonical(dir)?;
        if l.starts_with(&u) || u.starts_with(&l) || l.starts_with(&w) || w.starts_with(&l) {
            return Err(refuse(format!("the lower directory {} overlaps the upper or work directory", l.display())));
        }
    }
    let mode = if crate::upper::privileged() { XattrMode::Trusted } else { XattrMode::User };
    let mut upper = Upper::open(&u, &w, mode).map_err(|e| refuse(e.to_string()))?;
    if let Some(name) = stored_modes {
        let top_first: Vec<&Path> = lower.host_dirs().into_iter().rev().collect();
        upper.store_modes_in(name, &top_first).map_err(|e| {
            refuse(format!("cannot keep owners and permissions in {} there: {e}", String::from_utf8_lossy(name)))
        })?;
    }
    Ok(Overlay::new(lower, upper))
}

impl Overlay {
    pub fn new(lower: Lower, upper: Upper) -> Overlay {
        let root_lower = (!upper.is_opaque(b"")).then_some(ROOT);
        let first_free = lower.first_free_ino();
        Overlay { table: Mutex::new(Table::new(root_lower, first_free)), lower, upper }
    }

    /// The inode table. A panic in another request must not take the whole mount down with a
    /// poisoned lock: the table is only changed after the host operation succeeded.
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lower_ino(&self, node: NodeId) -> Ino {
        self.lower.ino(node)
    }

    fn lower_kind(&self, node: NodeId) -> Kind {
        self.lower.kind(node)
    }

    /// Resolves `name` in directory `parent`: (inode number, inode) without registering it.
    fn resolve(&self, table: &mut Table, parent: Ino, name: &[u8]) -> io::Result<(Ino, Inode)> {
        match self.probe(table, parent, name)? {
            Probe::Found(ino, inode, _) => Ok((ino, inode)),
            Probe::Absent { .. } => Err(errno(libc::ENOENT)),
        }
    }

    /// What `name` in directory `parent` is: an object, or nothing (possibly a whiteout).
    fn probe(&self, table: &mut Table, parent: Ino, name: &[u8]) -> io::Result<Probe> {
        if name.len() > 255 {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let dir = table.get(parent)?;
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let dir_path = table.path(parent)?;
        let path = crate::path::join(&dir_path, name);
        let lower_child = match dir.lower {
            Some(d) => self.lower.lookup_child(d, name)?,
            None => None,
        };
        if dir.upper {
            match self.upper.entry(&path)? {
                UpperEntry::Whiteout => return Ok(Probe::Absent { whiteout: true }),
                UpperEntry::Present(meta) => {
                    let kind = Kind::of_host(meta.file_type());
                    let merges = kind == Kind::Dir && !self.upper.is_opaque(&path);
                    let lower = lower_child.filter(|&c| merges && self.lower_kind(c) == Kind::Dir);
                    let inode = Inode::new(parent, name, lower, true, kind);
                    return Ok(Probe::Found(upper_ino(table, meta.ino()), inode, Some(Box::new(meta))));
                }
                UpperEntry::Missing => {}
            }
        }
        Ok(match lower_child {
            Some(child) => Probe::Found(
                self.lower_ino(child),
                Inode::new(parent, name, Some(child), false, self.lower_kind(child)),
                None,
            ),
            None => Probe::Absent { whiteout: false },
        })
    }

    /// Looks up a name and registers it with the kernel (one more lookup reference).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> io::Result<FileAttr> {
        let mut table = self.table();
        let (ino, inode) = self.resolve(&mut table, parent, name)?;
        table.remember(ino, inode);
        self.attr_locked(&table, ino)
    }

    pub fn forget(&self, ino: Ino, count: u64) {
        let orphan = self.table().forget(ino, count);
        self.remove_orphan(orphan);
    }

    /// One open of `ino` (by [`Overlay::open`] or [`Overlay::create`]) was released.
    pub fn release(&self, ino: Ino) {
        let mut table = self.table();
        let last = table.get(ino).is_ok_and(Inode::is_orphan).then(|| self.attr_locked(&table, ino).ok()).flatten();
        let orphan = table.released(ino);
        if let (Some(_), Some(last)) = (&orphan, last) {
            self.note_gone(&mut table, ino, last);
        }
        drop(table);
        self.remove_orphan(orphan);
    }

    /// Deletes an orphan nothing uses any more. Failing leaves a link in the work directory,
    /// cleaned at the next mount: logged, not an error for the request that let it go.
    fn remove_orphan(&self, orphan: Option<Vec<u8>>) {
        if let Some(path) = orphan {
            if let Err(e) = self.upper.remove_orphan(&path) {
                tracing::warn!("cannot delete {}, an unlinked file closed: {e}", self.upper.host(&path).display());
            }
        }
    }

    /// Before the last name of `ino` goes: when it is open in the upper, keeps it alive as an
    /// orphan (`Upper::keep_orphan`) and returns its path, for [`Overlay::orphaned`]. Failing to
    /// (a host refusing the link) is no reason to refuse the deletion: the open files keep their
    /// data, only requests by inode then find nothing.
    fn keep_if_open(&self, table: &Table, ino: Ino, parent: Ino, name: &[u8]) -> Option<Vec<u8>> {
        let inode = table.get(ino).ok()?;
        if !inode.upper || !inode.is_open() || inode.kind == Kind::Dir || !inode.only_name_is(parent, name) {
            return None;
        }
        let path = crate::path::join(&table.path(parent).ok()?, name);
        self.upper.keep_orphan(&path).map_err(|e| tracing::warn!("cannot keep an unlinked open file: {e}")).ok()
    }

    /// Records where an object kept by [`Overlay::keep_if_open`] lives on, once its name went;
    /// if the deletion failed, the name is still there and the orphan is deleted.
    fn orphaned(&self, table: &mut Table, ino: Ino, orphan: Option<Vec<u8>>, deleted: bool) {
        match (orphan, deleted) {
            (Some(path), true) => table.make_orphan(ino, path),
            (orphan, _) => self.remove_orphan(orphan),
        }
    }

    pub fn getattr(&self, ino: Ino) -> io::Result<FileAttr> {
        let table = self.table();
        self.attr_locked(&table, ino)
    }

    fn attr_locked(&self, table: &Table, ino: Ino) -> io::Result<FileAttr> {
        let inode = table.get(ino)?;
        if let Some(attr) = inode.gone() {
            return Ok(*attr);
        }
        if inode.upper {
            let path = table.path(ino)?;
            let meta = std::fs::symlink_metadata(self.upper.host(&path))?;
            let mut attr = self.upper_attr(&path, &meta, ino);
            if inode.is_orphan() {
                // Its link in the work directory is not one of its names.
                attr.nlink = attr.nlink.saturating_sub(1);
            }
            return Ok(attr);
        }
        let node_id = inode.lower.expect("an inode is in the upper, the lower, or both");
        let mut a = self.lower.attr(node_id);
        a.ino = fuser::INodeNo(ino);
        a.nlink = a.nlink.saturating_sub(table.removed_names(self.lower_ino(node_id)));
        Ok(a)
    }

    pub fn readlink(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let table = self.table();
        let inode = table.get(ino)?;
        if inode.upper {
            let target = std::fs::read_link(self.upper.host(&table.path(ino)?))?;
            return Ok(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).to_vec());
        }
        let Some(node) = inode.lower else { return Err(errno(libc::EINVAL)) };
        self.lower.with_entry(node, |e| match e.kind {
            Kind::Symlink => Ok(e.link_target.to_vec()),
            _ => Err(errno(libc::EINVAL)),
        })
    }

    /// The merged listing of a directory, without `.` and `..`.
    pub fn readdir(&self, ino: Ino) -> io::Result<Vec<DirEntry>> {
        let mut table = self.table();
        let dir = table.get(ino)?.clone();
        if dir.kind != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        let mut out = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        if dir.upper {
            let (present, hidden) = self.upper.list(&table.path(ino)?)?;
            seen.extend(hidden);
            for (name, meta) in present {
                let child_ino = upper_ino(&mut table, meta.ino());
                out.push(DirEntry { name: name.clone(), ino: child_ino, kind: Kind::of_host(meta.file_type()) });
                seen.insert(name);
            }
        }
        if let Some(lower) = dir.lower {
            for (child, name) in self.lower.children(lower)? {
                if !seen.contains(&name) {
                    out.push(DirEntry { name, ino: self.lower_ino(child), kind: self.lower_kind(child) });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes sure `ino` exists in the upper, copying it (and its parents) up if needed. A lower
    /// file with several names is copied up with all of them, linked, so the kernel's single
    /// inode for the set stays one file (as overlayfs' index=on does).
    fn copy_up(&self, table: &mut Table, ino: Ino) -> io::Result<()> {
        let inode = table.get(ino)?.clone();
        if inode.upper {
            return Ok(());
        }
        self.copy_up(table, inode.parent())?;
        let path = table.path(ino)?;
        let node = inode.lower.expect("an inode not in the upper is in the lower");
        let entry = self.lower.entry(node);
        let reader = if entry.kind == Kind::File { Some(self.lower.open(node)?) } else { None };
        let source = reader.as_ref().map(|r| match r {
            FileReader::InArchive { blob, start, len } => {
                CopySource { file: &blob.file, offset: blob.offset + start, len: *len }
            }
            FileReader::Host(file) => CopySource { file, offset: 0, len: entry.size },
        });
        self.upper.copy_up(&path, &entry, source)?;
        let host_ino = std::fs::symlink_metadata(self.upper.host(&path))?.ino();
        table.set_origin(host_ino, ino);
        table.get_mut(ino)?.upper = true;
        if entry.kind == Kind::File && self.lower.nlink(node) > 1 {
            self.copy_up_other_names(table, node, &path)?;
        }
        Ok(())
    }

    /// Links every other visible name of the lower hard-link set of `node` to the copy at `path`.
    fn copy_up_other_names(&self, table: &mut Table, node: NodeId, path: &[u8]) -> io::Result<()> {
        let others: Vec<Vec<u8>> = self.lower.link_set_paths(node)?.into_iter().filter(|other| other != path).collect();
        for other in others {
            // Only names still showing the lower file: not deleted, replaced or hidden.
            if self.resolve_path(table, &other).is_ok_and(|(i, inode)| !inode.upper && i == self.lower_ino(node)) {
                let (parent, _) = crate::path::split_parent(&other).expect("a file is not the root");
                let parent_ino = self.ensure_dir_path(table, parent)?;
                self.copy_up(table, parent_ino)?;
                self.upper.link(path, &other)?;
            }
        }
        Ok(())
    }

    /// Resolves a merged path from the root.
    fn resolve_path(&self, table: &mut Table, path: &[u8]) -> io::Result<(Ino, Inode)> {
        let mut current = (ROOT_INO, table.get(ROOT_INO)?.clone());
        for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            let next = self.resolve(table, current.0, name)?;
            current = next;
        }
        Ok(current)
    }

    /// Registers every directory of a merged path, returning the last one's inode number.
    fn ensure_dir_path(&self, table: &mut Table, path: &[u8]) -> io::Result<Ino> {
        let mut current = ROOT_INO;
        for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            let (ino, inode) = self.resolve(table, current, name)?;
            table.register(ino, inode);
            current = ino;
        }
        Ok(current)
    }

    /// Opens a file (copying it up first for writing), counted until [`Overlay::release`].
    pub fn open(&self, ino: Ino, flags: i32) -> io::Result<OpenFile> {
        let mut table = self.table();
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            self.copy_up(&mut table, ino)?;
        }
        let file = self.open_locked(&table, ino, flags)?;
        table.opened(ino);
        Ok(file)
    }

    fn open_locked(&self, table: &Table, ino: Ino, flags: i32) -> io::Result<OpenFile> {
        let inode = table.get(ino)?;
        if inode.gone().is_some() {
            // Deleted (by another thread) between the caller's lookup and its open: ESTALE makes
            // the kernel walk the path again, so an O_CREAT open creates the file anew instead
            // of failing with ENOENT, which no local filesystem would answer.
            return Err(errno(libc::ESTALE));
        }
        if inode.upper {
            return Ok(OpenFile::Upper(self.upper.open_file(&table.path(ino)?, flags)?));
        }
        let node = inode.lower.expect("an inode not in the upper is in the lower");
        Ok(OpenFile::Lower(self.lower.open(node)?))
    }

    /// The upper file of `ino` opened again for reading and writing, for an open that has it
    /// read-only (not counted as an open of its own: it serves that open).
    pub fn reopen_read_write(&self, ino: Ino) -> io::Result<File> {
        match self.open_locked(&self.table(), ino, libc::O_RDWR)? {
            OpenFile::Upper(file) => Ok(file),
            OpenFile::Lower(_) => Err(errno(libc::EIO)),
        }
    }

    /// Creates a non-directory object (or, with `Kind::Dir`, a directory) named `name`.
    pub fn make(&self, parent: Ino, name: &[u8], what: &NewObject, who: Caller) -> io::Result<FileAttr> {
        self.make_in_upper(parent, name, what, who).map(|(attr, _)| attr)
    }

    /// Creates a regular file named `name` and returns it open for reading and writing.
    pub fn create(&self, parent: Ino, name: &[u8], mode: u32, who: Caller) -> io::Result<(FileAttr, File)> {
        let (attr, file) = self.make_in_upper(parent, name, &NewObject::of(Kind::File, mode), who)?;
        Ok((attr, file.expect("a regular file is made open")))
    }

    fn make_in_upper(
        &self,
        parent: Ino,
        name: &[u8],
        what: &NewObject,
        who: Caller,
    ) -> io::Result<(FileAttr, Option<File>)> {
        let NewObject { kind, mode, rdev, target } = *what;
        refuse_whiteout_name(name)?;
        let mut table = self.table();
        // A deleted lower object leaves a whiteout; a directory made over it must be opaque.
        let Probe::Absent { whiteout: replaces_whiteout } = self.probe(&mut table, parent, name)? else {
            return Err(errno(libc::EEXIST));
        };
        if kind == Kind::CharDevice && rdev == 0 {
            // The upper's own whiteout: made, it would vanish once the kernel forgot it (as
            // kernel overlayfs, refused).
            return Err(errno(libc::EPERM));
        }
        self.copy_up(&mut table, parent)?;
        let path = crate::path::join(&table.path(parent)?, name);
        let (gid, mode) = self.inherit_setgid(&table, parent, who, kind, mode)?;
        let owner = (who.uid, gid);
        let file = match kind {
            Kind::Dir => self.upper.mkdir(&path, mode, owner, replaces_whiteout).map(|()| None)?,
            Kind::File => Some(self.upper.create_file(&path, mode, owner)?),
            _ => self.upper.create(&path, kind, mode, rdev, target, owner).map(|()| None)?,
        };
        let meta = match &file {
            Some(file) => file.metadata()?,
            None => std::fs::symlink_metadata(self.upper.host(&path))?,
        };
        // Nothing of a lower layer shows through a new object: the name did not resolve, so the
        // lower has none, or it is whited out (and a directory made there is opaque).
        let ino = upper_ino(&mut table, meta.ino());
        table.remember(ino, Inode::new(parent, name, None, true, kind));
        if file.is_some() {
            table.opened(ino);
        }
        Ok((self.upper_attr(&path, &meta, ino), file))
    }

    /// The attributes of the upper object at `path`: the host's, with the owner and permissions
    /// it stores where the upper keeps them in an xattr.
    fn upper_attr(&self, path: &[u8], meta: &std::fs::Metadata, ino: Ino) -> FileAttr {
        let mut attr = attr::from_metadata(meta, ino);
        if let Some(stored) = self.upper.stored_mode(path, Kind::of_host(meta.file_type())) {
            (attr.uid, attr.gid, attr.perm) = (stored.uid, stored.gid, stored.mode as u16);
        }
        attr
    }

    /// The group and mode of a new object: in a setgid directory it takes the directory's group,
    /// and a new directory there is setgid too (as the kernel does on a real filesystem).
    fn inherit_setgid(&self, table: &Table, parent: Ino, who: Caller, kind: Kind, mode: u32) -> io::Result<(u32, u32)> {
        let dir = self.attr_locked(table, parent)?;
        Ok(match (dir.perm as u32 & libc::S_ISGID != 0, kind) {
            (false, _) => (who.gid, mode),
            (true, Kind::Dir) => (dir.gid, mode | libc::S_ISGID),
            (true, _) => (dir.gid, mode),
        })
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> io::Result<FileAttr> {
        refuse_whiteout_name(new_name)?;
        let mut table = self.table();
        if self.resolve(&mut table, new_parent, new_name).is_ok() {
            return Err(errno(libc::EEXIST));
        }
        if table.get(ino)?.kind == Kind::Dir {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(&mut table, ino)?;
        self.copy_up(&mut table, new_parent)?;
        let from = table.path(ino)?;
        let to = crate::path::join(&table.path(new_parent)?, new_name);
        self.upper.link(&from, &to)?;
        // The kernel takes a lookup reference on the inode it gets back, as for a lookup.
        table.add_name(ino, new_parent, new_name);
        table.add_lookup(ino);
        self.attr_locked(&table, ino)
    }

    /// Removes a name: a file (`dir == false`) or an empty directory.
    pub fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> io::Result<()> {
        let mut table = self.table();
        let Probe::Found(ino, inode, in_upper) = self.probe(&mut table, parent, name)? else {
            return Err(errno(libc::ENOENT));
        };
        match (dir, inode.kind == Kind::Dir) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        table.register(ino, inode);
        if dir && !self.readdir_locked_is_empty(&table, ino)? {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.copy_up(&mut table, parent)?;
        let path = crate::path::join(&table.path(parent)?, name);
        let orphan = self.keep_if_open(&table, ino, parent, name);
        let last_attr = match &in_upper {
            Some(meta) => self.upper_attr(&path, meta, ino),
            None => self.attr_locked(&table, ino)?,
        };
        let deleted = match self.lower_shows(&table, parent, name) {
            Ok(true) => self.upper.whiteout(&path),
            Ok(false) => self.upper.remove(&path),
            Err(e) => Err(e),
        };
        self.orphaned(&mut table, ino, orphan, deleted.is_ok());
        deleted?;
        if let Some(meta) = in_upper {
            forget_host_meta(&mut table, &meta);
        }
        self.name_gone(&mut table, ino, parent, name)?;
        self.note_gone(&mut table, ino, last_attr);
        Ok(())
    }

    /// After the name of `ino` went: an inode with no name left and not kept as an orphan is gone,
    /// with `last` as its attributes from now on.
    fn note_gone(&self, table: &mut Table, ino: Ino, last: FileAttr) {
        if let Ok(inode) = table.get(ino) {
            if inode.is_nameless() && !inode.is_orphan() {
                table.gone(ino, last);
            }
        }
    }

    /// A name of `ino` has gone (unlinked, or replaced by a rename). A lower file of a hard-link
    /// set that was never copied up has one name fewer: its other names report it.
    fn name_gone(&self, table: &mut Table, ino: Ino, parent: Ino, name: &[u8]) -> io::Result<()> {
        let inode = table.get(ino)?;
        if let (false, Some(node)) = (inode.upper, inode.lower) {
            table.note_removed_name(self.lower_ino(node));
        }
        table.remove_name(ino, parent, name);
        Ok(())
    }

    /// True when a lower object would show at `name` in `dir` if the upper had nothing there:
    /// only then does a deletion need a whiteout (kernel overlayfs reads opaque and upper-only
    /// directories as they are, so a whiteout there would show as a device).
    fn lower_shows(&self, table: &Table, dir: Ino, name: &[u8]) -> io::Result<bool> {
        match table.get(dir)?.lower {
            Some(d) => Ok(self.lower.lookup_child(d, name)?.is_some()),
            None => Ok(false),
        }
    }

    fn readdir_locked_is_empty(&self, table: &Table, ino: Ino) -> io::Result<bool> {
        let dir = table.get(ino)?;
        if dir.upper && !self.upper.list(&table.path(ino)?)?.0.is_empty() {
            return Ok(false);
        }
        let Some(lower) = dir.lower else { return Ok(true) };
        if !dir.upper {
            return Ok(self.lower.children(lower)?.is_empty());
        }
        let (_, hidden) = self.upper.list(&table.path(ino)?)?;
        let hidden: HashSet<&[u8]> = hidden.iter().map(|h| &h[..]).collect();
        Ok(self.lower.children(lower)?.iter().all(|(_, name)| hidden.contains(&name[..])))
    }

    /// Renames with renameat2 semantics. A directory that has lower content cannot move
    /// (EXDEV, as overlayfs without redirect_dir): `mv` then copies and deletes.
    pub fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8], flags: u32) -> io::Result<()> {
        // RENAME_WHITEOUT is the kernel's own overlayfs' tool, refused by it as by any overlay.
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        refuse_whiteout_name(new_name)?;
        let mut table = self.table();
        let (ino, source) = self.resolve(&mut table, parent, name)?;
        let target = match self.resolve(&mut table, new_parent, new_name) {
            Ok(t) => Some(t),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if (flags & libc::RENAME_NOREPLACE != 0) && target.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if exchange && target.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if source.kind == Kind::Dir && source.lower.is_some() {
            return Err(errno(libc::EXDEV));
        }
        if let Some((target_ino, t)) = &target {
            if *target_ino == ino {
                return Ok(());
            }
            if exchange && t.kind == Kind::Dir && t.lower.is_some() {
                return Err(errno(libc::EXDEV));
            }
            if !exchange {
                match (source.kind == Kind::Dir, t.kind == Kind::Dir) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) => {
                        table.register(*target_ino, t.clone());
                        if !self.readdir_locked_is_empty(&table, *target_ino)? {
                            return Err(errno(libc::ENOTEMPTY));
                        }
                    }
                    _ => {}
                }
            }
        }
        table.register(ino, source.clone());
        self.copy_up(&mut table, ino)?;
        if let Some((target_ino, t)) = &target {
            table.register(*target_ino, t.clone());
            if exchange {
                self.copy_up(&mut table, *target_ino)?;
            }
        }
        self.copy_up(&mut table, new_parent)?;
        // The source by its own name: a hard-linked inode has others, and `path(ino)` may be one.
        let from = crate::path::join(&table.path(parent)?, name);
        let to = crate::path::join(&table.path(new_parent)?, new_name);
        let replaced = target.as_ref().filter(|_| !exchange).map(|(target_ino, _)| *target_ino);
        let replaced_attr = replaced.map(|target_ino| self.attr_locked(&table, target_ino)).transpose()?;
        // A directory moving where a lower layer has something must hide it: made opaque before
        // anything moves (it has no lower content of its own, EXDEV above, so being opaque
        // changes nothing where it is), so no crash shows the lower names through it.
        let mut moving = vec![(source.kind, &from, new_parent, new_name)];
        if let (true, Some((_, t))) = (exchange, &target) {
            moving.push((t.kind, &to, parent, name));
        }
        for (kind, now_at, dir, name_there) in moving {
            if kind == Kind::Dir && self.lower_shows(&table, dir, name_there)? {
                self.upper.make_opaque(now_at)?;
            }
        }
        let source_shadows_lower = !exchange && self.lower_shows(&table, parent, name)?;
        let mut host_flags = flags & libc::RENAME_EXCHANGE;
        // A directory cannot be renamed over a whiteout or a directory holding whiteouts: the
        // target becomes a whiteout (atomically), and the directory is exchanged with it.
        let at_target = self.upper.entry(&to)?;
        let over_whiteout = !exchange && source.kind == Kind::Dir && !matches!(at_target, UpperEntry::Missing);
        // The object replaced goes from the host once the rename (or the whiteout) is done.
        let mut target_meta = match at_target {
            UpperEntry::Present(meta) if !exchange => Some(meta),
            _ => None,
        };
        if over_whiteout {
            self.upper.whiteout(&to)?;
            if let Some(meta) = target_meta.take() {
                forget_host_meta(&mut table, &meta);
            }
            host_flags |= libc::RENAME_EXCHANGE;
        } else if source_shadows_lower {
            host_flags |= libc::RENAME_WHITEOUT;
        }
        let orphan = replaced.and_then(|target_ino| self.keep_if_open(&table, target_ino, new_parent, new_name));
        let renamed = self.upper.rename(&from, &to, host_flags);
        if let Some(target_ino) = replaced {
            self.orphaned(&mut table, target_ino, orphan, renamed.is_ok());
        }
        renamed?;
        if let Some(meta) = &target_meta {
            forget_host_meta(&mut table, meta);
        }
        if over_whiteout {
            // The whiteout the directory was exchanged with is now at its old name.
            self.upper.settle_moved_whiteout(&from, source_shadows_lower);
        }
        if let Some((target_ino, _)) = &target {
            if exchange {
                table.rename_name(*target_ino, (new_parent, new_name), (parent, name));
            } else {
                self.name_gone(&mut table, *target_ino, new_parent, new_name)?;
                if let Some(last) = replaced_attr {
                    self.note_gone(&mut table, *target_ino, last);
                }
            }
        }
        table.rename_name(ino, (parent, name), (new_parent, new_name));
        Ok(())
    }

    /// Changes metadata (copying up first).
    pub fn setattr(&self, ino: Ino, change: &AttrChange) -> io::Result<FileAttr> {
        let AttrChange { mode, uid, gid, size, atime, mtime } = *change;
        let mut table = self.table();
        if let Some(attr) = table.change_gone(ino, |attr| change.apply_to(attr)) {
            return Ok(attr);
        }
        self.copy_up(&mut table, ino)?;
        let path = table.path(ino)?;
        if uid.is_some() || gid.is_some() {
            self.upper.chown(&path, uid, gid)?;
        }
        if let Some(mode) = mode {
            self.upper.chmod(&path, mode)?;
        }
        if let Some(size) = size {
            self.upper.truncate(&path, size)?;
        }
        if atime.is_some() || mtime.is_some() {
            self.upper.set_times(&path, atime, mtime)?;
        }
        self.attr_locked(&table, ino)
    }

    /// One xattr.
    pub fn xattr(&self, ino: Ino, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.xattr_locked(&self.table(), ino, name)
    }

    fn xattr_locked(&self, table: &Table, ino: Ino, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let inode = table.get(ino)?;
        if inode.upper {
            return self.upper.xattr(&table.path(ino)?, name);
        }
        let Some(node) = inode.lower else { return Ok(None) };
        Ok(self.lower.with_entry(node, |e| {
            let found = e.xattrs.iter().find(|(n, _)| **n == *name);
            found.filter(|(n, _)| !crate::layer::whiteout::is_internal_xattr(n)).map(|(_, v)| v.to_vec())
        }))
    }

    /// The names of the xattrs users see (listxattr).
    pub fn xattr_names(&self, ino: Ino) -> io::Result<Vec<Vec<u8>>> {
        let table = self.table();
        let inode = table.get(ino)?;
        if inode.upper {
            return self.upper.xattr_names(&table.path(ino)?);
        }
        let list = inode.lower.map(|n| self.lower.entry(n).xattrs).unwrap_or_default();
        Ok(list
            .into_iter()
            .map(|(n, _)| n.into_vec())
            .filter(|n| !crate::layer::whiteout::is_internal_xattr(n))
            .collect())
    }

    /// Sets (`Some`) or removes (`None`) an xattr; overlay bookkeeping names are refused.
    pub fn change_xattr(&self, ino: Ino, name: &[u8], value: Option<&[u8]>, flags: i32) -> io::Result<()> {
        if crate::layer::whiteout::is_internal_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        if name.starts_with(b"system.") {
            // POSIX ACLs would change the mode behind the kernel's cached attributes (mount
            // option noacl); tools then fall back to chmod.
            return Err(errno(libc::EOPNOTSUPP));
        }
        let mut table = self.table();
        // Removing what is not there copies nothing up.
        if value.is_none() && self.xattr_locked(&table, ino, name)?.is_none() {
            return Err(errno(libc::ENODATA));
        }
        self.copy_up(&mut table, ino)?;
        let path = table.path(ino)?;
        match value {
            Some(v) => self.upper.set_xattr(&path, name, v, flags),
            None => self.upper.remove_xattr(&path, name),
        }
    }

    /// Serves `lsattr`/`chattr` and fsxattr requests: reads what an upper object has (a lower
    /// one has none: zeros), or copies the object up and changes it there; `input` is the
    /// argument of a change. Returns what a read gives back.
    pub fn file_attr(&self, ino: Ino, op: FileAttrIoctl, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut arg = vec![0u8; op.arg_size()];
        let mut table = self.table();
        if op.changes() {
            arg.copy_from_slice(input.get(..op.arg_size()).ok_or_else(|| errno(libc::EINVAL))?);
            self.copy_up(&mut table, ino)?;
        } else if !table.get(ino)?.upper {
            return Ok(arg);
        }
        self.upper.file_attr(&table.path(ino)?, op, &mut arg)?;
        Ok(if op.changes() { Vec::new() } else { arg })
    }

    /// Drops the set-user-id bit and an executable set-group-id bit of `ino`, as the kernel does
    /// when a caller without CAP_FSETID writes or truncates a file. Under FUSE_HANDLE_KILLPRIV_V2
    /// the kernel leaves this to the filesystem (and, in exchange, stops asking for
    /// `security.capability` before every write).
    pub fn drop_privilege_bits(&self, ino: Ino, who: Caller) -> io::Result<()> {
        let table = self.table();
        let attr = self.attr_locked(&table, ino)?;
        match without_privilege_bits(attr.perm as u32, attr.gid == who.gid) {
            Some(mode) if table.get(ino)?.upper => self.upper.chmod(&table.path(ino)?, mode),
            _ => Ok(()),
        }
    }

    /// The shared host copy of `ino`'s bytes (`Layer::shared_copy`) when it is a non-empty file of
    /// at most `max_size` bytes still served from a tar layer; None for anything else.
    pub fn shared_lower_copy(&self, ino: Ino, cache: &Cache, max_size: u64) -> io::Result<Option<File>> {
        let (layer, entry) = {
            let table = self.table();
            let inode = table.get(ino)?;
            let Some(node) = inode.lower.filter(|_| !inode.upper) else { return Ok(None) };
            // A directory layer's files are host files already.
            let Some(file) = self.lower.tar_file(node, max_size) else { return Ok(None) };
            file
        };
        // Made outside the table lock: a first copy of a large file takes a while.
        layer.shared_copy(&entry, cache)
    }

    pub fn statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        self.upper.statvfs()
    }
}

#[cfg(test)]
mod tests {
    use super::{has_privilege_bits, without_privilege_bits};

    #[test]
    fn writes_drop_setuid_and_setgid_as_the_kernel_does() {
        for in_group in [true, false] {
            assert_eq!(without_privilege_bits(0o4755, in_group), Some(0o755));
            assert_eq!(without_privilege_bits(0o2755, in_group), Some(0o755));
            assert_eq!(without_privilege_bits(0o6777, in_group), Some(0o777));
            assert_eq!(without_privilege_bits(0o1777, in_group), None);
            assert_eq!(without_privilege_bits(0o644, in_group), None);
        }
        // Set-group-id without group execution marks mandatory locking: a group member keeps it.
        assert_eq!(without_privilege_bits(0o2745, true), None);
        assert_eq!(without_privilege_bits(0o6745, true), Some(0o2745));
        assert_eq!(without_privilege_bits(0o2745, false), Some(0o745));
        assert!(has_privilege_bits(0o2745) && has_privilege_bits(0o4700) && !has_privilege_bits(0o1777));
    }
}
