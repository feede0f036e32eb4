//! Inspection of an image without mounting it: the layer table and the provenance of one path
//! (which layer provides it, which lower layers it shadows, which layers delete it). Pure logic
//! over loaded layers; printing is the CLI's job.

use crate::layer::blob::Compression;
use crate::layer::Layer;
use crate::merge::{MergedTree, IMPLICIT};
use crate::path;

/// One row of the layer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub stored_size: u64,
    pub uncompressed_size: u64,
    pub entries: usize,
    pub whiteouts: usize,
    pub opaque_dirs: usize,
}

/// The rows of a view's layers (`ImageView::new` has decoded their indexes).
pub fn layer_table(layers: &[std::sync::Arc<Layer>]) -> Vec<LayerRow> {
    layers
        .iter()
        .map(|l| LayerRow {
            name: l.name.clone(),
            digest: l.info.stored_digest.clone(),
            media_type: match l.host_dir() {
                Some(_) => "directory".to_string(),
                None => l.info.compression.media_type().to_string(),
            },
            stored_size: l.info.stored_size,
            uncompressed_size: if l.info.compression == Compression::None {
                l.info.stored_size
            } else {
                l.info.uncompressed_size
            },
            entries: l.decoded_index().entries.len(),
            whiteouts: l.decoded_index().whiteouts.len(),
            opaque_dirs: l.decoded_index().opaque_dirs.len(),
        })
        .collect()
}

/// What one layer says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mention {
    /// The layer has an entry of this kind at the path.
    Entry(&'static str),
    /// The layer whites out the path itself.
    Whiteout,
    /// The layer whites out an ancestor, deleting the path with it.
    WhiteoutOfAncestor(String),
    /// An ancestor is opaque in this layer, hiding the path in lower layers.
    OpaqueAncestor(String),
}

/// Provenance of one path across the stack, bottom layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    pub path: String,
    /// The layer whose entry is visible, if the path is visible (None when it only exists implicitly).
    pub provided_by: Option<usize>,
    pub visible: bool,
    pub mentions: Vec<(usize, Mention)>,
}

pub fn path_report(
    layers: &[std::sync::Arc<Layer>],
    tree: &MergedTree,
    raw: &str,
) -> Result<PathReport, path::PathProblem> {
    let relative = raw.trim_start_matches('/');
    let p = if relative.is_empty() { Vec::new() } else { path::normalize(relative.as_bytes())? };
    let node = tree.lookup(&p).map(|id| tree.node(id));
    let mut mentions = Vec::new();
    for (li, layer) in layers.iter().enumerate() {
        let idx = layer.decoded_index();
        for ancestor in path::ancestors(&p).chain(std::iter::once(&[][..]).filter(|_| !p.is_empty())) {
            if idx.opaque_dirs.iter().any(|d| **d == *ancestor) {
                mentions.push((li, Mention::OpaqueAncestor(shown(ancestor))));
            }
        }
        for w in &idx.whiteouts {
            if **w == *p {
                mentions.push((li, Mention::Whiteout));
            } else if path::is_within(&p, w) {
                mentions.push((li, Mention::WhiteoutOfAncestor(shown(w))));
            }
        }
        if let Some(e) = idx.entries.iter().find(|e| *e.path == *p) {
            mentions.push((li, Mention::Entry(e.kind.name())));
        }
    }
    Ok(PathReport {
        path: format!("/{}", shown(&p)),
        provided_by: node.filter(|n| n.entry != IMPLICIT).map(|n| n.layer as usize),
        visible: node.is_some(),
        mentions,
    })
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}
