//! Indexing a plain host directory used as a layer (an extracted layer, or an overlayfs upper or
//! lower directory). Reads every whiteout form: `.wh.` names, 0/0 character devices, and the
//! overlayfs opaque/whiteout xattrs. Never follows symlinks; never writes.
//!
//! Directories are read by a few threads at once, each entry relative to its directory's
//! descriptor (`fstatat`, `listxattrat`, `readlinkat`): no path is walked again per entry, and a
//! cold tree's metadata reads overlap. The index is then built in one sorted depth-first pass, so
//! it does not depend on the order the threads finished in.
//!
//! Only what the merge needs is read up front: names, kinds and inode numbers (from the directory
//! listing itself: `d_type`, `d_ino`, which also group hard links), and the full metadata of
//! directories and character devices (opaque markers, 0/0 whiteouts), and of every entry of a
//! directory marked opaque (where xattr-form whiteouts live). Every other entry is *deferred*:
//! its attributes, xattrs and link target are read on first use ([`HostDir::complete`]), as kernel
//! overlayfs and fuse-overlayfs look lower files up lazily: a mount does not read 30,000 inodes.
//!
//! [`HostDir::index`] reads the whole tree (for a whole-stack merge, `merge::MergedTree`);
//! [`HostDir::list`] reads one directory, with the same rules, for the merge that reads a
//! directory only when it is looked into (`merge::lazy`).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use nix::sys::stat::FileStat;

use super::index::{Entry, Kind, LayerIndex, Listed, Listing, Timestamp, Xattrs};
use super::override_stat;
use super::whiteout::{self, WhiteoutName};
use crate::error::{Error, IoContext, Result};
use crate::path;

/// Threads reading directories: enough to keep a disk busy on a cold tree.
const READERS: usize = 4;

/// One name of a directory, as read.
enum Child {
    Opaque,
    Hides(Vec<u8>),
    Object { name: Vec<u8>, kind: Kind, ino: u64, read: Option<Box<Read>> },
}

/// An entry's metadata, read from the host.
struct Read {
    stat: FileStat,
    xattrs: Xattrs,
    link_target: Vec<u8>,
}

/// A directory layer's index, and which of its entries are deferred (see the module doc):
/// `deferred[i]` for `index.entries[i]`, whose attributes are then placeholders.
#[derive(Debug)]
pub struct DirIndex {
    pub index: LayerIndex,
    pub deferred: Vec<bool>,
}

/// The children of every directory read, by directory (relative path), sorted by name.
type Listings = HashMap<Vec<u8>, Vec<Child>>;

/// A directory layer's host directory, opened once: everything beneath is read relative to it,
/// without following symlinks, so a layer that changes under a mount cannot redirect a read.
#[derive(Debug)]
pub struct HostDir {
    pub path: PathBuf,
    root: OwnedFd,
    /// The xattr this layer keeps stored modes in (see `override_stat`), from its root.
    stat_override: Option<&'static [u8]>,
}

impl HostDir {
    /// Opens the layer's directory: where the caller may (root, in the host's mount namespace),
    /// through a private read-only, noatime copy of its mount (see `private_read_only_view`).
    pub fn open(path: &Path) -> Result<HostDir> {
        let root = match private_read_only_view(path) {
            Some(view) => view,
            None => open_dir(None, path, b"")?,
        };
        let root_xattrs = xattrs(root.as_fd(), c".", &|| path.to_path_buf())?;
        let stat_override = override_stat::layer_name(|name| root_xattrs.iter().any(|(n, _)| &**n == name));
        Ok(HostDir { path: path.to_path_buf(), root, stat_override })
    }

    /// The whole layer's index, every directory read (see the module doc for what is deferred).
    pub fn index(&self) -> Result<DirIndex> {
        let root_entry = self.root_entry()?;
        let mut listings = read_tree(&self.root, &self.path, has_opaque_marker(&root_entry.xattrs))?;
        let mut tree = Assembly { stat_override: self.stat_override, ..Assembly::default() };
        if is_opaque(&root_entry.xattrs) {
            tree.opaque_dirs.push(Box::default());
        }
        tree.push(root_entry, false);
        tree.add_dir(&mut listings, b"");
        Ok(tree.finish())
    }

    /// The layer's root directory, in full.
    pub fn root_entry(&self) -> Result<Entry> {
        let stat = nix::sys::stat::fstat(self.root.as_fd()).map_err(std::io::Error::from).at(&self.path)?;
        let xattrs = xattrs(self.root.as_fd(), c".", &|| self.path.clone())?;
        Ok(entry_from(b"", &stat, xattrs, Vec::new(), self.stat_override))
    }

