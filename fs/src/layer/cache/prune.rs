//! What the cache holds, and shrinking it without breaking anything that runs. Removing a cache
//! file is always safe for running mounts: what they use they hold open (an unlinked file lives
//! until closed), a missing index or decompressed blob is rebuilt at the next mount, and a
//! missing shared copy at the next open. Files some process holds open are kept all the same, so
//! the space they pin is not paid twice by the rebuild.
//!
//! [`plan`] is pure (which items go); [`inventory`], [`open_files`] and [`remove`] touch the disk.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{key_file_name, Cache, INDEX_FORMAT_VERSION};
use crate::error::{IoContext, Result};
use crate::layer::blob::Compression;
use crate::layer::codec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    /// A layer index of the current format.
    Index,
    /// An index of an older format, which no strata of this version reads.
    StaleIndex,
    /// The decompressed tar of a gzip or zstd layer.
    Blob,
    /// A host copy of a layer's file, made for containers (see `Layer::shared_copy`).
    SharedCopy,
    /// A temporary file of a writer that died before renaming it into place.
    Leftover,
}

impl ItemKind {
    pub const ALL: [ItemKind; 5] =
        [ItemKind::Index, ItemKind::StaleIndex, ItemKind::Blob, ItemKind::SharedCopy, ItemKind::Leftover];

    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Index => "indexes",
            ItemKind::StaleIndex => "indexes of older formats",
            ItemKind::Blob => "decompressed layers",
            ItemKind::SharedCopy => "shared copies",
            ItemKind::Leftover => "leftovers of interrupted writes",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub kind: ItemKind,
    pub bytes: u64,
    /// For an index of a compressed layer: the file name of the decompressed blob it is served from.
    pub needs_blob: Option<String>,
}

/// How far a prune goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// What is cheap to rebuild: shared copies (remade per file on the next open), leftovers,
    /// indexes of older formats, and decompressed layers no index refers to.
    Rebuildable,
    /// Everything: the next mount of every image indexes (and decompresses) its layers again.
    All,
}

/// Every file in the cache, classified; paths are canonical, as /proc shows open files.
pub fn inventory(cache: &Cache) -> Result<Vec<Item>> {
    let root = match fs::canonicalize(cache.root()) {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(cache.root()),
    };
    let mut items = Vec::new();
    for dir in ["index", "blobs", "files"] {
        for (path, leftover) in files_below(&root.join(dir))? {
            let kind = match dir {
                _ if leftover => ItemKind::Leftover,
                "index" if in_current_format(&path) => ItemKind::Index,
                "index" => ItemKind::StaleIndex,
                "blobs" => ItemKind::Blob,
                _ => ItemKind::SharedCopy,
            };
            items.push(item(path, kind));
        }
    }
    Ok(items)
}

/// Indexes live in `index/v<format>/`.
fn in_current_format(index: &Path) -> bool {
    let current = format!("v{INDEX_FORMAT_VERSION}");
    index.parent().and_then(Path::file_name).is_some_and(|v| *v == *current)
}

/// The files below `dir` (none if it does not exist), each with whether it is a writer's
/// temporary file.
fn files_below(dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).at(dir),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let path = entry.path();
        if entry.file_type().at(&path)?.is_dir() {
            out.extend(files_below(&path)?);
        } else {
            let leftover = entry.file_name().to_string_lossy().starts_with(".tmp-");
            out.push((path, leftover));
        }
    }
    Ok(out)
}

fn item(path: PathBuf, kind: ItemKind) -> Item {
    let bytes = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
    let needs_blob = (kind == ItemKind::Index).then(|| blob_of_index(&path)).flatten();
    Item { path, kind, bytes, needs_blob }
}

/// The decompressed blob an index is served from, if its layer is compressed.
fn blob_of_index(path: &Path) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    io::Read::read_to_end(&mut io::Read::take(fs::File::open(path).ok()?, 1024), &mut head).ok()?;
    let info = codec::decode_info(&head).ok()?;
    (info.compression != Compression::None).then(|| key_file_name(&info.diff_id))
}

/// The items a prune of `scope` removes: never one that some process holds open.
pub fn plan<'a>(items: &'a [Item], open: &HashSet<PathBuf>, scope: Scope) -> Vec<&'a Item> {
    // A decompressed layer stays as long as an index that is served from it stays.
    let kept_indexes =
        items.iter().filter(|i| i.kind == ItemKind::Index && (scope != Scope::All || open.contains(&i.path)));
    let needed_blobs: HashSet<&str> = kept_indexes.filter_map(|i| i.needs_blob.as_deref()).collect();
    items
        .iter()
        .filter(|i| !open.contains(&i.path))
        .filter(|i| match i.kind {
            ItemKind::Index => scope == Scope::All,
            ItemKind::Blob => {
                !i.path.file_name().is_some_and(|name| needed_blobs.contains(name.to_string_lossy().as_ref()))
            }
            ItemKind::StaleIndex | ItemKind::SharedCopy | ItemKind::Leftover => true,
        })
        .collect()
}

