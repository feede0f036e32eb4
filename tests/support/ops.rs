//! Seeded pseudo-random filesystem operations for the differential tests: a generator over a small
//! name universe, and `apply`, which performs one operation on a mountpoint through libc and
//! returns a normalized outcome (a digest of what was read, or the errno) that two implementations
//! of the same filesystem must agree on.
//!
//! Safety of the host: every path is relative to the mountpoint and never contains `..`, and every
//! symlink target the generator writes is relative without `..`, so operations that follow
//! symlinks (open, chmod, truncate, …) stay inside the mount.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// xorshift64* seeded through splitmix64: tiny, deterministic, good enough to pick operations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// File content derived from a seed (printable, so a diverging file can be looked at with `cat`).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789\n";
    let mut rng = Rng::new(seed);
    (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect()
}

/// What a read operation reports for `data`: its length and a digest prefix.
pub fn digest(data: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(data));
    format!("{} bytes {}", data.len(), &hex[..16])
}

/// The mtimes `Utimens` sets; with the lowers' fixed mtimes, the only mtimes a file can have that
/// do not come from the wall clock.
pub const FIXED_TIMES: [(i64, i64); 3] =
    [(1_000_000_000, 0), (1_111_111_111, 500_000_000), (1_234_567_890, 123_456_789)];
/// Lower entries get mtime `LOWER_TIME_BASE + k` seconds (k < 1000).
pub const LOWER_TIME_BASE: i64 = 1_500_000_000;

/// True when `mtime` was set on purpose (a lower's fixed time or one of `FIXED_TIMES`), so two
/// implementations must agree on it exactly; otherwise it comes from the wall clock.
pub fn is_fixed_time(mtime: (i64, i64)) -> bool {
    FIXED_TIMES.contains(&mtime) || (mtime.1 == 0 && (LOWER_TIME_BASE..LOWER_TIME_BASE + 1000).contains(&mtime.0))
}

/// An errno, shown by name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn name(self) -> String {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ETXTBSY => "ETXTBSY",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::EROFS => "EROFS",
            libc::EMLINK => "EMLINK",
            libc::ERANGE => "ERANGE",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENODATA => "ENODATA",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::ENOTCONN => "ENOTCONN",
            libc::ESTALE => "ESTALE",
            _ => return format!("errno {}", self.0),
        };
        name.to_string()
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The normalized result of one operation: what it read (if anything), or the errno.
pub type Outcome = Result<Option<String>, Errno>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

/// One operation; paths are relative to the mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_EXCL) + write
    Create {
        path: String,
        seed: u64,
        len: usize,
    },
    /// open(O_APPEND) + write
    Append {
        path: String,
        seed: u64,
        len: usize,
    },
    /// open(O_TRUNC) + write
    Overwrite {
        path: String,
        seed: u64,
        len: usize,
    },
    /// truncate(2), following symlinks
    Truncate {
        path: String,
        len: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    /// rename(2)
    Rename {
        from: String,
        to: String,
    },
    /// renameat2(RENAME_NOREPLACE)
    RenameNoReplace {
        from: String,
        to: String,
    },
    /// renameat2(RENAME_EXCHANGE)
    Exchange {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    /// link(2) (does not follow a symlink `from`)
    Link {
        from: String,
        to: String,
    },
    /// chmod(2), following symlinks
    Chmod {
        path: String,
        mode: u32,
    },
    /// lchown(2)
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// utimensat with fixed atime and mtime
    Utimens {
        path: String,
        mtime: (i64, i64),
        nofollow: bool,
    },
    /// lsetxattr
    SetXattr {
        path: String,
        name: String,
        value: String,
        mode: XattrMode,
    },
    /// lremovexattr
    RemoveXattr {
        path: String,
        name: String,
    },
    /// mknod(2): `mode` includes the file type (a FIFO or a device)
    Mknod {
        path: String,
        mode: u32,
        rdev: u64,
    },
    /// open + read the whole file (following symlinks): its digest
    Read {
        path: String,
    },
    /// readdir: sorted `name:type` entries
    ReadDir {
        path: String,
    },
    /// lstat + xattrs: everything but the times and the inode number
    Stat {
        path: String,
    },
    /// open(O_RDWR), then unlink it, or rename `replacement` over it, and use the open file: fstat,
    /// fchmod, fsetxattr, ftruncate, pwrite, pread (a temporary file's life)
    UseDeletedWhileOpen {
        path: String,
        replacement: Option<String>,
    },
}

impl Op {
    pub fn is_rename(&self) -> bool {
        matches!(self, Op::Rename { .. } | Op::RenameNoReplace { .. } | Op::Exchange { .. })
    }

    /// Every path the operation names.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Create { path, .. }
            | Op::Append { path, .. }
            | Op::Overwrite { path, .. }
            | Op::Truncate { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Unlink { path }
            | Op::Symlink { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Mknod { path, .. }
            | Op::Read { path }
            | Op::ReadDir { path }
            | Op::Stat { path }
            | Op::UseDeletedWhileOpen { path, replacement: None } => vec![path],
            Op::UseDeletedWhileOpen { path, replacement: Some(from) } => vec![from, path],
            Op::Rename { from, to }
            | Op::RenameNoReplace { from, to }
            | Op::Exchange { from, to }
            | Op::Link { from, to } => {
                vec![from, to]
            }
        }
    }

    /// True for operations that change nothing.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Op::Read { .. } | Op::ReadDir { .. } | Op::Stat { .. })
    }

    /// (from, to) of a rename
    pub fn rename_paths(&self) -> Option<(&str, &str)> {
        match self {
            Op::Rename { from, to } | Op::RenameNoReplace { from, to } | Op::Exchange { from, to } => Some((from, to)),
            _ => None,
        }
    }
}

