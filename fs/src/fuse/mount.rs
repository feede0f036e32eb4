//! Mount lifecycle: mount a strata filesystem (read-only `ImageFs` or writable `OverlayFs`) with fuser, serve it on several threads, report
//! readiness, unmount cleanly on SIGINT/SIGTERM/SIGHUP, and the background (daemon) mode that
//! returns only once the mount is usable. Every syscall of the mount's life is here.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use fuser::{Config, Filesystem, MountOption, Session, SessionACL};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, setsid, ForkResult};

use crate::error::{Error, Result};

/// The filesystem subtype strata asks for (`fuse.strata` where the mount path supports subtypes).
pub const SUBTYPE: &str = "strata";
/// Prefix of the mount source strata mounts show in /proc/mounts (`strata:<image>`): fuser's
/// direct mount as root drops the subtype, so the source is what identifies a strata mount.
pub const SOURCE_PREFIX: &str = "strata:";

#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Shown as the mount's source in /proc/mounts.
    pub source: String,
    /// Let users other than the mounter use the mount (root only, or `user_allow_other`).
    pub allow_other: bool,
    /// Honour device nodes (what the mounter must decide: a container's rootfs must not, lest an
    /// image's node open a host disk).
    pub devices: bool,
    /// Honour setuid and setgid bits and file capabilities (a container rootfs needs them;
    /// inspection does not).
    pub setuid: bool,
    /// Threads serving requests.
    pub threads: usize,
    /// Mount read-write (a writable overlay) rather than read-only.
    pub writable: bool,
}

impl MountConfig {
    fn fuser_config(&self) -> Config {
        let mut options = vec![
            MountOption::FSName(format!("{SOURCE_PREFIX}{}", self.source)),
            MountOption::Subtype(SUBTYPE.into()),
            if self.writable { MountOption::RW } else { MountOption::RO },
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        options.push(if self.devices { MountOption::Dev } else { MountOption::NoDev });
        options.push(if self.setuid { MountOption::Suid } else { MountOption::NoSuid });
        let mut config = Config::default();
        config.mount_options = options;
        config.acl = if self.allow_other { SessionACL::All } else { SessionACL::Owner };
        // A writable mount needs a second thread: a data change may wait for a RELEASE in flight.
        config.n_threads = Some(self.threads.max(if self.writable { 2 } else { 1 }));
        config.clone_fd = true;
        config
    }
}

/// A mounted filesystem that does not serve yet: the kernel queues requests until [`Mounted::run`].
/// Lets a caller do work between mounting and serving (the runner forks the container there,
/// while the process is still single-threaded).
pub struct Mounted<FS: Filesystem> {
    session: Session<FS>,
    mountpoint: PathBuf,
    /// The directory under the mount, share-locked for as long as this daemon serves it, so that
    /// `strata umount` can wait for the daemon's end ([`wait_for_daemon`]).
    _serving: Option<Flock<File>>,
}

/// Mounts `fs` on `mountpoint` (which must be an existing directory) without serving it yet.
pub fn mount<FS: Filesystem>(fs: FS, mountpoint: &Path, config: &MountConfig) -> Result<Mounted<FS>> {
    check_mountpoint(mountpoint)?;
    // fuser gives each serving thread a zeroed 16 MiB request buffer. Once large blocks have been
    // freed (building an index does), glibc raises its mmap threshold and serves such a buffer
    // from the heap, zeroing and keeping all of it resident; a fixed threshold keeps it a lazily
    // mapped zero region, of which a request touches only what it carries.
    // SAFETY: mallopt with an integer setting.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    // Resolved before mounting: afterwards a lookup would wait for a session not yet served.
    let canonical = std::fs::canonicalize(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    let serving = File::open(&canonical).ok().and_then(|dir| Flock::lock(dir, FlockArg::LockSharedNonblock).ok());
    match Session::new(fs, mountpoint, &config.fuser_config()) {
        Ok(session) => {
            raise_readahead(&canonical);
            let mode = if config.writable { "writable" } else { "read-only" };
            tracing::info!("mounted {} on {} ({mode})", config.source, canonical.display());
            Ok(Mounted { session, mountpoint: mountpoint.to_path_buf(), _serving: serving })
        }
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM) {
                " (is /dev/fuse accessible and fusermount3 installed? run scripts/setup.sh)"
            } else {
                ""
            };
            Err(Error::Mount { path: mountpoint.to_path_buf(), detail: format!("{e}{hint}") })
        }
    }
}