    /// Directory `rel_dir` alone; `dir` is its entry (directories are always read in full).
    pub fn list(&self, rel_dir: &[u8], dir: &Entry) -> Result<Listing> {
        let mut listing = Listing { opaque: is_opaque(&dir.xattrs), ..Listing::default() };
        for child in read_dir(&self.root, &self.path, rel_dir, has_opaque_marker(&dir.xattrs))? {
            match classify(rel_dir, child, self.stat_override) {
                Named::Opaque => listing.opaque = true,
                Named::Hides(path) => {
                    listing.whiteouts.push(path::split_parent(&path).map_or(&path[..], |(_, n)| n).into())
                }
                Named::Object(entry, deferred) => listing.objects.push(Listed::object(entry, deferred)),
            }
        }
        Ok(listing)
    }

    /// The full entry for a deferred `placeholder`: its attributes, xattrs and link target,
    /// with the placeholder's place in the index (path, hard-link set).
    pub fn complete(&self, placeholder: &Entry) -> Result<Entry> {
        let (parent, name) = path::split_parent(&placeholder.path).unwrap_or((b"", &placeholder.path));
        let host_dir = host_path(&self.path, parent);
        let dir_fd = open_dir(Some(&self.root), &host_dir, parent)?;
        let c_name = CString::new(name).expect("names have no NUL");
        let read = read_entry(dir_fd.as_fd(), &c_name, &host_dir)?;
        let mut entry = entry_from(&placeholder.path, &read.stat, read.xattrs, read.link_target, self.stat_override);
        entry.link_id = placeholder.link_id;
        Ok(entry)
    }

    /// Opens file `rel` beneath the layer's root for reading, following no symlink.
    ///
    /// Without updating its access time where the caller may ask that (its owner, or
    /// CAP_FOWNER), as kernel overlayfs opens lower files: reading through a mount must not
    /// change the layer, not even an atime.
    pub fn open_file(&self, rel: &[u8]) -> std::io::Result<std::fs::File> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        let open = |flags: OFlag| {
            let how = OpenHow::new().flags(flags | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            let rel = if rel.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(rel)) };
            nix::fcntl::openat2(self.root.as_fd(), rel, how)
        };
        let fd = match open(OFlag::O_NOATIME) {
            Err(nix::errno::Errno::EPERM) => open(OFlag::empty()),
            opened => opened,
        };
        Ok(std::fs::File::from(fd.map_err(std::io::Error::from)?))
    }
}

/// What one name read from a directory is, for a merge.
enum Named {
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// A whiteout (of any form): the path it deletes from the layers below.
    Hides(Vec<u8>),
    /// An object: its entry (a placeholder when deferred) and whether it is deferred.
    Object(Entry, bool),
}

/// Classifies a name read from directory `rel_dir`: whiteouts by name, 0/0 character devices
/// and overlayfs' xattr whiteout files are all whiteouts.
fn classify(rel_dir: &[u8], child: Child, stat_override: Option<&[u8]>) -> Named {
    let (name, kind, ino, read) = match child {
        Child::Opaque => return Named::Opaque,
        Child::Hides(hidden) => return Named::Hides(path::join(rel_dir, &hidden)),
        Child::Object { name, kind, ino, read } => (name, kind, ino, read),
    };
    let rel = path::join(rel_dir, &name);
    match read {
        Some(read) => {
            let whiteout_device = kind == Kind::CharDevice && read.stat.st_rdev == 0;
            let whiteout_file = kind == Kind::File
                && read.stat.st_size == 0
                && read.xattrs.iter().any(|(n, _)| whiteout::WHITEOUT_XATTRS.contains(&&**n));
            if whiteout_device || whiteout_file {
                return Named::Hides(rel);
            }
            Named::Object(entry_from(&rel, &read.stat, read.xattrs, read.link_target, stat_override), false)
        }
        None => {
            let mut placeholder = Entry::new(&rel, kind);
            placeholder.host_ino = ino;
            Named::Object(placeholder, true)
        }
    }
}

/// An overlay opaque xattr of any value (`y`, or `x`: "may hold xattr-form whiteouts").
fn has_opaque_marker(xattrs: &Xattrs) -> bool {
    xattrs.iter().any(|(n, _)| whiteout::OPAQUE_XATTRS.contains(&&**n))
}

