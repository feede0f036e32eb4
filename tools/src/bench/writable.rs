//! The writable benchmark (`strata-bench --writable`): kernel overlayfs, strata and
//! fuse-overlayfs over the same three lowers (layer 1, big.bin, a git repository), each run on a
//! fresh empty upper, measured on the write paths: creating and deleting many small files, the
//! copy-up of a large lower file, a large sequential write, random 4k I/O (fio), untarring a
//! source tree and `git status` on a repository in the lower.
//!
//! Per run and system: fresh upper and work directories, one mount, the steps below in order on
//! that mount (each after `sync; echo 3 > /proc/sys/vm/drop_caches` unless noted), unmount.
//! After each step an untimed check reads back what it wrote, so a system that is fast because
//! it is wrong gets a ⚠ instead of a good number.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::dataset::{self, DataSet, WriteData};
use super::host;
use super::report::{format_rate, Results, Row};
use super::systems::{Lowers, System, Tools, UpperDirs};
use super::workloads::{count_output, read_file, Outcome};
use super::{ms, settle, Options};

/// One row of the writable table (or, for [`Step::Upper`], only a consistency check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Mount,
    Create,
    Delete,
    CreateDelete,
    Append,
    SeqWrite,
    RandRw,
    Untar,
    GitCold,
    GitWarm,
    /// What the upper directory holds after unmounting (a check, not a row).
    Upper,
}

impl Step {
    /// A label without sizes; the report replaces it with [`Sizes::label`].
    pub fn label(self) -> &'static str {
        match self {
            Step::Mount => "mount with an empty upper",
            Step::Create => "create+write small files",
            Step::Delete => "`rm -rf` of those files",
            Step::CreateDelete => "create + delete, total",
            Step::Append => "append 1 byte to big.bin (copy-up), cold",
            Step::SeqWrite => "sequential write of a new file (`dd bs=1M conv=fsync`)",
            Step::RandRw => "fio random 4k read/write (IOPS, higher is better)",
            Step::Untar => "`tar -xf` a source tree into MNT",
            Step::GitCold => "`git -C MNT/repo status --porcelain`, cold",
            Step::GitWarm => "`git -C MNT/repo status --porcelain`, warm",
            Step::Upper => "upper directory after unmounting",
        }
    }

    /// What the number a step observes means, for the consistency warnings.
    pub fn observed(self) -> &'static str {
        match self {
            Step::Mount => "entries in the mount's root",
            Step::Create => "entries under MNT/many after creating",
            Step::Delete => "entries left under MNT/many after `rm -rf`",
            Step::CreateDelete => "create + delete",
            Step::Append => "bytes of big.bin after appending",
            Step::SeqWrite => "bytes of the sequentially written file",
            Step::RandRw => "fio errors",
            Step::Untar => "entries extracted under MNT/source",
            Step::GitCold => "lines of `git status --porcelain` (cold)",
            Step::GitWarm => "lines of `git status --porcelain` (warm)",
            Step::Upper => "entries in the upper directory after unmounting",
        }
    }

    /// Measured in operations per second rather than milliseconds.
    pub fn is_rate(self) -> bool {
        self == Step::RandRw
    }

    /// The rows, in table order (the order [`Row`] sorts them in).
    pub const ROWS: [Step; 10] = [
        Step::Mount,
        Step::Create,
        Step::Delete,
        Step::CreateDelete,
        Step::Append,
        Step::SeqWrite,
        Step::RandRw,
        Step::Untar,
        Step::GitCold,
        Step::GitWarm,
    ];
}

/// How much each step writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Files created (and deleted) in step 1, spread evenly over `dirs` directories.
    pub files: usize,
    pub dirs: usize,
    pub file_bytes: usize,
    /// The sequential write.
    pub seq_mib: u64,
    /// fio's file and time limit.
    pub fio_mib: u64,
    pub fio_secs: u64,
}

pub const FULL: Sizes = Sizes { files: 10_000, dirs: 100, file_bytes: 4096, seq_mib: 1024, fio_mib: 256, fio_secs: 10 };
pub const QUICK: Sizes = Sizes { files: 500, dirs: 20, file_bytes: 4096, seq_mib: 64, fio_mib: 32, fio_secs: 3 };

impl Sizes {
    pub fn for_kind(kind: dataset::Kind) -> Sizes {
        if kind == dataset::Kind::Quick {
            QUICK
        } else {
            FULL
        }
    }

