//! The merged view of a layer stack built one directory at a time, when the directory is first
//! looked into: pure logic over the [`Layers`] it is given, no syscalls of its own. The writable
//! overlay's view of its lowers (`overlay::Lower`).
//!
//! [`super::MergedTree`] merges whole layer indexes up front, which a mount over directory lowers
//! (`strata-overlayfs`, `--layer DIR --upper …`) would pay by listing every directory of every
//! layer first; kernel overlayfs and fuse-overlayfs read a directory only when it is looked up. A
//! directory here merges its layers as overlayfs does: top layer first, a name seen higher hides
//! the same name lower unless both are directories (which then merge), whiteouts hide the name in
//! the layers below, and an opaque directory ends the merge. Tar layers add the OCI rules the
//! whole-stack merge applies (and the tests check it against): a directory a layer only implies
//! by entries below it keeps a lower directory's metadata, and one it only holds markers in does
//! not exist by itself.
//!
//! Node numbers follow the order directories were first looked into, so they are unique within a
//! mount but not the same on every mount: inode numbers come from the host (directory layers) or
//! from the layer's index (tar layers) instead.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::{NodeId, ROOT};
use crate::layer::by_dir::ByDirectory;
use crate::layer::dir_index;
use crate::layer::index::{Entry, Kind, LayerIndex, Listing, Presence, NO_INDEX};
use crate::path;

/// What the merge reads of its layers, one directory at a time.
pub trait Layers {
    /// Directory `path` of layer `layer`, whose entry there is `dir`.
    fn list(&self, layer: usize, path: &[u8], dir: &Entry) -> crate::Result<Listing>;
    /// The full entry of a deferred placeholder of layer `layer` (the placeholder itself if the
    /// object has gone from the host since).
    fn complete(&self, layer: usize, placeholder: &Entry) -> Entry;
    /// How layer `layer` is named in messages.
    fn name(&self, layer: usize) -> String;
}

/// One merged path.
#[derive(Debug)]
pub struct LazyNode {
    pub parent: NodeId,
    /// The layer (0 = bottom) that provides this path's metadata and content.
    pub layer: u16,
    /// The entry's index in that layer's index (tar layers), else [`NO_INDEX`].
    pub index: u32,
    /// Its entry there: a placeholder while `deferred` and not yet completed.
    entry: Entry,
    deferred: bool,
    completed: OnceLock<Entry>,
    /// A directory: every layer whose directory at this path merges into it, top first, with
    /// that directory's entry there.
    dirs: Box<[(u16, Entry)]>,
    /// A directory's children, sorted by name, once it has been looked into.
    children: OnceLock<Box<[NodeId]>>,
    /// How many names its hard-link set shows in the merged tree, once counted.
    pub names_shown: OnceLock<u32>,
}

impl LazyNode {
    /// The path's name in its directory (empty for the root).
    pub fn name(&self) -> &[u8] {
        path::split_parent(&self.entry.path).map_or(&self.entry.path[..], |(_, name)| name)
    }

    pub fn kind(&self) -> Kind {
        self.entry.kind
    }

    /// The object's host inode number, known without reading its metadata.
    pub fn host_ino(&self) -> u64 {
        self.entry.host_ino
    }

    /// The full entry, read from the layer on first use if it was deferred.
    pub fn entry(&self, layers: &dyn Layers) -> &Entry {
        match self.deferred {
            true => self.completed.get_or_init(|| layers.complete(self.layer as usize, &self.entry)),
            false => &self.entry,
        }
    }

    /// True for a directory that more than one layer provides (overlayfs' "merged" directory).
    pub fn is_merged_dir(&self) -> bool {
        self.dirs.len() > 1
    }

    /// The path in the image (empty for the root).
    pub fn path(&self) -> &[u8] {
        &self.entry.path
    }
}

/// A merged tree that grows as directories are looked into.
#[derive(Debug)]
pub struct LazyTree {
    nodes: RwLock<Vec<Arc<LazyNode>>>,
    /// Held while a directory is merged, so each is merged once.
    merging: Mutex<()>,
}

