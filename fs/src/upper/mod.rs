//! The writable upper directory in kernel overlayfs' own format, and every host syscall made on
//! it: whiteouts (0/0 character devices), opaque directories (`trusted.overlay.opaque=y`, or
//! `user.overlay.opaque` in userxattr mode), and atomic copy-up through the work directory. This
//! is the one place that writes the upper format; a future `diff`/`commit` reads it back with
//! `layer::dir_index`, which understands the same encodings. Never touches a lower layer.
//!
//! Where fuse-overlayfs' `xattr_permissions` is asked for (or the upper's root already carries a
//! stored mode, see `layer::override_stat`), directories and files keep the owner and
//! permissions callers gave them in that xattr, and the host object stays the daemon's.
//!
//! Paths are relative to the upper root and name directories strata created itself, so only the
//! last component can be a symlink; every call on it uses the no-follow variant.

mod copy;
mod file_attr;
mod host_path;

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::{Mode, SFlag};

pub use copy::CopySource;
pub use file_attr::FileAttrIoctl;
pub use host_path::HostPath;

use crate::layer::index::{Entry, Kind};
use crate::layer::override_stat::{self, Stored};
use crate::layer::whiteout;

/// Which xattr namespace marks opaque directories: `trusted.` needs CAP_SYS_ADMIN, so unprivileged
/// mounts use `user.` (overlayfs' userxattr mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Trusted,
    User,
}

#[derive(Debug)]
pub struct Upper {
    root: PathBuf,
    work: PathBuf,
    mode: XattrMode,
    /// Temporary names in the work directory: this process' id and a counter.
    pid: u32,
    next_temp: AtomicU64,
    /// Write whiteouts in overlayfs' xattr form even where mknod is allowed
    /// (`STRATA_XATTR_WHITEOUTS=1`, as fuse-overlayfs' `FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT`):
    /// for hosts whose consumers of the upper want that form, and to test it where mknod works.
    xattr_whiteouts: bool,
    /// The xattr directories and files keep their owner and permissions in, instead of the
    /// host's (see the module doc); None: on the host object itself.
    stored_modes: Option<&'static [u8]>,
    /// The daemon may ignore permission bits on its own objects (CAP_DAC_OVERRIDE: root, or root
    /// of the user namespace a rootless container's daemon runs in). Without it, the daemon must
    /// keep write access to a directory it moves or fills in, whatever mode the directory shows.
    overrides_permissions: bool,
}

/// True for a file [`Upper::open_file`] opened with O_APPEND (an append-only file, whose writes land
/// at the end whatever their offset) or without read access (a write-only file, for a daemon
/// that cannot override permissions): the kernel must send its writes as they are made (direct
/// I/O), never write back whole cached pages or read the pages around a partial write.
pub fn needs_direct_io(file: &File) -> bool {
    use std::os::fd::AsFd;
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|flags| flags & libc::O_APPEND != 0 || flags & libc::O_ACCMODE == libc::O_WRONLY)
}

/// What the upper path of an orphan (an open object without a name) starts with.
const ORPHAN_PREFIX: &[u8] = b"/";

/// An upper directory's entries: (name, lstat) of visible ones, and names it whites out.
pub type Listing = (Vec<(Vec<u8>, fs::Metadata)>, Vec<Vec<u8>>);

