//! `strata-bench --runner`: how long a container takes from start to exit with strata, next to
//! bubblewrap, `unshare` + `chroot` and runc on the same root filesystem, and how much memory
//! strata's per-container filesystem daemon costs.
//!
//! The image is the fixture builder's runner image (static busybox). strata runs it from an OCI
//! layout; the others run the same image unpacked to a plain directory by `umoci raw unpack`
//! (whiteouts and ownership applied by a reference tool), which is also the runc bundle's
//! `rootfs/`. The commands, each running `/bin/true`:
//!
//! - strata: `strata run --rm IMAGE /bin/true` with `STRATA_CACHE` and `STRATA_DATA_DIR` under
//!   `WORK/runner`, and `STRATA_RUN_DIR` on tmpfs (`/run/strata-bench`), as root's default
//!   `/run/strata` is on systemd hosts (the benchmark mounts one there when `/run` is not tmpfs).
//!   The warm-ups fill the index cache, so every timed start finds it warm. Each start mounts its own FUSE rootfs over a fresh upper; without limits it
//!   makes no cgroup (runc always makes one).
//! - bwrap: `bwrap --unshare-all --bind ROOTFS / --proc /proc --dev /dev /bin/true`.
//! - unshare + chroot: `unshare -Urmpfiun chroot ROOTFS /bin/true`, the floor: new namespaces and
//!   nothing else.
//! - runc: `runc --root WORK/runner/runc-state run --bundle BUNDLE ID` with a fresh ID per start
//!   and the config `runc spec` writes, edited to run `/bin/true` without a terminal from
//!   `root.path` = ROOTFS. That config needs nothing more on a hybrid cgroup host: it asks for no
//!   cgroup namespace, and runc makes the container's cgroup, named after the ID, below its own in
//!   every v1 hierarchy and the unified one, and removes them when the container exits. crun is
//!   left out: it refuses hybrid hosts.
//!
//! Each round runs every system in turn, so slow drift on the host hits all of them alike: wait
//! for a quiet host, [`WARMUPS`] untimed starts, then the timed ones, each the wall time around
//! `Command::status()` with stdin, stdout and stderr on /dev/null. A start that exits non-zero
//! counts as failed in the table and its time is left out; the first failure of each system is
//! run again with its output kept, to say why.
//!
//! Memory: [`CONTAINERS`] `strata run --rm IMAGE sleep 3` at once. Once every container runs
//! `sleep`, each supervisor's child (the filesystem daemon) has its `Pss` and `Rss` read from
//! `/proc/PID/smaps_rollup`. Pss shares the pages the daemons have in common (the strata binary,
//! the cached index) among them, so it is what one more container costs; Rss counts them in full.
//! The same again with the debootstrap image of the read-only benchmark, when that data set has
//! been made (`strata-bench --rootfs debootstrap`): a daemon's own memory grows with the index.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::host;
use super::report::{format_ms, format_ratio, kib_field, median, percentile, ratio, Results};
use crate::fixture;

/// strata's run directory in the benchmark: on tmpfs, like root's default `/run/strata`.
const RUN_DIR: &str = "/run/strata-bench";

/// Untimed starts of each system at the beginning of each round: caches warm again after the
/// other systems ran.
pub const WARMUPS: usize = 3;
/// Containers running at once for the memory measurement.
pub const CONTAINERS: usize = 5;
/// How long those containers may take to reach `sleep`.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rounds, each with `starts` timed starts of every system.
    pub rounds: usize,
    pub starts: usize,
    pub work: PathBuf,
    /// The strata binary; None: `strata` next to this executable.
    pub strata: Option<PathBuf>,
    /// Shown in the report.
    pub command_line: String,
}

/// One way of starting a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Runner {
    Strata,
    Bwrap,
    Unshare,
    Runc,
}

impl Runner {
    /// Table order.
    const ALL: [Runner; 4] = [Runner::Strata, Runner::Bwrap, Runner::Unshare, Runner::Runc];

