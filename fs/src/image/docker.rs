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

/// True when `wanted` names the image tagged `repo_tag` (`REPOSITORY:TAG`, as `docker save`
/// writes it): in full, by its repository, or by its tag.
fn names(repo_tag: &str, wanted: &str) -> bool {
    repo_tag == wanted || repo_tag.rsplit_once(':').is_some_and(|(repo, tag)| repo == wanted || tag == wanted)
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
            Selector::Tag(t) => tags(e).iter().any(|r| names(r, t)),
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
    // As `docker load`: every layer has the diff_id it is verified against.
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(Error::bad_image(
            store.path(),
            format!(
                "{}: {} diff_ids for the {} layers of manifest.json",
                entry.config,
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn an_image_is_named_by_its_full_name_its_repository_or_its_tag() {
        for wanted in ["ubuntu:22.04", "ubuntu", "22.04"] {
            assert!(names("ubuntu:22.04", wanted), "{wanted}");
        }
        assert!(names("localhost:5000/app:v1", "localhost:5000/app"));
        assert!(!names("ubuntu:22.04", "ubunt"));
        assert!(!names("ubuntu:22.04", "debian"));
    }
}