/// What a path of the upper directory holds, as far as the union is concerned.
#[derive(Debug)]
pub enum UpperEntry {
    Missing,
    Whiteout,
    Present(fs::Metadata),
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Upper {
    /// Opens an upper and its work directory, creating them if missing. The work directory must
    /// be on the upper's filesystem, since copy-up renames from one into the other.
    pub fn open(root: &Path, work: &Path, mode: XattrMode) -> io::Result<Upper> {
        fs::create_dir_all(root)?;
        fs::create_dir_all(work)?;
        let (r, w) = (fs::metadata(root)?, fs::metadata(work)?);
        if r.dev() != w.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the work directory {} is not on the upper's filesystem ({}): copy-up renames from one to the other",
                    work.display(),
                    root.display()
                ),
            ));
        }
        let root = fs::canonicalize(root)?;
        let stored_modes = override_stat::layer_name(|name| get_xattr(&root, name).is_ok());
        let upper = Upper {
            root,
            work: fs::canonicalize(work)?,
            mode,
            pid: std::process::id(),
            next_temp: AtomicU64::new(0),
            xattr_whiteouts: std::env::var_os("STRATA_XATTR_WHITEOUTS").is_some_and(|v| v == "1"),
            stored_modes,
            overrides_permissions: has_capability(CAP_DAC_OVERRIDE),
        };
        upper.clean_work()?;
        Ok(upper)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// From now on keeps owners and permissions in xattr `name` (fuse-overlayfs'
    /// `xattr_permissions=1|2`). A root without one takes it from the first of `lower_roots`
    /// (top first) that has one (for the user form, also containers-storage's), else
    /// [`override_stat::ROOT_DEFAULT`], as fuse-overlayfs does.
    pub fn store_modes_in(&mut self, name: &'static [u8], lower_roots: &[&Path]) -> io::Result<()> {
        if get_xattr(&self.root, name).is_err() {
            let readable: &[&[u8]] =
                if name == override_stat::USER { &[name, override_stat::CONTAINERS] } else { &[name] };
            let inherited = lower_roots
                .iter()
                .find_map(|dir| readable.iter().find_map(|n| get_xattr(dir, n).ok().and_then(|v| Stored::parse(&v))));
            set_xattr(&self.root, name, &inherited.unwrap_or(override_stat::ROOT_DEFAULT).format())?;
        }
        self.stored_modes = Some(name);
        Ok(())
    }

    /// The owner and permissions stored for the upper object at `rel` of `kind`, where this
    /// upper stores them and one is there: what to show instead of the host's.
    pub fn stored_mode(&self, rel: &[u8], kind: Kind) -> Option<Stored> {
        let name = self.stored_modes.filter(|_| override_stat::applies_to(kind))?;
        get_xattr(&self.host(rel), name).ok().and_then(|v| Stored::parse(&v))
    }

    /// Removes what an interrupted copy-up left in the work directory: never visible in the
    /// upper, since it only ever reaches the upper by an atomic rename.
    fn clean_work(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.work)? {
            let path = entry?.path();
            let removed = match fs::symlink_metadata(&path)?.is_dir() {
                true => remove_tree(&path),
                false => remove_unlinked_file(&path),
            };
            removed.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot empty the work directory: removing {}: {e}; remove it by hand \
                         (`chattr -R -ia` first if it is immutable or append-only)",
                        path.display()
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// The host path of `rel`: a path in the upper, or an orphan's (see [`Upper::keep_orphan`]).
    pub fn host(&self, rel: &[u8]) -> HostPath {
        match rel.strip_prefix(ORPHAN_PREFIX) {
            Some(orphan) => HostPath::new(&self.work, orphan),
            None => HostPath::new(&self.root, rel),
        }
    }

    fn temp(&self) -> PathBuf {
        self.work.join(format!("#{}-{}", self.pid, self.next_temp.fetch_add(1, Ordering::Relaxed)))
    }

    pub fn opaque_xattr(&self) -> &'static [u8] {
        match self.mode {
            XattrMode::Trusted => whiteout::OPAQUE_XATTRS[0],
            XattrMode::User => whiteout::OPAQUE_XATTRS[1],
        }
    }

    /// What the upper has at `rel`.
    pub fn entry(&self, rel: &[u8]) -> io::Result<UpperEntry> {
        let host = self.host(rel);
        match fs::symlink_metadata(&host) {
            Ok(m) if is_whiteout(&host, &m) => Ok(UpperEntry::Whiteout),
            Ok(m) => Ok(UpperEntry::Present(m)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(UpperEntry::Missing),
            Err(e) => Err(e),
        }
    }

    /// True when the upper directory at `rel` hides the lower directories below it.
    pub fn is_opaque(&self, rel: &[u8]) -> bool {
        let host = self.host(rel);
        whiteout::OPAQUE_XATTRS.iter().any(|name| get_xattr(&host, name).is_ok_and(|v| whiteout::is_opaque_value(&v)))
            || fs::symlink_metadata(host.join(OsStr::from_bytes(whiteout::OPAQUE_MARKER))).is_ok()
    }

    /// The names of the upper directory at `rel`: visible entries and whited-out names.
    pub fn list(&self, rel: &[u8]) -> io::Result<Listing> {
        let host = self.host(rel);
        // A directory unreadable to its owner is listed too (see `with_owner_access`): the
        // kernel lets a caller remove it when it is empty, which takes a listing to know.
        self.with_owner_access(&host, 0o500, || list_host_dir(&host))
    }

    /// Builds an object in the work directory with `make`, then renames it onto `rel`,
    /// atomically replacing a whiteout (or anything) there. Where rename cannot replace the old
    /// object (a directory over a whiteout), the two are exchanged and the old one removed.
    /// `dir_mode`: the mode of a directory being placed, which it may get only once in place
    /// (see [`Upper::building_mode`]).
    fn place<T>(&self, rel: &[u8], dir_mode: Option<u32>, make: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
        let temp = self.temp();
        let host = self.host(rel);
        let placed = make(&temp).and_then(|made| {
            self.with_writable_parent(&host, || match fs::rename(&temp, &host) {
                Ok(()) => Ok(false),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::EISDIR)) => {
                    rename2(&temp, &host, libc::RENAME_EXCHANGE).map(|()| true)
                }
                Err(e) => Err(e),
            })
            .map(|exchanged| (made, exchanged))
        });
        // After an exchange the old object is at `temp`; after a failure, the unfinished new one.
        if !matches!(placed, Ok((_, false))) && fs::symlink_metadata(&temp).is_ok() {
            let _ = remove_tree(&temp).or_else(|_| fs::remove_file(&temp));
        }
        let (made, _) = placed?;
        if let Some(mode) = dir_mode.filter(|&m| self.building_mode(Kind::Dir, m) != m) {
            fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(made)
    }

    /// The host mode a new object gets while it is built and placed. A daemon that cannot override
    /// permissions (unprivileged, outside a user namespace) keeps its write and search access to
    /// a directory until the directory is in place, since setting its xattrs and renaming it into
    /// another directory need write access to it; [`Upper::place`] gives it its mode last.
    fn building_mode(&self, kind: Kind, mode: u32) -> u32 {
        match kind == Kind::Dir && !self.overrides_permissions && self.stored_modes.is_none() {
            true => mode | 0o300,
            false => mode,
        }
    }

    /// Runs `op`, which adds an entry to the directory holding `host`, with write access to
    /// that directory (see [`Upper::with_owner_access`]): copying up a changed file of a 0555
    /// lower directory (as Fedora's `/usr/lib`) puts it into the directory's 0555 copy.
    fn with_writable_parent<T>(&self, host: &Path, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match host.parent() {
            Some(parent) => self.with_owner_access(parent, 0o300, op),
            None => op(),
        }
    }

    /// Runs `op` on directory `dir`, with the owner's `access` bits. The kernel has already
    /// checked the caller's permissions; a daemon that cannot override permissions must still
    /// act on its own directories whose mode refuses their owner (`mkdir -m 0`, 0555 copies of
    /// lower directories). Where `op` is refused, the owner's access is widened for it and set
    /// back right after (a crash in between leaves the directory open to its owner, nothing
    /// else; requests changing the upper are serialised, so no other one sees it).
    fn with_owner_access<T>(&self, dir: &Path, access: u32, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        let first = op();
        let refused = matches!(&first, Err(e) if e.raw_os_error() == Some(libc::EACCES));
        // Followed: `dir` may be reached through a descriptor (see `HostPath`); the upper's
        // directories are never symlinks.
        let Some(meta) = (refused && !self.overrides_permissions).then(|| fs::metadata(dir).ok()).flatten() else {
            return first;
        };
        if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & access == access {
            return first;
        }
        let mode = meta.mode() & 0o7777;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | access))?;
        let result = op();
        // `op`'s outcome stands either way: it may have changed the upper already.
        if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(mode)) {
            tracing::warn!("cannot give {} its mode {mode:o} back: {e}", dir.display());
        }
        result
    }

    /// Deletes whatever the upper has at `rel` and leaves a whiteout in its place, atomically: a
    /// directory (empty in the merged view, holding only whiteouts) is exchanged with the new
    /// whiteout and removed from the work directory afterwards (see [`Upper::place`]), as kernel
    /// overlayfs does, so a crash never leaves it half emptied, showing lower names again.
    pub fn whiteout(&self, rel: &[u8]) -> io::Result<()> {
        let host = self.host(rel);
        // Moving a directory to another parent needs write access to it (its `..` changes): a
        // daemon that cannot override permissions gives itself that on its own directory (which
        // is about to go), and gives the mode back if the whiteout could not replace it.
        let own_meta = (!self.overrides_permissions).then(|| fs::symlink_metadata(&host));
        let widened = match own_meta {
            Some(Ok(meta))
                if meta.is_dir() && meta.mode() & 0o200 == 0 && meta.uid() == nix::unistd::geteuid().as_raw() =>
            {
                fs::set_permissions(&host, fs::Permissions::from_mode((meta.mode() | 0o200) & 0o7777))?;
                Some(meta.mode() & 0o7777)
            }
            _ => None,
        };
        let placed = self.place(rel, None, |temp| self.make_whiteout(temp, rel));
        if let (Err(_), Some(mode)) = (&placed, widened) {
            let _ = fs::set_permissions(&host, fs::Permissions::from_mode(mode));
        }
        placed
    }

    /// Marks the directory at `rel` opaque: lower layers' names no longer show through it. A
    /// daemon that cannot override permissions gains write access to its 0555 directory for it.
    pub fn make_opaque(&self, rel: &[u8]) -> io::Result<()> {
        let host = self.host(rel);
        self.with_owner_access(&host, 0o200, || set_xattr(&host, self.opaque_xattr(), b"y"))
    }

    /// A whiteout moved to `rel` by an exchange (see `Overlay::rename`): kept where it hides a
    /// lower object (`needed`; the xattr form needs its directory marked), removed otherwise.
    /// Either way the merged view is already right, so a failure here is only logged.
    pub fn settle_moved_whiteout(&self, rel: &[u8], needed: bool) {
        let host = self.host(rel);
        let settled = match needed {
            true if fs::symlink_metadata(&host).is_ok_and(|m| m.is_file()) => self.mark_for_xattr_whiteouts(rel),
            true => Ok(()),
            false => fs::remove_file(&host),
        };
        if let Err(e) = settled {
            tracing::warn!("cannot settle the whiteout left at {}: {e}", host.display());
        }
    }

    /// Makes a whiteout at `temp` for the upper path `rel`: the 0/0 character device, or, where
    /// mknod is not allowed (unprivileged, outside a user namespace), overlayfs' xattr form: a
    /// zero-size file marked `*.overlay.whiteout`, in a directory marked `*.overlay.opaque=x`.
    fn make_whiteout(&self, temp: &Path, rel: &[u8]) -> io::Result<()> {
        let made = match self.xattr_whiteouts {
            true => Err(io::Error::from_raw_os_error(libc::EPERM)),
            false => mknod(temp, SFlag::S_IFCHR, 0, 0),
        };
        match made {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                fs::OpenOptions::new().write(true).create_new(true).open(temp)?;
                set_xattr(temp, self.whiteout_xattr(), b"y")?;
                self.mark_for_xattr_whiteouts(rel)
            }
            other => other,
        }
    }

    /// Marks the directory holding `rel` as one that holds xattr-form whiteouts
    /// (`*.overlay.opaque=x`, what overlayfs looks for before reading them), unless it is opaque.
    fn mark_for_xattr_whiteouts(&self, rel: &[u8]) -> io::Result<()> {
        let dir = self.host(crate::path::split_parent(rel).map_or(&[][..], |(parent, _)| parent));
        if !get_xattr(&dir, self.opaque_xattr()).is_ok_and(|v| whiteout::is_opaque_value(&v)) {
            set_xattr(&dir, self.opaque_xattr(), b"x")?;
        }
        Ok(())
    }

    fn whiteout_xattr(&self) -> &'static [u8] {
        match self.mode {
            XattrMode::Trusted => whiteout::WHITEOUT_XATTRS[0],
            XattrMode::User => whiteout::WHITEOUT_XATTRS[1],
        }
    }

    /// Keeps the non-directory object at `rel` alive under a new link in the work directory,
    /// before its last name goes while it is still open: unlinked open files keep working (fstat,
    /// ftruncate, fchmod, xattrs, reopening through /proc) as on a real filesystem, and the
    /// object still holds its data until the link is removed at last close. Returns the
    /// object's path for the other methods: the link's name behind a `/`, which no path in the
    /// upper starts with. A crash leaves the link in the work directory, cleaned at next mount.
    pub fn keep_orphan(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let link = self.temp();
        fs::hard_link(self.host(rel), &link)?;
        let name = link.file_name().expect("a temporary name").as_bytes();
        Ok([ORPHAN_PREFIX, name].concat())
    }

    /// Removes an orphan (see [`Upper::keep_orphan`]) its last user let go, as a filesystem frees
    /// an unlinked inode whatever its flags: one made append-only or immutable through its open
    /// file has them cleared first.
    pub fn remove_orphan(&self, orphan: &[u8]) -> io::Result<()> {
        remove_unlinked_file(&self.host(orphan))
    }

    /// Removes an upper object that no lower layer shadows (no whiteout needed).
    pub fn remove(&self, rel: &[u8]) -> io::Result<()> {
        let host = self.host(rel);
        match fs::remove_file(&host) {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => remove_tree(&host),
            other => other,
        }
    }

    /// Creates a directory; `opaque` when it replaces a deleted lower one, whose old children
    /// must not show through.
    pub fn mkdir(&self, rel: &[u8], mode: u32, owner: (u32, u32), opaque: bool) -> io::Result<()> {
        self.place(rel, Some(mode), |temp| {
            fs::create_dir(temp)?;
            self.set_owner_and_mode(temp, Kind::Dir, owner, mode, || match opaque {
                true => set_xattr(temp, self.opaque_xattr(), b"y"),
                false => Ok(()),
            })
        })
    }

    /// Creates a non-directory object (file, symlink, device, FIFO, socket) at `rel`.
    pub fn create(
        &self,
        rel: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u64,
        target: &[u8],
        owner: (u32, u32),
    ) -> io::Result<()> {
        self.place(rel, None, |temp| {
            make_node(temp, kind, mode, rdev, target)?;
            self.set_owner_and_mode(temp, kind, owner, mode, || Ok(()))
        })
    }

    /// Creates a regular file at `rel` and returns it open for reading and writing.
    pub fn create_file(&self, rel: &[u8], mode: u32, owner: (u32, u32)) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        self.place(rel, None, |temp| {
            let file = fs::OpenOptions::new().read(true).write(true).create_new(true).mode(mode & 0o7777).open(temp)?;
            // The mode again: the daemon's umask applies to open(2), the caller's already has.
            self.set_owner_and_mode(temp, Kind::File, owner, mode, || Ok(()))?;
            Ok(file)
        })
    }

    /// Copies a lower object up to `rel`: content, mode, owner, xattrs and times, prepared in
    /// the work directory and renamed into place, so the upper never holds a partial copy.
    /// The parent must already be in the upper.
    pub fn copy_up(&self, rel: &[u8], entry: &Entry, source: Option<CopySource>) -> io::Result<()> {
        let dir_mode = (entry.kind == Kind::Dir).then_some(entry.mode);
        self.place(rel, dir_mode, |temp| {
            match (entry.kind, source) {
                (Kind::Dir, _) => fs::create_dir(temp)?,
                (Kind::File, Some(source)) => copy::copy_file(&source, temp)?,
                (kind, _) => {
                    let rdev = libc::makedev(entry.rdev_major, entry.rdev_minor);
                    make_node(temp, kind, entry.mode, rdev, &entry.link_target)?
                }
            }
            self.apply_metadata(temp, entry)
        })
    }

    /// Renames within the upper; `flags` are renameat2's (RENAME_NOREPLACE, RENAME_EXCHANGE,
    /// RENAME_WHITEOUT to leave a whiteout at the source atomically).
    pub fn rename(&self, from: &[u8], to: &[u8], flags: u32) -> io::Result<()> {
        let renamed = match self.xattr_whiteouts && flags & libc::RENAME_WHITEOUT != 0 {
            true => Err(io::Error::from_raw_os_error(libc::EPERM)),
            false => rename2(&self.host(from), &self.host(to), flags),
        };
        match renamed {
            // RENAME_WHITEOUT needs CAP_MKNOD: the xattr form of whiteout instead, see below.
            Err(e) if flags & libc::RENAME_WHITEOUT != 0 && e.raw_os_error() == Some(libc::EPERM) => {
                self.rename_leaving_xattr_whiteout(from, to)
            }
            other => other,
        }
    }

    /// RENAME_WHITEOUT's result with the xattr form of whiteout, in two exchanges, never showing
    /// the lower object at `from` again in between, and undone if the second step fails. Where
    /// `to` is free, a whiteout is put there first and exchanged with the source (a crash in
    /// between has only hidden what `to` showed, which the rename replaces anyway); where `to`
    /// holds an object, the source is exchanged with it and a whiteout then replaces it at
    /// `from` (a crash in between shows the two swapped).
    fn rename_leaving_xattr_whiteout(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (host_from, host_to) = (self.host(from), self.host(to));
        if fs::symlink_metadata(&host_to).is_err() {
            self.whiteout(to)?;
            let exchanged =
                self.mark_for_xattr_whiteouts(from).and_then(|()| rename2(&host_from, &host_to, libc::RENAME_EXCHANGE));
            if exchanged.is_err() {
                let _ = fs::remove_file(&host_to);
            }
            return exchanged;
        }
        rename2(&host_from, &host_to, libc::RENAME_EXCHANGE)?;
        self.whiteout(from).inspect_err(|_| {
            if let Err(e) = rename2(&host_from, &host_to, libc::RENAME_EXCHANGE) {
                tracing::warn!("cannot exchange {} and {} back: {e}", host_from.display(), host_to.display());
            }
        })
    }

    /// Links `from` at `to`: made in the work directory and renamed into place, so a whiteout at
    /// `to` is replaced in one step (a link that fails, or a crash, leaves it hiding the lower
    /// object).
    pub fn link(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let source = self.host(from);
        self.place(to, None, |temp| fs::hard_link(&source, temp))
    }

    pub fn set_xattr(&self, rel: &[u8], name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        let (p, n) =
            (cstr(&self.host(rel)), CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?);
        // SAFETY: valid C strings and a value slice.
        check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
    }

    pub fn remove_xattr(&self, rel: &[u8], name: &[u8]) -> io::Result<()> {
        let (p, n) =
            (cstr(&self.host(rel)), CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?);
        // SAFETY: valid C strings.
        check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
    }

    /// One user-visible xattr of an upper object, None when it has no such attribute.
    pub fn xattr(&self, rel: &[u8], name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if whiteout::is_internal_xattr(name) {
            return Ok(None);
        }
        match get_xattr(&self.host(rel), name) {
            Ok(v) => Ok(Some(v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The names of an upper object's user-visible xattrs (overlay bookkeeping filtered out).
    pub fn xattr_names(&self, rel: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let names = list_xattrs(&self.host(rel))?;
        Ok(names
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty() && !whiteout::is_internal_xattr(n))
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// Reads or changes the inode flags or fsxattr of the object at `rel` (see `file_attr`).
    pub fn file_attr(&self, rel: &[u8], op: FileAttrIoctl, arg: &mut [u8]) -> io::Result<()> {
        file_attr::ioctl(&self.host(rel), op, arg)
    }

    /// Opens an upper file for the kernel's page cache: write access always comes with read
    /// access (the writeback cache reads pages around partial writes) and without O_APPEND (the
    /// kernel places appends itself and sends their offsets), except for an append-only file
    /// (`chattr +a`), which opens for writing only with it, and a write-only file (mode 0200) for
    /// a daemon that cannot override permissions, which opens without read access (see
    /// [`needs_direct_io`]).
    pub fn open_file(&self, rel: &[u8], flags: i32) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let kept = (flags & (libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME)) | libc::O_NOFOLLOW;
        let open = |read, extra| {
            fs::OpenOptions::new().read(read).write(writes).custom_flags(kept | extra).open(self.host(rel))
        };
        match open(true, 0) {
            Err(e) if writes && flags & libc::O_APPEND != 0 && e.raw_os_error() == Some(libc::EPERM) => {
                open(true, libc::O_APPEND)
            }
            Err(e) if flags & libc::O_ACCMODE == libc::O_WRONLY && e.raw_os_error() == Some(libc::EACCES) => {
                open(false, 0)
            }
            other => other,
        }
    }

    pub fn chmod(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        match self.stored_for_change(rel)? {
            Some((name, stored)) => set_xattr(&self.host(rel), name, &Stored { mode, ..stored }.format()),
            None => chmod_no_follow(&self.host(rel), mode & 0o7777),
        }
    }

    pub fn chown(&self, rel: &[u8], uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match self.stored_for_change(rel)? {
            Some((name, stored)) => {
                let is_dir = fs::symlink_metadata(self.host(rel))?.is_dir();
                let changed = Stored {
                    uid: uid.unwrap_or(stored.uid),
                    gid: gid.unwrap_or(stored.gid),
                    mode: if is_dir { stored.mode } else { mode_after_chown(stored.mode) },
                };
                set_xattr(&self.host(rel), name, &changed.format())
            }
            None => std::os::unix::fs::lchown(self.host(rel), uid, gid),
        }
    }

    /// Where the object at `rel` keeps its owner and permissions in an xattr: the xattr's name
    /// and what it holds (the host's values where it has none yet).
    fn stored_for_change(&self, rel: &[u8]) -> io::Result<Option<(&'static [u8], Stored)>> {
        let Some(name) = self.stored_modes else { return Ok(None) };
        let meta = fs::symlink_metadata(self.host(rel))?;
        let kind = Kind::of_host(meta.file_type());
        if !override_stat::applies_to(kind) {
            return Ok(None);
        }
        let host = Stored { uid: meta.uid(), gid: meta.gid(), mode: meta.mode() & 0o7777 };
        Ok(Some((name, self.stored_mode(rel, kind).unwrap_or(host))))
    }

    /// Gives a new object at `path` its owner and permissions: on the host object, or, where
    /// this upper stores them, in its xattr (the host object then stays the daemon's, with the
    /// access the daemon needs and no setuid bits). `set_xattrs` runs in between, after the
    /// chown (which clears `security.capability`) and before the mode (a read-only mode would
    /// refuse an unprivileged daemon `user.*` xattrs).
    fn set_owner_and_mode(
        &self,
        path: &Path,
        kind: Kind,
        owner: (u32, u32),
        mode: u32,
        set_xattrs: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        match self.stored_modes.filter(|_| override_stat::applies_to(kind)) {
            Some(name) => {
                let access = if kind == Kind::Dir { 0o700 } else { 0o600 };
                fs::set_permissions(path, fs::Permissions::from_mode((mode & 0o777) | access))?;
                set_xattrs()?;
                set_xattr(path, name, &Stored { uid: owner.0, gid: owner.1, mode: mode & 0o7777 }.format())
            }
            None => {
                // Owner first: a chown clears setuid and setgid bits.
                lchown(path, owner.0, owner.1)?;
                set_xattrs()?;
                if kind == Kind::Symlink {
                    return Ok(());
                }
                fs::set_permissions(path, fs::Permissions::from_mode(self.building_mode(kind, mode) & 0o7777))
            }
        }
    }

    /// Owner, xattrs, mode and times of a lower entry onto a freshly made upper object, in the
    /// order overlayfs uses (xattrs after data, times last so nothing bumps them again).
    fn apply_metadata(&self, path: &Path, entry: &Entry) -> io::Result<()> {
        self.set_owner_and_mode(path, entry.kind, (entry.uid, entry.gid), entry.mode, || {
            for (name, value) in entry.xattrs.iter().filter(|(n, _)| !whiteout::is_internal_xattr(n)) {
                unprivileged_may_skip(set_xattr(path, name, value))?;
            }
            Ok(())
        })?;
        let t = libc::timespec { tv_sec: entry.mtime.sec, tv_nsec: entry.mtime.nsec as i64 };
        let p = cstr(path);
        // SAFETY: valid path and a two-element timespec array.
        check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }

    pub fn truncate(&self, rel: &[u8], size: u64) -> io::Result<()> {
        fs::OpenOptions::new().write(true).open(self.host(rel))?.set_len(size)
    }

    /// Sets times without following a final symlink; None leaves a time as it is.
    pub fn set_times(
        &self,
        rel: &[u8],
        atime: Option<libc::timespec>,
        mtime: Option<libc::timespec>,
    ) -> io::Result<()> {
        let omit = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
        let times = [atime.unwrap_or(omit), mtime.unwrap_or(omit)];
        let p = cstr(&self.host(rel));
        // SAFETY: valid path and a two-element timespec array.
        check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }

    pub fn statvfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)
    }
}

fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cstr(from), cstr(to));
    // SAFETY: valid NUL-terminated paths; AT_FDCWD with absolute paths.
    check(unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) as libc::c_int
    })
}

