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

/// Stressors that make the requests a container's programs make (one second each).
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
    "filename",
    "flock",
    "fpunch",
    "fsize",
    "fstat",
    "getdent",
    "hdd",
    "inode-flags",
    "io",
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

fn stress_ng_args(temp: &Path) -> Vec<String> {
    let mut args: Vec<String> =
        ["--seq", "1", "-t", "1", "--temp-path", temp.to_str().unwrap(), "--exclude"].map(String::from).to_vec();
    // `--seq` runs a whole class; the stressors not listed are excluded by name.
    let all = std::process::Command::new("stress-ng").args(["--class", "filesystem?"]).output().unwrap();
    let listed = String::from_utf8_lossy(&all.stdout).into_owned() + &String::from_utf8_lossy(&all.stderr);
    // "class 'filesystem' stressors: access bind-mount …"
    let names = listed.split_once("stressors:").map_or("", |(_, names)| names);
    let excluded: Vec<&str> = names.split_whitespace().filter(|name| !STRESSORS.contains(name)).collect();
    args.push(excluded.join(","));
    args.extend(["--class".into(), "filesystem".into()]);
    args
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
    let stress = std::process::Command::new("stress-ng").args(stress_ng_args(&mounted.dir)).output().unwrap();
    drop(mounted);
    assert_passed("root", &stress);
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
    let args = stress_ng_args(&mounted.dir);
    let stress = as_nobody(&w.join("cache"), "stress-ng", &args.iter().map(String::as_str).collect::<Vec<_>>());
    drop(mounted);
    assert_passed("nobody", &stress);
    assert_eq!(std::fs::read_dir(w.join("work")).unwrap().count(), 0, "left in the work directory");
}