    /// The row label with this run's sizes.
    pub fn label(&self, step: Step, big_bytes: u64, source: &dataset::TreeStats) -> String {
        let count = |n: usize| format_rate(n as f64);
        let kib = self.file_bytes / 1024;
        match step {
            Step::Create => {
                format!("create+write {} files of {kib} KiB in {} directories", count(self.files), self.dirs)
            }
            Step::Delete => format!("`rm -rf` of those {} files (after `sync`, caches kept)", count(self.files)),
            Step::Append => format!("append 1 byte to big.bin ({}, copy-up), cold", size(big_bytes)),
            Step::SeqWrite => {
                format!("sequential write of a new {} file (`dd bs=1M conv=fsync`)", size(self.seq_mib << 20))
            }
            Step::RandRw => format!(
                "fio random 4k read/write, {} file, {} s (IOPS, higher is better)",
                size(self.fio_mib << 20),
                self.fio_secs
            ),
            Step::Untar => format!(
                "`tar -xf` a source tree ({} files, {}) into MNT",
                count(source.files as usize),
                size(source.file_bytes)
            ),
            Step::GitCold => "`git -C MNT/repo status --porcelain`, cold (refreshes the index: a copy-up)".into(),
            other => other.label().into(),
        }
    }
}

/// `512 MiB`, `1 GiB`, `39.1 MiB`: short sizes for labels.
pub fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// How many of `total` items each of `parts` buckets gets, the first ones one more.
pub fn split_evenly(total: usize, parts: usize) -> Vec<usize> {
    if parts == 0 {
        return Vec::new();
    }
    (0..parts).map(|i| total / parts + usize::from(i < total % parts)).collect()
}

/// Everything one data set's writable runs need.
pub struct Setup<'a> {
    pub ds: &'a DataSet,
    pub data: &'a WriteData,
    pub lowers: Lowers,
    pub sizes: Sizes,
    pub tools: &'a Tools,
    /// Where the per-system upper and work directories are made.
    pub uppers: PathBuf,
    pub mnt_root: &'a Path,
    pub fio: bool,
}

/// Prepares layer 3 and the source tarball for `ds`, runs every system `runs` times and returns
/// the report (and whether the run completed).
pub fn run_dataset(
    opts: &Options,
    ds: &DataSet,
    systems: &[System],
    tools: &Tools,
    work: &Path,
    mnt_root: &Path,
    results: &mut Results,
) -> Result<(String, Result<()>)> {
    let data = dataset::prepare_writable(ds.kind, work)
        .with_context(|| format!("preparing the writable benchmark's data for {}", ds.name()))?;
    let fio = host::have_command("fio");
    if !fio {
        let note = "fio is not installed: the random 4k read/write row is skipped (`apt-get install -y fio`)";
        eprintln!("strata-bench: note: {note}");
        results.notes.push(note.into());
    }
    let scratch = host::ScratchFs::ext4(
        &work.join("uppers.img"),
        &work.join("writable"),
        8 << 30,
        &tools.logs.join("uppers-mkfs.log"),
    )?;
    let setup = Setup {
        ds,
        data: &data,
        lowers: Lowers {
            dirs: vec![ds.lower1.clone(), ds.lower2.clone(), data.repo_lower.clone()],
            tars: vec![ds.layer1_tar.clone(), ds.layer2_tar.clone(), data.repo_tar.clone()],
        },
        sizes: Sizes::for_kind(ds.kind),
        tools,
        uppers: scratch.dir.clone(),
        mnt_root,
        fio,
    };
    for step in Step::ROWS {
        results.relabel(Row::Write(step), setup.sizes.label(step, ds.big_bytes(), &data.source));
    }
    let outcome = measure(&setup, systems, opts.runs, results);
    let doc = render(opts, &setup, results, outcome.as_ref().err());
    drop(scratch);
    Ok((doc, outcome))
}

/// All runs of all systems. A system that fails is noted and left out of the remaining runs.
fn measure(setup: &Setup, systems: &[System], runs: usize, results: &mut Results) -> Result<()> {
    let mut failed = std::collections::BTreeSet::new();
    if systems.contains(&System::StrataTar) {
        // Index the tars once, so the tar variant's mount time is not the first indexing.
        if let Err(e) = warm_up(setup, System::StrataTar) {
            host::check_interrupt()?;
            eprintln!("strata-bench: {} failed: {e:#}", System::StrataTar.label());
            results.notes.push(format!("{} failed to mount and was left out: {e:#}", System::StrataTar.label()));
            failed.insert(System::StrataTar);
        }
    }
    let label = format!("writable {}", setup.ds.name());
    super::each_run(systems, runs, &label, failed, results, |system, results| measure_once(setup, system, results))
}