impl<FS: Filesystem> Mounted<FS> {
    /// A handle that unmounts from another thread; `run` returns once it has.
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests on the configured threads until the filesystem is unmounted.
    pub fn run(self) -> Result<()> {
        raise_open_file_limit();
        let path = self.mountpoint;
        let outcome = self.session.run();
        match &outcome {
            Ok(()) => tracing::info!("{} unmounted", path.display()),
            Err(e) => tracing::error!("serving {} failed: {e}", path.display()),
        }
        outcome.map_err(|e| Error::Mount { path, detail: format!("serving requests: {e}") })
    }
}

/// Lets the daemon hold as many descriptors as it may: every file open through the mount keeps
/// one open here, and the usual soft limit (1024) would fail opens of a container with more files
/// open (EMFILE). Raised when serving starts, after the runner forked the container, which keeps
/// the limits it was given. Root also lifts the hard limit to the kernel's `fs.nr_open`.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|n| n.trim().parse().ok());
    let raised =
        most.filter(|&most| most > hard).is_some_and(|most| setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok());
    if !raised && soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the open file limit from {soft} to {hard}: {e}");
        }
    }
}

/// Mounts and serves in this process until the mount goes away. `ready` is called once, with
/// the outcome of mounting, before any request is served.
pub fn serve(
    fs: impl Filesystem + 'static,
    mountpoint: &Path,
    config: &MountConfig,
    ready: impl FnOnce(Result<(), &Error>),
) -> Result<()> {
    let mount_error = |detail: String| Error::Mount { path: mountpoint.to_path_buf(), detail };
    // Block the stop signals before fuser starts its threads, so only the waiter below sees them.
    let stop = stop_signals();
    stop.thread_block().map_err(|e| mount_error(format!("blocking signals: {e}")))?;
    let mut mounted = match mount(fs, mountpoint, config) {
        Ok(m) => m,
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    let mut unmounter = mounted.unmounter();
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || {
            if let Ok(signal) = stop.wait() {
                tracing::info!("{signal}: unmounting");
                let _ = unmounter.unmount();
            }
        })
        .map_err(|e| mount_error(format!("starting the signal thread: {e}")))?;
    ready(Ok(()));
    release_freed_memory();
    mounted.run()
}

/// Returns free heap memory to the kernel. Loading the index and merging the stack free more
/// than they keep (decoded bytes, the merge's path map): a daemon calls this once set up, before
/// serving for the mount's lifetime (the daemon of a 30k-file image: 15 MiB resident before, 10
/// after). Not on a path that waits for it: it walks the whole heap.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only hands free pages of the heap back.
    unsafe { libc::malloc_trim(0) };
}

/// The kernel caps a FUSE mount's readahead at the default 128 KiB whatever the daemon asks;
/// the mount's backing device takes a larger window from sysfs (root only; best effort). Fewer,
/// larger READ requests: a cold exec of a 2 MB binary or a sequential read makes fewer round trips.
fn raise_readahead(mountpoint: &Path) {
    if let Some((major, minor)) = device_without_request(mountpoint) {
        let _ = std::fs::write(
            format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
            (super::MAX_READ / 1024).to_string(),
        );
    }
}

/// The device number of the filesystem mounted at `mountpoint`, from the kernel's cached
/// attributes (AT_STATX_DONT_SYNC): a plain stat would send a GETATTR to a session not yet served.
fn device_without_request(mountpoint: &Path) -> Option<(u32, u32)> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statx into a zeroed buffer we own, with a NUL-terminated path.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW;
    let rc = unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), flags, libc::STATX_TYPE, &mut st) };
    (rc == 0).then_some((st.stx_dev_major, st.stx_dev_minor))
}

