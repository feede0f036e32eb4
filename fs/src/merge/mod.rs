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

pub mod lazy;

/// Index of a node in the tree; the root is 0.
pub type NodeId = u32;

pub const ROOT: NodeId = 0;

/// Marks a directory no layer names explicitly (a parent implied by a deeper entry).
pub const IMPLICIT: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub parent: NodeId,
    /// The node's name is `names[name_start..name_start + name_len]` of its tree.
    name_start: u32,
    name_len: u32,
    /// The layer (0 = bottom) that provides this path's metadata and content.
    pub layer: u16,
    /// Index of the entry in that layer's index, or [`IMPLICIT`].
    pub entry: u32,
    /// The node whose inode this path shares: itself, or the first name of its hard-link set.
    pub inode_node: NodeId,
    pub nlink: u32,
    /// The node's children are `child_ids[children_start..children_start + children_len]`.
    children_start: u32,
    children_len: u32,
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
    /// Every node's name, back to back.
    names: Vec<u8>,
    /// Every directory's children, sorted by name, directory after directory.
    child_ids: Vec<NodeId>,
}

#[derive(Clone, Copy)]
struct Slot {
    layer: u16,
    entry: u32,
}

/// The stack applied so far, keyed by path with `/` written as NUL: NUL sorts below every name
/// byte, so key order is depth-first order (a directory, then its whole subtree, then its next
/// sibling) and a subtree is one contiguous key range. Every key's ancestors are keys too.
struct State<'a> {
    layers: &'a [&'a LayerIndex],
    paths: BTreeMap<Vec<u8>, Slot>,
}

/// The state after the bottom layer, built in bulk: its paths sorted once, implicit parents
/// added, and the map built from sorted input (no per-entry tree descent).
fn bottom_layer(index: &LayerIndex) -> Result<BTreeMap<Vec<u8>, Slot>, MergeProblem> {
    let mut items: Vec<(Vec<u8>, Slot)> = Vec::with_capacity(index.entries.len() + 1);
    items.push((Vec::new(), Slot { layer: 0, entry: IMPLICIT }));
    for (ei, e) in index.entries.iter().enumerate() {
        let slot = Slot { layer: 0, entry: ei as u32 };
        match (e.path.is_empty(), e.kind) {
            (true, Kind::Dir) => items[0].1 = slot,
            (true, _) => return Err(MergeProblem::RootNotDirectory { layer: 0 }),
            (false, _) => items.push((key(&e.path), slot)),
        }
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let is_dir = |s: &Slot| s.entry == IMPLICIT || index.entries[s.entry as usize].kind == Kind::Dir;
    let shown = |k: &[u8]| k.iter().map(|&b| if b == 0 { b'/' } else { b }).collect();
    // In depth-first order a path's parent, if present, is the nearest directory on the chain;
    // missing parents sort right before the path, so they are emitted in order as found.
    let mut out: Vec<(Vec<u8>, Slot)> = Vec::with_capacity(items.len());
    let mut chain: Vec<usize> = Vec::new(); // indexes into `out` of the current directory chain
    for (k, slot) in items {
        if let Some((prev, prev_slot)) = out.last() {
            if !is_dir(prev_slot) && is_key_ancestor(prev, &k) {
                return Err(MergeProblem::ParentNotDirectory { layer: 0, entry: shown(&k), parent: shown(prev) });
            }
        }
        while chain.last().is_some_and(|&i| !is_key_ancestor(&out[i].0, &k)) {
            chain.pop();
        }
        let known = chain.last().map_or(0, |&i| out[i].0.len());
        for cut in (known + 1..k.len()).filter(|&i| k[i] == 0) {
            out.push((k[..cut].to_vec(), Slot { layer: 0, entry: IMPLICIT }));
            chain.push(out.len() - 1);
        }
        let dir = is_dir(&slot);
        out.push((k, slot));
        if dir {
            chain.push(out.len() - 1);
        }
    }
    Ok(out.into_iter().collect())
}

/// True when the key `dir` is a proper ancestor of the key `k`.
fn is_key_ancestor(dir: &[u8], k: &[u8]) -> bool {
    k.len() > dir.len() && k.starts_with(dir) && (dir.is_empty() || k[dir.len()] == 0)
}

fn key(path: &[u8]) -> Vec<u8> {
    path.iter().map(|&b| if b == b'/' { 0 } else { b }).collect()
}

impl State<'_> {
    fn is_dir(&self, s: Slot) -> bool {
        s.entry == IMPLICIT || self.layers[s.layer as usize].entries[s.entry as usize].kind == Kind::Dir
    }

    /// Removes every path strictly below `k`: the key range from `k NUL` up to `k \x01`.
    fn remove_below(&mut self, k: &[u8]) {
        let mut start = k.to_vec();
        start.push(0);
        let below = self.paths.split_off(&start[..]);
        if !k.is_empty() {
            *start.last_mut().expect("pushed above") = 1;
            self.paths.append(&mut { below }.split_off(&start[..]));
        }
    }

    /// Ensures `path`'s ancestors exist as directories (implicit ones for this layer if missing).
    fn make_parents(&mut self, layer: u16, path: &[u8]) -> Result<(), Vec<u8>> {
        let Some((parent, _)) = path::split_parent(path) else { return Ok(()) };
        match self.paths.get(&key(parent)[..]).copied() {
            Some(s) if self.is_dir(s) => Ok(()),
            Some(_) => Err(parent.to_vec()),
            None => {
                self.make_parents(layer, parent)?;
                self.paths.insert(key(parent), Slot { layer, entry: IMPLICIT });
                Ok(())
            }
        }
    }
}

