//! `docker save` archives (as a directory or as the tarball itself): `manifest.json`, the config
//! it names, and the layer tars, verified against the config's diff_ids.

use serde::Deserialize;

use super::oci::parse_config;
use super::store::Store;
use super::{Image, Selector};
use crate::error::{Error, Result};
use crate::layer::LayerSource;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub fn load(store: &Store, selector: &Selector) -> Result<Image> {
    let bytes = store.read("manifest.json")?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_image(store.path(), format!("manifest.json: {e}")))?;
    let tags = |e: &Entry| e.repo_tags.clone().unwrap_or_default();
    let matching: Vec<&Entry> = entries
        .iter()
        .filter(|e| match selector {
            Selector::Default => true,
            Selector::Tag(t) => tags(e).iter().any(|r| r == t || r.rsplit(':').next() == Some(t)),
        })
        .collect();
    let entry = match matching.as_slice() {
        [one] => *one,
        found => {
            let all: Vec<String> = entries.iter().flat_map(tags).collect();
            let why = if found.is_empty() { "no image matches" } else { "several images match" };
            return Err(Error::bad_image(store.path(), format!("{why} {selector}; available: {}", all.join(", "))));
        }
    };
    let config = parse_config(store, &entry.config)?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, name) in entry.layers.iter().enumerate() {
        // Docker 25+ stores layers as `blobs/sha256/<hex>`: the name is then the stored digest.
        let expected_digest = name.strip_prefix("blobs/sha256/").map(|hex| format!("sha256:{hex}"));
        layers.push(LayerSource::Blob {
            range: store.blob(name)?,
            expected_digest,
            expected_diff_id: config.rootfs.diff_ids.get(i).cloned(),
        });
    }
    Ok(Image { layers, config: config.config.unwrap_or_default() })
}