pub(crate) fn is_opaque(xattrs: &Xattrs) -> bool {
    xattrs.iter().any(|(n, v)| whiteout::OPAQUE_XATTRS.contains(&&**n) && whiteout::is_opaque_value(v))
}

/// A directory layer's index as it is put together: a host tree is well formed (no path twice, no
/// entry below a file, a hard link's first name walked first), so entries go straight in, in
/// walk order, without the tar rules of `IndexBuilder`.
#[derive(Default)]
struct Assembly {
    entries: Vec<Entry>,
    deferred: Vec<bool>,
    whiteouts: Vec<Box<[u8]>>,
    opaque_dirs: Vec<Box<[u8]>>,
    /// Inode number -> index of its first name's entry.
    first_names: HashMap<u64, usize>,
    next_link_id: u32,
    stat_override: Option<&'static [u8]>,
}

impl Assembly {
    fn push(&mut self, entry: Entry, deferred: bool) {
        self.entries.push(entry);
        self.deferred.push(deferred);
    }

    /// Adds the children of `rel_dir` (and, depth first, theirs) in name order.
    fn add_dir(&mut self, listings: &mut Listings, rel_dir: &[u8]) {
        for child in listings.remove(rel_dir).into_iter().flatten() {
            let (entry, deferred) = match classify(rel_dir, child, self.stat_override) {
                Named::Opaque => {
                    self.opaque_dirs.push(rel_dir.into());
                    continue;
                }
                Named::Hides(path) => {
                    self.whiteouts.push(path.into());
                    continue;
                }
                Named::Object(entry, deferred) => (entry, deferred),
            };
            if entry.kind == Kind::Dir {
                if is_opaque(&entry.xattrs) {
                    self.opaque_dirs.push(entry.path.clone());
                }
                let rel = entry.path.clone();
                self.push(entry, false);
                self.add_dir(listings, &rel);
                continue;
            }
            // The names of one inode in this layer are one hard-link set.
            if let Some(&first) = self.first_names.get(&entry.host_ino) {
                if self.entries[first].link_id == 0 {
                    self.next_link_id += 1;
                    self.entries[first].link_id = self.next_link_id;
                }
                let mut link = self.entries[first].clone();
                link.path = entry.path;
                let deferred = self.deferred[first];
                self.push(link, deferred);
                continue;
            }
            self.first_names.insert(entry.host_ino, self.entries.len());
            self.push(entry, deferred);
        }
    }

    fn finish(mut self) -> DirIndex {
        self.whiteouts.sort();
        self.whiteouts.dedup();
        self.opaque_dirs.sort();
        self.opaque_dirs.dedup();
        let index = LayerIndex { entries: self.entries, whiteouts: self.whiteouts, opaque_dirs: self.opaque_dirs };
        DirIndex { index, deferred: self.deferred }
    }
}