/// The visible entries of an upper directory (name, lstat) and the names it whites out.
fn list_host_dir(host: &Path) -> io::Result<Listing> {
    let mut present = Vec::new();
    let mut hidden = Vec::new();
    for child in fs::read_dir(host)? {
        let child = child?;
        let name = child.file_name().as_bytes().to_vec();
        match whiteout::classify(&name) {
            whiteout::WhiteoutName::Hides(n) => hidden.push(n.to_vec()),
            whiteout::WhiteoutName::Opaque | whiteout::WhiteoutName::Metadata => {}
            whiteout::WhiteoutName::Plain => {
                let meta = fs::symlink_metadata(child.path())?;
                if is_whiteout(&child.path(), &meta) {
                    hidden.push(name);
                } else {
                    present.push((name, meta));
                }
            }
        }
    }
    Ok((present, hidden))
}

/// A 0/0 character device, or a zero-size file carrying an overlay whiteout xattr.
fn is_whiteout(host: &Path, meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    (meta.file_type().is_char_device() && meta.rdev() == 0)
        || (meta.is_file() && meta.len() == 0 && whiteout::WHITEOUT_XATTRS.iter().any(|n| get_xattr(host, n).is_ok()))
}

/// Makes a non-directory object of `kind` at `path`.
fn make_node(path: &Path, kind: Kind, mode: u32, rdev: u64, target: &[u8]) -> io::Result<()> {
    match kind {
        Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(target), path),
        Kind::File => fs::OpenOptions::new().write(true).create_new(true).open(path).map(drop),
        Kind::CharDevice => mknod(path, SFlag::S_IFCHR, mode, rdev),
        Kind::BlockDevice => mknod(path, SFlag::S_IFBLK, mode, rdev),
        Kind::Fifo => mknod(path, SFlag::S_IFIFO, mode, 0),
        Kind::Socket => mknod(path, SFlag::S_IFSOCK, mode, 0),
        Kind::Dir => Err(io::Error::from_raw_os_error(libc::EISDIR)),
    }
}

