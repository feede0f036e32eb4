//! Shared helpers for the integration tests: prerequisites that fail loudly under CI, mounts that
//! clean up after themselves, running the real `strata` binary, and a tree snapshot to compare.
#![allow(dead_code)] // each test binary uses a different subset of the helpers

pub mod ops;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// Runs strata with a private cache directory; returns the output whatever the exit status.
pub fn run_strata(cache: &Path, args: &[&str]) -> Output {
    strata().env("STRATA_CACHE", cache).args(args).output().expect("running the strata binary")
}

/// FUSE mounts need /dev/fuse and (here) root. Outside CI a missing prerequisite skips the test
/// with a note; under CI=true it fails, so CI can never pass without having mounted anything.
pub fn require_fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root();
    if !ok {
        let why = "FUSE tests need /dev/fuse and root (run scripts/setup.sh, as root)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("note: skipping: {why}");
    }
    ok
}

pub fn require_command(name: &str) -> bool {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("{name} is not installed (run scripts/setup.sh)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("note: skipping: {why}");
    }
    ok
}

/// True when `path` is a mountpoint in this process' mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let needle = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4) == Some(&needle))
}

/// A strata mount made by the real binary; unmounted (lazily if needed) on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    /// `strata mount ARGS... MOUNTPOINT`; panics with strata's stderr if it fails.
    pub fn new(cache: &Path, args: &[&str], dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let mut all: Vec<&str> = vec!["mount"];
        all.extend_from_slice(args);
        all.push(dir.to_str().unwrap());
        let out = run_strata(cache, &all);
        assert!(out.status.success(), "strata mount failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(is_mounted(dir), "strata mount returned before {} was mounted", dir.display());
        Mounted { dir: dir.to_path_buf() }
    }
}

impl Mounted {
    /// `strata mount OPTIONS... --upper BASE/upper --work BASE/work --layer LAYER MOUNTPOINT`.
    pub fn writable(cache: &Path, base: &Path, layer: &Path, dir: &Path, options: &[&str]) -> Mounted {
        let (upper, work) = (base.join("upper"), base.join("work"));
        let mut args = options.to_vec();
        args.extend([
            "--upper",
            upper.to_str().unwrap(),
            "--work",
            work.to_str().unwrap(),
            "--layer",
            layer.to_str().unwrap(),
        ]);
        Mounted::new(cache, &args, dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let ok = strata().args(["umount", self.dir.to_str().unwrap()]).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}

/// Whatever is mounted at a path, unmounted (lazily) on drop.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tmpfs mounted on `dir` (with `options`, e.g. `size=1m`), unmounted on drop.
pub fn mount_tmpfs(dir: &Path, options: &str) -> Unmount {
    let mut mount = Command::new("mount");
    mount.args(["-t", "tmpfs"]);
    if !options.is_empty() {
        mount.args(["-o", options]);
    }
    assert!(mount.arg("tmpfs").arg(dir).status().unwrap().success(), "mounting a tmpfs on {}", dir.display());
    Unmount(dir.to_path_buf())
}

/// /dev/fuse opened to every user for a test that mounts as an unprivileged one (standard
/// distributions ship it as 0666); put back as it was when dropped. The tests of one binary that
/// need it take turns, so none puts the mode back while another still needs it open.
pub struct FuseOpenToAll {
    original_mode: u32,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static FUSE_MODE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl FuseOpenToAll {
    pub fn new() -> FuseOpenToAll {
        use std::os::unix::fs::PermissionsExt;
        let turn = FUSE_MODE_TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let original_mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        FuseOpenToAll { original_mode, _turn: turn }
    }
}

impl Drop for FuseOpenToAll {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.original_mode));
    }
}

/// The names in directory `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// A user with subordinate ids for rootless tests, and the start of its ranges.
pub const SUBID_USER: &str = "strata-subid";
pub const SUBID_START: u32 = 300_000;

/// Creates `SUBID_USER` with 65536 subordinate uids and gids, once per machine.
pub fn subid_user() -> (u32, u32) {
    if Command::new("id").arg(SUBID_USER).output().map(|o| !o.status.success()).unwrap_or(true) {
        let made = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SUBID_USER])
            .status();
        assert!(made.unwrap().success(), "useradd {SUBID_USER}");
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{SUBID_USER}:"))) {
            std::fs::write(file, format!("{text}{SUBID_USER}:{SUBID_START}:65536\n")).unwrap();
        }
    }
    let id = |flag: &str| -> u32 {
        String::from_utf8(Command::new("id").args([flag, SUBID_USER]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

pub const NOBODY: u32 = 65534;

/// Runs a command as nobody:nogroup, with `cache` as its strata cache and home.
pub fn as_nobody(cache: &Path, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .env("STRATA_CACHE", cache)
        .env("HOME", cache)
        .output()
        .expect("running setpriv")
}

/// Gives a tree to nobody:nogroup.
pub fn chown_to_nobody(path: &Path) {
    assert!(Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(path).status().unwrap().success());
}

/// Runs the strata binary as user `uid`:`gid` (no supplementary groups) with a clean environment
/// whose home, runtime, data and cache directories are under `home`, as a rootless user has them.
pub fn strata_as(uid: u32, gid: u32, home: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running strata as an unprivileged user")
}

/// The xattr names `uid`:`uid` (no supplementary groups) sees on `path` (llistxattr(2)), listed
/// by a forked child that takes that identity; it makes only system calls between fork and exit.
pub fn xattr_names_as(uid: u32, path: &Path) -> Vec<String> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    // SAFETY: the child makes raw system calls on memory allocated before the fork, then exits.
    match unsafe { libc::fork() } {
        0 => unsafe {
            use std::os::fd::AsRawFd;
            let listed = if libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(uid, uid, uid) == 0
                && libc::setresuid(uid, uid, uid) == 0
            {
                libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                -1
            };
            if listed >= 0 {
                libc::write(write_end.as_raw_fd(), buf.as_ptr().cast(), listed as usize);
            }
            libc::_exit(if listed >= 0 { 0 } else { 1 });
        },
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        child => {
            drop(write_end);
            let mut listed = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(read_end), &mut listed).unwrap();
            let mut status = 0;
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "listxattr as {uid} failed");
            listed
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()
        }
    }
}
