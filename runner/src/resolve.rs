//! Paths inside the container's root, resolved by the kernel as if that root were `/`
//! (`openat2` with `RESOLVE_IN_ROOT`), so a symlink in the image (`/data -> /`, `../../etc`)
//! can never lead a mount or a created directory out of the rootfs. Missing directories and
//! files on the way are created inside the root. Used before `pivot_root`, while host paths are
//! still reachable; nothing else in the runner opens a container path by its host name.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// How many symlinks one resolution may create through before giving up (the kernel's own limit).
const MAX_LINK_HOPS: usize = 40;

/// What a mount target must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Dir,
    File,
}

/// The container's root directory, open.
pub struct Root {
    fd: OwnedFd,
    /// The root's canonical host path, to turn /proc/self/fd links back into container paths.
    host_path: PathBuf,
}

impl Root {
    pub fn open(host_path: &Path) -> Result<Root> {
        let host_path = std::fs::canonicalize(host_path).at(host_path)?;
        let fd = open_raw(libc::AT_FDCWD, &host_path, libc::O_PATH | libc::O_DIRECTORY, 0).at(&host_path)?;
        Ok(Root { fd, host_path })
    }

    pub fn host_path(&self) -> &Path {
        &self.host_path
    }

    /// Opens `path` (a container path) as an O_PATH descriptor without creating anything; None if absent.
    pub fn find(&self, path: &str) -> Result<Option<OwnedFd>> {
        match self.open_in(path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(self.error(path, e)),
        }
    }

