//! strata-overlayfs as podman's `mount_program`, the way containers-storage uses fuse-overlayfs:
//! podman loads an image (its layers extracted by containers-storage with `.wh.` whiteouts),
//! runs containers whose root filesystem strata serves, commits one (containers-storage diffs
//! strata's upper into a new layer) and runs the result. Root, with runc, cgroupfs and no
//! network, every podman call on private storage, run and temporary directories.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{require_command, require_fuse};

struct Podman {
    root: PathBuf,
    mount_program: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let mount_program = dir.join("strata-overlayfs");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_strata"), &mount_program).unwrap();
        Podman { root: dir.join("storage"), mount_program }
    }

    fn run(&self, args: &[&str]) -> Output {
        let storage_opt = format!("overlay.mount_program={}", self.mount_program.display());
        Command::new("podman")
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
    }
}

#[test]
fn podman_runs_and_commits_containers_on_strata_overlayfs() {
    if !require_fuse() || !require_command("podman") || !require_command("runc") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let archive = w.join("runner.tar");
    strata_tools::fixture::write_docker_archive(&archive, &strata_tools::fixture::runner_image().unwrap()).unwrap();
    let podman = Podman::new(w);
    podman.ok(&["load", "--input", archive.to_str().unwrap()]);

    // A file of the upper image layer deleted, a lower directory replaced, a lower file changed.
    let script = "set -e; grep ' / ' /proc/mounts; rm /app/hello.txt; rm -r /home; mkdir -p /home/new; \
                  echo data > /home/new/file; echo more >> /etc/group; echo ok";
    let first = podman.shell(&["--name", "first"], "runner:latest", script);
    let root_line = first.lines().next().unwrap_or_default();
    assert!(root_line.starts_with("strata:") && root_line.contains(" / fuse "), "the root is strata's: {first}");
    assert!(first.ends_with("ok\n"), "{first}");

    podman.ok(&["commit", "--quiet", "first", "committed:latest"]);
    podman.ok(&["rm", "first"]);
    let script = "cd /; ls home; cat home/new/file; tail -n 1 etc/group; ls app; test ! -e app/hello.txt && echo gone";
    let second = podman.shell(&["--rm"], "committed:latest", script);
    assert_eq!(second, "new\ndata\nmore\ngone\n", "the committed image");
    assert!(podman.mounts_left().is_empty(), "left mounted: {:?}", podman.mounts_left());
}
