//! What the overlay sees below its upper directory: the whole-stack merge of an image
//! ([`ImageView`]), or, when every layer is a host directory, the per-directory merge that reads a
//! directory only when it is first looked into ([`LazyTree`]), as kernel overlayfs and
//! fuse-overlayfs do: a mount over large directory lowers then starts without listing them.
//! One interface for both, so the overlay's rules do not depend on which it is. Reads only.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::FileAttr;

use super::inodes::Ino;
use crate::fuse::attr;
use crate::layer::dir_index::{HostDir, Listing};
use crate::layer::index::{Entry, Kind};
use crate::layer::FileReader;
use crate::merge::lazy::{self, LazyTree};
use crate::merge::NodeId;
use crate::view::ImageView;

/// Host inode numbers from this one up do not fit the 48 bits [`Lower::ino`] gives them (nor
/// layers from 2^15 up the 15 bits above); such objects are numbered by their node instead.
const HOST_INO_LIMIT: u64 = 1 << 48;

/// Node numbers of a lazily merged tree stay below this (they are u32): upper-only objects are
/// numbered from here, as they are from the node count of a whole-stack merge.
const LAZY_NODE_LIMIT: Ino = 1 << 32;

pub enum Lower {
    Image(ImageView),
    Dirs(DirStack),
}

/// Directory layers (bottom first) merged one directory at a time.
pub struct DirStack {
    layers: Vec<HostDir>,
    tree: LazyTree,
}

impl DirStack {
    /// Opens directory layers, bottom first, reading nothing but their root directories.
    pub fn open(paths: &[&Path]) -> crate::Result<DirStack> {
        let layers = paths.iter().map(|p| HostDir::open(p)).collect::<crate::Result<Vec<_>>>()?;
        let mut roots = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate().rev() {
            roots.push((i as u16, layer.root_entry()?));
        }
        Ok(DirStack { layers, tree: LazyTree::new(roots) })
    }
}

impl lazy::Layers for Vec<HostDir> {
    fn list(&self, layer: usize, path: &[u8], dir: &Entry) -> crate::Result<Listing> {
        self[layer].list(path, dir)
    }

    fn complete(&self, layer: usize, placeholder: &Entry) -> Entry {
        self[layer].complete(placeholder).unwrap_or_else(|_| placeholder.clone())
    }
}

/// A lazy merge's failure to read a directory layer, as the errno the caller gets; the log names
/// the directory (errno alone would not).
fn io_error(e: crate::Error) -> io::Error {
    tracing::warn!("{e}");
    match e {
        crate::Error::Io { cause, .. } => cause,
        other => io::Error::other(other.to_string()),
    }
}

impl Lower {
    /// The host directories among the layers (to refuse an upper that overlaps one).
    pub fn host_dirs(&self) -> Vec<&Path> {
        match self {
            Lower::Image(view) => view.layers.iter().filter_map(|l| l.host_dir()).collect(),
            Lower::Dirs(stack) => stack.layers.iter().map(|l| l.path.as_path()).collect(),
        }
    }

    /// The first inode number above every number [`Lower::ino`] can give.
    pub fn first_free_ino(&self) -> Ino {
        match self {
            Lower::Image(view) => view.tree.len() as Ino + 1,
            Lower::Dirs(_) => LAZY_NODE_LIMIT + 1,
        }
    }

    /// A lower object's inode number, shared by every name of a hard-link set. A directory
    /// layer's object shows its host inode number, as kernel overlayfs shows it (and as
    /// `git status` compares with the numbers its index recorded): in the low 48 bits, with bit
    /// 63 set and the layer above them, so numbers of layers on different filesystems cannot
    /// meet, nor meet the small numbers of other objects (node + 1) and upper-only objects
    /// (counted from [`Lower::first_free_ino`]).
    pub fn ino(&self, node: NodeId) -> Ino {
        let (canonical, layer, host_ino) = match self {
            Lower::Image(view) => {
                let canonical = view.tree.node(node).inode_node;
                (canonical, view.tree.node(canonical).layer as u64, view.host_ino_of(canonical))
            }
            Lower::Dirs(stack) => {
                let n = stack.tree.node(node);
                (node, n.layer as u64, n.host_ino())
            }
        };
        if host_ino != 0 && host_ino < HOST_INO_LIMIT && layer < 1 << 15 {
            return 1 << 63 | layer << 48 | host_ino;
        }
        canonical as u64 + 1
    }

    /// What kind of object a node is, without reading deferred metadata.
    pub fn kind(&self, node: NodeId) -> Kind {
        match self {
            Lower::Image(view) => view.kind_of(node),
            Lower::Dirs(stack) => stack.tree.node(node).kind(),
        }
    }