/// A child of the directory being merged, before it becomes a node.
struct Found {
    /// Where its metadata comes from: (layer, index, entry, deferred).
    layer: u16,
    index: u32,
    entry: Entry,
    deferred: bool,
    /// How the layer that provides the metadata has it; `Markers` while no layer seen so far
    /// makes the directory exist.
    presence: Presence,
    dirs: Vec<(u16, Entry)>,
    /// Same-named directories of lower layers may still merge into it.
    merges: bool,
    /// The lowest layer seen so far making the directory exist only implies it.
    implied_last: bool,
}

impl LazyTree {
    /// The tree over layers whose root directories are `roots`, top first: (layer, root entry,
    /// whether the layer has an entry for its root). The root shows the highest such entry.
    pub fn new(roots: Vec<(u16, Entry, bool)>) -> LazyTree {
        let named = roots.iter().find(|(_, _, named)| *named);
        let (layer, entry) = named.map_or((0, Entry::implied_dir()), |(l, e, _)| (*l, e.clone()));
        let root = LazyNode {
            parent: ROOT,
            layer,
            index: NO_INDEX,
            entry,
            deferred: false,
            completed: OnceLock::new(),
            dirs: roots.into_iter().map(|(l, e, _)| (l, e)).collect(),
            children: OnceLock::new(),
            names_shown: OnceLock::new(),
        };
        LazyTree { nodes: RwLock::new(vec![Arc::new(root)]), merging: Mutex::new(()) }
    }

    pub fn node(&self, id: NodeId) -> Arc<LazyNode> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())[id as usize].clone()
    }

    /// A directory's children, sorted by name, merging the directory first if needed.
    pub fn children(&self, layers: &dyn Layers, dir: NodeId) -> crate::Result<Vec<NodeId>> {
        Ok(self.merged(layers, dir)?.children.get().expect("merged").to_vec())
    }

    pub fn lookup_child(&self, layers: &dyn Layers, dir: NodeId, name: &[u8]) -> crate::Result<Option<NodeId>> {
        let dir = self.merged(layers, dir)?;
        let children = dir.children.get().expect("merged");
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        Ok(children.binary_search_by(|&c| nodes[c as usize].name().cmp(name)).ok().map(|i| children[i]))
    }

    /// Directory `dir`, its children merged.
    fn merged(&self, layers: &dyn Layers, dir: NodeId) -> crate::Result<Arc<LazyNode>> {
        let node = self.node(dir);
        if node.children.get().is_some() {
            return Ok(node);
        }
        let _merging = self.merging.lock().unwrap_or_else(|e| e.into_inner());
        if node.children.get().is_some() {
            return Ok(node);
        }
        let found = merge_dir(layers, &node)?;
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let first = nodes.len() as NodeId;
        for f in found.into_values().filter(|f| f.presence != Presence::Markers) {
            nodes.push(Arc::new(LazyNode {
                parent: dir,
                layer: f.layer,
                index: f.index,
                entry: f.entry,
                deferred: f.deferred,
                completed: OnceLock::new(),
                dirs: f.dirs.into(),
                children: OnceLock::new(),
                names_shown: OnceLock::new(),
            }));
        }
        let _ = node.children.set((first..nodes.len() as NodeId).collect());
        Ok(node)
    }

    /// Resolves a path (no symlinks followed), merging the directories on the way.
    pub fn lookup(&self, layers: &dyn Layers, path: &[u8]) -> crate::Result<Option<NodeId>> {
        let mut node = ROOT;
        for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
            match self.lookup_child(layers, node, name)? {
                Some(child) => node = child,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// Merges every directory not merged yet: for the rare question only the whole tree answers
    /// (every name of a hard-link set).
    pub fn merge_all(&self, layers: &dyn Layers) -> crate::Result<()> {
        let mut pending = vec![ROOT];
        while let Some(dir) = pending.pop() {
            for child in self.children(layers, dir)? {
                if self.node(child).kind() == Kind::Dir {
                    pending.push(child);
                }
            }
        }
        Ok(())
    }

    /// Every node merged so far.
    pub fn nodes(&self) -> Vec<(NodeId, Arc<LazyNode>)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.iter().enumerate().map(|(i, n)| (i as NodeId, n.clone())).collect()
    }
}

