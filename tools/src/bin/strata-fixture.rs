//! `strata-fixture`: writes the standard (or demo) test image as an OCI layout or a
//! `docker save` archive.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use strata_tools::fixture::{demo_image, standard_image, write_docker_archive, write_oci_layout, Image};

#[derive(Parser)]
#[command(about = "Writes strata's test images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an OCI image layout directory (prints the manifest digest).
    Oci {
        dir: PathBuf,
        /// Write the demo image instead of the standard one.
        #[arg(long)]
        demo: bool,
    },
    /// Write a `docker save` archive: a tar file if PATH ends in .tar, else a directory.
    Docker {
        path: PathBuf,
        /// Write the demo image instead of the standard one.
        #[arg(long)]
        demo: bool,
    },
}

fn image(demo: bool) -> Result<Image> {
    if demo {
        demo_image()
    } else {
        Ok(standard_image())
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Oci { dir, demo } => println!("{}", write_oci_layout(&dir, &image(demo)?)?),
        Command::Docker { path, demo } => write_docker_archive(&path, &image(demo)?)?,
    }
    Ok(())
}
