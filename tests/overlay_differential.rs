//! Differential tests of the writable overlay against kernel overlayfs as the oracle: the same
//! operations go to a kernel overlay mount and to the subject mount (strata, or fuse-overlayfs with
//! `STRATA_DIFF_SUBJECT=fuse-overlayfs`, to validate the harness itself) over the same lowers, and
//! every operation's outcome (errno or what it read) and, regularly, the whole merged tree must
//! agree. The subject's upper directory must also be one kernel overlayfs mounts to the same tree.
//!
//! Knobs: `STRATA_DIFF_SUBJECT` (`strata`, default, or `fuse-overlayfs`), `STRATA_DIFF_SEEDS=N`
//! (random sequences for seeds 1..=N, default 20; the upper-compatibility test runs seeds
//! 1001..=1000+N, default N=3), `STRATA_DIFF_SEED=K` (only seed K, or 1000+K, to reproduce a
//! failure), `STRATA_DIFF_OPS` (operations per sequence, default 200), `STRATA_DIFF_KEEP=1` (keep
//! the scratch directory: lowers, uppers, work directories; mounts are still unmounted).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::ops::{self, apply, generate, scan, Errno, Op, Outcome, Rng, XattrMode};
use support::tree::{differences, snapshot, Node};
use support::{is_mounted, require_command, require_fuse, run_strata, strata, Mounted};

/// Kernel overlayfs features pinned, so the oracle is the same whatever the kernel's build
/// defaults are: no directory redirects (renaming a lower or merged directory is EXDEV), the
/// inode index on (a lower hard-link set stays one inode across copy-up, as strata keeps it), no
/// metadata-only copy-up, no xino.
const KERNEL_OPTIONS: &str = "redirect_dir=off,index=on,metacopy=off,xino=off";
/// Trees are compared after every this many random operations, and at the end.
const COMPARE_EVERY: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    /// strata over the directory lowers.
    Strata,
    /// strata with an empty tar layer below the lowers: a stack mixing tar and directory
    /// layers, whose tar layer is read through its index.
    StrataWithTar,
    /// strata writing whiteouts in overlayfs' xattr form (`STRATA_XATTR_WHITEOUTS=1`), the form
    /// a daemon that may not make 0/0 devices writes.
    StrataXattrWhiteouts,
    FuseOverlayfs,
}

impl Subject {
    fn from_env() -> Subject {
        match std::env::var("STRATA_DIFF_SUBJECT").as_deref() {
            Err(_) | Ok("") | Ok("strata") => Subject::Strata,
            Ok("fuse-overlayfs") => Subject::FuseOverlayfs,
            Ok(other) => panic!("STRATA_DIFF_SUBJECT={other}: expected strata or fuse-overlayfs"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Subject::Strata => "strata",
            Subject::StrataWithTar => "strata (with a tar layer)",
            Subject::StrataXattrWhiteouts => "strata (xattr whiteouts)",
            Subject::FuseOverlayfs => "fuse-overlayfs",
        }
    }

    /// Whether the subject's upper holds whiteouts in the xattr form (also where the whole test
    /// runs with `STRATA_XATTR_WHITEOUTS=1`).
    fn writes_xattr_whiteouts(self) -> bool {
        self == Subject::StrataXattrWhiteouts
            || (self != Subject::FuseOverlayfs && std::env::var_os("STRATA_XATTR_WHITEOUTS").is_some_and(|v| v == "1"))
    }
}

/// The subject, once its prerequisites are there (fuse-overlayfs installed, when it is the subject).
fn subject() -> Option<Subject> {
    let subject = Subject::from_env();
    if subject == Subject::FuseOverlayfs && !require_command("fuse-overlayfs") {
        return None;
    }
    Some(subject)
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v}: expected a number")),
        Err(_) => default,
    }
}

fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("STRATA_DIFF_SEED") {
        return vec![seed.parse().unwrap_or_else(|_| panic!("STRATA_DIFF_SEED={seed}: expected a number"))];
    }
    (1..=env_number("STRATA_DIFF_SEEDS", default_count)).collect()
}

