//! Indexing a plain host directory used as a layer (an extracted layer, or an overlayfs upper or
//! lower directory). Reads every whiteout form: `.wh.` names, 0/0 character devices, and the
//! overlayfs opaque/whiteout xattrs. Never follows symlinks; never writes.
//!
//! Directories are read by a few threads at once, each entry relative to its directory's
//! descriptor (`fstatat`, `listxattrat`, `readlinkat`): no path is walked again per entry, and a
//! cold tree's metadata reads overlap. The index is then built in one sorted depth-first pass, so
//! it does not depend on the order the threads finished in.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use nix::sys::stat::FileStat;

use super::index::{Entry, IndexBuilder, Kind, LayerIndex, Timestamp, Xattrs};
use super::whiteout::{self, WhiteoutName};
use crate::error::{Error, IoContext, Result};
use crate::path;

/// A host directory tree cannot hold what the builder refuses: entries below files, hard links
/// to directories or to names not yet walked (the first name of a link set is always indexed first).
const HOST_TREE: &str = "a host directory tree is well formed";

/// Threads reading directories: enough to keep a disk busy on a cold tree.
const READERS: usize = 4;

/// One name of a directory, as read.
enum Child {
    Opaque,
    Hides(Vec<u8>),
    Object { name: Vec<u8>, stat: FileStat, xattrs: Xattrs, link_target: Vec<u8> },
}

/// The children of every directory read, by directory (relative path), sorted by name.
type Listings = HashMap<Vec<u8>, Vec<Child>>;

pub fn index_dir(root: &Path) -> Result<LayerIndex> {
    let root_fd = open_dir(None, root, b"")?;
    let stat = nix::sys::stat::fstat(root_fd.as_fd()).map_err(std::io::Error::from).at(root)?;
    let root_xattrs = xattrs(root_fd.as_fd(), c".", &|| root.to_path_buf())?;
    let listings = read_tree(&root_fd, root)?;

    let mut builder = IndexBuilder::default();
    let opaque = is_opaque(&root_xattrs);
    builder.add(entry_from(b"", &stat, root_xattrs, Vec::new())).expect(HOST_TREE);
    if opaque {
        builder.add_opaque_dir(b"");
    }
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    add_dir(&listings, b"", &mut builder, &mut links);
    Ok(builder.finish())
}

fn is_opaque(xattrs: &Xattrs) -> bool {
    xattrs.iter().any(|(n, v)| whiteout::OPAQUE_XATTRS.contains(&&**n) && whiteout::is_opaque_value(v))
}

/// Adds the children of `rel_dir` (and, depth first, theirs) in name order.
fn add_dir(listings: &Listings, rel_dir: &[u8], builder: &mut IndexBuilder, links: &mut HashMap<(u64, u64), Vec<u8>>) {
    for child in listings.get(rel_dir).into_iter().flatten() {
        let (name, stat, xattrs, link_target) = match child {
            Child::Opaque => {
                builder.add_opaque_dir(rel_dir);
                continue;
            }
            Child::Hides(hidden) => {
                builder.add_whiteout(&path::join(rel_dir, hidden));
                continue;
            }
            Child::Object { name, stat, xattrs, link_target } => (name, stat, xattrs, link_target),
        };
        let rel = path::join(rel_dir, name);
        let kind = Kind::of_mode(stat.st_mode);
        let whiteout_device = kind == Kind::CharDevice && stat.st_rdev == 0;
        let whiteout_file = kind == Kind::File
            && stat.st_size == 0
            && xattrs.iter().any(|(n, _)| whiteout::WHITEOUT_XATTRS.contains(&&**n));
        if whiteout_device || whiteout_file {
            builder.add_whiteout(&rel);
            continue;
        }
        if kind == Kind::Dir {
            if is_opaque(xattrs) {
                builder.add_opaque_dir(&rel);
            }
            builder.add(entry_from(&rel, stat, xattrs.clone(), Vec::new())).expect(HOST_TREE);
            add_dir(listings, &rel, builder, links);
            continue;
        }
        if stat.st_nlink > 1 {
            let identity = (stat.st_dev, stat.st_ino);
            if let Some(first) = links.get(&identity) {
                builder.add_hard_link(&rel, first).expect(HOST_TREE);
                continue;
            }
            links.insert(identity, rel.clone());
        }
        builder.add(entry_from(&rel, stat, xattrs.clone(), link_target.clone())).expect(HOST_TREE);
    }
}

