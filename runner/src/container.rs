//! One container's life, across three processes:
//!
//! ```text
//! strata run (supervisor, host namespaces)      state record, cgroup, pty relay, signal forwarding, clean-up
//!  └─ filesystem daemon (own mount ns [+ user ns])  mounts and serves the rootfs (strata FUSE overlay)
//!      └─ container (new mount, pid, uts, ipc, [net], cgroup ns)  rootfs set-up, pivot_root, exec
//! ```
//!
//! The rootfs mount exists only inside the daemon's private mount namespace and the container's
//! copy of it, so whatever way the container ends — even kill -9 — the kernel drops the mount with
//! the last process of those namespaces; the supervisor removes the cgroup and the state. The
//! daemon is one per container: it dies with its container and shares the image's layer index
//! (read from the cache) with every other container through the page cache.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use strata_fs::fuse::mount::{self, MountConfig};
use strata_fs::fuse::overlay_fs::OverlayFs;
use strata_fs::layer::cache::Cache;
use strata_fs::overlay::Lower;

use crate::affinity::{self, Original};
use crate::cgroup::{self, Cgroup};
use crate::error::{Error, IoContext, Result};
use crate::idmap;
use crate::process::{self, exit_code, StartError};
use crate::resolve::Root;
use crate::rootfs::{self, PlanInputs, Step};
use crate::spec::{Network, Spec};
use crate::state::{ProcessId, Record, StateDirs, Status};
use crate::tty;

/// What to start.
pub struct Launch {
    pub name: String,
    /// How the user named the image, for `strata ps`.
    pub image: String,
    pub lower: Lower,
    /// The cache the image's layers were loaded from: it also holds the shared copies of the
    /// files containers open (`OverlayFs::with_shared_files`).
    pub cache: Cache,
    pub spec: Spec,
    /// Delete the container's state and upper directory when it exits (`--rm`).
    pub remove: bool,
}

/// Signals `strata run` passes on to the container (SIGWINCH resizes the pty instead).
const FORWARDED: &[Signal] =
    &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Filesystem threads per container: requests are short and a busy container is one process tree.
const DAEMON_THREADS: usize = 2;

/// Runs the container to its end and returns its exit code (128 + signal when killed).
pub fn run(launch: Launch, dirs: &StateDirs) -> Result<i32> {
    let record = Record {
        name: launch.name.clone(),
        image: launch.image.clone(),
        command: launch.spec.args.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        rootless: launch.spec.rootless,
        remove_on_exit: launch.remove,
        supervisor: Some(ProcessId::current()?),
        container: None,
        cgroup_dirs: Vec::new(),
        status: Status::Creating,
    };
    dirs.claim(&record)?;
    let mut supervisor = Supervisor { dirs, record, cgroup: None, daemon: None, daemon_done: false, started: false };
    let remove = launch.remove;
    let outcome = supervisor.start_and_wait(launch);
    let cleaned = supervisor.clean_up(&outcome, remove);
    let code = outcome?;
    cleaned?;
    Ok(code)
}

struct Supervisor<'a> {
    dirs: &'a StateDirs,
    record: Record,
    cgroup: Option<Cgroup>,
    daemon: Option<Pid>,
    /// The daemon reported the container's exit: it writes nothing more and is ending.
    daemon_done: bool,
    /// The container's program was exec'd: its upper is worth keeping.
    started: bool,
}

/// Descriptors a child needs, passed through fork.
struct Channels {
    /// Daemon → supervisor: `userns`, `pid N`, `exit N` or `error MSG` lines.
    status: (OwnedFd, OwnedFd),
    /// Supervisor → daemon: the id maps are written (rootless).
    maps_done: (OwnedFd, OwnedFd),
    /// Container → supervisor: `CODE MESSAGE` if starting failed; EOF at exec (close-on-exec).
    start_error: (OwnedFd, OwnedFd),
}

