//! The in-memory index of one layer: every entry's metadata and where its bytes live, plus the
//! layer's whiteouts and opaque directories. Pure data and the rules for building it; parsing
//! (tar, directories) lives in `tar_index`/`dir_index`, persistence in `codec`.

use std::collections::{HashMap, HashSet};

use crate::path;

/// File type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    File = 0,
    Dir = 1,
    Symlink = 2,
    CharDevice = 3,
    BlockDevice = 4,
    Fifo = 5,
    Socket = 6,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            3 => Kind::CharDevice,
            4 => Kind::BlockDevice,
            5 => Kind::Fifo,
            6 => Kind::Socket,
            _ => return None,
        })
    }

    /// The kind a file type in `st_mode` stands for (a plain file for anything unknown).
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// The kind of a host file, as lstat shows it.
    pub fn of_host(ft: std::fs::FileType) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            Kind::File
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One path of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Normalised path (see [`crate::path`]); empty for the layer's root directory.
    pub path: Box<[u8]>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (mask 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Data length of a file; target length of a symlink; 0 otherwise.
    pub size: u64,
    /// Where a file's bytes start in the layer's blob (tar layers only).
    pub data_offset: u64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Target of a symlink.
    pub link_target: Box<[u8]>,
    /// Non-zero when this entry is one name of a hard-link set; equal within the set.
    pub link_id: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Xattrs,
    /// Status change time, where the layer records one (directory layers; tar has none, and
    /// the entry then shows its mtime). Not persisted: only directory layers set it.
    pub ctime: Option<Timestamp>,
    /// The file's inode number on the host (directory layers; 0 in tar layers). Not persisted.
    pub host_ino: u64,
    /// The host file's link count (directory layers, once read; 0 otherwise). Not persisted.
    pub host_nlink: u32,
    /// The host file's allocated 512-byte blocks (directory layers: a sparse file shows how
    /// little it takes, which `cp` looks at before it looks for holes); None in tar layers, whose
    /// files show their size's worth, as extracted. Not persisted.
    pub host_blocks: Option<u64>,
}

/// One extended attribute: (name, value).
pub type XattrPair = (Box<[u8]>, Box<[u8]>);
/// Extended attributes, sorted by name.
pub type Xattrs = Vec<XattrPair>;

impl Entry {
    /// An entry with the given path and kind and every other field zero.
    pub fn new(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            size: 0,
            data_offset: 0,
            rdev_major: 0,
            rdev_minor: 0,
            link_target: Box::default(),
            link_id: 0,
            xattrs: Vec::new(),
            ctime: None,
            host_ino: 0,
            host_nlink: 0,
            host_blocks: None,
        }
    }

    /// What a directory no layer names, only implied by deeper entries, shows: root's, 0755,
    /// as extracting tools make it.
    pub fn implied_dir() -> Entry {
        let mut implied = Entry::new(b"", Kind::Dir);
        implied.mode = 0o755;
        implied
    }
}

/// One directory of one layer, as the merge that reads a directory at a time needs it.
#[derive(Debug, Default)]
pub struct Listing {
    /// The directory hides what the layers below have at its path.
    pub opaque: bool,
    /// Names this directory deletes from the layers below.
    pub whiteouts: Vec<Box<[u8]>>,
    /// What the directory holds, sorted by name.
    pub objects: Vec<Listed>,
}

/// One name of a [`Listing`].
#[derive(Debug)]
pub struct Listed {
    /// Its entry: a deferred placeholder (see `dir_index`), or [`Entry::implied_dir`] for a
    /// directory the layer has no entry for.
    pub entry: Entry,
    pub deferred: bool,
    pub presence: Presence,
    /// The entry's index in its layer's index (tar layers), else [`NO_INDEX`].
    pub index: u32,
}

/// No index: an object of a directory layer, or a directory a tar layer has no entry for.
pub const NO_INDEX: u32 = u32::MAX;

/// How a name is in a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// The layer has an entry for it.
    Entry,
    /// A directory implied by entries below it (a tar layer may name `a/b` without `a`): it
    /// exists, but a directory the layers below have there keeps its own metadata.
    Implied,
    /// A directory the layer holds only whiteouts or an opaque marker in: they apply to the
    /// layers below, but the layer does not make the directory exist.
    Markers,
}

impl Listed {
    /// An object the layer has an entry for (every object of a directory layer).
    pub fn object(entry: Entry, deferred: bool) -> Listed {
        Listed { entry, deferred, presence: Presence::Entry, index: NO_INDEX }
    }
}

/// The whole index of one layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// One entry per path, in the order the layer first named them.
    pub entries: Vec<Entry>,
    /// Paths this layer deletes from the layers below it.
    pub whiteouts: Vec<Box<[u8]>>,
    /// Directories whose lower-layer children this layer hides.
    pub opaque_dirs: Vec<Box<[u8]>>,
}

/// Why the builder refused an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildProblem {
    HardLinkTargetMissing,
    HardLinkToDirectory,
    /// An entry lies below this path, which the layer has as a non-directory.
    ParentNotDirectory(Box<[u8]>),
}

/// Builds a [`LayerIndex`] from entries in archive order, applying the in-layer rules:
/// a later entry for a path replaces the earlier one (a non-directory over a directory drops the
/// directory's earlier children too), and hard links resolve to earlier entries of the layer.
#[derive(Default)]
pub struct IndexBuilder {
    slots: Vec<Option<Entry>>,
    by_path: HashMap<Box<[u8]>, usize>,
    whiteouts: Vec<Box<[u8]>>,
    opaque_dirs: Vec<Box<[u8]>>,
    /// Every path that has had an entry below it in this layer.
    parents: HashSet<Box<[u8]>>,
    next_link_id: u32,
}

