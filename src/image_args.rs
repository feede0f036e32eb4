//! The image arguments every image command shares: `IMAGE` or `--layer …`, and `--tag`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use strata_fs::image::{self, Selector};
use strata_fs::layer::{self, cache::Cache};
use strata_fs::overlay::Lower;
use strata_fs::view::ImageView;

use crate::progress::TerminalProgress;

#[derive(Args)]
pub struct ImageArgs {
    /// An OCI layout, a `docker save` archive (directory or .tar), or one layer; then the mountpoint
    #[arg(value_name = "IMAGE [MOUNTPOINT]", num_args = 0..=2)]
    pub positional: Vec<PathBuf>,
    /// A layer (tar, tar.gz, tar.zst or directory), bottom first; repeat for a stack instead of IMAGE
    #[arg(long = "layer", value_name = "PATH")]
    pub layers: Vec<PathBuf>,
    /// Image to pick from a layout or archive: tag (ref name / RepoTag) or manifest digest
    #[arg(long)]
    pub tag: Option<String>,
}

impl ImageArgs {
    fn image_path(&self) -> Option<&PathBuf> {
        if self.layers.is_empty() {
            self.positional.first()
        } else {
            None
        }
    }

    /// The mountpoint: the positional after IMAGE (or the only one with `--layer`).
    pub fn mountpoint(&self) -> Result<PathBuf> {
        let expected = if self.layers.is_empty() { 2 } else { 1 };
        if self.positional.len() != expected {
            bail!("expected {} and a MOUNTPOINT", if self.layers.is_empty() { "IMAGE" } else { "--layer PATH..." });
        }
        Ok(self.positional[expected - 1].clone())
    }

    pub fn source_name(&self) -> String {
        match self.image_path() {
            Some(p) => p.display().to_string(),
            None if self.layers.len() == 1 => "1 layer".to_string(),
            None => format!("{} layers", self.layers.len()),
        }
    }

    pub fn resolve(&self) -> Result<image::Image> {
        let selector = self.tag.clone().map_or(Selector::Default, Selector::Tag);
        if !self.layers.is_empty() {
            if self.tag.is_some() {
                bail!("--tag selects an image in a layout or archive; it cannot be used with --layer");
            }
            // Absolute, so that a daemon, which leaves the working directory, names them in its log.
            let layers = self.layers.iter().map(absolute).collect::<Result<Vec<_>>>()?;
            return Ok(image::from_layers(&layers)?);
        }
        let Some(path) = self.image_path() else { bail!("no image given: pass IMAGE or --layer PATH") };
        image::open(&absolute(path)?, &selector).with_context(|| format!("opening image {}", path.display()))
    }

    /// Resolves, loads (indexing once, then from the cache) and merges the image.
    pub fn load(&self) -> Result<ImageView> {
        load_layers(&self.resolve()?)
    }
}

fn absolute(path: &PathBuf) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Loads (indexing once, then from the cache) and merges a resolved image's layers.
pub fn load_layers(image: &image::Image) -> Result<ImageView> {
    load_layers_from(image, &Cache::from_env())
}

/// The layers a writable overlay mounts over, merged a directory at a time as they are looked
/// into (tar layers loaded from the cache, indexed first if needed).
pub fn load_lower(image: &image::Image, cache: &Cache) -> Result<Lower> {
    Lower::load(&image.layers, cache, &TerminalProgress::default())
        .with_context(|| format!("loading layers (cache {})", cache.root().display()))
}

/// [`load_layers`] from a given cache.
pub fn load_layers_from(image: &image::Image, cache: &Cache) -> Result<ImageView> {
    let layers = layer::load_all(&image.layers, cache, &TerminalProgress::default())
        .with_context(|| format!("loading layers (cache {})", cache.root().display()))?;
    Ok(ImageView::new(layers)?)
}