impl Supervisor<'_> {
    fn start_and_wait(&mut self, launch: Launch) -> Result<i32> {
        let Launch { name, image, lower, cache, spec, remove } = launch;
        let (spec, name) = (&spec, &name);
        // No limits, no cgroup: the pid namespace already ends every process with the container, and
        // moving a process between cgroups costs milliseconds on v1 (an RCU grace period).
        let placement = match spec.limits.is_empty() {
            true => cgroup::Placement { cgroup: None, warnings: Vec::new() },
            false => cgroup::create(name, &spec.limits, spec.rootless)?,
        };
        for warning in &placement.warnings {
            eprintln!("strata: warning: {warning}");
        }
        // Owned (removed by clean-up) before the record naming it is saved, which may fail.
        self.cgroup = placement.cgroup;
        if let Some(cg) = &self.cgroup {
            self.record.cgroup_dirs = cg.dirs().to_vec();
            self.dirs.save(&self.record)?;
        }
        let run_dir = self.dirs.run_dir(name);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
        for (file, text) in rootfs::etc_files(&spec.hostname, spec.network, host_resolv.as_deref()) {
            std::fs::write(run_dir.join(file), text).at(run_dir.join(file))?;
        }
        let pty = if spec.tty { Some(tty::open(Some(std::io::stdin().as_fd()))?) } else { None };
        let console = pty.as_ref().map(tty::slave_path).transpose()?;
        let steps = rootfs::plan(spec, &PlanInputs { etc_files: &run_dir, console: console.as_deref() });
        let channels = Channels { status: pipe()?, maps_done: pipe()?, start_error: pipe()? };

        let mut blocked = SigSet::empty();
        for &s in FORWARDED.iter().chain(&[Signal::SIGWINCH, Signal::SIGCHLD]) {
            blocked.add(s);
        }
        blocked.thread_block().map_err(|e| Error::sys("blocking signals", e))?;
        // Non-blocking: the loop drains every pending signal, then goes back to poll.
        let signals = SignalFd::with_flags(&blocked, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::sys("signalfd", e))?;

        let data = self.dirs.data_dir(name);
        let daemon_job = DaemonJob {
            lower,
            cache,
            keep_upper: !remove,
            upper: data.join("upper"),
            work: data.join("work"),
            source: format!("{image}:{name}"),
            container: ContainerJob {
                spec,
                steps: &steps,
                rootfs: run_dir.join("rootfs"),
                cgroup: self.cgroup.as_ref(),
                pty_slave: pty.as_ref().map(|p| p.slave.as_raw_fd()),
            },
        };
        // SAFETY: strata run is single-threaded here (no relay or other thread started yet).
        let daemon = match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("forking the filesystem daemon", e))? {
            ForkResult::Child => daemon_job.run(channels),
            ForkResult::Parent { child } => child,
        };
        drop(daemon_job);
        self.daemon = Some(daemon);
        let Channels { status, maps_done, start_error } = channels;
        drop((status.1, maps_done.0, start_error.1));
        let mut status = BufReader::new(File::from(status.0));

        let container_pid = self.await_container(&mut status, maps_done.1, daemon)?;
        let terminal = Terminal::attach(pty, spec.interactive)?;

        // The container reports a failed start on this pipe; exec closes it.
        let mut report = String::new();
        let _ = File::from(start_error.0).read_to_string(&mut report);
        if !report.is_empty() {
            let (code, message) = report.split_once(' ').unwrap_or(("125", &report));
            let code = code.parse().unwrap_or(exit_code::RUNNER_FAILED);
            let _ = waitpid(daemon, None);
            self.daemon = None;
            terminal.finish();
            eprintln!("strata: {message}");
            return Ok(code);
        }
        self.started = true;

        self.forward_until_reported(&status, container_pid, &signals, terminal.master())?;
        let final_line = read_message(&mut status, daemon).unwrap_or_default();
        terminal.finish();
        match final_line.strip_prefix("exit ").and_then(|c| c.parse::<i32>().ok()) {
            Some(exit) => {
                // The daemon has nothing left to do but end: it is reaped after the clean-up,
                // which overlaps with its own teardown (its mount namespace).
                self.daemon_done = true;
                Ok(exit)
            }
            None => {
                let status = waitpid(daemon, None).ok().and_then(process::exit_code_of);
                self.daemon = None;
                Err(Error::Container {
                    name: name.clone(),
                    detail: format!(
                        "the filesystem daemon ended ({}) without reporting the container's exit: {final_line}",
                        status.map_or("unknown status".to_string(), |c| format!("code {c}"))
                    ),
                })
            }
        }
    }

    /// Follows the daemon's start-up: writes the id maps when it has entered its user namespace,
    /// then records the container's pid it reports.
    fn await_container(&mut self, status: &mut BufReader<File>, maps_done: OwnedFd, daemon: Pid) -> Result<Pid> {
        let mut line = read_message(status, daemon)?;
        if line == "userns" {
            let mapped = idmap::write_maps(daemon.as_raw())?;
            File::from(maps_done).write_all(if mapped.setgroups { b"1" } else { b"0" }).at("the daemon's sync pipe")?;
            line = read_message(status, daemon)?;
        }
        let container_pid = match line.strip_prefix("pid ").and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => Pid::from_raw(pid),
            None => return Err(self.daemon_failed(&line)),
        };
        self.record.container = ProcessId::of(container_pid.as_raw()).ok();
        self.record.status = Status::Running;
        self.dirs.save(&self.record)?;
        Ok(container_pid)
    }

    /// Forwards signals to the container until the daemon (which outlives the container) reports
    /// its exit on the status pipe, or ends (end of file).
    fn forward_until_reported(
        &self,
        status: &BufReader<File>,
        container: Pid,
        signals: &SignalFd,
        pty_master: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        if !status.buffer().is_empty() {
            return Ok(());
        }
        loop {
            let mut fds = [
                libc::pollfd { fd: signals.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: status.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: poll on two descriptors we own.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::sys("waiting for the container", e));
            }
            if fds[1].revents != 0 {
                return Ok(());
            }
            if fds[0].revents != 0 {
                while let Ok(Some(info)) = signals.read_signal() {
                    let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
                    match signal {
                        Signal::SIGWINCH => {
                            if let Some(master) = pty_master {
                                tty::copy_window_size(std::io::stdin().as_fd(), master);
                            }
                        }
                        Signal::SIGCHLD => {}
                        other => {
                            let _ = kill(container, other);
                        }
                    }
                }
            }
        }
    }

    fn daemon_failed(&mut self, line: &str) -> Error {
        let detail = match line.strip_prefix("error ") {
            Some(message) => message.to_string(),
            None => "the filesystem daemon exited before the container started".to_string(),
        };
        Error::Container { name: self.record.name.clone(), detail }
    }

    /// Runs on every way out of `start_and_wait`: no daemon left, cgroup removed, state updated
    /// or deleted.
    fn clean_up(&mut self, outcome: &Result<i32>, remove: bool) -> Result<()> {
        let reported = self.daemon.take_if(|_| self.daemon_done);
        if let Some(daemon) = self.daemon.take() {
            // Its death takes the container down (parent-death signal) and the mount with it.
            let _ = kill(daemon, Signal::SIGKILL);
            let _ = waitpid(daemon, None);
        }
        let cgroup_removed = match &self.cgroup {
            Some(cg) => cg.remove(),
            None => Ok(()),
        };
        let state = match outcome {
            Ok(code) if !remove && self.started => {
                self.record.status = Status::Exited { code: *code };
                self.dirs.save(&self.record)
            }
            // --rm, or a container that never ran: nothing in it is worth keeping.
            _ => delete_with_upper(self.dirs, &self.record.name, Deleter::Supervisor),
        };
        if let Some(daemon) = reported {
            let _ = waitpid(daemon, None);
        }
        cgroup_removed.and(state)
    }
}