impl IndexBuilder {
    pub fn add(&mut self, entry: Entry) -> Result<(), BuildProblem> {
        if let Some(parent) = self.file_above(&entry.path) {
            return Err(BuildProblem::ParentNotDirectory(parent));
        }
        let existing = self.by_path.get(&entry.path).copied();
        let old_is_dir = existing.is_some_and(|slot| self.slots[slot].as_ref().is_some_and(|e| e.kind == Kind::Dir));
        if entry.kind != Kind::Dir && self.parents.contains(&entry.path) {
            // Extracted in order, this non-directory removes what the layer put below the path.
            self.drop_children_of(&entry.path);
        }
        if existing.is_some() && !old_is_dir && entry.kind == Kind::Dir {
            // Extracted in order, the earlier non-directory already removed whatever the lower
            // layers had here: this directory must not merge with them.
            self.whiteouts.push(entry.path.clone());
        }
        for ancestor in path::ancestors(&entry.path).collect::<Vec<_>>().into_iter().rev() {
            if !self.parents.insert(ancestor.into()) {
                break;
            }
        }
        match existing {
            Some(slot) => self.slots[slot] = Some(entry),
            None => {
                self.by_path.insert(entry.path.clone(), self.slots.len());
                self.slots.push(Some(entry));
            }
        }
        Ok(())
    }

    /// The nearest ancestor of `path` that this layer has as a non-directory, if any. Stops at
    /// the first ancestor the layer has as a directory, so a well-formed tar costs one lookup.
    fn file_above(&self, path: &[u8]) -> Option<Box<[u8]>> {
        let mut ancestors: Vec<&[u8]> = path::ancestors(path).collect();
        while let Some(ancestor) = ancestors.pop() {
            if let Some(e) = self.by_path.get(ancestor).and_then(|&slot| self.slots[slot].as_ref()) {
                return (e.kind != Kind::Dir).then(|| ancestor.into());
            }
        }
        None
    }

    /// Adds `link` as another name of the earlier entry at `target`.
    pub fn add_hard_link(&mut self, link: &[u8], target: &[u8]) -> Result<(), BuildProblem> {
        let slot = *self.by_path.get(target).ok_or(BuildProblem::HardLinkTargetMissing)?;
        let target_entry = self.slots[slot].as_mut().ok_or(BuildProblem::HardLinkTargetMissing)?;
        if target_entry.kind == Kind::Dir {
            return Err(BuildProblem::HardLinkToDirectory);
        }
        if link == target {
            return Ok(());
        }
        if target_entry.link_id == 0 {
            self.next_link_id += 1;
            target_entry.link_id = self.next_link_id;
        }
        let mut entry = target_entry.clone();
        entry.path = link.into();
        self.add(entry)
    }

    pub fn add_whiteout(&mut self, path: &[u8]) {
        self.whiteouts.push(path.into());
    }

    pub fn add_opaque_dir(&mut self, dir: &[u8]) {
        self.opaque_dirs.push(dir.into());
    }

    fn drop_children_of(&mut self, dir: &[u8]) {
        for slot in self.slots.iter_mut() {
            if slot.as_ref().is_some_and(|e| e.path.len() > dir.len() && path::is_within(&e.path, dir)) {
                let removed = slot.take().expect("checked above");
                self.by_path.remove(&removed.path);
            }
        }
    }

    pub fn finish(self) -> LayerIndex {
        let mut whiteouts = self.whiteouts;
        whiteouts.sort();
        whiteouts.dedup();
        let mut opaque_dirs = self.opaque_dirs;
        opaque_dirs.sort();
        opaque_dirs.dedup();
        LayerIndex { entries: self.slots.into_iter().flatten().collect(), whiteouts, opaque_dirs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry::new(path.as_bytes(), Kind::File)
    }

    #[test]
    fn later_entry_replaces_earlier_and_file_over_dir_drops_children() {
        let mut b = IndexBuilder::default();
        b.add(Entry::new(b"d", Kind::Dir)).unwrap();
        b.add(file("d/x")).unwrap();
        b.add(file("keep")).unwrap();
        b.add(file("d")).unwrap();
        let idx = b.finish();
        let paths: Vec<&[u8]> = idx.entries.iter().map(|e| &*e.path).collect();
        assert_eq!(paths, vec![&b"d"[..], &b"keep"[..]]);
        assert_eq!(idx.entries[0].kind, Kind::File);
    }

    #[test]
    fn hard_links_share_a_link_id_and_need_an_earlier_target() {
        let mut b = IndexBuilder::default();
        let mut target = file("a");
        target.size = 5;
        b.add(target).unwrap();
        b.add_hard_link(b"b", b"a").unwrap();
        assert_eq!(b.add_hard_link(b"c", b"missing"), Err(BuildProblem::HardLinkTargetMissing));
        b.add(Entry::new(b"dir", Kind::Dir)).unwrap();
        assert_eq!(b.add_hard_link(b"e", b"dir"), Err(BuildProblem::HardLinkToDirectory));
        let idx = b.finish();
        assert_eq!(idx.entries[0].link_id, idx.entries[1].link_id);
        assert_ne!(idx.entries[0].link_id, 0);
        assert_eq!(idx.entries[1].size, 5);
    }
}
