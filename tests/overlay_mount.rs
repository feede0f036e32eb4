//! The writable mount on its own terms: the kernel overlayfs upper format it writes, atomicity of
//! copy-up under kill -9, a full upper, concurrency, the set-up errors it refuses, and the
//! fuse-overlayfs command line (direct and through mount.fuse3).

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{is_mounted, require_fuse, run_strata, strata, Mounted};

/// A lower directory: `a/f1`, `a/b/`, `c/f3`, `d`, and a 64 MiB `big` file.
fn make_lower(dir: &Path, big: bool) -> PathBuf {
    let lower = dir.join("lower");
    std::fs::create_dir_all(lower.join("a/b")).unwrap();
    std::fs::create_dir_all(lower.join("c")).unwrap();
    std::fs::write(lower.join("a/f1"), "one").unwrap();
    std::fs::write(lower.join("c/f3"), "three").unwrap();
    std::fs::write(lower.join("d"), "dee").unwrap();
    if big {
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut data = Vec::with_capacity(64 << 20);
        for _ in 0..64 {
            data.extend_from_slice(&chunk);
        }
        std::fs::write(lower.join("big"), data).unwrap();
    }
    lower
}

/// A writable mount of `lower` with its upper and work directories under `base`.
fn writable_in(cache_dir: &Path, base: &Path, lower: &Path, mnt: &Path) -> Mounted {
    writable_with(cache_dir, base, lower, mnt, &[])
}

/// [`writable_in`] with more options first (`--log FILE`).
fn writable_with(cache_dir: &Path, base: &Path, lower: &Path, mnt: &Path, options: &[&str]) -> Mounted {
    Mounted::writable(&cache_dir.join("cache"), base, lower, mnt, options)
}

fn writable(work: &Path, lower: &Path) -> Mounted {
    writable_in(work, work, lower, &work.join("mnt"))
}

fn lower_snapshot(lower: &Path) -> std::collections::BTreeMap<String, support::tree::Node> {
    support::tree::snapshot(lower).0
}

/// Over directory lowers a directory is read when it is first looked into, as kernel overlayfs
/// and fuse-overlayfs read it, not when the mount starts: a name a lower directory gains before
/// that shows, with its host metadata and link counts (as kernel overlayfs shows them).
#[test]
fn directory_lowers_are_read_when_first_looked_into() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;
    std::fs::write(lower.join("c/late"), "added after the mount").unwrap();
    std::fs::create_dir(lower.join("a/b/later")).unwrap();
    assert_eq!(std::fs::read_to_string(m.join("c/late")).unwrap(), "added after the mount");
    let names = support::sorted_names;
    assert_eq!(names(&m.join("a/b")), ["later"]);
    assert_eq!(names(&m.join("c")), ["f3", "late"]);
    let host = std::fs::metadata(lower.join("c/late")).unwrap();
    let shown = std::fs::metadata(m.join("c/late")).unwrap();
    assert_eq!((shown.len(), shown.mode(), shown.mtime(), shown.nlink()), (host.len(), host.mode(), host.mtime(), 1));
    assert_eq!(std::fs::metadata(m.join("a")).unwrap().nlink(), std::fs::metadata(lower.join("a")).unwrap().nlink());
}

/// A lower directory swapped for a symlink under a running mount, before anything looked into
/// it, is not followed out of the layer: the lookup fails and the log names the directory.
#[test]
fn a_lower_directory_swapped_for_a_symlink_is_not_followed() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let outside = w.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("f3"), "not the layer's").unwrap();
    let log = w.join("daemon.log");
    let mnt = writable_with(w, w, &lower, &w.join("mnt"), &["--log", log.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(mnt.dir.join("c")).unwrap().is_dir(), "listed as a directory at first");
    std::fs::rename(lower.join("c"), w.join("c-moved")).unwrap();
    std::os::unix::fs::symlink(&outside, lower.join("c")).unwrap();
    let err = std::fs::read_to_string(mnt.dir.join("c/f3")).unwrap_err();
    assert!(matches!(err.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)), "{err}");
    drop(mnt);
    let text = std::fs::read_to_string(&log).unwrap();
    let expected = lower.join("c").display().to_string();
    assert!(text.lines().any(|l| l.contains("WARN") && l.contains(&expected)), "{text}");
}

#[test]
fn writes_land_in_the_upper_in_kernel_overlayfs_format() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let before = lower_snapshot(&lower);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;
    std::fs::write(m.join("a/f1"), "changed").unwrap();
    std::fs::remove_file(m.join("d")).unwrap();
    std::fs::remove_dir_all(m.join("c")).unwrap();
    std::fs::create_dir(m.join("c")).unwrap();
    std::fs::write(m.join("c/new"), "new").unwrap();
    std::fs::set_permissions(m.join("a/b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(std::fs::read_to_string(m.join("a/f1")).unwrap(), "changed");
    assert!(!m.join("d").exists());
    assert_eq!(std::fs::read_dir(m.join("c")).unwrap().count(), 1, "the new c shows none of the old c");
    drop(mnt);

    let upper = w.join("upper");
    let whiteout = std::fs::symlink_metadata(upper.join("d")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "a deleted lower file is a 0/0 char device");
    let opaque = support::tree::xattrs(&upper.join("c"));
    assert_eq!(opaque.get("trusted.overlay.opaque").map(Vec::as_slice), Some(&b"y"[..]));
    assert_eq!(std::fs::read_to_string(upper.join("a/f1")).unwrap(), "changed");
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0, "nothing is left in the work directory");
    assert_eq!(lower_snapshot(&lower), before, "the lower layer is never written");
}

