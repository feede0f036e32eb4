//! The container's root filesystem around the strata mount: /proc, a minimal /dev, /sys, the
//! OCI default masked and read-only paths, /etc/hosts|hostname|resolv.conf, volumes and tmpfs
//! mounts, then `pivot_root`. The plan is pure data computed from the [`Spec`] (unit-tested);
//! [`apply`] only performs it, resolving every container path through [`crate::resolve`].
//! Runs inside the container's mount namespace, before the process changes identity.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::error::{Error, Result};
use crate::resolve::{fd_link, is_directory, Root, TargetKind};
use crate::spec::{Network, Spec};

/// Paths the OCI runtime spec's defaults (runc, Docker) hide from containers.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the defaults leave visible but read-only.
pub const READ_ONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Device nodes of the minimal /dev: (name, major, minor).
pub const DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/core", "/proc/kcore"),
];

/// One step of setting up the root filesystem.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A new filesystem instance (proc, tmpfs, devpts, mqueue, sysfs) on a container directory.
    Mount {
        fstype: &'static str,
        target: String,
        flags: MsFlags,
        data: String,
    },
    /// A host path bind-mounted onto a container path, created (as a directory or a file, like the
    /// source) when missing.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A character device node created with mknod (allowed to real root only).
    Device {
        target: String,
        major: u64,
        minor: u64,
    },
    Symlink {
        target: String,
        link: String,
    },
    /// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory. Absent: skipped.
    Mask(String),
    /// Makes a path read-only in place. Absent: skipped.
    ReadOnly(String),
    /// The whole root read-only (`--read-only`), after everything else is mounted on it.
    ReadOnlyRoot,
}

/// Host-side inputs of the plan that are not in the spec.
pub struct PlanInputs<'a> {
    /// Directory holding the generated `hosts`, `hostname` and `resolv.conf`.
    pub etc_files: &'a Path,
    /// The pty slave of `-t`, shown as /dev/console.
    pub console: Option<&'a Path>,
}