    /// Calls `f` with a node's full entry (None for a directory only implied by deeper entries).
    pub fn with_entry<R>(&self, node: NodeId, f: impl FnOnce(Option<&Entry>) -> R) -> R {
        match self {
            Lower::Image(view) => f(view.entry_of(node)),
            Lower::Dirs(stack) => f(Some(stack.tree.node(node).entry(&stack.layers))),
        }
    }

    /// A node's entry, owned; an implied directory gets overlayfs' defaults.
    pub fn entry(&self, node: NodeId) -> Entry {
        self.with_entry(node, |e| e.cloned().unwrap_or_else(Entry::implied_dir))
    }

    /// A node's attributes (its `ino` field still to be set by the caller). Over directory
    /// layers, a file's link count is its host file's, and a directory several layers merge
    /// shows 1, as kernel overlayfs shows them.
    pub fn attr(&self, node: NodeId) -> FileAttr {
        match self {
            Lower::Image(view) => {
                let n = view.tree.node(node);
                attr::attr(n, view.entry(n))
            }
            Lower::Dirs(stack) => {
                let n = stack.tree.node(node);
                let entry = n.entry(&stack.layers);
                let mut a = attr::of_entry(entry);
                a.nlink = if n.is_merged_dir() { 1 } else { entry.host_nlink.max(1) };
                a
            }
        }
    }

    /// How many names the node's object has in the lower layers.
    pub fn nlink(&self, node: NodeId) -> u32 {
        match self {
            Lower::Image(view) => view.tree.node(node).nlink,
            Lower::Dirs(_) => self.attr(node).nlink,
        }
    }

    pub fn lookup_child(&self, dir: NodeId, name: &[u8]) -> io::Result<Option<NodeId>> {
        match self {
            Lower::Image(view) => Ok(view.tree.lookup_child(dir, name)),
            Lower::Dirs(stack) => stack.tree.lookup_child(&stack.layers, dir, name).map_err(io_error),
        }
    }

    /// A directory's children, sorted by name: (node, name).
    pub fn children(&self, dir: NodeId) -> io::Result<Vec<(NodeId, Vec<u8>)>> {
        match self {
            Lower::Image(view) => {
                Ok(view.tree.children(dir).iter().map(|&c| (c, view.tree.name(c).to_vec())).collect())
            }
            Lower::Dirs(stack) => {
                let children = stack.tree.children(&stack.layers, dir).map_err(io_error)?;
                Ok(children.into_iter().map(|c| (c, stack.tree.node(c).name().to_vec())).collect())
            }
        }
    }

    /// The paths of every name of `node`'s lower hard-link set, `node`'s own included.
    pub fn link_set_paths(&self, node: NodeId) -> io::Result<Vec<Vec<u8>>> {
        match self {
            Lower::Image(view) => {
                let set = view.tree.node(node).inode_node;
                let names = view.tree.iter().filter(|(_, n)| n.inode_node == set);
                Ok(names.map(|(id, _)| view.tree.path_of(id)).collect())
            }
            Lower::Dirs(stack) => {
                // The names of one host inode can be anywhere in its layer: merge the whole tree.
                stack.tree.merge_all(&stack.layers).map_err(io_error)?;
                let of = stack.tree.node(node);
                let same = |n: &lazy::LazyNode| n.layer == of.layer && n.host_ino() == of.host_ino();
                let names = stack.tree.nodes().into_iter().filter(|(_, n)| n.kind() != Kind::Dir && same(n));
                Ok(names.map(|(_, n)| n.entry(&stack.layers).path.to_vec()).collect())
            }
        }
    }

    /// Opens a lower file's bytes.
    pub fn open(&self, node: NodeId) -> io::Result<FileReader> {
        match self {
            Lower::Image(view) => {
                let entry = view.entry_of(node).ok_or_else(|| io::Error::from_raw_os_error(libc::EISDIR))?;
                view.layers[view.tree.node(node).layer as usize].open(entry)
            }
            Lower::Dirs(stack) => {
                let n = stack.tree.node(node);
                stack.layers[n.layer as usize].open_file(&n.entry(&stack.layers).path).map(FileReader::Host)
            }
        }
    }

    /// The layer and entry of a non-empty file of at most `max_size` bytes served from a tar
    /// layer (whose bytes `Layer::shared_copy` can put in a host file); None otherwise.
    pub fn tar_file(&self, node: NodeId, max_size: u64) -> Option<(Arc<crate::layer::Layer>, Entry)> {
        let Lower::Image(view) = self else { return None };
        let layer = &view.layers[view.tree.node(node).layer as usize];
        let entry = view.entry_of(node)?;
        let fits = entry.kind == Kind::File && (1..=max_size).contains(&entry.size);
        (layer.host_dir().is_none() && fits).then(|| (Arc::clone(layer), entry.clone()))
    }
}

impl From<ImageView> for Lower {
    fn from(view: ImageView) -> Lower {
        Lower::Image(view)
    }
}