/// Names the upper would read back as whiteouts or opaque markers are refused (EINVAL, as
/// fuse-overlayfs refuses them), so no user can hide a lower file from everyone by naming a file;
/// and RENAME_WHITEOUT, as kernel overlayfs refuses it.
#[test]
fn names_that_would_read_back_as_whiteouts_are_refused() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;
    let einval = |result: std::io::Result<()>, what: &str| {
        assert_eq!(result.map_err(|e| e.raw_os_error()), Err(Some(libc::EINVAL)), "{what}");
    };
    einval(std::fs::write(m.join("a/.wh.f1"), ""), "creating .wh.f1");
    einval(std::fs::write(m.join("c/.wh..wh..opq"), ""), "creating the opaque marker");
    einval(std::fs::create_dir(m.join("a/.wh.b")), "mkdir .wh.b");
    einval(std::os::unix::fs::symlink("x", m.join("a/.wh.x")), "symlink .wh.x");
    einval(std::fs::hard_link(m.join("d"), m.join("a/.wh.f1")), "link to .wh.f1");
    einval(std::fs::rename(m.join("d"), m.join("c/.wh.f3")), "rename to .wh.f3");
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (from, to) = (c(&m.join("d")), c(&m.join("e")));
    let renamed =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_WHITEOUT) };
    einval(if renamed == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }, "RENAME_WHITEOUT");
    drop(mnt);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;
    let names = |dir: &str| {
        let mut names: Vec<String> =
            std::fs::read_dir(m.join(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    assert_eq!(names("a"), ["b", "f1"], "a's lower objects, nothing hidden, nothing added");
    assert_eq!(names("c"), ["f3"]);
    assert_eq!(std::fs::read_to_string(m.join("d")).unwrap(), "dee");
}

/// `trusted.*` xattrs are listed to root only, as kernel overlayfs and the host list them.
#[test]
fn trusted_xattr_names_are_listed_to_root_only() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lower = make_lower(w, false);
    let mnt = writable_with(w, w, &lower, &w.join("mnt"), &["--allow-other"]);
    let file = mnt.dir.join("d");
    for (name, value) in [("trusted.secret", "x"), ("user.plain", "y")] {
        xattr_set(&std::fs::File::open(&file).unwrap(), name, value.as_bytes());
    }
    let mut by_root = support::xattr_names_as(0, &file);
    by_root.sort();
    assert_eq!(by_root, ["trusted.secret", "user.plain"]);
    assert_eq!(support::xattr_names_as(support::NOBODY, &file), ["user.plain"]);
}

/// `strata mount -f` of `lower` writable on `base/mnt` (upper and work under `base`), once mounted:
/// the daemon is the child, for tests that kill it.
fn writable_in_foreground(base: &Path, lower: &Path) -> (PathBuf, std::process::Child) {
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let daemon = strata()
        .env("STRATA_CACHE", base.join("cache"))
        .args([
            "mount",
            "-f",
            "--upper",
            base.join("upper").to_str().unwrap(),
            "--work",
            base.join("work").to_str().unwrap(),
        ])
        .args(["--layer", lower.to_str().unwrap(), mnt.to_str().unwrap()])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !is_mounted(&mnt) {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(10));
    }
    (mnt, daemon)
}

/// Waits up to 5 s for the work directory to hold `count` entries (a RELEASE reaches the daemon
/// after close(2) returns).
fn await_work_entries(work: &Path, count: usize) {
    let start = Instant::now();
    while std::fs::read_dir(work).unwrap().count() != count {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the work directory keeps {:?}",
            std::fs::read_dir(work).unwrap().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A file deleted (or renamed over) while open keeps working through its open file, as on any
/// filesystem: fstat (link count 0), fchmod, fsetxattr, ftruncate, writes, reopening through
/// /proc. Its data lives on in the work directory, never in the upper, until the last close, and
/// a daemon killed meanwhile leaves it for the next mount to clean. A removed directory still
/// answers fstat from a process inside it.
#[test]
fn files_deleted_while_open_live_until_closed() {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(m.join("tmp")).unwrap();
    file.write_all(&vec![7u8; 1 << 20]).unwrap();
    std::fs::remove_file(m.join("tmp")).unwrap();
    let replaced = std::fs::OpenOptions::new().read(true).write(true).open(m.join("a/f1")).unwrap();
    std::fs::write(m.join("new"), "new").unwrap();
    std::fs::rename(m.join("new"), m.join("a/f1")).unwrap();

    assert_eq!((file.metadata().unwrap().nlink(), file.metadata().unwrap().len()), (0, 1 << 20));
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
    xattr_set(&file, "user.kept", b"yes");
    file.set_len(10).unwrap();
    file.write_all_at(b"tail", 10).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.len(), meta.nlink()), (0o600, 14, 0));
    let mut again = String::new();
    std::fs::File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)))
        .unwrap()
        .read_to_string(&mut again)
        .unwrap();
    assert_eq!(again.as_bytes(), [&[7u8; 10][..], b"tail"].concat());
    assert_eq!((replaced.metadata().unwrap().nlink(), replaced.metadata().unwrap().len()), (0, 3));
    assert_eq!(std::fs::read_to_string(m.join("a/f1")).unwrap(), "new");
    let names: Vec<_> = std::fs::read_dir(w.join("upper")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n == "tmp" || n.to_string_lossy().starts_with('#')), "{names:?}");
    await_work_entries(&w.join("work"), 2);
    drop((file, replaced));
    await_work_entries(&w.join("work"), 0);

    std::fs::create_dir(m.join("gone")).unwrap();
    let inside = std::fs::File::open(m.join("gone")).unwrap();
    std::fs::remove_dir(m.join("gone")).unwrap();
    let meta = inside.metadata().unwrap();
    assert!(meta.is_dir() && meta.nlink() == 0);
    drop((inside, mnt));

    let (mnt, mut daemon) = writable_in_foreground(w, &lower);
    let mut open = std::fs::OpenOptions::new().write(true).create_new(true).open(mnt.join("tmp")).unwrap();
    open.write_all(b"data").unwrap();
    std::fs::remove_file(mnt.join("tmp")).unwrap();
    await_work_entries(&w.join("work"), 1);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    drop(open);
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    let again = writable(w, &lower);
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0);
    assert!(!again.dir.join("tmp").exists());
}

/// A name deleted by one thread between another thread's lookup and its open (as Python's
/// logging test does to WatchedFileHandler): the open must act as if it came after the deletion,
/// creating the file anew (O_CREAT), never fail with ENOENT as no local filesystem would.
#[test]
fn opens_racing_the_deletion_of_their_name_create_it_anew() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let mnt = writable(w, &lower);
    let log = mnt.dir.join("a/race.log");
    let stop = AtomicBool::new(false);
    let failures = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&log);
            }
        });
        let mut failures = Vec::new();
        for _ in 0..3000 {
            let opened = std::fs::OpenOptions::new().append(true).create(true).open(&log);
            match opened.and_then(|mut f| f.write_all(b"x").and_then(|()| f.metadata())) {
                Ok(_) => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        failures
    });
    assert!(failures.is_empty(), "{} of 3000 opens failed, first: {:?}", failures.len(), failures.first());
}