fn cpath(root: &Path, rel: &str) -> CString {
    assert!(!rel.split('/').any(|c| c == ".."), "operation path {rel:?} climbs out of the mount");
    let path = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

fn check(ret: libc::c_long) -> Result<(), Errno> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Opens `path` with `flags`, writes `data`, closes (a failing close counts: FUSE reports flush
/// errors there).
fn open_write(path: &CString, flags: libc::c_int, data: &[u8]) -> Result<(), Errno> {
    // O_NONBLOCK: a FIFO must not block the test (ENXIO without a reader)
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(errno());
    }
    let mut done = 0;
    let mut result = Ok(());
    while done < data.len() {
        let n = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if n < 0 {
            result = Err(errno());
            break;
        }
        done += n as usize;
    }
    let closed = unsafe { libc::close(fd) };
    if closed < 0 && result.is_ok() {
        result = Err(errno());
    }
    result
}

fn read_all(path: &CString) -> Result<Vec<u8>, Errno> {
    // O_NONBLOCK: a FIFO must not block the test (it reads as empty without a writer)
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(errno());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let result = loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            break Err(errno());
        }
        if n == 0 {
            break Ok(());
        }
        out.extend_from_slice(&buf[..n as usize]);
    };
    unsafe { libc::close(fd) };
    result.map(|()| out)
}

fn renameat2(from: &CString, to: &CString, flags: libc::c_uint) -> Result<(), Errno> {
    check(unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags)
    })
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

