//! An image ready to serve: its loaded layers (shared, immutable) and the merged tree over them.
//! Resolving a node to the layer entry that provides it touches no host state, except the first
//! time a directory layer's deferred entry is asked for (`dir_index`).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::index::{Entry, Kind};
use crate::layer::Layer;
use crate::merge::{MergeProblem, MergedTree, Node, NodeId, IMPLICIT};

#[derive(Debug)]
pub struct ImageView {
    pub layers: Vec<Arc<Layer>>,
    pub tree: MergedTree,
}

impl ImageView {
    pub fn new(layers: Vec<Arc<Layer>>) -> Result<ImageView> {
        let indexes = layers.iter().map(|l| l.index()).collect::<Result<Vec<_>>>()?;
        let tree = MergedTree::build(&indexes).map_err(|problem| {
            let shown = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
            match problem {
                MergeProblem::ParentNotDirectory { layer, entry, parent } => Error::ParentNotDirectory {
                    layer: layers[layer].name.clone(),
                    entry: shown(&entry),
                    parent: shown(&parent),
                },
                MergeProblem::RootNotDirectory { layer } => Error::ParentNotDirectory {
                    layer: layers[layer].name.clone(),
                    entry: "/".into(),
                    parent: "the image root".into(),
                },
            }
        })?;
        Ok(ImageView { layers, tree })
    }

    /// The layer entry that provides a node, or None for an implicit directory. A directory
    /// layer reads a deferred entry's metadata here, on first use.
    pub fn entry(&self, node: &Node) -> Option<&Entry> {
        (node.entry != IMPLICIT).then(|| self.layers[node.layer as usize].entry(node.entry as usize))
    }

    pub fn entry_of(&self, id: NodeId) -> Option<&Entry> {
        self.entry(self.tree.node(id))
    }

    /// What kind of object a node is (an implicit directory is a directory), without reading
    /// any deferred metadata.
    pub fn kind_of(&self, id: NodeId) -> Kind {
        let node = self.tree.node(id);
        match node.entry {
            IMPLICIT => Kind::Dir,
            e => self.layers[node.layer as usize].kind(e as usize),
        }
    }
}