/// Every file open through the mount holds a descriptor in the daemon: a daemon started with the
/// usual soft limit of 1024 descriptors raises it, so a container can open more files than that.
#[test]
fn more_files_than_the_usual_descriptor_limit_stay_open_at_once() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use std::os::unix::process::CommandExt;
    if !require_fuse() {
        return;
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 3000;
    assert!(hard >= 2 * wanted, "this test needs a hard limit of {} descriptors, not {hard}", 2 * wanted);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    for i in 0..wanted {
        std::fs::write(lower.join(format!("a/n{i}")), i.to_string()).unwrap();
    }
    let mnt = w.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount = strata();
    mount.env("STRATA_CACHE", w.join("cache")).args([
        "mount",
        "--upper",
        w.join("upper").to_str().unwrap(),
        "--work",
        w.join("work").to_str().unwrap(),
        "--layer",
        lower.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    // SAFETY: only setrlimit between fork and exec.
    unsafe { mount.pre_exec(move || setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).map_err(std::io::Error::from)) };
    assert!(mount.status().unwrap().success());
    let _unmount = support::Unmount(mnt.clone());
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    // Half read from the lower, half written (copied up).
    let open: Vec<std::fs::File> = (0..wanted)
        .map(|i| {
            let path = mnt.join(format!("a/n{i}"));
            let file = if i % 2 == 0 {
                std::fs::File::open(&path)
            } else {
                std::fs::OpenOptions::new().append(true).open(&path)
            };
            file.unwrap_or_else(|e| panic!("open file number {i}: {e}"))
        })
        .collect();
    assert_eq!(open.len(), wanted as usize);
}

fn xattr_set(file: &std::fs::File, name: &str, value: &[u8]) {
    let name = std::ffi::CString::new(name).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: an open fd, a C string and a value slice.
    let rc = unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "fsetxattr {name:?}: {}", std::io::Error::last_os_error());
}

/// Sparse files keep their holes, as on kernel overlayfs: copy-up of a 1 GiB file with a few
/// bytes of data (a VM image, /var/log/lastlog) costs its data blocks, not a gigabyte of zeros,
/// and through read-only and writable mounts a lower one shows its allocated blocks and answers
/// SEEK_DATA/SEEK_HOLE, so `cp` copies it sparse.
#[test]
fn sparse_files_keep_their_holes() {
    use std::os::unix::fs::FileExt;
    if !require_fuse() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let sparse = std::fs::File::create(lower.join("sparse")).unwrap();
    sparse.set_len(1024 * MIB).unwrap();
    sparse.write_all_at(b"data", 500 * MIB).unwrap();
    let read_only = Mounted::new(&w.join("cache"), &["--layer", lower.to_str().unwrap()], &w.join("ro"));
    let mnt = writable(w, &lower);
    for dir in [&read_only.dir, &mnt.dir] {
        let file = std::fs::File::open(dir.join("sparse")).unwrap();
        assert!(file.metadata().unwrap().blocks() * 512 < 4 * MIB, "blocks in {}", dir.display());
        assert_eq!(seek(&file, 0, libc::SEEK_DATA), Ok(500 * MIB - 500 * MIB % 4096));
        assert_eq!(seek(&file, 500 * MIB, libc::SEEK_HOLE), Ok(500 * MIB + 4096));
        assert_eq!(seek(&file, 600 * MIB, libc::SEEK_DATA), Err(libc::ENXIO));
        let copy = w.join("copy");
        assert!(Command::new("cp").arg(dir.join("sparse")).arg(&copy).status().unwrap().success());
        assert!(std::fs::metadata(&copy).unwrap().blocks() * 512 < 4 * MIB, "cp from {}", dir.display());
        std::fs::remove_file(copy).unwrap();
    }
    std::fs::OpenOptions::new().append(true).open(mnt.dir.join("sparse")).unwrap().write_all_at(b"!", 0).unwrap();
    let upper = std::fs::metadata(w.join("upper/sparse")).unwrap();
    assert_eq!(upper.len(), 1024 * MIB + 1);
    assert!(upper.blocks() * 512 < 4 * MIB, "the copy allocates {} bytes", upper.blocks() * 512);
    let mut data = [0u8; 4];
    std::fs::File::open(mnt.dir.join("sparse")).unwrap().read_exact_at(&mut data, 500 * MIB).unwrap();
    assert_eq!(&data, b"data");
}

fn seek(file: &std::fs::File, offset: u64, whence: libc::c_int) -> Result<u64, i32> {
    // SAFETY: an open descriptor.
    let at = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(file), offset as libc::off_t, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(at as u64)
    }
}

#[test]
fn copy_up_is_atomic_under_kill_9() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, true);
    let original = std::fs::read(lower.join("big")).unwrap();
    for attempt in 0..3 {
        let (mnt, mut daemon) = writable_in_foreground(w, &lower);
        // Start a copy-up of the 64 MiB file (an append) and kill the daemon while it runs.
        let target = mnt.join("big");
        let writer = std::thread::spawn(move || {
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(target)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"!"));
        });
        std::thread::sleep(Duration::from_millis(5 + attempt * 20));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        writer.join().unwrap();
        // The upper holds the whole old file, the whole new one, or nothing; never a part.
        if let Ok(copy) = std::fs::read(w.join("upper/big")) {
            assert!(copy == original || copy.len() == original.len() + 1, "partial copy-up of {} bytes", copy.len());
        }
        for entry in std::fs::read_dir(w.join("upper")).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(!name.to_string_lossy().starts_with('#'), "a temporary file leaked into the upper: {name:?}");
        }
    }
    // A remount cleans the work directory and shows a whole file.
    let mnt = writable(w, &lower);
    let seen = std::fs::read(mnt.dir.join("big")).unwrap();
    assert!(seen == original || (seen.len() == original.len() + 1 && seen.ends_with(b"!")));
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0);
}