fn mknod(path: &Path, kind: SFlag, mode: u32, rdev: u64) -> io::Result<()> {
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), rdev).map_err(io::Error::from)
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    unprivileged_may_skip(std::os::unix::fs::lchown(path, Some(uid), Some(gid)))
}

/// An unprivileged mount (rootless, or root of a user namespace) cannot give files owners it
/// does not map (EINVAL) or may not give away (EPERM), nor set `trusted.*`/`security.*` xattrs:
/// the copy keeps the caller's ownership instead, as a user copying files would get. Privileged
/// mounts report every failure.
fn unprivileged_may_skip(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) && !privileged() => Ok(()),
        other => other,
    }
}

/// True for root of the initial user namespace: the only caller with every capability over the
/// host's files. Root of a user namespace (a rootless container's filesystem daemon) is not.
pub fn privileged() -> bool {
    // Not cached: a process may enter a user namespace after its first call.
    let initial_namespace = std::fs::read_to_string("/proc/self/uid_map")
        .map(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    nix::unistd::geteuid().is_root() && initial_namespace
}

/// The mode a non-directory keeps after chown(2), as the kernel's `chown_common` leaves it:
/// without set-user-id, and without set-group-id where group execution is allowed (otherwise the
/// bit marks mandatory locking and stays).
fn mode_after_chown(mode: u32) -> u32 {
    match mode & libc::S_IXGRP {
        0 => mode & !libc::S_ISUID,
        _ => mode & !(libc::S_ISUID | libc::S_ISGID),
    }
}

/// chmod that never follows a symlink at `path` (EOPNOTSUPP for one, as Linux 6.6+ answers a mode
/// change of a symlink): older kernels pass a SETATTR for a symlink reached through an O_PATH
/// descriptor, and following it would change the mode of whatever it points at on the host.
/// (Checked, then changed: requests changing the upper are serialised, and nothing else writes
/// in it.)
fn chmod_no_follow(path: &Path, mode: u32) -> io::Result<()> {
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Removes a directory and what it holds, on its own filesystem. A daemon without
/// CAP_DAC_OVERRIDE cannot list or empty its own directories that a user made unreadable or
/// unwritable (`mkdir -m 0`, Fedora's 0550 /root, a copied-up 0555 directory holding
/// whiteouts): where that stops the removal, the owner's access is granted to every directory
/// under `dir` and the removal retried.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    // An empty directory needs no listing, and so no access to it.
    match fs::remove_dir(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
        other => return other,
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            grant_owner_access(dir);
            fs::remove_dir_all(dir)
        }
        other => other,
    }
}