/// The caller's side of `-t`: its terminal in raw mode and the relay to the pty; `finish`
/// drains the container's output and restores the terminal.
struct Terminal {
    raw_mode: Option<tty::RawMode>,
    relay: Option<tty::Relay>,
}

impl Terminal {
    fn attach(pty: Option<tty::Pty>, interactive: bool) -> Result<Terminal> {
        let Some(pty) = pty else { return Ok(Terminal { raw_mode: None, relay: None }) };
        let raw_mode = tty::raw_mode_if_tty(std::io::stdin().as_fd())?;
        drop(pty.slave);
        let input = if interactive { Some(dup(0)?) } else { None };
        let relay = tty::start_relay(pty.master, input, dup(1)?)?;
        Ok(Terminal { raw_mode, relay: Some(relay) })
    }

    fn master(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.relay.as_ref().map(|r| r.master())
    }

    fn finish(self) {
        if let Some(relay) = self.relay {
            relay.finish();
        }
        drop(self.raw_mode);
    }
}

/// What the filesystem daemon needs, carried across fork.
struct DaemonJob<'a> {
    lower: Lower,
    cache: Cache,
    /// Flush the upper at the end (unmount) rather than discarding it (`--rm`).
    keep_upper: bool,
    upper: PathBuf,
    work: PathBuf,
    source: String,
    container: ContainerJob<'a>,
}