#[test]
fn a_full_upper_gives_enospc_and_stays_consistent() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let small = w.join("small");
    std::fs::create_dir(&small).unwrap();
    let _tmpfs = support::mount_tmpfs(&small, "size=1m");
    let mnt = writable_in(w, &small, &lower, &w.join("mnt"));
    // With the kernel's writeback cache a write may be accepted into memory; ENOSPC then comes
    // from the write or at the latest from fsync, never silently.
    let full = std::fs::File::create(mnt.dir.join("huge")).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &vec![1u8; 4 << 20])?;
        f.sync_all()
    });
    assert_eq!(full.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    // The rest of the tree still works, and small writes succeed once space is freed.
    std::fs::remove_file(mnt.dir.join("huge")).unwrap();
    // The kernel sends the release of the closed file asynchronously; until it arrives the
    // daemon's descriptor keeps the unlinked file's blocks, so give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut fits = std::fs::write(mnt.dir.join("a/f1"), "fits");
    while fits.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fits = std::fs::write(mnt.dir.join("a/f1"), "fits");
    }
    fits.unwrap();
    assert_eq!(std::fs::read_to_string(mnt.dir.join("a/f1")).unwrap(), "fits");
    assert_eq!(std::fs::read_to_string(mnt.dir.join("d")).unwrap(), "dee");
}

#[test]
fn bad_set_ups_are_refused() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    std::fs::create_dir(w.join("mnt")).unwrap();
    let mount = |upper: &Path, workdir: &Path| {
        run_strata(
            &w.join("cache"),
            &[
                "mount",
                "--upper",
                upper.to_str().unwrap(),
                "--work",
                workdir.to_str().unwrap(),
                "--layer",
                lower.to_str().unwrap(),
                w.join("mnt").to_str().unwrap(),
            ],
        )
    };
    let inside = mount(&lower.join("a/up"), &lower.join("a/wk"));
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("overlaps"),
        "{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    let shm = Path::new("/dev/shm").join(format!("strata-work-{}", std::process::id()));
    let split = mount(&w.join("upper"), &shm);
    let _ = std::fs::remove_dir_all(&shm);
    assert!(
        String::from_utf8_lossy(&split.stderr).contains("not on the upper's filesystem"),
        "{}",
        String::from_utf8_lossy(&split.stderr)
    );
    assert!(!is_mounted(&w.join("mnt")));
}

#[test]
fn concurrent_creates_renames_and_deletes_lose_nothing() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let mnt = writable(w, &lower);
    let dir = mnt.dir.join("a");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let (x, y) = (dir.join(format!("t{t}-{i}")), dir.join(format!("t{t}-{i}-renamed")));
                    std::fs::write(&x, format!("{t} {i}")).unwrap();
                    std::fs::rename(&x, &y).unwrap();
                    if i % 2 == 0 {
                        std::fs::remove_file(&y).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let names: std::collections::BTreeSet<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for t in 0..4 {
        for i in 0..200 {
            let renamed = format!("t{t}-{i}-renamed");
            assert_eq!(names.contains(&renamed), i % 2 == 1, "{renamed}");
            assert!(!names.contains(&format!("t{t}-{i}")));
        }
    }
    assert!(names.contains("f1") && names.contains("b"));
}

#[test]
fn fuse_overlayfs_command_line_and_mount_helper() {
    if !require_fuse() || !support::require_command("mount.fuse3") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let top = w.join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("d"), "top dee").unwrap();
    let bin = w.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_strata"), bin.join("strata-overlayfs")).unwrap();
    let (upper, workdir, mnt) = (w.join("upper"), w.join("work"), w.join("mnt"));
    for d in [&upper, &workdir, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    // The form containers-storage uses: leftmost lower is the top.
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={},fsync=0",
        top.display(),
        lower.display(),
        upper.display(),
        workdir.display()
    );
    let out = Command::new(bin.join("strata-overlayfs"))
        .env("STRATA_CACHE", w.join("cache"))
        .args(["-o", &options, mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(mnt.join("d")).unwrap(), "top dee");
    std::fs::write(mnt.join("written"), "x").unwrap();
    assert!(upper.join("written").exists());
    assert!(strata().args(["umount", mnt.to_str().unwrap()]).status().unwrap().success());

    // As a mount helper: mount(8) runs mount.fuse3, which calls `strata-overlayfs none MNT -o …`.
    // mount(8) gives helpers a fixed PATH, so the program is named by its full path (`PROG#SOURCE`).
    let helper = format!("{}#none", bin.join("strata-overlayfs").display());
    let out = Command::new("mount")
        .env("STRATA_CACHE", w.join("cache"))
        .args(["-t", "fuse", &helper, mnt.to_str().unwrap(), "-o", &options])
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -t fuse {helper}: {}", String::from_utf8_lossy(&out.stderr));
    let _guard = Mounted { dir: mnt.clone() };
    assert_eq!(std::fs::read_to_string(mnt.join("written")).unwrap(), "x");
}