/// Removes a file that no longer has a name for anyone (an orphan, a leftover in the work
/// directory), clearing the append-only or immutable flag that stops it.
fn remove_unlinked_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && file_attr::clear_unremovable_flags(path)? => {
            fs::remove_file(path)
        }
        other => other,
    }
}

/// Best effort: adds u+rwx to every directory under `top` on its filesystem, without following
/// symlinks.
fn grant_owner_access(top: &Path) {
    let Ok(top_meta) = fs::symlink_metadata(top) else { return };
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else { continue };
        if !meta.file_type().is_dir() || meta.dev() != top_meta.dev() {
            continue;
        }
        if meta.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode((meta.mode() | 0o700) & 0o7777));
        }
        let Ok(iter) = fs::read_dir(&dir) else { continue };
        for entry in iter.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// The capability to bypass permission checks (linux/capability.h; not in the libc crate).
const CAP_DAC_OVERRIDE: u32 = 1;

/// True when this thread's effective capabilities hold `cap` (in its own user namespace).
fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim);
    effective.and_then(|hex| u64::from_str_radix(hex, 16).ok()).is_some_and(|caps| caps & (1 << cap) != 0)
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let (p, n) = (cstr(path), CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?);
    // SAFETY: valid C strings and a value slice.
    check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let (p, n) = (cstr(path), CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?);
    sized(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.cast(), len) })
}

