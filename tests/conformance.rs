//! Third parties' filesystem conformance suites on writable mounts, built by scripts/setup.sh:
//! - pjdfstest (the POSIX semantics of every path syscall: errors, permissions as other users,
//!   times, link counts, long paths) must fail nothing that kernel overlayfs passes over the same
//!   lower. Kernel overlayfs fails its tests of 0/0 character devices, which are its whiteouts
//!   (mknod refuses them: EPERM); strata must fail those and no others.
//!   In a rootless container, strata must fail nothing more than a tmpfs in the same container
//!   but those tests.
//! - fsx (random reads, writes, mmap reads and writes, truncation, fallocate, hole punching,
//!   copy_file_range, sendfile, reopening, each read checked against its own copy of the file)
//!   must complete, as root (FUSE passthrough) and as an unprivileged user (the writeback cache).

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{as_nobody, chown_to_nobody, require_command, require_fuse, Mounted, Unmount};

/// Where scripts/setup.sh builds the suites.
fn suite(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/bin").join(name);
    let found = path.exists();
    if !found {
        let why = format!("{} is missing (run scripts/setup.sh)", path.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("note: skipping: {why}");
    }
    found.then_some(path)
}

/// pjdfstest's configuration: the features Linux has, and two users to act as (`USERS`).
const PJDFSTEST_CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = USERS
"#;

fn write_pjdfstest_config(path: &Path, users: &str) {
    std::fs::write(path, PJDFSTEST_CONFIG.replace("USERS", users)).unwrap();
}

/// A pjdfstest run: the names of the tests that failed, and how many passed.
struct PjdfstestRun {
    failed: BTreeSet<String>,
    passed: usize,
}

fn pjdfstest(binary: &Path, config: &Path, dir: &Path) -> PjdfstestRun {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(binary).arg("-c").arg(config).arg("-p").arg(dir).output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_pjdfstest(&log, dir)
}

fn parse_pjdfstest(log: &str, dir: &Path) -> PjdfstestRun {
    // "Summary: 41 failed, 16 skipped, 341 passed, 0 expected failures, 398 total"
    let summary = log.lines().find_map(|l| l.strip_prefix("Summary: ")).unwrap_or_else(|| {
        panic!("pjdfstest in {} printed no summary:\n{log}", dir.display());
    });
    let count = |what: &str| -> usize {
        summary.split(", ").find_map(|part| part.strip_suffix(what)?.trim().parse().ok()).unwrap()
    };
    let failed: BTreeSet<String> = log
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), count(" failed"), "pjdfstest's failures, as listed and as counted:\n{log}");
    PjdfstestRun { failed, passed: count(" passed") }
}

/// pjdfstest's tests of 0/0 character devices: overlay whiteouts, which mknod refuses.
fn tests_whiteout_devices(name: &str) -> bool {
    name.ends_with("::char")
}