/// Raw file APIs beyond read and write through the writable mount: shared mappings (of a lower
/// file, so through a copy-up, and of a new file), fallocate, copy_file_range, O_APPEND, and
/// flock/POSIX locks (kernel-local: strata implements no lock operations, so the kernel keeps
/// them, which is right for one mount).
#[test]
fn mmap_fallocate_copy_file_range_append_and_locks() {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let before = lower_snapshot(&lower);
    let mnt = writable(w, &lower);
    let m = &mnt.dir;

    // A shared writable mapping of a lower file: the copy-up happens at open, the stores reach the upper.
    let file = OpenOptions::new().read(true).write(true).open(m.join("a/f1")).unwrap();
    // SAFETY: a 3-byte shared mapping of a 3-byte file we hold open; unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            3,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(b"ONE".as_ptr(), p as *mut u8, 3);
        assert_eq!(libc::msync(p, 3, libc::MS_SYNC), 0);
        libc::munmap(p, 3);
    }
    drop(file);
    assert_eq!(std::fs::read_to_string(m.join("a/f1")).unwrap(), "ONE");

    // A new file sized by ftruncate and filled through a mapping.
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(m.join("mapped")).unwrap();
    file.set_len(8192).unwrap();
    // SAFETY: an 8 KiB shared mapping of the 8 KiB file; unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p as *mut u8, b'x', 8192);
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        libc::munmap(p, 8192);
    }
    drop(file);

    // fallocate: allocate 1 MiB (reads back as zeros), then grow the allocation without the size.
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(m.join("falloc")).unwrap();
    // SAFETY: fallocate on a descriptor we own.
    assert_eq!(unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 1 << 20) }, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 1 << 20, "KEEP_SIZE leaves the size alone");
    drop(file);
    assert!(std::fs::read(m.join("falloc")).unwrap().iter().all(|&b| b == 0));

    // copy_file_range from a lower file into a new one.
    let src = std::fs::File::open(m.join("c/f3")).unwrap();
    let dst = OpenOptions::new().write(true).create_new(true).open(m.join("copied")).unwrap();
    // SAFETY: copy_file_range between two descriptors we own, null offsets (use the file positions).
    let copied = unsafe {
        libc::copy_file_range(src.as_raw_fd(), std::ptr::null_mut(), dst.as_raw_fd(), std::ptr::null_mut(), 5, 0)
    };
    assert_eq!(copied, 5, "{}", std::io::Error::last_os_error());
    drop((src, dst));
    assert_eq!(std::fs::read_to_string(m.join("copied")).unwrap(), "three");

    // O_APPEND on a lower file appends after the copied-up content.
    let mut file = OpenOptions::new().append(true).open(m.join("d")).unwrap();
    file.write_all(b"+more").unwrap();
    drop(file);
    assert_eq!(std::fs::read_to_string(m.join("d")).unwrap(), "dee+more");

    // flock and POSIX record locks conflict between holders as on any local filesystem.
    let a = OpenOptions::new().read(true).write(true).open(m.join("mapped")).unwrap();
    let b = OpenOptions::new().read(true).write(true).open(m.join("mapped")).unwrap();
    // SAFETY: flock on descriptors we own.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EWOULDBLOCK));
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
    let lock =
        libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 10, l_pid: 0 };
    // SAFETY: F_SETLK with a lock description we own.
    assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &lock) }, 0);
    // Another process sees the flock held (util-linux flock(1)).
    let out = Command::new("flock").args(["--nonblock", "--exclusive"]).arg(m.join("mapped")).arg("true").output();
    assert!(!out.expect("running flock(1)").status.success(), "flock(1) got the lock b holds");
    drop((a, b));
    drop(mnt);

    let upper = w.join("upper");
    assert_eq!(std::fs::read_to_string(upper.join("a/f1")).unwrap(), "ONE");
    assert_eq!(std::fs::read(upper.join("mapped")).unwrap(), vec![b'x'; 8192]);
    assert_eq!(std::fs::metadata(upper.join("falloc")).unwrap().len(), 1 << 20);
    assert_eq!(std::fs::read_to_string(upper.join("copied")).unwrap(), "three");
    assert_eq!(std::fs::read_to_string(upper.join("d")).unwrap(), "dee+more");
    assert_eq!(lower_snapshot(&lower), before, "the lower layer is never written");
}

/// fuse-overlayfs' ownership options through `strata overlayfs`: `uidmapping=`/`gidmapping=` show
/// stored ids shifted and store a caller's (and a chown's) ids shifted back; `squash_to_root`
/// shows every file as root and applies no chown.
#[test]
fn uid_gid_mapping_and_squash_options() {
    use std::os::unix::fs::{chown, lchown};
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    chown(lower.join("a/f1"), Some(1), Some(1)).unwrap();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = |name: &str, ownership: &str| -> (PathBuf, PathBuf, Mounted) {
        let (upper, workdir, mnt) = (w.join(format!("{name}-upper")), w.join(format!("{name}-work")), w.join(name));
        for d in [&upper, &workdir, &mnt] {
            std::fs::create_dir(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={},allow_other,{ownership}",
            lower.display(),
            upper.display(),
            workdir.display()
        );
        let out = run_strata(&w.join("cache"), &["overlayfs", "-o", &options, mnt.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (upper, mnt.clone(), Mounted { dir: mnt })
    };
    let owner = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    };

    let (upper, mnt, guard) = mount("mapped", "uidmapping=0:1000:1:1:110000:65536,gidmapping=0:1000:1:1:110000:65536");
    assert_eq!(owner(&mnt.join("d")), (1000, 1000), "stored 0 shows as 1000");
    assert_eq!(owner(&mnt.join("a/f1")), (110000, 110000), "stored 1 shows as 110000");
    std::fs::write(mnt.join("new"), "n").unwrap();
    lchown(mnt.join("new"), Some(110004), Some(1000)).unwrap();
    assert_eq!(owner(&mnt.join("new")), (110004, 1000));
    // A caller whose id is shown as 1000 creates files stored as 0.
    let out = Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "touch"])
        .arg(mnt.join("by-1000"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(owner(&mnt.join("by-1000")), (1000, 1000));
    drop(guard);
    assert_eq!(owner(&upper.join("new")), (5, 0), "110004 is stored as 5, 1000 as 0");
    assert_eq!(owner(&upper.join("by-1000")), (0, 0));

    let (upper, mnt, guard) = mount("squashed", "squash_to_root");
    assert_eq!(owner(&mnt.join("a/f1")), (0, 0));
    std::fs::write(mnt.join("new"), "n").unwrap();
    lchown(mnt.join("new"), Some(77), Some(77)).unwrap();
    assert_eq!(owner(&mnt.join("new")), (0, 0));
    drop(guard);
    assert_eq!(owner(&upper.join("new")), (0, 0), "a chown under squash_to_root is not applied");
    assert_eq!(owner(&lower.join("a/f1")), (1, 1), "the lower keeps its owners");
}

/// Overlayfs' xattr form of whiteouts (a zero-size file marked `trusted.overlay.whiteout`, its
/// directory marked `trusted.overlay.opaque=x`), which strata writes where mknod is refused;
/// forced here with `STRATA_XATTR_WHITEOUTS=1`. Deletions, renames and a deleted directory stay
/// hidden through strata and after a remount. (Kernel overlayfs honours this form in its lower
/// layers only; overlay_differential.rs compares such an upper, mounted as a kernel lower,
/// with the kernel's own run.)
#[test]
fn xattr_form_whiteouts_hide_what_they_delete() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let (upper, workdir, mnt) = (w.join("upper"), w.join("work"), w.join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let args = ["mount", "--upper", upper.to_str().unwrap(), "--work", workdir.to_str().unwrap(), "--layer"];
    let out = strata()
        .env("STRATA_CACHE", w.join("cache"))
        .env("STRATA_XATTR_WHITEOUTS", "1")
        .args(args)
        .args([lower.to_str().unwrap(), mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let guard = Mounted { dir: mnt.clone() };
    std::fs::remove_file(mnt.join("d")).unwrap();
    std::fs::rename(mnt.join("c/f3"), mnt.join("c/moved")).unwrap();
    std::fs::remove_dir_all(mnt.join("a")).unwrap();
    let visible = |root: &Path| {
        let mut names: Vec<String> = support::tree::snapshot(root).0.into_keys().collect();
        names.sort();
        names
    };
    let expected = visible(&mnt);
    assert!(!expected.iter().any(|n| n == "d" || n == "c/f3" || n.starts_with("a")), "{expected:?}");
    drop(guard);

    let whiteout = std::fs::symlink_metadata(upper.join("d")).unwrap();
    assert!(whiteout.is_file() && whiteout.len() == 0, "the xattr form is a zero-size file");
    assert!(support::tree::xattrs(&upper.join("d")).contains_key("trusted.overlay.whiteout"));
    assert_eq!(support::tree::xattrs(&upper).get("trusted.overlay.opaque").map(Vec::as_slice), Some(&b"x"[..]));
    assert!(support::tree::xattrs(&upper.join("c/f3")).contains_key("trusted.overlay.whiteout"));

    let again = writable_in(w, w, &lower, &mnt);
    assert_eq!(visible(&again.dir), expected, "a remount reads the xattr whiteouts back");
    drop(again);
}

/// Pages of `path` in the page cache.
fn resident_pages(path: &Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: a read-only shared mapping of an open file, unmapped before returning.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
        assert_ne!(map, libc::MAP_FAILED);
        let mut pages = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
        libc::munmap(map, len);
        pages.iter().filter(|&&p| p & 1 == 1).count()
    }
}

fn drop_from_page_cache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap(); // dirty pages would stay
                              // SAFETY: an open descriptor and plain integers.
    assert_eq!(
        unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
}

/// As root, a file still in a directory lower is read in FUSE passthrough: the kernel reads the
/// lower file itself, so its page cache (not the mount's) holds the data. While such a read-only
/// open lives, the file's data cannot change (ETXTBSY: the kernel names one backing file per open
/// inode); once it is closed, the write copies up and later reads see it, the lower untouched.
#[test]
fn directory_lower_files_are_read_in_passthrough() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, true);
    let m = writable(w, &lower);
    let big = m.dir.join("big");
    let expected = std::fs::read(lower.join("big")).unwrap();
    assert_eq!(std::fs::read(&big).unwrap(), expected);
    drop_from_page_cache(&lower.join("big"));
    assert!(resident_pages(&lower.join("big")) < 16, "the lower file left the page cache");
    // Read again: a cached FUSE open would be served from the mount's own page cache.
    assert_eq!(std::fs::read(&big).unwrap(), expected);
    let resident = resident_pages(&lower.join("big"));
    assert!(resident > 15_000, "the read went to the lower file: {resident} of 16384 pages resident");

    let reader = std::fs::File::open(m.dir.join("a/f1")).unwrap();
    let write = std::fs::OpenOptions::new().write(true).open(m.dir.join("a/f1"));
    assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::ETXTBSY), "writing while read in passthrough");
    let truncate = std::fs::OpenOptions::new().write(true).open(m.dir.join("a/f1")).and_then(|f| f.set_len(0));
    assert_eq!(truncate.unwrap_err().raw_os_error(), Some(libc::ETXTBSY));
    assert_eq!(std::fs::read_to_string(m.dir.join("a/f1")).unwrap(), "one", "other readers share the open");
    drop(reader);
    std::fs::write(m.dir.join("a/f1"), "changed").unwrap();
    assert_eq!(std::fs::read_to_string(m.dir.join("a/f1")).unwrap(), "changed");
    assert_eq!(std::fs::read_to_string(lower.join("a/f1")).unwrap(), "one", "the lower is untouched");
}