impl MergedTree {
    pub fn build(layers: &[&LayerIndex]) -> Result<MergedTree, MergeProblem> {
        let Some(bottom) = layers.first() else {
            return Ok(Self::flatten(layers, BTreeMap::from([(Vec::new(), Slot { layer: 0, entry: IMPLICIT })])));
        };
        let mut state = State { layers, paths: bottom_layer(bottom)? };
        for (li, index) in layers.iter().enumerate().skip(1) {
            let layer = li as u16;
            for dir in &index.opaque_dirs {
                state.remove_below(&key(dir));
            }
            for gone in &index.whiteouts {
                let k = key(gone);
                state.remove_below(&k);
                if !k.is_empty() {
                    state.paths.remove(&k);
                }
            }
            for (ei, e) in index.entries.iter().enumerate() {
                let slot = Slot { layer, entry: ei as u32 };
                if e.path.is_empty() && e.kind != Kind::Dir {
                    return Err(MergeProblem::RootNotDirectory { layer: li });
                }
                state.make_parents(layer, &e.path).map_err(|parent| MergeProblem::ParentNotDirectory {
                    layer: li,
                    entry: e.path.to_vec(),
                    parent,
                })?;
                let k = key(&e.path);
                if let Some(existing) = state.paths.get(&k).copied() {
                    if !(state.is_dir(existing) && e.kind == Kind::Dir) {
                        state.remove_below(&k);
                    }
                }
                state.paths.insert(k, slot);
            }
        }
        Ok(Self::flatten(layers, state.paths))
    }

    /// Numbers the paths in depth-first order and links parents and children.
    fn flatten(layers: &[&LayerIndex], paths: BTreeMap<Vec<u8>, Slot>) -> MergedTree {
        let is_dir =
            |s: &Slot| s.entry == IMPLICIT || layers[s.layer as usize].entries[s.entry as usize].kind == Kind::Dir;
        let mut nodes: Vec<Node> = Vec::with_capacity(paths.len());
        let mut names: Vec<u8> = Vec::new();
        let mut link_sets: HashMap<(u16, u32), NodeId> = HashMap::new();
        // The directories from the root down to the previous path: (key, node).
        let mut chain: Vec<(&[u8], NodeId)> = Vec::new();
        for (k, slot) in &paths {
            let id = nodes.len() as NodeId;
            let name_at = k.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
            // Depth-first key order: once the chain holds only ancestors, its last is the parent.
            while chain.last().is_some_and(|(dir, _)| !is_key_ancestor(dir, k)) {
                chain.pop();
            }
            let parent = chain.last().map_or(ROOT, |&(_, p)| p);
            if id != ROOT {
                nodes[parent as usize].children_len += 1;
                if is_dir(slot) {
                    nodes[parent as usize].nlink += 1;
                }
            }
            let link_id = match slot.entry {
                IMPLICIT => 0,
                e => layers[slot.layer as usize].entries[e as usize].link_id,
            };
            let inode_node = if link_id == 0 { id } else { *link_sets.entry((slot.layer, link_id)).or_insert(id) };
            if inode_node != id {
                nodes[inode_node as usize].nlink += 1;
            }
            nodes.push(Node {
                parent,
                name_start: names.len() as u32,
                name_len: (k.len() - name_at) as u32,
                layer: slot.layer,
                entry: slot.entry,
                inode_node,
                nlink: if is_dir(slot) { 2 } else { 1 },
                children_start: 0,
                children_len: 0,
            });
            names.extend_from_slice(&k[name_at..]);
            if is_dir(slot) {
                chain.push((k, id));
            }
        }
        // Children in node order are in name order: lay each directory's out contiguously.
        let mut next = 0u32;
        for node in nodes.iter_mut() {
            node.children_start = next;
            next += node.children_len;
        }
        let mut child_ids = vec![0; next as usize];
        let mut filled = vec![0u32; nodes.len()];
        for id in 1..nodes.len() {
            let parent = nodes[id].parent as usize;
            child_ids[(nodes[parent].children_start + filled[parent]) as usize] = id as NodeId;
            filled[parent] += 1;
        }
        for i in 0..nodes.len() {
            let canonical = nodes[i].inode_node as usize;
            if canonical != i {
                nodes[i].nlink = nodes[canonical].nlink;
            }
        }
        MergedTree { nodes, names, child_ids }
    }

    /// A directory's children, sorted by name.
    pub fn children(&self, id: NodeId) -> &[NodeId] {
        let n = &self.nodes[id as usize];
        &self.child_ids[n.children_start as usize..(n.children_start + n.children_len) as usize]
    }

    /// A node's name (empty for the root).
    pub fn name(&self, id: NodeId) -> &[u8] {
        let n = &self.nodes[id as usize];
        &self.names[n.name_start as usize..(n.name_start + n.name_len) as usize]
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
        let kids = self.children(dir);
        kids.binary_search_by(|&k| self.name(k).cmp(name)).ok().map(|i| kids[i])
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
            parts.push(self.name(id));
            id = self.nodes[id as usize].parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (i as NodeId, n))
    }
}

#[cfg(test)]
mod tests;