#[test]
fn pjdfstest_fails_nothing_that_kernel_overlayfs_passes() {
    if !require_fuse() {
        return;
    }
    let Some(binary) = suite("pjdfstest") else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["lower/d", "k-upper", "k-work", "k-mnt"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::write(w.join("lower/d/f"), "lower").unwrap();
    let config = w.join("pjdfstest.toml");
    write_pjdfstest_config(&config, r#"[["nobody", "nogroup"], ["daemon", "daemon"]]"#);

    // Both with the options strata's mounts have: nodev, nosuid.
    let options = format!(
        "nodev,nosuid,lowerdir={},upperdir={},workdir={}",
        w.join("lower").display(),
        w.join("k-upper").display(),
        w.join("k-work").display()
    );
    let mounted =
        Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(w.join("k-mnt")).output();
    assert!(mounted.unwrap().status.success(), "mounting kernel overlayfs");
    let _kernel_mount = Unmount(w.join("k-mnt"));
    let kernel = pjdfstest(&binary, &config, &w.join("k-mnt/pjd"));

    // Other users act in the mount: allow_other.
    let strata_mount = Mounted::writable(&w.join("cache"), w, &w.join("lower"), &w.join("mnt"), &["--allow-other"]);
    let strata = pjdfstest(&binary, &config, &strata_mount.dir.join("pjd"));
    drop(strata_mount);

    let only_strata: Vec<&String> = strata.failed.difference(&kernel.failed).collect();
    assert!(
        only_strata.is_empty(),
        "pjdfstest fails on strata, passes on kernel overlayfs: {only_strata:#?}\n(kernel overlayfs fails {:#?})",
        kernel.failed
    );
    assert!(
        strata.passed >= kernel.passed && kernel.passed > 300,
        "pjdfstest passed {} tests on strata, {} on kernel overlayfs",
        strata.passed,
        kernel.passed
    );
    assert!(
        kernel.failed.iter().all(|name| tests_whiteout_devices(name)),
        "kernel overlayfs failed more than its 0/0 character device tests: {:#?}",
        kernel.failed
    );
}

/// In a rootless container (root of a user namespace mapped to subordinate ids; the daemon has
/// CAP_DAC_OVERRIDE there), pjdfstest on the strata rootfs against pjdfstest on a tmpfs of the
/// same container: the namespace refuses both some things (device nodes); strata may fail beyond
/// the tmpfs only the whiteout-device tests.
#[test]
fn pjdfstest_in_a_rootless_container_fails_only_what_a_tmpfs_there_fails() {
    if !require_fuse() || !require_command("setpriv") || !require_command("newuidmap") || !require_command("busybox") {
        return;
    }
    let Some(binary) = suite("pjdfstest") else { return };
    let (uid, gid) = support::subid_user();
    let _fuse = support::FuseOpenToAll::new();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::set_permissions(h, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = h.join("image");
    strata_tools::fixture::write_oci_layout(&image, &strata_tools::fixture::runner_image().unwrap()).unwrap();
    // Built static (scripts/setup.sh): the image has no C library.
    std::fs::copy(&binary, h.join("pjdfstest")).unwrap();
    write_pjdfstest_config(&h.join("pjdfstest.toml"), r#"[["nobody", "nogroup"], ["app", "app"]]"#);
    assert!(Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(h).status().unwrap().success());

    let volume = format!("{}:/host", h.display());
    let script = "mkdir -p /pjdfst /scratch/pjdfst \
        && /host/pjdfstest -c /host/pjdfstest.toml -p /pjdfst > /host/strata.log 2>&1; \
        /host/pjdfstest -c /host/pjdfstest.toml -p /scratch/pjdfst > /host/tmpfs.log 2>&1; \
        true"; // pjdfstest exits 1 when a test failed: the logs tell
    let image = image.to_str().unwrap();
    let run = ["run", "--rm", "--volume", &volume, "--tmpfs", "/scratch", image, "sh", "-c", script];
    let out = support::strata_as(uid, gid, h, &run);
    assert!(out.status.success(), "strata run: {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(h.join(name)).unwrap();
    let strata = parse_pjdfstest(&read("strata.log"), Path::new("/pjdfst (strata, rootless)"));
    let tmpfs = parse_pjdfstest(&read("tmpfs.log"), Path::new("/scratch/pjdfst (tmpfs, rootless)"));

    let only_strata: Vec<&String> =
        strata.failed.difference(&tmpfs.failed).filter(|name| !tests_whiteout_devices(name)).collect();
    assert!(
        only_strata.is_empty(),
        "pjdfstest in a rootless container fails on strata, passes on a tmpfs: {only_strata:#?}\n{}",
        read("strata.log")
    );
    assert!(strata.passed > 250, "pjdfstest passed only {} tests on strata, rootless", strata.passed);
}

/// fsx's configuration: every operation it has, on files up to 8 MiB.
const FSX_CONFIG: &str = r#"
flen = 8388608
[opsize]
max = 262144
[weights]
close_open = 2
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 2
sendfile = 2
posix_fadvise = 2
copy_file_range = 3
"#;
const FSX_SEEDS: [u32; 2] = [1, 2];
const FSX_OPERATIONS: &str = "20000";

fn assert_fsx_passed(who: &str, seed: u32, out: &Output) {
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("All operations completed A-OK!"),
        "fsx as {who}, seed {seed} (rerun: fsx -S {seed} -N {FSX_OPERATIONS} with tests/conformance.rs' \
         configuration):\n{}",
        log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// A directory for fsx's configuration and the files it leaves when it fails, readable by all.
fn fsx_files(w: &Path) -> (PathBuf, PathBuf) {
    let config = w.join("fsx.toml");
    std::fs::write(&config, FSX_CONFIG).unwrap();
    let artifacts = w.join("fsx-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    (config, artifacts)
}

#[test]
fn fsx_keeps_file_data_right_as_root() {
    if !require_fuse() {
        return;
    }
    let Some(fsx) = suite("fsx") else { return };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("lower")).unwrap();
    let (config, artifacts) = fsx_files(w);
    let mounted = Mounted::writable(&w.join("cache"), w, &w.join("lower"), &w.join("mnt"), &[]);
    for seed in FSX_SEEDS {
        let out = Command::new(&fsx)
            .arg("-f")
            .arg(&config)
            .args(["-N", FSX_OPERATIONS, "-S", &seed.to_string(), "-P"])
            .arg(&artifacts)
            .arg(mounted.dir.join(format!("fsx-{seed}")))
            .output()
            .unwrap();
        assert_fsx_passed("root", seed, &out);
    }
}

#[test]
fn fsx_keeps_file_data_right_as_an_unprivileged_user() {
    if !require_fuse() || !require_command("setpriv") {
        return;
    }
    let Some(fsx) = suite("fsx") else { return };
    let _fuse = support::FuseOpenToAll::new();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["lower", "upper", "work", "mnt", "cache"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    let (config, artifacts) = fsx_files(w);
    // The checkout may be out of nobody's reach.
    std::fs::copy(&fsx, w.join("fsx")).unwrap();
    chown_to_nobody(w);
    let p = |name: &str| w.join(name).to_str().unwrap().to_string();
    let (upper, scratch, lower, mnt) = (p("upper"), p("work"), p("lower"), p("mnt"));
    let mount = ["mount", "--upper", &upper, "--work", &scratch, "--layer", &lower, &mnt];
    let out = as_nobody(&w.join("cache"), env!("CARGO_BIN_EXE_strata"), &mount);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mounted = Mounted { dir: w.join("mnt") };
    for seed in FSX_SEEDS {
        let file = mounted.dir.join(format!("fsx-{seed}"));
        let args = ["-f", config.to_str().unwrap(), "-N", FSX_OPERATIONS, "-S", &seed.to_string(), "-P"];
        let args: Vec<&str> = args.into_iter().chain([artifacts.to_str().unwrap(), file.to_str().unwrap()]).collect();
        assert_fsx_passed("nobody", seed, &as_nobody(&w.join("cache"), &p("fsx"), &args));
    }
}
