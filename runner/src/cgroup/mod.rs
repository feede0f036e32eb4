//! Cgroup limits of a container (memory, swap, pids, cpus) on cgroup v2, v1, or a hybrid of both:
//! creating the container's cgroups, moving a process in, and removing them with whatever still
//! runs inside.
//!
//! - `limits`: [`Limits`] and its parsing, Docker's semantics (pure).
//! - `layout`: which hierarchy serves each controller, and what is delegated (pure, from text).
//! - `values`: the files and values to write per version (pure).
//! - this file: the I/O that carries those out.
//!
//! Placement. As root, a container's cgroup is `<hierarchy root>/strata/<name>` in every hierarchy
//! that serves memory, pids or cpu; each controller comes from cgroup v2 when the v2 root offers it,
//! else from the v1 hierarchy mounted with it. On v2 the controllers the limits need are enabled in
//! the `cgroup.subtree_control` of the v2 root and of `/strata`; nothing else is enabled. The
//! cgroups are made even without limits so the processes stay grouped and removable; on a hybrid
//! host whose v2 side offers none of the three (like the development host) they are the v1 memory,
//! pids and cpu cgroups, and the empty v2 hierarchy is left alone.
//!
//! Rootless. Only a delegated cgroup v2 subtree can be used: the caller's own v2 cgroup, when the
//! caller may write it (as systemd's `Delegate=yes` arranges). The container goes to
//! `<own cgroup>/strata/<name>`. Because v2 forbids enabling controllers for the children of a
//! cgroup that holds processes, the processes of the caller's cgroup (the caller among them) are
//! first moved into `<own cgroup>/strata-leaf` (docker-in-docker's entrypoint does the same with
//! its `init` cgroup). This happens only when a controller must be enabled; a caller already in
//! such a leaf places from the cgroup above it, so runs from one shell do not nest. A controller
//! the delegated cgroup does not offer gets a warning per limit it carries. Without delegation no
//! cgroup is made and each requested limit gets a warning. Root placing under a v2 root that holds
//! processes (inside a cgroup namespace) moves them into a leaf the same way.
//!
//! This module creates and removes only `strata/<name>` directories (and the `strata` and
//! `strata-leaf` cgroups it needs), writes limits only into those, and kills only processes listed
//! in the cgroups it is asked to remove. It must not change the limits of any other cgroup.

mod layout;
mod limits;
mod values;

pub use limits::{parse_cpus, parse_memory, parse_memory_swap, Limits, SwapLimit};

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
use nix::unistd::{eaccess, getpid, AccessFlags, Pid};

use crate::error::{Error, IoContext, Result};
use layout::{Controller, Hierarchies, Plan, Version, LEAF, PARENT};
use values::IfMissing;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// How long [`remove_dirs`] keeps retrying a cgroup that killed processes have not left yet.
const REMOVE_PATIENCE: Duration = Duration::from_secs(1);

const DELEGATE_ADVICE: &str = "rootless limits need a delegated cgroup v2 subtree (systemd's Delegate=yes, \
     e.g. run under `systemd-run --user --scope -p Delegate=yes`)";

/// Where a container's limits went, and what could not be applied.
#[derive(Debug)]
pub struct Placement {
    /// None when no cgroup could be made (rootless without delegation, or no cgroup mounted).
    pub cgroup: Option<Cgroup>,
    /// One line per limit that is not enforced, naming it and why.
    pub warnings: Vec<String>,
}

/// The cgroups of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// One directory per hierarchy used.
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves the calling process into the cgroup (writes "0" into each cgroup.procs). Called by the
    /// container's first process before it unshares its cgroup namespace.
    pub fn join(&self) -> Result<()> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            write_file(&procs, "0").map_err(|e| {
                cgroup_error(&procs, format!("cannot move the calling process into it: {e}{}", advice(&e)))
            })?;
        }
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        remove_dirs(&self.dirs)
    }
}