/// Fresh, empty upper and work directories for `system`.
fn fresh_upper(setup: &Setup, system: System) -> Result<UpperDirs> {
    let base = setup.uppers.join(system.key());
    remove_tree(&base)?;
    let dirs = UpperDirs { upper: base.join("upper"), work: base.join("work") };
    fs::create_dir_all(&dirs.upper)?;
    fs::create_dir_all(&dirs.work)?;
    Ok(dirs)
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn mountpoint(setup: &Setup, system: System) -> Result<PathBuf> {
    let mnt = setup.mnt_root.join(format!("writable-{}", system.key()));
    fs::create_dir_all(&mnt)?;
    Ok(mnt)
}

/// Mounts and unmounts once (strata indexes and caches the tars).
fn warm_up(setup: &Setup, system: System) -> Result<()> {
    let rw = fresh_upper(setup, system)?;
    let (mounted, _) = setup.tools.mount_writable(system, &setup.lowers, &rw, &mountpoint(setup, system)?)?;
    mounted.unmount()?;
    remove_tree(&setup.uppers.join(system.key()))
}

/// Records a per-step error (⚠ in the cell, a note under the table) and prints it.
fn flag(results: &mut Results, step: Step, system: System, outcome: &Outcome) {
    results.errors(Row::Write(step), system, outcome.errors, outcome.first_error.as_deref());
    if let Some(first) = &outcome.first_error {
        eprintln!("  ⚠ {}: {} error(s), first: {first}", step.label(), outcome.errors);
    }
}

fn problem(results: &mut Results, step: Step, system: System, message: String) {
    let mut outcome = Outcome::default();
    outcome.error(message);
    flag(results, step, system, &outcome);
}

/// Settles, drops caches and runs `f`, timed.
fn cold<T>(results: &mut Results, f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    host::check_interrupt()?;
    settle(results);
    host::drop_caches()?;
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

fn record(results: &mut Results, step: Step, system: System, took: Duration) {
    results.record(Row::Write(step), system, ms(took));
    eprintln!("  {:<12} {:>10.1} ms", format!("{step:?}"), ms(took));
}

/// One run of one system: every step on one mount over a fresh upper.
fn measure_once(setup: &Setup, system: System, results: &mut Results) -> Result<()> {
    let rw = fresh_upper(setup, system)?;
    let mnt = mountpoint(setup, system)?;
    let scratch = setup.tools.logs.join(format!("{}-writable.stderr", system.key()));
    let sizes = setup.sizes;

    host::check_interrupt()?;
    settle(results);
    host::drop_caches()?;
    let (mounted, took) = setup.tools.mount_writable(system, &setup.lowers, &rw, &mnt).context("mounting")?;
    record(results, Step::Mount, system, took);
    let m = mounted.path().to_path_buf();
    results.observe(
        Step::Mount,
        system,
        fs::read_dir(&m).with_context(|| format!("listing {}", m.display()))?.count() as u64,
    );

    // 1. Many small files, then `rm -rf`.
    let many = m.join("many");
    let ((), create) = cold(results, || create_files(&many, &sizes)).context("creating files")?;
    record(results, Step::Create, system, create);
    match verify_created(&many, &sizes) {
        Ok(entries) => results.observe(Step::Create, system, entries),
        Err(e) => problem(results, Step::Create, system, format!("reading back: {e:#}")),
    }
    host::sync()?;
    let start = Instant::now();
    let outcome = rm_rf(&many, &scratch)?;
    let delete = start.elapsed();
    record(results, Step::Delete, system, delete);
    record(results, Step::CreateDelete, system, create + delete);
    flag(results, Step::Delete, system, &outcome);
    let left = if fs::symlink_metadata(&many).is_ok() { tree_summary(&many).map_or(1, |(n, _)| n) } else { 0 };
    results.observe(Step::Delete, system, left);

    // 2. Copy-up of the big lower file.
    let big = m.join("big.bin");
    let ((), took) = cold(results, || append_byte(&big)).context("appending to big.bin")?;
    record(results, Step::Append, system, took);
    match verify_append(&big, &setup.ds.lower2.join("big.bin")) {
        Ok(len) => results.observe(Step::Append, system, len),
        Err(e) => problem(results, Step::Append, system, format!("{e:#}")),
    }

    // 3. Sequential write of a new file.
    let seq = m.join("seq.bin");
    let (outcome, took) = cold(results, || dd_write(&seq, sizes.seq_mib, &scratch))?;
    record(results, Step::SeqWrite, system, took);
    flag(results, Step::SeqWrite, system, &outcome);
    match fs::metadata(&seq) {
        Ok(meta) => {
            results.observe(Step::SeqWrite, system, meta.len());
            if meta.len() != sizes.seq_mib << 20 {
                problem(results, Step::SeqWrite, system, format!("{} has {} bytes", seq.display(), meta.len()));
            }
        }
        Err(e) => problem(results, Step::SeqWrite, system, format!("stat {}: {e}", seq.display())),
    }
    remove_written(&seq, Step::SeqWrite, system, results);

    // 4. Random 4k I/O.
    if setup.fio {
        let file = m.join("fio.bin");
        let (fio, _) = cold(results, || fio_randrw(&file, sizes.fio_mib, sizes.fio_secs, &scratch))?;
        match fio {
            Ok(iops) => {
                results.record(Row::Write(Step::RandRw), system, iops);
                eprintln!("  {:<12} {:>10.0} IOPS", "RandRw", iops);
                results.observe(Step::RandRw, system, 0);
            }
            Err(e) => {
                results.observe(Step::RandRw, system, 1);
                problem(results, Step::RandRw, system, format!("{e:#}"));
            }
        }
        remove_written(&file, Step::RandRw, system, results);
    }

    // 5. Untar a source tree.
    let ((outcome, took), _) = cold(results, || {
        // The tarball comes from the page cache, so only the mount is measured.
        read_file(&setup.data.source_tar)?;
        let start = Instant::now();
        let outcome = untar(&setup.data.source_tar, &m, &scratch)?;
        Ok((outcome, start.elapsed()))
    })?;
    record(results, Step::Untar, system, took);
    flag(results, Step::Untar, system, &outcome);
    let source = m.join(dataset::SOURCE_DIR);
    let want = (setup.data.source.entries, setup.data.source.file_bytes);
    match tree_summary(&source) {
        Ok(got) => {
            results.observe(Step::Untar, system, got.0);
            if got != want {
                problem(
                    results,
                    Step::Untar,
                    system,
                    format!("extracted {} entries and {} bytes, expected {} and {}", got.0, got.1, want.0, want.1),
                );
            }
        }
        Err(e) => problem(results, Step::Untar, system, format!("reading back: {e:#}")),
    }
    // Contents, modes, owners and mtimes as the tarball has them.
    let outcome = tar_compare(&setup.data.source_tar, &m, &scratch)?;
    flag(results, Step::Untar, system, &outcome);
    let outcome = rm_rf(&source, &scratch)?;
    if outcome.errors > 0 {
        problem(
            results,
            Step::Untar,
            system,
            format!("rm -rf afterwards: {}", outcome.first_error.unwrap_or_default()),
        );
    }

    // 6. `git status` on the repository in the lower, cold then warm.
    let repo = m.join(dataset::REPO_DIR);
    for (step, drop) in [(Step::GitCold, true), (Step::GitWarm, false)] {
        host::check_interrupt()?;
        if drop {
            settle(results);
            host::drop_caches()?;
        }
        let start = Instant::now();
        let outcome = git_status(&repo, &scratch)?;
        record(results, step, system, start.elapsed());
        results.observe(step, system, outcome.seen);
        flag(results, step, system, &outcome);
        if outcome.seen > 0 {
            let first = fs::read_to_string(scratch.with_extension("stdout")).unwrap_or_default();
            problem(
                results,
                step,
                system,
                format!(
                    "{} changed path(s) in a clean checkout, e.g. {}",
                    outcome.seen,
                    first.lines().next().unwrap_or("")
                ),
            );
        }
    }

    mounted.unmount()?;
    // strata writes kernel overlayfs' format, so their uppers must match; fuse-overlayfs leaves
    // whiteouts for directories that only ever existed in the upper, so it is not compared.
    if system != System::FuseOverlayfs {
        match tree_summary(&rw.upper) {
            Ok((entries, _)) => results.observe(Step::Upper, system, entries - 1),
            Err(e) => problem(results, Step::GitWarm, system, format!("reading the upper afterwards: {e:#}")),
        }
    }
    remove_tree(&setup.uppers.join(system.key()))
}

/// Deletes a file the benchmark wrote (untimed) and writes everything back.
fn remove_written(path: &Path, step: Step, system: System, results: &mut Results) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            problem(results, step, system, format!("removing {}: {e}", path.display()));
        }
    }
    let _ = host::sync();
}

