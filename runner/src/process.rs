//! The container's process after `pivot_root`: its identity (user, groups), capabilities,
//! no_new_privs, signal state, descriptors (only 0-2 survive exec: no host descriptor may leak
//! in, the runc CVE-2024-21626 class), working directory, and the exec itself — or `--init`, a
//! minimal PID 1 that forwards signals to the command and reaps zombies.

use std::ffi::CString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::caps;
use crate::error::{Error, Result};
use crate::resolve::{Root, TargetKind};
use crate::spec::{set_default_env, Spec};
use crate::user::{self, Identity};

/// Exit codes strata run uses for its own failures (Docker's).
pub mod exit_code {
    /// strata could not create or start the container.
    pub const RUNNER_FAILED: i32 = 125;
    /// The command exists but cannot be executed.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

/// An error of the container's process, with the exit code `strata run` reports for it.
#[derive(Debug)]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

impl From<Error> for StartError {
    fn from(e: Error) -> StartError {
        StartError { code: exit_code::RUNNER_FAILED, message: e.to_string() }
    }
}

/// The identity and environment of the process, resolved in the container's own /etc (read
/// inside `root`: an image's `/etc/passwd` symlink cannot lead to a host file).
pub fn resolve_identity(spec: &Spec, root: &Root) -> Result<(Identity, Vec<String>)> {
    let passwd = root.read_to_string("/etc/passwd")?.unwrap_or_default();
    let group = root.read_to_string("/etc/group")?.unwrap_or_default();
    let identity = user::resolve(&spec.user, &passwd, &group)?;
    let mut env = spec.env.clone();
    set_default_env(&mut env, "HOME", identity.home.as_deref().unwrap_or("/"));
    Ok((identity, env))
}

/// The working directory, created if missing (as Docker does for WORKDIR), resolved inside
/// `root` before `pivot_root`: a `WORKDIR` such as `/proc/self/fd/N` or a symlink out of the
/// image cannot start the process outside its root (runc's CVE-2024-21626). Entered with
/// [`enter_workdir`] once the root is `/`.
pub fn open_workdir(root: &Root, cwd: &str) -> Result<OwnedFd> {
    root.ensure(cwd, TargetKind::Dir)
}

pub fn enter_workdir(workdir: OwnedFd, cwd: &str) -> Result<()> {
    nix::unistd::fchdir(&workdir).map_err(|e| Error::sys(format!("entering the working directory {cwd}"), e))
}

/// SIGKILL when the parent (the daemon) dies, so a container never outlives its filesystem.
pub fn set_parent_death_signal() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(Error::sys("setting the parent-death signal", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Becomes `identity` with Docker's capabilities and no_new_privs. `setgroups`: whether the user
/// namespace allows setgroups(2) (a single-id rootless mapping denies it).
pub fn become_identity(identity: &Identity, setgroups: bool) -> Result<()> {
    caps::limit_bounding_set()?;
    if setgroups {
        let groups: Vec<Gid> = identity.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| Error::sys("setting the supplementary groups", e))?;
    }
    let (uid, gid) = (Uid::from_raw(identity.uid), Gid::from_raw(identity.gid));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| Error::sys(format!("setting gid {gid}"), e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| Error::sys(format!("setting uid {uid}"), e))?;
    // A change of credentials clears the parent-death signal: set it again.
    set_parent_death_signal()?;
    caps::set_process_caps(if identity.uid == 0 { caps::default_mask() } else { [0, 0] })?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::sys("setting no_new_privs", io::Error::last_os_error()));
    }
    Ok(())
}

/// Default dispositions, as a fresh process expects: strata's own process ignores SIGPIPE, and
/// an ignored disposition would survive exec. The mask is left alone: signals the supervisor
/// forwarded during set-up stay queued until [`exec`] or [`run_init`] decides what to do.
pub fn reset_signal_dispositions() {
    for signal in Signal::iterator() {
        if !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: restoring the default disposition installs no handler.
            unsafe {
                let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
            }
        }
    }
}

fn unblock_all_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Closes every descriptor above 2 but `keep`, and marks those close-on-exec: whatever strata or
/// its libraries opened (the /dev/fuse channel, pipes, the mountpoint and other directories of
/// the host) can neither reach the container's program nor serve as a path out of its root
/// (`/proc/self/fd/N/..`) in a lookup before exec, as the program's own path.
pub fn close_host_descriptors(keep: &[RawFd]) -> Result<()> {
    let mut kept: Vec<u32> = keep.iter().filter(|&&fd| fd > 2).map(|&fd| fd as u32).collect();
    kept.sort_unstable();
    let mut first = 3u32;
    for fd in kept.iter().copied().chain([u32::MAX]) {
        if fd > first {
            let last = if fd == u32::MAX { u32::MAX } else { fd - 1 };
            // SAFETY: close_range on descriptors nothing in this process uses any more.
            if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } != 0 {
                return Err(Error::sys("closing the host's descriptors", io::Error::last_os_error()));
            }
        }
        first = first.max(fd.saturating_add(1));
    }
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } != 0 {
        return Err(Error::sys("marking descriptors close-on-exec", io::Error::last_os_error()));
    }
    Ok(())
}