/// Creates the container's cgroup(s) and writes the limits. `rootless`: the caller is unprivileged.
pub fn create(name: &str, limits: &Limits, rootless: bool) -> Result<Placement> {
    limits.validate()?;
    check_name(name)?;
    let hierarchies = layout::parse_mountinfo(&read(Path::new(MOUNTINFO))?);
    let needed = limits.controllers();
    let (plan, mut warnings) = if rootless {
        match delegation(&hierarchies)? {
            Delegation::Usable { base, offered } => {
                let plan = layout::plan_delegated(base.clone(), &offered, &needed);
                let warnings = ignored(limits, &plan.missing, |c| {
                    format!(
                        "{DELEGATE_ADVICE} with the {} controller, but {}/cgroup.controllers does not list it",
                        c.name(),
                        base.display()
                    )
                });
                (plan, warnings)
            }
            Delegation::Unusable(why) => {
                let warnings = ignored(limits, &needed, |_| format!("{DELEGATE_ADVICE}, but {why}"));
                return Ok(Placement { cgroup: None, warnings });
            }
        }
    } else {
        let offered = match &hierarchies.v2 {
            Some(v2) => layout::controllers(&read(&v2.point.join("cgroup.controllers"))?),
            None => Vec::new(),
        };
        let plan = layout::plan_root(&hierarchies, &offered, &needed);
        let warnings = ignored(limits, &plan.missing, |c| {
            format!(
                "no cgroup hierarchy offers the {} controller (cgroup v2 does not list it in cgroup.controllers, \
                 and no cgroup v1 hierarchy is mounted with it)",
                c.name()
            )
        });
        (plan, warnings)
    };
    if plan.targets.is_empty() {
        return Ok(Placement { cgroup: None, warnings });
    }
    let mut created = Vec::new();
    match realize(&plan, name, limits, &mut created, &mut warnings) {
        Ok(()) => Ok(Placement { cgroup: Some(Cgroup { dirs: created }), warnings }),
        Err(e) => {
            // The error that stopped creation is the one to report; a directory this fails to
            // remove is removed as stale by the next creation under the same name.
            let _ = remove_dirs(&created);
            Err(e)
        }
    }
}

/// A warning for each requested limit whose controller is in `missing`.
fn ignored(limits: &Limits, missing: &[Controller], why: impl Fn(Controller) -> String) -> Vec<String> {
    let requested = limits.requested().into_iter().filter(|(_, c)| missing.contains(c));
    requested.map(|(limit, c)| format!("{limit} ignored: {}", why(c))).collect()
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.len() > 255 || name.contains(['/', '\n', '\0']) {
        return Err(Error::invalid(format!(
            "container name {name:?} cannot name a cgroup: it must be one path component of at most 255 bytes, \
             without '/' or newlines"
        )));
    }
    Ok(())
}

enum Delegation {
    Usable { base: PathBuf, offered: Vec<Controller> },
    Unusable(String),
}

/// The caller's own v2 cgroup when it is delegated to the caller, or why there is none.
fn delegation(h: &Hierarchies) -> Result<Delegation> {
    let v1_note = if h.v1.is_empty() { "" } else { " (cgroup v1 hierarchies are root-only)" };
    let Some(v2) = &h.v2 else {
        return Ok(Delegation::Unusable(format!("cgroup v2 is not mounted{v1_note}")));
    };
    let self_cgroup = read(Path::new(SELF_CGROUP))?;
    let Some(own) = layout::own_v2_path(&self_cgroup) else {
        return Ok(Delegation::Unusable(format!("{SELF_CGROUP} shows no cgroup v2 membership{v1_note}")));
    };
    let Some(base) = layout::delegated_base(v2, own) else {
        return Ok(Delegation::Unusable(format!(
            "the caller's cgroup {own} is outside the cgroup v2 mount at {}",
            v2.point.display()
        )));
    };
    // Creating children, moving processes and enabling controllers need these three.
    let needs = [base.clone(), base.join("cgroup.procs"), base.join("cgroup.subtree_control")];
    if !needs.iter().all(|p| eaccess(p, AccessFlags::W_OK).is_ok()) {
        return Ok(Delegation::Unusable(format!(
            "the caller's cgroup {} is not writable by the caller{v1_note}",
            base.display()
        )));
    }
    let offered = layout::controllers(&read(&base.join("cgroup.controllers"))?);
    Ok(Delegation::Usable { base, offered })
}