// ---------------------------------------------------------------------------------------------
// The lowers

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let name = CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(c(path).as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr on {}: {}", path.display(), std::io::Error::last_os_error());
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives every entry below `root` its own fixed mtime (`LOWER_TIME_BASE + k`, set without
/// following symlinks), so mtimes that survive a copy-up can be compared exactly.
fn fix_times(root: &Path, next: &mut i64) {
    let mut paths: Vec<PathBuf> = Vec::new();
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            out.push(path.clone());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                collect(&path, out);
            }
        }
    }
    collect(root, &mut paths);
    for path in paths {
        let t = libc::timespec { tv_sec: (ops::LOWER_TIME_BASE + *next) as _, tv_nsec: 0 };
        *next += 1;
        let r =
            unsafe { libc::utimensat(libc::AT_FDCWD, c(&path).as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(r, 0, "utimensat {}", path.display());
    }
}

struct Lowers {
    bottom: PathBuf,
    top: PathBuf,
    /// The inode of the bottom layer\'s hard-link pair h1 = h2.
    hardlink_ino: u64,
    /// Every path in either lower (whiteouts included).
    paths: BTreeSet<String>,
    /// Directories marked opaque in a lower.
    opaque: BTreeSet<String>,
    /// Both lowers as they were built; they must never change.
    snapshots: [(BTreeMap<String, Node>, BTreeMap<String, u64>); 2],
}

impl Lowers {
    /// bottom: a/ a/b/ c/ (1000:1000 0750), a/f1, a/b/f2, c/f3, d (user.orig, 1000:0 0600),
    /// e -> a/f1, h1 = h2 (one inode); top: a/f4, c/f3 deleted (whiteout), a/b opaque with a/b/f5.
    fn build(dir: &Path) -> Lowers {
        let bottom = dir.join("lower-bottom");
        let top = dir.join("lower-top");
        for d in ["a/b", "c"] {
            std::fs::create_dir_all(bottom.join(d)).unwrap();
        }
        std::fs::write(bottom.join("a/f1"), b"f1 from the bottom layer\n").unwrap();
        std::fs::write(bottom.join("a/b/f2"), b"f2, hidden by the opaque a/b of the top layer\n").unwrap();
        std::fs::write(bottom.join("c/f3"), b"f3, deleted by the top layer\n").unwrap();
        std::fs::write(bottom.join("d"), ops::content(4, 3000)).unwrap();
        set_xattr(&bottom.join("d"), "user.orig", b"from-bottom");
        lchown(&bottom.join("d"), 1000, 0);
        chmod(&bottom.join("d"), 0o600);
        std::os::unix::fs::symlink("a/f1", bottom.join("e")).unwrap();
        std::fs::write(bottom.join("h1"), b"hard-linked content\n").unwrap();
        std::fs::hard_link(bottom.join("h1"), bottom.join("h2")).unwrap();
        lchown(&bottom.join("c"), 1000, 1000);
        chmod(&bottom.join("c"), 0o750);

        for d in ["a/b", "c"] {
            std::fs::create_dir_all(top.join(d)).unwrap();
        }
        std::fs::write(top.join("a/f4"), ops::content(5, 10_000)).unwrap();
        let r = unsafe { libc::mknod(c(&top.join("c/f3")).as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(0, 0)) };
        assert_eq!(r, 0, "mknod whiteout: {}", std::io::Error::last_os_error());
        set_xattr(&top.join("a/b"), "trusted.overlay.opaque", b"y");
        std::fs::write(top.join("a/b/f5"), b"f5 in the opaque a/b\n").unwrap();
        lchown(&top.join("c"), 1000, 1000);
        chmod(&top.join("c"), 0o750);

        let mut next = 0;
        fix_times(&bottom, &mut next);
        fix_times(&top, &mut next);
        let snapshots = [snapshot(&bottom), snapshot(&top)];
        let hardlink_ino = std::fs::symlink_metadata(bottom.join("h1")).unwrap().ino();
        let paths = snapshots.iter().flat_map(|s| s.0.keys().cloned()).collect();
        let opaque = snapshots
            .iter()
            .flat_map(|s| &s.0)
            .filter(|(_, n)| n.xattrs.get("trusted.overlay.opaque").is_some_and(|v| v == b"y"))
            .map(|(p, _)| p.clone())
            .collect();
        Lowers { bottom, top, hardlink_ino, paths, opaque, snapshots }
    }

    fn assert_unchanged(&self) {
        for (dir, before) in [&self.bottom, &self.top].into_iter().zip(&self.snapshots) {
            let now = snapshot(dir);
            let diffs = differences(&before.0, &now.0);
            assert!(diffs.is_empty(), "lower {} was modified:\n{}", dir.display(), diffs.join("\n"));
            assert_eq!(before.1, now.1, "lower {} has entries replaced (inode numbers changed)", dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts

/// A kernel overlayfs mount; unmounted (lazily if needed) on drop.
struct KernelOverlay {
    dir: PathBuf,
}

impl KernelOverlay {
    fn mount(lowers: &Lowers, upper: &Path, work: &Path, dir: &Path) -> KernelOverlay {
        Self::mount_with(lowers, upper, work, dir, KERNEL_OPTIONS)
    }

    /// The subject's upper mounted by the kernel as a user would, with the kernel's plain
    /// defaults pinned (no index: the upper carries no index of its own). An upper holding
    /// whiteouts in the xattr form is mounted as the top lower layer instead: kernel overlayfs
    /// reads that form in lower layers only (an upper's xattr whiteout is hidden from lookups
    /// but still listed).
    fn mount_upper_of_subject(
        subject: Subject,
        lowers: &Lowers,
        upper: &Path,
        work: &Path,
        dir: &Path,
    ) -> KernelOverlay {
        let defaults = "redirect_dir=off,index=off,metacopy=off,xino=off";
        if subject.writes_xattr_whiteouts() {
            let layers = format!("lowerdir={}:{}:{}", upper.display(), lowers.top.display(), lowers.bottom.display());
            return Self::mount_layers(&layers, dir, defaults);
        }
        Self::mount_with(lowers, upper, work, dir, defaults)
    }

    fn mount_with(lowers: &Lowers, upper: &Path, work: &Path, dir: &Path, extra: &str) -> KernelOverlay {
        for d in [upper, work] {
            std::fs::create_dir_all(d).unwrap();
        }
        let layers = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            lowers.top.display(),
            lowers.bottom.display(),
            upper.display(),
            work.display()
        );
        Self::mount_layers(&layers, dir, extra)
    }

    fn mount_layers(layers: &str, dir: &Path, extra: &str) -> KernelOverlay {
        std::fs::create_dir_all(dir).unwrap();
        // nodev,nosuid as strata's and fuse-overlayfs' mounts here: a device opens on none.
        let options = format!("nodev,nosuid,{layers},{extra}");
        let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(dir).output().unwrap();
        assert!(out.status.success(), "kernel overlay mount failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(is_mounted(dir));
        KernelOverlay { dir: dir.to_path_buf() }
    }

    fn unmount(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "umount {}: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if is_mounted(&self.dir) && !Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The writable mount under test; unmounted (lazily if needed) on drop.
struct SubjectMount {
    kind: Subject,
    dir: PathBuf,
    cache: PathBuf,
    /// strata's own guard (strata umount, then umount -l)
    _strata: Option<Mounted>,
}

impl SubjectMount {
    fn mount(kind: Subject, cache: &Path, lowers: &Lowers, upper: &Path, work: &Path, dir: &Path) -> SubjectMount {
        for d in [upper, work, dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let strata = match kind {
            Subject::Strata | Subject::StrataWithTar | Subject::StrataXattrWhiteouts => {
                let mut args = vec!["--upper".to_string(), s(upper), "--work".to_string(), s(work)];
                if kind == Subject::StrataWithTar {
                    let empty_tar = upper.with_extension("empty.tar");
                    std::fs::write(&empty_tar, [0u8; 1024]).unwrap();
                    args.extend(["--layer".to_string(), s(&empty_tar)]);
                }
                args.extend(["--layer".to_string(), s(&lowers.bottom), "--layer".to_string(), s(&lowers.top)]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                if kind == Subject::StrataXattrWhiteouts {
                    let out = strata()
                        .env("STRATA_CACHE", cache)
                        .env("STRATA_XATTR_WHITEOUTS", "1")
                        .arg("mount")
                        .args(&args)
                        .arg(dir)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "strata mount failed: {}", String::from_utf8_lossy(&out.stderr));
                    Some(Mounted { dir: dir.to_path_buf() })
                } else {
                    Some(Mounted::new(cache, &args, dir))
                }
            }
            Subject::FuseOverlayfs => {
                let options = format!(
                    "nodev,nosuid,lowerdir={}:{},upperdir={},workdir={}",
                    s(&lowers.top),
                    s(&lowers.bottom),
                    s(upper),
                    s(work)
                );
                let out = Command::new("fuse-overlayfs").arg("-o").arg(&options).arg(dir).output().unwrap();
                assert!(out.status.success(), "fuse-overlayfs failed: {}", String::from_utf8_lossy(&out.stderr));
                assert!(is_mounted(dir), "fuse-overlayfs returned before {} was mounted", dir.display());
                None
            }
        };
        SubjectMount { kind, dir: dir.to_path_buf(), cache: cache.to_path_buf(), _strata: strata }
    }

    fn unmount(&mut self) {
        let out = match self.kind {
            Subject::Strata | Subject::StrataWithTar | Subject::StrataXattrWhiteouts => {
                run_strata(&self.cache, &["umount", self.dir.to_str().unwrap()])
            }
            Subject::FuseOverlayfs => Command::new("umount").arg(&self.dir).output().unwrap(),
        };
        assert!(out.status.success(), "unmounting {}: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
        assert!(!is_mounted(&self.dir), "{} still mounted after unmounting", self.dir.display());
    }
}

impl Drop for SubjectMount {
    fn drop(&mut self) {
        if self.kind == Subject::FuseOverlayfs
            && is_mounted(&self.dir)
            && !Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        // a strata mount is unmounted by `self._strata`'s own drop
    }
}

/// A kernel overlay and a subject mount over the same lowers, each with its own upper and work
/// directory below `root`. The subject is unmounted first.
struct Pair {
    subject: SubjectMount,
    kernel: KernelOverlay,
    kernel_upper: PathBuf,
    subject_upper: PathBuf,
}

impl Pair {
    fn new(kind: Subject, lowers: &Lowers, cache: &Path, root: &Path) -> Pair {
        let kernel_upper = root.join("k-upper");
        let kernel = KernelOverlay::mount(lowers, &kernel_upper, &root.join("k-work"), &root.join("k-mnt"));
        let subject_upper = root.join("s-upper");
        let subject =
            SubjectMount::mount(kind, cache, lowers, &subject_upper, &root.join("s-work"), &root.join("s-mnt"));
        Pair { subject, kernel, kernel_upper, subject_upper }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing

/// `snapshot`, with a failure (an I/O error anywhere in the walk) as an error instead of a panic.
fn try_snapshot(dir: &Path) -> Result<BTreeMap<String, Node>, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| snapshot(dir).0)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("walking {} failed: {msg}{}", dir.display(), unreadable(dir))
    })
}

/// The entries below `dir` that are listed but cannot be looked up or read, for failure messages.
fn unreadable(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) => {
                out += &format!("\n    {}: readdir: {e}", d.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() => {
                    if let Err(e) = std::fs::read(&path) {
                        out += &format!("\n    {}: read: {e}", path.display());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    out += &format!("\n    {} (listed as {:?}): lstat: {e}", path.display(), entry.file_type().ok())
                }
            }
        }
    }
    out
}

/// Makes wall-clock mtimes within `slack` of each other equal, for comparing two views of the
/// same files (a FUSE mount may show the time its kernel side saw a write, not the stored one).
fn within(expected: &BTreeMap<String, Node>, actual: &mut BTreeMap<String, Node>, slack: Duration) {
    for (path, node) in actual.iter_mut() {
        let Some(e) = expected.get(path) else { continue };
        let nanos = |t: (i64, i64)| t.0 as i128 * 1_000_000_000 + t.1 as i128;
        if !ops::is_fixed_time(e.mtime) && (nanos(e.mtime) - nanos(node.mtime)).abs() <= slack.as_nanos() as i128 {
            node.mtime = e.mtime;
        }
    }
}

/// The test's scratch directory; kept (mounts are still unmounted) with `STRATA_DIFF_KEEP=1`.
fn scratch() -> tempfile::TempDir {
    let keep = std::env::var_os("STRATA_DIFF_KEEP").is_some();
    let dir = tempfile::Builder::new().prefix("strata-diff-").disable_cleanup(keep).tempdir().unwrap();
    if keep {
        eprintln!("note: keeping {}", dir.path().display());
    }
    dir
}

/// Marks an mtime that came from the wall clock during the test.
const WALL_CLOCK: (i64, i64) = (-1, -1);

/// A tree as compared: directories' mtimes dropped (implementations legitimately differ: copy-up
/// of a directory, whiteouts, opaque directories all touch them). With `wall_clock`, the mtime of
/// other entries is kept only when it was set on purpose (a lower's, or one `Utimens` set) and is
/// otherwise replaced by `WALL_CLOCK` when it lies within the test's run (else kept, and reported).
fn normalize(nodes: &BTreeMap<String, Node>, wall_clock: Option<(SystemTime, SystemTime)>) -> BTreeMap<String, Node> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    nodes
        .iter()
        .map(|(path, node)| {
            let mut node = node.clone();
            if node.kind == "dir" {
                node.mtime = (0, 0);
            } else if let Some((from, to)) = wall_clock {
                if !ops::is_fixed_time(node.mtime) && (secs(from)..=secs(to)).contains(&node.mtime.0) {
                    node.mtime = WALL_CLOCK;
                }
            }
            (path.clone(), node)
        })
        .collect()
}

/// Why the outcomes of a directory rename may differ, if they may: if the kernel did the rename it
/// is undone there, and the operation counts as skipped on both (as `mv` falls back on EXDEV).
fn dir_rename_difference(
    subject: Subject,
    op: &Op,
    kernel: &Outcome,
    actual: &Outcome,
    replaces_dir: bool,
) -> Option<&'static str> {
    match (kernel, actual) {
        // strata, like overlayfs without redirect_dir, may refuse to rename lower/merged directories
        (Ok(_), Err(Errno(libc::EXDEV))) => Some("EXDEV for a directory rename the kernel did"),
        _ if subject == Subject::FuseOverlayfs => {
            fuse_overlayfs_allowances::dir_rename(op, kernel, actual, replaces_dir)
        }
        _ => None,
    }
}

/// Known, accepted differences of fuse-overlayfs (1.10) from kernel overlayfs; never used for
/// strata. Each is narrow: a specific operation shape or tree difference, with its reason.
mod fuse_overlayfs_allowances {
    use super::*;

    /// Operations not performed at all (on either mount) because fuse-overlayfs would diverge.
    pub fn skip(
        op: &Op,
        kernel: &Path,
        kernel_upper: &Path,
        lowers: &Lowers,
        moved_over_lower: &BTreeSet<String>,
    ) -> Option<&'static str> {
        if op.is_read_only() {
            return None;
        }
        if let Op::UseDeletedWhileOpen { .. } = op {
            return Some("fuse-overlayfs reports st_nlink 1 for a file deleted while open (kernel overlayfs 0)");
        }
        // fuse-overlayfs handles a lower hard-link set (h1 = h2) like neither kernel mode: a
        // copy-up of one name (write, truncate, chmod) is not seen through the other name, as with
        // index=off, yet it treats the names as one inode elsewhere (renaming one over the other
        // is a no-op; nlink), as with index=on. Operations changing either name are skipped.
        let is_pair = |rel: &str| {
            let path = kernel.join(rel);
            [std::fs::symlink_metadata(&path), std::fs::metadata(&path)]
                .into_iter()
                .any(|m| m.is_ok_and(|m| m.ino() == lowers.hardlink_ino && !m.is_dir()))
        };
        if op.paths().into_iter().any(is_pair) {
            return Some(
                "changes a name of the lower hard-link pair, which fuse-overlayfs handles like neither kernel mode",
            );
        }
        // fuse-overlayfs creates entries in its work directory and renames them into place: in a
        // set-group-ID directory, a new entry may get neither the directory's group nor (a
        // directory) the S_ISGID bit.
        if let Op::Create { path, .. } | Op::Mkdir { path, .. } | Op::Symlink { path, .. } | Op::Mknod { path, .. } = op
        {
            let parent = Path::new(path).parent().map(|p| kernel.join(p)).unwrap_or_else(|| kernel.to_path_buf());
            if std::fs::symlink_metadata(parent).is_ok_and(|m| m.mode() & libc::S_ISGID != 0) {
                return Some("fuse-overlayfs ignores set-group-ID directories for new entries");
            }
        }
        // fuse-overlayfs does not update the mtime on a truncate(2) to the current size.
        if let Op::Truncate { path, len } = op {
            if std::fs::metadata(kernel.join(path)).is_ok_and(|m| m.is_file() && m.len() == *len) {
                return Some("fuse-overlayfs: truncate(2) to the current size keeps the mtime");
            }
        }
        if let Some((from, to)) = op.rename_paths() {
            // fuse-overlayfs loses the whiteout when a directory that replaced a lower entry (a
            // lower entry deleted, or a lower directory removed, then mkdir or a rename there: the
            // kernel marks such a directory opaque in its upper) is renamed away, or when an entry
            // exchanged with a lower one is: the lower entry comes back.
            let replaced_lower = |rel: &str| {
                let upper = kernel_upper.join(rel);
                lowers.paths.contains(rel)
                    && is_dir(kernel_upper, rel)
                    && support::tree::xattrs(&upper).get("trusted.overlay.opaque").is_some_and(|v| v == b"y")
            };
            let exchange = matches!(op, Op::Exchange { .. });
            if replaced_lower(from) || (exchange && (lowers.paths.contains(from) || lowers.paths.contains(to))) {
                return Some("fuse-overlayfs: renaming away a directory that replaced a lower entry, or exchanging with a lower entry, brings the lower entry back");
            }
        }
        // fuse-overlayfs loses the whiteout when an entry renamed over a lower one is removed or
        // renamed away: the lower entry comes back.
        let removed = match op {
            Op::Unlink { path } | Op::Rmdir { path } | Op::UseDeletedWhileOpen { path, replacement: None } => {
                Some(path)
            }
            Op::UseDeletedWhileOpen { replacement: Some(from), .. } => Some(from),
            Op::Rename { from, .. } | Op::RenameNoReplace { from, .. } => Some(from),
            _ => None,
        };
        if removed.is_some_and(|p| moved_over_lower.contains(p)) {
            return Some(
                "fuse-overlayfs: removing an entry that was renamed over a lower entry brings the lower entry back",
            );
        }
        // fuse-overlayfs: once a directory has a whiteout (a lower entry deleted or renamed), and
        // then an entry is removed from its lower opaque subdirectory (a/b), entries that the
        // opaque directory hides (a/b/f2) show through to lookups.
        let in_opaque =
            |rel: &str| Path::new(rel).parent().is_some_and(|p| lowers.opaque.contains(p.to_str().unwrap()));
        let removes = match op {
            Op::Unlink { path } | Op::Rmdir { path } => in_opaque(path),
            Op::Rename { from, to } | Op::RenameNoReplace { from, to } | Op::Exchange { from, to } => {
                in_opaque(from) || in_opaque(to)
            }
            _ => false,
        };
        if removes {
            return Some("fuse-overlayfs: removing from a lower opaque directory can uncover the entries it hides");
        }
        None
    }

    /// A directory rename the kernel refused with EXDEV: fuse-overlayfs may do it (copying some
    /// lower directories up), and then cannot always undo it (exchanging back is EXDEV), so it
    /// is not asked.
    pub fn skip_dir_rename(kernel: &Outcome) -> Option<&'static str> {
        (*kernel == Err(Errno(libc::EXDEV)))
            .then_some("fuse-overlayfs renames some lower directories the kernel without redirect_dir refuses")
    }

    /// Directory renames: see `dir_rename_difference`.
    pub fn dir_rename(op: &Op, kernel: &Outcome, actual: &Outcome, replaces_dir: bool) -> Option<&'static str> {
        match (kernel, actual) {
            (Ok(_), Err(Errno(libc::ENOENT))) if matches!(op, Op::Rename { .. }) && replaces_dir => {
                Some("fuse-overlayfs: ENOENT renaming a directory over an existing lower directory")
            }
            (Err(_), Err(Errno(libc::EXDEV))) => {
                Some("fuse-overlayfs refuses with EXDEV to move a directory the kernel can move (then fails otherwise)")
            }
            _ => None,
        }
    }

    /// What kernel overlayfs cannot read in fuse-overlayfs's upper and work directories, removed
    /// (after unmounting) before the kernel mounts them; returns what was removed:
    /// - `.wh..wh..opq` (a file) and `.wh..opq` (a 0/0 char device), which fuse-overlayfs puts in
    ///   the opaque directories it makes besides the trusted.overlay.opaque xattr: the kernel shows
    ///   the file, and lists the char device but cannot look it up;
    /// - whiteouts in directories that hide nothing (opaque, or with no lower directory): the
    ///   kernel lists them in such (pure upper) directories but cannot look them up;
    /// - `user.fuseoverlayfs.*` xattrs (copy-up origins), which the kernel shows;
    /// - hard links to upper files left in the work directory, which the kernel counts in nlink.
    pub fn strip_private_markers(upper: &Path, work: &Path, lowers: &Lowers) -> Vec<String> {
        let mut removed = Vec::new();
        let nodes = snapshot(upper).0;
        let hides_nothing = |dir: &str| {
            let opaque =
                nodes.get(dir).is_some_and(|n| n.xattrs.get("trusted.overlay.opaque").is_some_and(|v| v == b"y"));
            let lower = lowers.snapshots.iter().any(|s| s.0.get(dir).is_some_and(|n| n.kind == "dir"));
            !dir.is_empty() && (opaque || !lower)
        };
        for (path, node) in &nodes {
            let full = upper.join(path);
            let name = full.file_name().unwrap().to_str().unwrap();
            let parent = Path::new(path).parent().unwrap().to_str().unwrap();
            let whiteout = node.kind == "char" && node.rdev == 0;
            if name == ".wh..wh..opq" || name == ".wh..opq" || (whiteout && hides_nothing(parent)) {
                std::fs::remove_file(&full).unwrap();
                removed.push(format!("{path} ({})", node.kind));
                continue;
            }
            for xattr in node.xattrs.keys().filter(|k| k.starts_with("user.fuseoverlayfs.")) {
                let name = CString::new(xattr.as_str()).unwrap();
                // (already gone when a hard link of this inode came first)
                let r = unsafe { libc::lremovexattr(c(&full).as_ptr(), name.as_ptr()) };
                let e = std::io::Error::last_os_error();
                assert!(r == 0 || e.raw_os_error() == Some(libc::ENODATA), "removing {xattr} from {path}: {e}");
                removed.push(format!("{path}: {xattr}"));
            }
        }
        for (path, _) in snapshot(work).0.into_iter().filter(|(_, n)| n.kind != "dir" && n.nlink > 1) {
            std::fs::remove_file(work.join(&path)).unwrap();
            removed.push(format!("work dir: {path} (a hard link)"));
        }
        removed
    }

    /// A tree difference that may differ at `path`, with the reason.
    pub fn node(_path: &str, kernel: &Node, subject: &Node) -> Option<&'static str> {
        // fuse-overlayfs does not keep a symlink's mtime when it copies the symlink up (chown,
        // rename, link of a lower symlink): the copy gets the time of the copy-up.
        let same_but_mtime = Node { mtime: kernel.mtime, ..subject.clone() } == *kernel;
        (kernel.kind == "symlink"
            && same_but_mtime
            && !ops::FIXED_TIMES.contains(&kernel.mtime)
            && ops::is_fixed_time(kernel.mtime)
            && subject.mtime == WALL_CLOCK)
            .then_some("fuse-overlayfs: copy-up of a lower symlink loses its mtime")
    }
}