/// An entry from what the host says, shown with its stored mode in a layer that keeps them
/// (`stat_override`: the layer's xattr for them).
fn entry_from(
    rel: &[u8],
    stat: &FileStat,
    xattrs: Xattrs,
    link_target: Vec<u8>,
    stat_override: Option<&[u8]>,
) -> Entry {
    let kind = Kind::of_mode(stat.st_mode);
    let mut e = Entry::new(rel, kind);
    e.mode = stat.st_mode & 0o7777;
    e.uid = stat.st_uid;
    e.gid = stat.st_gid;
    e.mtime = Timestamp { sec: stat.st_mtime, nsec: stat.st_mtime_nsec as u32 };
    e.ctime = Some(Timestamp { sec: stat.st_ctime, nsec: stat.st_ctime_nsec as u32 });
    e.host_ino = stat.st_ino;
    e.host_nlink = stat.st_nlink as u32;
    e.host_blocks = Some(stat.st_blocks as u64);
    match kind {
        // A directory's size is its host directory's, as kernel overlayfs shows a lower one.
        Kind::File | Kind::Dir => e.size = stat.st_size as u64,
        Kind::Symlink => {
            e.size = link_target.len() as u64;
            e.link_target = link_target.into();
        }
        Kind::CharDevice | Kind::BlockDevice => {
            e.rdev_major = libc::major(stat.st_rdev);
            e.rdev_minor = libc::minor(stat.st_rdev);
        }
        _ => {}
    }
    e.xattrs = xattrs;
    if let Some(name) = stat_override {
        override_stat::apply(&mut e, name);
    }
    e
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Work shared by the reading threads: directories still to read (each with whether it carries
/// an opaque marker, known from its parent's listing), how many are being read, and the first
/// error (which stops everyone).
struct Queue {
    pending: Vec<(Vec<u8>, bool)>,
    reading: usize,
    failed: Option<Error>,
}

/// Reads every directory below `root` (whose descriptor is `root_fd`; `root_marked`: the root
/// carries an opaque marker) with [`READERS`] threads.
fn read_tree(root_fd: &OwnedFd, root: &Path, root_marked: bool) -> Result<Listings> {
    let queue = Mutex::new(Queue { pending: vec![(Vec::new(), root_marked)], reading: 0, failed: None });
    let changed = Condvar::new();
    let listings = Mutex::new(Listings::new());
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| loop {
                let (rel_dir, marked) = {
                    let mut q = lock(&queue);
                    loop {
                        if q.failed.is_some() || (q.pending.is_empty() && q.reading == 0) {
                            return;
                        }
                        if let Some(dir) = q.pending.pop() {
                            q.reading += 1;
                            break dir;
                        }
                        q = changed.wait(q).unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                };
                let read = read_dir(root_fd, root, &rel_dir, marked);
                let mut q = lock(&queue);
                q.reading -= 1;
                match read {
                    Ok(children) => {
                        for child in &children {
                            if let Child::Object { name, kind: Kind::Dir, read, .. } = child {
                                let marked = read.as_deref().is_some_and(|r| has_opaque_marker(&r.xattrs));
                                q.pending.push((path::join(&rel_dir, name), marked));
                            }
                        }
                        lock(&listings).insert(rel_dir, children);
                    }
                    Err(e) => {
                        q.failed.get_or_insert(e);
                    }
                }
                changed.notify_all();
            });
        }
    });
    match queue.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()).failed {
        Some(e) => Err(e),
        None => Ok(listings.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())),
    }
}

/// The children of one directory, sorted by name, with what the index needs of each. A
/// directory carrying an opaque marker (`marked`) may hold xattr-form whiteouts: all its entries
/// are read in full.
fn read_dir(root_fd: &OwnedFd, root: &Path, rel_dir: &[u8], marked: bool) -> Result<Vec<Child>> {
    let host_dir = host_path(root, rel_dir);
    let dir_fd = open_dir(Some(root_fd), &host_dir, rel_dir)?;
    let mut dir =
        nix::dir::Dir::from_fd(dir_fd.try_clone().at(&host_dir)?).map_err(std::io::Error::from).at(&host_dir)?;
    let mut children = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(std::io::Error::from).at(&host_dir)?;
        let c_name = entry.file_name();
        let name = c_name.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        children.push(match whiteout::classify(name) {
            WhiteoutName::Opaque => Child::Opaque,
            WhiteoutName::Hides(hidden) => Child::Hides(hidden.to_vec()),
            WhiteoutName::Metadata => continue,
            WhiteoutName::Plain => {
                use nix::dir::Type;
                let listed = entry.file_type();
                let deferrable = !marked
                    && matches!(
                        listed,
                        Some(Type::File | Type::Symlink | Type::Fifo | Type::Socket | Type::BlockDevice)
                    );
                let (kind, read) = match (deferrable, listed) {
                    (true, Some(t)) => (kind_of_type(t), None),
                    _ => {
                        let read = read_entry(dir_fd.as_fd(), c_name, &host_dir)?;
                        (Kind::of_mode(read.stat.st_mode), Some(Box::new(read)))
                    }
                };
                Child::Object { name: name.to_vec(), kind, ino: entry.ino(), read }
            }
        });
    }
    children.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    Ok(children)
}

/// The metadata of `name` in directory `dir` (whose whole path is `host_dir`, for errors).
fn read_entry(dir: BorrowedFd, name: &CStr, host_dir: &Path) -> Result<Read> {
    let host = || host_dir.join(OsStr::from_bytes(name.to_bytes()));
    let stat = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(host(), e.into()))?;
    let link_target = match Kind::of_mode(stat.st_mode) {
        Kind::Symlink => {
            nix::fcntl::readlinkat(dir, name).map_err(|e| Error::io(host(), e.into()))?.as_bytes().to_vec()
        }
        _ => Vec::new(),
    };
    let xattrs = xattrs(dir, name, &host)?;
    Ok(Read { stat, xattrs, link_target })
}

