//! The user namespace of a rootless container: the caller becomes root inside, and the caller's
//! /etc/subuid and /etc/subgid ranges (when the shadow-utils helpers newuidmap/newgidmap are
//! installed) become ids 1.. so images with other owners keep them. Range lookup and map layout
//! are pure; [`write_maps`] applies them to a process from the parent namespace.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// One line of uid_map/gid_map: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The ranges /etc/subuid (or subgid) text grants `user` (by name or by numeric id).
pub fn subordinate_ranges(text: &str, user: &str, id: u32) -> Vec<(u32, u32)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            (owner == user || owner.parse::<u32>().ok() == Some(id)).then_some(())?;
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// The map: the caller as 0, then the subordinate ranges packed from 1 upwards.
pub fn layout(id: u32, subordinate: &[(u32, u32)]) -> Vec<IdRange> {
    let mut maps = vec![IdRange { inside: 0, outside: id, count: 1 }];
    let mut next = 1u32;
    for &(start, count) in subordinate {
        maps.push(IdRange { inside: next, outside: start, count });
        next = next.saturating_add(count);
    }
    maps
}

/// How a rootless container's ids were mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// setgroups(2) is allowed inside: only when newgidmap wrote the gid map.
    pub setgroups: bool,
    /// More than the caller's own id is mapped.
    pub subordinate: bool,
}

/// Writes the uid and gid maps of `pid` (which has just unshared its user namespace) for the
/// calling user: through newuidmap/newgidmap with the subordinate ranges when both helpers and
/// ranges exist, else the single self-mapping an unprivileged process may write itself.
pub fn write_maps(pid: i32) -> Result<Mapped> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let subuids = subordinate_ranges(&read("/etc/subuid"), &user, uid);
    let subgids = subordinate_ranges(&read("/etc/subgid"), &user, uid);
    let helpers = which("newuidmap").zip(which("newgidmap"));
    if let (Some((newuidmap, newgidmap)), false, false) = (helpers, subuids.is_empty(), subgids.is_empty()) {
        run_helper(&newuidmap, pid, &layout(uid, &subuids))?;
        run_helper(&newgidmap, pid, &layout(gid, &subgids))?;
        return Ok(Mapped { setgroups: true, subordinate: true });
    }
    let proc = format!("/proc/{pid}");
    // An unprivileged process may write a gid map only once setgroups is denied.
    std::fs::write(format!("{proc}/setgroups"), "deny").at(format!("{proc}/setgroups"))?;
    std::fs::write(format!("{proc}/uid_map"), format!("0 {uid} 1")).at(format!("{proc}/uid_map"))?;
    std::fs::write(format!("{proc}/gid_map"), format!("0 {gid} 1")).at(format!("{proc}/gid_map"))?;
    Ok(Mapped { setgroups: false, subordinate: false })
}

/// Removes `dir` from inside a user namespace mapped like a rootless container's, where the
/// caller is root over every id the container could give its files (the subordinate ranges): an
/// unprivileged caller cannot delete an upper holding files of those ids from the outside.
pub fn remove_as_mapped_root(dir: &Path) -> Result<()> {
    use nix::unistd::{fork, ForkResult};
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", e))?;
    let (go_r, go_w) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", e))?;
    // SAFETY: the child only makes system calls and removes files before _exit.
    match unsafe { fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok()
                && nix::unistd::write(&ready_w, b"u").is_ok()
                && nix::unistd::read(&go_r, &mut [0u8; 1]).is_ok_and(|n| n == 1)
                && std::fs::remove_dir_all(dir).is_ok();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mapped = match nix::unistd::read(&ready_r, &mut [0u8; 1]) {
                Ok(1) => write_maps(child.as_raw()).map(|_| ()),
                _ => Err(Error::invalid("the helper could not create a user namespace")),
            };
            if mapped.is_ok() {
                let _ = nix::unistd::write(&go_w, b"g");
            }
            drop(go_w);
            let status = nix::sys::wait::waitpid(child, None).map_err(|e| Error::sys("waiting for the helper", e))?;
            mapped?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                _ => Err(Error::invalid(format!(
                    "{}: could not be removed even as root of a user namespace mapping the subordinate ids",
                    dir.display()
                ))),
            }
        }
    }
}

fn run_helper(helper: &Path, pid: i32, maps: &[IdRange]) -> Result<()> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([m.inside.to_string(), m.outside.to_string(), m.count.to_string()]);
    }
    let out = cmd.output().at(helper)?;
    if !out.status.success() {
        return Err(Error::invalid(format!(
            "{} failed: {}; check /etc/subuid and /etc/subgid",
            helper.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_id() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:10\nalice:500000:0\nbad line\n";
        assert_eq!(subordinate_ranges(text, "alice", 1000), vec![(100000, 65536)]);
        assert_eq!(subordinate_ranges(text, "carol", 1001), vec![(200000, 1000)]);
        assert!(subordinate_ranges(text, "dave", 7).is_empty());
    }

    #[test]
    fn layout_packs_ranges_after_the_caller() {
        assert_eq!(
            layout(1000, &[(100000, 65536), (300000, 10)]),
            vec![
                IdRange { inside: 0, outside: 1000, count: 1 },
                IdRange { inside: 1, outside: 100000, count: 65536 },
                IdRange { inside: 65537, outside: 300000, count: 10 },
            ]
        );
        assert_eq!(layout(5, &[]).len(), 1);
    }
}