/// A program running from the mount can be neither written nor truncated (ETXTBSY), not even by
/// open(O_RDONLY|O_TRUNC), which the kernel checks against running programs only after the daemon
/// has truncated (atomic O_TRUNC): the daemon knows the opens execve(2) makes and refuses it
/// first, as a crashing program would otherwise tell. Once the program has exited, it truncates.
#[test]
fn a_running_program_is_neither_written_nor_truncated() {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let m = writable(w, &lower);
    let program = m.dir.join("sleep");
    let original = std::fs::read("/usr/bin/sleep").unwrap();
    std::fs::write(&program, &original).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = |options: &mut OpenOptions| options.open(&program).map(drop).map_err(|e| e.raw_os_error());
    let read_truncating = || open(OpenOptions::new().read(true).custom_flags(libc::O_TRUNC));

    let mut running = Command::new(&program).arg("60").spawn().unwrap();
    assert_eq!(open(OpenOptions::new().write(true)), Err(Some(libc::ETXTBSY)), "open(O_WRONLY)");
    assert_eq!(open(OpenOptions::new().read(true).write(true)), Err(Some(libc::ETXTBSY)), "open(O_RDWR)");
    assert_eq!(read_truncating(), Err(Some(libc::ETXTBSY)), "open(O_RDONLY|O_TRUNC)");
    let truncated = Command::new("truncate").args(["-s", "0"]).arg(&program).output().unwrap();
    assert!(String::from_utf8_lossy(&truncated.stderr).contains("Text file busy"), "truncate(2): {truncated:?}");
    assert!(running.try_wait().unwrap().is_none(), "the program still runs");
    assert_eq!(std::fs::read(&program).unwrap(), original, "the running program's file is intact");
    running.kill().unwrap();
    running.wait().unwrap();

    assert_eq!(read_truncating(), Ok(()), "open(O_RDONLY|O_TRUNC) once the program has exited");
    assert_eq!(std::fs::metadata(&program).unwrap().len(), 0);
}

/// Reading lower files through a mount, writable or read-only, and copying them up leave their
/// access times alone (kernel overlayfs opens lower files with O_NOATIME too): the layer is never
/// written, not even an atime. The lower's atimes are older than their mtimes, so a plain read on
/// this relatime host would update them.
#[test]
fn reading_and_copying_up_leave_lower_atimes_alone() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let long_ago = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for name in ["a/f1", "c/f3", "d"] {
        let file = std::fs::File::open(lower.join(name)).unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(long_ago)).unwrap();
    }
    let atimes = || ["a/f1", "c/f3", "d"].map(|name| std::fs::metadata(lower.join(name)).unwrap().atime());
    let before = atimes();
    assert_eq!(before, [1_000_000_000; 3]);

    let m = writable(w, &lower);
    assert_eq!(std::fs::read_to_string(m.dir.join("a/f1")).unwrap(), "one");
    let mut appended = std::fs::OpenOptions::new().append(true).open(m.dir.join("d")).unwrap();
    std::io::Write::write_all(&mut appended, b"!").unwrap();
    drop(appended);
    drop(m);
    let ro_mnt = w.join("ro");
    let ro = Mounted::new(&w.join("cache"), &["--layer", lower.to_str().unwrap()], &ro_mnt);
    assert_eq!(std::fs::read_to_string(ro_mnt.join("c/f3")).unwrap(), "three");
    drop(ro);
    assert_eq!(atimes(), before, "lower atimes after reads and a copy-up");
}

