//! strata as an unprivileged user, outside any user namespace: read-only inspection mounts, and
//! writable mounts that write the overlayfs userxattr format (`user.overlay.*`): opaque
//! directories by `user.overlay.opaque`, whiteouts as 0/0 devices (which anyone may create since
//! Linux 5.8) or, where mknod is refused, the xattr form.
//!
//! Standard distributions ship /dev/fuse as 0666; the test makes it so (as root) for its run.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{as_nobody, chown_to_nobody, is_mounted, require_command, require_fuse};

#[test]
fn an_unprivileged_user_mounts_read_only_and_writable() {
    if !require_fuse() || !require_command("setpriv") || !require_command("fusermount3") {
        return;
    }
    let _fuse = support::FuseOpenToAll::new();

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lower = w.join("lower");
    std::fs::create_dir_all(lower.join("dir")).unwrap();
    std::fs::write(lower.join("dir/old"), "old").unwrap();
    std::fs::write(lower.join("gone"), "gone").unwrap();
    std::fs::write(lower.join("keep"), "keep").unwrap();
    // A read-only directory, as Fedora's /usr/lib (0555), with files the user may still change.
    std::fs::create_dir(lower.join("ro")).unwrap();
    std::fs::write(lower.join("ro/writable"), "w").unwrap();
    std::fs::write(lower.join("ro/read-only"), "r").unwrap();
    set_xattr(&lower.join("ro/read-only"), "user.kept", b"yes");
    std::fs::create_dir(lower.join("sealed")).unwrap();
    std::fs::write(lower.join("sealed/file"), "").unwrap();
    // The user's own layers (in the runner, a user namespace maps them to root).
    chown_to_nobody(&lower);
    let set_mode = |path: &str, mode| std::fs::set_permissions(lower.join(path), std::fs::Permissions::from_mode(mode));
    set_mode("ro/writable", 0o666).unwrap();
    set_mode("ro/read-only", 0o444).unwrap();
    set_mode("ro", 0o555).unwrap();
    let own = w.join("own");
    for d in ["cache", "upper", "work", "ro", "rw"] {
        std::fs::create_dir_all(own.join(d)).unwrap();
    }
    chown_to_nobody(&own);
    let strata = env!("CARGO_BIN_EXE_strata");
    let (cache, ro, rw) = (own.join("cache"), own.join("ro"), own.join("rw"));

    let out = as_nobody(&cache, strata, &["mount", "--layer", lower.to_str().unwrap(), ro.to_str().unwrap()]);
    assert!(out.status.success(), "read-only mount as nobody: {}", String::from_utf8_lossy(&out.stderr));
    let read = as_nobody(&cache, "cat", &[ro.join("keep").to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "keep");
    assert!(as_nobody(&cache, strata, &["umount", ro.to_str().unwrap()]).status.success());
    assert!(!is_mounted(&ro));

    let (upper, scratch) = (own.join("upper"), own.join("work"));
    let args = [
        "mount",
        "--upper",
        upper.to_str().unwrap(),
        "--work",
        scratch.to_str().unwrap(),
        "--layer",
        lower.to_str().unwrap(),
        rw.to_str().unwrap(),
    ];
    let out = as_nobody(&cache, strata, &args);
    assert!(out.status.success(), "writable mount as nobody: {}", String::from_utf8_lossy(&out.stderr));
    let script = format!(
        "set -e; cd {}; rm gone; echo more >> keep; rm -r dir; mkdir dir; echo new > dir/new; ls -a; ls dir; \
         echo tmp > tmp; rm tmp; sync -f .; exec 3>open; rm open; echo data >&3; stat -L -c open:%h:%s /dev/fd/3; \
         exec 3>&-; sync -f .; \
         echo more >> ro/writable; chmod 400 ro/read-only; umask 002; mkdir made; mkdir -m 555 made/read-only; \
         stat -c %n:%a ro ro/writable ro/read-only made made/read-only; \
         echo first > write-only; chmod 200 write-only; echo second >> write-only; chmod 600 write-only; \
         cat write-only; mkdir -m 0 unreadable; rmdir unreadable; rm sealed/file; chmod 0 sealed; rmdir sealed; \
         truncate -s 64M sparse; printf data | dd of=sparse bs=1 seek=32M conv=notrunc status=none; cp sparse copied; \
         cmp sparse copied && echo sparse-copy-same; rm sparse copied; ls -a",
        rw.display()
    );
    let changed = as_nobody(&cache, "sh", &["-c", &script]);
    let listing = String::from_utf8_lossy(&changed.stdout).into_owned();
    assert!(as_nobody(&cache, strata, &["umount", rw.to_str().unwrap()]).status.success());
    assert!(changed.status.success(), "changes as nobody: {}", String::from_utf8_lossy(&changed.stderr));
    assert!(!listing.contains("gone") && !listing.contains("old"), "{listing}");
    assert!(listing.contains("new"), "{listing}");
    // With the writeback cache, the kernel sends a deleted file's new ctime after the deletion, and
    // a deleted file still open answers stat (link count 0); `sync -f` reports any failure.
    assert!(listing.contains("open:0:5"), "{listing}");
    // The daemon cannot override permissions, yet copies files up into a 0555 directory (its
    // copy keeps 0555), places a new 0555 directory and writes to a file the user may only
    // write, and removes empty directories it may not read, as kernel overlayfs would.
    for expected in ["ro:555", "ro/writable:666", "ro/read-only:400", "made:775", "made/read-only:555"] {
        assert!(listing.lines().any(|l| l == expected), "{expected} in {listing}");
    }
    for (path, mode) in [("ro", 0o555), ("ro/read-only", 0o400), ("made/read-only", 0o555)] {
        let host = std::fs::metadata(upper.join(path)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(host, mode, "{path} in the upper");
    }
    assert_eq!(std::fs::read_to_string(upper.join("ro/writable")).unwrap(), "wmore\n");
    // A write-only file (0200) opens for writing (without read access, so in direct I/O).
    assert!(listing.contains("first\nsecond\n"), "{listing}");
    // Directories unreadable to their owner (and so to the daemon) are removed when empty.
    // A sparse file copies whole with the writeback cache (where the daemon answers no
    // SEEK_DATA/SEEK_HOLE: the kernel may hold data the upper file does not have yet).
    assert!(listing.contains("sparse-copy-same"), "{listing}");
    let (_, last_listing) = listing.split_once("second\n").unwrap();
    assert!(!last_listing.contains("unreadable") && !last_listing.contains("sealed"), "{listing}");
    assert_eq!(
        support::tree::xattrs(&upper.join("ro/read-only")).get("user.kept").map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "the work directory is left empty");

    // The upper uses the userxattr forms: a marked zero-size file for the whiteout, in a
    // directory marked "x"; the recreated directory is opaque.
    let xattr = |path: &Path, name: &str| -> Option<Vec<u8>> {
        let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 16];
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| buf[..len as usize].to_vec())
    };
    // Since Linux 5.8 anyone may create the 0/0 device; older kernels get the xattr form.
    let gone = std::fs::symlink_metadata(upper.join("gone")).unwrap();
    if std::os::unix::fs::FileTypeExt::is_char_device(&gone.file_type()) {
        assert_eq!(std::os::unix::fs::MetadataExt::rdev(&gone), 0);
    } else {
        assert_eq!(gone.len(), 0);
        assert_eq!(xattr(&upper.join("gone"), "user.overlay.whiteout").as_deref(), Some(&b"y"[..]));
        assert_eq!(xattr(&upper, "user.overlay.opaque").as_deref(), Some(&b"x"[..]));
    }
    assert_eq!(xattr(&upper.join("dir"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read_to_string(upper.join("keep")).unwrap(), "keepmore\n");
    assert_eq!(std::fs::read_to_string(lower.join("gone")).unwrap(), "gone", "the lower is untouched");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (p, n) = (std::ffi::CString::new(path.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    // SAFETY: C strings and a value slice.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "lsetxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}
