//! OCI image layouts (image-spec image-layout.md, manifest.md, config.md): `index.json`, nested
//! indexes, platform selection, manifests and configs, and the layer descriptors with the digests
//! each layer blob must hash to.

use std::collections::HashMap;

use serde::Deserialize;

use super::store::Store;
use super::{Image, ImageConfig, Selector};
use crate::error::{Error, Result};
use crate::layer::LayerSource;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

#[derive(Deserialize, Default)]
pub(super) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

/// `blobs/sha256/<hex>` for a digest, refusing algorithms and encodings strata cannot verify.
pub(super) fn blob_name(store: &Store, digest: &str) -> Result<String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .ok_or_else(|| {
            Error::bad_image(
                store.path(),
                format!("unsupported or malformed digest {digest:?} (strata verifies sha256)"),
            )
        })?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn parse<T: for<'de> Deserialize<'de>>(store: &Store, name: &str) -> Result<T> {
    let bytes = store.read(name)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::bad_image(store.path(), format!("{name}: {e}")))
}

pub(super) fn parse_config(store: &Store, name: &str) -> Result<ConfigFile> {
    parse(store, name)
}

/// The document a descriptor names, verified against the descriptor's digest: an image pinned by
/// digest is that image, not what the layout holds under that name today.
fn parse_blob<T: for<'de> Deserialize<'de>>(store: &Store, digest: &str) -> Result<T> {
    use sha2::{Digest, Sha256};
    let name = blob_name(store, digest)?;
    let bytes = store.read(&name)?;
    let found = format!("sha256:{:x}", Sha256::digest(&bytes));
    if found != digest {
        return Err(Error::bad_image(
            store.path(),
            format!("{name} holds {found}, not the {digest} its descriptor names: the layout was changed after it was written; copy the image again"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::bad_image(store.path(), format!("{name}: {e}")))
}

pub fn load(store: &Store, selector: &Selector) -> Result<Image> {
    let index: Index = parse(store, "index.json")?;
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| match selector {
            Selector::Default => true,
            Selector::Tag(t) => {
                d.annotations.get(REF_NAME).is_some_and(|r| r == t || r.rsplit(':').next() == Some(t)) || d.digest == *t
            }
        })
        .collect();
    let chosen = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::bad_image(
                store.path(),
                format!("no manifest matches {selector}; available: {}", available(&index)),
            ))
        }
        _ => {
            return Err(Error::bad_image(
                store.path(),
                format!("several manifests match {selector}; pick one with --tag: {}", available(&index)),
            ))
        }
    };
    let manifest_desc = resolve_platform(store, chosen)?;
    let manifest: Manifest = parse_blob(store, &manifest_desc.digest)?;
    let config: ConfigFile = parse_blob(store, &manifest.config.digest)?;
    if !config.rootfs.diff_ids.is_empty() && config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::bad_image(
            store.path(),
            format!("the config lists {} diff_ids for {} layers", config.rootfs.diff_ids.len(), manifest.layers.len()),
        ));
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, desc) in manifest.layers.iter().enumerate() {
        if !(desc.media_type.contains("layer") || desc.media_type.contains("rootfs.diff")) {
            return Err(Error::bad_image(
                store.path(),
                format!("layer {i} has media type {:?}, which is not a filesystem layer", desc.media_type),
            ));
        }
        layers.push(LayerSource::Blob {
            range: store.blob(&blob_name(store, &desc.digest)?)?,
            expected_digest: Some(desc.digest.clone()),
            expected_diff_id: config.rootfs.diff_ids.get(i).cloned(),
        });
    }
    Ok(Image { layers, config: config.config.unwrap_or_default() })
}

/// Follows nested indexes down to one manifest, picking the host's platform (linux/amd64 here).
fn resolve_platform(store: &Store, mut desc: Descriptor) -> Result<Descriptor> {
    for _ in 0..8 {
        if !is_index(&desc.media_type) {
            return Ok(desc);
        }
        let nested: Index = parse_blob(store, &desc.digest)?;
        let arch = host_architecture();
        desc = nested
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
            .cloned()
            .ok_or_else(|| {
                Error::bad_image(
                    store.path(),
                    format!("no linux/{arch} manifest in the multi-platform index {}", desc.digest),
                )
            })?;
    }
    Err(Error::bad_image(store.path(), "image indexes nest more than 8 deep"))
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn available(index: &Index) -> String {
    let names: Vec<String> = index
        .manifests
        .iter()
        .map(|d| d.annotations.get(REF_NAME).cloned().unwrap_or_else(|| d.digest.clone()))
        .collect();
    names.join(", ")
}
