//! The macro benchmark behind `strata-bench`: mounts the same two layers with kernel overlayfs,
//! strata, fuse-overlayfs and ratarmount, one system at a time, runs the same workloads cold
//! and warm on each, and reports medians and ratios to the kernel as a markdown table.
//!
//! Per run and system: forget on-disk indexes, drop caches, mount (the cold mount time); for
//! each workload drop caches and run it (cold), then run it again (warm); read the daemon's
//! RSS after the read-every-file workload; unmount; mount again (the warm mount time); unmount.
//! Systems are interleaved within a run so slow drift on the host hits all of them alike.
//!
//! With `--writable`, [`writable`] measures the write paths instead (kernel overlayfs, strata
//! and fuse-overlayfs over a fresh upper) and writes `WORK/results-writable-<dataset>.md`.
//!
//! With `--runner`, [`runner`] times containers from start to exit instead (strata run, bwrap,
//! unshare + chroot and runc on the same image) and writes `WORK/results-runner.md`.
//!
//! With `--scale N`, [`scale`] runs N containers of one image at once with strata, and with bwrap
//! over kernel overlayfs and over fuse-overlayfs, and writes what they cost to
//! `WORK/results-scale.md`.

pub mod dataset;
pub mod host;
pub mod report;
pub mod runner;
pub mod scale;
pub mod systems;
pub mod workloads;
pub mod writable;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use dataset::{DataSet, Kind};
use report::{Results, Row, Temp};
use systems::{System, Tools};
use workloads::Workload;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub datasets: Vec<Kind>,
    pub runs: usize,
    pub work: PathBuf,
    /// The strata binary; None: `strata` next to this executable.
    pub strata: Option<PathBuf>,
    /// Shown in the report.
    pub command_line: String,
    /// Run the write workloads (see [`writable`]) instead of the read-only ones.
    pub writable: bool,
}

/// Runs every data set and writes `WORK/results-<dataset>.md` (`results-writable-<dataset>.md`
/// with `--writable`) for each.
pub fn run(opts: &Options) -> Result<()> {
    if !host::is_root() {
        bail!("strata-bench needs root: it drops the page cache and mounts kernel overlayfs");
    }
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let work = start_run(&opts.work)?;
    let strata = strata_binary(opts.strata.as_deref())?;
    let tools = Tools {
        strata,
        strata_cache: work.join("strata-cache"),
        ratarmount_index: work.join("ratarmount-index"),
        logs: work.join("logs"),
    };
    fs::create_dir_all(&tools.logs)?;
    let mnt_root = work.join("mnt");
    systems::unmount_leftovers(&mnt_root);

    let mut skipped = Vec::new();
    let candidates = if opts.writable { &System::WRITABLE[..] } else { &System::ALL[..] };
    let systems: Vec<System> = candidates
        .iter()
        .copied()
        .filter(|s| match tools.unavailable(*s) {
            None => true,
            Some(why) => {
                eprintln!("strata-bench: skipping {}: {why}", s.label());
                skipped.push(format!("{} skipped: {why}", s.label()));
                false
            }
        })
        .collect();
    if !systems.contains(&System::Strata) {
        bail!("{}", skipped.join("; "));
    }

    let mut outcome = Ok(());
    for kind in &opts.datasets {
        let ds = match dataset::prepare(*kind, &work) {
            Ok(ds) => ds,
            Err(e) if *kind == Kind::Debootstrap => {
                eprintln!("strata-bench: the debootstrap data set is unavailable, continuing without it: {e:#}");
                continue;
            }
            Err(e) => return Err(e.context(format!("preparing the {} data set", kind.name()))),
        };
        eprintln!("strata-bench: {}", ds.describe());
        let mut results = Results::default();
        results.notes.extend(skipped.iter().cloned());
        let (doc, prefix) = if opts.writable {
            let (doc, measured) = writable::run_dataset(opts, &ds, &systems, &tools, &work, &mnt_root, &mut results)?;
            outcome = measured;
            (doc, "results-writable")
        } else {
            outcome = measure(&ds, &systems, opts.runs, &tools, &mnt_root, &mut results);
            (render(opts, &tools, &ds, &results, outcome.as_ref().err()), "results")
        };
        println!("{doc}");
        // An interrupted run must not replace a complete earlier report.
        let suffix = if outcome.is_err() { ".partial" } else { "" };
        let path = work.join(format!("{prefix}-{}{suffix}.md", ds.name()));
        fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("strata-bench: wrote {}", path.display());
        if outcome.is_err() {
            break;
        }
    }
    systems::unmount_leftovers(&mnt_root);
    outcome
}

