//! The benchmark's data sets, built once into the work directory and reused while their stamp
//! matches: layer 1 is a tree (a debootstrap minbase rootfs, or a generated synthetic tree) as
//! an uncompressed tar; layer 2 is a tar holding one large file of random data (`big.bin`).
//! Each tar is also extracted into a plain directory, the lowers for the overlay peers, so
//! every system serves exactly the same files.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::host;

/// Which tree layer 1 holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `debootstrap --variant=minbase bookworm` (needs network on first build).
    Debootstrap,
    /// 300 directories × 100 files with skewed sizes, deterministic content.
    Synthetic,
    /// A small synthetic tree and a 16 MiB big file, for smoke-testing the harness.
    Quick,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Debootstrap => "debootstrap",
            Kind::Synthetic => "synthetic",
            Kind::Quick => "quick",
        }
    }
}

/// Shape of a generated tree: `top × sub` leaf directories of `files` files each, plus one
/// symlink per leaf directory.
#[derive(Clone, Copy, Debug)]
struct Shape {
    top: usize,
    sub: usize,
    files: usize,
}

const SYNTHETIC: Shape = Shape { top: 30, sub: 10, files: 100 };
const QUICK: Shape = Shape { top: 4, sub: 5, files: 20 };
const BIG_MIB: u64 = 512;
const QUICK_BIG_MIB: u64 = 16;
/// Largest synthetic file.
pub const MAX_FILE: u64 = 64 * 1024;
const STAMP: &str = ".strata-bench-complete";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A prepared data set: two layer tars and their extracted twins.
#[derive(Debug)]
pub struct DataSet {
    pub kind: Kind,
    /// How layer 1 was made, for the report.
    pub origin: String,
    pub layer1_tar: PathBuf,
    pub layer2_tar: PathBuf,
    pub lower1: PathBuf,
    pub lower2: PathBuf,
    /// The merged tree (layer 2 over layer 1).
    pub stats: TreeStats,
}

impl DataSet {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Size of the big file in layer 2.
    pub fn big_bytes(&self) -> u64 {
        fs::metadata(self.lower2.join("big.bin")).map(|m| m.len()).unwrap_or(0)
    }

    /// One paragraph for the report.
    pub fn describe(&self) -> String {
        let s = &self.stats;
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        format!(
            "data set `{}`: layer 1 = {}; layer 2 = big.bin ({}). Merged tree: {} entries ({} directories, \
             {} regular files, {} symlinks, {} other), {} in regular files. Tars: layer1.tar {}, layer2.tar {}.",
            self.name(),
            self.origin,
            human_bytes(self.big_bytes()),
            s.entries,
            s.dirs,
            s.files,
            s.symlinks,
            s.other,
            human_bytes(s.file_bytes),
            human_bytes(size(&self.layer1_tar)),
            human_bytes(size(&self.layer2_tar)),
        )
    }
}

/// Counts over a tree (the root directory included in `entries` and `dirs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub file_bytes: u64,
}

/// Builds (or reuses) the data set `kind` under `work`. Debootstrap's log goes to `work`.
pub fn prepare(kind: Kind, work: &Path) -> Result<DataSet> {
    let (big_mib, layer1) = match kind {
        Kind::Debootstrap => (BIG_MIB, debootstrap_layer(work)?),
        Kind::Synthetic => (BIG_MIB, synthetic_layer(work, "synthetic", SYNTHETIC)?),
        Kind::Quick => (QUICK_BIG_MIB, synthetic_layer(work, "quick", QUICK)?),
    };
    let (layer2_tar, lower2) = big_layer(work, big_mib)?;
    let (layer1_tar, lower1, origin) = layer1;
    let stats = merged_stats(&[&lower2, &lower1])?;
    Ok(DataSet { kind, origin, layer1_tar, layer2_tar, lower1, lower2, stats })
}

