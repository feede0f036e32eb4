//! The systems under test (kernel overlayfs, strata, fuse-overlayfs, ratarmount): how each
//! mounts a data set, read-only or over a writable upper, which daemon serves it, and a
//! [`Mounted`] guard that unmounts on every path out, errors and Ctrl-C included.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::dataset::DataSet;
use super::host;

/// One filesystem implementation being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Kernel,
    Strata,
    /// strata over the layer tars where the others use the extracted directories (only in the
    /// writable benchmark; the read-only `Strata` always mounts the tars).
    StrataTar,
    FuseOverlayfs,
    Ratarmount,
}

impl System {
    /// Table order; the kernel comes first because every ratio is against it.
    pub const ALL: [System; 4] = [System::Kernel, System::Strata, System::FuseOverlayfs, System::Ratarmount];
    /// The writable benchmark's columns (ratarmount cannot write).
    pub const WRITABLE: [System; 4] = [System::Kernel, System::Strata, System::StrataTar, System::FuseOverlayfs];

    pub fn label(self) -> &'static str {
        match self {
            System::Kernel => "kernel overlayfs",
            System::Strata => "strata",
            System::StrataTar => "strata (tar lowers)",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::Ratarmount => "ratarmount",
        }
    }

    /// Short name for mountpoints and logs.
    pub fn key(self) -> &'static str {
        match self {
            System::Kernel => "kernel",
            System::Strata => "strata",
            System::StrataTar => "strata-tar",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::Ratarmount => "ratarmount",
        }
    }

    /// Whether a userspace daemon serves the mount.
    fn has_daemon(self) -> bool {
        self != System::Kernel
    }

    /// Whether mounting reads an index that [`Tools::forget_indexes`] removes (cold vs warm).
    pub fn has_index_cache(self) -> bool {
        matches!(self, System::Strata | System::StrataTar | System::Ratarmount)
    }
}

/// Where the programs and their caches live.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The `strata` binary.
    pub strata: PathBuf,
    /// `$STRATA_CACHE` for every strata mount.
    pub strata_cache: PathBuf,
    /// ratarmount's `--index-folders`.
    pub ratarmount_index: PathBuf,
    /// Mount commands' output.
    pub logs: PathBuf,
}

impl Tools {
    /// Why `system` cannot run here, if it cannot.
    pub fn unavailable(&self, system: System) -> Option<String> {
        let (program, hint) = match system {
            System::Kernel => ("mount", "util-linux"),
            System::Strata | System::StrataTar => (
                self.strata.to_str().unwrap_or("strata"),
                "build it with `cargo build --release -p strata` or pass --strata PATH",
            ),
            System::FuseOverlayfs => ("fuse-overlayfs", "run scripts/setup.sh --bench"),
            System::Ratarmount => ("ratarmount", "run scripts/setup.sh --bench"),
        };
        if !host::have_command(program) {
            return Some(format!("{program} not found ({hint})"));
        }
        if system.has_daemon() && !host::have_command("fusermount3") {
            return Some("fusermount3 not found (run scripts/setup.sh)".into());
        }
        if system == System::Kernel
            && !fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")))
        {
            // overlay may be a module that loads on first mount; try anyway.
            eprintln!("strata-bench: overlay is not in /proc/filesystems yet; the first mount will tell");
        }
        None
    }

    /// The file name of the daemon's program (or script, for ratarmount) in its command line.
    fn daemon_program(&self, system: System) -> Option<String> {
        match system {
            System::Kernel => None,
            System::Strata | System::StrataTar => {
                Some(self.strata.file_name().map_or("strata".into(), |f| f.to_string_lossy().into_owned()))
            }
            System::FuseOverlayfs => Some("fuse-overlayfs".into()),
            System::Ratarmount => Some("ratarmount".into()),
        }
    }