/// The 4 KiB (`file_bytes`) content of created file `index`: its number, then a fixed pattern.
pub fn file_content(index: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dataset::Rng::new(0x5eed).fill(&mut buf);
    let tag = (index as u64).to_le_bytes();
    let n = tag.len().min(len);
    buf[..n].copy_from_slice(&tag[..n]);
    buf
}

/// Creates `root/dNN/fNNNNN` (each `open, write, close`), the files spread over the directories.
pub fn create_files(root: &Path, sizes: &Sizes) -> Result<()> {
    fs::create_dir(root).with_context(|| format!("mkdir {}", root.display()))?;
    let template = file_content(0, sizes.file_bytes);
    let mut buf = template.clone();
    let mut index = 0usize;
    for (d, count) in split_evenly(sizes.files, sizes.dirs).into_iter().enumerate() {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        for _ in 0..count {
            let tag = (index as u64).to_le_bytes();
            let n = tag.len().min(buf.len());
            buf[..n].copy_from_slice(&tag[..n]);
            let path = dir.join(format!("f{index:05}"));
            let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&buf).with_context(|| format!("writing {}", path.display()))?;
            index += 1;
        }
    }
    Ok(())
}

/// Checks what [`create_files`] made under `root`: every file's content, and no other entries.
/// Returns the number of entries (`root` included).
pub fn verify_created(root: &Path, sizes: &Sizes) -> Result<u64> {
    let mut index = 0usize;
    for (d, count) in split_evenly(sizes.files, sizes.dirs).into_iter().enumerate() {
        let dir = root.join(format!("d{d:03}"));
        for _ in 0..count {
            let path = dir.join(format!("f{index:05}"));
            let got = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if got != file_content(index, sizes.file_bytes) {
                bail!("{} does not hold what was written ({} bytes)", path.display(), got.len());
            }
            index += 1;
        }
    }
    let (entries, bytes) = tree_summary(root)?;
    let want = (1 + sizes.dirs + sizes.files) as u64;
    if entries != want || bytes != (sizes.files * sizes.file_bytes) as u64 {
        bail!("{entries} entries and {bytes} bytes under {}, expected {want} entries", root.display());
    }
    Ok(entries)
}