/// Layer 1 from a debootstrap minbase bookworm rootfs in `work/rootfs-debootstrap`.
fn debootstrap_layer(work: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let rootfs = work.join("rootfs-debootstrap");
    let stamp_text = format!("debootstrap --variant=minbase bookworm {MIRROR}\n");
    if !stamp_ok(&rootfs, &stamp_text) {
        if !host::have_command("debootstrap") {
            bail!("debootstrap is not installed (run scripts/setup.sh --bench)");
        }
        remove_if_exists(&rootfs)?;
        remove_if_exists(&work.join("debootstrap"))?;
        let log = work.join("debootstrap.log");
        let _ = fs::remove_file(&log);
        eprintln!("strata-bench: debootstrap minbase bookworm into {} (log: {})", rootfs.display(), log.display());
        host::run_logged(
            Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(&rootfs).arg(MIRROR),
            &log,
        )?;
        fs::write(rootfs.join(STAMP), &stamp_text)?;
    }
    let dir = work.join("debootstrap");
    let origin = "`debootstrap --variant=minbase bookworm` rootfs".to_string();
    // tar_layer leaves the rootfs's stamp file out of the layer.
    let (tar, lower) = tar_layer(&rootfs, &dir, &format!("from {}\n{stamp_text}", rootfs.display()))?;
    Ok((tar, lower, origin))
}

/// Layer 1 from a generated tree of `shape`.
fn synthetic_layer(work: &Path, name: &str, shape: Shape) -> Result<(PathBuf, PathBuf, String)> {
    let dir = work.join(name);
    let stamp_text = format!("synthetic v1 {shape:?} max {MAX_FILE}\n");
    let origin = format!(
        "synthetic tree: {} × {} directories of {} files (sizes 0–64 KiB, log-skewed), one symlink per directory",
        shape.top, shape.sub, shape.files
    );
    if stamp_ok(&dir, &stamp_text) {
        return Ok((dir.join("layer.tar"), dir.join("lower"), origin));
    }
    let src = work.join(format!("{name}-src"));
    remove_if_exists(&src)?;
    eprintln!("strata-bench: generating the {name} tree in {}", src.display());
    generate_tree(&src, shape)?;
    let (tar, lower) = tar_layer(&src, &dir, &stamp_text)?;
    fs::remove_dir_all(&src)?;
    Ok((tar, lower, origin))
}

/// Layer 2: one `big.bin` of `mib` MiB pseudo-random (incompressible) bytes.
fn big_layer(work: &Path, mib: u64) -> Result<(PathBuf, PathBuf)> {
    let dir = work.join(format!("big-{mib}m"));
    let stamp_text = format!("big.bin v1 {mib} MiB\n");
    if stamp_ok(&dir, &stamp_text) {
        return Ok((dir.join("layer.tar"), dir.join("lower")));
    }
    let src = work.join(format!("big-{mib}m-src"));
    remove_if_exists(&src)?;
    fs::create_dir_all(&src)?;
    eprintln!("strata-bench: writing a {mib} MiB big.bin");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(src.join("big.bin"))?);
    let mut rng = Rng::new(0xb16_b1b);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill(&mut buf);
        out.write_all(&buf)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let layer = tar_layer(&src, &dir, &stamp_text)?;
    fs::remove_dir_all(&src)?;
    Ok(layer)
}

/// `tar --numeric-owner -C src -cf dir/layer.tar .`, extracted into `dir/lower`; stamps `dir`.
fn tar_layer(src: &Path, dir: &Path, stamp_text: &str) -> Result<(PathBuf, PathBuf)> {
    let tar = dir.join("layer.tar");
    let lower = dir.join("lower");
    if stamp_ok(dir, stamp_text) {
        return Ok((tar, lower));
    }
    remove_if_exists(dir)?;
    fs::create_dir_all(&lower)?;
    let log = dir.join("tar.log");
    eprintln!("strata-bench: tar {} -> {}, extracting into {}", src.display(), tar.display(), lower.display());
    host::run_logged(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg(format!("--exclude=./{STAMP}"))
            .arg("-C")
            .arg(src)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        &log,
    )?;
    host::run_logged(Command::new("tar").arg("--numeric-owner").arg("-xpf").arg(&tar).arg("-C").arg(&lower), &log)?;
    fs::write(dir.join(STAMP), stamp_text)?;
    Ok((tar, lower))
}

fn stamp_ok(dir: &Path, text: &str) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == text)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

const EXTENSIONS: [&str; 6] = ["txt", "py", "so", "conf", "h", "json"];