    /// Removes the on-disk indexes `system` keeps, so its next mount is cold.
    pub fn forget_indexes(&self, system: System) -> Result<()> {
        let dir = match system {
            System::Strata | System::StrataTar => &self.strata_cache,
            System::Ratarmount => &self.ratarmount_index,
            _ => return Ok(()),
        };
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir)?;
        Ok(())
    }

    /// Mounts `ds` (layer 2 over layer 1) at `mnt` and returns once the mount is listed in
    /// /proc/self/mountinfo, with the time that took.
    pub fn mount(&self, system: System, ds: &DataSet, mnt: &Path) -> Result<(Mounted, Duration)> {
        if host::is_mounted(mnt) {
            bail!("{} is already a mountpoint", mnt.display());
        }
        fs::create_dir_all(&self.strata_cache)?;
        fs::create_dir_all(&self.ratarmount_index)?;
        let lowers = format!("lowerdir={}:{}", ds.lower2.display(), ds.lower1.display());
        let mut cmd = match system {
            System::Kernel => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay", "-o"]).arg(format!("ro,noatime,{lowers}")).arg(mnt);
                c
            }
            System::Strata | System::StrataTar => {
                let mut c = Command::new(&self.strata);
                c.env("STRATA_CACHE", &self.strata_cache)
                    .arg("mount")
                    .arg("--layer")
                    .arg(&ds.layer1_tar)
                    .arg("--layer")
                    .arg(&ds.layer2_tar)
                    .arg(mnt);
                c
            }
            System::FuseOverlayfs => {
                let mut c = Command::new("fuse-overlayfs");
                c.arg("-o").arg(&lowers).arg(mnt);
                c
            }
            System::Ratarmount => {
                let mut c = Command::new("ratarmount");
                c.arg("--index-folders").arg(&self.ratarmount_index).arg(&ds.layer1_tar).arg(&ds.layer2_tar).arg(mnt);
                c
            }
        };
        self.start(system, &mut cmd, mnt)
    }

    /// Mounts `lowers` with a writable `upper` (and its `work` directory) at `mnt`: the
    /// directories for the kernel, fuse-overlayfs and strata, the tars for strata (tar lowers).
    pub fn mount_writable(
        &self,
        system: System,
        lowers: &Lowers,
        rw: &UpperDirs,
        mnt: &Path,
    ) -> Result<(Mounted, Duration)> {
        if host::is_mounted(mnt) {
            bail!("{} is already a mountpoint", mnt.display());
        }
        fs::create_dir_all(&self.strata_cache)?;
        let overlay_options = format!(
            "lowerdir={},upperdir={},workdir={}",
            overlay_lowerdir(&lowers.dirs),
            rw.upper.display(),
            rw.work.display()
        );
        let mut cmd = match system {
            System::Kernel => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay", "-o"]).arg(&overlay_options).arg(mnt);
                c
            }
            System::Strata | System::StrataTar => {
                let layers = if system == System::Strata { &lowers.dirs } else { &lowers.tars };
                let mut c = Command::new(&self.strata);
                c.env("STRATA_CACHE", &self.strata_cache)
                    .arg("mount")
                    .arg("--upper")
                    .arg(&rw.upper)
                    .arg("--work")
                    .arg(&rw.work);
                for layer in layers {
                    c.arg("--layer").arg(layer);
                }
                c.arg(mnt);
                c
            }
            System::FuseOverlayfs => {
                let mut c = Command::new("fuse-overlayfs");
                c.arg("-o").arg(&overlay_options).arg(mnt);
                c
            }
            System::Ratarmount => bail!("ratarmount cannot mount a writable overlay here"),
        };
        self.start(system, &mut cmd, mnt)
    }

    /// Runs a mount command, waits for the mount and finds its daemon.
    fn start(&self, system: System, cmd: &mut Command, mnt: &Path) -> Result<(Mounted, Duration)> {
        let log = self.logs.join(format!("{}.log", system.key()));
        let start = Instant::now();
        host::run_logged(cmd, &log).with_context(|| format!("mounting {}", system.label()))?;
        if !host::wait_mounted(mnt, true, Duration::from_secs(60)) {
            bail!("{} did not appear in /proc/self/mountinfo after mounting {}", mnt.display(), system.label());
        }
        let elapsed = start.elapsed();
        let mut mounted =
            Mounted { system, mnt: mnt.to_path_buf(), pid: None, strata: self.strata.clone(), live: true };
        if let Some(program) = self.daemon_program(system) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while mounted.pid.is_none() && Instant::now() < deadline {
                mounted.pid = host::find_daemon(&program, mnt);
                if mounted.pid.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if mounted.pid.is_none() {
                eprintln!("strata-bench: warning: no {program} process found serving {}: no RSS", mnt.display());
            }
        }
        Ok((mounted, elapsed))
    }
}