/// Performs `op` on the tree mounted at `root`.
pub fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| cpath(root, rel);
    match op {
        Op::Create { path, seed, len } => {
            open_write(&p(path), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, &content(*seed, *len))?
        }
        Op::Append { path, seed, len } => open_write(&p(path), libc::O_WRONLY | libc::O_APPEND, &content(*seed, *len))?,
        Op::Overwrite { path, seed, len } => {
            open_write(&p(path), libc::O_WRONLY | libc::O_TRUNC, &content(*seed, *len))?
        }
        Op::Truncate { path, len } => check(unsafe { libc::truncate(p(path).as_ptr(), *len as libc::off_t) } as _)?,
        Op::Mkdir { path, mode } => check(unsafe { libc::mkdir(p(path).as_ptr(), *mode) } as _)?,
        Op::Rmdir { path } => check(unsafe { libc::rmdir(p(path).as_ptr()) } as _)?,
        Op::Unlink { path } => check(unsafe { libc::unlink(p(path).as_ptr()) } as _)?,
        Op::Rename { from, to } => check(unsafe { libc::rename(p(from).as_ptr(), p(to).as_ptr()) } as _)?,
        Op::RenameNoReplace { from, to } => renameat2(&p(from), &p(to), libc::RENAME_NOREPLACE)?,
        Op::Exchange { from, to } => renameat2(&p(from), &p(to), libc::RENAME_EXCHANGE)?,
        Op::Symlink { target, path } => {
            assert!(!target.starts_with('/') && !target.split('/').any(|c| c == ".."), "unsafe target {target}");
            let target = CString::new(target.as_bytes()).unwrap();
            check(unsafe { libc::symlink(target.as_ptr(), p(path).as_ptr()) } as _)?
        }
        Op::Link { from, to } => {
            check(unsafe { libc::linkat(libc::AT_FDCWD, p(from).as_ptr(), libc::AT_FDCWD, p(to).as_ptr(), 0) } as _)?
        }
        Op::Chmod { path, mode } => check(unsafe { libc::chmod(p(path).as_ptr(), *mode) } as _)?,
        Op::Chown { path, uid, gid } => check(unsafe { libc::lchown(p(path).as_ptr(), *uid, *gid) } as _)?,
        Op::Utimens { path, mtime, nofollow } => {
            let times = [
                libc::timespec { tv_sec: 1_400_000_000, tv_nsec: 0 },
                libc::timespec { tv_sec: mtime.0 as _, tv_nsec: mtime.1 as _ },
            ];
            let flags = if *nofollow { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
            check(unsafe { libc::utimensat(libc::AT_FDCWD, p(path).as_ptr(), times.as_ptr(), flags) } as _)?
        }
        Op::SetXattr { path, name, value, mode } => {
            let name = CString::new(name.as_bytes()).unwrap();
            let flags = match mode {
                XattrMode::Any => 0,
                XattrMode::Create => libc::XATTR_CREATE,
                XattrMode::Replace => libc::XATTR_REPLACE,
            };
            check(
                unsafe { libc::lsetxattr(p(path).as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) }
                    as _,
            )?
        }
        Op::RemoveXattr { path, name } => {
            let name = CString::new(name.as_bytes()).unwrap();
            check(unsafe { libc::lremovexattr(p(path).as_ptr(), name.as_ptr()) } as _)?
        }
        Op::Mknod { path, mode, rdev } => check(unsafe { libc::mknod(p(path).as_ptr(), *mode, *rdev) } as _)?,
        Op::Read { path } => return Ok(Some(digest(&read_all(&p(path))?))),
        Op::ReadDir { path } => {
            let dir = if path.is_empty() { root.to_path_buf() } else { root.join(path) };
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io_errno)? {
                let entry = entry.map_err(io_errno)?;
                let kind = kind_of(entry.file_type().map_err(io_errno)?);
                names.push(format!("{}:{kind}", entry.file_name().to_string_lossy()));
            }
            names.sort();
            return Ok(Some(names.join(" ")));
        }
        Op::Stat { path } => {
            let full = root.join(path);
            let meta = std::fs::symlink_metadata(&full).map_err(io_errno)?;
            let ft = meta.file_type();
            let mut out =
                format!("{} mode {:o} owner {}:{}", kind_of(ft), meta.mode() & 0o7777, meta.uid(), meta.gid());
            if !ft.is_dir() {
                out += &format!(" size {} nlink {}", meta.size(), meta.nlink());
            }
            if ft.is_char_device() || ft.is_block_device() {
                out += &format!(" rdev {:x}", meta.rdev());
            }
            for (name, value) in super::tree::xattrs(&full) {
                out += &format!(" {name}={}", String::from_utf8_lossy(&value));
            }
            return Ok(Some(out));
        }
        Op::UseDeletedWhileOpen { path, replacement } => {
            let fd = unsafe { libc::open(p(path).as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
            if fd < 0 {
                return Err(errno());
            }
            let deleted = match replacement {
                None => check(unsafe { libc::unlink(p(path).as_ptr()) } as _),
                Some(from) => check(unsafe { libc::rename(p(from).as_ptr(), p(path).as_ptr()) } as _),
            };
            let used = deleted.map(|()| use_open_file(fd));
            unsafe { libc::close(fd) };
            return used.map(Some);
        }
    }
    Ok(None)
}

/// What a series of calls on an open file report (each call's result, in order).
fn use_open_file(fd: libc::c_int) -> String {
    let fstat = || {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(fd, &mut st) } as _).map(|()| {
            format!("mode {:o} size {} nlink {} owner {}:{}", st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid)
        })
    };
    let name = CString::new("user.open").unwrap();
    let mut value = [0u8; 16];
    let mut data = [0u8; 16];
    let steps: Vec<(&str, Result<String, Errno>)> = vec![
        ("fstat", fstat()),
        ("fchmod", check(unsafe { libc::fchmod(fd, 0o600) } as _).map(|()| String::new())),
        (
            "fsetxattr",
            check(unsafe { libc::fsetxattr(fd, name.as_ptr(), b"v".as_ptr().cast(), 1, 0) } as _)
                .map(|()| String::new()),
        ),
        (
            "fgetxattr",
            check(unsafe { libc::fgetxattr(fd, name.as_ptr(), value.as_mut_ptr().cast(), value.len()) } as _)
                .map(|()| String::from_utf8_lossy(&value[..1]).into_owned()),
        ),
        ("ftruncate", check(unsafe { libc::ftruncate(fd, 3) } as _).map(|()| String::new())),
        ("pwrite", check(unsafe { libc::pwrite(fd, b"xyz!".as_ptr().cast(), 4, 2) } as _).map(|()| String::new())),
        ("pread", {
            let n = unsafe { libc::pread(fd, data.as_mut_ptr().cast(), data.len(), 0) };
            check(n as _).map(|()| digest(&data[..n.max(0) as usize]))
        }),
        ("fstat", fstat()),
    ];
    steps.into_iter().map(|(call, result)| format!("{call}: {result:?}")).collect::<Vec<_>>().join("; ")
}

