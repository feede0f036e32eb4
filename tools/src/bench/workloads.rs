//! The workloads run against a mounted tree. Each returns what it observed (entry count, bytes)
//! so the harness can check that every system served the same data; timing is the caller's.
//!
//! `find` and `tar` run as the real programs (their output counted in-process instead of piping
//! into `wc`); the stat walk and the big sequential read run in-process, so the measurement is
//! the filesystem rather than a helper's own costs.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workloads, in the order they run on each mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// `find MNT | wc -l`
    Find,
    /// symlink_metadata (lstat) on every entry, walking with read_dir.
    Stat,
    /// `tar -C MNT -cf - --exclude=./big.bin . | wc -c`
    ReadAll,
    /// Sequential read of big.bin with 1 MiB reads.
    BigRead,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Find, Workload::Stat, Workload::ReadAll, Workload::BigRead];

    pub fn label(self) -> &'static str {
        match self {
            Workload::Find => "`find MNT \\| wc -l`",
            Workload::Stat => "stat every entry (in-process walk)",
            Workload::ReadAll => "read every file (`tar -cf - \\| wc -c`, no big.bin)",
            Workload::BigRead => "sequential read of big.bin (1 MiB reads)",
        }
    }

    /// What the returned number means, for consistency warnings.
    pub fn observed(self) -> &'static str {
        match self {
            Workload::Find => "entries listed by find",
            Workload::Stat => "entries stat'ed by the walk",
            Workload::ReadAll => "bytes of tar stream",
            Workload::BigRead => "bytes of big.bin",
        }
    }

    /// Runs the workload on the tree at `mnt`; `scratch` receives helper programs' stderr.
    /// Per-entry errors (an entry that cannot be stat'ed or read) are counted, not fatal, so a
    /// peer with a bug still gets numbers, flagged; anything else fails the workload.
    pub fn run(self, mnt: &Path, scratch: &Path) -> Result<Outcome> {
        match self {
            Workload::Find => find_count(mnt, scratch),
            Workload::Stat => stat_walk(mnt),
            Workload::ReadAll => tar_bytes(mnt, scratch),
            Workload::BigRead => Ok(Outcome::clean(read_file(&mnt.join("big.bin"))?)),
        }
    }
}

/// What a workload saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries or bytes, see [`Workload::observed`].
    pub seen: u64,
    /// Entries that failed.
    pub errors: u64,
    /// The first error message.
    pub first_error: Option<String>,
}

impl Outcome {
    pub(super) fn clean(seen: u64) -> Outcome {
        Outcome { seen, errors: 0, first_error: None }
    }

    pub(super) fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

/// Spawns `cmd` with stdout piped and stderr to `scratch`; counts stdout's bytes and newlines.
/// Exit codes in `ok` are accepted; each stderr line is one error, except lines in `ignore`.
pub(super) fn count_output(
    cmd: &mut Command,
    scratch: &Path,
    ok: &[i32],
    ignore: &[&str],
) -> Result<(u64, u64, Outcome)> {
    let shown = format!("{cmd:?}");
    let err = File::create(scratch)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut lines) = (0u64, 0u64);
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    let status = child.wait()?;
    let stderr = fs::read_to_string(scratch).unwrap_or_default();
    if !status.code().is_some_and(|c| ok.contains(&c)) {
        bail!("{shown} failed ({status}): {}", stderr.lines().take(5).collect::<Vec<_>>().join("\n"));
    }
    let mut outcome = Outcome::default();
    for line in stderr.lines().filter(|l| !l.trim().is_empty() && !ignore.iter().any(|i| l.contains(i))) {
        outcome.error(line.to_string());
    }
    if status.code() != Some(0) && outcome.errors == 0 {
        outcome.error(format!("{shown} exited with {status}"));
    }
    Ok((bytes, lines, outcome))
}

/// `find MNT | wc -l`; exit status 1 means some entries could not be examined.
fn find_count(mnt: &Path, scratch: &Path) -> Result<Outcome> {
    let (_, lines, mut outcome) = count_output(Command::new("find").arg(mnt), scratch, &[0, 1], &[])?;
    outcome.seen = lines;
    Ok(outcome)
}

/// `tar -C MNT -cf - --exclude=./big.bin . | wc -c`. Exit status 1 is "file changed as we read
/// it"; 2 follows unreadable files, whose messages count as errors (an empty stream still fails).
fn tar_bytes(mnt: &Path, scratch: &Path) -> Result<Outcome> {
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(mnt).args(["-cf", "-", "--exclude=./big.bin", "."]);
    let (bytes, _, mut outcome) = count_output(&mut cmd, scratch, &[0, 1, 2], &["Exiting with failure status"])?;
    if bytes == 0 {
        bail!("tar wrote nothing: {}", outcome.first_error.unwrap_or_default());
    }
    outcome.seen = bytes;
    Ok(outcome)
}

/// lstat on every entry under (and including) `root`; `seen` counts the entries listed.
pub fn stat_walk(root: &Path) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        outcome.seen += 1;
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if path != root => {
                outcome.error(format!("lstat {}: {e}", path.display()));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("lstat {}", path.display())),
        };
        if meta.is_dir() {
            let entries = fs::read_dir(&path).with_context(|| format!("readdir {}", path.display()))?;
            for entry in entries {
                stack.push(entry.with_context(|| format!("readdir {}", path.display()))?.path());
            }
        }
    }
    Ok(outcome)
}

/// Reads a file start to end with 1 MiB reads; returns its length.
pub fn read_file(path: &Path) -> Result<u64> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_observe_a_plain_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f"), b"hello").unwrap();
        fs::write(root.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
        std::os::unix::fs::symlink("d", root.join("l")).unwrap();
        let scratch = tmp.path().join("stderr");
        // root, d, d/e, d/e/f, big.bin, l
        assert_eq!(Workload::Find.run(&root, &scratch).unwrap(), Outcome::clean(6));
        assert_eq!(Workload::Stat.run(&root, &scratch).unwrap(), Outcome::clean(6));
        assert_eq!(Workload::BigRead.run(&root, &scratch).unwrap(), Outcome::clean(3 << 20));
        let tar = Workload::ReadAll.run(&root, &scratch).unwrap();
        assert_eq!(tar.errors, 0);
        assert!(tar.seen > 0 && tar.seen < 1 << 20, "big.bin must be excluded: {} bytes", tar.seen);
    }

    #[test]
    fn helper_stderr_lines_count_as_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("stderr");
        let script = "echo one; echo two; echo bad entry >&2; echo Exiting with failure status >&2; exit 2";
        let (bytes, lines, outcome) =
            count_output(Command::new("sh").args(["-c", script]), &scratch, &[0, 2], &["Exiting with"]).unwrap();
        assert_eq!((bytes, lines), (8, 2));
        assert_eq!(outcome.errors, 1);
        assert_eq!(outcome.first_error.as_deref(), Some("bad entry"));
        assert!(count_output(Command::new("sh").args(["-c", "exit 3"]), &scratch, &[0, 2], &[]).is_err());
    }
}