/// (entries, bytes in regular files) under and including `root`; fails on any error.
pub fn tree_summary(root: &Path) -> Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).with_context(|| format!("lstat {}", path.display()))?;
        entries += 1;
        let ft = meta.file_type();
        if ft.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("readdir {}", path.display()))? {
                stack.push(entry.with_context(|| format!("readdir {}", path.display()))?.path());
            }
        } else if ft.is_file() {
            bytes += meta.len();
        }
    }
    Ok((entries, bytes))
}

/// `rm -rf path`; its complaints count as errors.
pub fn rm_rf(path: &Path, scratch: &Path) -> Result<Outcome> {
    let (_, _, outcome) = count_output(Command::new("rm").arg("-rf").arg(path), scratch, &[0, 1], &[])?;
    Ok(outcome)
}

/// Appends one byte to `path` (open O_APPEND, write, close): overlays copy the file up.
pub fn append_byte(path: &Path) -> Result<()> {
    let mut file =
        fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    file.write_all(b"\n").with_context(|| format!("appending to {}", path.display()))?;
    drop(file);
    Ok(())
}

/// Checks that `path` is `original` plus the appended byte; returns its length.
pub fn verify_append(path: &Path, original: &Path) -> Result<u64> {
    let len = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.len();
    let want = fs::metadata(original)?.len() + 1;
    if len != want {
        bail!("{} has {len} bytes after appending one byte, expected {want}", path.display());
    }
    let (mut a, mut b) = (File::open(path)?, File::open(original)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = b.read(&mut y)?;
        if n == 0 {
            break;
        }
        a.read_exact(&mut x[..n]).with_context(|| format!("reading {} at {offset}", path.display()))?;
        if x[..n] != y[..n] {
            let at = offset + x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q).unwrap_or(0) as u64;
            bail!("{} differs from the lower big.bin at byte {at} after the copy-up", path.display());
        }
        offset += n as u64;
    }
    let mut last = [0u8; 2];
    let n = a.read(&mut last)?;
    if n != 1 || last[0] != b'\n' {
        bail!("{} does not end with the appended byte", path.display());
    }
    Ok(len)
}

/// `dd if=/dev/zero of=PATH bs=1M count=MIB conv=fsync status=none`.
pub fn dd_write(path: &Path, mib: u64, scratch: &Path) -> Result<Outcome> {
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .args(["conv=fsync", "status=none"]);
    let (_, _, outcome) = count_output(&mut cmd, scratch, &[0, 1], &[])?;
    Ok(outcome)
}

/// fio's command line for the random 4k read/write job on `file`.
pub fn fio_command(file: &Path, mib: u64, secs: u64) -> Command {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=randrw")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={mib}M"))
        .args(["--rw=randrw", "--rwmixread=50", "--bs=4k", "--iodepth=1", "--ioengine=psync"])
        .arg(format!("--runtime={secs}"))
        // Buffered, and the file fio lays out stays cached (no --invalidate): fio's invalidation
        // cannot reach a FUSE daemon's backing file, so it would send only the kernel's reads
        // to the disk.
        .args(["--time_based", "--invalidate=0", "--randrepeat=1", "--output-format=json"]);
    cmd
}

/// Runs fio; Ok(Ok(IOPS)), or Ok(Err(why)) when fio ran but failed (the system keeps going).
pub fn fio_randrw(file: &Path, mib: u64, secs: u64, scratch: &Path) -> Result<Result<f64>> {
    let mut cmd = fio_command(file, mib, secs);
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = fs::write(scratch, format!("{stderr}\n{stdout}"));
    if !out.status.success() {
        return Ok(Err(anyhow::anyhow!(
            "fio failed ({}): {}",
            out.status,
            stderr
                .lines()
                .chain(stdout.lines())
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        )));
    }
    Ok(parse_fio_iops(&stdout))
}

/// Read plus write IOPS of the first job in fio's JSON output (anything fio printed before the
/// JSON is skipped); an error when the job reports one.
pub fn parse_fio_iops(output: &str) -> Result<f64> {
    let start = output.find('{').context("no JSON in fio's output")?;
    let json: serde_json::Value = serde_json::from_str(&output[start..]).context("parsing fio's JSON")?;
    let job = json.get("jobs").and_then(|j| j.get(0)).context("fio's JSON has no job")?;
    let error = job.get("error").and_then(|e| e.as_i64()).unwrap_or(0);
    if error != 0 {
        bail!("fio's job failed with error {error}");
    }
    let iops = |dir: &str| job.get(dir).and_then(|d| d.get("iops")).and_then(|v| v.as_f64());
    match (iops("read"), iops("write")) {
        (Some(r), Some(w)) => Ok(r + w),
        _ => bail!("fio's JSON has no read/write iops"),
    }
}

