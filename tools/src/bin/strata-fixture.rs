//! `strata-fixture`: writes one of strata's test images (standard, demo or runner) as an OCI
//! layout or a `docker save` archive.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use strata_tools::fixture::{demo_image, runner_image, standard_image, write_docker_archive, write_oci_layout, Image};

#[derive(Parser)]
#[command(about = "Writes strata's test images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// The rich multi-layer fixture of the filesystem tests.
    Standard,
    /// The small image of `strata demo`, from host files.
    Demo,
    /// The container image of the runner tests: static busybox.
    Runner,
}

#[derive(Subcommand)]
enum Command {
    /// Write an OCI image layout directory (prints the manifest digest).
    Oci {
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "standard")]
        image: Which,
    },
    /// Write a `docker save` archive: a tar file if PATH ends in .tar, else a directory.
    Docker {
        path: PathBuf,
        #[arg(long, value_enum, default_value = "standard")]
        image: Which,
    },
}

fn build(which: Which) -> Result<Image> {
    match which {
        Which::Standard => Ok(standard_image()),
        Which::Demo => demo_image(),
        Which::Runner => runner_image(),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Oci { dir, image } => println!("{}", write_oci_layout(&dir, &build(image)?)?),
        Command::Docker { path, image } => write_docker_archive(&path, &build(image)?)?,
    }
    Ok(())
}