    fn label(self) -> &'static str {
        match self {
            Runner::Strata => "strata",
            Runner::Bwrap => "bwrap",
            Runner::Unshare => "unshare + chroot",
            Runner::Runc => "runc",
        }
    }

    /// The command line, for the report.
    fn shown(self) -> &'static str {
        match self {
            Runner::Strata => {
                "`strata run --rm IMAGE /bin/true`, state under `STRATA_RUN_DIR=/run/strata-bench` (tmpfs)"
            }
            Runner::Bwrap => "`bwrap --unshare-all --bind ROOTFS / --proc /proc --dev /dev /bin/true`",
            Runner::Unshare => "`unshare -Urmpfiun chroot ROOTFS /bin/true`",
            Runner::Runc => "`runc --root STATE run --bundle BUNDLE ID` (config from `runc spec`, see below)",
        }
    }

    /// The programs it needs besides strata, each with the Debian package that has it.
    fn programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Runner::Strata => &[],
            Runner::Bwrap => &[("bwrap", "bubblewrap")],
            Runner::Unshare => &[("unshare", "util-linux"), ("chroot", "coreutils")],
            Runner::Runc => &[("runc", "runc")],
        }
    }

    /// The `--version` line of its program, for the report.
    fn version(self, strata: &Path) -> Option<String> {
        match self {
            Runner::Strata => Some(super::strata_version(strata)),
            Runner::Bwrap => host::line_matching("bwrap", &["--version"], "bubblewrap"),
            Runner::Unshare => host::line_matching("unshare", &["--version"], "util-linux"),
            Runner::Runc => host::line_matching("runc", &["--version"], "runc version"),
        }
    }
}

/// The image, the root filesystem and every system's state, all under `WORK/runner`.
struct Setup {
    strata: PathBuf,
    dir: PathBuf,
    /// The OCI layout strata runs.
    image: PathBuf,
    bundle: PathBuf,
    /// The image unpacked: `BUNDLE/rootfs`.
    rootfs: PathBuf,
    /// Starts of runc so far, for fresh container IDs.
    runc_starts: Cell<u64>,
}

