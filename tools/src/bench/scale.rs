//! `strata-bench --scale N`: what N containers of one image cost while they all run — layer
//! sharing measured, not claimed — with strata next to bwrap over kernel overlayfs and bwrap over
//! fuse-overlayfs, the peers a user would otherwise pick, on the same image.
//!
//! The image is the runner image plus a layer of 20,000 small files (an index the size of a
//! distribution's) and one with an 8 MiB file (`fixture::scale_image`). Each
//! container reads that file and busybox, leaves a marker in a shared host directory bound at
//! `/ready`, and sleeps; the harness starts the next one once the marker is there:
//!
//! - strata: `strata run --rm -v READY:/ready IMAGE sh -c SCRIPT` (OCI layout, index cached by one
//!   untimed start; its own FUSE daemon and upper per container, as always);
//! - kernel overlayfs: `mount -t overlay` over ROOTFS (the image unpacked by `umoci raw unpack`)
//!   with a fresh upper, then `bwrap --unshare-all --bind MNT / --proc /proc --dev /dev --bind
//!   READY /ready sh -c SCRIPT`;
//! - fuse-overlayfs: the same with `fuse-overlayfs -o lowerdir=ROOTFS,upperdir=…,workdir=…`.
//!
//! Per system, with every system's containers gone and the page cache dropped before it: the
//! wall time of each start until its marker appears (mount included for the peers), then, with
//! all N running, `MemFree` and `Cached` from /proc/meminfo against their values before the
//! first start (what the N containers cost the host, page cache included: a file every container
//! read costs once where the page cache is shared, N times where each mount caches its own), the
//! Pss of the runtime's own processes (strata's supervisors and daemons; bwrap, and fuse-overlayfs'
//! daemons), and the disk their uppers use; then the time to kill every container and unmount.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::host;
use super::report::{format_ms, format_ratio, kib_field, median, percentile};
use crate::fixture;

/// The file every container reads: large enough that per-mount copies of it show.
pub const SHARED_MIB: usize = 8;
/// Small files in the image besides busybox: an index the size of a distribution's.
pub const DOCS: usize = 20_000;
/// The containers' `sleep` argument, by which the harness finds them at the end.
const SLEEP_MARK: &str = "86401";
/// How long one container may take to leave its marker.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// strata's run directory, on tmpfs as root's default `/run/strata` is on systemd hosts.
const RUN_DIR: &str = "/run/strata-bench-scale";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub containers: usize,
    pub work: PathBuf,
    /// The strata binary; None: `strata` next to this executable.
    pub strata: Option<PathBuf>,
    /// Shown in the report.
    pub command_line: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Strata,
    Kernel,
    FuseOverlayfs,
}

impl System {
    const ALL: [System; 3] = [System::Strata, System::Kernel, System::FuseOverlayfs];

    fn label(self) -> &'static str {
        match self {
            System::Strata => "strata run",
            System::Kernel => "bwrap on kernel overlayfs",
            System::FuseOverlayfs => "bwrap on fuse-overlayfs",
        }
    }

    fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            System::Strata => &[],
            System::Kernel => &[("bwrap", "bubblewrap")],
            System::FuseOverlayfs => &[("bwrap", "bubblewrap"), ("fuse-overlayfs", "fuse-overlayfs")],
        }
    }

    /// The process names whose memory is the runtime's own.
    fn runtime_processes(self) -> &'static [&'static str] {
        match self {
            System::Strata => &["strata"],
            System::Kernel => &["bwrap"],
            System::FuseOverlayfs => &["bwrap", "fuse-overlayfs"],
        }
    }
}

/// The image in both forms, and where each system's containers keep their state.
struct Setup {
    strata: PathBuf,
    dir: PathBuf,
    image: PathBuf,
    rootfs: PathBuf,
    ready: PathBuf,
}

