//! `strata run` for real, as root: namespaces, the FUSE rootfs, cgroup limits (this host's v1
//! hierarchies), volumes, exit codes and signals, and clean-up on every way out. The image is
//! the fixture builder's runner image (Debian's static busybox, installed by scripts/setup.sh).

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{require_command, require_fuse, strata};

/// One test's private state and data directories, over a shared image and index cache.
struct Env {
    dirs: tempfile::TempDir,
}

fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("runner-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        strata_tools::fixture::write_oci_layout(&dir, &strata_tools::fixture::runner_image().unwrap()).unwrap();
        dir
    })
}

fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("runner-cache")
}

impl Env {
    fn new() -> Option<Env> {
        if !require_fuse() || !require_command("busybox") {
            return None;
        }
        Some(Env { dirs: tempfile::tempdir().unwrap() })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = strata();
        cmd.env("STRATA_CACHE", cache())
            .env("STRATA_RUN_DIR", self.dirs.path().join("run"))
            .env("STRATA_DATA_DIR", self.dirs.path().join("data"))
            .args(args);
        cmd
    }

    fn strata(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("running strata")
    }

    /// `strata run --rm IMAGE` + `args`.
    fn run(&self, options: &[&str], command: &[&str]) -> Output {
        let image = image().to_str().unwrap();
        let args: Vec<&str> = ["run", "--rm"]
            .iter()
            .copied()
            .chain(options.iter().copied())
            .chain([image])
            .chain(command.iter().copied())
            .collect();
        self.strata(&args)
    }

    fn sh(&self, options: &[&str], script: &str) -> Output {
        self.run(options, &["sh", "-c", script])
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dirs.path().join("data/containers").join(name)
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.dirs.path().join("run/containers").join(name)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "strata run failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Every cgroup directory named after the container, in every hierarchy of this host.
fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join("strata").join(name);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

/// True while any process's mount table shows a strata mount for the container.
fn mount_visible_anywhere(name: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read_to_string(p.path().join("mountinfo")).is_ok_and(|m| m.contains(&format!(":{name} "))))
}

#[test]
fn the_process_is_pid_1_and_sees_only_its_own_processes() {
    let Some(env) = Env::new() else { return };
    let out = assert_ok(&env.sh(&[], "echo pid=$$; ls /proc | grep -c '^[0-9]'"));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pid=1"));
    let count: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 3, "the container sees {count} processes (sh, ls, grep at most)");
}

#[test]
fn hostname_and_etc_files_are_the_containers() {
    let Some(env) = Env::new() else { return };
    let host = nix::unistd::gethostname().unwrap();
    let out = assert_ok(&env.sh(
        &["--hostname", "box"],
        "hostname; cat /etc/hostname; grep box /etc/hosts; hostname inner 2>/dev/null || echo refused",
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["box", "box", "127.0.1.1\tbox", "refused"]);
    // Renaming needs CAP_SYS_ADMIN, outside Docker's default set; the host's name is untouched anyway.
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
}

#[test]
fn writes_land_in_the_upper_and_never_in_the_image() {
    let Some(env) = Env::new() else { return };
    let name = unique("keep");
    let image_path = image().to_str().unwrap();
    let out = env.strata(&[
        "run",
        "--name",
        &name,
        image_path,
        "sh",
        "-c",
        "echo new > /app/new; echo changed > /app/hello.txt; rm /bin/ls",
    ]);
    assert_ok(&out);
    let upper = env.data_dir(&name).join("upper");
    assert_eq!(std::fs::read_to_string(upper.join("app/new")).unwrap(), "new\n");
    assert_eq!(std::fs::read_to_string(upper.join("app/hello.txt")).unwrap(), "changed\n");
    let whiteout = std::fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()), "ls deleted by a whiteout");
    // A second container of the same image starts from the image, not from the first one's changes.
    let out = assert_ok(&env.sh(&[], "cat /app/hello.txt; ls /app/new 2>&1; ls /bin/ls"));
    assert!(
        out.starts_with("hello from the image\n") && out.contains("No such file") && out.contains("/bin/ls"),
        "{out}"
    );

    let ps = stdout(&env.strata(&["ps"]));
    assert!(ps.lines().any(|l| l.starts_with(&name) && l.contains("exited (0)")), "{ps}");
    assert_ok(&env.strata(&["rm", &name]));
    assert!(!env.data_dir(&name).exists() && !env.run_dir(&name).exists());
    assert!(!stdout(&env.strata(&["ps"])).contains(&name));
}