/// An entry of the tree operations are generated from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub is_dir: bool,
    pub is_file: bool,
}

impl Entry {
    fn depth(&self) -> usize {
        self.path.split('/').count()
    }
}

/// The tree below `root` (lstat, sorted), to pick operands from.
pub fn scan(root: &Path) -> Vec<Entry> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<Entry>) {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut names: Vec<_> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let Ok(meta) = std::fs::symlink_metadata(root.join(&path)) else { continue };
            out.push(Entry { path: path.clone(), is_dir: meta.is_dir(), is_file: meta.is_file() });
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

/// Names new paths are made of: a few short ones and those of the lowers.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f1", "f2", "f3", "f4", "f5", "h1", "h2"];
/// Symlink targets: relative, without `..`, so following them never leaves the mount.
pub const TARGETS: &[&str] = &["f1", "a/f1", "a", "a/b", "d", "e", "missing", "c/f3", "b/c/d"];
pub const XATTR_NAMES: &[&str] = &["user.a", "user.b", "user.orig"];
pub const MAX_DEPTH: usize = 3;

struct Gen<'a> {
    rng: &'a mut Rng,
    tree: &'a [Entry],
}

impl Gen<'_> {
    /// A path that probably does not exist yet: a name under the root or under a shallow directory.
    fn fresh(&mut self) -> String {
        let parents: Vec<&str> = std::iter::once("")
            .chain(self.tree.iter().filter(|e| e.is_dir && e.depth() < MAX_DEPTH).map(|e| e.path.as_str()))
            .collect();
        let parent = *self.rng.pick(&parents);
        let name = *self.rng.pick(NAMES);
        if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        }
    }

    /// An existing path matching `want` (usually), else any existing path or a fresh one.
    fn existing(&mut self, want: impl Fn(&Entry) -> bool) -> String {
        let matching: Vec<&Entry> = self.tree.iter().filter(|e| want(e)).collect();
        if !matching.is_empty() && self.rng.chance(85) {
            return self.rng.pick(&matching).path.clone();
        }
        if !self.tree.is_empty() && self.rng.chance(70) {
            return self.rng.pick(self.tree).path.clone();
        }
        self.fresh()
    }

    /// Mostly a fresh path, sometimes an existing one (to get EEXIST and friends).
    fn new_path(&mut self) -> String {
        if self.rng.chance(85) || self.tree.is_empty() {
            self.fresh()
        } else {
            self.rng.pick(self.tree).path.clone()
        }
    }

    fn len(&mut self) -> usize {
        match self.rng.below(10) {
            0 => 0,
            1..=4 => 1 + self.rng.below(100),
            5..=8 => 100 + self.rng.below(5000),
            _ => 5000 + self.rng.below(70_000),
        }
    }

    fn is_dir(&self, path: &str) -> bool {
        self.tree.iter().any(|e| e.path == path && e.is_dir)
    }

    /// The target of a rename of `from`: an existing entry of the same kind (to replace it) or a
    /// fresh path.
    fn rename_target(&mut self, from: &str, replace_percent: u64) -> String {
        if self.rng.chance(replace_percent) {
            let dir = self.is_dir(from);
            self.existing(|e| e.is_dir == dir && e.path != from)
        } else {
            self.fresh()
        }
    }
}

const WEIGHTS: &[(u32, &str)] = &[
    (10, "create"),
    (6, "append"),
    (5, "overwrite"),
    (5, "truncate"),
    (7, "mkdir"),
    (5, "rmdir"),
    (7, "unlink"),
    (10, "rename"),
    (3, "noreplace"),
    (3, "exchange"),
    (4, "symlink"),
    (4, "link"),
    (5, "chmod"),
    (4, "chown"),
    (5, "utimens"),
    (5, "setxattr"),
    (3, "removexattr"),
    (2, "mknod"),
    (6, "read"),
    (4, "readdir"),
    (4, "stat"),
    (3, "deleted-while-open"),
];

