//! strata-overlayfs against fuse-overlayfs itself, on the formats the two share: layers that
//! keep owners and permissions in xattrs (containers-storage's `force_mask`, fuse-overlayfs'
//! `xattr_permissions=2`), and uppers that fuse-overlayfs wrote as an unprivileged user. Each
//! program reads the other's upper and shows the same tree.

mod support;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{is_mounted, require_command, require_fuse, Unmount};

/// A tree as a user sees it, without times (the two mounts made their objects at different
/// moments) and without containers-storage's override xattr, which fuse-overlayfs shows and
/// strata keeps as bookkeeping.
type View = BTreeMap<String, (&'static str, u32, u32, u32, Option<String>, Option<String>, Vec<String>)>;

fn view(root: &Path) -> View {
    let (nodes, _) = support::tree::snapshot(root);
    nodes
        .into_iter()
        .map(|(path, n)| {
            let xattrs = n.xattrs.keys().filter(|k| *k != "user.containers.override_stat").cloned().collect();
            (path, (n.kind, n.mode, n.uid, n.gid, n.target, n.content, xattrs))
        })
        .collect()
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// A layer as containers-storage extracts it with `force_mask=0700`: every host mode forced to
/// 0700, the real owners and permissions in `user.containers.override_stat`.
fn forced_mask_layer(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("bin/sh"), "a shell").unwrap();
    std::os::unix::fs::symlink("sh", dir.join("bin/ash")).unwrap();
    for (rel, stored) in
        [("", "0:0:755"), ("etc", "0:0:755"), ("etc/passwd", "0:0:644"), ("bin", "0:0:755"), ("bin/sh", "0:0:4755")]
    {
        let path = dir.join(rel);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        set_xattr(&path, "user.containers.override_stat", stored);
    }
}

/// Mounts with a fuse-overlayfs command line (`lowerdir=`, top first), by `program`.
fn mount_overlay(program: &Path, lowers: &[&Path], upper: &Path, work: &Path, extra: &str, mnt: &Path) -> Unmount {
    for dir in [upper, work, mnt] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let options =
        format!("lowerdir={},upperdir={},workdir={}{extra}", lowers.join(":"), upper.display(), work.display());
    let out = Command::new(program).args(["-o", &options]).arg(mnt).output().unwrap();
    assert!(out.status.success(), "{} -o {options}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(mnt));
    Unmount(mnt.to_path_buf())
}

/// `strata-overlayfs`: the strata binary under the name that selects fuse-overlayfs' command line.
fn strata_overlayfs(dir: &Path) -> PathBuf {
    let link = dir.join("strata-overlayfs");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_strata"), &link).unwrap();
    }
    link
}

fn run_in(dir: &Path, script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn owners_and_permissions_kept_in_xattrs_as_fuse_overlayfs_keeps_them() {
    if !require_fuse() || !require_command("fuse-overlayfs") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let strata = strata_overlayfs(w);
    let fuse_overlayfs = PathBuf::from("fuse-overlayfs");
    let dirs = |name: &str| {
        let base = w.join(name);
        forced_mask_layer(&base.join("lower"));
        (base.join("lower"), base.join("upper"), base.join("work"), base.join("mnt"))
    };
    let (fo_lower, fo_upper, fo_work, fo_mnt) = dirs("fo");
    let (st_lower, st_upper, st_work, st_mnt) = dirs("st");
    let options = ",xattr_permissions=2";

    let fo = mount_overlay(&fuse_overlayfs, &[&fo_lower], &fo_upper, &fo_work, options, &fo_mnt);
    let st = mount_overlay(&strata, &[&st_lower], &st_upper, &st_work, options, &st_mnt);
    assert_eq!(view(&st_mnt), view(&fo_mnt), "the forced-mask layer as fuse-overlayfs shows it");
    // The upper's root takes its stored mode from the lower's root.
    let root = |mnt: &Path| std::fs::metadata(mnt).map(|m| (m.uid(), m.gid(), m.mode() & 0o7777)).unwrap();
    assert_eq!(root(&st_mnt), (0, 0, 0o755));
    assert_eq!(root(&st_mnt), root(&fo_mnt));
    let passwd = std::fs::metadata(st_mnt.join("etc/passwd")).unwrap();
    assert_eq!((passwd.uid(), passwd.mode() & 0o7777), (0, 0o644), "the stored mode, not the host's 0700");
    assert_eq!(std::fs::metadata(st_mnt.join("bin/sh")).unwrap().mode() & 0o7777, 0o4755);

    // chmod and chown of lower objects (copied up), new objects, a data change to a lower file.
    // New files are chmod-ed explicitly, before their chown: fuse-overlayfs stores the host
    // file's mode for a new file (0755), not the one asked for, and its chmod takes the owner
    // from the host file; strata stores what was asked for (checked below).
    let script = "set -e; umask 022; chmod 600 etc/passwd; chown 33:44 bin; mkdir newdir; chmod 2750 newdir; \
                  echo x > newfile; chmod 640 newfile; chown 5:6 newfile; echo y >> bin/sh; touch etc/new; chmod 604 etc/new";
    run_in(&fo_mnt, script);
    run_in(&st_mnt, script);
    let changed = view(&fo_mnt);
    assert_eq!(view(&st_mnt), changed, "after the same changes");
    run_in(&st_mnt, "umask 022; echo z > asked");
    assert_eq!(std::fs::metadata(st_mnt.join("asked")).unwrap().mode() & 0o7777, 0o644);
    std::fs::remove_file(st_mnt.join("asked")).unwrap();
    // A write by a user without CAP_FSETID drops a stored setuid bit, as the kernel drops a real one.
    run_in(&st_mnt, "echo x > shared; chmod 4777 shared");
    let append = format!("echo more >> {}", st_mnt.join("shared").display());
    let as_nobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", &append];
    assert!(Command::new("setpriv").args(as_nobody).status().unwrap().success());
    assert_eq!(std::fs::metadata(st_mnt.join("shared")).unwrap().mode() & 0o7777, 0o777);
    std::fs::remove_file(st_mnt.join("shared")).unwrap();
    drop((fo, st));

    // On the host the upper objects stay the daemon's, with no setuid bit; the lowers are untouched.
    let sh = std::fs::metadata(st_upper.join("bin/sh")).unwrap();
    assert_eq!(sh.mode() & 0o7000, 0, "no setuid bit on the host copy");
    assert!(has_xattr(&st_upper.join("bin/sh"), "user.fuseoverlayfs.override_stat"));
    assert_eq!(std::fs::metadata(st_lower.join("etc/passwd")).unwrap().mode() & 0o7777, 0o700);

    // Each reads the other's upper.
    let cross = w.join("cross");
    let fo_reads_strata = mount_overlay(&fuse_overlayfs, &[&st_lower], &st_upper, &st_work, options, &cross);
    assert_eq!(view(&cross), changed, "fuse-overlayfs over strata's upper");
    drop(fo_reads_strata);
    let strata_reads_fo = mount_overlay(&strata, &[&fo_lower], &fo_upper, &fo_work, options, &cross);
    assert_eq!(view(&cross), changed, "strata over fuse-overlayfs' upper");
    drop(strata_reads_fo);
}

#[test]
fn an_upper_written_by_rootless_fuse_overlayfs_mounts_in_strata() {
    if !require_fuse() || !require_command("fuse-overlayfs") || !require_command("setpriv") {
        return;
    }
    let _fuse = support::FuseOpenToAll::new();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (lower, upper, scratch, mnt) = (w.join("lower"), w.join("upper"), w.join("work"), w.join("mnt"));
    std::fs::create_dir_all(lower.join("dir")).unwrap();
    std::fs::write(lower.join("dir/old"), "old").unwrap();
    std::fs::write(lower.join("gone"), "gone").unwrap();
    std::fs::write(lower.join("keep"), "keep").unwrap();
    for d in [&upper, &scratch, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(w).status().unwrap().success());

    // As nobody, fuse-overlayfs cannot set trusted.* xattrs: it marks the recreated directory
    // opaque with user.fuseoverlayfs.opaque (and, from 1.x, a .wh..wh..opq file).
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), scratch.display());
    let as_nobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"];
    let mounted =
        Command::new("setpriv").args(as_nobody).args(["fuse-overlayfs", "-o", &options]).arg(&mnt).output().unwrap();
    assert!(mounted.status.success(), "fuse-overlayfs as nobody: {}", String::from_utf8_lossy(&mounted.stderr));
    let guard = Unmount(mnt.clone());
    let script =
        format!("set -e; cd {}; rm gone; echo more >> keep; rm -r dir; mkdir dir; echo new > dir/new", mnt.display());
    let changed = Command::new("setpriv").args(as_nobody).args(["sh", "-c", &script]).output().unwrap();
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    drop(guard);
    assert!(has_xattr(&upper.join("dir"), "user.fuseoverlayfs.opaque"));

    // The expected tree: fuse-overlayfs' own view of that upper (mounted by root, which may read
    // it; nobody's mount is closed to other users).
    let shown = mount_overlay(Path::new("fuse-overlayfs"), &[&lower], &upper, &scratch, "", &mnt);
    let expected = view(&mnt);
    drop(shown);
    assert_eq!(expected.keys().collect::<Vec<_>>(), ["dir", "dir/new", "keep"]);

    let strata = strata_overlayfs(w);
    let shown = mount_overlay(&strata, &[&lower], &upper, &scratch, "", &mnt);
    assert_eq!(view(&mnt), expected, "strata over the upper fuse-overlayfs wrote");
    drop(shown);

    // fuse-overlayfs before 1.0 marked opaque directories with the xattr alone.
    std::fs::remove_file(upper.join("dir/.wh..wh..opq")).unwrap();
    let shown = mount_overlay(&strata, &[&lower], &upper, &scratch, "", &mnt);
    assert_eq!(view(&mnt), expected, "the xattr alone makes the directory opaque");
    drop(shown);
}