/// Differences between the expected (kernel) tree and the subject's, minus the allowances.
fn tree_differences(
    subject: Subject,
    actual_label: &str,
    expected: &BTreeMap<String, Node>,
    actual: &BTreeMap<String, Node>,
    allowed: &mut Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for diff in differences(expected, actual) {
        let path = diff.split(':').next().unwrap_or_default();
        let why = match (subject, expected.get(path), actual.get(path)) {
            (Subject::FuseOverlayfs, Some(e), Some(a)) => fuse_overlayfs_allowances::node(path, e, a),
            _ => None,
        };
        match why {
            Some(why) => allowed.push(format!("{path}: {why}")),
            None => out.push(diff.replace("strata", actual_label)),
        }
    }
    out
}

/// Mode, owner and user xattrs of a directory, to recreate it.
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl DirMeta {
    fn read(path: &Path) -> DirMeta {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let xattrs = support::tree::xattrs(path).into_iter().filter(|(k, _)| k.starts_with("user.")).collect();
        DirMeta { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), xattrs }
    }

    fn recreate(&self, path: &Path) {
        std::fs::create_dir(path).unwrap();
        lchown(path, self.uid, self.gid);
        chmod(path, self.mode);
        for (name, value) in &self.xattrs {
            set_xattr(path, name, value);
        }
    }
}