/// As kernel overlayfs, a directory lower does not reach into mounts below its directory: a
/// mount on a lower subdirectory hides nothing, the mount shows the directory underneath (here
/// compared with kernel overlayfs over the same lower).
#[test]
fn a_mount_inside_a_lower_directory_is_not_crossed_as_with_kernel_overlayfs() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    std::fs::write(lower.join("c/under-the-mount"), "layer").unwrap();
    let _tmpfs = support::mount_tmpfs(&lower.join("c"), "");
    std::fs::write(lower.join("c/on-the-mount"), "tmpfs").unwrap();
    let names = support::sorted_names;
    let (kernel_mnt, _kernel) = kernel_overlay(w, &lower);
    let m = writable(w, &lower);
    assert_eq!(names(&kernel_mnt.join("c")), ["f3", "under-the-mount"], "kernel overlayfs");
    assert_eq!(names(&m.dir.join("c")), names(&kernel_mnt.join("c")));
    assert_eq!(std::fs::read_to_string(m.dir.join("c/under-the-mount")).unwrap(), "layer");
}

/// Kernel overlayfs over `lower`, with its upper and work directories under `base`, mounted on
/// `base/kernel`.
fn kernel_overlay(base: &Path, lower: &Path) -> (PathBuf, support::Unmount) {
    let kernel_mnt = base.join("kernel");
    for d in ["kernel", "k-upper", "k-work"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        base.join("k-upper").display(),
        base.join("k-work").display()
    );
    let mounted = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&kernel_mnt).status();
    assert!(mounted.unwrap().success(), "mounting kernel overlayfs with {options}");
    (kernel_mnt.clone(), support::Unmount(kernel_mnt))
}

/// Objects root makes with setuid, setgid and sticky bits keep them, as with kernel overlayfs:
/// the upper gives a new object its owner before its mode (a chown clears setuid bits).
#[test]
fn new_objects_keep_setuid_and_setgid_bits_as_with_kernel_overlayfs() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let (kernel_mnt, _kernel) = kernel_overlay(w, &lower);
    let m = writable(w, &lower);
    let modes = |root: &Path| {
        let path = |name: &str| std::ffi::CString::new(root.join(name).as_os_str().as_encoded_bytes()).unwrap();
        let fd = unsafe { libc::open(path("file").as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o6755) };
        assert!(fd >= 0 && unsafe { libc::close(fd) } == 0);
        assert_eq!(unsafe { libc::mknod(path("fifo").as_ptr(), libc::S_IFIFO | 0o4644, 0) }, 0);
        assert_eq!(unsafe { libc::mkdir(path("dir").as_ptr(), 0o3775) }, 0);
        std::fs::copy(root.join("d"), root.join("copied")).unwrap();
        std::fs::set_permissions(root.join("copied"), std::fs::Permissions::from_mode(0o4711)).unwrap();
        let mode = |name: &str| std::fs::symlink_metadata(root.join(name)).unwrap().mode() & 0o7777;
        ["file", "fifo", "dir", "copied"].map(mode)
    };
    let old_umask = unsafe { libc::umask(0) };
    let (kernel, strata) = (modes(&kernel_mnt), modes(&m.dir));
    unsafe { libc::umask(old_umask) };
    assert_eq!(kernel, [0o6755, 0o4644, 0o1775, 0o4711], "kernel overlayfs (mkdir(2) keeps no setgid bit)");
    assert_eq!(strata, kernel);
}

/// `chattr`/`lsattr` (FS_IOC_SETFLAGS/GETFLAGS) as with kernel overlayfs: a change copies the
/// object up and lands on the upper object, whose flags the host then enforces (an immutable file
/// cannot be deleted or written, an append-only one only appended to).
#[test]
fn inode_flags_are_set_on_the_upper_object_as_with_kernel_overlayfs() {
    use std::io::Write;
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let (kernel_mnt, _kernel) = kernel_overlay(w, &lower);
    let m = writable(w, &lower);
    const SHOWN: i32 = 0x10 | 0x20 | 0x40 | 0x80; // immutable, append-only, nodump, noatime
    let outcomes = |root: &Path| -> Vec<String> {
        let flags = |name: &str, set: Option<i32>| -> String {
            let file = std::fs::File::open(root.join(name)).map_err(|e| e.to_string());
            let file = match file {
                Ok(f) => f,
                Err(e) => return e,
            };
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            let mut value: i32 = set.unwrap_or(0);
            let request = if set.is_some() { libc::FS_IOC_SETFLAGS } else { libc::FS_IOC_GETFLAGS };
            // SAFETY: an open descriptor and an int argument.
            match unsafe { libc::ioctl(fd, request, &mut value) } {
                0 => format!("{:#x}", value & SHOWN),
                _ => std::io::Error::last_os_error().to_string(),
            }
        };
        let append = |name: &str| {
            let opened = std::fs::OpenOptions::new().append(true).open(root.join(name));
            opened.and_then(|mut f| f.write_all(b"+")).map_err(|e| e.to_string())
        };
        let truncate = |name: &str| std::fs::write(root.join(name), "new").map_err(|e| e.to_string());
        let remove = |name: &str| std::fs::remove_file(root.join(name)).map_err(|e| e.to_string());
        vec![
            flags("a/f1", None),
            flags("a/f1", Some(0x40)),
            flags("a/f1", None),
            flags("a/f1", Some(0x10)),
            format!("{:?} {:?} {:?}", append("a/f1"), truncate("a/f1"), remove("a/f1")),
            flags("a/f1", Some(0)),
            format!("{:?}", remove("a/f1")),
            flags("d", Some(0x20)),
            format!("{:?} {:?} {:?}", append("d"), append("d"), truncate("d")),
            std::fs::read_to_string(root.join("d")).unwrap(),
            flags("d", Some(0)),
            flags("a", Some(0x40)),
            flags("a", None),
        ]
    };
    let (kernel, strata) = (outcomes(&kernel_mnt), outcomes(&m.dir));
    assert_eq!(kernel[..3], ["0x0", "0x40", "0x40"], "kernel overlayfs: {kernel:?}");
    assert_eq!(strata, kernel);
    assert_eq!(std::fs::read_to_string(w.join("upper/d")).unwrap(), "dee++");
    // A read-only mount shows no flags and refuses changes.
    let read_only = Mounted::new(&w.join("cache"), &["--layer", lower.to_str().unwrap()], &w.join("ro"));
    let file = std::fs::File::open(read_only.dir.join("a/f1")).unwrap();
    let mut value: i32 = -1;
    // SAFETY: an open descriptor and an int argument.
    assert_eq!(unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::FS_IOC_GETFLAGS, &mut value) }, 0);
    assert_eq!(value, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::FS_IOC_SETFLAGS, &mut value) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS));
}

