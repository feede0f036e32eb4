//! The overlay's inode table: what each inode number the kernel knows stands for (its names,
//! its lower node, whether it is in the upper), lookup counts, and the bookkeeping that keeps
//! inode numbers stable across copy-up and honest link counts. Pure data; no syscalls.

use std::collections::HashMap;
use std::io;

use fuser::FileAttr;

use crate::layer::index::Kind;
use crate::merge::NodeId;

/// A FUSE inode number (also the `st_ino` users see).
pub type Ino = u64;

pub const ROOT_INO: Ino = 1;

#[derive(Clone, Debug)]
pub struct Inode {
    /// The names of the inode: (directory, name); the first is used to reach it in the upper.
    names: Vec<(Ino, Vec<u8>)>,
    /// The lower object at this path: a file's content until copy-up, or the lower directory a
    /// directory merges with (None when the upper directory is opaque).
    pub lower: Option<NodeId>,
    /// The object exists in the upper directory.
    pub upper: bool,
    pub kind: Kind,
    lookups: u64,
    /// Open files of the inode (opens not yet released).
    opens: u32,
    /// What is left once the last name went while the kernel still used the inode.
    remains: Option<Remains>,
}

/// What is left of an inode whose last name went while the kernel still used it.
#[derive(Clone, Debug)]
enum Remains {
    /// An open file kept alive: its upper path (see `Upper::keep_orphan`), until last close.
    Orphan(Vec<u8>),
    /// The last attributes of an object deleted while not open (link count 0): the kernel may
    /// still ask for them (a process inside a removed directory, an O_PATH descriptor) or, with
    /// the writeback cache, send the deletion's ctime update.
    Gone(Box<FileAttr>),
}

impl Inode {
    pub fn new(parent: Ino, name: &[u8], lower: Option<NodeId>, upper: bool, kind: Kind) -> Inode {
        Inode { names: vec![(parent, name.to_vec())], lower, upper, kind, lookups: 0, opens: 0, remains: None }
    }

    pub fn parent(&self) -> Ino {
        self.names.first().map_or(ROOT_INO, |(p, _)| *p)
    }

    /// True when `(parent, name)` is the only name of the inode this table knows.
    pub fn only_name_is(&self, parent: Ino, name: &[u8]) -> bool {
        matches!(&self.names[..], [(p, n)] if *p == parent && n == name)
    }

    pub fn is_nameless(&self) -> bool {
        self.names.is_empty()
    }

    pub fn is_open(&self) -> bool {
        self.opens > 0
    }

    /// Nameless and kept only by its open files (see [`Table::make_orphan`]).
    pub fn is_orphan(&self) -> bool {
        matches!(self.remains, Some(Remains::Orphan(_)))
    }

    /// The last attributes of an object deleted while not open (see [`Table::gone`]).
    pub fn gone(&self) -> Option<&FileAttr> {
        match &self.remains {
            Some(Remains::Gone(attr)) => Some(attr),
            _ => None,
        }
    }

    fn take_orphan(&mut self) -> Option<Vec<u8>> {
        match self.remains.take() {
            Some(Remains::Orphan(path)) => Some(path),
            other => {
                self.remains = other;
                None
            }
        }
    }
}

pub struct Table {
    inodes: HashMap<Ino, Inode>,
    /// Host inode number of an upper copy → the inode number it had before copy-up.
    origins: HashMap<u64, Ino>,
    /// Names of a lower hard-link set (by its inode number) deleted without copy-up.
    removed: HashMap<Ino, u32>,
    /// The next number for an object that exists only in the upper.
    next_ino: Ino,
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

impl Table {
    /// `first_free` is above every lower inode number.
    pub fn new(root_lower: Option<NodeId>, first_free: Ino) -> Table {
        let mut root = Inode::new(ROOT_INO, b"", root_lower, true, Kind::Dir);
        root.names.clear();
        root.lookups = 1;
        Table {
            inodes: HashMap::from([(ROOT_INO, root)]),
            origins: HashMap::new(),
            removed: HashMap::new(),
            next_ino: first_free,
        }
    }

    pub fn get(&self, ino: Ino) -> io::Result<&Inode> {
        self.inodes.get(&ino).ok_or_else(stale)
    }

    pub fn get_mut(&mut self, ino: Ino) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(stale)
    }