fn is_dir(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.is_dir())
}

/// What undoing a directory rename on one mount takes: the tree before, the directory replaced.
struct RenameUndo {
    tree: BTreeMap<String, Node>,
    replaced: Option<DirMeta>,
}

impl RenameUndo {
    fn prepare(root: &Path, op: &Op) -> RenameUndo {
        let (from, to) = op.rename_paths().unwrap();
        let replaced =
            (matches!(op, Op::Rename { .. }) && from != to && is_dir(root, to)).then(|| DirMeta::read(&root.join(to)));
        RenameUndo { tree: normalize(&snapshot(root).0, None), replaced }
    }

    /// Undoes `op`, done on `root`; the tree must then be as before.
    fn undo(self, root: &Path, op: &Op) {
        let (from, to) = op.rename_paths().unwrap();
        if matches!(op, Op::Exchange { .. }) {
            assert_eq!(apply(root, op), Ok(None), "undoing {op:?} in {}", root.display());
        } else {
            std::fs::rename(root.join(to), root.join(from)).unwrap();
            if let Some(meta) = self.replaced {
                meta.recreate(&root.join(to));
            }
        }
        let diffs = differences(&self.tree, &normalize(&snapshot(root).0, None));
        assert!(diffs.is_empty(), "undoing {op:?} in {} left:\n{}", root.display(), diffs.join("\n"));
    }
}

/// Applies operations to both mounts, kernel first, and compares.
struct Differ<'a> {
    subject: Subject,
    kernel: &'a Path,
    kernel_upper: &'a Path,
    subject_dir: &'a Path,
    lowers: &'a Lowers,
    started: SystemTime,
    /// every operation so far with its outcome
    log: Vec<String>,
    /// every operation so far
    ops: Vec<Op>,
    /// directory renames whose outcomes differed in an accepted way (undone on the kernel if it
    /// did them): skipped on both
    skipped: Vec<String>,
    /// accepted differences (fuse-overlayfs only)
    allowed: Vec<String>,
    /// an operation was skipped: a hand-written case's expected outcomes no longer apply
    diverted: bool,
    /// paths of a lower that an entry was renamed over (for a fuse-overlayfs allowance)
    moved_over_lower: BTreeSet<String>,
}