/// A root filesystem given as a host directory (`--layer DIR`) is merged a directory at a time:
/// the container runs from it, its writes land in the upper, and the directory never changes.
#[test]
fn a_directory_rootfs_runs_and_stays_untouched() {
    let Some(env) = Env::new() else { return };
    let rootfs = env.dirs.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc/deep/er")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("etc/deep/er/conf"), "from the directory\n").unwrap();
    let before = support::tree::snapshot(&rootfs).0;
    let name = unique("dir");
    let script = "cat /etc/deep/er/conf; echo mine > /etc/deep/er/conf; /bin/busybox rm /bin/sh; /bin/busybox ls /bin";
    let out =
        env.strata(&["run", "--name", &name, "--layer", rootfs.to_str().unwrap(), "/bin/busybox", "sh", "-c", script]);
    assert_eq!(assert_ok(&out), "from the directory\nbusybox\n");
    let upper = env.data_dir(&name).join("upper");
    assert_eq!(std::fs::read_to_string(upper.join("etc/deep/er/conf")).unwrap(), "mine\n");
    assert_eq!(support::tree::snapshot(&rootfs).0, before, "the directory layer changed");
    assert_ok(&env.strata(&["rm", &name]));
}

/// Without `--log`, a container's log goes to strata.log in its data directory, never into the
/// container's own stderr, and goes with `strata rm`.
#[test]
fn a_containers_log_is_its_own_file() {
    let Some(env) = Env::new() else { return };
    let name = unique("log");
    let image_path = image().to_str().unwrap();
    let out = env
        .command(&["run", "--name", &name, image_path, "sh", "-c", "echo to-stderr >&2"])
        .env("STRATA_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(stderr(&out), "to-stderr\n", "only the container's own stderr");
    let log = env.data_dir(&name).join("strata.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(text.lines().any(|l| l.contains("INFO") && l.contains("mounted")), "{text}");
    assert_ok(&env.strata(&["rm", &name]));
    assert!(!log.exists());
}

#[test]
fn rm_flag_leaves_nothing_behind() {
    let Some(env) = Env::new() else { return };
    let name = unique("gone");
    let image_path = image().to_str().unwrap();
    assert_ok(&env.strata(&["run", "--rm", "--name", &name, "--memory", "64m", image_path, "sh", "-c", "echo x > /x"]));
    assert!(!env.data_dir(&name).exists(), "upper kept");
    assert!(!env.run_dir(&name).exists(), "state kept");
    assert!(cgroup_dirs_named(&name).is_empty(), "cgroup kept: {:?}", cgroup_dirs_named(&name));
    assert!(!mount_visible_anywhere(&name), "a mount of the container is still visible");
}

#[test]
fn volumes_are_shared_with_the_host_and_can_be_read_only() {
    let Some(env) = Env::new() else { return };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "host data\n").unwrap();
    let rw = format!("{}:/data", host.path().display());
    let out = assert_ok(&env.sh(&["-v", &rw], "cat /data/from-host; echo written > /data/from-container"));
    assert_eq!(out, "host data\n");
    assert_eq!(std::fs::read_to_string(host.path().join("from-container")).unwrap(), "written\n");

    let ro = format!("{}:/data:ro", host.path().display());
    let out = env.sh(&["-v", &ro], "cat /data/from-host && echo again > /data/from-host");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(host.path().join("from-host")).unwrap(), "host data\n");

    // A mount below the volume's source is read-only in the container too.
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&sub).status().unwrap();
    assert!(mounted.success());
    let out = env.sh(&["-v", &ro], "echo x > /data/sub/new");
    let unmounted = Command::new("umount").arg(&sub).status().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
    assert!(unmounted.success());
}