/// Writes the synthetic tree: `pkgNN/subN/file-NNN.ext` plus a `latest` symlink per leaf.
fn generate_tree(root: &Path, shape: Shape) -> Result<()> {
    let mut buf = vec![0u8; MAX_FILE as usize];
    for t in 0..shape.top {
        for s in 0..shape.sub {
            let leaf = root.join(format!("pkg{t:02}")).join(format!("sub{s}"));
            fs::create_dir_all(&leaf).with_context(|| format!("creating {}", leaf.display()))?;
            for f in 0..shape.files {
                let mut rng = Rng::new(((t * 1000 + s) * 1000 + f) as u64);
                let len = skewed_size(rng.unit()) as usize;
                rng.fill(&mut buf[..len]);
                let name = format!("file-{f:03}.{}", EXTENSIONS[f % EXTENSIONS.len()]);
                fs::write(leaf.join(name), &buf[..len])?;
            }
            std::os::unix::fs::symlink(format!("file-000.{}", EXTENSIONS[0]), leaf.join("latest"))?;
        }
    }
    Ok(())
}

/// Maps a uniform `u` in [0, 1) to a file size in 0..=64 KiB: 3 % empty files, the rest
/// log-distributed with a skew towards small files (median about 1.3 KiB, mean about 9 KiB).
pub fn skewed_size(u: f64) -> u64 {
    const EMPTY: f64 = 0.03;
    if u < EMPTY {
        return 0;
    }
    let v = (u - EMPTY) / (1.0 - EMPTY);
    (2f64.powf(16.0 * v.powf(0.6)) as u64).min(MAX_FILE)
}

/// Counts the merged view of `lowers` (topmost first): a path in an upper layer hides the same
/// path below. No whiteouts are involved in these data sets.
fn merged_stats(lowers: &[&Path]) -> Result<TreeStats> {
    let mut seen = std::collections::HashSet::new();
    let mut stats = TreeStats::default();
    for lower in lowers {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let path = lower.join(&rel);
            let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                for entry in fs::read_dir(&path)? {
                    stack.push(rel.join(entry?.file_name()));
                }
            }
            if !seen.insert(rel) {
                continue;
            }
            stats.entries += 1;
            if ft.is_dir() {
                stats.dirs += 1;
            } else if ft.is_file() {
                stats.files += 1;
                stats.file_bytes += meta.len();
            } else if ft.is_symlink() {
                stats.symlinks += 1;
            } else {
                stats.other += 1;
            }
        }
    }
    Ok(stats)
}

/// Shape of the synthetic source tree of the writable benchmark: `top × sub` directories of
/// `files` text files each, `mean` bytes on average (uniform in ¼–1¾ of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceShape {
    pub top: usize,
    pub sub: usize,
    pub files: usize,
    pub mean: usize,
}

impl SourceShape {
    pub fn file_count(self) -> usize {
        self.top * self.sub * self.files
    }
}

/// 5,000 files, about 40 MB.
pub const SOURCE: SourceShape = SourceShape { top: 25, sub: 20, files: 10, mean: 8000 };
/// 500 files, about 4 MB.
pub const QUICK_SOURCE: SourceShape = SourceShape { top: 5, sub: 10, files: 10, mean: 8000 };
/// The top directory of the source tarball, and the repository's directory in its layer.
pub const SOURCE_DIR: &str = "source";
pub const REPO_DIR: &str = "repo";
/// Fixed identity and dates, so the repository is the same on every host.
const GIT_IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "strata-bench"),
    ("GIT_AUTHOR_EMAIL", "bench@strata.invalid"),
    ("GIT_COMMITTER_NAME", "strata-bench"),
    ("GIT_COMMITTER_EMAIL", "bench@strata.invalid"),
    ("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z"),
    ("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"),
];
/// The environment of every git command the benchmark runs: no system or user configuration
/// (a global core.fsmonitor or untracked cache would change what is measured).
pub const GIT_CLEAN_ENV: [(&str, &str); 2] = [("GIT_CONFIG_NOSYSTEM", "1"), ("GIT_CONFIG_GLOBAL", "/dev/null")];

/// What the writable benchmark adds to a data set: a tarball of a synthetic source tree to
/// untar into the mount, and a third layer (on top) holding a git repository of the same tree.
#[derive(Debug)]
pub struct WriteData {
    pub shape: SourceShape,
    /// `source/…`: the tree, for `tar -xf` into the mount.
    pub source_tar: PathBuf,
    /// The tree `source_tar` extracts to (its top directory included).
    pub source: TreeStats,
    /// Layer 3 (`repo/`, a git repository of the tree with one commit), as a tar and extracted.
    pub repo_tar: PathBuf,
    pub repo_lower: PathBuf,
}