impl<'a> Differ<'a> {
    fn new(subject: Subject, pair: &'a Pair, lowers: &'a Lowers) -> Differ<'a> {
        Differ {
            subject,
            kernel: &pair.kernel.dir,
            kernel_upper: &pair.kernel_upper,
            subject_dir: &pair.subject.dir,
            lowers,
            started: SystemTime::now() - Duration::from_secs(5),
            log: Vec::new(),
            ops: Vec::new(),
            skipped: Vec::new(),
            allowed: Vec::new(),
            diverted: false,
            moved_over_lower: BTreeSet::new(),
        }
    }

    fn failure(&self, what: String) -> String {
        let from = self.log.len().saturating_sub(40);
        format!("{what}\n  operations so far (kernel outcome), from #{from}:\n    {}", self.log[from..].join("\n    "))
    }

    /// Applies `op` to both mounts; the outcomes must be equal (or the kernel's must be `expect`).
    fn step(&mut self, op: &Op, expect: Option<&Outcome>) -> Result<(), String> {
        let index = self.log.len();
        self.ops.push(op.clone());
        if self.subject == Subject::FuseOverlayfs {
            if let Some(why) =
                fuse_overlayfs_allowances::skip(op, self.kernel, self.kernel_upper, self.lowers, &self.moved_over_lower)
            {
                self.allowed.push(format!("#{index} {op:?}: skipped on both: {why}"));
                self.diverted = true;
                self.log.push(format!("#{index} {op:?} -> skipped on both ({why})"));
                return Ok(());
            }
        }
        // A directory rename one side may refuse while the other does it (the subject may refuse
        // with EXDEV): be ready to undo it, so both trees stay equal.
        let dir_rename = op.rename_paths().is_some_and(|(from, to)| {
            is_dir(self.kernel, from) || (matches!(op, Op::Exchange { .. }) && is_dir(self.kernel, to))
        });
        let undo = dir_rename.then(|| RenameUndo::prepare(self.kernel, op));
        let kernel = apply(self.kernel, op);
        if dir_rename && self.subject == Subject::FuseOverlayfs {
            if let Some(why) = fuse_overlayfs_allowances::skip_dir_rename(&kernel) {
                self.allowed.push(format!("#{index} {op:?}: kernel {kernel:?}, not done on the subject: {why}"));
                self.diverted = true;
                self.log.push(format!("#{index} {op:?} -> {kernel:?}, not done on the subject ({why})"));
                return Ok(());
            }
        }
        let subject = apply(self.subject_dir, op);
        if let Some(kernel_undo) = undo.filter(|_| kernel != subject) {
            let replaces_dir = kernel_undo.replaced.is_some();
            if let Some(why) = dir_rename_difference(self.subject, op, &kernel, &subject, replaces_dir) {
                if kernel.is_ok() {
                    kernel_undo.undo(self.kernel, op);
                }
                self.skipped.push(format!("#{index} {op:?}: kernel {kernel:?}, subject {subject:?}: {why}"));
                self.diverted = true;
                self.log.push(format!("#{index} {op:?} -> kernel {kernel:?}, subject {subject:?} ({why}): skipped"));
                return Ok(());
            }
        }
        if kernel != subject {
            return Err(self.failure(format!(
                "operation #{index} {op:?}:\n  kernel overlayfs: {kernel:?}\n  {}: {subject:?}",
                self.subject.name()
            )));
        }
        if let Some(expect) = expect.filter(|_| !self.diverted) {
            assert_eq!(&kernel, expect, "harness check: kernel overlayfs outcome of {op:?}");
        }
        if let (Op::Rename { from, to } | Op::RenameNoReplace { from, to }, Ok(_)) = (op, &kernel) {
            if from != to {
                self.moved_over_lower.remove(from);
                if self.lowers.paths.contains(to) {
                    self.moved_over_lower.insert(to.clone());
                }
            }
        }
        self.log.push(format!("#{index} {op:?} -> {kernel:?}"));
        Ok(())
    }

    /// The merged trees must be equal (see `normalize`).
    fn compare_trees(&mut self, when: &str) -> Result<(), String> {
        let window = Some((self.started, SystemTime::now() + Duration::from_secs(5)));
        let kernel = normalize(&try_snapshot(self.kernel).map_err(|e| self.failure(format!("kernel: {e}")))?, window);
        let subject = normalize(
            &try_snapshot(self.subject_dir)
                .map_err(|e| self.failure(format!("{} {when}: {e}", self.subject.name())))?,
            window,
        );
        let diffs = tree_differences(self.subject, self.subject.name(), &kernel, &subject, &mut self.allowed);
        if diffs.is_empty() {
            return Ok(());
        }
        Err(self.failure(format!(
            "trees differ {when} (expected = kernel overlayfs):\n{}",
            diffs.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
        )))
    }

    /// Generates and applies `count` random operations, comparing trees regularly.
    fn random(&mut self, seed: u64, count: usize) -> Result<(), String> {
        let mut rng = Rng::new(seed);
        for i in 1..=count {
            let op = generate(&mut rng, &scan(self.kernel));
            self.step(&op, None)?;
            if i % COMPARE_EVERY == 0 {
                self.compare_trees(&format!("after {i} random operations"))?;
            }
        }
        self.compare_trees("at the end")
    }

    fn summary(&self) -> String {
        let mut out = format!("{} operations", self.log.len());
        if !self.skipped.is_empty() {
            out += &format!(
                ", {} directory renames done by one side only, undone, skipped:\n    {}",
                self.skipped.len(),
                self.skipped.join("\n    ")
            );
        }
        if !self.allowed.is_empty() {
            out += &format!(", {} allowed differences:\n    {}", self.allowed.len(), self.allowed.join("\n    "));
        }
        out
    }
}