impl Setup {
    fn prepare(work: &Path, strata: PathBuf) -> Result<Setup> {
        let dir = work.join("scale");
        // A run killed midway leaves its containers and the peers' mounts: end them first, or
        // removing the directory would fail on mountpoints (and walk into the mounts).
        kill_containers();
        super::systems::unmount_leftovers(&dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let setup =
            Setup { strata, image: dir.join("image"), rootfs: dir.join("rootfs"), ready: dir.join("ready"), dir };
        fs::create_dir_all(&setup.ready).with_context(|| format!("creating {}", setup.ready.display()))?;
        let image = fixture::scale_image(DOCS, SHARED_MIB << 20)?;
        fixture::write_oci_layout(&setup.image, &image)?;
        let reference = format!("{}:{}", setup.image.display(), image.tag);
        host::run_logged(
            Command::new("umoci").args(["raw", "unpack", "--image", &reference]).arg(&setup.rootfs),
            &setup.dir.join("setup.log"),
        )?;
        Ok(setup)
    }

    /// Where the peers' containers of `system` keep their mountpoints, uppers and work directories.
    fn system_dir(&self, system: System) -> PathBuf {
        self.dir.join(format!("{system:?}").to_lowercase())
    }

    /// Container `i`'s directory under [`Setup::system_dir`].
    fn container_dir(&self, system: System, i: usize) -> PathBuf {
        self.system_dir(system).join(i.to_string())
    }

    fn strata_data(&self) -> PathBuf {
        self.dir.join("strata-data")
    }

    /// The script every container runs, `$0` being its number.
    fn script() -> String {
        format!("cat /data/shared.bin /bin/busybox > /dev/null && touch /ready/$0 && exec sleep {SLEEP_MARK}")
    }

    fn strata(&self) -> Command {
        let mut cmd = Command::new(&self.strata);
        cmd.env("STRATA_CACHE", self.dir.join("strata-cache"))
            .env("STRATA_RUN_DIR", RUN_DIR)
            .env("STRATA_DATA_DIR", self.strata_data())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Starts container `i` of `system`: mounts its root (peers) and spawns its runtime.
    fn start(&self, system: System, i: usize) -> Result<Child> {
        let script = Self::script();
        let volume = format!("{}:/ready", self.ready.display());
        if system == System::Strata {
            let mut cmd = self.strata();
            cmd.args(["run", "--rm", "-v", &volume]).arg(&self.image).args(["/bin/sh", "-c", &script, &i.to_string()]);
            return cmd.spawn().context("starting strata run");
        }
        let dir = self.container_dir(system, i);
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
        for d in [&upper, &work, &mnt] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", self.rootfs.display(), upper.display(), work.display());
        let mut mount = match system {
            System::Kernel => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay", "-o", &options]).arg(&mnt);
                c
            }
            _ => {
                let mut c = Command::new("fuse-overlayfs");
                c.args(["-o", &options]).arg(&mnt);
                c
            }
        };
        let out = mount.stdin(Stdio::null()).output().context("mounting")?;
        if !out.status.success() {
            bail!("mounting {}: {}", mnt.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let mut bwrap = Command::new("bwrap");
        bwrap
            .args(["--unshare-all", "--die-with-parent", "--bind"])
            .arg(&mnt)
            .args(["/", "--proc", "/proc", "--dev", "/dev", "--bind"])
            .arg(&self.ready)
            .args(["/ready", "/bin/sh", "-c", &script, &i.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        bwrap.spawn().context("starting bwrap")
    }

    /// Kills every container (their `sleep`), waits for the runtimes, unmounts the peers' roots.
    fn tear_down(&self, system: System, children: Vec<Child>) -> Result<()> {
        kill_containers();
        for mut child in children {
            child.wait().context("waiting for a container's runtime")?;
        }
        if system == System::Strata {
            return Ok(());
        }
        let base = self.system_dir(system);
        // Read the mount table once: per container, it would cost the peers O(N²).
        let mounted: std::collections::HashSet<PathBuf> = host::mountpoints().into_iter().collect();
        let mut problems = Vec::new();
        for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
            let mnt = entry.path().join("mnt");
            if mounted.contains(&mnt) && !Command::new("umount").arg(&mnt).status().is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
                problems.push(mnt.display().to_string());
            }
        }
        if !problems.is_empty() {
            bail!("unmounting (lazily instead): {}", problems.join(", "));
        }
        Ok(())
    }

    /// Disk used by the containers' uppers (and, for strata, the rest of their state), KiB.
    fn state_kib(&self, system: System) -> Option<u64> {
        let dir = match system {
            System::Strata => self.strata_data(),
            _ => self.system_dir(system),
        };
        let out = Command::new("du").args(["-sk", "-x"]).arg(&dir).output().ok()?;
        String::from_utf8_lossy(&out.stdout).split_whitespace().next()?.parse().ok()
    }
}

/// What one system's containers cost.
#[derive(Default)]
struct Outcome {
    /// Start of each container until its marker, ms.
    starts: Vec<f64>,
    /// Drop of MemFree and growth of Cached with all of them running, KiB.
    mem_used_kib: i64,
    cached_kib: i64,
    /// Pss of the runtime's processes, KiB.
    runtime_pss_kib: u64,
    state_kib: Option<u64>,
    teardown_ms: Option<f64>,
    error: Option<String>,
}

/// Runs every available system, writes `WORK/results-scale.md` and prints it.
pub fn run(opts: &Options) -> Result<()> {
    if !host::is_root() {
        bail!("strata-bench --scale needs root: kernel overlayfs mounts and dropping the page cache");
    }
    if opts.containers == 0 {
        bail!("--scale needs at least one container");
    }
    let work = super::start_run(&opts.work)?;
    let strata = super::strata_binary(opts.strata.as_deref())?;
    for program in ["umoci", "du"] {
        if !host::have_command(program) {
            bail!("{program} not found: run scripts/setup.sh");
        }
    }
    let setup = Setup::prepare(&work, strata)?;
    let _run_dir = host::Tmpfs::unless_already(Path::new(RUN_DIR), &setup.dir.join("setup.log"))?;
    // One untimed start fills strata's index cache, as any later container of the image finds it.
    let first = setup.strata().args(["run", "--rm"]).arg(&setup.image).arg("true").status();
    if !first.is_ok_and(|s| s.success()) {
        bail!("strata run {} true failed: see `strata run` by hand", setup.image.display());
    }

    let mut outcomes = Vec::new();
    let mut notes = Vec::new();
    for system in System::ALL {
        if let Some((program, package)) = system.programs().iter().find(|(p, _)| !host::have_command(p)) {
            notes.push(format!(
                "{} skipped: {program} not found (Debian package {package}: scripts/setup.sh --bench)",
                system.label()
            ));
            continue;
        }
        eprintln!("strata-bench: [scale] {} containers, {}", opts.containers, system.label());
        let outcome = measure(&setup, system, opts.containers)?;
        if let Some(e) = &outcome.error {
            eprintln!("strata-bench: {}: {e}", system.label());
        }
        outcomes.push((system, outcome));
        host::check_interrupt()?;
    }
    let doc = render(opts, &outcomes, &notes);
    println!("{doc}");
    let path = work.join("results-scale.md");
    fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("strata-bench: wrote {}", path.display());
    Ok(())
}

/// Starts `n` containers of `system` one after the other, measures them all running, tears down.
fn measure(setup: &Setup, system: System, n: usize) -> Result<Outcome> {
    host::drop_caches()?;
    std::thread::sleep(Duration::from_secs(1));
    let before = meminfo()?;
    let mut outcome = Outcome::default();
    let mut children = Vec::new();
    for i in 0..n {
        if let Err(e) = host::check_interrupt() {
            outcome.error = Some(format!("{e:#}"));
            break;
        }
        let marker = setup.ready.join(i.to_string());
        let started = Instant::now();
        let ready = setup.start(system, i).and_then(|child| {
            children.push(child);
            wait_for(&marker, START_TIMEOUT)
        });
        if let Err(e) = ready {
            outcome.error = Some(format!("container {i}: {e:#}"));
            break;
        }
        outcome.starts.push(super::ms(started.elapsed()));
    }
    if outcome.error.is_none() {
        std::thread::sleep(Duration::from_secs(2));
        let after = meminfo()?;
        outcome.mem_used_kib = before.free - after.free;
        outcome.cached_kib = after.cached - before.cached;
        outcome.runtime_pss_kib = runtime_pss_kib(system.runtime_processes());
        outcome.state_kib = setup.state_kib(system);
    }
    let teardown = Instant::now();
    let torn_down = setup.tear_down(system, children);
    outcome.teardown_ms = torn_down.is_ok().then(|| super::ms(teardown.elapsed()));
    if let Err(e) = torn_down {
        outcome.error.get_or_insert(format!("tearing down: {e:#}"));
    }
    for entry in fs::read_dir(&setup.ready)?.flatten() {
        let _ = fs::remove_file(entry.path());
    }
    Ok(outcome)
}

/// Polls until `path` exists.
fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > timeout {
            bail!("no marker {} after {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// SIGKILL to every container (see [`sleeping_containers`]).
fn kill_containers() {
    let containers: Vec<String> = sleeping_containers().iter().map(u32::to_string).collect();
    if !containers.is_empty() {
        let _ = Command::new("kill").arg("-KILL").args(&containers).status();
    }
}

/// Every process whose command line is `sleep SLEEP_MARK`: the containers.
fn sleeping_containers() -> Vec<u32> {
    let expected = format!("sleep\0{SLEEP_MARK}\0");
    pids().filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == expected.as_bytes())).collect()
}

fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc").into_iter().flatten().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// Summed Pss of the processes named one of `names` (their `comm`), KiB.
fn runtime_pss_kib(names: &[&str]) -> u64 {
    let me = std::process::id();
    pids()
        .filter(|pid| *pid != me)
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| names.contains(&c.trim_end())))
        .filter_map(|pid| {
            let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            kib_field(&rollup, "Pss:")
        })
        .sum()
}

struct MemInfo {
    free: i64,
    cached: i64,
}

fn meminfo() -> Result<MemInfo> {
    let text = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let field = |key| kib_field(&text, key).with_context(|| format!("no {key} in /proc/meminfo"));
    Ok(MemInfo { free: field("MemFree:")? as i64, cached: field("Cached:")? as i64 })
}

fn render(opts: &Options, outcomes: &[(System, Outcome)], notes: &[String]) -> String {
    let n = opts.containers;
    let mut doc = format!("## strata-bench: {n} containers of one image running at once\n\n");
    let _ = writeln!(doc, "- command: `{}`", opts.command_line);
    let _ = writeln!(doc, "- host: {}", host::describe_host());
    let _ = writeln!(
        doc,
        "- image: the runner fixture image (static busybox) plus a layer of {DOCS} small files and one with an \
         {SHARED_MIB} MiB file; each container runs `sh -c 'cat /data/shared.bin /bin/busybox > /dev/null && touch /ready/N && exec sleep \
         {SLEEP_MARK}'`, started one after the other, each once the one before left its marker"
    );
    let _ = writeln!(
        doc,
        "- memory: the drop of MemFree (everything the containers made the host hold: processes, page cache, \
         kernel objects) and the growth of Cached (/proc/meminfo) with all {n} running, against their values before the \
         first start (page cache dropped then); runtime Pss: strata's supervisors and daemons, bwrap, and \
         fuse-overlayfs' daemons; state on disk: the uppers (strata: its whole data directory)\n"
    );
    let kernel_mem = outcomes.iter().find(|(s, _)| *s == System::Kernel).map(|(_, o)| o.mem_used_kib as f64);
    doc += "| system | started | start median (ms) | p90 | p99 | max | host memory per container (MiB) | ratio to kernel overlayfs | page cache per container (MiB) | runtime Pss per container (MiB) | state on disk per container (KiB) | teardown of all (ms) |\n";
    doc += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (system, o) in outcomes {
        let count = o.starts.len();
        let per = |kib: f64| if count == n { format!("{:.2}", kib / 1024.0 / n as f64) } else { "n/a".into() };
        let pct = |p| percentile(&o.starts, p).map_or("n/a".into(), format_ms);
        let ratio = match (kernel_mem, count == n) {
            (Some(k), true) if k > 0.0 => format_ratio(o.mem_used_kib as f64 / k),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            doc,
            "| {} | {count}/{n} | {} | {} | {} | {} | {} | {ratio} | {} | {} | {} | {} |",
            system.label(),
            median(&o.starts).map_or("n/a".into(), format_ms),
            pct(0.9),
            pct(0.99),
            pct(1.0),
            per(o.mem_used_kib as f64),
            per(o.cached_kib as f64),
            per(o.runtime_pss_kib as f64),
            o.state_kib.filter(|_| count == n).map_or("n/a".into(), |k| format!("{:.0}", k as f64 / n as f64)),
            o.teardown_ms.map_or("n/a".into(), format_ms),
        );
    }
    let problems = outcomes.iter().filter_map(|(s, o)| Some((s, o.error.as_ref()?)));
    for (system, error) in problems {
        let _ = writeln!(doc, "\n- ⚠ {}: {error}", system.label());
    }
    for note in notes {
        let _ = writeln!(doc, "- note: {note}");
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_per_container_costs_and_ratios() {
        let opts = Options { containers: 2, work: PathBuf::new(), strata: None, command_line: "x".into() };
        let strata = Outcome {
            starts: vec![10.0, 12.0],
            mem_used_kib: 4096,
            cached_kib: 2048,
            runtime_pss_kib: 1024,
            state_kib: Some(40),
            teardown_ms: Some(1500.0),
            error: None,
        };
        let kernel = Outcome { starts: vec![5.0, 6.0], mem_used_kib: 2048, ..Outcome::default() };
        let partial =
            Outcome { starts: vec![30.0], error: Some("container 1: no marker".into()), ..Outcome::default() };
        let doc =
            render(&opts, &[(System::Strata, strata), (System::Kernel, kernel), (System::FuseOverlayfs, partial)], &[]);
        assert!(
            doc.contains("| strata run | 2/2 | 11.0 | 12.0 | 12.0 | 12.0 | 2.00 | 2.00x | 1.00 | 0.50 | 20 | 1500 |"),
            "{doc}"
        );
        assert!(doc.contains("| bwrap on fuse-overlayfs | 1/2 | 30.0 |"), "{doc}");
        assert!(doc.contains("⚠ bwrap on fuse-overlayfs: container 1: no marker"), "{doc}");
    }
}