fn kind_of_type(t: nix::dir::Type) -> Kind {
    use nix::dir::Type;
    match t {
        Type::Directory => Kind::Dir,
        Type::Symlink => Kind::Symlink,
        Type::CharacterDevice => Kind::CharDevice,
        Type::BlockDevice => Kind::BlockDevice,
        Type::Fifo => Kind::Fifo,
        Type::Socket => Kind::Socket,
        Type::File => Kind::File,
    }
}

/// Children in the order of their names on disk (a whiteout by its `.wh.` name).
fn sort_key(child: &Child) -> &[u8] {
    match child {
        Child::Opaque => whiteout::OPAQUE_MARKER,
        Child::Hides(hidden) => hidden,
        Child::Object { name, .. } => name,
    }
}

fn host_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// The directory at `path` on a detached copy of its mount (open_tree(2) OPEN_TREE_CLONE) made
/// read-only and noatime, or None where the caller may not make one (unprivileged, or a mount
/// whose flags are locked in a user namespace). The kernel then refuses any write into the layer
/// through it, and reads through it, including those the kernel makes itself for a FUSE
/// passthrough file opened from it, leave access times alone, as kernel overlayfs leaves them in
/// its lower layers. Nothing else sees the copy; it goes away with the last descriptor in it.
/// Like overlayfs' lower layers, it does not include mounts beneath `path`.
fn private_read_only_view(path: &Path) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    // SAFETY: a NUL-terminated path; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags) };
    if fd < 0 {
        tracing::debug!(
            "{}: read as it is (no private copy of its mount: {})",
            path.display(),
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: open_tree returned this descriptor to us alone.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let read_only = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOATIME;
    if let Err(e) = crate::mount_attr::set(tree.as_fd(), read_only, libc::MOUNT_ATTR__ATIME, false) {
        tracing::debug!("{}: read as it is (no read-only copy of its mount: {e})", path.display());
        return None;
    }
    open_dir(Some(&tree), path, b"").ok()
}

/// Opens the directory `rel` beneath `root_fd` without following any symlink on the way, or the
/// layer's root itself (`root_fd` None) at `host`.
fn open_dir(root_fd: Option<&OwnedFd>, host: &Path, rel: &[u8]) -> Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let opened = match root_fd {
        None => nix::fcntl::open(host, flags, nix::sys::stat::Mode::empty()),
        Some(root_fd) => {
            let how = OpenHow::new().flags(flags | OFlag::O_NOFOLLOW).resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            let rel = if rel.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(rel)) };
            nix::fcntl::openat2(root_fd.as_fd(), rel, how)
        }
    };
    opened.map_err(std::io::Error::from).at(host)
}

/// Every extended attribute of `name` in directory `dir` itself (not of a symlink's target),
/// sorted by name; `host` gives its whole path (for errors, and kernels before 6.13).
fn xattrs(dir: BorrowedFd, name: &CStr, host: &dyn Fn() -> PathBuf) -> Result<Xattrs> {
    let names = read_sized(host, |buf, len| list_xattrs_at(dir, name, host, buf, len))?;
    let mut out = Vec::new();
    for attr in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_attr = CString::new(attr).expect("xattr names have no NUL");
        let value = read_sized(host, |buf, len| get_xattr_at(dir, name, host, &c_attr, buf, len))?;
        out.push((attr.into(), value.into()));
    }
    out.sort();
    Ok(out)
}

/// listxattrat(2) (Linux 6.13), else llistxattr(2) on the whole path.
fn list_xattrs_at(dir: BorrowedFd, name: &CStr, host: &dyn Fn() -> PathBuf, buf: *mut u8, len: usize) -> libc::ssize_t {
    const SYS_LISTXATTRAT: libc::c_long = 465;
    // SAFETY: a live descriptor, a NUL-terminated name and a buffer of `len` bytes (or none).
    let got =
        unsafe { libc::syscall(SYS_LISTXATTRAT, dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, buf, len) }
            as libc::ssize_t;
    if got >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return got;
    }
    let c_host = CString::new(host().as_os_str().as_bytes()).expect("host paths have no NUL");
    // SAFETY: as above, with a NUL-terminated path.
    unsafe { libc::llistxattr(c_host.as_ptr(), buf.cast(), len) }
}

