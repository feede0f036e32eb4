//! Host plumbing for the macro benchmark: dropping the page cache, reading /proc (mount table,
//! daemon pids, resident set size), running helper commands with their output in a log, and a
//! Ctrl-C flag so an interrupted run can unwind and unmount instead of dying mid-measurement.

use std::fs::{self, File};
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signum: c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

extern "C" {
    // From the C library std already links; declared here to avoid a libc dependency.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process; [`check_interrupt`]
/// turns the flag into an error at the next step, so mount guards unwind and unmount.
pub fn install_interrupt_handler() {
    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

/// Fails once SIGINT/SIGTERM has been received.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// True when running as root (needed for drop_caches and kernel overlay mounts).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: page cache, dentries and inodes, so the next
/// access goes to the disk (or, for FUSE, to the daemon).
pub fn drop_caches() -> Result<()> {
    sync()?;
    fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches (root needed)")
}

/// `sync`: writes every dirty page on the host back, so a later step does not pay for this one.
pub fn sync() -> Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// True when `command` can be found on $PATH (or is an existing path).
pub fn have_command(command: &str) -> bool {
    if command.contains('/') {
        return Path::new(command).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false)
}

/// Runs `cmd` with stdout and stderr appended to `log`; on failure the error carries the log's tail.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let out =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let shown = format!("{cmd:?}");
    let status =
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status}); last lines of {}:\n{}", log.display(), log_tail(log, 8));
    }
    Ok(())
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first line a command prints for `args` (stdout, else stderr) that contains `needle`,
/// e.g. a version string.
pub fn line_matching(command: &str, args: &[&str], needle: &str) -> Option<String> {
    let out = Command::new(command).args(args).stdin(Stdio::null()).output().ok()?;
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().map(str::trim).find(|l| !l.is_empty() && l.contains(needle)).map(str::to_string)
}

/// Mountpoints currently in /proc/self/mountinfo, in mount order.
pub fn mountpoints() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(|line| line.split(' ').nth(4)).map(|p| PathBuf::from(unescape_mountinfo(p))).collect()
}

/// True when something is mounted exactly at `path`.
pub fn is_mounted(path: &Path) -> bool {
    mountpoints().iter().any(|p| p == path)
}

/// Polls until `path` is (or is no longer) a mountpoint.
pub fn wait_mounted(path: &Path, mounted: bool, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if is_mounted(path) == mounted {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
pub fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The command line of a process, split at NULs.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// True when the process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// The live process (not this one) whose command line names `program` in its first two
/// arguments (so interpreters such as python count) and has `mountpoint` as an argument: the
/// daemon serving that mountpoint.
pub fn find_daemon(program: &str, mountpoint: &Path) -> Option<u32> {
    let me = std::process::id();
    let mnt = mountpoint.to_string_lossy();
    let entries = fs::read_dir("/proc").ok()?;
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|pid| *pid != me).find(|pid| {
        let Some(args) = cmdline(*pid) else { return false };
        let names_program =
            args.iter().take(2).any(|a| Path::new(a).file_name().is_some_and(|f| f.to_string_lossy() == program));
        names_program && args.iter().any(|a| *a == mnt) && pid_alive(*pid)
    })
}

/// VmRSS of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `pid` has exited (or `timeout` passes); true if it is gone.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while pid_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// (busy, total) CPU ticks summed over all CPUs, from the first line of /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// The busy fraction of all CPUs over `window`; this process sleeps meanwhile, so it is what
/// other processes (a concurrent build, a lingering daemon) use.
pub fn busy_fraction(window: Duration) -> Option<f64> {
    let (b0, t0) = cpu_ticks()?;
    std::thread::sleep(window);
    let (b1, t1) = cpu_ticks()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// Waits until other processes use less than `threshold` of the CPUs over a 1 s window, for at
/// most `timeout`. Returns the last busy fraction and whether the host got quiet.
pub fn wait_quiet(threshold: f64, timeout: Duration) -> (f64, bool) {
    let start = Instant::now();
    let mut said = false;
    loop {
        let busy = busy_fraction(Duration::from_secs(1)).unwrap_or(0.0);
        if busy < threshold {
            return (busy, true);
        }
        if start.elapsed() > timeout || check_interrupt().is_err() {
            eprintln!(
                "strata-bench: host still {:.0}% busy after {} s; measuring anyway",
                busy * 100.0,
                timeout.as_secs()
            );
            return (busy, false);
        }
        if !said {
            eprintln!(
                "strata-bench: other processes keep the CPUs {:.0}% busy; waiting for a quiet host",
                busy * 100.0
            );
            said = true;
        }
    }
}

/// A one-line description of the machine: kernel, CPUs, memory.
pub fn describe_host() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("Linux {kernel}, {cpus} CPU ({cpu_model}), {mem_gib:.1} GiB RAM")
}

/// A journaled ext4 filesystem in a sparse image on a loop device (direct I/O, so the host's page
/// cache does not hold its blocks twice), mounted at `dir`; unmounted and detached on drop. The
/// writable benchmark keeps every system's upper here: one filesystem of the most common kind,
/// whatever the host's own is. (This machine's root is ext4 without a journal, whose inode
/// allocator skips every inode freed in the last minute: systems measured one after another each
/// paid for the previous one's deletions.)
pub struct ScratchFs {
    pub dir: PathBuf,
    image: PathBuf,
    device: String,
}

impl ScratchFs {
    pub fn ext4(image: &Path, dir: &Path, bytes: u64, log: &Path) -> Result<ScratchFs> {
        for tool in ["mkfs.ext4", "losetup"] {
            if !have_command(tool) {
                bail!("{tool} is needed for the writable benchmark's upper filesystem (apt-get install -y e2fsprogs mount)");
            }
        }
        let _ = fs::remove_file(image);
        File::create(image)
            .and_then(|f| f.set_len(bytes))
            .with_context(|| format!("creating the sparse image {}", image.display()))?;
        run_logged(
            Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(image),
            log,
        )?;
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(image)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!("losetup {}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
        }
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let scratch = ScratchFs { dir: dir.to_path_buf(), image: image.to_path_buf(), device };
        fs::create_dir_all(dir)?;
        run_logged(Command::new("mount").arg(&scratch.device).arg(dir), log)?;
        Ok(scratch)
    }
}

/// A tmpfs mounted for the benchmark's duration where a directory is not on tmpfs already.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// None when `dir` is on tmpfs already (as `/run` is on systemd hosts); otherwise mounts one there.
    pub fn unless_already(dir: &Path, log: &Path) -> Result<Option<Tmpfs>> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let fs_type = Command::new("stat").args(["-f", "-c", "%T"]).arg(dir).output().context("running stat -f")?;
        if String::from_utf8_lossy(&fs_type.stdout).trim() == "tmpfs" {
            return Ok(None);
        }
        run_logged(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"]).arg(dir), log)?;
        Ok(Some(Tmpfs { dir: dir.to_path_buf() }))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = fs::remove_file(&self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_mountinfo_fields() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }
}