/// `tar -xf TAR -C DEST`; its complaints count as errors.
pub fn untar(tar: &Path, dest: &Path, scratch: &Path) -> Result<Outcome> {
    let mut cmd = Command::new("tar");
    cmd.arg("-xf").arg(tar).arg("-C").arg(dest);
    let (_, _, outcome) = count_output(&mut cmd, scratch, &[0, 1, 2], &["Exiting with failure status"])?;
    Ok(outcome)
}

/// `tar -df TAR -C DEST`: every difference between the archive and the tree (content, mode,
/// owner, mtime, size) is one error.
pub fn tar_compare(tar: &Path, dest: &Path, scratch: &Path) -> Result<Outcome> {
    let mut cmd = Command::new("tar");
    cmd.arg("-df").arg(tar).arg("-C").arg(dest);
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    let _ = fs::write(scratch, &out.stderr);
    let mut outcome = Outcome::default();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.contains("Exiting with failure status")) {
        outcome.error(format!("tar -d: {line}"));
    }
    if !out.status.success() && outcome.errors == 0 {
        outcome.error(format!("{cmd:?} exited with {}", out.status));
    }
    Ok(outcome)
}

/// `git -C REPO status --porcelain` without system or user configuration; `seen` counts its
/// output lines (0 for a clean checkout), which are kept in `scratch` with a .stdout extension.
pub fn git_status(repo: &Path, scratch: &Path) -> Result<Outcome> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(["status", "--porcelain"]).envs(dataset::GIT_CLEAN_ENV);
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    let _ = fs::write(scratch, &out.stderr);
    let _ = fs::write(scratch.with_extension("stdout"), &out.stdout);
    let mut outcome = Outcome { seen: out.stdout.iter().filter(|b| **b == b'\n').count() as u64, ..Outcome::default() };
    for line in String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()) {
        outcome.error(line.to_string());
    }
    if !out.status.success() && outcome.errors == 0 {
        outcome.error(format!("{shown} exited with {}", out.status));
    }
    Ok(outcome)
}