/// The children of directory `dir`, by name: its layers top first, each name taken from the
/// highest layer that has it, lower same-named directories merging into a directory, whiteouts
/// hiding names in the layers below theirs, and an opaque directory ending the merge. A
/// directory a layer only implies takes the metadata of a directory lower down; one a layer only
/// holds markers in exists only if a lower layer has it.
fn merge_dir(layers: &dyn Layers, dir: &LazyNode) -> crate::Result<BTreeMap<Box<[u8]>, Found>> {
    let mut found: BTreeMap<Box<[u8]>, Found> = BTreeMap::new();
    let mut hidden: HashSet<Box<[u8]>> = HashSet::new();
    for (layer, dir_entry) in dir.dirs.iter() {
        let listing = layers.list(*layer as usize, &dir.entry.path, dir_entry)?;
        for listed in listing.objects {
            let name: Box<[u8]> =
                path::split_parent(&listed.entry.path).map_or(&listed.entry.path[..], |(_, n)| n).into();
            if hidden.contains(&name) {
                continue;
            }
            let is_dir = listed.entry.kind == Kind::Dir;
            let ends_merge = is_dir && dir_index::is_opaque(&listed.entry.xattrs);
            let new = |listed: crate::layer::index::Listed, dirs: Vec<(u16, Entry)>, merges: bool| Found {
                layer: *layer,
                index: listed.index,
                implied_last: listed.presence == Presence::Implied,
                entry: listed.entry,
                deferred: listed.deferred,
                presence: listed.presence,
                dirs,
                merges,
            };
            match found.get_mut(&name) {
                None => {
                    let dirs = if is_dir { vec![(*layer, listed.entry.clone())] } else { Vec::new() };
                    found.insert(name, new(listed, dirs, is_dir && !ends_merge));
                }
                Some(higher) if higher.merges && is_dir => {
                    higher.dirs.push((*layer, listed.entry.clone()));
                    if listed.presence != Presence::Markers {
                        higher.implied_last = listed.presence == Presence::Implied;
                    }
                    let takes_metadata = match higher.presence {
                        Presence::Markers => listed.presence != Presence::Markers,
                        Presence::Implied => listed.presence == Presence::Entry,
                        Presence::Entry => false,
                    };
                    let merges = !ends_merge;
                    if takes_metadata {
                        let (dirs, implied_last) = (std::mem::take(&mut higher.dirs), higher.implied_last);
                        *higher = Found { implied_last, ..new(listed, dirs, merges) };
                    }
                    higher.merges = merges;
                }
                Some(higher) if higher.merges && higher.implied_last => {
                    // A tar layer's entries below a path a lower layer has as a file: extracting
                    // the layers in order would fail there, and the whole-stack merge refuses it.
                    return Err(crate::Error::ParentNotDirectory {
                        layer: layers.name(higher.layer as usize),
                        entry: String::from_utf8_lossy(&path::join(&listed.entry.path, b"...")).into_owned(),
                        parent: format!(
                            "{} (a {} in {})",
                            String::from_utf8_lossy(&listed.entry.path),
                            listed.entry.kind.name(),
                            layers.name(*layer as usize)
                        ),
                    });
                }
                // Markers over a non-directory apply to nothing: the object shows as it is.
                Some(higher) if higher.presence == Presence::Markers => *higher = new(listed, Vec::new(), false),
                Some(higher) => higher.merges = false,
            }
        }
        hidden.extend(listing.whiteouts);
        if listing.opaque {
            break;
        }
    }
    Ok(found)
}

/// Tar layer indexes in memory, bottom first, each arranged by directory: a stack for the lazy
/// merge with no host file behind it (tests, benchmarks, tools reading indexes).
pub struct IndexStack(Vec<(LayerIndex, ByDirectory)>);

impl IndexStack {
    pub fn new(indexes: Vec<LayerIndex>) -> IndexStack {
        IndexStack(indexes.into_iter().map(|index| (ByDirectory::new(&index), index)).map(|(b, i)| (i, b)).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Layers for IndexStack {
    fn list(&self, layer: usize, path: &[u8], _dir: &Entry) -> crate::Result<Listing> {
        let (index, by_dir) = &self.0[layer];
        by_dir.list(path, |indices| Ok(indices.iter().map(|&i| index.entries[i as usize].clone()).collect()))
    }

    fn complete(&self, _layer: usize, placeholder: &Entry) -> Entry {
        placeholder.clone()
    }

    fn name(&self, layer: usize) -> String {
        format!("tar {layer}")
    }
}

#[cfg(test)]
mod tests;
