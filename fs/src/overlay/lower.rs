//! What the overlay sees below its upper directory: its layers, merged a directory at a time
//! when the directory is first looked into ([`LazyTree`]), as kernel overlayfs and
//! fuse-overlayfs read their lowers: a mount starts without listing directory layers or merging
//! whole indexes, and a container touches only the directories it uses. Host directories are
//! read through [`HostDir`], tar layers through their cached index arranged by directory
//! ([`crate::layer::by_dir`]). Reads only.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::FileAttr;

use super::inodes::Ino;
use crate::fuse::attr;
use crate::layer::cache::Cache;
use crate::layer::dir_index::HostDir;
use crate::layer::index::{Entry, Kind, Listing, NO_INDEX};
use crate::layer::{FileReader, Layer, LayerSource, Progress};
use crate::merge::lazy::{self, LazyNode, LazyTree};
use crate::merge::NodeId;

/// Host inode numbers from this one up do not fit the 48 bits [`Lower::ino`] gives them (nor
/// layers from 2^15 up the 15 bits above); such objects are numbered by their node instead.
const HOST_INO_LIMIT: u64 = 1 << 48;

/// Node numbers stay below this (they are u32): objects numbered by node get node + 1, and
/// upper-only objects are numbered from here up.
const NODE_LIMIT: Ino = 1 << 32;

/// One layer below the upper.
enum LowerLayer {
    Host(HostDir),
    Tar(Arc<Layer>),
}

pub struct Lower {
    /// Bottom first.
    layers: Vec<LowerLayer>,
    tree: LazyTree,
}

impl lazy::Layers for Vec<LowerLayer> {
    fn list(&self, layer: usize, path: &[u8], dir: &Entry) -> crate::Result<Listing> {
        match &self[layer] {
            LowerLayer::Host(host) => host.list(path, dir),
            LowerLayer::Tar(tar) => tar.by_directory()?.list(path, |indices| tar.entries_at(indices)),
        }
    }

    fn complete(&self, layer: usize, placeholder: &Entry) -> Entry {
        match &self[layer] {
            LowerLayer::Host(host) => host.complete(placeholder).unwrap_or_else(|_| placeholder.clone()),
            LowerLayer::Tar(_) => placeholder.clone(),
        }
    }

    fn name(&self, layer: usize) -> String {
        match &self[layer] {
            LowerLayer::Host(host) => host.path.display().to_string(),
            LowerLayer::Tar(tar) => tar.name.clone(),
        }
    }
}

/// A tar layer's index arranged by directory, which [`Lower::of`] built when the lower was loaded.
fn tar_arranged(tar: &Layer) -> &crate::layer::by_dir::ByDirectory {
    tar.by_directory().expect("arranged when the lower was loaded")
}

/// A lazy merge's failure to read a directory layer, as the errno the caller gets; the log names
/// the directory (errno alone would not).
fn io_error(e: crate::Error) -> io::Error {
    crate::fuse::errno::log_failure(&e);
    match e {
        crate::Error::Io { cause, .. } => cause,
        other => io::Error::other(other.to_string()),
    }
}