/// What the container's first process needs, carried across clone.
struct ContainerJob<'a> {
    spec: &'a Spec,
    steps: &'a [Step],
    /// The mountpoint of the rootfs (inside the daemon's mount namespace).
    rootfs: PathBuf,
    cgroup: Option<&'a Cgroup>,
    pty_slave: Option<RawFd>,
}

impl DaemonJob<'_> {
    /// The daemon process: never returns.
    fn run(self, channels: Channels) -> ! {
        let Channels { status, maps_done, start_error } = channels;
        drop((status.0, maps_done.1));
        let mut status = File::from(status.1);
        let code = match self.serve(File::from(maps_done.0), start_error, &mut status) {
            Ok(code) => {
                let _ = writeln!(status, "exit {code}");
                0
            }
            Err(e) => {
                let _ = writeln!(status, "error {}", e.to_string().replace('\n', " "));
                1
            }
        };
        // SAFETY: leaving the forked daemon without running the supervisor's destructors.
        unsafe { libc::_exit(code) }
    }

    /// `start_error`: the daemon keeps a copy of the read end, to see (without reading) when the
    /// container has exec'd; the write end goes to the container.
    fn serve(self, mut maps_done: File, start_error: (OwnedFd, OwnedFd), status: &mut File) -> Result<i32> {
        let (exec_seen, start_error) = start_error;
        // Dies with the supervisor, taking the container along.
        process::set_parent_death_signal()?;
        let _ = nix::unistd::setsid();
        let job = self.container;
        let mut setgroups = true;
        if job.spec.rootless {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| {
                Error::sys("creating the user namespace (are unprivileged user namespaces enabled?)", e)
            })?;
            writeln!(status, "userns").at("the status pipe")?;
            let mut answer = [0u8; 1];
            let n = maps_done.read(&mut answer).at("the sync pipe")?;
            if n != 1 {
                return Err(Error::invalid("the supervisor did not write the id maps"));
            }
            setgroups = answer[0] == b'1';
            let root = nix::unistd::Uid::from_raw(0);
            let root_gid = nix::unistd::Gid::from_raw(0);
            nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(|e| Error::sys("becoming gid 0", e))?;
            nix::unistd::setresuid(root, root, root).map_err(|e| Error::sys("becoming uid 0", e))?;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| Error::sys("creating the daemon's mount namespace", e))?;
        // Nothing mounted from here on may propagate back to the host.
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| Error::sys("making the mount namespace private", e))?;
        let overlay = strata_fs::overlay::open(self.lower, &self.upper, &self.work, None)?;
        let config = MountConfig {
            source: self.source.clone(),
            allow_other: true,
            // The container gets its devices in its own /dev; nodes of the image stay inert (as
            // Docker's device cgroup makes them), since no device cgroup is set up here.
            devices: false,
            setuid: true,
            threads: DAEMON_THREADS,
            writable: true,
        };
        // Containers of one image share the page cache of the files they read (as root).
        let fs = OverlayFs::new(overlay).with_shared_files(self.cache.clone());
        let mut mounted = mount::mount(fs, &job.rootfs, &config)?;
        // The container's setup talks to this daemon: both on one CPU until it has exec'd.
        let pinned = affinity::pin_to_current_cpu();
        let container = job.clone_container(start_error, setgroups, pinned.as_ref())?;
        writeln!(status, "pid {container}").at("the status pipe")?;
        if let Some(slave) = job.pty_slave {
            // SAFETY: the daemon's copy of the pty slave, unused here: the container has its own.
            unsafe { libc::close(slave) };
        }
        detach_stdio();

        let mut unmounter = mounted.unmounter();
        let keep_upper = self.keep_upper;
        let mut early_status = status.try_clone().at("the status pipe")?;
        let waiter = std::thread::Builder::new()
            .name("strata-wait".into())
            .spawn(move || {
                // POLLHUP once the container's copy of the write end closes: at exec, or at its
                // end if it failed (the supervisor reads any message; this only waits).
                let mut fds = [PollFd::new(exec_seen.as_fd(), PollFlags::empty())];
                while matches!(poll(&mut fds, PollTimeout::NONE), Err(nix::errno::Errno::EINTR)) {}
                if let Some(original) = pinned {
                    original.restore_all_threads();
                }
                // Off the start's path: the container has exec'd (or failed) by now.
                mount::release_freed_memory();
                drop(exec_seen);
                let code = waitpid(container, None).ok().and_then(process::exit_code_of);
                if !keep_upper {
                    // The upper is about to be deleted: nothing to flush, so report and leave at
                    // once; the kernel drops the mount with this process's namespace.
                    let code = code.unwrap_or(exit_code::RUNNER_FAILED);
                    let _ = writeln!(early_status, "exit {code}");
                    // SAFETY: ending the daemon from its waiter thread, as a process exit would.
                    unsafe { libc::_exit(0) };
                }
                // The container's mount namespace is gone with it: unmounting here flushes
                // what it wrote and ends the session.
                let _ = unmounter.unmount();
                code
            })
            .map_err(|e| Error::sys("starting the waiter thread", e))?;
        mounted.run()?;
        let code = waiter.join().ok().flatten().unwrap_or(exit_code::RUNNER_FAILED);
        Ok(code)
    }
}