fn realize(
    plan: &Plan,
    name: &str,
    limits: &Limits,
    created: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    for target in &plan.targets {
        let parent = target.base.join(PARENT);
        if target.version == Version::V2 {
            enable(&target.base, &target.controllers)?;
        }
        make_dir(&parent, true)?;
        if target.version == Version::V2 {
            enable(&parent, &target.controllers)?;
        }
        let dir = target.dir(name);
        if dir.symlink_metadata().is_ok() {
            // Left by a crashed run of a container with the same name.
            remove_dirs(std::slice::from_ref(&dir))?;
        }
        make_dir(&dir, false)?;
        created.push(dir.clone());
        for setting in values::settings(target.version, limits) {
            if !target.controllers.contains(&setting.controller) {
                continue;
            }
            let file = dir.join(setting.file);
            match (write_file(&file, &setting.value), setting.if_missing) {
                (Ok(()), _) => {}
                (Err(e), IfMissing::Skip) if e.kind() == io::ErrorKind::NotFound => {}
                (Err(e), IfMissing::Warn) if e.kind() == io::ErrorKind::NotFound => warnings.push(format!(
                    "swap limit ignored: {} does not exist, so the kernel does not account swap (cgroup v1 needs the \
                     swapaccount=1 boot option): memory is limited, swap is not",
                    file.display()
                )),
                (Err(e), _) => {
                    return Err(cgroup_error(&file, format!("cannot write {:?}: {e}{}", setting.value, advice(&e))));
                }
            }
        }
    }
    Ok(())
}

/// Enables `wanted` for the children of `dir`.
fn enable(dir: &Path, wanted: &[Controller]) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let on = layout::controllers(&read(&file)?);
    let add: Vec<String> = wanted.iter().filter(|c| !on.contains(c)).map(|c| format!("+{}", c.name())).collect();
    if add.is_empty() {
        return Ok(());
    }
    let add = add.join(" ");
    // EBUSY: `dir` holds processes ("no internal processes"). They can fork new ones into `dir`
    // while being moved, hence a few rounds.
    let mut moves = 0;
    loop {
        match write_file(&file, &add) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && moves < 3 => {
                move_to_leaf(dir)?;
                moves += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let stuck = read_pids(&dir.join("cgroup.procs"))?;
                return Err(cgroup_error(
                    &file,
                    format!(
                        "cannot enable {add:?}: the cgroup still holds processes {stuck:?} that could not be moved \
                         into {LEAF}; run strata in a cgroup of its own, e.g. under \
                         `systemd-run --user --scope -p Delegate=yes`"
                    ),
                ));
            }
            Err(e) => return Err(cgroup_error(&file, format!("cannot enable {add:?}: {e}{}", advice(&e)))),
        }
    }
}

/// Moves the processes of `dir` into `dir/strata-leaf`. One that cannot be moved (gone, or not
/// the caller's to move) is left; enabling controllers then fails naming it.
fn move_to_leaf(dir: &Path) -> Result<()> {
    let leaf = dir.join(LEAF);
    make_dir(&leaf, true)?;
    let procs = leaf.join("cgroup.procs");
    for pid in read_pids(&dir.join("cgroup.procs"))? {
        let _ = write_file(&procs, &pid.to_string());
    }
    Ok(())
}

