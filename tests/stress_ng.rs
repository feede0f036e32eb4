//! stress-ng's filesystem stressors on writable mounts, as root (FUSE passthrough) and as an
//! unprivileged user (the writeback cache): a third party's workload, which found requests this
//! project's own tests did not make (files used after deletion, the deleted inode's ctime update,
//! more open files than the daemon's descriptor limit). Every stressor must pass, and nothing may
//! be left in the work directory once the mount is gone.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use support::{as_nobody, chown_to_nobody, require_command, require_fuse};

/// Stressors that make the requests a container's programs make (one second each), run in
/// sequence after [`SYNCFS_STRESSOR`].
const STRESSORS: &[&str] = &[
    "access",
    "chattr",
    "chmod",
    "chown",
    "copy-file",
    "dentry",
    "dir",
    "dirdeep",
    "dirmany",
    "fallocate",
    "fcntl",
    "file-ioctl",
    "filename",
    "flock",
    "fpunch",
    "fsize",
    "fstat",
    "getdent",
    "hdd",
    "inode-flags",
    "link",
    "lockf",
    "mknod",
    "open",
    "rename",
    "symlink",
    "sync-file",
    "touch",
    "utime",
    "xattr",
];

/// Runs alone, first, on the fresh mount: its syncfs(2) reports any writeback error the mount's
/// superblock recorded and nobody saw yet, whichever file it came from. With the writeback cache
/// (unprivileged mounts) the kernel records one when a process is killed inside fallocate(2): the
/// time update it flushes on the way out fails with EINTR (fuse_flush_time_update). `fpunch` and
/// `file-ioctl` kill their own children so; fuse-overlayfs' mounts show the same.
const SYNCFS_STRESSOR: &str = "io";

/// The stress-ng command lines, in order: [`SYNCFS_STRESSOR`], then [`STRESSORS`].
fn stress_ng_runs(temp: &Path) -> [Vec<String>; 2] {
    let common = ["-t", "1", "--temp-path", temp.to_str().unwrap()].map(String::from);
    let alone = [format!("--{SYNCFS_STRESSOR}"), "1".into()].into_iter().chain(common.clone()).collect();
    let mut sequence: Vec<String> = ["--seq", "1"].map(String::from).into_iter().chain(common).collect();
    // `--seq` runs a whole class; the stressors not listed are excluded by name.
    let all = std::process::Command::new("stress-ng").args(["--class", "filesystem?"]).output().unwrap();
    let listed = String::from_utf8_lossy(&all.stdout).into_owned() + &String::from_utf8_lossy(&all.stderr);
    // "class 'filesystem' stressors: access bind-mount …"
    let names = listed.split_once("stressors:").map_or("", |(_, names)| names);
    let excluded: Vec<&str> = names.split_whitespace().filter(|name| !STRESSORS.contains(name)).collect();
    sequence.extend(["--exclude".into(), excluded.join(","), "--class".into(), "filesystem".into()]);
    [alone, sequence]
}

fn assert_passed(who: &str, out: &Output) {
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("fail:") || l.contains("error:")).collect();
    assert!(out.status.success() && failures.is_empty(), "stress-ng as {who}: {failures:#?}\n{log}");
}

#[test]
fn filesystem_stressors_pass_as_root() {
    if !require_fuse() || !require_command("stress-ng") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("lower/d")).unwrap();
    std::fs::write(w.join("lower/f"), "lower").unwrap();
    let mounted = support::Mounted::writable(&w.join("cache"), w, &w.join("lower"), &w.join("mnt"), &[]);
    for args in stress_ng_runs(&mounted.dir) {
        assert_passed("root", &std::process::Command::new("stress-ng").args(args).output().unwrap());
    }
    drop(mounted);
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0, "left in the work directory");
}

#[test]
fn filesystem_stressors_pass_as_an_unprivileged_user() {
    if !require_fuse() || !require_command("stress-ng") || !require_command("setpriv") {
        return;
    }
    let _fuse = support::FuseOpenToAll::new();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["lower/d", "upper", "work", "mnt", "cache"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::write(w.join("lower/f"), "lower").unwrap();
    chown_to_nobody(w);
    let p = |name: &str| w.join(name).to_str().unwrap().to_string();
    let (upper, scratch, lower, mnt) = (p("upper"), p("work"), p("lower"), p("mnt"));
    let strata = env!("CARGO_BIN_EXE_strata");
    let mount = ["mount", "--upper", &upper, "--work", &scratch, "--layer", &lower, &mnt];
    let out = as_nobody(&w.join("cache"), strata, &mount);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mounted = support::Mounted { dir: w.join("mnt") };
    for args in stress_ng_runs(&mounted.dir) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_passed("nobody", &as_nobody(&w.join("cache"), "stress-ng", &args));
    }
    drop(mounted);
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0, "left in the work directory");
}