/// getxattrat(2) (Linux 6.13), else lgetxattr(2) on the whole path.
fn get_xattr_at(
    dir: BorrowedFd,
    name: &CStr,
    host: &dyn Fn() -> PathBuf,
    attr: &CStr,
    buf: *mut u8,
    len: usize,
) -> libc::ssize_t {
    const SYS_GETXATTRAT: libc::c_long = 464;
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let args = XattrArgs { value: buf as u64, size: len as u32, flags: 0 };
    // SAFETY: a live descriptor, NUL-terminated names and a buffer of `len` bytes (or none).
    let got = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    } as libc::ssize_t;
    if got >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return got;
    }
    let c_host = CString::new(host().as_os_str().as_bytes()).expect("host paths have no NUL");
    // SAFETY: as above, with a NUL-terminated path.
    unsafe { libc::lgetxattr(c_host.as_ptr(), attr.as_ptr(), buf.cast(), len) }
}

/// Calls a size-then-fill xattr syscall, retrying if the value grew in between.
fn read_sized(path: &dyn Fn() -> PathBuf, call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(err).at(path()),
            };
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(std::io::Error::last_os_error()).at(path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root a layer is read through a private read-only, noatime copy of its mount: the kernel
    /// itself refuses writes through it. Unprivileged callers read the directory as it is.
    #[test]
    fn layers_are_read_through_a_read_only_noatime_view_as_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let host = HostDir::open(dir.path()).unwrap();
        use nix::{fcntl::OFlag, sys::stat::Mode, sys::statvfs::FsFlags};
        let flags = nix::sys::statvfs::fstatvfs(&host.root).unwrap().flags();
        if nix::unistd::geteuid().is_root() {
            assert!(flags.contains(FsFlags::ST_RDONLY | FsFlags::ST_NOATIME), "{flags:?}");
            let created = nix::fcntl::openat(&host.root, "new", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::S_IRUSR);
            assert_eq!(created.unwrap_err(), nix::errno::Errno::EROFS);
        } else {
            assert!(!flags.contains(FsFlags::ST_RDONLY));
        }
        assert_eq!(std::io::read_to_string(host.open_file(b"f").unwrap()).unwrap(), "x");
    }

    /// Many directories read by several threads still give one deterministic index, in sorted
    /// depth-first order, with hard links, symlinks and whiteout names as a sequential walk has them.
    #[test]
    fn parallel_reading_gives_the_sorted_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in 0..40 {
            let sub = root.join(format!("d{d:02}/inner"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join("f"), format!("{d}")).unwrap();
        }
        std::fs::write(root.join("d00/first"), "x").unwrap();
        std::fs::hard_link(root.join("d00/first"), root.join("d39/second")).unwrap();
        std::os::unix::fs::symlink("../d00/first", root.join("d01/link")).unwrap();
        std::fs::write(root.join("d02/.wh.gone"), "").unwrap();
        std::fs::write(root.join("d03/.wh..wh..opq"), "").unwrap();

        let host = HostDir::open(root).unwrap();
        let DirIndex { index, deferred } = host.index().unwrap();
        let paths: Vec<&[u8]> = index.entries.iter().map(|e| &*e.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "paths in sorted depth-first order");
        assert_eq!(paths.len(), 1 + 40 * 3 + 3);
        // Files and symlinks are deferred, directories are not; completing reads the host.
        let entry = |p: &[u8]| {
            let i = index.entries.iter().position(|e| &*e.path == p).unwrap();
            assert_eq!(deferred[i], index.entries[i].kind != Kind::Dir, "{}", String::from_utf8_lossy(p));
            match deferred[i] {
                true => host.complete(&index.entries[i]).unwrap(),
                false => index.entries[i].clone(),
            }
        };
        assert_eq!(&*entry(b"d01/link").link_target, b"../d00/first");
        assert_eq!(entry(b"d05/inner/f").size, 1);
        let host_mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(root.join("d05")).unwrap().permissions());
        assert_eq!(entry(b"d05").mode, host_mode & 0o7777);
        assert_eq!(entry(b"d05").size, std::fs::metadata(root.join("d05")).unwrap().len(), "a directory's host size");
        let (first, second) = (entry(b"d00/first"), entry(b"d39/second"));
        assert!(first.link_id != 0 && first.link_id == second.link_id, "one hard-link set");
        assert_eq!((first.size, second.size), (1, 1));
        assert_eq!(index.whiteouts.iter().map(|w| &**w).collect::<Vec<_>>(), [&b"d02/gone"[..]]);
        assert_eq!(index.opaque_dirs.iter().map(|w| &**w).collect::<Vec<_>>(), [&b"d03"[..]]);
        for _ in 0..3 {
            let again = host.index().unwrap().index;
            assert_eq!(
                again.entries.iter().map(|e| &e.path).collect::<Vec<_>>(),
                index.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = HostDir::open(&missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
