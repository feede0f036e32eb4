//! The `strata` command line: parses arguments and calls into strata-fs. No logic of its own
//! beyond choosing what to call and printing results; errors get their context here (anyhow).

mod cache;
mod demo;
mod image_args;
mod inspect;
mod logging;
mod overlayfs_cli;
mod progress;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use image_args::ImageArgs;
use strata_fs::fuse::mount::{self, MountConfig};
use strata_fs::fuse::overlay_fs::OverlayFs;
use strata_fs::fuse::ImageFs;

#[derive(Parser)]
#[command(name = "strata", version, about = "Container image layers merged through FUSE, without extracting them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Append the filesystem daemon's log (mounts, unmounts, failed requests, with pids) to FILE;
    /// without it, logs go to stderr, which a background daemon no longer has, and a container's
    /// to strata.log in its data directory. Detail: STRATA_LOG=error|warn|info|debug|trace
    /// (default: info in FILE, warn otherwise)
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Mount an image read-only (returns once the mount is usable; the daemon stays in the background)
    Mount {
        #[command(flatten)]
        image: ImageArgs,
        /// Stay in the foreground until unmounted (SIGINT/SIGTERM unmount)
        #[arg(short, long)]
        foreground: bool,
        /// Let other users access the mount (root, or user_allow_other in /etc/fuse.conf)
        #[arg(long)]
        allow_other: bool,
        /// Threads serving FUSE requests (a writable mount uses at least two)
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Make the mount writable: changes go to this directory, in kernel overlayfs' format
        #[arg(long, requires = "work")]
        upper: Option<PathBuf>,
        /// Scratch directory for atomic copy-up, on the upper's filesystem (created if missing)
        #[arg(long, requires = "upper")]
        work: Option<PathBuf>,
    },
    /// fuse-overlayfs' command line: `-o lowerdir=TOP:…:BOTTOM,upperdir=U,workdir=W MOUNTPOINT`
    /// (also what strata does when called as `strata-overlayfs`)
    #[command(disable_help_flag = true)]
    Overlayfs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unmount a strata mount
    Umount {
        mountpoint: PathBuf,
        /// Detach a busy mount now and clean up when it is no longer used
        #[arg(short = 'l', long)]
        lazy: bool,
    },
    /// Show an image's layers, or which layer provides a path
    Inspect {
        #[command(flatten)]
        image: ImageArgs,
        /// A path inside the image: show which layer provides it and which it shadows or deletes
        #[arg(long)]
        path: Option<String>,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a container: the image mounted writable as its root, in new namespaces
    Run(Box<run::RunArgs>),
    /// List containers (running, exited and crashed ones)
    Ps {
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Delete containers: state, writable layer and any leftover cgroup
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill the container first if it is running
        #[arg(short, long)]
        force: bool,
    },
    /// Show what the cache ($STRATA_CACHE) holds: indexes, decompressed layers, shared copies
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Build a small image from host files, mount it, show its merged tree, unmount
    Demo,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Remove what is cheap to rebuild and no process holds open: shared copies (made again on
    /// a file's next open), leftovers of interrupted writes, indexes of older formats and
    /// decompressed layers no index uses
    Prune {
        /// Also remove indexes and the decompressed layers they use: the next mount of every
        /// image indexes its layers again
        #[arg(long)]
        all: bool,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
}

/// What to mount: the image's layers, read-only or under a writable upper.
pub struct MountLayers {
    pub image: strata_fs::image::Image,
    /// (upper, work) directories of a writable mount.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Owners as shown through a writable mount (fuse-overlayfs' uidmapping/squash options).
    pub ids: strata_fs::idshift::IdShift,
    /// The xattr owners and permissions are kept in (fuse-overlayfs' `xattr_permissions`).
    pub stored_modes: Option<&'static [u8]>,
}

impl MountLayers {
    pub fn mount(self, mountpoint: &std::path::Path, mut config: MountConfig, foreground: bool) -> Result<()> {
        match self.upper {
            None => serve(ImageFs::new(image_args::load_layers(&self.image)?), mountpoint, &config, foreground),
            Some((upper, work)) => {
                let overlay = strata_fs::overlay::open(
                    image_args::load_lower(&self.image, &strata_fs::layer::cache::Cache::from_env())?,
                    &upper,
                    &work,
                    self.stored_modes,
                )?;
                config.writable = true;
                serve(OverlayFs::new(overlay).with_id_shift(self.ids), mountpoint, &config, foreground)
            }
        }
    }
}

fn serve(
    fs: impl fuser::Filesystem + 'static,
    mountpoint: &std::path::Path,
    config: &MountConfig,
    foreground: bool,
) -> Result<()> {
    if foreground {
        mount::serve(fs, mountpoint, config, |_| {})?;
    } else {
        mount::serve_in_background(fs, mountpoint, config)?;
    }
    Ok(())
}

fn main() {
    if overlayfs_cli::called_as_overlayfs() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Err(err) = logging::init(None).and_then(|()| overlayfs_cli::run(&args)) {
            eprintln!("strata-overlayfs: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    // `strata run` without --log logs to the container's own file, once it has a name.
    let container_log = matches!(cli.command, Command::Run(_)) && cli.log.is_none();
    let logging = if container_log { Ok(()) } else { logging::init(cli.log.as_deref()) };
    if let Err(err) = logging.and_then(|()| run(cli)) {
        eprintln!("strata: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mount { image, foreground, allow_other, threads, upper, work } => {
            let mountpoint = image.mountpoint()?;
            mount::check_mountpoint(&mountpoint)?;
            let layers = MountLayers {
                image: image.resolve()?,
                upper: upper.zip(work),
                ids: Default::default(),
                stored_modes: None,
            };
            let config = MountConfig {
                source: image.source_name(),
                allow_other,
                devices: false,
                setuid: false,
                threads,
                writable: false,
            };
            layers.mount(&mountpoint, config, foreground)
        }
        Command::Overlayfs { args } => overlayfs_cli::run(&args),
        Command::Umount { mountpoint, lazy } => {
            mount::unmount(&mountpoint, lazy).with_context(|| format!("unmounting {}", mountpoint.display()))
        }
        Command::Inspect { image, path, json } => inspect::run(&image, path.as_deref(), json),
        // Docker's convention: 125 when the runner itself fails, else the container's own code.
        Command::Run(args) => match run::run(*args) {
            Ok(code) => std::process::exit(code),
            Err(err) => {
                eprintln!("strata: {err:#}");
                std::process::exit(strata_runner::process::exit_code::RUNNER_FAILED);
            }
        },
        Command::Ps { json } => run::ps(json),
        Command::Rm { names, force } => run::rm(&names, force),
        Command::Cache { action: None, json } => cache::show(json),
        Command::Cache { action: Some(CacheAction::Prune { all, json }), .. } => cache::prune(all, json),
        Command::Demo => demo::run(),
    }
}