/// Replaces the process with `args`, looked up in the container's PATH. Returns only on failure.
pub fn exec(args: &[String], env: &[String]) -> StartError {
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let prepared = (|| {
        let argv = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
        Ok::<_, String>((argv, envp))
    })();
    let (argv, envp) = match prepared {
        Ok(v) => v,
        Err(message) => return StartError { code: exit_code::RUNNER_FAILED, message },
    };
    unblock_all_signals();
    let program = &args[0];
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        let path = env.iter().find_map(|v| v.strip_prefix("PATH=")).unwrap_or(crate::spec::DEFAULT_PATH);
        path.split(':').filter(|d| !d.is_empty()).map(|d| format!("{d}/{program}")).collect()
    };
    let mut denied = None;
    for candidate in &candidates {
        let Ok(path) = cstr(candidate) else { continue };
        let err = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
        if err == nix::errno::Errno::EACCES || err == nix::errno::Errno::ENOEXEC {
            denied = Some((candidate.clone(), err));
        } else if err != nix::errno::Errno::ENOENT && err != nix::errno::Errno::ENOTDIR {
            return StartError { code: exit_code::CANNOT_EXECUTE, message: format!("executing {candidate}: {err}") };
        }
    }
    match denied {
        Some((path, err)) => {
            StartError { code: exit_code::CANNOT_EXECUTE, message: format!("executing {path}: {err}") }
        }
        None => StartError {
            code: exit_code::NOT_FOUND,
            message: format!("{program:?}: executable file not found in the container (PATH and root checked)"),
        },
    }
}

/// Exit code of a waited-for process, the shell's way: the status, or 128 + the signal.
pub fn exit_code_of(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// `--init`: forks the command and stays as PID 1, forwarding every signal it receives to the
/// command and reaping every orphan, until the command exits; then exits with its code.
/// Signals stay blocked from the supervisor's fork onwards: the kernel drops a signal that PID 1
/// does not handle, so one unblocked moment would lose a signal forwarded during set-up.
pub fn run_init(args: &[String], env: &[String]) -> StartError {
    hide_host_command_line();
    let all = SigSet::all();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None) {
        return Error::sys("blocking signals in the init", e).into();
    }
    // SAFETY: the container's process is single-threaded here.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Error::sys("forking the command under the init", e).into(),
        Ok(ForkResult::Child) => {
            let failure = exec(args, env);
            eprintln!("strata: {}", failure.message);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(failure.code) };
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    // The init never execs, so its close-on-exec descriptors would stay open for the container's
    // whole life — among them the start-error pipe the supervisor waits on until the command runs.
    // SAFETY: close_range on descriptors this process no longer needs.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    loop {
        let Ok(signal) = all.wait() else { continue };
        if signal != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(child, signal);
            continue;
        }
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
            if status.pid() == Some(child) {
                let code = exit_code_of(status).unwrap_or(exit_code::RUNNER_FAILED);
                // SAFETY: PID 1 leaves; the kernel ends the namespace's remaining processes.
                unsafe { libc::_exit(code) };
            }
        }
    }
}

/// The init is strata itself, forked, not exec'd: its command line would show the host's `strata
/// run …` (host paths, `-e` values) to every process of the container through the world-readable
/// /proc/1/cmdline. Overwrites it in place with the init's own name, as setproctitle does (the
/// kernel reads the command line from the process's own argument area).
fn hide_host_command_line() {
    const NAME: &[u8] = b"strata-init";
    // SAFETY: prctl with a NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"strata-init".as_ptr(), 0, 0, 0) };
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| argument_area(&s)) else {
        return;
    };
    // SAFETY: [start, end) is this process's argument area (its initial stack), writable, and
    // nothing reads the arguments after this point.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    area.fill(0);
    let n = NAME.len().min(area.len().saturating_sub(1));
    area[..n].copy_from_slice(&NAME[..n]);
}

/// `arg_start` and `arg_end` from the text of /proc/PID/stat (fields 48 and 49, counted after the
/// parenthesised command name, which may itself hold spaces and parentheses).
fn argument_area(stat: &str) -> Option<(usize, usize)> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // `after_name` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.trim().parse::<usize>().ok();
    let (start, end) = (field(48)?, field(49)?);
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::argument_area;

    #[test]
    fn the_argument_area_is_read_past_a_command_name_with_spaces_and_parentheses() {
        // Fields 3..=52 of a stat line after a tricky name; 48 and 49 hold 4096 and 4200.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "4096".into();
        fields[49 - 3] = "4200".into();
        let line = format!("1234 (a) (b c) {}\n", fields.join(" "));
        assert_eq!(argument_area(&line), Some((4096, 4200)));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = argument_area(&own).expect("this process has arguments");
        assert!(end - start >= std::env::args().map(|a| a.len() + 1).sum::<usize>());
    }
}