/// All runs of all systems on one data set. A system that fails is noted and left out of the
/// remaining runs; an interrupt stops everything.
fn measure(
    ds: &DataSet,
    systems: &[System],
    runs: usize,
    tools: &Tools,
    mnt_root: &Path,
    results: &mut Results,
) -> Result<()> {
    let label = ds.name().to_string();
    each_run(systems, runs, &label, BTreeSet::new(), results, |system, results| {
        measure_once(system, ds, tools, &mnt_root.join(system.key()), results)
    })
}

/// Runs `once` for every run of every system. A system that fails is noted in the report and
/// left out of the remaining runs (as are those already in `failed`); an interrupt stops all.
pub(crate) fn each_run(
    systems: &[System],
    runs: usize,
    label: &str,
    mut failed: BTreeSet<System>,
    results: &mut Results,
    mut once: impl FnMut(System, &mut Results) -> Result<()>,
) -> Result<()> {
    for run in 1..=runs {
        for &system in systems {
            if failed.contains(&system) {
                continue;
            }
            eprintln!("strata-bench: [{label} run {run}/{runs}] {}", system.label());
            if let Err(e) = once(system, results) {
                host::check_interrupt()?;
                eprintln!("strata-bench: {} failed: {e:#}", system.label());
                results
                    .notes
                    .push(format!("{} failed in run {run} and was left out afterwards: {e:#}", system.label()));
                failed.insert(system);
            }
        }
    }
    Ok(())
}

/// Other processes may use at most this share of all CPUs before a step starts.
pub(crate) const QUIET: f64 = 0.15;
/// How long to wait for a quiet host before measuring anyway (and saying so).
pub(crate) const QUIET_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for a quiet host (another build on a 2-CPU machine would skew everything) and notes
/// how busy it was.
pub(crate) fn settle(results: &mut Results) {
    results.background.push(host::wait_quiet(QUIET, QUIET_TIMEOUT));
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One run of one system: cold mount, every workload cold and warm, RSS, warm mount.
fn measure_once(system: System, ds: &DataSet, tools: &Tools, mnt: &Path, results: &mut Results) -> Result<()> {
    fs::create_dir_all(mnt)?;
    let scratch = tools.logs.join(format!("{}-workload.stderr", system.key()));
    host::check_interrupt()?;
    tools.forget_indexes(system)?;
    settle(results);
    host::drop_caches()?;
    let (mounted, took) = tools.mount(system, ds, mnt)?;
    results.record(Row::MountCold, system, ms(took));
    eprintln!("  mount cold {:>10.1} ms", ms(took));
    for workload in Workload::ALL {
        settle(results);
        for temp in [Temp::Cold, Temp::Warm] {
            host::check_interrupt()?;
            if temp == Temp::Cold {
                host::drop_caches()?;
            }
            let start = Instant::now();
            let outcome = workload.run(mounted.path(), &scratch).with_context(|| format!("{workload:?} {temp:?}"))?;
            let took = start.elapsed();
            let row = Row::Work(workload, temp);
            results.record(row, system, ms(took));
            results.observe(workload, system, outcome.seen);
            results.errors(row, system, outcome.errors, outcome.first_error.as_deref());
            let errors = match &outcome.first_error {
                Some(first) => format!("; {} error(s), first: {first}", outcome.errors),
                None => String::new(),
            };
            eprintln!(
                "  {workload:?} {temp:?} {:>10.1} ms  ({} {}{errors})",
                ms(took),
                outcome.seen,
                workload.observed()
            );
        }
        if workload == Workload::ReadAll {
            if let Some(rss) = mounted.rss_mib() {
                results.record(Row::Rss, system, rss);
                eprintln!("  daemon RSS {rss:.1} MiB");
            }
        }
    }
    mounted.unmount()?;
    host::check_interrupt()?;
    settle(results);
    let (mounted, took) = tools.mount(system, ds, mnt)?;
    results.record(Row::MountWarm, system, ms(took));
    eprintln!("  mount warm {:>10.1} ms", ms(took));
    mounted.unmount()
}

/// The report for one data set: context, table, warnings, notes and raw samples.
fn render(opts: &Options, tools: &Tools, ds: &DataSet, results: &Results, error: Option<&anyhow::Error>) -> String {
    let mut doc = format!("## strata-bench: `{}` data set\n\n", ds.name());
    doc += &format!("- command: `{}`\n", opts.command_line);
    doc += &format!("- host: {}\n", host::describe_host());
    doc += &format!(
        "- versions: {}, {}, {}, {}\n",
        strata_version(&tools.strata),
        host::line_matching("fuse-overlayfs", &["--version"], "fuse-overlayfs:").unwrap_or_default(),
        host::line_matching("ratarmount", &["--version"], "ratarmount").unwrap_or_default(),
        host::line_matching("tar", &["--version"], "tar").unwrap_or_default(),
    );
    doc += &format!("- {}\n", ds.describe());
    doc += &format!(
        "- method: median of {} run(s); times in ms. Cold = `sync; echo 3 > /proc/sys/vm/drop_caches` after \
         mounting and before the command; warm = the same command right after. Cold mount = no strata/ratarmount \
         index on disk and caches dropped; warm mount = remount right after unmounting. Kernel overlayfs is \
         mounted `ro` with lowerdir=layer2:layer1, fuse-overlayfs the same, strata and ratarmount mount the two \
         tars.\n",
        opts.runs
    );
    if let Some(line) = results.background_summary() {
        doc += &format!(
            "- host noise: {line} (each step waits up to {} s for less than {:.0}%).\n",
            QUIET_TIMEOUT.as_secs(),
            QUIET * 100.0
        );
    }
    if let Some(n) = results.agreed(Workload::Find) {
        doc += &format!("- every system listed {n} entries with `find` (expected {}).\n", ds.stats.entries);
    }
    doc += "\n";
    doc += &results.table();
    append_notes(&mut doc, results, error);
    doc
}

/// The strata binary to measure: `--strata`, else `strata` next to this executable.
pub(crate) fn strata_binary(given: Option<&Path>) -> Result<PathBuf> {
    let strata = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("strata"),
    };
    if !host::have_command(&strata.to_string_lossy()) {
        bail!(
            "{} not found: build it with `cargo build --release --bin strata` or pass --strata PATH",
            strata.display()
        );
    }
    Ok(strata)
}

