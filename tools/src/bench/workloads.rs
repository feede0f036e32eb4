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
    pub fn run(self, mnt: &Path, scratch: &Path) -> Result<u64> {
        match self {
            Workload::Find => find_count(mnt, scratch),
            Workload::Stat => stat_walk(mnt),
            Workload::ReadAll => tar_bytes(mnt, scratch),
            Workload::BigRead => read_file(&mnt.join("big.bin")),
        }
    }
}

/// Spawns `cmd` with stdout piped and stderr to `scratch`, counts stdout's bytes and newlines.
fn count_output(cmd: &mut Command, scratch: &Path, ok: &[i32]) -> Result<(u64, u64)> {
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
    if !status.code().is_some_and(|c| ok.contains(&c)) {
        let stderr = fs::read_to_string(scratch).unwrap_or_default();
        bail!("{shown} failed ({status}): {}", stderr.lines().take(5).collect::<Vec<_>>().join("\n"));
    }
    Ok((bytes, lines))
}

/// `find MNT | wc -l`.
fn find_count(mnt: &Path, scratch: &Path) -> Result<u64> {
    let (_, lines) = count_output(Command::new("find").arg(mnt), scratch, &[0])?;
    Ok(lines)
}

/// `tar -C MNT -cf - --exclude=./big.bin . | wc -c`. Exit status 1 ("file changed as we read
/// it") is accepted: a read-only mount cannot change, but FUSE peers may report odd ctimes.
fn tar_bytes(mnt: &Path, scratch: &Path) -> Result<u64> {
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(mnt).args(["-cf", "-", "--exclude=./big.bin", "."]);
    let (bytes, _) = count_output(&mut cmd, scratch, &[0, 1])?;
    Ok(bytes)
}

/// lstat on every entry under (and including) `root`; returns the number of entries.
pub fn stat_walk(root: &Path) -> Result<u64> {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).with_context(|| format!("lstat {}", path.display()))?;
        count += 1;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("readdir {}", path.display()))? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(count)
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
        assert_eq!(Workload::Find.run(&root, &scratch).unwrap(), 6);
        assert_eq!(Workload::Stat.run(&root, &scratch).unwrap(), 6);
        assert_eq!(Workload::BigRead.run(&root, &scratch).unwrap(), 3 << 20);
        let tar = Workload::ReadAll.run(&root, &scratch).unwrap();
        assert!(tar > 0 && tar < 1 << 20, "big.bin must be excluded: {tar} bytes");
    }
}
