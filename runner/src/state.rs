//! The state directory of `strata run` containers: one record per container name, what `strata ps`
//! lists and what `strata rm` deletes, also after the supervisor crashed.
//!
//! Two roots, both replaceable with `STRATA_RUN_DIR` / `STRATA_DATA_DIR`:
//! - run root (`/run/strata`, rootless `$XDG_RUNTIME_DIR/strata` or `/tmp/strata-<uid>`):
//!   `containers/<name>/` holds the record `state.json`, the files the runner writes for the
//!   container (hosts, resolv.conf, hostname) and the `rootfs/` mountpoint. It lives on tmpfs and
//!   its existence is the claim on the name.
//! - data root (`/var/lib/strata`, rootless `$XDG_DATA_HOME/strata` or `~/.local/share/strata`):
//!   `containers/<name>/{upper,work}`, the writable layer, kept after exit for `diff`/commit.
//!
//! This module owns those two directories per name and nothing else: it never kills a process,
//! never touches a cgroup (the record only lists `cgroup_dirs` for the cgroup module to remove),
//! and the only mounts it touches are those left below a directory it is deleting (a crashed
//! run's `rootfs/`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

const RECORD: &str = "state.json";
const MAX_NAME: usize = 64;

/// The two roots of the state directory.
#[derive(Clone, Debug)]
pub struct StateDirs {
    pub run: PathBuf,
    pub data: PathBuf,
}

/// What `strata run` writes about a container while it exists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub created_unix: u64,
    pub rootless: bool,
    pub remove_on_exit: bool,
    /// The `strata run` process; its death without an `Exited` status means it crashed.
    pub supervisor: Option<ProcessId>,
    /// The container's first process, as a host pid.
    pub container: Option<ProcessId>,
    pub cgroup_dirs: Vec<PathBuf>,
    pub status: Status,
}

/// A process identified across pid reuse: the pid plus its start time (field 22 of
/// `/proc/PID/stat`, clock ticks since boot).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    Creating,
    Running,
    Exited { code: i32 },
}

/// One entry of [`StateDirs::list`]. `record` is `None` when it could not be read.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: String,
    pub record: Option<Record>,
    pub liveness: Liveness,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Liveness {
    Running,
    Exited {
        code: i32,
    },
    /// The record says Creating/Running but neither its supervisor nor its container process is
    /// alive: `strata run` crashed or was killed.
    Stale,
    /// No usable record; the text says why.
    Broken(String),
}

/// Whether the container of `record` still runs. A container whose supervisor died but whose
/// first process is still alive counts as running: its directories are still in use.
pub fn liveness(record: &Record) -> Liveness {
    match record.status {
        Status::Exited { code } => Liveness::Exited { code },
        Status::Creating | Status::Running => {
            let alive = |p: &Option<ProcessId>| p.as_ref().is_some_and(ProcessId::is_alive);
            if alive(&record.supervisor) || alive(&record.container) {
                Liveness::Running
            } else {
                Liveness::Stale
            }
        }
    }
}

/// A name is a path component under both roots, so it must not be able to climb out of them.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid container name {name:?}: {why}; use 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )))
    };
    let Some(first) = name.chars().next() else { return bad("it is empty") };
    if name.len() > MAX_NAME {
        return bad("it is too long");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return bad(&format!("{c:?} is not allowed"));
    }
    if name.contains("..") {
        return bad("it contains \"..\"");
    }
    Ok(())
}

/// A fresh name, `strata-` and 10 hex digits. Collisions are caught by [`StateDirs::claim`].
pub fn generate_name() -> String {
    let mut bytes = [0u8; 5];
    if !random_bytes(&mut bytes) {
        // No randomness at all is unheard of; pid and clock still make a collision unlikely.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mixed = nanos ^ (u64::from(std::process::id()) << 24);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..5]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("strata-{hex}")
}

fn random_bytes(buf: &mut [u8]) -> bool {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n == buf.len() as isize {
            return true;
        }
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break;
    }
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).is_ok()
}

impl ProcessId {
    pub fn current() -> Result<ProcessId> {
        ProcessId::of(std::process::id() as i32)
    }

    pub fn of(pid: i32) -> Result<ProcessId> {
        let path = stat_path(pid);
        let text = fs::read_to_string(&path).at(&path)?;
        let (_, start_time) = parse_stat(&text).ok_or_else(|| {
            Error::io(&path, io::Error::new(io::ErrorKind::InvalidData, "no start time after the command name"))
        })?;
        Ok(ProcessId { pid, start_time })
    }