/// The steps, in order, that build the container's filesystem view.
pub fn plan(spec: &Spec, inputs: &PlanInputs) -> Vec<Step> {
    let mount = |fstype, target: &str, flags, data: &str| Step::Mount {
        fstype,
        target: target.into(),
        flags,
        data: data.into(),
    };
    let bind = |source: PathBuf, target: &str, read_only| Step::Bind { source, target: target.into(), read_only };
    let no_all = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut steps = vec![
        mount("proc", "/proc", no_all, ""),
        mount("tmpfs", "/dev", MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, "mode=755,size=65536k"),
    ];
    for &(name, major, minor) in DEVICES {
        let target = format!("/dev/{name}");
        // A user namespace may not create device nodes: bind the host's instead (as rootless runc does).
        steps.push(if spec.rootless {
            bind(PathBuf::from(&target), &target, false)
        } else {
            Step::Device { target, major, minor }
        });
    }
    // gid 5 (tty) exists only where the host's ids are mapped as they are.
    let pts_data =
        if spec.rootless { "newinstance,ptmxmode=0666,mode=0620" } else { "newinstance,ptmxmode=0666,mode=0620,gid=5" };
    steps.push(mount("devpts", "/dev/pts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, pts_data));
    steps.push(mount("tmpfs", "/dev/shm", no_all, "mode=1777,size=65536k"));
    steps.push(mount("mqueue", "/dev/mqueue", no_all, ""));
    for &(link, target) in DEV_SYMLINKS {
        steps.push(Step::Symlink { target: target.into(), link: link.into() });
    }
    if let Some(console) = inputs.console {
        steps.push(bind(console.to_path_buf(), "/dev/console", false));
    }
    // sysfs may only be mounted by the owner of the network namespace: a rootless container
    // sharing the host's network gets the host's /sys, read-only, instead.
    if spec.rootless && spec.network == Network::Host {
        steps.push(bind("/sys".into(), "/sys", true));
    } else {
        steps.push(mount("sysfs", "/sys", no_all | MsFlags::MS_RDONLY, ""));
    }
    for name in ["hosts", "hostname", "resolv.conf"] {
        steps.push(bind(inputs.etc_files.join(name), &format!("/etc/{name}"), false));
    }
    for volume in &spec.volumes {
        steps.push(bind(volume.source.clone(), &volume.target, volume.read_only));
    }
    for path in &spec.tmpfs {
        steps.push(mount("tmpfs", path, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777"));
    }
    steps.extend(MASKED_PATHS.iter().map(|p| Step::Mask(p.to_string())));
    steps.extend(READ_ONLY_PATHS.iter().map(|p| Step::ReadOnly(p.to_string())));
    if spec.read_only {
        steps.push(Step::ReadOnlyRoot);
    }
    steps
}

/// Performs `steps` on the root at `root`.
pub fn apply(root: &Root, steps: &[Step]) -> Result<()> {
    for step in steps {
        apply_step(root, step)?;
    }
    Ok(())
}

fn apply_step(root: &Root, step: &Step) -> Result<()> {
    let failed =
        |what: &str, target: &str, e: nix::Error| Error::sys(format!("{what} on {target} in the container"), e);
    match step {
        Step::Mount { fstype, target, flags, data } => {
            let fd = root.ensure(target, TargetKind::Dir)?;
            mount(Some(*fstype), &fd_link(&fd), Some(*fstype), *flags, Some(data.as_str()))
                .map_err(|e| failed(&format!("mounting {fstype}"), target, e))
        }
        Step::Bind { source, target, read_only } => {
            let is_dir = std::fs::metadata(source).map_err(|e| Error::io(source, e))?.is_dir();
            let kind = if is_dir { TargetKind::Dir } else { TargetKind::File };
            let fd = root.ensure(target, kind)?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(source.as_path()), &fd_link(&fd), None::<&str>, flags, None::<&str>)
                .map_err(|e| failed(&format!("bind-mounting {}", source.display()), target, e))?;
            if *read_only {
                // The descriptor still names the covered directory: reopen to reach the new mount.
                let fd = root.ensure(target, kind)?;
                make_tree_read_only(&fd).map_err(|e| failed("making read-only", target, e))?;
            }
            Ok(())
        }
        Step::Device { target, major, minor } => {
            let fd = root.ensure("/dev", TargetKind::Dir)?;
            let name = target.trim_start_matches("/dev/");
            let path = fd_link(&fd).join(name);
            mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(*major, *minor))
                .map_err(|e| failed("creating the device node", target, e))?;
            // mknod's mode is filtered by the umask; a device node must be usable by every user.
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &path,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| failed("chmod", target, e))
        }
        Step::Symlink { target, link } => {
            let (parent, name) = link.rsplit_once('/').expect("symlink paths are absolute");
            let fd = root.ensure(if parent.is_empty() { "/" } else { parent }, TargetKind::Dir)?;
            match std::os::unix::fs::symlink(target, fd_link(&fd).join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io(link.clone(), e)),
                _ => Ok(()),
            }
        }
        Step::Mask(path) => {
            let Some(fd) = root.find(path)? else { return Ok(()) };
            let is_dir = is_directory(&fd).unwrap_or(false);
            if is_dir {
                mount(Some("tmpfs"), &fd_link(&fd), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
            } else {
                let null =
                    root.find("/dev/null")?.ok_or_else(|| Error::invalid("/dev/null missing in the container"))?;
                mount(Some(&fd_link(&null)), &fd_link(&fd), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            }
            .map_err(|e| failed("masking", path, e))
        }
        Step::ReadOnly(path) => {
            let Some(fd) = root.find(path)? else { return Ok(()) };
            let link = fd_link(&fd);
            mount(Some(&link), &link, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| failed("bind-mounting", path, e))?;
            let fd = root.find(path)?.ok_or_else(|| Error::invalid(format!("{path} vanished")))?;
            make_tree_read_only(&fd).map_err(|e| failed("making read-only", path, e))
        }
        Step::ReadOnlyRoot => remount_read_only(&root.find("/")?.expect("the root exists"))
            .map_err(|e| failed("making read-only", "/", e)),
    }
}

/// Makes the mount `fd` is on read-only, and every mount below it: a bind (MS_REC brought the
/// source's submounts along) in one call (Linux 5.12+), where a remount changes only the top one,
/// leaving `/srv/db` writable under `-v /srv:/data:ro`.
fn make_tree_read_only(fd: &OwnedFd) -> nix::Result<()> {
    match strata_fs::mount_attr::set(fd.as_fd(), libc::MOUNT_ATTR_RDONLY, 0, true) {
        // Before Linux 5.12: the top mount only.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => remount_read_only(fd),
        other => other.map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    }
}

/// Remounts the mount `fd` is on read-only, keeping its other flags: in a user namespace the
/// kernel refuses a remount that would drop a locked nosuid/nodev/noexec. Only that mount: the
/// read-only root keeps its /dev, /proc, tmpfs and volumes as they are.
fn remount_read_only(fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    let current = fstatvfs(fd.as_fd())?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, &fd_link(fd), None::<&str>, flags, None::<&str>)
}

/// Makes `new_root` the process's `/` and detaches the old root entirely, so nothing of the
/// host's tree stays reachable (runc's `pivot_root(".", ".")` form: no directory needed for the old root).
pub fn pivot_root(new_root: &Path) -> Result<()> {
    let sys = |what: &str, e: nix::Error| Error::sys(format!("{what} ({})", new_root.display()), e);
    nix::unistd::chdir(new_root).map_err(|e| sys("chdir to the new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| sys("pivot_root", e))?;
    // The old root is now mounted on top of the new one: detach it (and everything under it).
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| sys("making the old root a slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| sys("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| sys("chdir /", e))
}

/// The contents of the generated /etc files: (name, text).
pub fn etc_files(hostname: &str, network: Network, host_resolv_conf: Option<&str>) -> Vec<(&'static str, String)> {
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n");
    let resolv = match (network, host_resolv_conf) {
        // Without a network, name servers would only produce timeouts.
        (Network::None, _) | (Network::Host, None) => String::new(),
        (Network::Host, Some(text)) => text.to_string(),
    };
    vec![("hosts", hosts), ("hostname", format!("{hostname}\n")), ("resolv.conf", resolv)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RunOptions;
    use strata_fs::image::ImageConfig;

    fn spec(options: RunOptions, root: bool) -> Spec {
        let config = ImageConfig { cmd: Some(vec!["/bin/sh".into()]), ..Default::default() };
        Spec::build(&config, &options, "c", |_| None, root).unwrap()
    }

    fn inputs() -> PlanInputs<'static> {
        PlanInputs { etc_files: Path::new("/run/strata/containers/c"), console: None }
    }

    fn position(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    #[test]
    fn root_creates_devices_rootless_binds_them() {
        let steps = plan(&spec(RunOptions::default(), true), &inputs());
        assert!(steps.contains(&Step::Device { target: "/dev/null".into(), major: 1, minor: 3 }));
        let steps = plan(&spec(RunOptions::default(), false), &inputs());
        assert!(steps.iter().all(|s| !matches!(s, Step::Device { .. })));
        assert!(steps.contains(&Step::Bind {
            source: "/dev/null".into(),
            target: "/dev/null".into(),
            read_only: false
        }));
    }

    #[test]
    fn sysfs_only_where_the_network_namespace_is_ours() {
        let host_net = RunOptions { network: Network::Host, ..Default::default() };
        let is_sysfs = |s: &Step| matches!(s, Step::Mount { fstype: "sysfs", .. });
        assert!(plan(&spec(host_net.clone(), true), &inputs()).iter().any(is_sysfs));
        assert!(plan(&spec(RunOptions::default(), false), &inputs()).iter().any(is_sysfs));
        let rootless_host = plan(&spec(host_net, false), &inputs());
        assert!(!rootless_host.iter().any(is_sysfs));
        assert!(rootless_host
            .iter()
            .any(|s| matches!(s, Step::Bind { target, read_only: true, .. } if target == "/sys")));
    }

    #[test]
    fn order_proc_before_masks_volumes_before_read_only_root() {
        let options = RunOptions { volumes: vec!["/srv:/data:ro".into()], read_only: true, ..Default::default() };
        let steps = plan(&spec(options, true), &inputs());
        let proc = position(&steps, |s| matches!(s, Step::Mount { fstype: "proc", .. }));
        let kcore = position(&steps, |s| *s == Step::Mask("/proc/kcore".into()));
        let volume = position(&steps, |s| matches!(s, Step::Bind { target, .. } if target == "/data"));
        assert!(proc < kcore && volume < steps.len() - 1);
        assert_eq!(steps.last(), Some(&Step::ReadOnlyRoot));
        assert!(steps.contains(&Step::ReadOnly("/proc/sys".into())));
    }

    #[test]
    fn console_only_with_a_tty() {
        let is_console = |s: &Step| matches!(s, Step::Bind { target, .. } if target == "/dev/console");
        assert!(!plan(&spec(RunOptions::default(), true), &inputs()).iter().any(is_console));
        let with_tty = PlanInputs { console: Some(Path::new("/dev/pts/7")), ..inputs() };
        assert!(plan(&spec(RunOptions::default(), true), &with_tty).iter().any(is_console));
    }

    #[test]
    fn etc_files_name_the_host() {
        let files = etc_files("box", Network::None, Some("nameserver 1.1.1.1\n"));
        assert!(files[0].1.contains("127.0.1.1\tbox"));
        assert_eq!(files[1].1, "box\n");
        assert_eq!(files[2].1, "", "no name servers without a network");
        assert_eq!(etc_files("b", Network::Host, Some("nameserver 9.9.9.9\n"))[2].1, "nameserver 9.9.9.9\n");
    }
}