/// One random operation on the tree `tree` (as `scan` saw it).
pub fn generate(rng: &mut Rng, tree: &[Entry]) -> Op {
    let total: u32 = WEIGHTS.iter().map(|w| w.0).sum();
    let mut roll = rng.below(total as usize) as u32;
    let kind = WEIGHTS
        .iter()
        .find(|(w, _)| {
            if roll < *w {
                true
            } else {
                roll -= w;
                false
            }
        })
        .unwrap()
        .1;
    let mut g = Gen { rng, tree };
    match kind {
        "create" => Op::Create { path: g.new_path(), seed: g.rng.next_u64(), len: g.len() },
        "append" => Op::Append { path: g.existing(|e| e.is_file), seed: g.rng.next_u64(), len: g.len() },
        "overwrite" => Op::Overwrite { path: g.existing(|e| e.is_file), seed: g.rng.next_u64(), len: g.len() },
        "truncate" => {
            Op::Truncate { path: g.existing(|e| e.is_file), len: *g.rng.pick(&[0u64, 1, 7, 100, 4096, 10_000]) }
        }
        "mkdir" => Op::Mkdir { path: g.new_path(), mode: *g.rng.pick(&[0o755, 0o700, 0o1777, 0o750]) },
        "rmdir" => Op::Rmdir { path: g.existing(|e| e.is_dir) },
        "unlink" => Op::Unlink { path: g.existing(|e| !e.is_dir) },
        "rename" => {
            let from = g.existing(|_| true);
            let to = g.rename_target(&from, 45);
            Op::Rename { from, to }
        }
        "noreplace" => {
            let from = g.existing(|_| true);
            let to = g.rename_target(&from, 40);
            Op::RenameNoReplace { from, to }
        }
        "exchange" => {
            let from = g.existing(|_| true);
            let to = g.existing(|_| true);
            Op::Exchange { from, to }
        }
        "symlink" => Op::Symlink { target: g.rng.pick(TARGETS).to_string(), path: g.new_path() },
        "link" => {
            let from = g.existing(|e| !e.is_dir);
            Op::Link { from, to: g.new_path() }
        }
        "chmod" => {
            Op::Chmod { path: g.existing(|_| true), mode: *g.rng.pick(&[0o644, 0o600, 0o755, 0o4755, 0o000, 0o2711]) }
        }
        "chown" => {
            Op::Chown { path: g.existing(|_| true), uid: *g.rng.pick(&[0u32, 1000]), gid: *g.rng.pick(&[0u32, 1000]) }
        }
        "utimens" => {
            Op::Utimens { path: g.existing(|_| true), mtime: *g.rng.pick(&FIXED_TIMES), nofollow: g.rng.chance(50) }
        }
        "setxattr" => Op::SetXattr {
            path: g.existing(|_| true),
            name: g.rng.pick(XATTR_NAMES).to_string(),
            value: format!("v{}", g.rng.below(1000)),
            mode: *g.rng.pick(&[XattrMode::Any, XattrMode::Any, XattrMode::Create, XattrMode::Replace]),
        },
        "removexattr" => Op::RemoveXattr { path: g.existing(|_| true), name: g.rng.pick(XATTR_NAMES).to_string() },
        "mknod" => {
            // FIFOs mostly; devices too, among them 0/0, the upper's whiteout (refused: EPERM)
            let (mode, rdev) = *g.rng.pick(&[
                (libc::S_IFIFO | 0o644, 0),
                (libc::S_IFIFO | 0o600, 0),
                (libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
                (libc::S_IFCHR | 0o600, libc::makedev(0, 0)),
                (libc::S_IFBLK | 0o660, libc::makedev(7, 0)),
            ]);
            Op::Mknod { path: g.new_path(), mode, rdev }
        }
        "read" => Op::Read { path: g.existing(|e| e.is_file) },
        "readdir" => {
            if g.rng.chance(15) {
                Op::ReadDir { path: String::new() }
            } else {
                Op::ReadDir { path: g.existing(|e| e.is_dir) }
            }
        }
        "stat" => Op::Stat { path: g.existing(|_| true) },
        "deleted-while-open" => {
            let path = g.existing(|e| e.is_file);
            let replacement = g.rng.chance(40).then(|| g.existing(|e| e.is_file));
            Op::UseDeletedWhileOpen { path, replacement }
        }
        other => unreachable!("{other}"),
    }
}
