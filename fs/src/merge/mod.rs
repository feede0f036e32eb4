//! The merged view of a layer stack: pure logic over layer indexes, no syscalls.
//!
//! The stack is applied bottom first with the OCI changeset rules — opaque markers, then
//! whiteouts (both only ever hide lower layers, wherever they appear in the tar), then the
//! layer's entries (a directory over a directory merges; anything else replaces the whole path).
//! The result is flattened once into a tree of [`Node`]s numbered in path order, so a lookup is
//! O(depth) binary searches whatever the number of layers, listings are sorted and stable, and
//! node numbers (and so inode numbers) are the same on every mount of the same stack.

use std::collections::{BTreeMap, HashMap};

use crate::layer::index::{Kind, LayerIndex};
use crate::path;

/// Index of a node in the tree; the root is 0.
pub type NodeId = u32;

pub const ROOT: NodeId = 0;

/// Marks a directory no layer names explicitly (a parent implied by a deeper entry).
pub const IMPLICIT: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub parent: NodeId,
    pub name: Box<[u8]>,
    /// The layer (0 = bottom) that provides this path's metadata and content.
    pub layer: u16,
    /// Index of the entry in that layer's index, or [`IMPLICIT`].
    pub entry: u32,
    /// The node whose inode this path shares: itself, or the first name of its hard-link set.
    pub inode_node: NodeId,
    pub nlink: u32,
    /// Children sorted by name (directories only).
    pub children: Box<[NodeId]>,
}

/// Why a stack cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeProblem {
    /// Layer `layer` has an entry below a path that is not a directory at that point.
    ParentNotDirectory { layer: usize, entry: Vec<u8>, parent: Vec<u8> },
    /// Layer `layer` names the root as something other than a directory.
    RootNotDirectory { layer: usize },
}

#[derive(Debug, Clone)]
pub struct MergedTree {
    nodes: Vec<Node>,
}

#[derive(Clone, Copy)]
struct Slot {
    layer: u16,
    entry: u32,
}

impl MergedTree {
    pub fn build(layers: &[&LayerIndex]) -> Result<MergedTree, MergeProblem> {
        let is_dir =
            |s: &Slot| s.entry == IMPLICIT || layers[s.layer as usize].entries[s.entry as usize].kind == Kind::Dir;
        let mut state: BTreeMap<Box<[u8]>, Slot> = BTreeMap::new();
        state.insert(Box::default(), Slot { layer: 0, entry: IMPLICIT });
        for (li, index) in layers.iter().enumerate() {
            let layer = li as u16;
            for dir in &index.opaque_dirs {
                remove_below(&mut state, dir);
            }
            for gone in &index.whiteouts {
                remove_below(&mut state, gone);
                state.remove(gone);
            }
            for (ei, e) in index.entries.iter().enumerate() {
                let slot = Slot { layer, entry: ei as u32 };
                if e.path.is_empty() {
                    if e.kind != Kind::Dir {
                        return Err(MergeProblem::RootNotDirectory { layer: li });
                    }
                    state.insert(Box::default(), slot);
                    continue;
                }
                for ancestor in path::ancestors(&e.path) {
                    match state.get(ancestor) {
                        None => {
                            state.insert(ancestor.into(), Slot { layer, entry: IMPLICIT });
                        }
                        Some(s) if !is_dir(s) => {
                            return Err(MergeProblem::ParentNotDirectory {
                                layer: li,
                                entry: e.path.to_vec(),
                                parent: ancestor.to_vec(),
                            });
                        }
                        Some(_) => {}
                    }
                }
                if let Some(existing) = state.get(&e.path) {
                    if !(is_dir(existing) && e.kind == Kind::Dir) {
                        remove_below(&mut state, &e.path);
                    }
                }
                state.insert(e.path.clone(), slot);
            }
        }
        Ok(Self::flatten(layers, state))
    }

    fn flatten(layers: &[&LayerIndex], state: BTreeMap<Box<[u8]>, Slot>) -> MergedTree {
        let mut ids: HashMap<&[u8], NodeId> = HashMap::with_capacity(state.len());
        let mut nodes: Vec<Node> = Vec::with_capacity(state.len());
        let mut children: Vec<Vec<NodeId>> = Vec::with_capacity(state.len());
        let mut link_sets: HashMap<(u16, u32), NodeId> = HashMap::new();
        for (p, slot) in &state {
            let id = nodes.len() as NodeId;
            let (parent, name) = match path::split_parent(p) {
                Some((parent, name)) => (ids[parent], name),
                None => (ROOT, &[][..]),
            };
            if id != ROOT {
                children[parent as usize].push(id);
            }
            ids.insert(p, id);
            let link_id = match slot.entry {
                IMPLICIT => 0,
                e => layers[slot.layer as usize].entries[e as usize].link_id,
            };
            let inode_node = if link_id == 0 { id } else { *link_sets.entry((slot.layer, link_id)).or_insert(id) };
            nodes.push(Node {
                parent,
                name: name.into(),
                layer: slot.layer,
                entry: slot.entry,
                inode_node,
                nlink: 1,
                children: Box::default(),
            });
            children.push(Vec::new());
        }
        for i in 0..nodes.len() {
            let canonical = nodes[i].inode_node as usize;
            if canonical != i {
                nodes[canonical].nlink += 1;
            }
        }
        for (i, kids) in children.into_iter().enumerate() {
            let node = &nodes[i];
            let is_dir =
                node.entry == IMPLICIT || layers[node.layer as usize].entries[node.entry as usize].kind == Kind::Dir;
            if is_dir {
                let subdirs = kids
                    .iter()
                    .filter(|&&k| {
                        let n = &nodes[k as usize];
                        n.entry == IMPLICIT || layers[n.layer as usize].entries[n.entry as usize].kind == Kind::Dir
                    })
                    .count() as u32;
                nodes[i].nlink = 2 + subdirs;
            }
            nodes[i].children = kids.into_boxed_slice();
        }
        for i in 0..nodes.len() {
            let canonical = nodes[i].inode_node as usize;
            if canonical != i {
                nodes[i].nlink = nodes[canonical].nlink;
            }
        }
        MergedTree { nodes }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    pub fn lookup_child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let kids = &self.nodes[dir as usize].children;
        kids.binary_search_by(|&k| (*self.nodes[k as usize].name).cmp(name)).ok().map(|i| kids[i])
    }

    /// Resolves a normalised path (no symlinks are followed).
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        if path.is_empty() {
            return Some(ROOT);
        }
        path.split(|&b| b == b'/').try_fold(ROOT, |dir, name| self.lookup_child(dir, name))
    }

    /// The full path of a node, for messages and inspection.
    pub fn path_of(&self, mut id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        while id != ROOT {
            let node = &self.nodes[id as usize];
            parts.push(&*node.name);
            id = node.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (i as NodeId, n))
    }
}

/// Removes every path strictly below `dir`.
fn remove_below(state: &mut BTreeMap<Box<[u8]>, Slot>, dir: &[u8]) {
    if dir.is_empty() {
        state.retain(|k, _| k.is_empty());
        return;
    }
    let mut start = dir.to_vec();
    start.push(b'/');
    let mut end = dir.to_vec();
    end.push(b'/' + 1);
    let doomed: Vec<Box<[u8]>> = state
        .range::<[u8], _>((std::ops::Bound::Included(&start[..]), std::ops::Bound::Excluded(&end[..])))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        state.remove(&k);
    }
}

#[cfg(test)]
mod tests;