fn list_xattrs(path: &Path) -> io::Result<Vec<u8>> {
    let p = cstr(path);
    sized(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })
}

/// Calls a size-then-fill xattr syscall, retrying if the value grew in between.
fn sized(call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_change_never_follows_a_symlink_out_of_the_upper() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "host file").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let err = chmod_no_follow(&link, 0o666).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o600);
        chmod_no_follow(&outside, 0o640).unwrap();
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o640);
    }

    /// With `xattr_permissions`, chown rewrites the stored mode as the kernel rewrites a real one.
    #[test]
    fn chown_drops_stored_set_user_id_bits_of_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("upper"), dir.path().join("work"));
        fs::create_dir(&root).unwrap();
        set_xattr(&root, override_stat::USER, b"0:0:755").unwrap();
        let upper = Upper::open(&root, &work, XattrMode::User).unwrap();
        let cases =
            [("suid", false, 0o4755, 0o755), ("sgid-exec", false, 0o2755, 0o755), ("sgid-lock", false, 0o2745, 0o2745)];
        for (name, is_dir, before, after) in cases.into_iter().chain([("sgid-dir", true, 0o2755, 0o2755)]) {
            let path = root.join(name);
            match is_dir {
                true => fs::create_dir(&path).unwrap(),
                false => fs::write(&path, "").unwrap(),
            }
            set_xattr(&path, override_stat::USER, format!("0:0:{before:o}").as_bytes()).unwrap();
            upper.chown(name.as_bytes(), Some(1), None).unwrap();
            let kind = if is_dir { Kind::Dir } else { Kind::File };
            let stored = upper.stored_mode(name.as_bytes(), kind).unwrap();
            assert_eq!((stored.uid, stored.mode), (1, after), "{name}");
        }
    }
}