fn entry_from(rel: &[u8], stat: &FileStat, xattrs: Xattrs, link_target: Vec<u8>) -> Entry {
    let kind = Kind::of_mode(stat.st_mode);
    let mut e = Entry::new(rel, kind);
    e.mode = stat.st_mode & 0o7777;
    e.uid = stat.st_uid;
    e.gid = stat.st_gid;
    e.mtime = Timestamp { sec: stat.st_mtime, nsec: stat.st_mtime_nsec as u32 };
    match kind {
        Kind::File => e.size = stat.st_size as u64,
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
    e
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Work shared by the reading threads: directories still to read, how many are being read, and
/// the first error (which stops everyone).
struct Queue {
    pending: Vec<Vec<u8>>,
    reading: usize,
    failed: Option<Error>,
}

/// Reads every directory below `root` (whose descriptor is `root_fd`) with [`READERS`] threads.
fn read_tree(root_fd: &OwnedFd, root: &Path) -> Result<Listings> {
    let queue = Mutex::new(Queue { pending: vec![Vec::new()], reading: 0, failed: None });
    let changed = Condvar::new();
    let listings = Mutex::new(Listings::new());
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| loop {
                let rel_dir = {
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
                let read = read_dir(root_fd, root, &rel_dir);
                let mut q = lock(&queue);
                q.reading -= 1;
                match read {
                    Ok(children) => {
                        for child in &children {
                            if let Child::Object { name, stat, .. } = child {
                                if Kind::of_mode(stat.st_mode) == Kind::Dir {
                                    q.pending.push(path::join(&rel_dir, name));
                                }
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

/// The children of one directory, sorted by name, with what the index needs of each.
fn read_dir(root_fd: &OwnedFd, root: &Path, rel_dir: &[u8]) -> Result<Vec<Child>> {
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
                let host = || host_dir.join(OsStr::from_bytes(name));
                let stat = nix::sys::stat::fstatat(dir_fd.as_fd(), c_name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| Error::io(host(), e.into()))?;
                let link_target = match Kind::of_mode(stat.st_mode) {
                    Kind::Symlink => nix::fcntl::readlinkat(dir_fd.as_fd(), c_name)
                        .map_err(|e| Error::io(host(), e.into()))?
                        .as_bytes()
                        .to_vec(),
                    _ => Vec::new(),
                };
                let xattrs = xattrs(dir_fd.as_fd(), c_name, &host)?;
                Child::Object { name: name.to_vec(), stat, xattrs, link_target }
            }
        });
    }
    children.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    Ok(children)
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

        let index = index_dir(root).unwrap();
        let paths: Vec<&[u8]> = index.entries.iter().map(|e| &*e.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "paths in sorted depth-first order");
        assert_eq!(paths.len(), 1 + 40 * 3 + 3);
        let entry = |p: &[u8]| index.entries.iter().find(|e| &*e.path == p).unwrap();
        assert_eq!(&*entry(b"d01/link").link_target, b"../d00/first");
        let (first, second) = (entry(b"d00/first"), entry(b"d39/second"));
        assert!(first.link_id != 0 && first.link_id == second.link_id, "one hard-link set");
        assert_eq!(index.whiteouts.iter().map(|w| &**w).collect::<Vec<_>>(), [&b"d02/gone"[..]]);
        assert_eq!(index.opaque_dirs.iter().map(|w| &**w).collect::<Vec<_>>(), [&b"d03"[..]]);
        for _ in 0..3 {
            let again = index_dir(root).unwrap();
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
        let err = index_dir(&missing).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