    /// True while the very process recorded runs: same pid, same start time, and not a zombie
    /// (an exited child its parent has not reaped yet is dead for our purposes).
    pub fn is_alive(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        match fs::read_to_string(stat_path(self.pid)).ok().as_deref().and_then(parse_stat) {
            Some((state, start)) => start == self.start_time && !matches!(state, 'Z' | 'X' | 'x'),
            None => false,
        }
    }
}

fn stat_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/stat"))
}

/// The state (field 3) and start time (field 22) of a `/proc/PID/stat` line. The command name
/// (field 2) is the process's own choice and may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_time))
}

impl StateDirs {
    /// The roots for the effective user: system directories for root, per-user ones otherwise,
    /// each replaced by `STRATA_RUN_DIR` / `STRATA_DATA_DIR` when set.
    pub fn for_current_user() -> Result<StateDirs> {
        let uid = nix::unistd::geteuid().as_raw();
        resolve(uid, &|key| std::env::var_os(key).filter(|v| !v.is_empty()))
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.run.join("containers").join(name)
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.data.join("containers").join(name)
    }

    /// Claims `record.name`: the mkdir of its run directory is the atomic step, so two `strata
    /// run --name X` cannot both win. Then writes the record and creates `rootfs/` and a fresh
    /// `upper/` and `work/`; on failure everything created here is removed again.
    ///
    /// Refuses when data of an earlier container of the same name is still there, since a new
    /// container must not start on top of someone else's writes.
    pub fn claim(&self, record: &Record) -> Result<()> {
        let name = &record.name;
        validate_name(name)?;
        for parent in [self.run.join("containers"), self.data.join("containers")] {
            DirBuilder::new().recursive(true).mode(0o700).create(&parent).at(&parent)?;
        }
        let run_dir = self.run_dir(name);
        if let Err(e) = DirBuilder::new().mode(0o700).create(&run_dir) {
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Err(container(name, self.holder(name)));
            }
            return Err(Error::io(run_dir, e));
        }
        let mut created_data = false;
        let result = self.populate(record, &mut created_data);
        if result.is_err() {
            if created_data {
                let _ = fs::remove_dir_all(self.data_dir(name));
            }
            let _ = fs::remove_dir_all(&run_dir);
        }
        result
    }

    fn populate(&self, record: &Record, created_data: &mut bool) -> Result<()> {
        let name = &record.name;
        // The record first: `ps` shows a claimed name as broken until it exists.
        self.save(record)?;
        let data_dir = self.data_dir(name);
        match DirBuilder::new().mode(0o700).create(&data_dir) {
            Ok(()) => *created_data = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(container(
                    name,
                    format!(
                        "data of an earlier container with this name is still at {}; `strata rm {name}` deletes it \
                         (diff or commit it first if you need it), or choose another name",
                        data_dir.display()
                    ),
                ));
            }
            Err(e) => return Err(Error::io(data_dir, e)),
        }
        for (dir, mode) in [(data_dir.join("upper"), 0o755), (data_dir.join("work"), 0o700)] {
            DirBuilder::new().mode(mode).create(&dir).at(&dir)?;
        }
        let rootfs = self.run_dir(name).join("rootfs");
        DirBuilder::new().mode(0o755).create(&rootfs).at(&rootfs)
    }

    /// Why `name` cannot be claimed, for the error of a second claim.
    fn holder(&self, name: &str) -> String {
        match self.read_record(name) {
            Ok(record) => match liveness(&record) {
                Liveness::Running => format!(
                    "name already in use by a running container{}; stop it, then `strata rm {name}`",
                    pid_note(&record)
                ),
                Liveness::Exited { code } => {
                    format!("name already in use by an exited container (exit code {code}); `strata rm {name}` first")
                }
                Liveness::Stale => format!(
                    "name already in use by a stale record: its `strata run`{} died without cleaning up; \
                     `strata rm {name}` first",
                    record.supervisor.map_or(String::new(), |p| format!(" (pid {})", p.pid))
                ),
                Liveness::Broken(why) => format!("name already in use ({why}); `strata rm {name}` first"),
            },
            Err(why) => format!("name already in use ({why}); `strata rm {name}` first"),
        }
    }

    /// Replaces the record atomically (temporary file, then rename), so a reader sees the old or
    /// the new record, never half of one. Fails if the container was deleted meanwhile rather
    /// than bringing its directory back.
    pub fn save(&self, record: &Record) -> Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        validate_name(&record.name)?;
        let run_dir = self.run_dir(&record.name);
        let path = run_dir.join(RECORD);
        let temp = run_dir.join(format!(".{RECORD}.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let mut json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::io(&path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
        json.push(b'\n');
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            // No fsync: the record must survive a crash of strata, which the rename alone ensures;
            // after a crash of the machine the runtime directory is gone anyway.
            .and_then(|mut f| f.write_all(&json));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            if e.kind() == io::ErrorKind::NotFound {
                return Err(container(
                    &record.name,
                    format!("its state directory {} is gone (removed by `strata rm`?)", run_dir.display()),
                ));
            }
            return Err(Error::io(temp, e));
        }
        fs::rename(&temp, &path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            Error::io(&path, e)
        })
    }

    pub fn load(&self, name: &str) -> Result<Record> {
        validate_name(name)?;
        self.read_record(name).map_err(|why| {
            let detail = if self.run_dir(name).exists() {
                format!("{why}; `strata rm {name}` removes it")
            } else {
                format!("no such container ({} does not exist)", self.run_dir(name).display())
            };
            container(name, detail)
        })
    }

    /// The record of `name`, or why there is none (without advice: callers add their own).
    fn read_record(&self, name: &str) -> std::result::Result<Record, String> {
        let path = self.run_dir(name).join(RECORD);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!("no record at {}: being created right now, or left by a crash", path.display()))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|e| format!("unreadable record {}: {e}", path.display()))?;
        if record.name != name {
            return Err(format!("record {} is for another name, {:?}", path.display(), record.name));
        }
        Ok(record)
    }

    /// Every container with a run directory, sorted by creation time, plus names whose data
    /// outlived their run directory (after a reboot clears the run root). Anything unreadable
    /// is listed as [`Liveness::Broken`] rather than failing the whole listing.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut keyed: Vec<(u64, Listed)> = Vec::new();
        let mut seen = BTreeSet::new();
        let containers = self.run.join("containers");
        for (name, meta) in entries(&containers)? {
            let mtime = meta.mtime().max(0) as u64;
            let broken = |why: String| Listed { name: name.clone(), record: None, liveness: Liveness::Broken(why) };
            let listed = if validate_name(&name).is_err() {
                broken(format!("{} is not a container name strata would create", containers.join(&name).display()))
            } else if !meta.is_dir() {
                broken(format!("{} is not a directory", containers.join(&name).display()))
            } else {
                match self.read_record(&name) {
                    Ok(record) => {
                        let key = record.created_unix;
                        seen.insert(name.clone());
                        keyed.push((key, Listed { name, liveness: liveness(&record), record: Some(record) }));
                        continue;
                    }
                    Err(why) => broken(why),
                }
            };
            seen.insert(name);
            keyed.push((mtime, listed));
        }
        for (name, meta) in entries(&self.data.join("containers"))? {
            if seen.contains(&name) || validate_name(&name).is_err() {
                continue;
            }
            let why = format!(
                "no run directory (cleared by a reboot?); its data is still at {}",
                self.data_dir(&name).display()
            );
            keyed.push((meta.mtime().max(0) as u64, Listed { name, record: None, liveness: Liveness::Broken(why) }));
        }
        keyed.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
        Ok(keyed.into_iter().map(|(_, listed)| listed).collect())
    }

    /// Deletes the run directory of `name` and, if `data`, its data directory. Missing
    /// directories are fine. Refuses a directory that is a symlink, and refuses while the
    /// container runs: its supervisor is alive and is not the calling process (`--rm` deletes
    /// from the supervisor itself), or its first process is alive. Processes already dying get
    /// [`DYING_GRACE`] to go, since `rm --force` deletes right after sending SIGKILL.
    ///
    /// Anything mounted below the directories (a crash leaves `rootfs/` mounted, a dead FUSE
    /// endpoint) is unmounted first, so the removal never reaches into another filesystem.
    pub fn delete(&self, name: &str, data: bool) -> Result<()> {
        self.delete_dirs(name, data, true)
    }

    /// [`StateDirs::delete`] by the container's own supervisor once its filesystem daemon is
    /// done: the rootfs was only ever mounted in the daemon's private mount namespace, so there is
    /// nothing to look for in the mount table.
    pub fn delete_after_exit(&self, name: &str, data: bool) -> Result<()> {
        self.delete_dirs(name, data, false)
    }

    fn delete_dirs(&self, name: &str, data: bool, unmount: bool) -> Result<()> {
        validate_name(name)?;
        let run_dir = self.run_dir(name);
        let data_dir = self.data_dir(name);
        let run_exists = check_own_dir(name, &run_dir)?;
        let data_exists = data && check_own_dir(name, &data_dir)?;
        if run_exists {
            if let Ok(record) = self.read_record(name) {
                let deadline = Instant::now() + DYING_GRACE;
                while in_use(&record) {
                    if Instant::now() >= deadline {
                        return Err(container(
                            name,
                            format!("is still running{}; stop it before removing it", pid_note(&record)),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // Data first: the run directory is the claim on the name, so while it exists no new
        // container can start using a half-deleted data directory.
        if data_exists {
            if unmount {
                release_mounts(name, &data_dir)?;
            }
            remove_tree(name, &data_dir)?;
        }
        if run_exists {
            if unmount {
                release_mounts(name, &run_dir)?;
            }
            remove_tree(name, &run_dir)?;
        }
        Ok(())
    }
}

/// How long [`StateDirs::delete`] waits for the processes of a record to die before refusing.
pub const DYING_GRACE: Duration = Duration::from_secs(2);

fn in_use(record: &Record) -> bool {
    if let Status::Exited { .. } = record.status {
        return false;
    }
    let me = std::process::id() as i32;
    record.supervisor.is_some_and(|p| p.pid != me && p.is_alive()) || record.container.is_some_and(|p| p.is_alive())
}

fn container(name: &str, detail: impl Into<String>) -> Error {
    Error::Container { name: name.to_string(), detail: detail.into() }
}

fn pid_note(record: &Record) -> String {
    let pid = |p: &Option<ProcessId>| p.filter(ProcessId::is_alive).map(|p| p.pid);
    match (pid(&record.supervisor), pid(&record.container)) {
        (Some(s), Some(c)) => format!(" (supervisor pid {s}, container pid {c})"),
        (Some(s), None) => format!(" (supervisor pid {s})"),
        (None, Some(c)) => format!(" (container pid {c}, its supervisor is gone)"),
        (None, None) => String::new(),
    }
}

fn resolve(uid: u32, var: &dyn Fn(&str) -> Option<OsString>) -> Result<StateDirs> {
    let absolute = |key: &str| -> Result<Option<PathBuf>> {
        match var(key).map(PathBuf::from) {
            Some(p) if p.is_relative() => {
                Err(Error::invalid(format!("{key}={} must be an absolute path", p.display())))
            }
            other => Ok(other),
        }
    };
    // The XDG spec says to ignore relative values of its variables.
    let xdg = |key: &str| var(key).map(PathBuf::from).filter(|p| p.is_absolute());

    let run = match absolute("STRATA_RUN_DIR")? {
        Some(dir) => dir,
        None if uid == 0 => PathBuf::from("/run/strata"),
        // `su` keeps the previous user's XDG_RUNTIME_DIR, which is not ours to write in.
        None => match xdg("XDG_RUNTIME_DIR").filter(|d| fs::metadata(d).map_or(true, |m| m.uid() == uid)) {
            Some(dir) => dir.join("strata"),
            None => {
                let dir = PathBuf::from(format!("/tmp/strata-{uid}"));
                ensure_private_dir(&dir, uid)?;
                dir
            }
        },
    };
    let data = match absolute("STRATA_DATA_DIR")? {
        Some(dir) => dir,
        None if uid == 0 => PathBuf::from("/var/lib/strata"),
        None => match xdg("XDG_DATA_HOME") {
            Some(dir) => dir.join("strata"),
            None => {
                let home = var("HOME").map(PathBuf::from).filter(|p| p.is_absolute()).or_else(|| {
                    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.dir)
                });
                match home {
                    Some(home) => home.join(".local/share/strata"),
                    None => {
                        return Err(Error::invalid(
                            "no data directory for strata: set HOME, XDG_DATA_HOME or STRATA_DATA_DIR",
                        ))
                    }
                }
            }
        },
    };
    Ok(StateDirs { run, data })
}

/// A directory in a world-writable place must be ours before we trust it: another user could
/// have created it first to read or plant container state.
fn ensure_private_dir(dir: &Path, uid: u32) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    let meta = fs::symlink_metadata(dir).at(dir)?;
    let refuse = |why: String| {
        Err(Error::invalid(format!(
            "refusing to keep container state in {}: {why}; remove it, or set XDG_RUNTIME_DIR or STRATA_RUN_DIR",
            dir.display()
        )))
    };
    if !meta.file_type().is_dir() {
        return refuse("it is not a directory".into());
    }
    if meta.uid() != uid {
        return refuse(format!("it is owned by uid {}, not by you (uid {uid})", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!("its mode is {:o}, not 700", meta.mode() & 0o7777));
    }
    Ok(())
}

/// (name, lstat) of every entry of `dir`; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<(String, fs::Metadata)>> {
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in iter {
        let entry = entry.at(dir)?;
        let path = entry.path();
        match fs::symlink_metadata(&path) {
            Ok(meta) => out.push((entry.file_name().to_string_lossy().into_owned(), meta)),
            // Deleted by a concurrent `strata rm` since read_dir saw it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(out)
}

/// Whether `dir` exists as a real directory; refuses a symlink or anything else in its place,
/// which strata did not create and which removing could reach outside the state directory.
fn check_own_dir(name: &str, dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_dir() => Ok(true),
        Ok(meta) => {
            let what = if meta.file_type().is_symlink() { "a symlink" } else { "not a directory" };
            Err(container(
                name,
                format!("{} is {what}, not a state directory strata created; remove it by hand", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Unmounts everything mounted at or below `dir` (normally only a run directory's `rootfs/`).
/// `remove_dir_all` does not follow symlinks but does descend into mounts: it would delete
/// through a live one (a bind mount even shares the device number) and fail on a dead one.
fn release_mounts(name: &str, dir: &Path) -> Result<()> {
    // mountinfo names mount points by their resolved path.
    let real = fs::canonicalize(dir).at(dir)?;
    for _ in 0..16 {
        let mut points = mounts_under(&real);
        if points.is_empty() {
            // Without a readable /proc, mounts on direct entries still show as another device or,
            // for a dead FUSE mount, as an error.
            let dev = fs::symlink_metadata(dir).at(dir)?.dev();
            for (entry, _) in entries(dir)? {
                if mounted_on(&dir.join(&entry), dev)? {
                    points.push(dir.join(entry));
                }
            }
        }
        match points.first() {
            Some(point) => unmount(name, point)?,
            None => return Ok(()),
        }
    }
    Err(container(name, format!("{} still has mounts below it after 16 unmounts", dir.display())))
}

/// Mount points at or below `dir` in this mount namespace, most recent (topmost) first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    // thread-self: a thread may have a mount namespace of its own (unshare(CLONE_NEWNS)).
    let text =
        fs::read_to_string("/proc/thread-self/mountinfo").or_else(|_| fs::read_to_string("/proc/self/mountinfo"));
    let Ok(text) = text else { return Vec::new() };
    let mut points: Vec<PathBuf> =
        strata_fs::mountinfo::parse(&text).map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect();
    points.reverse();
    points
}

fn mounted_on(path: &Path, dev: u64) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(meta.dev() != dev),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // A dead FUSE mount answers ENOTCONN; another user's FUSE mount answers EACCES, even to root.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::EACCES)) => Ok(true),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn unmount(name: &str, path: &Path) -> Result<()> {
    let cause = match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => return Ok(()),
        // Gone meanwhile (a concurrent `strata rm`); the caller looks again.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
        Err(errno) => io::Error::from(errno),
    };
    // Without CAP_SYS_ADMIN only the setuid helper may unmount a FUSE mount, and only its owner's.
    if cause.raw_os_error() == Some(libc::EPERM) {
        for helper in ["fusermount3", "fusermount"] {
            let status = Command::new(helper)
                .args(["-u", "-z", "-q", "--"])
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) {
                return Ok(());
            }
        }
    }
    Err(container(
        name,
        format!(
            "{p} is still mounted and could not be unmounted ({cause}); run `fusermount3 -u -z {p}` \
             (or, as root, `umount -l {p}`), then retry",
            p = path.display()
        ),
    ))
}

fn remove_tree(name: &str, dir: &Path) -> Result<()> {
    match strata_fs::upper::remove_tree(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(container(
            name,
            format!(
                "cannot remove {}: {e}; some of its files belong to another user (the container's mapped ids?), \
                 remove them as that user or as root",
                dir.display()
            ),
        )),
        Err(e) => Err(Error::io(dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    fn dirs() -> (TempDir, StateDirs) {
        let tmp = TempDir::new().unwrap();
        let dirs = StateDirs { run: tmp.path().join("run"), data: tmp.path().join("data") };
        (tmp, dirs)
    }

    fn record(name: &str, created: u64, status: Status, supervisor: Option<ProcessId>) -> Record {
        Record {
            name: name.into(),
            image: "alpine:3".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            created_unix: created,
            rootless: false,
            remove_on_exit: false,
            supervisor,
            container: None,
            cgroup_dirs: vec![PathBuf::from("/sys/fs/cgroup/strata/x")],
            status,
        }
    }

    fn me() -> ProcessId {
        ProcessId::current().unwrap()
    }

    fn dead() -> ProcessId {
        let me = me();
        ProcessId { pid: me.pid, start_time: me.start_time + 1 }
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn claim_save_load_round_trip() {
        let (_tmp, dirs) = dirs();
        let mut rec = record("web", 100, Status::Creating, Some(me()));
        dirs.claim(&rec).unwrap();
        assert_eq!(dirs.load("web").unwrap(), rec);
        assert!(dirs.run_dir("web").join("rootfs").is_dir());
        assert!(dirs.data_dir("web").join("upper").is_dir());
        assert!(dirs.data_dir("web").join("work").is_dir());

        rec.status = Status::Exited { code: 3 };
        rec.container = Some(me());
        dirs.save(&rec).unwrap();
        assert_eq!(dirs.load("web").unwrap(), rec);
        let names: Vec<_> = fs::read_dir(dirs.run_dir("web")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary files left behind: {names:?}");
        let json = fs::read_to_string(dirs.run_dir("web").join(RECORD)).unwrap();
        assert!(json.contains("\"state\": \"exited\""), "{json}");
    }

    #[test]
    fn claiming_twice_says_who_holds_the_name() {
        let (_tmp, dirs) = dirs();
        dirs.claim(&record("db", 1, Status::Running, Some(me()))).unwrap();
        let err = message(dirs.claim(&record("db", 2, Status::Creating, Some(me()))).unwrap_err());
        assert!(err.contains("already in use by a running container"), "{err}");
        assert!(err.contains("`strata rm db`"), "{err}");
        // The loser must not have touched the winner's record.
        assert_eq!(dirs.load("db").unwrap().created_unix, 1);

        dirs.save(&record("db", 1, Status::Running, Some(dead()))).unwrap();
        let err = message(dirs.claim(&record("db", 2, Status::Creating, Some(me()))).unwrap_err());
        assert!(err.contains("stale"), "{err}");
    }

    #[test]
    fn claim_refuses_leftover_data_and_rolls_back() {
        let (_tmp, dirs) = dirs();
        fs::create_dir_all(dirs.data_dir("old").join("upper")).unwrap();
        let err = message(dirs.claim(&record("old", 1, Status::Creating, Some(me()))).unwrap_err());
        assert!(err.contains("still at"), "{err}");
        assert!(!dirs.run_dir("old").exists(), "the claim is undone");
        assert!(dirs.data_dir("old").join("upper").exists(), "the old data is not ours to delete");
    }

    #[test]
    fn save_does_not_resurrect_a_deleted_container() {
        let (_tmp, dirs) = dirs();
        let rec = record("gone", 1, Status::Running, Some(me()));
        dirs.claim(&rec).unwrap();
        dirs.save(&Record { status: Status::Exited { code: 0 }, ..rec.clone() }).unwrap();
        dirs.delete("gone", true).unwrap();
        let err = message(dirs.save(&rec).unwrap_err());
        assert!(err.contains("is gone"), "{err}");
        assert!(!dirs.run_dir("gone").exists());
    }

    #[test]
    fn list_reports_running_stale_exited_and_broken() {
        let (_tmp, dirs) = dirs();
        dirs.claim(&record("live", 30, Status::Running, Some(me()))).unwrap();
        dirs.claim(&record("crashed", 10, Status::Running, Some(dead()))).unwrap();
        dirs.claim(&record("done", 20, Status::Exited { code: 7 }, Some(dead()))).unwrap();
        dirs.claim(&record("corrupt", 40, Status::Running, Some(me()))).unwrap();
        fs::write(dirs.run_dir("corrupt").join(RECORD), b"{\"name\": \"corr").unwrap();
        let mut orphan = record("orphan", 5, Status::Running, None);
        orphan.container = Some(me());
        dirs.claim(&orphan).unwrap();

        let listed = dirs.list().unwrap();
        let got: Vec<(&str, &Liveness)> = listed.iter().map(|l| (l.name.as_str(), &l.liveness)).collect();
        assert_eq!(got[0], ("orphan", &Liveness::Running), "a live container process keeps it running");
        assert_eq!(got[1], ("crashed", &Liveness::Stale));
        assert_eq!(got[2], ("done", &Liveness::Exited { code: 7 }));
        assert_eq!(got[3], ("live", &Liveness::Running));
        let corrupt = listed.iter().find(|l| l.name == "corrupt").unwrap();
        assert!(corrupt.record.is_none());
        assert!(matches!(&corrupt.liveness, Liveness::Broken(why) if why.contains("unreadable")), "{corrupt:?}");
        assert_eq!(listed.len(), 5);
        assert!(listed[0].record.is_some());
    }

    #[test]
    fn list_of_nothing_and_of_orphaned_data() {
        let (_tmp, dirs) = dirs();
        assert!(dirs.list().unwrap().is_empty());
        fs::create_dir_all(dirs.data_dir("afterboot").join("upper")).unwrap();
        let listed = dirs.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(matches!(&listed[0].liveness, Liveness::Broken(why) if why.contains("no run directory")));
        dirs.delete("afterboot", true).unwrap();
        assert!(dirs.list().unwrap().is_empty());
    }

    #[test]
    fn delete_with_and_without_data() {
        let (_tmp, dirs) = dirs();
        for name in ["keep", "drop"] {
            dirs.claim(&record(name, 1, Status::Exited { code: 0 }, Some(dead()))).unwrap();
            fs::write(dirs.run_dir(name).join("hosts"), "127.0.0.1 localhost\n").unwrap();
            fs::create_dir_all(dirs.data_dir(name).join("upper/etc")).unwrap();
            fs::write(dirs.data_dir(name).join("upper/etc/motd"), "hi").unwrap();
        }
        dirs.delete("keep", false).unwrap();
        assert!(!dirs.run_dir("keep").exists());
        assert!(dirs.data_dir("keep").join("upper/etc/motd").exists());
        dirs.delete("drop", true).unwrap();
        assert!(!dirs.run_dir("drop").exists());
        assert!(!dirs.data_dir("drop").exists());
        dirs.delete("never-existed", true).unwrap();
    }

    fn sleeper() -> (std::process::Child, ProcessId) {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        (child, id)
    }

    #[test]
    fn delete_refuses_running_and_symlinks_but_takes_stale() {
        let (tmp, dirs) = dirs();
        let (mut child, supervisor) = sleeper();
        dirs.claim(&record("busy", 1, Status::Running, Some(supervisor))).unwrap();
        let err = message(dirs.delete("busy", true).unwrap_err());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(err.contains("still running") && err.contains(&format!("pid {}", supervisor.pid)), "{err}");
        assert!(dirs.run_dir("busy").exists());
        dirs.delete("busy", true).unwrap();

        // `--rm`: the supervisor deletes its own running record.
        dirs.claim(&record("self", 1, Status::Running, Some(me()))).unwrap();
        dirs.delete("self", true).unwrap();
        assert!(!dirs.run_dir("self").exists());

        dirs.claim(&record("stale", 1, Status::Creating, Some(dead()))).unwrap();
        dirs.delete("stale", true).unwrap();
        assert!(!dirs.run_dir("stale").exists());

        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("precious"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, dirs.run_dir("link")).unwrap();
        let err = message(dirs.delete("link", true).unwrap_err());
        assert!(err.contains("symlink"), "{err}");
        assert!(outside.join("precious").exists());

        // A symlink inside the data directory is removed, not followed.
        dirs.claim(&record("inner", 1, Status::Exited { code: 0 }, None)).unwrap();
        std::os::unix::fs::symlink(&outside, dirs.data_dir("inner").join("upper/escape")).unwrap();
        dirs.delete("inner", true).unwrap();
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn delete_waits_for_a_dying_container() {
        let (_tmp, dirs) = dirs();
        let (mut child, pid1) = sleeper();
        let mut rec = record("dying", 1, Status::Running, Some(dead()));
        rec.container = Some(pid1);
        dirs.claim(&rec).unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            child.kill().unwrap();
            child
        });
        dirs.delete("dying", true).unwrap();
        killer.join().unwrap().wait().unwrap();
        assert!(!dirs.run_dir("dying").exists());
    }

    #[test]
    fn delete_opens_up_unwritable_directories() {
        let (_tmp, dirs) = dirs();
        dirs.claim(&record("ro", 1, Status::Exited { code: 0 }, None)).unwrap();
        let root = dirs.data_dir("ro").join("upper/root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(".bash_history"), "ls\n").unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o550)).unwrap();
        dirs.delete("ro", true).unwrap();
        assert!(!dirs.data_dir("ro").exists());
    }

    /// Needs CAP_SYS_ADMIN; the mount namespace is unshared by the test thread alone.
    #[test]
    fn delete_unmounts_rootfs_instead_of_deleting_through_it() {
        use nix::mount::{mount, MsFlags};
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "cannot unshare a mount namespace ({e}) under CI");
            eprintln!("skipped: cannot unshare a mount namespace ({e})");
            return;
        }
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
        let (tmp, dirs) = dirs();
        dirs.claim(&record("mnt", 1, Status::Exited { code: 0 }, None)).unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(&image).unwrap();
        fs::write(image.join("bin"), "x").unwrap();
        let rootfs = dirs.run_dir("mnt").join("rootfs");
        mount(Some(&image), &rootfs, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        // Stacked, as a retried mount would leave them.
        mount(Some(&image), &rootfs, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        dirs.delete("mnt", true).unwrap();
        assert!(!dirs.run_dir("mnt").exists());
        assert!(image.join("bin").exists(), "removal went through the mount");
    }

    #[test]
    fn names() {
        let (longest, too_long) = ("x".repeat(64), "x".repeat(65));
        for ok in ["a", "web-1", "db_2.prod", "9", longest.as_str()] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", ".x", "..", "a..b", "-a", "_a", "a b", "é", too_long.as_str()] {
            assert!(matches!(validate_name(bad), Err(Error::Invalid(_))), "{bad:?} accepted");
        }
        let a = generate_name();
        validate_name(&a).unwrap();
        assert_eq!(a.len(), "strata-".len() + 10);
        assert!(a["strata-".len()..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, generate_name());
    }

    #[test]
    fn proc_stat_parsing() {
        // Field 22 is the start time; the command name is "a) (b".
        let mut fields: Vec<String> = (4..=52).map(|i| i.to_string()).collect();
        fields[22 - 4] = "987654".into();
        let line = format!("4242 (a) (b) S {}\n", fields.join(" "));
        assert_eq!(parse_stat(&line), Some(('S', 987654)));
        assert_eq!(parse_stat("4242 (x) Z 1 2 3"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn process_identity() {
        let me = ProcessId::current().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        assert!(!dead().is_alive());
        assert!(!ProcessId { pid: 0, start_time: me.start_time }.is_alive());

        // An exited child is dead while still a zombie and after it is reaped.
        let mut child = Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        for _ in 0..500 {
            let stat = fs::read_to_string(stat_path(id.pid)).unwrap();
            if parse_stat(&stat).unwrap().0 == 'Z' {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!id.is_alive());
        child.wait().unwrap();
        assert!(!id.is_alive());
        assert!(ProcessId::of(id.pid).is_err() || ProcessId::of(id.pid).unwrap() != id);
    }

    #[test]
    fn roots_for_root_rootless_and_overrides() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| OsString::from(v))
        };
        let root = resolve(0, &env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])).unwrap();
        assert_eq!((root.run, root.data), (PathBuf::from("/run/strata"), PathBuf::from("/var/lib/strata")));

        let user = resolve(1000, &env(&[("XDG_RUNTIME_DIR", "/run/user/1000"), ("HOME", "/home/u")])).unwrap();
        assert_eq!(user.run, PathBuf::from("/run/user/1000/strata"));
        assert_eq!(user.data, PathBuf::from("/home/u/.local/share/strata"));
        let user = resolve(1000, &env(&[("XDG_RUNTIME_DIR", "/r"), ("XDG_DATA_HOME", "/d"), ("HOME", "/h")])).unwrap();
        assert_eq!(user.data, PathBuf::from("/d/strata"));
        if nix::unistd::geteuid().is_root() {
            // Someone else's runtime directory (/ is root's) is skipped for the /tmp fallback.
            let _ = fs::remove_dir("/tmp/strata-4242");
            let user = resolve(4242, &env(&[("XDG_RUNTIME_DIR", "/"), ("HOME", "/h")])).unwrap();
            assert_eq!(user.run, PathBuf::from("/tmp/strata-4242"));
            let _ = fs::remove_dir("/tmp/strata-4242");
        }

        let over = resolve(0, &env(&[("STRATA_RUN_DIR", "/t/run"), ("STRATA_DATA_DIR", "/t/data")])).unwrap();
        assert_eq!((over.run, over.data), (PathBuf::from("/t/run"), PathBuf::from("/t/data")));
        assert!(resolve(0, &env(&[("STRATA_RUN_DIR", "rel")])).is_err());
    }

    #[test]
    fn private_fallback_dir_must_be_ours() {
        let tmp = TempDir::new().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let dir = tmp.path().join("strata-x");
        ensure_private_dir(&dir, uid).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        ensure_private_dir(&dir, uid).unwrap();
        let err = message(ensure_private_dir(&dir, uid + 1).unwrap_err());
        assert!(err.contains("not by you"), "{err}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_private_dir(&dir, uid).is_err());
        let link = tmp.path().join("strata-link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = message(ensure_private_dir(&link, uid).unwrap_err());
        assert!(err.contains("not a directory"), "{err}");
    }
}
