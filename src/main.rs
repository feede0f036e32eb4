//! The `strata` command line: parses arguments and calls into strata-fs. No logic of its own
//! beyond choosing what to call and printing results; errors get their context here (anyhow).

mod demo;
mod image_args;
mod inspect;
mod progress;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use image_args::ImageArgs;
use strata_fs::fuse::mount::{self, MountConfig};
use strata_fs::fuse::ImageFs;

#[derive(Parser)]
#[command(name = "strata", version, about = "Container image layers merged through FUSE, without extracting them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Threads serving FUSE requests
        #[arg(long, default_value_t = 4)]
        threads: usize,
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
    /// Build a small image from host files, mount it, show its merged tree, unmount
    Demo,
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("strata: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mount { image, foreground, allow_other, threads } => {
            let mountpoint = image.mountpoint()?;
            mount::check_mountpoint(&mountpoint)?;
            let view = image.load()?;
            let config = MountConfig { source: image.source_name(), allow_other, dev_suid: false, threads };
            let fs = ImageFs::new(view);
            if foreground {
                mount::serve(fs, &mountpoint, &config, |_| {})?;
            } else {
                mount::serve_in_background(fs, &mountpoint, &config)?;
            }
            Ok(())
        }
        Command::Umount { mountpoint, lazy } => {
            mount::unmount(&mountpoint, lazy).with_context(|| format!("unmounting {}", mountpoint.display()))
        }
        Command::Inspect { image, path, json } => inspect::run(&image, path.as_deref(), json),
        Command::Demo => demo::run(),
    }
}