/// A writable mount's layers, bottom first: extracted directories and the same layers as tars.
#[derive(Clone, Debug)]
pub struct Lowers {
    pub dirs: Vec<PathBuf>,
    pub tars: Vec<PathBuf>,
}

/// The upper and work directories of one writable mount (same filesystem).
#[derive(Clone, Debug)]
pub struct UpperDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// overlayfs' `lowerdir=` value: the layers top first, separated by colons.
pub fn overlay_lowerdir(bottom_first: &[PathBuf]) -> String {
    bottom_first.iter().rev().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
}

/// A live mount; unmounts when dropped unless [`Mounted::unmount`] already did.
#[derive(Debug)]
pub struct Mounted {
    system: System,
    mnt: PathBuf,
    pid: Option<u32>,
    strata: PathBuf,
    live: bool,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The serving daemon's resident set size in MiB (None for the kernel).
    pub fn rss_mib(&self) -> Option<f64> {
        self.pid.and_then(host::vm_rss_kib).map(|kib| kib as f64 / 1024.0)
    }

    /// Unmounts and waits for the daemon to exit, so the next measurement starts clean.
    pub fn unmount(mut self) -> Result<()> {
        self.live = false;
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let mut last = String::new();
        for attempt in 0..6 {
            if !host::is_mounted(&self.mnt) {
                break;
            }
            match self.unmount_command(attempt == 5).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            if host::wait_mounted(&self.mnt, false, Duration::from_secs(2)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if host::is_mounted(&self.mnt) {
            bail!("could not unmount {} ({}): {last}", self.mnt.display(), self.system.label());
        }
        if let Some(pid) = self.pid {
            if !host::wait_exit(pid, Duration::from_secs(10)) {
                eprintln!(
                    "strata-bench: {} daemon {pid} still running 10 s after unmount; sending SIGTERM",
                    self.system.label()
                );
                let _ = Command::new("kill").arg(pid.to_string()).status();
                host::wait_exit(pid, Duration::from_secs(5));
            }
        }
        Ok(())
    }

    fn unmount_command(&self, lazy: bool) -> Command {
        let mut c;
        match self.system {
            System::Kernel => {
                c = Command::new("umount");
                if lazy {
                    c.arg("-l");
                }
            }
            System::Strata | System::StrataTar => {
                c = Command::new(&self.strata);
                c.arg("umount");
                if lazy {
                    c.arg("--lazy");
                }
            }
            System::FuseOverlayfs | System::Ratarmount => {
                c = Command::new("fusermount3");
                c.arg(if lazy { "-uz" } else { "-u" });
            }
        }
        c.arg(&self.mnt);
        c
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            if let Err(e) = self.release() {
                eprintln!("strata-bench: cleanup: {e:#}");
            }
        }
    }
}

/// Lazily unmounts anything left mounted under `root` (a previous run that was killed).
pub fn unmount_leftovers(root: &Path) {
    let mut stale: Vec<PathBuf> = host::mountpoints().into_iter().filter(|p| p.starts_with(root)).collect();
    stale.reverse();
    for mnt in stale {
        eprintln!("strata-bench: unmounting leftover mount {}", mnt.display());
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lowerdir_lists_the_top_layer_first() {
        let layers = [PathBuf::from("/l/bottom"), PathBuf::from("/l/mid"), PathBuf::from("/l/top")];
        assert_eq!(overlay_lowerdir(&layers), "/l/top:/l/mid:/l/bottom");
        assert_eq!(overlay_lowerdir(&layers[..1]), "/l/bottom");
    }

    #[test]
    fn writable_columns_start_with_the_kernel_and_leave_out_ratarmount() {
        assert_eq!(System::WRITABLE[0], System::Kernel);
        assert!(!System::WRITABLE.contains(&System::Ratarmount));
        assert!(!System::ALL.contains(&System::StrataTar), "the read-only table keeps its four columns");
        let keys: std::collections::BTreeSet<&str> = System::WRITABLE.iter().map(|s| s.key()).collect();
        assert_eq!(keys.len(), System::WRITABLE.len(), "distinct mountpoints and logs");
    }
}