/// Removes cgroup directories left by a container (also used by `strata rm` after a crash, from a
/// saved list): SIGKILLs any process still listed in cgroup.procs, waits briefly, rmdirs (retrying
/// EBUSY a few times for up to ~1 s), deepest first. A directory already gone is fine.
pub fn remove_dirs(dirs: &[PathBuf]) -> Result<()> {
    let mut all = Vec::new();
    for dir in dirs {
        match statfs(dir.as_path()) {
            Ok(fs) if fs.filesystem_type() == CGROUP_SUPER_MAGIC || fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
            Ok(_) => {
                // A saved list is only data: never rmdir or kill for something that is no cgroup.
                return Err(cgroup_error(dir, "is not a cgroup directory; refusing to remove it"));
            }
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(Error::io(dir, e.into())),
        }
        with_descendants(dir, &mut all)?;
    }
    all.sort_by(|a, b| b.components().count().cmp(&a.components().count()).then_with(|| a.cmp(b)));
    all.dedup();
    let me = getpid();
    for dir in &all {
        kill_members(dir, me)?;
    }
    let deadline = Instant::now() + REMOVE_PATIENCE;
    let mut first_error = None;
    for dir in &all {
        if let Err(e) = remove_patiently(dir, me, deadline) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `dir` and the cgroups below it, which the container may have made inside its namespace.
fn with_descendants(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    out.push(dir.to_path_buf());
    for entry in entries {
        let entry = entry.at(dir)?;
        if entry.file_type().at(entry.path())?.is_dir() {
            with_descendants(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// SIGKILLs every process in `dir` but the caller. One that cannot be killed keeps the cgroup
/// busy, which `remove_patiently` reports.
fn kill_members(dir: &Path, me: Pid) -> Result<()> {
    for pid in read_pids(&dir.join("cgroup.procs"))? {
        // 0: a process outside the caller's pid namespace, which cannot be named from here.
        if pid > 0 && Pid::from_raw(pid) != me {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    Ok(())
}

fn remove_patiently(dir: &Path, me: Pid, deadline: Instant) -> Result<()> {
    loop {
        let e = match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(cgroup_error(dir, format!("cannot remove: {e}{}", advice(&e))));
        }
        if Instant::now() >= deadline {
            let left = read_pids(&dir.join("cgroup.procs"))?;
            let detail = if left.contains(&me.as_raw()) {
                format!("cannot remove: it holds the calling process itself ({me}), which must leave it first")
            } else {
                format!(
                    "cannot remove: still busy {REMOVE_PATIENCE:?} after killing its processes (left: {left:?}); \
                     kill them and remove it again"
                )
            };
            return Err(cgroup_error(dir, detail));
        }
        // Killed processes leave once the kernel has torn them down; kill again what forked meanwhile.
        kill_members(dir, me)?;
        thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).at(path)
}

/// The pids in a `cgroup.procs` file; none when the cgroup is gone.
fn read_pids(procs: &Path) -> Result<Vec<i32>> {
    match fs::read_to_string(procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(procs, e)),
    }
}

/// Writes a cgroup file in one write(2), which is how the kernel parses it; never creates it.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

fn make_dir(dir: &Path, exist_ok: bool) -> Result<()> {
    match fs::create_dir(dir) {
        Err(e) if !(exist_ok && e.kind() == io::ErrorKind::AlreadyExists) => {
            Err(cgroup_error(dir, format!("cannot create: {e}{}", advice(&e))))
        }
        _ => Ok(()),
    }
}

fn cgroup_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Cgroup { path: path.to_path_buf(), detail: detail.into() }
}

/// What to do about a failed cgroup operation, for the common causes.
fn advice(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            "; cgroups need root, or for a rootless run a cgroup v2 subtree delegated to the caller"
        }
        Some(libc::EINVAL) => "; the kernel rejected the value",
        Some(libc::ENOSPC) => "; the hierarchy's cgroup.max.descendants or cgroup.max.depth is reached",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// Real tests need root. Skipping is allowed only outside CI.
    fn privileged(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        let why = "creating cgroups needs root";
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{test}: {why}, and CI=true forbids skipping");
        eprintln!("skipping {test}: {why}");
        false
    }

    fn unique(tag: &str) -> String {
        format!("test-{}-{tag}", std::process::id())
    }

    /// Removes the cgroups even when an assertion fails first.
    struct Cleanup(Vec<PathBuf>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = remove_dirs(&self.0);
        }
    }

    /// The content of `file` in the first of `dirs` that has it.
    fn find(dirs: &[PathBuf], file: &str) -> Option<String> {
        dirs.iter().find_map(|d| fs::read_to_string(d.join(file)).ok()).map(|s| s.trim().to_string())
    }

    fn in_all(dirs: &[PathBuf], pid: i32) -> bool {
        dirs.iter().all(|d| read_pids(&d.join("cgroup.procs")).unwrap().contains(&pid))
    }

    /// A `sleep 30` that is killed and reaped even when an assertion fails first.
    struct Sleeper(Child);

    impl Sleeper {
        fn spawn(command: &mut Command) -> Sleeper {
            Sleeper(command.arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep"))
        }

        fn pid(&self) -> i32 {
            self.0.id() as i32
        }

        fn killed(&mut self) -> bool {
            self.0.wait().unwrap().signal() == Some(libc::SIGKILL)
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn bad_names_and_limits_fail_before_touching_cgroups() {
        for name in ["", ".", "..", "a/b", "a\nb"] {
            assert!(matches!(create(name, &Limits::default(), false), Err(Error::Invalid(_))), "{name:?}");
        }
        let swap_alone = Limits { memory_swap: Some(SwapLimit::Unlimited), ..Limits::default() };
        assert!(matches!(create("x", &swap_alone, false), Err(Error::Invalid(_))));
    }

    #[test]
    fn remove_dirs_accepts_gone_dirs_and_refuses_non_cgroups() {
        assert!(remove_dirs(&[PathBuf::from("/sys/fs/cgroup/no-such-strata-cgroup")]).is_ok());
        let plain = tempfile::tempdir().unwrap();
        match remove_dirs(&[plain.path().to_path_buf()]) {
            Err(Error::Cgroup { detail, .. }) => assert!(detail.contains("not a cgroup"), "{detail}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(plain.path().exists());
    }

    #[test]
    fn root_limits_are_written_and_a_joined_child_is_killed_on_remove() {
        if !privileged("root_limits_are_written_and_a_joined_child_is_killed_on_remove") {
            return;
        }
        let limits = Limits { memory: Some(32 * MIB), memory_swap: None, pids: Some(20), cpus: Some(0.5) };
        let placement = create(&unique("limits"), &limits, false).unwrap();
        let cg = placement.cgroup.expect("root gets a cgroup");
        let _cleanup = Cleanup(cg.dirs().to_vec());
        let dirs = cg.dirs();
        assert!(!dirs.is_empty());
        for dir in dirs {
            assert!(dir.parent().unwrap().ends_with(PARENT), "{}", dir.display());
        }
        // v1 or v2 spelling, whichever this host uses for each controller.
        match find(dirs, "memory.limit_in_bytes") {
            Some(v1) => {
                assert_eq!(v1, (32 * MIB).to_string());
                match find(dirs, "memory.memsw.limit_in_bytes") {
                    Some(memsw) => assert_eq!(memsw, (64 * MIB).to_string()),
                    None => assert!(placement.warnings.iter().any(|w| w.contains("swap")), "{:?}", placement.warnings),
                }
            }
            None => assert_eq!(find(dirs, "memory.max").as_deref(), Some("33554432")),
        }
        assert_eq!(find(dirs, "pids.max").as_deref(), Some("20"));
        match find(dirs, "cpu.cfs_quota_us") {
            Some(quota) => {
                assert_eq!(quota, "50000");
                assert_eq!(find(dirs, "cpu.cfs_period_us").as_deref(), Some("100000"));
            }
            None => assert_eq!(find(dirs, "cpu.max").as_deref(), Some("50000 100000")),
        }
        assert!(placement.warnings.iter().all(|w| w.starts_with("swap")), "{:?}", placement.warnings);

        // The container's first process joins between fork and exec, as here.
        let joiner = cg.clone();
        let mut command = Command::new("sleep");
        // SAFETY: join only opens and writes files.
        unsafe { command.pre_exec(move || joiner.join().map_err(io::Error::other)) };
        let mut child = Sleeper::spawn(&mut command);
        assert!(in_all(dirs, child.pid()), "the joined child is in every cgroup.procs");
        cg.remove().unwrap();
        assert!(child.killed());
        for dir in dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[test]
    fn remove_dirs_kills_a_process_written_into_the_cgroup() {
        if !privileged("remove_dirs_kills_a_process_written_into_the_cgroup") {
            return;
        }
        let placement = create(&unique("group"), &Limits::default(), false).unwrap();
        assert!(placement.warnings.is_empty(), "{:?}", placement.warnings);
        let dirs = placement.cgroup.expect("grouped even without limits").dirs().to_vec();
        let _cleanup = Cleanup(dirs.clone());
        assert!(!dirs.is_empty());
        let mut sleep = Sleeper::spawn(&mut Command::new("sleep"));
        for dir in &dirs {
            fs::write(dir.join("cgroup.procs"), sleep.pid().to_string()).unwrap();
        }
        assert!(in_all(&dirs, sleep.pid()));
        let started = Instant::now();
        remove_dirs(&dirs).unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(sleep.killed());
        for dir in &dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[test]
    fn a_stale_cgroup_of_the_same_name_is_replaced() {
        if !privileged("a_stale_cgroup_of_the_same_name_is_replaced") {
            return;
        }
        let name = unique("stale");
        let limits = Limits { pids: Some(20), ..Limits::default() };
        let stale = create(&name, &limits, false).unwrap().cgroup.unwrap();
        let _cleanup = Cleanup(stale.dirs().to_vec());
        let mut sleep = Sleeper::spawn(&mut Command::new("sleep"));
        fs::write(stale.dirs()[0].join("cgroup.procs"), sleep.pid().to_string()).unwrap();
        let fresh = create(&name, &limits, false).unwrap().cgroup.unwrap();
        assert_eq!(fresh.dirs(), stale.dirs());
        assert!(sleep.killed(), "the stale cgroup's process is killed");
        assert!(fresh.dirs().iter().all(|d| read_pids(&d.join("cgroup.procs")).unwrap().is_empty()));
        fresh.remove().unwrap();
    }

    #[test]
    fn rootless_with_a_writable_v2_cgroup_groups_the_container_there() {
        if !privileged("rootless_with_a_writable_v2_cgroup_groups_the_container_there") {
            return;
        }
        // Root's own v2 cgroup is writable, so it passes for delegated. Without limits nothing is
        // enabled, so no process of the test's cgroup is moved.
        let placement = create(&unique("delegated"), &Limits::default(), true).unwrap();
        assert!(placement.warnings.is_empty(), "{:?}", placement.warnings);
        let cg = placement.cgroup.expect("a writable v2 cgroup is used");
        let _cleanup = Cleanup(cg.dirs().to_vec());
        assert_eq!(cg.dirs().len(), 1);
        assert!(cg.dirs()[0].join("cgroup.controllers").exists(), "a v2 cgroup: {}", cg.dirs()[0].display());
        let joiner = cg.clone();
        let mut command = Command::new("sleep");
        // SAFETY: join only opens and writes files.
        unsafe { command.pre_exec(move || joiner.join().map_err(io::Error::other)) };
        let mut child = Sleeper::spawn(&mut command);
        assert!(in_all(cg.dirs(), child.pid()));
        cg.remove().unwrap();
        assert!(child.killed());
        assert!(!cg.dirs()[0].exists());
    }

    #[test]
    fn processes_move_into_the_leaf_and_removal_takes_the_leaf_too() {
        if !privileged("processes_move_into_the_leaf_and_removal_takes_the_leaf_too") {
            return;
        }
        let hierarchies = layout::parse_mountinfo(&read(Path::new(MOUNTINFO)).unwrap());
        let v2 = hierarchies.v2.expect("this test needs a cgroup2 mount");
        let dir = v2.point.join(PARENT).join(unique("leaf"));
        make_dir(&v2.point.join(PARENT), true).unwrap();
        make_dir(&dir, false).unwrap();
        let _cleanup = Cleanup(vec![dir.clone()]);
        let mut sleep = Sleeper::spawn(&mut Command::new("sleep"));
        fs::write(dir.join("cgroup.procs"), sleep.pid().to_string()).unwrap();
        move_to_leaf(&dir).unwrap();
        assert!(read_pids(&dir.join("cgroup.procs")).unwrap().is_empty());
        assert_eq!(read_pids(&dir.join(LEAF).join("cgroup.procs")).unwrap(), [sleep.pid()]);
        remove_dirs(std::slice::from_ref(&dir)).unwrap();
        assert!(sleep.killed());
        assert!(!dir.exists());
    }

    #[test]
    fn rootless_without_delegation_gets_a_warning_per_limit_and_no_cgroup() {
        if !privileged("rootless_without_delegation_gets_a_warning_per_limit_and_no_cgroup") {
            return;
        }
        let limits = Limits { memory: Some(32 * MIB), memory_swap: None, pids: Some(20), cpus: Some(0.5) };
        let name = unique("rootless");
        // The child drops to nobody, whose cgroup (the test's) is root's and so not delegated.
        // Raw syscalls: glibc's set*id would signal threads that do not exist in the forked child.
        // SAFETY: the child only drops privileges, runs `create` and exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let dropped = unsafe {
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                        && libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) == 0
                        && libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) == 0
                };
                let ok = dropped
                    && match (create(&name, &limits, true), create(&name, &Limits::default(), true)) {
                        (Ok(limited), Ok(plain)) => {
                            eprintln!("rootless warnings: {:#?}", limited.warnings);
                            let named = ["memory limit", "pids limit", "cpus limit"]
                                .iter()
                                .zip(&limited.warnings)
                                .all(|(limit, w)| w.starts_with(limit) && w.contains("delegated cgroup v2 subtree"));
                            limited.cgroup.is_none()
                                && limited.warnings.len() == 3
                                && named
                                && plain.cgroup.is_none()
                                && plain.warnings.is_empty()
                        }
                        other => {
                            eprintln!("rootless create failed: {other:?}");
                            false
                        }
                    };
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0), "see the child's output");
            }
        }
    }
}