impl ContainerJob<'_> {
    /// Clones the container's first process into its new namespaces.
    /// `start_error` is the container's end of the start-error pipe; the daemon's copy closes on return.
    /// `pinned`: the affinity to give the container back before exec ([`affinity`]).
    fn clone_container(&self, start_error: OwnedFd, setgroups: bool, pinned: Option<&Original>) -> Result<Pid> {
        use nix::sched::CloneFlags as F;
        let mut flags = F::CLONE_NEWNS | F::CLONE_NEWPID | F::CLONE_NEWUTS | F::CLONE_NEWIPC;
        if self.spec.network == Network::None {
            flags |= F::CLONE_NEWNET;
        }
        // SAFETY: a fork-like clone (no new stack: the child continues on a copy of ours) of a
        // process that is still single-threaded (fuser starts its threads later, in run()).
        let pid = unsafe {
            libc::syscall(libc::SYS_clone, flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0)
        };
        match pid {
            -1 => Err(Error::sys("creating the container's namespaces", std::io::Error::last_os_error())),
            0 => {
                let failure = match self.start_container(start_error.as_raw_fd(), setgroups, pinned) {
                    Ok(never) => match never {},
                    Err(failure) => failure,
                };
                let mut report = File::from(start_error);
                let _ = write!(report, "{} {}", failure.code, failure.message);
                // SAFETY: leaving the container's process without running inherited destructors.
                unsafe { libc::_exit(failure.code) }
            }
            pid => Ok(Pid::from_raw(pid as i32)),
        }
    }

    /// The container's first process: builds its world and execs. Returns only on failure.
    fn start_container(
        &self,
        start_error: RawFd,
        setgroups: bool,
        pinned: Option<&Original>,
    ) -> Result<std::convert::Infallible, StartError> {
        process::set_parent_death_signal()?;
        // Until exec, this is strata's own image: keep it out of reach of /proc/PID/* in the container.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if let Some(cg) = self.cgroup {
            cg.join()?;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| Error::sys("creating the cgroup namespace", e))?;
        nix::unistd::sethostname(&self.spec.hostname).map_err(|e| Error::sys("setting the hostname", e))?;
        if self.spec.network == Network::None {
            crate::net::loopback_up()?;
        }
        let root = Root::open(&self.rootfs)?;
        rootfs::apply(&root, self.steps)?;
        let workdir = process::open_workdir(&root, &self.spec.cwd)?;
        let (identity, env) = process::resolve_identity(self.spec, &root)?;
        drop(root);
        rootfs::pivot_root(&self.rootfs)?;
        process::enter_workdir(workdir, &self.spec.cwd)?;
        process::close_host_descriptors(&[start_error, self.pty_slave.unwrap_or(-1)])?;
        match self.pty_slave {
            Some(slave) => tty::attach_as_controlling(slave).map_err(|e| Error::sys("attaching the terminal", e))?,
            None if !self.spec.interactive => redirect_stdin_to_null()?,
            None => {}
        }
        process::become_identity(&identity, setgroups)?;
        process::reset_signal_dispositions();
        if let Some(original) = pinned {
            original.restore_this_thread();
        }
        Err(if self.spec.init {
            process::run_init(&self.spec.args, &env)
        } else {
            process::exec(&self.spec.args, &env)
        })
    }
}