/// What every mode does first: Ctrl-C stops it between steps, and the work directory exists, by
/// its canonical path, usable in overlay mount options.
pub(crate) fn start_run(work: &Path) -> Result<PathBuf> {
    host::install_interrupt_handler();
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let work = fs::canonicalize(work)?;
    let shown = work.to_string_lossy();
    if shown.contains([':', ',', ' ', '\\']) {
        bail!("the work directory must not contain ':', ',', spaces or backslashes (overlay mount options): {shown}");
    }
    Ok(work)
}

/// `strata 0.1.0 (PATH, built N min ago, default --threads)`, for the reports.
pub(crate) fn strata_version(strata: &Path) -> String {
    let version = host::line_matching(strata.to_str().unwrap_or("strata"), &["--version"], "strata");
    let built = fs::metadata(strata)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|age| format!(", built {} min ago", age.as_secs() / 60))
        .unwrap_or_default();
    format!("{} ({}{built}, default --threads)", version.unwrap_or_else(|| "strata ?".into()), strata.display())
}

/// What follows a report's table: warnings, notes, the error that stopped the run, raw samples.
pub(crate) fn append_notes(doc: &mut String, results: &Results, error: Option<&anyhow::Error>) {
    let disagreements = results.disagreements();
    if !disagreements.is_empty() || !results.error_notes().is_empty() || !results.notes.is_empty() || error.is_some() {
        *doc += "\n";
    }
    for (_, line) in &disagreements {
        *doc += &format!("- ⚠ {line}\n");
    }
    for line in results.error_notes() {
        *doc += &format!("- ⚠ {line}\n");
    }
    for note in &results.notes {
        *doc += &format!("- note: {note}\n");
    }
    if let Some(e) = error {
        *doc += &format!("- ⚠ the run stopped early: {e:#}\n");
    }
    *doc += "\n<details><summary>raw samples (run order)</summary>\n\n";
    *doc += &results.raw();
    *doc += "\n</details>\n";
}
