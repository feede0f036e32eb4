//! `strata run` as an unprivileged user (nobody): a user namespace maps the caller to root, the
//! FUSE rootfs is mounted inside it, and limits are skipped with a warning naming them (this
//! host has no delegated cgroup v2 subtree). Standard distributions ship /dev/fuse as 0666; the
//! test makes it so (as root) for its run and puts it back.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{require_command, require_fuse, NOBODY};

struct Rootless {
    home: tempfile::TempDir,
    image: PathBuf,
    uid: u32,
    gid: u32,
    _fuse: support::FuseOpenToAll,
}

impl Rootless {
    fn new(uid: u32, gid: u32) -> Option<Rootless> {
        if !require_fuse() || !require_command("setpriv") || !require_command("busybox") {
            return None;
        }
        let fuse = support::FuseOpenToAll::new();
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let image = home.path().join("image");
        strata_tools::fixture::write_oci_layout(&image, &strata_tools::fixture::runner_image().unwrap()).unwrap();
        let chown = Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(home.path()).status();
        assert!(chown.unwrap().success());
        Some(Rootless { home, image, uid, gid, _fuse: fuse })
    }

    fn strata(&self, args: &[&str]) -> Output {
        support::strata_as(self.uid, self.gid, self.home.path(), args)
    }

    fn sh(&self, options: &[&str], script: &str) -> Output {
        let image = self.image.to_str().unwrap();
        let mut args = vec!["run", "--rm"];
        args.extend(options);
        args.extend([image, "sh", "-c", script]);
        self.strata(&args)
    }

    fn upper(&self, name: &str) -> PathBuf {
        self.home.path().join("data/strata/containers").join(name).join("upper")
    }
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    stdout.into_owned()
}

/// One test: the cases share the /dev/fuse mode change, which tests in parallel would race on.
#[test]
fn an_unprivileged_user_runs_containers() {
    let Some(env) = Rootless::new(NOBODY, NOBODY) else { return };

    // Root inside, the caller outside; PID 1; its own host name; loopback only.
    let out = assert_ok(
        &env.sh(&["--hostname", "inside"], "id -u; echo $$; hostname; cat /proc/self/uid_map; ls /sys/class/net"),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["0", "1", "inside"], "{out}");
    assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), ["0", &NOBODY.to_string(), "1"]);
    assert_eq!(lines[4..], ["lo"]);

    // Writes land in the caller's upper, owned by the caller; the image is untouched.
    let image = env.image.to_str().unwrap();
    let out = env.strata(&["run", "--name", "keep", image, "sh", "-c", "echo new > /app/new; ls -ln /app/new"]);
    assert!(assert_ok(&out).contains(" 0        0 "), "root-owned inside");
    let written = env.upper("keep").join("app/new");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "new\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), NOBODY);
    assert!(String::from_utf8_lossy(&env.strata(&["ps"]).stdout).contains("exited (0)"));
    assert_ok(&env.strata(&["rm", "keep"]));
    assert!(!env.upper("keep").exists());

    // Volumes, read-write and read-only, and one through the image's `/escape -> /` symlink.
    let shared = env.home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("in"), "from host\n").unwrap();
    Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(&shared).status().unwrap();
    let rw = format!("{}:/data", shared.display());
    assert_eq!(assert_ok(&env.sh(&["-v", &rw], "cat /data/in; echo back > /data/out")), "from host\n");
    assert_eq!(std::fs::read_to_string(shared.join("out")).unwrap(), "back\n");
    let ro = format!("{}:/data:ro", shared.display());
    assert!(!env.sh(&["-v", &ro], "echo no > /data/out").status.success());
    let escape = format!("{}:/escape/rootless-escape-test", shared.display());
    assert_eq!(assert_ok(&env.sh(&["-v", &escape], "cat /rootless-escape-test/in")), "from host\n");
    assert!(!Path::new("/rootless-escape-test").exists());

    // Exit codes; limits without a delegated cgroup run unlimited with a warning naming them.
    assert_eq!(env.sh(&[], "exit 5").status.code(), Some(5));
    let out = env.sh(&["--memory", "64m", "--pids-limit", "50"], "true");
    assert_ok(&out);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.contains("memory limit") && warnings.contains("pids limit"), "{warnings}");

    // Nothing left: no state, no upper.
    let listed = String::from_utf8_lossy(&env.strata(&["ps"]).stdout).lines().count();
    assert_eq!(listed, 1, "only the header of `strata ps` is left");
}

/// With /etc/subuid ranges and newuidmap, the image's other owners keep their ids inside, files
/// given to them land in the upper with the subordinate ids, and `strata rm` still removes them.
#[test]
fn subordinate_ids_map_the_images_other_owners() {
    if !require_command("newuidmap") || !require_command("useradd") {
        return;
    }
    let (uid, gid) = support::subid_user();
    let Some(env) = Rootless::new(uid, gid) else { return };
    let image = env.image.to_str().unwrap();
    let script = "wc -l < /proc/self/uid_map; stat -c %u:%g /home/app; touch /owned; chown 1000:1000 /owned; \
                  chown app /app/hello.txt; stat -c %u /app/hello.txt; \
                  mkdir -p /home/app/private; touch /home/app/private/f; chown -R app /home/app/private; \
                  chmod 700 /home/app/private";
    let out = assert_ok(&env.strata(&["run", "--name", "mapped", image, "sh", "-c", script]));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["2", "1000:1000", "1000"], "{out}");
    let upper = env.upper("mapped");
    let owned = std::fs::metadata(upper.join("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid()),
        (support::SUBID_START + 999, support::SUBID_START + 999),
        "uid 1000 inside is subordinate id 999 + start"
    );
    assert_eq!(std::fs::metadata(upper.join("app/hello.txt")).unwrap().uid(), support::SUBID_START + 999);
    // A directory of a subordinate id, closed to its owner only: the caller cannot even list it.
    assert!(std::fs::metadata(upper.join("home/app/private")).unwrap().uid() == support::SUBID_START + 999);
    assert_ok(&env.strata(&["rm", "mapped"]));
    assert!(!upper.exists(), "rm removed the files of subordinate ids");
}