/// Points the daemon's stdin, stdout and stderr at /dev/null: it reports through its status pipe,
/// and must not keep the caller's terminal or pipes open once the container has exited.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Without `-i`, the container reads nothing from the caller, as with `docker run`.
fn redirect_stdin_to_null() -> Result<()> {
    let null = File::open("/dev/null").at("/dev/null (in the container)")?;
    nix::unistd::dup2_stdin(&null).map_err(|e| Error::sys("redirecting stdin", e))?;
    Ok(())
}

/// Reads one status line from the daemon; EOF means it died.
fn read_message(status: &mut BufReader<File>, daemon: Pid) -> Result<String> {
    let mut line = String::new();
    status.read_line(&mut line).at("the daemon's status pipe")?;
    if line.is_empty() {
        let how = waitpid(daemon, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        return Err(Error::invalid(format!("the filesystem daemon exited without a word ({how:?})")));
    }
    Ok(line.trim_end().to_string())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

fn dup(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC of a standard descriptor; the result is ours.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(Error::sys(format!("duplicating descriptor {fd}"), std::io::Error::last_os_error()));
    }
    // SAFETY: fcntl just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Paths a container occupies, for `strata rm` after a crash.
pub fn remove(dirs: &StateDirs, name: &str, force: bool) -> Result<()> {
    let record = dirs.load(name).ok();
    if let Some(record) = &record {
        if let Some(sup) = record.supervisor.filter(|p| p.is_alive()) {
            if !force {
                return Err(Error::Container {
                    name: name.into(),
                    detail: "is running; stop it or pass --force to kill it".into(),
                });
            }
            let _ = kill(Pid::from_raw(sup.pid), Signal::SIGKILL);
        }
        if let Some(c) = record.container.filter(|p| p.is_alive()) {
            let _ = kill(Pid::from_raw(c.pid), Signal::SIGKILL);
        }
        cgroup::remove_dirs(&record.cgroup_dirs)?;
    }
    delete_with_upper(dirs, name, Deleter::Rm)
}

/// Who deletes a container's directories: `strata rm` (which unmounts whatever a crash left
/// there first), or the container's supervisor after its daemon is done (nothing was ever mounted
/// in its namespace).
#[derive(Clone, Copy)]
enum Deleter {
    Rm,
    Supervisor,
}

/// Deletes a container's state and upper. A rootless container mapped with subordinate ids can
/// leave files its caller may not delete: those go from inside a user namespace mapped the same way.
fn delete_with_upper(dirs: &StateDirs, name: &str, by: Deleter) -> Result<()> {
    let delete = || match by {
        Deleter::Rm => dirs.delete(name, true),
        Deleter::Supervisor => dirs.delete_after_exit(name, true),
    };
    match delete() {
        Err(_) if !nix::unistd::geteuid().is_root() && dirs.data_dir(name).exists() => {
            idmap::remove_as_mapped_root(&dirs.data_dir(name))?;
            delete()
        }
        other => other,
    }
}