impl Lower {
    /// Opens the layers, bottom first: a host directory as it is (only its root is read), a tar
    /// from its cached index (indexing it first if needed, see [`Layer::load`]).
    pub fn load(sources: &[LayerSource], cache: &Cache, progress: &dyn Progress) -> crate::Result<Lower> {
        let layers = sources
            .iter()
            .map(|source| match source {
                LayerSource::Directory(path) => HostDir::open(path).map(LowerLayer::Host),
                LayerSource::Blob { .. } => Layer::load(source, cache, progress).map(|l| LowerLayer::Tar(Arc::new(l))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Lower::of(layers)
    }

    fn of(layers: Vec<LowerLayer>) -> crate::Result<Lower> {
        let mut roots = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate().rev() {
            roots.push(match layer {
                LowerLayer::Host(host) => (i as u16, host.root_entry()?, true),
                LowerLayer::Tar(tar) => match tar.by_directory()?.root() {
                    Some(root) => (i as u16, tar.entry_at(root)?, true),
                    None => (i as u16, Entry::implied_dir(), false),
                },
            });
        }
        Ok(Lower { layers, tree: LazyTree::new(roots) })
    }

    /// The host directories among the layers (to refuse an upper that overlaps one).
    pub fn host_dirs(&self) -> Vec<&Path> {
        self.layers
            .iter()
            .filter_map(|l| match l {
                LowerLayer::Host(host) => Some(host.path.as_path()),
                LowerLayer::Tar(_) => None,
            })
            .collect()
    }

    /// Where the numbers of objects that exist only in the upper start: above every number
    /// [`Lower::ino`] gives by node, far below the tar and host ranges (bits 62 and 63).
    pub fn first_free_ino(&self) -> Ino {
        NODE_LIMIT + 1
    }

    /// A lower object's inode number, shared by every name of a hard-link set. A directory
    /// layer's object shows its host inode number, as kernel overlayfs shows it (and as
    /// `git status` compares with the numbers its index recorded): in the low 48 bits, with bit
    /// 63 set and the layer above them, so numbers of layers on different filesystems cannot
    /// meet. A tar layer's object is numbered by its layer and the first name of its hard-link
    /// set (bit 62 set), the same on every mount. Anything else (a directory a layer only
    /// implies, a huge host number) gets its node + 1, below every upper-only object's number
    /// (counted from [`Lower::first_free_ino`]).
    pub fn ino(&self, node: NodeId) -> Ino {
        let n = self.tree.node(node);
        let layer = n.layer as u64;
        match &self.layers[n.layer as usize] {
            LowerLayer::Host(_) if n.host_ino() != 0 && n.host_ino() < HOST_INO_LIMIT && layer < 1 << 15 => {
                1 << 63 | layer << 48 | n.host_ino()
            }
            LowerLayer::Tar(tar) if n.index != NO_INDEX && layer < 1 << 30 => {
                1 << 62 | layer << 32 | tar_arranged(tar).first_name(n.entry(&self.layers), n.index) as u64
            }
            _ => node as u64 + 1,
        }
    }

    /// What kind of object a node is, without reading deferred metadata.
    pub fn kind(&self, node: NodeId) -> Kind {
        self.tree.node(node).kind()
    }

    /// Calls `f` with a node's full entry.
    pub fn with_entry<R>(&self, node: NodeId, f: impl FnOnce(&Entry) -> R) -> R {
        f(self.tree.node(node).entry(&self.layers))
    }

    pub fn entry(&self, node: NodeId) -> Entry {
        self.with_entry(node, Entry::clone)
    }

    /// A node's attributes (its `ino` field still to be set by the caller). A file's link count
    /// is its host file's (as kernel overlayfs shows it), or, in a tar layer, how many names of
    /// its set the merged tree shows (as the image extracted shows it); a directory several
    /// layers merge shows 1, as kernel overlayfs shows it, and so does any directory of a tar
    /// layer (which records no link count).
    pub fn attr(&self, node: NodeId) -> FileAttr {
        let n = self.tree.node(node);
        let entry = n.entry(&self.layers);
        let mut a = attr::of_entry(entry);
        a.nlink = match &self.layers[n.layer as usize] {
            _ if n.is_merged_dir() => 1,
            LowerLayer::Tar(_) if entry.link_id != 0 => *n.names_shown.get_or_init(|| self.names_shown(&n)),
            _ => entry.host_nlink.max(1),
        };
        a
    }

    /// How many names of tar node `n`'s hard-link set resolve to the set in the merged tree
    /// (later layers may delete or replace some).
    fn names_shown(&self, n: &LazyNode) -> u32 {
        let link_id = n.entry(&self.layers).link_id;
        let shows_set = |path: &[u8]| {
            let found = self.tree.lookup(&self.layers, path).ok().flatten().map(|id| self.tree.node(id));
            found.is_some_and(|f| f.layer == n.layer && f.index != NO_INDEX && f.entry(&self.layers).link_id == link_id)
        };
        let paths = self.tar_link_set(n.layer, link_id);
        paths.iter().filter(|p| shows_set(p)).count().max(1) as u32
    }

    /// How many names the node's object has in the lower layers.
    pub fn nlink(&self, node: NodeId) -> u32 {
        self.attr(node).nlink
    }

    pub fn lookup_child(&self, dir: NodeId, name: &[u8]) -> io::Result<Option<NodeId>> {
        self.tree.lookup_child(&self.layers, dir, name).map_err(io_error)
    }

    /// A directory's children, sorted by name: (node, name).
    pub fn children(&self, dir: NodeId) -> io::Result<Vec<(NodeId, Vec<u8>)>> {
        let children = self.tree.children(&self.layers, dir).map_err(io_error)?;
        Ok(children.into_iter().map(|c| (c, self.tree.node(c).name().to_vec())).collect())
    }

    /// The paths of every name of `node`'s lower hard-link set in its layer, its own included
    /// (some may be hidden by higher layers: the caller checks).
    pub fn link_set_paths(&self, node: NodeId) -> io::Result<Vec<Vec<u8>>> {
        let of = self.tree.node(node);
        match &self.layers[of.layer as usize] {
            LowerLayer::Tar(_) => match of.entry(&self.layers).link_id {
                0 => Ok(vec![of.path().to_vec()]),
                link_id => Ok(self.tar_link_set(of.layer, link_id)),
            },
            LowerLayer::Host(_) => {
                // The names of one host inode can be anywhere in its layer: merge the whole tree.
                self.tree.merge_all(&self.layers).map_err(io_error)?;
                let same = |n: &LazyNode| n.kind() != Kind::Dir && n.layer == of.layer && n.host_ino() == of.host_ino();
                let names = self.tree.nodes().into_iter().filter(|(_, n)| same(n));
                Ok(names.map(|(_, n)| n.path().to_vec()).collect())
            }
        }
    }

    /// The paths of hard-link set `link_id` of tar layer `layer`.
    fn tar_link_set(&self, layer: u16, link_id: u32) -> Vec<Vec<u8>> {
        let LowerLayer::Tar(tar) = &self.layers[layer as usize] else { return Vec::new() };
        // Names the index can no longer give (its cache file changed under the mount) are left
        // out: the error was logged when the directory was listed, and so the count errs low.
        let set = tar_arranged(tar).link_set(link_id);
        tar.entries_at(set).map(|entries| entries.into_iter().map(|e| e.path.into_vec()).collect()).unwrap_or_default()
    }

    /// Opens a lower file's bytes.
    pub fn open(&self, node: NodeId) -> io::Result<FileReader> {
        let n = self.tree.node(node);
        match &self.layers[n.layer as usize] {
            LowerLayer::Host(host) => host.open_file(n.path()).map(FileReader::Host),
            LowerLayer::Tar(tar) => tar.open(n.entry(&self.layers)),
        }
    }

    /// The layer and entry of a non-empty file of at most `max_size` bytes served from a tar
    /// layer (whose bytes `Layer::shared_copy` can put in a host file); None otherwise.
    pub fn tar_file(&self, node: NodeId, max_size: u64) -> Option<(Arc<Layer>, Entry)> {
        let n = self.tree.node(node);
        let LowerLayer::Tar(tar) = &self.layers[n.layer as usize] else { return None };
        let entry = n.entry(&self.layers);
        let fits = entry.kind == Kind::File && (1..=max_size).contains(&entry.size);
        fits.then(|| (Arc::clone(tar), entry.clone()))
    }
}