/// An upper directory as it is on disk (kinds, modes, xattrs), for failure messages.
fn raw_tree(dir: &Path) -> String {
    let mut out = format!("  {} as stored:", dir.display());
    for (path, node) in snapshot(dir).0 {
        out += &format!("\n    {path}: {} {:o}", node.kind, node.mode);
        if node.kind == "char" {
            out += &format!(" rdev {:x}", node.rdev);
        }
        for (name, value) in node.xattrs {
            out += &format!(" {name}={:?}", String::from_utf8_lossy(&value));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The hand-written cases

fn s(x: &str) -> String {
    x.to_string()
}
fn read(p: &str) -> Op {
    Op::Read { path: s(p) }
}
fn readdir(p: &str) -> Op {
    Op::ReadDir { path: s(p) }
}
fn stat(p: &str) -> Op {
    Op::Stat { path: s(p) }
}
fn create(p: &str, seed: u64, len: usize) -> Op {
    Op::Create { path: s(p), seed, len }
}
fn rename(from: &str, to: &str) -> Op {
    Op::Rename { from: s(from), to: s(to) }
}
fn mkdir(p: &str, mode: u32) -> Op {
    Op::Mkdir { path: s(p), mode }
}
fn rmdir(p: &str) -> Op {
    Op::Rmdir { path: s(p) }
}
fn unlink(p: &str) -> Op {
    Op::Unlink { path: s(p) }
}
fn setxattr(p: &str, name: &str, value: &str, mode: XattrMode) -> Op {
    Op::SetXattr { path: s(p), name: s(name), value: s(value), mode }
}

const ENOENT: Outcome = Err(Errno(libc::ENOENT));
const EMPTY_DIR: Outcome = Ok(Some(String::new()));

/// The hard cases, each from a fresh pair of mounts; some outcomes are also checked on the kernel
/// (the harness checks itself). Merged view of the lowers: a/{f1,f4,b/{f5}} (a/b opaque: no f2),
/// c/ (empty: f3 whited out), d (user.orig), e -> a/f1, h1 = h2.
/// A named case: operations with the outcome each must have (None: whatever the oracle says).
type Case = (&'static str, Vec<(Op, Option<Outcome>)>);

fn hand_written_cases() -> Vec<Case> {
    let none = |ops: Vec<Op>| ops.into_iter().map(|op| (op, None)).collect::<Vec<_>>();
    vec![
        (
            "copy-up on write to a lower file",
            none(vec![
                read("a/f1"),
                Op::Append { path: s("a/f1"), seed: 1, len: 100 },
                read("a/f1"),
                read("e"),
                stat("a/f1"),
                Op::Overwrite { path: s("a/f4"), seed: 2, len: 50 },
                read("a/f4"),
                Op::Overwrite { path: s("a/b/f5"), seed: 3, len: 0 },
                read("a/b/f5"),
                readdir("a"),
                readdir("a/b"),
            ]),
        ),
        (
            "chmod, chown, utimens of lower entries (metadata-only change, full copy-up)",
            none(vec![
                Op::Chmod { path: s("a/f1"), mode: 0o600 },
                stat("a/f1"),
                read("a/f1"),
                Op::Chmod { path: s("e"), mode: 0o640 },
                stat("a/f1"),
                Op::Chmod { path: s("a"), mode: 0o700 },
                stat("a"),
                readdir("a"),
                Op::Chown { path: s("d"), uid: 1000, gid: 1000 },
                stat("d"),
                Op::Chown { path: s("e"), uid: 1000, gid: 0 },
                stat("e"),
                Op::Chown { path: s("c"), uid: 0, gid: 1000 },
                stat("c"),
                Op::Utimens { path: s("h2"), mtime: ops::FIXED_TIMES[1], nofollow: false },
                stat("h1"),
                Op::Utimens { path: s("e"), mtime: ops::FIXED_TIMES[2], nofollow: true },
                Op::Utimens { path: s("a/b"), mtime: ops::FIXED_TIMES[0], nofollow: true },
                readdir("a/b"),
            ]),
        ),
        (
            "delete a lower file, then recreate it",
            vec![
                (unlink("a/f1"), Some(Ok(None))),
                (readdir("a"), None),
                (read("a/f1"), Some(ENOENT)),
                (read("e"), Some(ENOENT)),
                (create("a/f1", 7, 20), Some(Ok(None))),
                (read("a/f1"), Some(Ok(Some(ops::digest(&ops::content(7, 20)))))),
                (read("e"), None),
                (readdir("a"), None),
                (unlink("d"), None),
                (mkdir("d", 0o700), None),
                (readdir("d"), Some(EMPTY_DIR)),
                (stat("d"), None),
                (unlink("e"), None),
                (Op::Symlink { target: s("d"), path: s("e") }, None),
                (stat("e"), None),
                (Op::Mknod { path: s("c/f3"), mode: libc::S_IFIFO | 0o600, rdev: 0 }, Some(Ok(None))),
                (Op::Mknod { path: s("c/f4"), mode: libc::S_IFCHR | 0o600, rdev: 0 }, Some(Err(Errno(libc::EPERM)))),
                (readdir("c"), None),
            ],
        ),
        (
            "files deleted or replaced while open keep working through the open file",
            none(vec![
                Op::UseDeletedWhileOpen { path: s("a/f1"), replacement: None },
                readdir("a"),
                create("n1", 11, 5000),
                Op::UseDeletedWhileOpen { path: s("n1"), replacement: None },
                create("n2", 12, 10),
                create("n3", 13, 20),
                Op::UseDeletedWhileOpen { path: s("n2"), replacement: Some(s("n3")) },
                read("n2"),
                Op::UseDeletedWhileOpen { path: s("a/f4"), replacement: Some(s("n2")) },
                read("a/f4"),
                Op::UseDeletedWhileOpen { path: s("h1"), replacement: None },
                stat("h2"),
                readdir(""),
            ]),
        ),
        (
            "rmdir a lower directory, then mkdir it again: empty (opaque)",
            vec![
                (rmdir("a"), Some(Err(Errno(libc::ENOTEMPTY)))),
                (rmdir("c"), Some(Ok(None))),
                (readdir(""), None),
                (mkdir("c", 0o755), Some(Ok(None))),
                (readdir("c"), Some(EMPTY_DIR)),
                (stat("c"), None),
                (create("c/f3", 8, 30), None),
                (readdir("c"), None),
                (unlink("a/b/f5"), None),
                (rmdir("a/b"), Some(Ok(None))),
                (mkdir("a/b", 0o700), None),
                (readdir("a/b"), Some(EMPTY_DIR)),
                (unlink("a/f1"), None),
                (unlink("a/f4"), None),
                (rmdir("a/b"), None),
                (rmdir("a"), Some(Ok(None))),
                (mkdir("a", 0o755), None),
                (readdir("a"), Some(EMPTY_DIR)),
                (read("e"), Some(ENOENT)),
            ],
        ),
        (
            "rename lower files over lower files",
            vec![
                (rename("a/f4", "a/f1"), Some(Ok(None))),
                (readdir("a"), None),
                (read("a/f1"), Some(Ok(Some(ops::digest(&ops::content(5, 10_000)))))),
                (read("e"), None),
                (rename("d", "h1"), None),
                (stat("h1"), None),
                (stat("h2"), None),
                (Op::RenameNoReplace { from: s("h2"), to: s("a/f1") }, Some(Err(Errno(libc::EEXIST)))),
                (Op::Exchange { from: s("h2"), to: s("a/f1") }, None),
                (read("h2"), None),
                (read("a/f1"), None),
                (Op::Exchange { from: s("e"), to: s("a/b/f5") }, None),
                (stat("e"), None),
                (stat("a/b/f5"), None),
                (rename("a/b/f5", "a/b/f2"), None),
                (readdir("a/b"), None),
                (rename("a/f1", "a/f1"), Some(Ok(None))),
            ],
        ),
        (
            "rename files into a new directory",
            vec![
                (mkdir("n", 0o755), None),
                (rename("a/f4", "n/f4"), None),
                (readdir("a"), None),
                (readdir("n"), None),
                (rename("a/b/f5", "n/f5"), None),
                (readdir("a/b"), Some(EMPTY_DIR)),
                (rename("e", "n/e"), None),
                (read("n/e"), Some(ENOENT)),
                (create("n/g", 9, 9), None),
                (rename("n/g", "c/f3"), None),
                (readdir("c"), None),
                (Op::Link { from: s("c/f3"), to: s("n/g2") }, None),
                (stat("n/g2"), None),
            ],
        ),
        (
            "the lower hard-link pair",
            none(vec![
                stat("h1"),
                unlink("h1"),
                read("h2"),
                stat("h2"),
                Op::Append { path: s("h2"), seed: 10, len: 10 },
                stat("h2"),
                Op::Link { from: s("h2"), to: s("h3") },
                stat("h2"),
                stat("h3"),
                Op::Link { from: s("a/f1"), to: s("a/f1-link") },
                stat("a/f1"),
                Op::Append { path: s("a/f1-link"), seed: 11, len: 11 },
                read("a/f1"),
                read("e"),
                Op::Link { from: s("e"), to: s("e2") },
                stat("e2"),
                Op::Link { from: s("a"), to: s("a2") },
            ]),
        ),
        (
            "the lower hard-link pair, written through one name",
            none(vec![
                Op::Append { path: s("h1"), seed: 12, len: 12 },
                read("h1"),
                read("h2"),
                stat("h1"),
                stat("h2"),
                Op::Chmod { path: s("h2"), mode: 0o600 },
                stat("h1"),
                stat("h2"),
            ]),
        ),
        (
            "truncate lower files",
            none(vec![
                Op::Truncate { path: s("a/f4"), len: 3 },
                read("a/f4"),
                Op::Truncate { path: s("e"), len: 0 },
                read("a/f1"),
                stat("a/f1"),
                Op::Truncate { path: s("d"), len: 100_000 },
                read("d"),
                Op::Truncate { path: s("a"), len: 0 },
                Op::Overwrite { path: s("h1"), seed: 13, len: 0 },
                read("h1"),
            ]),
        ),
        (
            "xattrs on lower entries",
            vec![
                (setxattr("d", "user.new", "x", XattrMode::Any), Some(Ok(None))),
                (setxattr("d", "user.orig", "y", XattrMode::Create), Some(Err(Errno(libc::EEXIST)))),
                (setxattr("d", "user.orig", "y", XattrMode::Replace), Some(Ok(None))),
                (stat("d"), None),
                (Op::RemoveXattr { path: s("d"), name: s("user.orig") }, Some(Ok(None))),
                (Op::RemoveXattr { path: s("d"), name: s("user.orig") }, Some(Err(Errno(libc::ENODATA)))),
                (setxattr("a/f1", "user.a", "z", XattrMode::Replace), Some(Err(Errno(libc::ENODATA)))),
                (stat("d"), None),
                (read("d"), None),
                (setxattr("a", "user.a", "dir", XattrMode::Any), None),
                (stat("a"), None),
                (setxattr("a/b", "user.b", "opaque dir", XattrMode::Any), None),
                (readdir("a/b"), None),
                (setxattr("e", "user.a", "symlink", XattrMode::Any), None),
                (setxattr("h1", "user.a", "link", XattrMode::Any), None),
                (stat("h2"), None),
            ],
        ),
        (
            "directory renames",
            none(vec![
                rename("a", "z"),
                rename("a/b", "c/b"),
                rename("a", "c"),
                Op::RenameNoReplace { from: s("c"), to: s("y") },
                Op::Exchange { from: s("a"), to: s("c") },
                mkdir("n", 0o755),
                create("n/x", 14, 14),
                rename("n", "m"),
                readdir("m"),
                rename("m", "c"),
                readdir("c"),
                mkdir("n", 0o750),
                rename("c", "n"),
                rename("n", "a/b"),
                readdir("a"),
                mkdir("p", 0o700),
                Op::Exchange { from: s("p"), to: s("d") },
                rename("d", "a"),
                rename("a", "a/b/x"),
            ]),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn hand_written_cases_match_kernel_overlayfs() {
    if !require_fuse() {
        return;
    }
    let Some(subject) = subject() else { return };
    hand_written_cases_on(subject);
}

#[test]
fn hand_written_cases_match_kernel_overlayfs_with_a_tar_layer_below() {
    if require_fuse() && subject() == Some(Subject::Strata) {
        hand_written_cases_on(Subject::StrataWithTar);
    }
}

fn hand_written_cases_on(subject: Subject) {
    let work = scratch();
    let lowers = Lowers::build(work.path());
    let cache = work.path().join("cache");
    let mut failures = Vec::new();
    for (n, (name, steps)) in hand_written_cases().into_iter().enumerate() {
        let pair = Pair::new(subject, &lowers, &cache, &work.path().join(format!("case-{n}")));
        let mut differ = Differ::new(subject, &pair, &lowers);
        let result = (|| {
            differ.compare_trees("before any operation")?;
            for (op, expect) in &steps {
                differ.step(op, expect.as_ref())?;
                differ.compare_trees(&format!("after {op:?}"))?;
            }
            Ok::<_, String>(())
        })();
        eprintln!("case {name:?}: {}", differ.summary());
        drop(pair);
        lowers.assert_unchanged();
        if let Err(e) = result {
            failures.push(format!("case {name:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} differs from kernel overlayfs:\n\n{}", subject.name(), failures.join("\n\n"));
}

#[test]
fn random_sequences_match_kernel_overlayfs() {
    if !require_fuse() {
        return;
    }
    let Some(subject) = subject() else { return };
    random_sequences_on(subject, 20);
}

#[test]
fn random_sequences_match_kernel_overlayfs_with_a_tar_layer_below() {
    if require_fuse() && subject() == Some(Subject::Strata) {
        random_sequences_on(Subject::StrataWithTar, 10);
    }
}

fn random_sequences_on(subject: Subject, default_seeds: u64) {
    let count = env_number("STRATA_DIFF_OPS", 200) as usize;
    let work = scratch();
    let lowers = Lowers::build(work.path());
    let cache = work.path().join("cache");
    let mut failures = Vec::new();
    for seed in seeds(default_seeds) {
        let root = work.path().join(format!("seed-{seed}"));
        let pair = Pair::new(subject, &lowers, &cache, &root);
        let mut differ = Differ::new(subject, &pair, &lowers);
        let result = differ.random(seed, count);
        eprintln!("seed {seed}: {}", differ.summary());
        let ops = std::mem::take(&mut differ.ops);
        drop(pair);
        lowers.assert_unchanged();
        if std::env::var_os("STRATA_DIFF_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&root);
        }
        if let Err(e) = result {
            let mut failure = format!("seed {seed} (rerun alone with STRATA_DIFF_SEED={seed}): {e}");
            if std::env::var_os("STRATA_DIFF_SHRINK").is_some() {
                let root = work.path().join(format!("shrink-{seed}"));
                failure += &shrink(&e, ops, |ops, n| replay(subject, &lowers, &cache, &root.join(n.to_string()), ops));
            }
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{} differs from kernel overlayfs:\n\n{}", subject.name(), failures.join("\n\n"));
}

/// Replays `ops` on fresh mounts below `root`: Err if any outcome or the final trees differ.
fn replay(subject: Subject, lowers: &Lowers, cache: &Path, root: &Path, ops: &[Op]) -> Result<(), String> {
    let pair = Pair::new(subject, lowers, cache, root);
    let mut differ = Differ::new(subject, &pair, lowers);
    let result = ops.iter().try_for_each(|op| differ.step(op, None)).and_then(|()| differ.compare_trees("at the end"));
    drop(pair);
    let _ = std::fs::remove_dir_all(root);
    result
}

/// What identifies a failure across replays: its first lines without numbers (operation indexes,
/// seeds), scratch paths and when the trees were compared.
fn signature(failure: &str) -> String {
    let lines = failure.lines().take(3).map(|line| {
        let line = line.split(" after ").next().unwrap().split(" at the end").next().unwrap();
        let words = line.split(' ').filter(|w| !w.contains("strata-diff-"));
        words.collect::<Vec<_>>().join(" ").chars().filter(|c| !c.is_ascii_digit()).collect::<String>()
    });
    lines.collect::<Vec<_>>().join("\n")
}

/// With `STRATA_DIFF_SHRINK=1`: the shortest subsequence of a failing sequence that still fails
/// `check` (given the operations and a replay number) the same way (`signature`), found by
/// removing chunks of operations (at most 300 replays), for the failure message.
fn shrink(failure: &str, mut ops: Vec<Op>, mut check: impl FnMut(&[Op], usize) -> Result<(), String>) -> String {
    let wanted = signature(failure);
    let mut replays = 0;
    let mut last = String::new();
    let mut chunk = ops.len().div_ceil(2);
    while chunk >= 1 && replays < 300 {
        let mut removed = false;
        let mut i = 0;
        while i < ops.len() && replays < 300 {
            let candidate: Vec<Op> = ops[..i].iter().chain(ops.get(i + chunk..).unwrap_or_default()).cloned().collect();
            replays += 1;
            match check(&candidate, replays) {
                Err(e) if signature(&e) == wanted => (ops, last, removed) = (candidate, e, true),
                _ => i += chunk,
            }
        }
        if !removed {
            chunk /= 2;
        }
    }
    format!(
        "\n  shrunk ({replays} replays) to {} operations:\n    {}\n  failing with: {last}",
        ops.len(),
        ops.iter().map(|op| format!("{op:?}")).collect::<Vec<_>>().join("\n    ")
    )
}

/// Unmounts both mounts of `pair`, mounts kernel overlayfs over the subject's upper (same lowers,
/// fresh work directory) and compares that tree with the subject's own view before unmounting
/// and with the kernel's run.
fn remount_check(
    subject: Subject,
    lowers: &Lowers,
    root: &Path,
    mut pair: Pair,
    started: SystemTime,
) -> Result<(), String> {
    let subject_tree = try_snapshot(&pair.subject.dir)?;
    let kernel_tree = try_snapshot(&pair.kernel.dir)?;
    pair.subject.unmount();
    pair.kernel.unmount();
    let stored = raw_tree(&pair.subject_upper);
    if subject == Subject::StrataXattrWhiteouts && !stored.contains("overlay.whiteout=") {
        return Err(format!("no whiteout in the xattr form in {}'s upper:\n{stored}", subject.name()));
    }
    if subject == Subject::FuseOverlayfs {
        let removed =
            fuse_overlayfs_allowances::strip_private_markers(&pair.subject_upper, &root.join("s-work"), lowers);
        eprintln!("removed from fuse-overlayfs's upper and work dirs:\n  {}", removed.join("\n  "));
    }
    let remount = KernelOverlay::mount_upper_of_subject(
        subject,
        lowers,
        &pair.subject_upper,
        &root.join("re-work"),
        &root.join("re-mnt"),
    );
    let reread = try_snapshot(&remount.dir);
    drop(remount);
    drop(pair);
    let reread = reread.map_err(|e| format!("kernel overlayfs over {}'s upper: {e}\n{stored}", subject.name()))?;

    let mut failures = Vec::new();
    let mut allowed = Vec::new();
    // The same files: everything but directory mtimes must be equal, wall-clock mtimes within a
    // second (what a FUSE mount shows may be its kernel side's time of the write).
    let (own, mut remounted) = (normalize(&subject_tree, None), normalize(&reread, None));
    within(&own, &mut remounted, Duration::from_secs(1));
    let diffs = tree_differences(subject, "the remount", &own, &remounted, &mut allowed);
    if !diffs.is_empty() {
        failures.push(format!(
            "kernel overlayfs over {}'s upper (expected) differs from {0}'s own view:\n  {}",
            subject.name(),
            diffs.join("\n  ")
        ));
    }
    let window = Some((started, SystemTime::now()));
    let diffs = tree_differences(
        subject,
        "the remount",
        &normalize(&kernel_tree, window),
        &normalize(&reread, window),
        &mut allowed,
    );
    if !diffs.is_empty() {
        failures.push(format!(
            "kernel overlayfs over {}'s upper differs from the kernel's own run (expected):\n  {}",
            subject.name(),
            diffs.join("\n  ")
        ));
    }
    if !allowed.is_empty() {
        eprintln!("allowed differences after remounting:\n  {}", allowed.join("\n  "));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{stored}", failures.join("\n")))
    }
}

#[test]
fn upper_is_kernel_overlayfs_compatible() {
    if !require_fuse() {
        return;
    }
    let Some(subject) = subject() else { return };
    upper_compatibility_on(subject, 3);
}

/// The xattr form of whiteouts (a zero-size file marked `trusted.overlay.whiteout` in a
/// directory marked `trusted.overlay.opaque=x`), which strata writes where it may not make 0/0
/// devices: kernel overlayfs reads it in lower layers, so the upper is remounted as one.
#[test]
fn upper_with_xattr_whiteouts_is_a_kernel_overlayfs_lower() {
    if require_fuse() && subject() == Some(Subject::Strata) {
        upper_compatibility_on(Subject::StrataXattrWhiteouts, 2);
    }
}

fn upper_compatibility_on(subject: Subject, default_seeds: u64) {
    let count = env_number("STRATA_DIFF_OPS", 200) as usize;
    let work = scratch();
    let lowers = Lowers::build(work.path());
    let cache = work.path().join("cache");
    // The hard cases one after the other, then random operations: whiteouts, opaque directories,
    // copied-up files and hard links all end up in the upper directory.
    let hand: Vec<Op> = hand_written_cases().into_iter().flat_map(|(_, steps)| steps).map(|(op, _)| op).collect();
    let mut failures = Vec::new();
    for seed in seeds(default_seeds).into_iter().map(|s| s + 1000) {
        let root = work.path().join(format!("seed-{seed}"));
        let pair = Pair::new(subject, &lowers, &cache, &root);
        let mut differ = Differ::new(subject, &pair, &lowers);
        let ran = (|| {
            for op in &hand {
                differ.step(op, None)?;
                differ.compare_trees(&format!("after {op:?}"))?;
            }
            differ.random(seed, count)
        })();
        eprintln!("seed {seed}: {}", differ.summary());
        let (started, ops) = (differ.started, std::mem::take(&mut differ.ops));
        let result = ran.and_then(|()| remount_check(subject, &lowers, &root, pair, started));
        lowers.assert_unchanged();
        if let Err(e) = result {
            let mut failure = format!("seed {seed} (rerun alone with STRATA_DIFF_SEED={}): {e}", seed - 1000);
            if std::env::var_os("STRATA_DIFF_SHRINK").is_some() {
                let root = work.path().join(format!("shrink-{seed}"));
                failure += &shrink(&e, ops, |ops, n| {
                    let root = root.join(n.to_string());
                    let pair = Pair::new(subject, &lowers, &cache, &root);
                    let mut differ = Differ::new(subject, &pair, &lowers);
                    let started = differ.started;
                    let result = ops
                        .iter()
                        .try_for_each(|op| differ.step(op, None))
                        .and_then(|()| differ.compare_trees("at the end"))
                        .and_then(|()| remount_check(subject, &lowers, &root, pair, started));
                    let _ = std::fs::remove_dir_all(&root);
                    result
                });
            }
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{}'s upper is not kernel overlayfs compatible:\n\n{}",
        subject.name(),
        failures.join("\n\n")
    );
}

/// Opens `name` in `mnt` for appending as nobody, sets `mode` as root while it is open, then
/// writes through the descriptor opened before.
fn write_after_chmod_by_nobody(mnt: &Path, name: &str, mode: u32) {
    use std::io::{BufRead, Write};
    let script = format!("exec 3>>{name} && echo opened && read go && echo written >&3");
    let mut writer = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", &script])
        .current_dir(mnt)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut opened = String::new();
    std::io::BufReader::new(writer.stdout.as_mut().unwrap()).read_line(&mut opened).unwrap();
    assert_eq!(opened, "opened\n", "nobody could not open {name} in {}", mnt.display());
    chmod(&mnt.join(name), mode);
    writer.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(writer.wait().unwrap().success(), "nobody's write into {name} in {}", mnt.display());
}

/// Writes and truncations by a caller without CAP_FSETID drop set-user-id and executable
/// set-group-id bits, a root writer keeps them, and a write drops file capabilities: checked
/// through kernel overlayfs and strata side by side, on lower files (copied up by the write) and
/// on a file made in the mount; also a fallocate, a root write into a file with capabilities
/// (the kernel removes them, then asks to drop privileges as for a chown), and a write through
/// a descriptor opened before the file was made set-user-id (a passthrough open, whose writes
/// the daemon never sees). strata drops the bits itself (FUSE_HANDLE_KILLPRIV_V2), so this is
/// the test that it hears of every such change.
#[test]
fn writes_drop_privilege_bits_as_kernel_overlayfs_does() {
    if !require_fuse() || !require_command("setpriv") {
        return;
    }
    let work = scratch();
    let w = work.path();
    chmod(w, 0o755);
    let lower = w.join("lower");
    std::fs::create_dir(&lower).unwrap();
    let files = [
        ("append-suid", 0o4777),
        ("append-sgid", 0o2777),
        ("append-sgid-no-group-exec", 0o2767),
        ("append-sgid-no-group-exec-own-group", 0o2767),
        ("truncate-suid", 0o4777),
        ("open-trunc-suid", 0o4777),
        ("root-appends-suid", 0o4777),
        ("root-appends-capability", 0o755),
        ("root-appends-suid-capability", 0o4755),
        ("fallocate-suid", 0o4777),
        ("made-suid-while-open", 0o666),
    ];
    for (name, mode) in files {
        std::fs::write(lower.join(name), b"lower\n").unwrap();
        chmod(&lower.join(name), mode);
    }
    lchown(&lower.join("append-sgid-no-group-exec-own-group"), 0, 65534);
    // security.capability, VFS_CAP_REVISION_2 with the effective bit: cap_net_raw=ep.
    let caps: Vec<u8> = [0x0200_0001u32, 1 << 13, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    for name in ["root-appends-capability", "root-appends-suid-capability"] {
        set_xattr(&lower.join(name), "security.capability", &caps);
    }

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let kernel_dir = w.join("k-mnt");
    for d in ["k-upper", "k-work", "k-mnt"] {
        std::fs::create_dir(w.join(d)).unwrap();
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", s(&lower), s(&w.join("k-upper")), s(&w.join("k-work")));
    let out =
        Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&kernel_dir).output().unwrap();
    assert!(out.status.success(), "kernel overlay mount failed: {}", String::from_utf8_lossy(&out.stderr));
    let _kernel = KernelOverlay { dir: kernel_dir.clone() };
    let args =
        ["--allow-other", "--upper", &s(&w.join("s-upper")), "--work", &s(&w.join("s-work")), "--layer", &s(&lower)];
    let strata_mount = Mounted::new(&w.join("cache"), &args, &w.join("s-mnt"));

    let observe = |mnt: &Path| -> BTreeMap<String, (u32, bool)> {
        std::fs::write(mnt.join("made-suid"), b"made\n").unwrap();
        chmod(&mnt.join("made-suid"), 0o4777);
        let as_nobody = |script: &str| {
            let out = Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", script])
                .current_dir(mnt)
                .output()
                .unwrap();
            assert!(out.status.success(), "as nobody in {}: {}", mnt.display(), String::from_utf8_lossy(&out.stderr));
        };
        as_nobody(
            "echo x >> append-suid && echo x >> append-sgid && echo x >> append-sgid-no-group-exec && \
             echo x >> append-sgid-no-group-exec-own-group && \
             truncate -s 2 truncate-suid && : > open-trunc-suid && echo x >> made-suid",
        );
        as_nobody("fallocate -l 100 fallocate-suid");
        for name in ["root-appends-suid", "root-appends-capability", "root-appends-suid-capability"] {
            let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join(name)).unwrap();
            std::io::Write::write_all(&mut f, b"root\n").unwrap();
        }
        write_after_chmod_by_nobody(mnt, "made-suid-while-open", 0o4777);
        let mut seen = BTreeMap::new();
        for entry in std::fs::read_dir(mnt).unwrap() {
            let path = entry.unwrap().path();
            let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
            let name = CString::new("security.capability").unwrap();
            let has_caps = unsafe { libc::lgetxattr(c(&path).as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) } > 0;
            seen.insert(path.file_name().unwrap().to_string_lossy().into_owned(), (mode, has_caps));
        }
        seen
    };
    let kernel = observe(&kernel_dir);
    let strata = observe(&strata_mount.dir);
    assert_eq!(kernel["made-suid-while-open"], (0o777, false), "the oracle drops a bit added while open");
    assert_eq!(kernel["append-suid"], (0o777, false), "the oracle drops set-user-id on an unprivileged write");
    assert_eq!(kernel["append-sgid-no-group-exec"], (0o767, false), "the oracle drops another group's set-group-id");
    assert_eq!(kernel["append-sgid-no-group-exec-own-group"], (0o2767, false), "the oracle keeps a locking one");
    assert_eq!(kernel["root-appends-suid"], (0o4777, false), "the oracle keeps set-user-id on a root write");
    assert_eq!(kernel["root-appends-capability"], (0o755, false), "the oracle drops capabilities on a write");
    assert_eq!(kernel["root-appends-suid-capability"], (0o4755, false), "and keeps a root writer's set-user-id");
    assert_eq!(kernel, strata, "modes and capabilities after the writes: kernel overlayfs, then strata");
}
