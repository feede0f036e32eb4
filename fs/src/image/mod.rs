//! Where an image's layers come from: an OCI layout ([`oci`]), a `docker save` archive
//! ([`docker`]) — each as a directory or a tarball ([`store`]) — or an explicit stack of layer
//! paths. Produces [`LayerSource`]s (bottom first) and the image's run configuration; loading and
//! indexing the layers is `crate::layer`'s job.

pub mod docker;
pub mod oci;
pub mod store;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::layer::LayerSource;
use store::Store;

/// Which image of a layout or archive to use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selector {
    /// The only image there is.
    #[default]
    Default,
    /// A tag (`org.opencontainers.image.ref.name`, a docker RepoTag or its tag part) or a manifest digest.
    Tag(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Default => f.write_str("the default selection"),
            Selector::Tag(t) => write!(f, "tag {t:?}"),
        }
    }
}

/// The run configuration of an image (OCI config `config` object).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// An image resolved to its layers.
#[derive(Clone, Debug)]
pub struct Image {
    /// Bottom layer first.
    pub layers: Vec<LayerSource>,
    pub config: ImageConfig,
}

/// Opens `path` as an image: an OCI layout or `docker save` archive (directory or tarball), or
/// else a single layer (a tar in any compression, or a directory).
pub fn open(path: &Path, selector: &Selector) -> Result<Image> {
    let is_dir = std::fs::metadata(path).at(path)?.is_dir();
    // A file that is not a readable tar is not an image archive: it is reported as a layer below.
    if let Some(store) = (is_dir || is_uncompressed(path)).then(|| Store::open(path)).and_then(|s| s.ok()) {
        if store.contains("manifest.json") {
            return docker::load(&store, selector);
        }
        if store.contains("oci-layout") && store.contains("index.json") {
            return oci::load(&store, selector);
        }
    }
    single_layer(path, selector)
}

fn single_layer(path: &Path, selector: &Selector) -> Result<Image> {
    if *selector != Selector::Default {
        return Err(Error::bad_image(
            path,
            format!("{selector} given, but this is a single layer, not an image with tags"),
        ));
    }
    from_layers(&[path.to_path_buf()])
}

/// An image made of explicit layer paths, bottom first.
pub fn from_layers(paths: &[PathBuf]) -> Result<Image> {
    let layers = paths.iter().map(|p| LayerSource::from_path(p)).collect::<Result<_>>()?;
    Ok(Image { layers, config: ImageConfig::default() })
}

/// True when the file does not start with a gzip or zstd magic (an archive we can look inside).
fn is_uncompressed(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).unwrap_or(0);
    crate::layer::blob::Compression::detect(&magic[..n]) == crate::layer::blob::Compression::None
}
