//! strata-overlayfs as podman's `mount_program`, the way containers-storage uses fuse-overlayfs:
//! podman loads an image (its layers extracted by containers-storage with `.wh.` whiteouts),
//! runs containers whose root filesystem strata serves, commits one (containers-storage diffs
//! strata's upper into a new layer) and runs the result; as root, and rootless (a user with
//! subordinate ids: podman's user namespace, strata mounting inside it in userxattr mode). With
//! runc, cgroupfs and no network, every podman call on private storage, run and temporary
//! directories.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{require_command, require_fuse};

struct Podman {
    root: PathBuf,
    mount_program: PathBuf,
    /// Rootless: the user (uid, gid) podman runs as.
    user: Option<(u32, u32)>,
}

impl Podman {
    fn new(dir: &Path, user: Option<(u32, u32)>) -> Podman {
        let mount_program = dir.join("strata-overlayfs");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_strata"), &mount_program).unwrap();
        Podman { root: dir.join("storage"), mount_program, user }
    }

    fn run(&self, args: &[&str]) -> Output {
        let storage_opt = format!("overlay.mount_program={}", self.mount_program.display());
        let mut podman = match self.user {
            None => Command::new("podman"),
            Some((uid, gid)) => {
                let mut setpriv = Command::new("setpriv");
                setpriv.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "podman"]);
                setpriv.env("HOME", &self.root).env("XDG_RUNTIME_DIR", self.root.join("xdg"));
                setpriv
            }
        };
        podman
            .args(["--root", self.root.join("graph").to_str().unwrap()])
            .args(["--runroot", self.root.join("run").to_str().unwrap()])
            .args(["--tmpdir", self.root.join("tmp").to_str().unwrap()])
            .args(["--storage-driver", "overlay", "--storage-opt", &storage_opt])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"])
            .args(args)
            .output()
            .expect("running podman")
    }

    /// Runs `podman ARGS`, which must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run` of a busybox shell script with what this host allows (its limits are below
    /// podman's defaults) and no network.
    fn shell(&self, name: &[&str], image: &str, script: &str) -> String {
        let mut args = vec!["run", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
        args.extend_from_slice(name);
        args.extend([image, "/bin/busybox", "sh", "-c", script]);
        self.ok(&args)
    }

    /// Rootless podman keeps a process holding its user namespace: ended with the test.
    fn end_pause_process(&self) {
        let pid_file = self.root.join("tmp/pause.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn mounts_left(&self) -> Vec<String> {
        let root = self.root.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .map(String::from)
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force"]);
        self.end_pause_process();
    }
}

#[test]
fn podman_runs_and_commits_containers_on_strata_overlayfs() {
    if !require_fuse() || !require_command("podman") || !require_command("runc") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    run_and_commit(&Podman::new(work.path(), None));
}

#[test]
fn rootless_podman_runs_and_commits_containers_on_strata_overlayfs() {
    if !require_fuse() || !require_command("podman") || !require_command("runc") || !require_command("newuidmap") {
        return;
    }
    let (uid, gid) = support::subid_user();
    let _fuse = support::FuseOpenToAll::new();
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let podman = Podman::new(work.path(), Some((uid, gid)));
    std::fs::create_dir_all(podman.root.join("xdg")).unwrap();
    let chown = Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(work.path()).status();
    assert!(chown.unwrap().success());
    run_and_commit(&podman);
    // The image's owners inside are the subordinate ids outside.
    let owner = podman.shell(&["--rm"], "runner:latest", "stat -c %u:%g /home/app");
    assert_eq!(owner, "1000:1000\n");
    let layers = std::fs::read_dir(podman.root.join("graph/overlay")).unwrap();
    let extracted = layers.filter_map(|l| std::fs::metadata(l.unwrap().path().join("diff/home/app")).ok()).next();
    let subordinate = support::SUBID_START + 999;
    assert_eq!(extracted.map(|m| (m.uid(), m.gid())), Some((subordinate, subordinate)));
}

/// Loads the runner image, runs a container that changes it, commits that and runs the result.
fn run_and_commit(podman: &Podman) {
    let archive = podman.root.with_file_name("runner.tar");
    strata_tools::fixture::write_docker_archive(&archive, &strata_tools::fixture::runner_image().unwrap()).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    podman.ok(&["load", "--input", archive.to_str().unwrap()]);
    // A container process of another user than the mount's reaches its files (allow_other).
    let as_app =
        podman.shell(&["--rm", "--user", "1000"], "runner:latest", "cat /app/hello.txt; touch /home/app/mine; id -u");
    assert_eq!(as_app, "hello from the image\n1000\n");
    // A file of the upper image layer deleted, a lower directory replaced, a lower file changed.
    let script = "set -e; grep ' / ' /proc/mounts; rm /app/hello.txt; rm -r /home; mkdir -p /home/new; \
                  echo data > /home/new/file; echo more >> /etc/group; echo ok";
    let first = podman.shell(&["--name", "first"], "runner:latest", script);
    let root_line = first.lines().next().unwrap_or_default();
    assert!(root_line.starts_with("strata:") && root_line.contains(" / fuse "), "the root is strata's: {first}");
    assert!(first.ends_with("ok\n"), "{first}");

    podman.ok(&["commit", "--quiet", "first", "committed:latest"]);
    podman.ok(&["rm", "first"]);
    // (The image's device node is left out: rootless podman cannot make it.)
    let script = "cd /; ls home; cat home/new/file; tail -n 1 etc/group; ls app | grep -v '^null-device$'; test ! -e app/hello.txt && echo gone";
    let second = podman.shell(&["--rm"], "committed:latest", script);
    assert_eq!(second, "new\ndata\nmore\ngone\n", "the committed image");
    assert!(podman.mounts_left().is_empty(), "left mounted: {:?}", podman.mounts_left());
}