/// Every file some process of this user holds open (all processes, as root), from /proc.
pub fn open_files() -> HashSet<PathBuf> {
    let mut open = HashSet::new();
    let Ok(processes) = fs::read_dir("/proc") else { return open };
    for process in processes.flatten() {
        if !process.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                open.insert(target);
            }
        }
    }
    open
}

/// What a removal did.
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<(ItemKind, u64)>,
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Removes `items`, then the per-layer directories of shared copies left empty.
pub fn remove(cache: &Cache, items: &[&Item]) -> Removal {
    let mut outcome = Removal::default();
    for item in items {
        match fs::remove_file(&item.path) {
            Ok(()) => outcome.removed.push((item.kind, item.bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => outcome.failed.push((item.path.clone(), e)),
        }
    }
    if let Ok(layers) = fs::read_dir(cache.root().join("files")) {
        for layer in layers.flatten() {
            // Fails while the directory holds anything, which is what we want.
            let _ = fs::remove_dir(layer.path());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str, kind: ItemKind, needs_blob: Option<&str>) -> Item {
        Item { path: PathBuf::from(path), kind, bytes: 1, needs_blob: needs_blob.map(str::to_string) }
    }

    fn paths(chosen: Vec<&Item>) -> Vec<&str> {
        chosen.iter().map(|i| i.path.to_str().unwrap()).collect()
    }

    fn sample() -> Vec<Item> {
        vec![
            item("/c/index/v1/plain", ItemKind::Index, None),
            item("/c/index/v1/gz", ItemKind::Index, Some("sha256-aaa")),
            item("/c/index/v0/old", ItemKind::StaleIndex, None),
            item("/c/blobs/sha256-aaa", ItemKind::Blob, None),
            item("/c/blobs/sha256-orphan", ItemKind::Blob, None),
            item("/c/files/sha256-x/512", ItemKind::SharedCopy, None),
            item("/c/files/sha256-x/4096", ItemKind::SharedCopy, None),
            item("/c/blobs/.tmp-123", ItemKind::Leftover, None),
        ]
    }

    #[test]
    fn a_default_prune_keeps_indexes_and_the_blobs_they_are_served_from() {
        let items = sample();
        let chosen = paths(plan(&items, &HashSet::new(), Scope::Rebuildable));
        assert_eq!(
            chosen,
            [
                "/c/index/v0/old",
                "/c/blobs/sha256-orphan",
                "/c/files/sha256-x/512",
                "/c/files/sha256-x/4096",
                "/c/blobs/.tmp-123"
            ]
        );
    }

    #[test]
    fn open_files_are_never_removed() {
        let items = sample();
        let open: HashSet<PathBuf> =
            ["/c/files/sha256-x/512", "/c/blobs/.tmp-123", "/c/index/v1/gz"].iter().map(PathBuf::from).collect();
        let chosen = paths(plan(&items, &open, Scope::All));
        assert_eq!(
            chosen,
            ["/c/index/v1/plain", "/c/index/v0/old", "/c/blobs/sha256-orphan", "/c/files/sha256-x/4096"],
            "an index in use keeps its blob even with --all"
        );
    }

    #[test]
    fn inventory_classifies_what_the_cache_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        for (rel, body) in [
            ("index/v2/sha256-a", b"not an index".as_slice()),
            ("index/v1/sha256-a", b"old"),
            ("blobs/sha256-b", b"tar"),
            ("blobs/.tmp-xyz", b"partial"),
            ("files/sha256-a/1024", b"copy"),
        ] {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        let mut found: Vec<(String, ItemKind, u64)> = inventory(&cache)
            .unwrap()
            .into_iter()
            .map(|i| {
                (
                    i.path.strip_prefix(dir.path().canonicalize().unwrap()).unwrap().display().to_string(),
                    i.kind,
                    i.bytes,
                )
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("blobs/.tmp-xyz".to_string(), ItemKind::Leftover, 7),
                ("blobs/sha256-b".to_string(), ItemKind::Blob, 3),
                ("files/sha256-a/1024".to_string(), ItemKind::SharedCopy, 4),
                ("index/v1/sha256-a".to_string(), ItemKind::StaleIndex, 3),
                ("index/v2/sha256-a".to_string(), ItemKind::Index, 12),
            ]
        );
        assert!(inventory(&Cache::new(dir.path().join("missing"))).unwrap().is_empty());
    }
}