/// Builds (or reuses) the source tarball and the repository layer for `kind`.
pub fn prepare_writable(kind: Kind, work: &Path) -> Result<WriteData> {
    let shape = if kind == Kind::Quick { QUICK_SOURCE } else { SOURCE };
    let name = format!("source-{}x{}x{}-{}", shape.top, shape.sub, shape.files, shape.mean);
    let stamp_text = format!("source v1 {shape:?}\n");

    let dir = work.join(&name);
    let source_tar = dir.join("source.tar");
    if !stamp_ok(&dir, &stamp_text) {
        remove_if_exists(&dir)?;
        fs::create_dir_all(&dir)?;
        eprintln!("strata-bench: generating a source tree of {} files into {}", shape.file_count(), dir.display());
        generate_source(&dir.join(SOURCE_DIR), shape)?;
        host::run_logged(
            Command::new("tar")
                .args(["--sort=name", "--mtime=@1704067200", "--owner=0", "--group=0", "--numeric-owner", "-C"])
                .arg(&dir)
                .arg("-cf")
                .arg(&source_tar)
                .arg(SOURCE_DIR),
            &dir.join("tar.log"),
        )?;
        fs::remove_dir_all(dir.join(SOURCE_DIR))?;
        fs::write(dir.join(STAMP), &stamp_text)?;
    }
    let source = tar_stats(&source_tar)?;

    let repo_dir = work.join(format!("repo-{name}"));
    let repo_stamp = format!("git repository v1 {shape:?}\n");
    let (repo_tar, repo_lower) = if stamp_ok(&repo_dir, &repo_stamp) {
        (repo_dir.join("layer.tar"), repo_dir.join("lower"))
    } else {
        if !host::have_command("git") {
            bail!("git is not installed: the writable benchmark needs it for its repository layer");
        }
        let src = work.join(format!("repo-{name}-src"));
        remove_if_exists(&src)?;
        let repo = src.join(REPO_DIR);
        eprintln!("strata-bench: committing the source tree into a git repository in {}", repo.display());
        generate_source(&repo, shape)?;
        let log = work.join(format!("repo-{name}.log"));
        let _ = fs::remove_file(&log);
        let git = |args: &[&str]| -> Result<()> {
            let mut cmd = Command::new("git");
            // No automatic gc: a detached one would still be rewriting packs while the tree is tarred.
            cmd.arg("-C").arg(&repo).args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"]);
            cmd.args(args).envs(GIT_CLEAN_ENV).envs(GIT_IDENTITY);
            host::run_logged(&mut cmd, &log)
        };
        git(&["init", "-q", "-b", "main"])?;
        git(&["add", "-A"])?;
        git(&["commit", "-q", "-m", "synthetic source tree"])?;
        // One pack, as a clone has.
        git(&["repack", "-a", "-d", "-q"])?;
        git(&["prune-packed"])?;
        let layer = tar_layer(&src, &repo_dir, &repo_stamp)?;
        fs::remove_dir_all(&src)?;
        layer
    };
    Ok(WriteData { shape, source_tar, source, repo_tar, repo_lower })
}

const WORDS: [&str; 32] = [
    "let", "mut", "fn", "return", "if", "else", "match", "struct", "impl", "self", "buffer", "index", "layer", "inode",
    "entry", "offset", "len", "path", "error", "Result", "Ok", "None", "Some", "for", "in", "while", "=", "+", "{",
    "}", "(", ")",
];
const SOURCE_EXTENSIONS: [&str; 5] = ["rs", "c", "h", "py", "md"];

/// Writes the source tree: `modNN/subNN/fileNN.ext`, deterministic text.
pub fn generate_source(root: &Path, shape: SourceShape) -> Result<()> {
    for t in 0..shape.top {
        for s in 0..shape.sub {
            let leaf = root.join(format!("mod{t:02}")).join(format!("sub{s:02}"));
            fs::create_dir_all(&leaf).with_context(|| format!("creating {}", leaf.display()))?;
            for f in 0..shape.files {
                let seed = ((t * 1000 + s) * 1000 + f) as u64;
                let name = format!("file{f:02}.{}", SOURCE_EXTENSIONS[f % SOURCE_EXTENSIONS.len()]);
                fs::write(leaf.join(name), source_text(seed, shape.mean))?;
            }
        }
    }
    Ok(())
}