#[test]
fn a_volume_through_a_symlink_to_root_stays_inside_the_rootfs() {
    let Some(env) = Env::new() else { return };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("marker"), "volume\n").unwrap();
    // /escape -> / in the image: the target must resolve to the container's /strata-escape-test.
    let target = format!("strata-escape-test-{}", std::process::id());
    let volume = format!("{}:/escape/{target}", host.path().display());
    let out = assert_ok(&env.sh(&["-v", &volume], &format!("cat /{target}/marker")));
    assert_eq!(out, "volume\n");
    assert!(!Path::new("/").join(&target).exists(), "the volume target was created on the host's root");
}

#[test]
fn memory_limit_kills_an_allocation_beyond_it() {
    let Some(env) = Env::new() else { return };
    let out = env.run(&["--memory", "32m"], &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let out = env.run(&["--memory", "256m"], &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    assert_ok(&out);
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(env) = Env::new() else { return };
    // A failed fork ends a non-interactive shell: the loop runs in a subshell, and the count uses
    // only builtins (no fork left to spare).
    let out = env.sh(&["--pids-limit", "20"], "(for i in $(seq 60); do sleep 3 & done); set -- /proc/[0-9]*; echo $#");
    let err = stderr(&out);
    assert!(err.contains("can't fork") || err.contains("Resource temporarily unavailable"), "{err}");
    let running: u32 = stdout(&out).trim().parse().unwrap();
    assert!(running <= 20, "{running} processes under a limit of 20");
}

#[test]
fn cpu_quota_keeps_a_busy_loop_near_half_a_core() {
    let Some(env) = Env::new() else { return };
    // Busy for 2 s of wall time; utime+stime of the shell (fields 14, 15 of /proc/self/stat, in ticks).
    let script = "end=$(( $(date +%s) + 2 )); while [ $(date +%s) -lt $end ]; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; done; \
                  cut -d' ' -f14-17 /proc/$$/stat";
    let started = Instant::now();
    let out = assert_ok(&env.sh(&["--cpus", "0.5"], script));
    let wall = started.elapsed().as_secs_f64();
    let ticks: u64 = out.split_whitespace().map(|t| t.parse::<u64>().unwrap()).sum();
    let cpu = ticks as f64 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64;
    let share = cpu / (wall - 0.2).max(1.0);
    assert!((0.2..=0.75).contains(&share), "busy loop used {cpu:.2} s of CPU in {wall:.2} s: {share:.2} of a core");
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let Some(env) = Env::new() else { return };
    let out = assert_ok(&env.sh(&[], "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "{out}");
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).unwrap();
    assert_ne!(flags & libc::IFF_UP as u32, 0, "lo is down: {out}");
    let host = assert_ok(&env.sh(&["--net", "host"], "ls /sys/class/net | wc -l"));
    let host_count = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(host.trim(), host_count.to_string());
}

#[test]
fn exit_codes_and_signals_propagate() {
    let Some(env) = Env::new() else { return };
    assert_eq!(env.sh(&[], "exit 3").status.code(), Some(3));
    assert_eq!(env.sh(&["--init"], "kill -TERM $$").status.code(), Some(143));
    let out = env.run(&[], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("no-such-command"), "{}", stderr(&out));
    assert_eq!(env.run(&[], &["/app/hello.txt"]).status.code(), Some(126), "not executable");

    // SIGTERM to strata run reaches the command (through --init, which PID 1 needs to act on it).
    let image_path = image().to_str().unwrap();
    let mut child = env.command(&["run", "--rm", "--init", image_path, "sleep", "30"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
}

/// `--init` is strata itself, forked: its command line must not show the host's `strata run …`
/// (host paths, `-e` values) to the container through the world-readable /proc/1/cmdline.
#[test]
fn the_init_does_not_show_the_host_command_line() {
    let Some(env) = Env::new() else { return };
    // The argument area keeps its length (shrinking it needs CAP_SYS_RESOURCE): NULs follow the name.
    let out = env.sh(&["--init", "-e", "SECRET=hunter2"], "tr -d '\\0' < /proc/1/cmdline; echo; cat /proc/1/comm");
    let shown = assert_ok(&out);
    assert_eq!(shown.lines().collect::<Vec<_>>(), ["strata-init", "strata-init"], "{shown}");
}

/// Waits until `strata ps --json` shows the container running with its process id.
fn container_pid(env: &Env, name: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed: serde_json::Value = serde_json::from_slice(&env.strata(&["ps", "--json"]).stdout).unwrap();
        let pid = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["record"]["container"]["pid"].as_i64());
        if let Some(pid) = pid {
            return pid as i32;
        }
        assert!(Instant::now() < deadline, "container {name} never showed as running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Cpus_allowed_list` of every thread of `pid`.
fn cpus_allowed_per_thread(pid: i32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
        })
        .collect()
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string())).unwrap_or_default()
}

/// The container's setup and its daemon share one CPU until exec (runner/src/affinity.rs); after
/// it, the command and every daemon thread have the caller's affinity back, and a caller's
/// narrower mask (taskset) is kept, never widened.
#[test]
fn the_container_and_its_daemon_get_the_callers_cpus_back_after_exec() {
    let Some(env) = Env::new() else { return };
    let image_path = image().to_str().unwrap();
    let ours = status_field(std::process::id() as i32, "Cpus_allowed_list:");
    for (taskset, expected) in [(None, ours.clone()), (Some("0"), "0".to_string())] {
        let name = unique("affinity");
        let mut command = env.command(&["run", "--rm", "--name", &name, image_path, "sleep", "30"]);
        if let Some(cpus) = taskset {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpus.parse().unwrap()).unwrap();
            // SAFETY: sched_setaffinity in the child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
                })
            };
        }
        let mut child = command.spawn().unwrap();
        let pid = container_pid(&env, &name);
        let daemon: i32 = status_field(pid, "PPid:").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = loop {
            let container = cpus_allowed_per_thread(pid);
            let daemon_threads = cpus_allowed_per_thread(daemon);
            let done = status_field(pid, "Name:") == "sleep"
                && container == [expected.clone()]
                && daemon_threads.len() > 1
                && daemon_threads.iter().all(|cpus| *cpus == expected);
            if done || Instant::now() > deadline {
                break (container, daemon_threads);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        assert_eq!(settled.0, std::slice::from_ref(&expected), "the command's CPUs (taskset {taskset:?})");
        assert!(
            settled.1.iter().all(|cpus| *cpus == expected),
            "the daemon's threads: {:?}, want {expected}",
            settled.1
        );
    }
}

