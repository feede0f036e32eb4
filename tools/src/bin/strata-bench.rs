//! `strata-bench`: the macro benchmark. Mounts the same layers with kernel overlayfs, strata,
//! fuse-overlayfs and ratarmount and prints a markdown table of medians and ratios to the
//! kernel (see `strata_tools::bench`). Needs root, /dev/fuse and `target/release/strata`. With
//! `--runner`, times `strata run` against bwrap, unshare + chroot and runc instead
//! (`strata_tools::bench::runner`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use strata_tools::bench::{self, dataset::Kind, runner, scale};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rootfs {
    Debootstrap,
    Synthetic,
    Both,
}

#[derive(Parser)]
#[command(about = "Measures strata against kernel overlayfs, fuse-overlayfs and ratarmount on the same layers")]
struct Cli {
    /// Which tree layer 1 holds
    #[arg(long, value_enum, default_value_t = Rootfs::Both)]
    rootfs: Rootfs,
    /// Runs per system (the table shows medians); with --runner, rounds of 20 starts per system
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where data sets are built (once) and results written
    #[arg(long, default_value = "/var/tmp/strata-bench")]
    work: PathBuf,
    /// Smoke test: a small synthetic tree, a 16 MiB big file and one run (with --writable: 500
    /// files, 64 MiB sequential write, fio 32 MiB for 3 s, a 500-file source tree)
    #[arg(long)]
    quick: bool,
    /// The strata binary (default: `strata` next to this executable, i.e. target/release/strata)
    #[arg(long)]
    strata: Option<PathBuf>,
    /// Measure the write workloads instead of the read-only ones: kernel overlayfs, strata (over
    /// the extracted layers and over the tars) and fuse-overlayfs, each on a fresh empty upper;
    /// writes WORK/results-writable-<dataset>.md. With --quick: small sizes.
    #[arg(long)]
    writable: bool,
    /// Time containers from start to exit of `/bin/true` instead: `strata run --rm` against bwrap,
    /// unshare + chroot and runc on the same image, plus the memory of strata's filesystem daemon
    /// per container; writes WORK/results-runner.md. With --quick: one round of 5 starts.
    #[arg(long, conflicts_with_all = ["writable", "rootfs"])]
    runner: bool,
    /// Run N containers of one image at once instead: strata run against bwrap over kernel
    /// overlayfs and over fuse-overlayfs; start times, host memory and page cache per container,
    /// the runtimes' own memory, disk and teardown; writes WORK/results-scale.md
    #[arg(long, value_name = "N", conflicts_with_all = ["writable", "rootfs", "runner"])]
    scale: Option<usize>,
}

/// Timed starts per system in each round of --runner.
const RUNNER_STARTS: usize = 20;

fn main() {
    let cli = Cli::parse();
    let command_line =
        std::iter::once("strata-bench".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    if let Some(containers) = cli.scale {
        let opts = scale::Options { containers, work: cli.work, strata: cli.strata, command_line };
        if let Err(err) = scale::run(&opts) {
            eprintln!("strata-bench: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    if cli.runner {
        let (rounds, starts) = if cli.quick { (1, 5) } else { (cli.runs, RUNNER_STARTS) };
        let opts = runner::Options { rounds, starts, work: cli.work, strata: cli.strata, command_line };
        if let Err(err) = runner::run(&opts) {
            eprintln!("strata-bench: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    let (datasets, runs) = if cli.quick {
        (vec![Kind::Quick], 1)
    } else {
        let datasets = match cli.rootfs {
            Rootfs::Debootstrap => vec![Kind::Debootstrap],
            Rootfs::Synthetic => vec![Kind::Synthetic],
            Rootfs::Both => vec![Kind::Debootstrap, Kind::Synthetic],
        };
        (datasets, cli.runs)
    };
    let opts =
        bench::Options { datasets, runs, work: cli.work, strata: cli.strata, command_line, writable: cli.writable };
    if let Err(err) = run(&opts) {
        eprintln!("strata-bench: {err:#}");
        std::process::exit(1);
    }
}

fn run(opts: &bench::Options) -> Result<()> {
    bench::run(opts)
}