    /// The merged path of an inode, from its first name up to the root; for an orphan, the upper
    /// path it lives on at.
    pub fn path(&self, mut ino: Ino) -> io::Result<Vec<u8>> {
        if let (true, Some(Remains::Orphan(path))) = (ino != ROOT_INO, &self.get(ino)?.remains) {
            return Ok(path.clone());
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        while ino != ROOT_INO {
            let inode = self.get(ino)?;
            let (parent, name) = inode.names.first().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            parts.push(name);
            ino = *parent;
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }

    /// Records a lookup the kernel will hold a reference for.
    pub fn remember(&mut self, ino: Ino, inode: Inode) {
        self.register(ino, inode);
        self.add_lookup(ino);
    }

    pub fn add_lookup(&mut self, ino: Ino) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups += 1;
        }
    }

    /// Makes an inode known (for internal use, without a kernel reference); a known inode
    /// found under another name gains that name.
    pub fn register(&mut self, ino: Ino, inode: Inode) {
        match self.inodes.get_mut(&ino) {
            Some(existing) => {
                // What a fresh resolve found is the truth about the object now: one taken for
                // gone lives on under this name (a hard link the table never saw, looked up
                // before the kernel's FORGET of the old name reached the daemon).
                existing.lower = inode.lower;
                existing.upper = inode.upper;
                existing.kind = inode.kind;
                if existing.gone().is_some() {
                    existing.remains = None;
                }
                let name = inode.names.into_iter().next().expect("a resolved inode has a name");
                if !existing.names.contains(&name) {
                    existing.names.push(name);
                }
            }
            None => {
                self.inodes.insert(ino, inode);
            }
        }
    }

    /// Drops kernel references; a file nobody references is forgotten. Directories stay, since
    /// the paths of inodes below them are computed through them, unless they have no name left.
    /// Returns the upper path of an orphan forgotten with it, for the caller to delete.
    pub fn forget(&mut self, ino: Ino, count: u64) -> Option<Vec<u8>> {
        let i = self.inodes.get_mut(&ino)?;
        i.lookups = i.lookups.saturating_sub(count);
        if i.lookups == 0 && (i.kind != Kind::Dir || i.names.is_empty()) && ino != ROOT_INO {
            return self.inodes.remove(&ino).and_then(|mut i| i.take_orphan());
        }
        None
    }

