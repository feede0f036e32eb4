//! The life of a mount: readiness, inode stability, the shared index cache (and its recovery
//! from corruption), read-only behaviour, xattrs, and clean unmounts on signals.

mod support;

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_tools::fixture;
use support::tree::snapshot;
use support::{is_mounted, require_fuse, strata, Mounted};

fn standard_layout(dir: &Path) -> String {
    let layout = dir.join("layout");
    fixture::write_oci_layout(&layout, &fixture::standard_image()).unwrap();
    layout.to_str().unwrap().to_string()
}

#[test]
fn inode_numbers_are_unique_and_stable_across_remounts() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let cache = work.path().join("cache");
    let first = {
        let mnt = Mounted::new(&cache, &[&layout], &work.path().join("m1"));
        snapshot(&mnt.dir).1
    };
    // A second mount, from the cached index this time, elsewhere.
    let mnt = Mounted::new(&cache, &[&layout], &work.path().join("m2"));
    let (nodes, second) = snapshot(&mnt.dir);
    assert_eq!(first, second);
    let mut seen = std::collections::HashMap::new();
    for (path, ino) in &second {
        if let Some(other) = seen.insert(*ino, path) {
            assert!(nodes[path].nlink > 1, "{path} and {other} share inode {ino} without being hard links");
        }
    }
}

#[test]
fn index_is_cached_and_a_corrupt_index_is_rebuilt() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let cache = work.path().join("cache");
    let expected = {
        let mnt = Mounted::new(&cache, &[&layout], &work.path().join("m1"));
        snapshot(&mnt.dir).0
    };
    let index_dir = cache.join(format!("index/v{}", strata_fs::layer::cache::INDEX_FORMAT_VERSION));
    let indexes: Vec<_> = std::fs::read_dir(&index_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(indexes.len(), 4, "one index per layer in {}", index_dir.display());
    assert_eq!(
        std::fs::read_dir(cache.join("blobs")).unwrap().count(),
        2,
        "the gzip and zstd layers are decompressed once"
    );
    // Truncate one index, flip a byte in another: both must be rebuilt, never trusted.
    let sizes: Vec<u64> = indexes.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    std::fs::write(&indexes[0], &std::fs::read(&indexes[0]).unwrap()[..20]).unwrap();
    let mut bytes = std::fs::read(&indexes[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&indexes[1], bytes).unwrap();
    let mnt = Mounted::new(&cache, &[&layout], &work.path().join("m2"));
    assert_eq!(snapshot(&mnt.dir).0, expected);
    let rebuilt: Vec<u64> = indexes.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert_eq!(rebuilt, sizes);
}

#[test]
fn the_mount_is_read_only_and_shows_layer_metadata() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let mnt = Mounted::new(&work.path().join("cache"), &[&layout], &work.path().join("m"));
    let d = &mnt.dir;
    let erofs = |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(std::fs::write(d.join("etc/passwd"), "x"));
    erofs(std::fs::write(d.join("new-file"), "x"));
    erofs(std::fs::create_dir(d.join("new-dir")));
    erofs(std::fs::remove_file(d.join("etc/passwd")));
    assert_eq!(std::fs::read_link(d.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(std::fs::metadata(d.join("bin/su")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(d.join("home/user/.profile")).unwrap().uid(), 1000);
    let p = CString::new(d.join("data/xattrs.txt").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(p.as_ptr(), c"user.comment".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"hello");
    let missing = unsafe { libc::getxattr(p.as_ptr(), c"user.none".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!((missing, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENODATA)));
    let long_name = "x".repeat(256);
    assert_eq!(std::fs::metadata(d.join(long_name)).unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
    assert_eq!(std::fs::metadata(d.join("etc/passwd/below")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
    let stats = nix::sys::statvfs::statvfs(d).unwrap();
    assert!(stats.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    assert!(stats.blocks() > 0);
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let mnt = work.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = strata()
        .env("STRATA_CACHE", work.path().join("cache"))
        .args(["mount", "-f", &layout, mnt.to_str().unwrap()])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !is_mounted(&mnt) {
        assert!(start.elapsed() < Duration::from_secs(20), "the foreground mount never appeared");
        assert!(child.try_wait().unwrap().is_none(), "strata mount -f exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mnt.join("etc/passwd").exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "strata mount -f after SIGTERM: {status}");
    assert!(!is_mounted(&mnt), "SIGTERM left the mount behind");
}

#[test]
fn umount_refuses_what_is_not_a_strata_mount() {
    let work = tempfile::tempdir().unwrap();
    let out = strata().args(["umount", work.path().to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a strata mount"));
}

#[test]
fn the_demo_mounts_reads_writes_and_cleans_up() {
    if !require_fuse() {
        return;
    }
    let out = strata().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("/app/notes/README") && stdout.contains("hello from strata, patched"), "{stdout}");
    assert!(stdout.contains("config.json  whiteout (0/0 char device)"), "{stdout}");
    assert!(stdout.trim_end().ends_with("done"));
}

/// Processes whose command line names `dir` (the daemons serving a mount there).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_str().unwrap().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// `strata umount` returns once the daemon has ended, so what runs next (a mount over the same
/// directory and upper) never meets the previous daemon: here, ten mount/umount cycles in a row.
#[test]
fn umount_returns_once_the_daemon_has_ended() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let cache = work.path().join("cache");
    let mnt = work.path().join("mnt");
    let (upper, workdir) = (work.path().join("upper"), work.path().join("work"));
    let args = ["--upper", upper.to_str().unwrap(), "--work", workdir.to_str().unwrap(), layout.as_str()];
    for round in 0..10 {
        let mounted = Mounted::new(&cache, &args, &mnt);
        std::fs::write(mnt.join(format!("written-{round}")), "x").unwrap();
        assert!(!processes_naming(&mnt).is_empty(), "a daemon serves the mount");
        let out = strata().args(["umount", mnt.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(processes_naming(&mnt), Vec::<u32>::new(), "round {round}: the daemon outlived umount");
        drop(mounted);
    }
    assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 10, "every round's file is in the upper");
}