/// Fails unless `mountpoint` is an existing directory: worth checking before indexing an image.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let detail = match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "not a directory".to_string(),
        Err(e) => format!("{e}; create the directory first"),
    };
    Err(Error::Mount { path: mountpoint.to_path_buf(), detail })
}

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Forks a daemon that mounts and serves; returns once the mount is usable (or with the
/// daemon's mount error). Call before starting any thread.
pub fn serve_in_background(fs: impl Filesystem + 'static, mountpoint: &Path, config: &MountConfig) -> Result<()> {
    // The daemon leaves the caller's working directory, so a relative mountpoint must be resolved now.
    let mountpoint = &std::path::absolute(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    let mount_error = |detail: String| Error::Mount { path: mountpoint.to_path_buf(), detail };
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| mount_error(format!("pipe: {e}")))?;
    // SAFETY: strata calls this before it starts threads, so the child has no lock held elsewhere.
    match unsafe { fork() }.map_err(|e| mount_error(format!("fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut report = String::new();
            let _ = File::from(read_end).read_to_string(&mut report);
            match report.as_str() {
                "ok" => Ok(()),
                "" => {
                    let status = nix::sys::wait::waitpid(child, None);
                    Err(mount_error(format!("the mount daemon exited before the mount was ready: {status:?}")))
                }
                detail => Err(mount_error(detail.to_string())),
            }
        }
        ForkResult::Child => {
            drop(read_end);
            let _ = setsid();
            let _ = std::env::set_current_dir("/");
            let pipe = File::from(write_end);
            // The closure owns the pipe, so it closes as soon as readiness is reported.
            let outcome = serve(fs, mountpoint, config, move |ready| report_readiness(pipe, ready));
            std::process::exit(if outcome.is_ok() { 0 } else { 1 });
        }
    }
}

/// Tells the waiting parent "ok" or the mount error, then detaches from its terminal.
fn report_readiness(mut pipe: File, ready: Result<(), &Error>) {
    match ready {
        Ok(()) => {
            let _ = pipe.write_all(b"ok");
            drop(pipe);
            detach_stdio();
        }
        Err(e) => {
            let detail = match e {
                Error::Mount { detail, .. } => detail.clone(),
                other => other.to_string(),
            };
            let _ = pipe.write_all(detail.as_bytes());
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null, so the daemon holds no terminal.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Unmounts a strata mount: umount2 as root, fusermount3 otherwise. `lazy` detaches a busy mount.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
    if !is_strata_mount(&mountpoint) {
        return Err(Error::Mount { path: mountpoint, detail: "not a strata mount (see /proc/self/mountinfo)".into() });
    }
    let outcome = if nix::unistd::geteuid().is_root() {
        let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
        nix::mount::umount2(&mountpoint, flags).map_err(|e| match e {
            nix::errno::Errno::EBUSY => "busy: a process still uses it; close it or pass --lazy".to_string(),
            other => other.to_string(),
        })
    } else {
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg(&mountpoint).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(e) => Err(format!("running fusermount3: {e}")),
        }
    };
    outcome.map_err(|detail| Error::Mount { path: mountpoint.clone(), detail })?;
    if !lazy {
        wait_for_daemon(&mountpoint);
    }
    Ok(())
}

/// How long `strata umount` waits for the daemon of the mount it removed to end.
const DAEMON_END_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until no daemon share-locks the directory under an unmounted mountpoint (see
/// [`Mounted`]): the daemon has ended and closed every file it had open, so whatever runs next
/// (a new mount over the same upper, a removal of it) does not race with it. Gives up after
/// [`DAEMON_END_WAIT`] (a daemon of a later mount on the same directory holds it too).
fn wait_for_daemon(dir: &Path) {
    let Ok(mut dir_file) = File::open(dir) else { return };
    let deadline = std::time::Instant::now() + DAEMON_END_WAIT;
    loop {
        match Flock::lock(dir_file, FlockArg::LockExclusiveNonblock) {
            Ok(_unlocked_on_drop) => return,
            Err((file, _)) if std::time::Instant::now() < deadline => {
                dir_file = file;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
}

/// True when /proc/self/mountinfo lists a strata FUSE mount at `mountpoint`.
pub fn is_strata_mount(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let found = crate::mountinfo::parse(&info).any(|m| {
        m.mount_point == mountpoint
            && (m.fstype == "fuse" || m.fstype.starts_with("fuse."))
            && m.source.starts_with(SOURCE_PREFIX)
    });
    found
}