/// The report for one data set: context, table, warnings, notes and raw samples.
fn render(opts: &Options, setup: &Setup, results: &Results, error: Option<&anyhow::Error>) -> String {
    let (ds, data, sizes) = (setup.ds, setup.data, setup.sizes);
    let mut doc = format!("## strata-bench --writable: `{}` data set\n\n", ds.name());
    doc += &format!("- command: `{}`\n", opts.command_line);
    doc += &format!("- host: {}\n", host::describe_host());
    doc += &format!(
        "- versions: {}, {}, {}, {}, {}\n",
        super::strata_version(&setup.tools.strata),
        host::line_matching("fuse-overlayfs", &["--version"], "fuse-overlayfs:").unwrap_or_default(),
        host::line_matching("fio", &["--version"], "fio").unwrap_or_else(|| "fio not installed".into()),
        host::line_matching("git", &["--version"], "git").unwrap_or_default(),
        host::line_matching("tar", &["--version"], "tar").unwrap_or_default(),
    );
    doc += &format!("- {}\n", ds.describe());
    doc += &format!(
        "- layer 3 (top) = `repo/`: a git repository of a synthetic source tree ({} files in {} directories, {}) with \
         one commit, packed. The same tree, as `source/`, is the tarball the untar step extracts ({}).\n",
        data.source.files,
        data.source.dirs,
        dataset::human_bytes(data.source.file_bytes),
        dataset::human_bytes(fs::metadata(&data.source_tar).map(|m| m.len()).unwrap_or(0)),
    );
    doc += &format!(
        "- method: median of {} run(s); times in ms, except fio's row (IOPS; its ratio is kernel/system, so above 1 \
         still means slower). Upper and work directories live on one journaled ext4 filesystem the benchmark makes \
         (an 8 GiB sparse image on a direct-I/O loop device), whatever the host's own filesystem is. Per run and \
         system: fresh empty upper and work directories and one mount; kernel \
         `mount -t overlay overlay -o lowerdir=L3:L2:L1,upperdir=U,workdir=W`, fuse-overlayfs `-o` the same, strata \
         `strata mount --upper U --work W --layer L1 --layer L2 --layer L3` over the same extracted directories, \
         strata (tar lowers) over the three layer tars (indexed once before the first run). The steps run in table \
         order on that mount, each after `sync; echo 3 > /proc/sys/vm/drop_caches` except `rm -rf` (after `sync` \
         only, right after creating) and the warm `git status`. Created files hold {} bytes each (`open, write, \
         close`, in-process, no fsync). The append is `open(O_APPEND), write, close`: kernel overlayfs and strata \
         sync a copied-up file before moving it into place, fuse-overlayfs does not. The sequential write is \
         `dd if=/dev/zero bs=1M count={} conv=fsync`. fio runs `randrw, rwmixread=50, bs=4k, iodepth=1, \
         ioengine=psync, size={}M, runtime={}s, time_based, invalidate=0`: buffered, and the file it lays out stays \
         cached, since fio's cache invalidation cannot reach a FUSE daemon's backing file. The untar reads its \
         tarball from the page cache. `git status` runs without system or user configuration and refreshes the \
         index (writing .git/index: a copy-up) when stat data differ, which they do on the cold run. Untimed checks \
         read every step's result back (created files' contents, the appended big.bin against the lower, `tar -d` \
         against the tarball, a clean `git status`), and after unmounting the uppers of kernel overlayfs and strata \
         must hold the same number of entries (fuse-overlayfs is left out: it keeps whiteouts of directories that \
         only ever existed in the upper).\n",
        opts.runs, sizes.file_bytes, sizes.seq_mib, sizes.fio_mib, sizes.fio_secs,
    );
    if let Some(line) = results.background_summary() {
        doc += &format!(
            "- host noise: {line} (each step waits up to {} s for less than {:.0}%).\n",
            super::QUIET_TIMEOUT.as_secs(),
            super::QUIET * 100.0
        );
    }
    doc += "\n";
    doc += &results.table_for(&System::WRITABLE);
    super::append_notes(&mut doc, results, error);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_spread_evenly_over_directories() {
        assert_eq!(split_evenly(10, 3), vec![4, 3, 3]);
        assert_eq!(split_evenly(10_000, 100), vec![100; 100]);
        assert_eq!(split_evenly(2, 4), vec![1, 1, 0, 0]);
        assert!(split_evenly(5, 0).is_empty());
        for sizes in [FULL, QUICK] {
            assert_eq!(split_evenly(sizes.files, sizes.dirs).iter().sum::<usize>(), sizes.files);
        }
    }

    #[test]
    fn sizes_match_the_brief() {
        assert_eq!((FULL.files, FULL.dirs, FULL.file_bytes), (10_000, 100, 4096));
        assert_eq!((FULL.seq_mib, FULL.fio_mib, FULL.fio_secs), (1024, 256, 10));
        assert_eq!((QUICK.files, QUICK.seq_mib, QUICK.fio_mib, QUICK.fio_secs), (500, 64, 32, 3));
        assert_eq!(Sizes::for_kind(dataset::Kind::Quick), QUICK);
        assert_eq!(Sizes::for_kind(dataset::Kind::Synthetic), FULL);
    }

    #[test]
    fn labels_carry_the_sizes() {
        let source = dataset::TreeStats { files: 5000, file_bytes: 40 << 20, ..Default::default() };
        assert_eq!(size(512 << 20), "512 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size((1 << 20) + (1 << 19)), "1.5 MiB");
        assert_eq!(FULL.label(Step::Create, 0, &source), "create+write 10,000 files of 4 KiB in 100 directories");
        assert_eq!(FULL.label(Step::Append, 512 << 20, &source), "append 1 byte to big.bin (512 MiB, copy-up), cold");
        assert!(FULL.label(Step::SeqWrite, 0, &source).contains("new 1 GiB file"));
        assert_eq!(
            QUICK.label(Step::RandRw, 0, &source),
            "fio random 4k read/write, 32 MiB file, 3 s (IOPS, higher is better)"
        );
        assert!(FULL.label(Step::Untar, 0, &source).contains("(5,000 files, 40 MiB)"));
        assert_eq!(FULL.label(Step::GitWarm, 0, &source), Step::GitWarm.label());
        assert!(Step::RandRw.is_rate() && !Step::Create.is_rate());
    }

    #[test]
    fn rows_are_listed_in_table_order() {
        let mut sorted = Step::ROWS.to_vec();
        sorted.sort();
        assert_eq!(sorted, Step::ROWS.to_vec());
        assert!(!Step::ROWS.contains(&Step::Upper), "the upper check is not a row");
        assert!(Row::Write(Step::RandRw).higher_is_better());
        assert!(!Row::Write(Step::Untar).higher_is_better());
    }

    #[test]
    fn created_files_are_numbered_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("many");
        let sizes = Sizes { files: 25, dirs: 4, file_bytes: 4096, ..QUICK };
        create_files(&root, &sizes).unwrap();
        assert_eq!(tree_summary(&root).unwrap(), (1 + 4 + 25, 25 * 4096));
        assert_eq!(verify_created(&root, &sizes).unwrap(), 30);
        assert_eq!(fs::read(root.join("d000/f00000")).unwrap(), file_content(0, 4096));
        assert_eq!(fs::read(root.join("d003/f00024")).unwrap(), file_content(24, 4096));
        assert_ne!(file_content(1, 4096), file_content(2, 4096));
        assert!(create_files(&root, &sizes).is_err(), "the directory exists already");
        let mut wrong = file_content(7, 4096);
        wrong[100] ^= 1;
        fs::write(root.join("d001/f00007"), &wrong).unwrap();
        assert!(verify_created(&root, &sizes).unwrap_err().to_string().contains("f00007 does not hold"));
        fs::write(root.join("d001/f00007"), file_content(7, 4096)).unwrap();
        fs::write(root.join("d001/extra"), b"").unwrap();
        assert!(verify_created(&root, &sizes).unwrap_err().to_string().contains("31 entries"));
        let scratch = tmp.path().join("stderr");
        assert_eq!(rm_rf(&root, &scratch).unwrap(), Outcome::default());
        assert!(!root.exists());
        assert!(tree_summary(&root).is_err());
    }

    #[test]
    fn append_is_verified_against_the_lower() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower.bin");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        fs::write(&lower, &data).unwrap();
        let merged = tmp.path().join("merged.bin");
        fs::copy(&lower, &merged).unwrap();
        append_byte(&merged).unwrap();
        assert_eq!(verify_append(&merged, &lower).unwrap(), data.len() as u64 + 1);
        // A copy-up that lost data in the middle.
        let mut bad = data.clone();
        bad[2 << 20] ^= 1;
        bad.push(b'\n');
        fs::write(&merged, &bad).unwrap();
        let err = verify_append(&merged, &lower).unwrap_err().to_string();
        assert!(err.contains(&format!("at byte {}", 2 << 20)), "{err}");
        fs::write(&merged, &data).unwrap();
        assert!(verify_append(&merged, &lower).is_err(), "nothing appended");
        assert!(append_byte(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn dd_writes_the_requested_size() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("seq.bin");
        let outcome = dd_write(&file, 2, &tmp.path().join("stderr")).unwrap();
        assert_eq!(outcome.errors, 0, "{:?}", outcome.first_error);
        assert_eq!(fs::metadata(&file).unwrap().len(), 2 << 20);
    }

    #[test]
    fn fio_output_gives_read_plus_write_iops() {
        let json = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "randrw", "error" : 0,
      "read" : { "io_bytes" : 4096, "iops" : 1200.5 },
      "write" : { "io_bytes" : 4096, "iops" : 1199.5 } } ]
}"#;
        assert_eq!(parse_fio_iops(json).unwrap(), 2400.0);
        let failed = json.replace("\"error\" : 0", "\"error\" : 5");
        assert!(parse_fio_iops(&failed).unwrap_err().to_string().contains("error 5"));
        assert!(parse_fio_iops("fio: no JSON here").is_err());
        assert!(parse_fio_iops(r#"{"jobs": []}"#).is_err());
        assert!(parse_fio_iops(r#"{"jobs": [{"read": {"iops": 1}}]}"#).is_err());
        let cmd = fio_command(Path::new("/m/fio.bin"), 256, 10);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        for want in ["--filename=/m/fio.bin", "--size=256M", "--rw=randrw", "--bs=4k", "--iodepth=1"] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        for want in ["--ioengine=psync", "--runtime=10", "--time_based", "--invalidate=0", "--output-format=json"] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
    }

    #[test]
    fn fio_runs_when_installed() {
        if !host::have_command("fio") {
            eprintln!("fio is not installed; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let iops = fio_randrw(&tmp.path().join("fio.bin"), 1, 1, &tmp.path().join("log")).unwrap().unwrap();
        assert!(iops > 0.0);
    }

    #[test]
    fn untar_and_git_status_on_a_plain_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let shape = dataset::SourceShape { top: 2, sub: 2, files: 3, mean: 300 };
        let src = tmp.path().join("src");
        dataset::generate_source(&src.join(dataset::SOURCE_DIR), shape).unwrap();
        let tar = tmp.path().join("source.tar");
        let status =
            Command::new("tar").arg("-C").arg(&src).arg("-cf").arg(&tar).arg(dataset::SOURCE_DIR).status().unwrap();
        assert!(status.success());
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let scratch = tmp.path().join("stderr");
        assert_eq!(untar(&tar, &dest, &scratch).unwrap().errors, 0);
        let stats = dataset::tar_stats(&tar).unwrap();
        assert_eq!(tree_summary(&dest.join(dataset::SOURCE_DIR)).unwrap(), (stats.entries, stats.file_bytes));
        assert!(untar(&tmp.path().join("missing.tar"), &dest, &scratch).unwrap().errors > 0);
        assert_eq!(tar_compare(&tar, &dest, &scratch).unwrap(), Outcome::default());
        fs::write(dest.join("source/mod01/sub01/file02.h"), "changed\n").unwrap();
        let diff = tar_compare(&tar, &dest, &scratch).unwrap();
        assert!(diff.errors > 0 && diff.first_error.as_deref().unwrap().contains("file02.h"), "{diff:?}");
        fs::remove_dir_all(dest.join(dataset::SOURCE_DIR)).unwrap();
        untar(&tar, &dest, &scratch).unwrap();

        let repo = dest.join(dataset::SOURCE_DIR);
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .envs(dataset::GIT_CLEAN_ENV)
                .status()
                .unwrap();
            assert!(ok.success());
        };
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "x"]);
        assert_eq!(git_status(&repo, &scratch).unwrap(), Outcome::default());
        fs::write(repo.join("mod00/sub00/file00.rs"), "changed\n").unwrap();
        fs::write(repo.join("new.txt"), "new\n").unwrap();
        assert_eq!(git_status(&repo, &scratch).unwrap(), Outcome { seen: 2, ..Outcome::default() });
        let outside = git_status(tmp.path(), &scratch).unwrap();
        assert!(outside.errors > 0, "not a repository: {outside:?}");
    }
}