/// Deterministic code-like text of about `mean` bytes (¼ to 1¾ of it): indented lines of words.
pub fn source_text(seed: u64, mean: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let len = mean / 4 + (rng.unit() * (mean as f64 * 1.5)) as usize;
    let mut out = Vec::with_capacity(len + 80);
    while out.len() < len {
        let indent = (rng.next_u64() % 4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        let words = 2 + rng.next_u64() % 10;
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes());
        }
        out.push(b'\n');
    }
    out.truncate(len);
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
    out
}

/// Counts a tar's entries the way [`merged_stats`] counts the tree it extracts to.
pub fn tar_stats(tar: &Path) -> Result<TreeStats> {
    let mut archive = tar::Archive::new(File::open(tar).with_context(|| format!("opening {}", tar.display()))?);
    let mut stats = TreeStats::default();
    for entry in archive.entries()? {
        let entry = entry?;
        stats.entries += 1;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            stats.dirs += 1;
        } else if kind.is_file() {
            stats.files += 1;
            stats.file_bytes += entry.size();
        } else if kind.is_symlink() {
            stats.symlinks += 1;
        } else {
            stats.other += 1;
        }
    }
    Ok(stats)
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

/// A small deterministic generator (splitmix64 seeding an xorshift64*): fast, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skewed_sizes_stay_in_range_and_favour_small_files() {
        let mut rng = Rng::new(7);
        let sizes: Vec<u64> = (0..20_000).map(|_| skewed_size(rng.unit())).collect();
        assert!(sizes.iter().all(|s| *s <= MAX_FILE));
        assert!(sizes.contains(&0));
        assert!(sizes.iter().any(|s| *s > 60 * 1024));
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let mean = sizes.iter().sum::<u64>() / sizes.len() as u64;
        assert!((512..4096).contains(&median), "median {median}");
        assert!(mean > 2 * median, "mean {mean} median {median}");
        assert_eq!(skewed_size(0.0), 0);
        assert!(skewed_size(0.999_999_999) > MAX_FILE - 64);
    }

    #[test]
    fn rng_is_deterministic_and_fills_odd_lengths() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let (mut x, mut y) = (vec![0u8; 13], vec![0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert!(x.iter().any(|b| *b != 0));
    }

    #[test]
    fn merged_stats_count_upper_paths_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("u"), tmp.path().join("l"));
        fs::create_dir_all(lower.join("d")).unwrap();
        fs::create_dir_all(&upper).unwrap();
        fs::write(lower.join("d/a"), b"12345").unwrap();
        fs::write(lower.join("same"), b"old").unwrap();
        fs::write(upper.join("same"), b"newer").unwrap();
        std::os::unix::fs::symlink("d/a", lower.join("link")).unwrap();
        let stats = merged_stats(&[&upper, &lower]).unwrap();
        assert_eq!(
            stats,
            TreeStats { entries: 5, dirs: 2, files: 2, symlinks: 1, other: 0, file_bytes: 10 },
            "root, d, d/a, same (upper), link"
        );
    }

    #[test]
    fn source_text_is_deterministic_text_of_about_the_mean_size() {
        assert_eq!(source_text(3, 8000), source_text(3, 8000));
        assert_ne!(source_text(3, 8000), source_text(4, 8000));
        let sizes: Vec<usize> = (0..400).map(|seed| source_text(seed, 8000).len()).collect();
        assert!(sizes.iter().all(|n| (2000..=14000).contains(n)), "{sizes:?}");
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((7000..9000).contains(&mean), "mean {mean}");
        let text = source_text(9, 8000);
        assert!(text.is_ascii() && text.ends_with(b"\n") && text.iter().filter(|b| **b == b'\n').count() > 20);
    }

    #[test]
    fn tar_stats_match_the_tree_a_source_tar_extracts_to() {
        let tmp = tempfile::tempdir().unwrap();
        let shape = SourceShape { top: 2, sub: 3, files: 4, mean: 500 };
        assert_eq!(shape.file_count(), 24);
        let root = tmp.path().join(SOURCE_DIR);
        generate_source(&root, shape).unwrap();
        let tar = tmp.path().join("s.tar");
        let ok = Command::new("tar").arg("-C").arg(tmp.path()).arg("-cf").arg(&tar).arg(SOURCE_DIR).status().unwrap();
        assert!(ok.success());
        let stats = tar_stats(&tar).unwrap();
        assert_eq!(stats, merged_stats(&[&root]).unwrap());
        assert_eq!((stats.files, stats.dirs, stats.entries), (24, 1 + 2 + 6, 33));
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB (3145728 bytes)");
    }
}