    /// The contents of the file at `path` (a container path), None if absent. Read without
    /// asking for its size first (a bare `Take` has no size hint): on the FUSE rootfs std's size
    /// question is a statx that costs the daemon a FUSE_STATX round trip it can only refuse.
    pub fn read_to_string(&self, path: &str) -> Result<Option<String>> {
        let file = match self.open_with(path, libc::O_RDONLY) {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(self.error(path, e)),
        };
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(file, u64::MAX), &mut text).map_err(|e| self.error(path, e))?;
        Ok(Some(text))
    }

    /// Opens `path` as an O_PATH descriptor, creating it (and missing parents) as `kind` inside the root.
    pub fn ensure(&self, path: &str, kind: TargetKind) -> Result<OwnedFd> {
        let mut path = path.to_string();
        for _ in 0..MAX_LINK_HOPS {
            match self.open_in(&path) {
                Ok(fd) => return self.check_kind(fd, &path, kind),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(self.error(&path, e)),
            }
            let (parent, name) = split(&path).ok_or_else(|| self.error(&path, io::ErrorKind::NotFound.into()))?;
            let parent_fd = self.ensure(parent, TargetKind::Dir)?;
            let cname = CString::new(name).map_err(|_| Error::invalid(format!("{path:?}: NUL in path")))?;
            match lstat_at(parent_fd.as_raw_fd(), &cname) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    create_at(parent_fd.as_raw_fd(), &cname, kind).map_err(|e| self.error(&path, e))?
                }
                // A dangling symlink: create what it points at, resolved inside the root. Not a
                // magic link of /proc (`/proc/self/fd/N` of a descriptor opened on the way, whose
                // "target" is a host path): opening it again refuses it (ELOOP).
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    match self.open_in(&path) {
                        Ok(fd) => return self.check_kind(fd, &path, kind),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(self.error(&path, e)),
                    }
                    let target =
                        std::fs::read_link(fd_link(&parent_fd).join(name)).map_err(|e| self.error(&path, e))?;
                    path = if target.is_absolute() {
                        target.to_string_lossy().into_owned()
                    } else {
                        format!("{}/{}", self.container_path(&parent_fd)?, target.to_string_lossy())
                    };
                    path = normalize(&path);
                }
                Ok(_) => {}
                Err(e) => return Err(self.error(&path, e)),
            }
        }
        Err(self.error(&path, io::Error::from_raw_os_error(libc::ELOOP)))
    }

    fn open_in(&self, path: &str) -> io::Result<OwnedFd> {
        self.open_with(path, libc::O_PATH)
    }

    /// Opens `path` with `flags`, resolved as if the root were `/` and refusing /proc's magic
    /// links (`/proc/self/fd/N`, `/proc/self/cwd`), which would lead out of it.
    fn open_with(&self, path: &str, flags: i32) -> io::Result<OwnedFd> {
        let cpath = CString::new(path.trim_start_matches('/').as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let cpath = if cpath.as_bytes().is_empty() { CString::new(".").expect("no NUL") } else { cpath };
        // SAFETY: open_how is plain data; zero is "no mode, no flags".
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                cpath.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn check_kind(&self, fd: OwnedFd, path: &str, kind: TargetKind) -> Result<OwnedFd> {
        let is_dir = is_directory(&fd).map_err(|e| self.error(path, e))?;
        match (kind, is_dir) {
            (TargetKind::Dir, false) => Err(Error::invalid(format!("{path:?} in the container is not a directory"))),
            (TargetKind::File, true) => Err(Error::invalid(format!("{path:?} in the container is a directory"))),
            _ => Ok(fd),
        }
    }

    /// The container path an O_PATH descriptor inside the root stands for.
    fn container_path(&self, fd: &OwnedFd) -> Result<String> {
        let link = fd_link(fd);
        let host = std::fs::read_link(&link).at(&link)?;
        let inside = host.strip_prefix(&self.host_path).map_err(|_| {
            Error::invalid(format!(
                "{} resolved outside the container root {}",
                host.display(),
                self.host_path.display()
            ))
        })?;
        Ok(format!("/{}", inside.to_string_lossy()))
    }

    fn error(&self, path: &str, cause: io::Error) -> Error {
        Error::io(format!("{path} (in the container root {})", self.host_path.display()), cause)
    }
}

/// The /proc/self/fd path of a descriptor: what mount(2) is given as a target, so the kernel
/// mounts on the object that was resolved safely rather than re-resolving a path.
pub fn fd_link(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether a descriptor (O_PATH included) names a directory. An fstat of the descriptor rather
/// than a stat of its /proc link: no walk through /proc, and on the FUSE rootfs a plain GETATTR
/// (a statx asking for more than the basic fields costs the daemon a FUSE_STATX round trip).
pub fn is_directory(fd: &OwnedFd) -> io::Result<bool> {
    lstat_at(fd.as_raw_fd(), c"").map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// `/a/b/c` → (`/a/b`, `c`); None for the root itself.
fn split(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/')?;
    (!name.is_empty()).then_some((if parent.is_empty() { "/" } else { parent }, name))
}

/// Lexical normalisation with `..` clamped at the root, as the kernel does under RESOLVE_IN_ROOT.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn open_raw(dirfd: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: plain openat with a NUL-terminated path.
    let fd = unsafe { libc::openat(dirfd, cpath.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fstatat without following a final symlink; an empty `name` stats `dirfd` itself.
fn lstat_at(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let flags =
        if name.is_empty() { libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: fstatat into a zeroed stat buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn create_at(dirfd: RawFd, name: &CString, kind: TargetKind) -> io::Result<()> {
    // SAFETY: mkdirat/openat relative to a directory descriptor we hold, NUL-terminated name.
    let rc = match kind {
        TargetKind::Dir => unsafe { libc::mkdirat(dirfd, name.as_ptr(), 0o755) },
        TargetKind::File => {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC;
            let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags, 0o644) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            fd.min(0)
        }
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Someone created it meanwhile: the caller's next resolution sees it.
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn host_of(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_link(fd)).unwrap()
    }

    #[test]
    fn absolute_and_climbing_symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        symlink("/", rootfs.join("to_root")).unwrap();
        symlink("../../../../../../etc", rootfs.join("climb")).unwrap();
        let root = Root::open(&rootfs).unwrap();
        let fd = root.ensure("/to_root/data", TargetKind::Dir).unwrap();
        assert_eq!(host_of(&fd), root.host_path().join("data"));
        let fd = root.ensure("/climb/hosts", TargetKind::File).unwrap();
        assert_eq!(host_of(&fd), root.host_path().join("etc/hosts"));
    }

    #[test]
    fn dangling_symlinks_are_created_inside() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        symlink("/run/resolve/stub.conf", rootfs.join("etc/resolv.conf")).unwrap();
        symlink("../var/lib/x", rootfs.join("etc/rel")).unwrap();
        let root = Root::open(&rootfs).unwrap();
        let fd = root.ensure("/etc/resolv.conf", TargetKind::File).unwrap();
        assert_eq!(host_of(&fd), root.host_path().join("run/resolve/stub.conf"));
        let fd = root.ensure("/etc/rel", TargetKind::Dir).unwrap();
        assert_eq!(host_of(&fd), root.host_path().join("var/lib/x"));
    }

    #[test]
    fn kind_mismatch_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert!(root.ensure("/d", TargetKind::File).unwrap_err().to_string().contains("is a directory"));
        assert!(root.ensure("/f", TargetKind::Dir).unwrap_err().to_string().contains("not a directory"));
        assert!(root.find("/missing").unwrap().is_none());
        assert!(root.find("/").unwrap().is_some());
    }

    #[test]
    fn symlink_loops_end_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/b", dir.path().join("a")).unwrap();
        symlink("/a", dir.path().join("b")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert!(root.ensure("/a/x", TargetKind::Dir).is_err());
    }

    #[test]
    fn lexical_helpers() {
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/"), None);
        assert_eq!(normalize("/a/../../b/./c"), "/b/c");
    }
}
