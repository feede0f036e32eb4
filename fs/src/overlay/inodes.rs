//! The overlay's inode table: what each inode number the kernel knows stands for (its names,
//! its lower node, whether it is in the upper), lookup counts, and the bookkeeping that keeps
//! inode numbers stable across copy-up and honest link counts. Pure data; no syscalls.

use std::collections::HashMap;
use std::io;

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
}

impl Inode {
    pub fn new(parent: Ino, name: &[u8], lower: Option<NodeId>, upper: bool, kind: Kind) -> Inode {
        Inode { names: vec![(parent, name.to_vec())], lower, upper, kind, lookups: 0 }
    }

    pub fn parent(&self) -> Ino {
        self.names.first().map_or(ROOT_INO, |(p, _)| *p)
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

    /// The merged path of an inode, from its first name up to the root.
    pub fn path(&self, mut ino: Ino) -> io::Result<Vec<u8>> {
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
                // What a fresh resolve found is the truth about the object now.
                existing.lower = inode.lower;
                existing.upper = inode.upper;
                existing.kind = inode.kind;
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
    /// the paths of inodes below them are computed through them.
    pub fn forget(&mut self, ino: Ino, count: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(count);
            if i.lookups == 0 && i.kind != Kind::Dir && ino != ROOT_INO {
                self.inodes.remove(&ino);
            }
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
    }
}