#[test]
fn a_container_killed_with_sigkill_leaves_no_mount_and_no_cgroup() {
    let Some(env) = Env::new() else { return };
    let name = unique("killed");
    let image_path = image().to_str().unwrap();
    let mut child = env
        .command(&["run", "--rm", "--name", &name, "--pids-limit", "50", image_path, "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = container_pid(&env, &name);
    assert!(!cgroup_dirs_named(&name).is_empty(), "the container has a cgroup while it runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert!(cgroup_dirs_named(&name).is_empty(), "cgroup left: {:?}", cgroup_dirs_named(&name));
    assert!(!mount_visible_anywhere(&name));
    assert!(!env.run_dir(&name).exists());
}

#[test]
fn a_killed_supervisor_takes_the_container_down_and_rm_cleans_up() {
    let Some(env) = Env::new() else { return };
    let image_path = image().to_str().unwrap();
    // With a cgroup, and without one as another user (whose change of uid once cleared the
    // parent-death signal, so the container outlived its daemon).
    for options in [&["--memory", "64m"], &["-u", "app"]] {
        let name = unique("crash");
        let args: Vec<&str> = ["run", "--name", &name]
            .into_iter()
            .chain(options.iter().copied())
            .chain([image_path, "sleep", "30"])
            .collect();
        let mut child = env.command(&args).spawn().unwrap();
        let pid = container_pid(&env, &name);
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "{options:?}: the container outlived its supervisor");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ps = stdout(&env.strata(&["ps"]));
        assert!(ps.lines().any(|l| l.starts_with(&name) && l.contains("stale")), "{ps}");
        assert!(!mount_visible_anywhere(&name));
        assert_ok(&env.strata(&["rm", &name]));
        assert!(cgroup_dirs_named(&name).is_empty(), "cgroup left after rm: {:?}", cgroup_dirs_named(&name));
        assert!(!env.run_dir(&name).exists() && !env.data_dir(&name).exists());
    }
}

#[test]
fn user_workdir_env_and_read_only_root() {
    let Some(env) = Env::new() else { return };
    let out =
        assert_ok(&env.sh(&["-u", "app", "-w", "/work/dir", "-e", "GREETING=hi"], "id; pwd; echo $GREETING $HOME"));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["uid=1000(app) gid=1000(app) groups=10(wheel),1000(app)", "/work/dir", "hi /home/app"]
    );
    let out = assert_ok(&env.sh(&["-u", "4242:77"], "id -u; id -g"));
    assert_eq!(out, "4242\n77\n");

    let out = env.sh(&["--read-only", "--tmpfs", "/scratch"], "echo ok > /scratch/x && cat /scratch/x && touch /nope");
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "ok\n");
    assert!(stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
}

#[test]
fn the_process_is_confined() {
    let Some(env) = Env::new() else { return };
    // A descriptor strata run inherits (not close-on-exec) must not reach the container.
    let leaked = std::fs::File::open("/etc/hostname").unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let mut cmd = env.command(&["run", "--rm", image().to_str().unwrap(), "sh", "-c",
        "ls /proc/self/fd; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; stat -c %t:%T /proc/timer_list; ls /sys/firmware | wc -l; echo x > /proc/sys/kernel/hostname"]);
    // SAFETY: dup2 in the child before exec, onto a free descriptor number.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(leaked_fd, 42) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = stdout(&out);
    let fds: Vec<&str> = text.lines().take_while(|l| l.parse::<u32>().is_ok()).collect();
    assert!(fds.iter().all(|fd| ["0", "1", "2", "3"].contains(fd)), "descriptors in the container: {fds:?}");
    assert!(text.contains("CapEff:\t00000000a00425fb"), "Docker's set without CAP_MKNOD: {text}");
    assert!(text.contains("CapBnd:\t00000000a00425fb"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("1:3\n0\n"), "/proc/timer_list masked by /dev/null, /sys/firmware by an empty tmpfs: {text}");
    assert!(stderr(&out).contains("Read-only file system"), "/proc/sys is read-only: {}", stderr(&out));
}

/// runc's CVE-2024-21626: a working directory or a program path through `/proc/self/fd/N`, where
/// N is a descriptor of the host (the mountpoint, /dev/fuse) still open while the container's
/// process sets itself up, would start the program outside its root, and `cd ..` would then
/// reach the host's `/`. Every such path must fail to start or stay inside.
#[test]
fn a_workdir_or_program_through_a_host_descriptor_stays_inside() {
    let Some(env) = Env::new() else { return };
    let marker = tempfile::Builder::new().prefix("strata-host-marker").tempfile_in("/tmp").unwrap();
    let marker_name = marker.path().file_name().unwrap().to_str().unwrap().to_string();
    let escaped = format!("cd ../../../../../../../..; [ -e tmp/{marker_name} ] && echo ESCAPED; pwd");
    for fd in 3..=24 {
        let workdir = format!("/proc/self/fd/{fd}");
        let out = env.sh(&["-w", &workdir], &escaped);
        assert!(!stdout(&out).contains("ESCAPED"), "-w {workdir}: {}", stdout(&out));
        if out.status.success() {
            assert_eq!(stdout(&out), "/\n", "-w {workdir} started somewhere: {}", stderr(&out));
        } else {
            assert_eq!(out.status.code(), Some(125), "-w {workdir}: {}", stderr(&out));
            assert!(stderr(&out).contains(&workdir), "-w {workdir}: the error names it: {}", stderr(&out));
        }
        let program = format!("/proc/self/fd/{fd}/../../../../../../../../bin/sh");
        let out = env.run(&[], &[&program, "-c", &escaped]);
        assert!(!stdout(&out).contains("ESCAPED"), "{program}: {}", stdout(&out));
        assert!(!out.status.success(), "{program} ran: {}", stdout(&out));
    }
}

/// Without a device cgroup, nodes must be inert: the image's own (the rootfs is nodev) and any
/// the container would make (no CAP_MKNOD), while /dev's work.
#[test]
fn device_nodes_of_the_image_or_made_inside_open_nothing() {
    let Some(env) = Env::new() else { return };
    let out = env.sh(
        &[],
        "echo x > /dev/null && echo dev-null-works; \
         echo x > /app/null-device || echo image-node-refused; \
         mknod /dev/disk b 8 0 || echo mknod-dev-refused; \
         mknod /tmp/disk b 8 0 || echo mknod-tmp-refused; \
         mkfifo /tmp/fifo && echo fifo-made",
    );
    let text = stdout(&out);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["dev-null-works", "image-node-refused", "mknod-dev-refused", "mknod-tmp-refused", "fifo-made"],
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("Permission denied"), "the image's node: {}", stderr(&out));
    assert!(stderr(&out).contains("Operation not permitted"), "mknod: {}", stderr(&out));
}

#[test]
fn a_tty_is_a_terminal_inside() {
    let Some(env) = Env::new() else { return };
    let out =
        assert_ok(&env.sh(&["-t"], "[ -t 0 ] && [ -t 1 ] && echo terminal; echo $TERM; ls -l /dev/console | cut -c1"));
    assert_eq!(out.replace('\r', ""), "terminal\nxterm\nc\n");
    let out = assert_ok(&env.sh(&[], "[ -t 1 ] || echo no-terminal"));
    assert_eq!(out, "no-terminal\n");
}

#[test]
fn bad_options_are_clear_errors_and_leave_nothing() {
    let Some(env) = Env::new() else { return };
    let image_path = image().to_str().unwrap();
    for (args, expected) in [
        (vec!["run", "--memory", "lots", image_path], "lots"),
        (vec!["run", "-v", "relative:/x", image_path], "absolute"),
        (vec!["run", "-v", "/no/such/dir:/x", image_path], "does not exist"),
        (vec!["run", "--name", "../evil", image_path], "name"),
        (vec!["run", "/no/such/image"], "/no/such/image"),
    ] {
        let out = env.strata(&args);
        // 2: a usage error found by the argument parser; 125: strata run refusing (Docker's code).
        assert!(matches!(out.status.code(), Some(2 | 125)), "{args:?}: {:?} {}", out.status, stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    // Failures after the container's state was claimed: a volume source that is a directory over
    // a file of the image, and a command that is not there. Neither leaves anything with --rm.
    let host = tempfile::tempdir().unwrap();
    let over_file = format!("{}:/app/hello.txt", host.path().display());
    let out = env.strata(&["run", "--rm", "-v", &over_file, image_path, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("/app/hello.txt"), "{}", stderr(&out));
    assert_eq!(env.strata(&["run", "--rm", image_path, "missing"]).status.code(), Some(127));
    let listed = std::fs::read_dir(env.dirs.path().join("run/containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(listed, 0, "a failed start left state behind");
    let data = std::fs::read_dir(env.dirs.path().join("data/containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(data, 0, "a failed start left an upper behind");
}

#[test]
fn stdin_reaches_the_container_only_with_interactive() {
    let Some(env) = Env::new() else { return };
    let image_path = image().to_str().unwrap();
    let feed = |args: &[&str]| {
        let mut child = env.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"line from the host\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = feed(&["run", "--rm", "-i", image_path, "cat"]);
    assert_eq!(assert_ok(&out), "line from the host\n");
    let out = feed(&["run", "--rm", image_path, "cat"]);
    assert_eq!(assert_ok(&out), "", "without -i the container reads /dev/null");
}

#[test]
fn limits_land_in_the_containers_cgroup_and_its_namespace_hides_the_path() {
    let Some(env) = Env::new() else { return };
    let name = unique("limits");
    let image_path = image().to_str().unwrap();
    let limits = ["--memory", "32m", "--memory-swap", "64m", "--pids-limit", "20", "--cpus", "0.5"];
    let mut args = vec!["run", "--rm", "--name", &name];
    args.extend(limits);
    args.extend([image_path, "sh", "-c", "cat /proc/self/cgroup; sleep 5"]);
    let child = env.command(&args).stdout(Stdio::piped()).spawn().unwrap();
    container_pid(&env, &name);
    // The v1 hierarchy of a controller: `cpu`, or `cpu,cpuacct` where they are mounted together.
    let read = |controller: &str, file: &str| {
        let hierarchy = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .find(|h| h.file_name().to_string_lossy().split(',').any(|c| c == controller))
            .unwrap_or_else(|| panic!("no v1 hierarchy with {controller} (this test covers hybrid and v1 hosts)"));
        let path = hierarchy.path().join("strata").join(&name).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), (32u64 << 20).to_string());
    assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(read("pids", "pids.max"), "20");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    let out = child.wait_with_output().unwrap();
    let text = assert_ok(&out);
    for controller in ["memory", "pids", "cpu"] {
        let line = text.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == controller)));
        assert_eq!(line.map(|l| l.rsplit(':').next().unwrap()), Some("/"), "{controller} in {text}");
    }
    assert!(cgroup_dirs_named(&name).is_empty());
}

/// As root, the files containers open read-only are served from one host copy per layer file in
/// the cache (FUSE passthrough): every container of the image shares its page cache. The copy
/// holds exactly the file's bytes; a file open for reading that way cannot be rewritten in place
/// until it is closed (ETXTBSY), after which the write copies it up as usual, the image untouched.
#[test]
fn files_read_by_containers_are_shared_host_copies() {
    let Some(env) = Env::new() else { return };
    let private_cache = env.dirs.path().join("cache");
    let run = |script: &str| {
        let image = image().to_str().unwrap();
        env.command(&["run", "--rm", image, "sh", "-c", script])
            .env("STRATA_CACHE", &private_cache)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let passwd = assert_ok(&run("cat /etc/passwd"));
    let copies: Vec<PathBuf> = walk_files(&private_cache.join("files"));
    assert!(!copies.is_empty(), "no shared copies under {}", private_cache.display());
    let contents: Vec<Vec<u8>> = copies.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(contents.iter().any(|c| c == passwd.as_bytes()), "a copy of /etc/passwd holds its bytes");
    let busybox = std::fs::read(std::fs::canonicalize(which("busybox")).unwrap()).unwrap();
    assert!(contents.contains(&busybox), "the executable ran from a shared copy");
    for copy in &copies {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(copy).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o444, "{} is read-only", copy.display());
    }

    let out = run("exec 3</etc/passwd; echo more >> /etc/passwd");
    assert!(!out.status.success() && stderr(&out).contains("busy"), "rewriting while read: {}", stderr(&out));
    let out = assert_ok(&run("echo more >> /etc/passwd && tail -n 1 /etc/passwd"));
    assert_eq!(out.trim(), "more");
    assert_eq!(assert_ok(&run("cat /etc/passwd")), passwd, "the image is unchanged");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