    pub fn opened(&mut self, ino: Ino) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.opens += 1;
        }
    }

    /// One open of `ino` was released. Returns the upper path of an orphan nothing keeps open
    /// any more, for the caller to delete (as a filesystem frees an unlinked file at last close).
    pub fn released(&mut self, ino: Ino) -> Option<Vec<u8>> {
        let i = self.inodes.get_mut(&ino)?;
        i.opens = i.opens.saturating_sub(1);
        if i.opens == 0 {
            return i.take_orphan();
        }
        None
    }

    /// `ino` lost its last name while open, and its upper object lives on at `orphan`.
    pub fn make_orphan(&mut self, ino: Ino, orphan: Vec<u8>) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.remains = Some(Remains::Orphan(orphan));
        }
    }

    /// `ino` lost its last name while not open; `last` are the attributes it had, which its
    /// remains answer with from now on (changed by `change`, for a setattr on it).
    pub fn gone(&mut self, ino: Ino, last: FileAttr) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            let nlink = if i.kind == Kind::Dir { 0 } else { last.nlink.saturating_sub(1) };
            i.remains = Some(Remains::Gone(Box::new(FileAttr { nlink, ..last })));
        }
    }

    /// Changes the attributes of an object that is gone (see [`Table::gone`]); None if it is not.
    pub fn change_gone(&mut self, ino: Ino, change: impl FnOnce(&mut FileAttr)) -> Option<FileAttr> {
        match &mut self.inodes.get_mut(&ino)?.remains {
            Some(Remains::Gone(attr)) => {
                change(attr);
                Some(**attr)
            }
            _ => None,
        }
    }

    /// A number never used in this mount, for a new upper object. Host inode numbers are not
    /// used: the host recycles them, and the kernel may still hold the old object's number.
    pub fn new_ino(&mut self) -> Ino {
        self.next_ino += 1;
        self.next_ino
    }

    pub fn origin(&self, host_ino: u64) -> Option<Ino> {
        self.origins.get(&host_ino).copied()
    }

    pub fn set_origin(&mut self, host_ino: u64, ino: Ino) {
        self.origins.insert(host_ino, ino);
    }

    pub fn forget_origin(&mut self, host_ino: u64) {
        self.origins.remove(&host_ino);
    }

    pub fn add_name(&mut self, ino: Ino, parent: Ino, name: &[u8]) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.names.push((parent, name.to_vec()));
        }
    }

    pub fn remove_name(&mut self, ino: Ino, parent: Ino, name: &[u8]) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.names.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    pub fn rename_name(&mut self, ino: Ino, from: (Ino, &[u8]), to: (Ino, &[u8])) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            for entry in i.names.iter_mut() {
                if entry.0 == from.0 && entry.1 == from.1 {
                    *entry = (to.0, to.1.to_vec());
                }
            }
        }
    }

    pub fn note_removed_name(&mut self, set: Ino) {
        *self.removed.entry(set).or_default() += 1;
    }

    pub fn removed_names(&self, set: Ino) -> u32 {
        self.removed.get(&set).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_names_and_renames() {
        let mut t = Table::new(Some(0), 100);
        t.remember(10, Inode::new(ROOT_INO, b"a", None, true, Kind::Dir));
        t.remember(11, Inode::new(10, b"f", None, true, Kind::File));
        assert_eq!(t.path(11).unwrap(), b"a/f");
        t.rename_name(11, (10, b"f"), (ROOT_INO, b"g"));
        assert_eq!(t.path(11).unwrap(), b"g");
        t.add_name(11, 10, b"h");
        t.remove_name(11, ROOT_INO, b"g");
        assert_eq!(t.path(11).unwrap(), b"a/h");
    }

    #[test]
    fn forgotten_files_leave_but_directories_stay() {
        let mut t = Table::new(None, 100);
        t.remember(10, Inode::new(ROOT_INO, b"d", None, true, Kind::Dir));
        t.remember(11, Inode::new(10, b"f", None, true, Kind::File));
        t.remember(11, Inode::new(10, b"f", None, true, Kind::File));
        t.forget(11, 1);
        assert!(t.get(11).is_ok());
        t.forget(11, 1);
        assert!(t.get(11).is_err());
        t.forget(10, 1);
        assert!(t.get(10).is_ok());
        // A removed directory has no name to reach children through.
        t.remove_name(10, ROOT_INO, b"d");
        t.add_lookup(10);
        t.forget(10, 1);
        assert!(t.get(10).is_err());
    }

    #[test]
    fn an_orphan_is_reached_through_its_upper_path_until_its_last_open_is_released() {
        let mut t = Table::new(None, 100);
        t.remember(11, Inode::new(ROOT_INO, b"f", None, true, Kind::File));
        t.opened(11);
        t.opened(11);
        assert!(t.get(11).unwrap().only_name_is(ROOT_INO, b"f") && t.get(11).unwrap().is_open());
        t.remove_name(11, ROOT_INO, b"f");
        assert!(t.path(11).is_err());
        t.make_orphan(11, b"/#orphan".to_vec());
        assert_eq!(t.path(11).unwrap(), b"/#orphan");
        assert_eq!(t.released(11), None);
        assert_eq!(t.released(11), Some(b"/#orphan".to_vec()));
        assert!(t.path(11).is_err() && !t.get(11).unwrap().is_orphan());
        // Forgotten while still open (the kernel let go first): the orphan goes with it.
        t.opened(11);
        t.make_orphan(11, b"/#orphan2".to_vec());
        assert_eq!(t.forget(11, 1), Some(b"/#orphan2".to_vec()));
    }

    #[test]
    fn an_object_taken_for_gone_and_found_under_a_name_lives_again() {
        let mut t = Table::new(None, 100);
        t.remember(11, Inode::new(ROOT_INO, b"x", None, true, Kind::File));
        t.remove_name(11, ROOT_INO, b"x");
        t.gone(11, FileAttr { nlink: 1, ..crate::fuse::attr::negative() });
        assert_eq!(t.get(11).unwrap().gone().map(|a| a.nlink), Some(0));
        t.remember(11, Inode::new(ROOT_INO, b"h1", None, true, Kind::File));
        assert!(t.get(11).unwrap().gone().is_none());
        assert_eq!(t.path(11).unwrap(), b"h1");
    }
}