impl Setup {
    fn prepare(work: &Path, strata: PathBuf, runners: &[Runner]) -> Result<Setup> {
        let dir = work.join("runner");
        // Fresh every time: an interrupted run may have left containers' state behind.
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let bundle = dir.join("bundle");
        fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
        let setup = Setup {
            strata,
            image: dir.join("image"),
            rootfs: bundle.join("rootfs"),
            bundle,
            dir,
            runc_starts: Cell::new(0),
        };
        let image = fixture::runner_image()?;
        fixture::write_oci_layout(&setup.image, &image)?;
        let log = setup.dir.join("setup.log");
        let reference = format!("{}:{}", setup.image.display(), image.tag);
        host::run_logged(
            Command::new("umoci").args(["raw", "unpack", "--image", &reference]).arg(&setup.rootfs),
            &log,
        )?;
        if runners.contains(&Runner::Runc) {
            host::run_logged(Command::new("runc").arg("spec").arg("--bundle").arg(&setup.bundle), &log)?;
            let path = setup.bundle.join("config.json");
            let mut config: Value = serde_json::from_slice(&fs::read(&path)?).context("parsing runc's config")?;
            config["process"]["args"] = json!(["/bin/true"]);
            config["process"]["terminal"] = json!(false);
            config["root"]["path"] = json!(setup.rootfs);
            fs::write(&path, serde_json::to_vec_pretty(&config)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(setup)
    }

    /// `strata run --rm IMAGE COMMAND...` with strata's cache and data under `WORK/runner`.
    fn strata_run(&self, command: &[&str]) -> Command {
        self.strata_run_image(&[self.image.as_os_str()], command)
    }

    /// The same for the image given by `image` (a path, or `--layer PATH`).
    fn strata_run_image(&self, image: &[&std::ffi::OsStr], command: &[&str]) -> Command {
        let mut cmd = Command::new(&self.strata);
        cmd.env("STRATA_CACHE", self.dir.join("strata-cache"))
            .env("STRATA_RUN_DIR", RUN_DIR)
            .env("STRATA_DATA_DIR", self.dir.join("strata-data"))
            .args(["run", "--rm"])
            .args(image)
            .args(command);
        cmd
    }

    /// The command that starts `/bin/true` in a container of `runner`.
    fn command(&self, runner: Runner) -> Command {
        let mut cmd = match runner {
            Runner::Strata => self.strata_run(&["/bin/true"]),
            Runner::Bwrap => {
                let mut cmd = Command::new("bwrap");
                cmd.args(["--unshare-all", "--bind"]).arg(&self.rootfs);
                cmd.args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]);
                cmd
            }
            Runner::Unshare => {
                let mut cmd = Command::new("unshare");
                cmd.args(["-Urmpfiun", "chroot"]).arg(&self.rootfs).arg("/bin/true");
                cmd
            }
            Runner::Runc => {
                let n = self.runc_starts.get() + 1;
                self.runc_starts.set(n);
                let mut cmd = Command::new("runc");
                cmd.arg("--root").arg(self.dir.join("runc-state"));
                cmd.arg("run")
                    .arg("--bundle")
                    .arg(&self.bundle)
                    .arg(format!("strata-bench-{}-{n}", std::process::id()));
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// One start to exit, with the output discarded.
    fn start(&self, runner: Runner) -> Result<Duration> {
        let mut cmd = self.command(runner);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let begin = Instant::now();
        let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        let took = begin.elapsed();
        if !status.success() {
            bail!("{} exited with {status}", runner.label());
        }
        Ok(took)
    }

    /// Why `runner` fails: the timed starts discard the output, so start once more keeping it.
    fn diagnose(&self, runner: Runner) -> String {
        match self.command(runner).output() {
            Ok(out) if out.status.success() => "a re-run with its output kept succeeded".into(),
            Ok(out) => {
                let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
                let tail: Vec<&str> = text.lines().rev().take(4).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("a re-run failed too ({}): {}", out.status, tail.join(" / "))
            }
            Err(e) => format!("re-running it failed: {e}"),
        }
    }
}

/// The timed starts of one system.
#[derive(Debug, Default)]
struct Starts {
    /// Wall times of the starts that succeeded, in run order (ms).
    ms: Vec<f64>,
    timed: usize,
    failed: usize,
}

/// One filesystem daemon's memory, in KiB.
#[derive(Clone, Copy, Debug)]
struct Daemon {
    pss: u64,
    rss: u64,
}

/// Measures every available system, writes `WORK/results-runner.md` and prints it.
pub fn run(opts: &Options) -> Result<()> {
    if !host::is_root() {
        bail!("strata-bench --runner needs root: runc and strata run make cgroups");
    }
    if opts.rounds == 0 || opts.starts == 0 {
        bail!("--runs and the starts per round must be at least 1");
    }
    let work = super::start_run(&opts.work)?;
    let strata = super::strata_binary(opts.strata.as_deref())?;
    if !host::have_command("umoci") {
        bail!("umoci not found (it unpacks the image for the other systems): run scripts/setup.sh");
    }
    let mut results = Results::default();
    let runners: Vec<Runner> = Runner::ALL
        .into_iter()
        .filter(|runner| match runner.programs().iter().find(|(program, _)| !host::have_command(program)) {
            None => true,
            Some((program, package)) => {
                let why = format!(
                    "{} skipped: {program} not found (install the Debian package {package}, e.g. with \
                     scripts/setup.sh --bench)",
                    runner.label()
                );
                eprintln!("strata-bench: {why}");
                results.notes.push(why);
                false
            }
        })
        .collect();
    let setup = Setup::prepare(&work, strata, &runners)?;
    let _run_dir = host::Tmpfs::unless_already(Path::new(RUN_DIR), &setup.dir.join("setup.log"))?;

    let mut starts = BTreeMap::new();
    let mut outcome = measure(opts, &setup, &runners, &mut starts, &mut results);
    let mut memory = Vec::new();
    let debootstrap = work.join("debootstrap/layer.tar");
    let images: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        ("the runner image", vec![setup.image.as_os_str()]),
        ("the debootstrap image", vec!["--layer".as_ref(), debootstrap.as_os_str()]),
    ];
    for (label, image) in images {
        if outcome.is_err() || !starts.contains_key(&Runner::Strata) {
            break;
        }
        if label == "the debootstrap image" && !debootstrap.exists() {
            results.notes.push("no debootstrap data set: run `strata-bench --rootfs debootstrap` first".into());
            break;
        }
        eprintln!("strata-bench: memory of {CONTAINERS} strata filesystem daemons, {label}");
        super::settle(&mut results);
        match daemon_memory(&setup, &image) {
            Ok(daemons) => memory.push((label, daemons)),
            Err(e) => {
                outcome = host::check_interrupt();
                results.notes.push(format!("the daemons' memory could not be measured ({label}): {e:#}"));
            }
        }
    }

    let doc = render(opts, &setup, &runners, &starts, &memory, &results, outcome.as_ref().err());
    println!("{doc}");
    // An interrupted run must not replace a complete earlier report.
    let suffix = if outcome.is_err() { ".partial" } else { "" };
    let path = work.join(format!("results-runner{suffix}.md"));
    fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("strata-bench: wrote {}", path.display());
    outcome
}

/// Every round of every system. A system whose warm-up fails is noted and left out of the
/// remaining rounds; an interrupt stops everything.
fn measure(
    opts: &Options,
    setup: &Setup,
    runners: &[Runner],
    starts: &mut BTreeMap<Runner, Starts>,
    results: &mut Results,
) -> Result<()> {
    let mut left_out = Vec::new();
    for round in 1..=opts.rounds {
        for &runner in runners {
            if left_out.contains(&runner) {
                continue;
            }
            eprintln!("strata-bench: [runner round {round}/{}] {}", opts.rounds, runner.label());
            super::settle(results);
            if let Err(e) = (0..WARMUPS).try_for_each(|_| setup.start(runner).map(drop)) {
                host::check_interrupt()?;
                let why = format!("{e:#}; {}", setup.diagnose(runner));
                eprintln!("strata-bench: {} failed: {why}", runner.label());
                results.notes.push(format!(
                    "{} failed while warming up in round {round} and was left out afterwards: {why}",
                    runner.label()
                ));
                left_out.push(runner);
                continue;
            }
            let s: &mut Starts = starts.entry(runner).or_default();
            let (before, failed_before) = (s.ms.len(), s.failed);
            for _ in 0..opts.starts {
                host::check_interrupt()?;
                s.timed += 1;
                match setup.start(runner) {
                    Ok(took) => s.ms.push(super::ms(took)),
                    Err(e) => {
                        host::check_interrupt()?;
                        s.failed += 1;
                        if s.failed == 1 {
                            let why = format!("{e:#}; {}", setup.diagnose(runner));
                            eprintln!("strata-bench: {} failed: {why}", runner.label());
                            results.notes.push(format!("{}'s first failed start: {why}", runner.label()));
                        }
                    }
                }
            }
            let shown = median(&s.ms[before..]).map_or("n/a".into(), format_ms);
            eprintln!("  median {shown} ms over {} start(s), {} failed", s.ms.len() - before, s.failed - failed_before);
        }
    }
    Ok(())
}

/// Starts [`CONTAINERS`] containers of `image` running `sleep 3` and reads their daemons' memory
/// while all of them run.
fn daemon_memory(setup: &Setup, image: &[&std::ffi::OsStr]) -> Result<Vec<Daemon>> {
    // One start first, so the containers measured find the layer indexed.
    let first = setup.strata_run_image(image, &["true"]).stdin(Stdio::null()).output().context("strata run")?;
    if !first.status.success() {
        bail!("strata run ... true failed ({}): {}", first.status, String::from_utf8_lossy(&first.stderr).trim());
    }
    let mut supervisors = Vec::new();
    let spawned = (0..CONTAINERS).try_for_each(|_| {
        let mut cmd = setup.strata_run_image(image, &["sleep", "3"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        supervisors.push(cmd.spawn().context("starting strata run")?);
        Ok(())
    });
    let measured = spawned.and_then(|()| {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        let daemons = supervisors.iter().map(|s| wait_for_daemon(s.id(), deadline)).collect::<Result<Vec<u32>>>()?;
        daemons.into_iter().map(smaps_rollup).collect::<Result<Vec<Daemon>>>()
    });
    // The containers end on their own after `sleep 3`, whatever happened above.
    for supervisor in supervisors {
        let out = supervisor.wait_with_output().context("waiting for strata run")?;
        if !out.status.success() {
            bail!("strata run ... sleep 3 failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    measured
}

/// The filesystem daemon of the `strata run` process `supervisor`, once its container runs
/// `sleep` (so the rootfs is mounted and has served the container's start).
fn wait_for_daemon(supervisor: u32, deadline: Instant) -> Result<u32> {
    loop {
        for daemon in children(supervisor) {
            let runs_sleep =
                |pid: &u32| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|args| args.starts_with(b"sleep\0"));
            if children(daemon).iter().any(runs_sleep) {
                return Ok(daemon);
            }
        }
        if !host::pid_alive(supervisor) {
            bail!("strata run (pid {supervisor}) ended before its container ran sleep");
        }
        if Instant::now() > deadline {
            bail!("the container of strata run (pid {supervisor}) did not run sleep within {DAEMON_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live processes whose parent is `pid` (a scan of /proc: `task/*/children` needs
/// CONFIG_PROC_CHILDREN).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid) && host::pid_alive(*child))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces; the fields after its ')' are fixed:
    // state, then the parent's pid.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn smaps_rollup(pid: u32) -> Result<Daemon> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key| kib_field(&text, key).with_context(|| format!("no {key} in {path}"));
    Ok(Daemon { pss: field("Pss:")?, rss: field("Rss:")? })
}

/// The report: context, the start-to-exit table, the daemons' memory, notes and raw samples.
fn render(
    opts: &Options,
    setup: &Setup,
    runners: &[Runner],
    starts: &BTreeMap<Runner, Starts>,
    memory: &[(&str, Vec<Daemon>)],
    results: &Results,
    error: Option<&anyhow::Error>,
) -> String {
    let mut doc = String::from("## strata-bench: container start-to-exit (`/bin/true`)\n\n");
    let _ = writeln!(doc, "- command: `{}`", opts.command_line);
    let _ = writeln!(doc, "- host: {}", host::describe_host());
    let versions: Vec<String> = runners.iter().filter_map(|r| r.version(&setup.strata)).collect();
    let _ = writeln!(doc, "- versions: {}", versions.join(", "));
    let _ = writeln!(
        doc,
        "- image: the fixture runner image (static busybox, 2 layers); strata runs it from an OCI layout, the \
         others from ROOTFS, the same image unpacked by `umoci raw unpack`"
    );
    for runner in runners {
        let _ = writeln!(doc, "- {}: {}", runner.label(), runner.shown());
    }
    let _ = writeln!(
        doc,
        "- method: {} round(s), each running every system in turn: {WARMUPS} untimed warm-up starts, then {} \
         timed ones; a time is the wall time of one start to exit (`Command::status()`, output to /dev/null), in \
         ms. strata's index cache is warm (filled by the warm-ups). runc's config is `runc spec` with args \
         `/bin/true`, `terminal: false` and `root.path` = ROOTFS, a fresh container ID per start. Failed starts \
         are counted, not timed.",
        opts.rounds, opts.starts
    );
    if let Some(line) = results.background_summary() {
        let _ = writeln!(
            doc,
            "- host noise: {line} (each round of each system waits up to {} s for less than {:.0}%).",
            super::QUIET_TIMEOUT.as_secs(),
            super::QUIET * 100.0
        );
    }
    doc.push('\n');
    doc += &table(starts);
    for (label, daemons) in memory {
        doc.push('\n');
        doc += &memory_table(label, daemons);
    }
    if !results.notes.is_empty() || error.is_some() {
        doc.push('\n');
    }
    for note in &results.notes {
        let _ = writeln!(doc, "- note: {note}");
    }
    if let Some(e) = error {
        let _ = writeln!(doc, "- ⚠ the run stopped early: {e:#}");
    }
    doc += "\n<details><summary>raw samples (run order)</summary>\n\n";
    for (runner, s) in starts {
        let values: Vec<String> = s.ms.iter().map(|v| format_ms(*v)).collect();
        let _ = writeln!(doc, "- {} (ms): {}", runner.label(), values.join(", "));
    }
    for (label, daemons) in memory {
        let values: Vec<String> = daemons.iter().map(|d| format!("{}/{}", d.pss, d.rss)).collect();
        let _ = writeln!(doc, "- strata daemons, {label}, Pss/Rss (KiB): {}", values.join(", "));
    }
    doc += "\n</details>\n";
    doc
}

/// Medians, p90s and ratios to bwrap and to the unshare + chroot floor, one row per system.
fn table(starts: &BTreeMap<Runner, Starts>) -> String {
    let median_of = |runner| starts.get(&runner).and_then(|s| median(&s.ms));
    let (bwrap, floor) = (median_of(Runner::Bwrap), median_of(Runner::Unshare));
    let mut out = String::from(
        "| system | median (ms) | p90 (ms) | ratio to bwrap | ratio to unshare + chroot | failed starts |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for runner in Runner::ALL {
        let Some(s) = starts.get(&runner) else {
            let _ = writeln!(out, "| {} | n/a | n/a | n/a | n/a | n/a |", runner.label());
            continue;
        };
        let med = median(&s.ms);
        let warn = if s.failed > 0 { " ⚠" } else { "" };
        let _ = writeln!(
            out,
            "| {} | {}{warn} | {} | {} | {} | {}/{}{warn} |",
            runner.label(),
            med.map_or("n/a".into(), format_ms),
            percentile(&s.ms, 0.9).map_or("n/a".into(), format_ms),
            ratio(med, bwrap).map_or("n/a".into(), format_ratio),
            ratio(med, floor).map_or("n/a".into(), format_ratio),
            s.failed,
            s.timed
        );
    }
    out
}

/// The strata daemons' memory with one image: the median per container and the total.
fn memory_table(image: &str, daemons: &[Daemon]) -> String {
    let column = |f: fn(&Daemon) -> u64| daemons.iter().map(f).collect::<Vec<u64>>();
    let (pss, rss) = (column(|d| d.pss), column(|d| d.rss));
    let as_f64 = |v: &[u64]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    let med = |v: &[u64]| median(&as_f64(v)).map_or("n/a".into(), |m| format!("{m:.0}"));
    let mut out = format!(
        "| strata filesystem daemon, {} containers of {image} running `sleep 3` | Pss (KiB) | Rss (KiB) |\n|---|---:|---:|\n",
        daemons.len()
    );
    let _ = writeln!(out, "| median per container | {} | {} |", med(&pss), med(&rss));
    let _ = writeln!(
        out,
        "| total of {} daemons | {} | {} |",
        daemons.len(),
        pss.iter().sum::<u64>(),
        rss.iter().sum::<u64>()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratios_and_failures() {
        let mut starts = BTreeMap::new();
        starts.insert(Runner::Strata, Starts { ms: vec![30.0, 40.0, 50.0], timed: 4, failed: 1 });
        starts.insert(Runner::Bwrap, Starts { ms: vec![10.0, 10.0], timed: 2, failed: 0 });
        starts.insert(Runner::Unshare, Starts { ms: vec![5.0], timed: 1, failed: 0 });
        let lines: Vec<String> = table(&starts).lines().map(str::to_string).collect();
        assert_eq!(lines[2], "| strata | 40.0 ⚠ | 50.0 | 4.00x | 8.00x | 1/4 ⚠ |");
        assert_eq!(lines[3], "| bwrap | 10.0 | 10.0 | 1.00x | 2.00x | 0/2 |");
        assert_eq!(lines[5], "| runc | n/a | n/a | n/a | n/a | n/a |");
    }
}