/// A file deleted while open and then made append-only or immutable through its descriptor (as
/// stress-ng's file-ioctl stressor does) is freed at its last close, as any filesystem frees an
/// unlinked inode: its link in the work directory stayed before, and the next mount refused to
/// start on the work directory it could not empty. A leftover of a crashed daemon with such a
/// flag is removed at mount.
#[test]
fn deleted_files_made_append_only_or_immutable_are_freed() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = make_lower(w, false);
    let set_flags = |file: &std::fs::File, mut flags: i32| {
        // SAFETY: an open descriptor and an int argument.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(file), libc::FS_IOC_SETFLAGS, &mut flags) };
        assert_eq!(rc, 0, "FS_IOC_SETFLAGS {flags:#x}: {}", std::io::Error::last_os_error());
    };
    let mnt = writable(w, &lower);
    for (name, flag) in [("append-only", 0x20), ("immutable", 0x10)] {
        let file = std::fs::File::create(mnt.dir.join(name)).unwrap();
        std::fs::remove_file(mnt.dir.join(name)).unwrap();
        set_flags(&file, flag);
        drop(file);
    }
    await_work_entries(&w.join("work"), 0);
    drop(mnt);

    let leftover = std::fs::File::create(w.join("work/#1-1")).unwrap();
    set_flags(&leftover, 0x10);
    drop(leftover);
    let _again = writable(w, &lower);
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0);
}

/// Directory-lower objects show their host inode number (in the low bits, with the layer above
/// them, as kernel overlayfs' xino does) and their host ctime, so what a tool recorded about them
/// on the host still matches (git's index keeps the low 32 bits of st_ino and the ctime, and
/// re-reads every file whose numbers changed). The number survives copy-up, a hard-linked pair
/// shares it, and every object of the mount has its own.
#[test]
fn directory_lower_objects_show_their_host_inode_numbers_and_ctime() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let lower = make_lower(work.path(), false);
    std::fs::hard_link(lower.join("a/f1"), lower.join("a/f1-link")).unwrap();
    let mounted = writable(work.path(), &lower);
    let mnt = &mounted.dir;
    let meta = |p: PathBuf| std::fs::symlink_metadata(p).unwrap();
    for rel in ["a", "a/b", "a/f1", "a/f1-link", "c", "c/f3", "d"] {
        let (host, shown) = (meta(lower.join(rel)), meta(mnt.join(rel)));
        assert_eq!(shown.ino() as u32, host.ino() as u32, "{rel}: the host's inode number");
        assert_eq!((shown.ctime(), shown.ctime_nsec()), (host.ctime(), host.ctime_nsec()), "{rel}: the host's ctime");
    }
    assert_eq!(meta(mnt.join("a/f1")).ino(), meta(mnt.join("a/f1-link")).ino(), "one inode for a hard-linked pair");

    let before = meta(mnt.join("c/f3")).ino();
    std::fs::set_permissions(mnt.join("c/f3"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(work.path().join("upper/c/f3").exists(), "chmod copied the file up");
    assert_eq!(meta(mnt.join("c/f3")).ino(), before, "the inode number survives copy-up");

    std::fs::write(mnt.join("new"), "new").unwrap();
    std::fs::create_dir(mnt.join("a/made")).unwrap();
    let mut numbers = std::collections::HashMap::new();
    for rel in ["", "a", "a/b", "a/f1", "c", "c/f3", "d", "new", "a/made"] {
        if let Some(other) = numbers.insert(meta(mnt.join(rel)).ino(), rel) {
            panic!("{rel} and {other} share an inode number");
        }
    }
}

/// Directories are listed without OPENDIR (name cookies as offsets): a pass over a large
/// directory, read page by page while names are created and deleted in it through the mount,
/// shows every name that stayed exactly once; a fresh pass shows the directory as it now is.
#[test]
fn a_changing_directory_listed_in_pages_shows_every_unchanged_name_once() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let lower = make_lower(work.path(), false);
    let many = lower.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..1500 {
        std::fs::write(many.join(format!("lower-{i:04}")), "").unwrap();
    }
    let mounted = writable(work.path(), &lower);
    let dir = mounted.dir.join("many");
    for i in 0..1500 {
        std::fs::write(dir.join(format!("upper-{i:04}")), "").unwrap();
    }
    let stays = |name: &str| !name.ends_with('7');
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for (n, entry) in std::fs::read_dir(&dir).unwrap().enumerate() {
        *seen.entry(entry.unwrap().file_name().to_string_lossy().into_owned()).or_default() += 1;
        if n == 100 {
            // Mid-pass: every name ending in 7 goes, and new names come.
            for i in (7..1500).step_by(10) {
                std::fs::remove_file(dir.join(format!("lower-{i:04}"))).unwrap();
                std::fs::remove_file(dir.join(format!("upper-{i:04}"))).unwrap();
                std::fs::write(dir.join(format!("added-{i:04}")), "").unwrap();
            }
        }
    }
    for i in 0..1500 {
        for name in [format!("lower-{i:04}"), format!("upper-{i:04}")] {
            if stays(&name) {
                assert_eq!(seen.get(&name), Some(&1), "{name} once in the pass");
            } else {
                assert!(seen.get(&name).copied().unwrap_or(0) <= 1, "{name} at most once");
            }
        }
    }
    let now: std::collections::BTreeSet<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(now.len(), 2850, "the 2,700 names that stayed and 150 added");
    assert!(now.iter().all(|n| stays(n) || n.starts_with("added-")));
}
