//! A tar layer's index arranged by directory, for the merge that reads one directory at a time
//! (`merge::lazy`): pure, built once from the [`LayerIndex`] and shared by every mount of the
//! layer. A tar names paths in any order and may leave parents out; here every directory the
//! layer touches is known, with how it is there ([`Presence`]), its entries, whiteouts and
//! opaque marker, and every hard-link set with its names. It holds entry numbers only: listing
//! a directory reads its entries from the index (see `codec::EncodedIndex`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::index::{Entry, Kind, LayerIndex, Listed, Listing, Presence, NO_INDEX};
use crate::path;

#[derive(Debug, Default)]
struct Dir {
    /// Entries directly in the directory (indexes into the layer's entries).
    entries: Vec<u32>,
    /// Subdirectories without an entry, by name: implied by entries below, or holding markers only.
    unnamed: BTreeMap<Box<[u8]>, Presence>,
    whiteouts: Vec<Box<[u8]>>,
    opaque: bool,
}

#[derive(Debug, Default)]
pub struct ByDirectory {
    dirs: HashMap<Box<[u8]>, Dir>,
    /// Hard-link set -> the indexes of its names, in index order.
    link_sets: HashMap<u32, Vec<u32>>,
    /// The index of the layer's entry for its root directory, if it has one.
    root: Option<u32>,
}

impl ByDirectory {
    pub fn new(index: &LayerIndex) -> ByDirectory {
        let entry = |i: usize| {
            let e = &index.entries[i];
            (e.path.clone(), e.kind, e.link_id)
        };
        ByDirectory::build(index.entries.len(), entry, &index.whiteouts, &index.opaque_dirs)
    }

    /// From the index's `count` entries (`entry(i)`: path, kind and hard-link set), whiteouts
    /// and opaque directories.
    pub fn build(
        count: usize,
        entry: impl Fn(usize) -> (Box<[u8]>, Kind, u32),
        whiteouts: &[Box<[u8]>],
        opaque_dirs: &[Box<[u8]>],
    ) -> ByDirectory {
        let mut by = ByDirectory::default();
        let mut named_dirs: HashSet<Box<[u8]>> = HashSet::new();
        // Entries of one directory mostly follow each other (indexes are sorted depth-first):
        // they are gathered here and filed with one map lookup per run, not one per entry.
        let mut run: (Box<[u8]>, Vec<u32>) = (Box::default(), Vec::new());
        for i in 0..count {
            let (path, kind, link_id) = entry(i);
            if link_id != 0 {
                by.link_sets.entry(link_id).or_default().push(i as u32);
            }
            match split(&path) {
                Some((parent, _)) if *parent == *run.0 => run.1.push(i as u32),
                Some((parent, _)) => {
                    let (dir, entries) = std::mem::replace(&mut run, (parent.into(), vec![i as u32]));
                    by.file_entries(&dir, entries);
                }
                None => by.root = Some(i as u32),
            }
            if kind == Kind::Dir {
                named_dirs.insert(path);
            }
        }
        by.file_entries(&run.0, run.1);
        for gone in whiteouts {
            if let Some((parent, name)) = split(gone) {
                by.dir_mut(parent).whiteouts.push(name.into());
            }
        }
        for dir in opaque_dirs {
            by.dir_mut(dir).opaque = true;
        }
        // Every directory the layer touches, and its ancestors, is there: implied by entries
        // below it, or holding markers only, unless the layer names it.
        let touched: Vec<(Box<[u8]>, Presence)> = by
            .dirs
            .iter()
            .map(|(dir, d)| (dir.clone(), if d.entries.is_empty() { Presence::Markers } else { Presence::Implied }))
            .collect();
        for (dir, how) in touched {
            by.reach(&dir, how, &named_dirs);
        }
        by
    }

    /// Adds `entries` (a run of one directory's entries, maybe empty) to directory `dir`.
    fn file_entries(&mut self, dir: &[u8], entries: Vec<u32>) {
        if !entries.is_empty() {
            self.dir_mut(dir).entries.extend(entries);
        }
    }

    fn dir_mut(&mut self, path: &[u8]) -> &mut Dir {
        if !self.dirs.contains_key(path) {
            self.dirs.insert(path.into(), Dir::default());
        }
        self.dirs.get_mut(path).expect("inserted above")
    }

    /// The index of the layer's entry for its root directory, if it has one.
    pub fn root(&self) -> Option<u32> {
        self.root
    }

    /// The indexes of the names of hard-link set `link_id`.
    pub fn link_set(&self, link_id: u32) -> &[u32] {
        self.link_sets.get(&link_id).map_or(&[], |set| set.as_slice())
    }

    /// Records that directory `dir` and its ancestors are there, at least as `how`, unless the
    /// layer has entries for them.
    fn reach(&mut self, mut dir: &[u8], how: Presence, named_dirs: &HashSet<Box<[u8]>>) {
        while let Some((parent, name)) = split(dir) {
            if named_dirs.contains(dir) {
                return;
            }
            let unnamed = &mut self.dir_mut(parent).unnamed;
            match unnamed.get(name) {
                Some(Presence::Implied) => return,
                Some(_) if how == Presence::Markers => return,
                _ => drop(unnamed.insert(name.into(), how)),
            }
            dir = parent;
        }
    }

    /// Directory `dir`, its entries read with `entries_at` from the index this was built from.
    pub fn list<E>(&self, dir: &[u8], entries_at: impl Fn(&[u32]) -> Result<Vec<Entry>, E>) -> Result<Listing, E> {
        let Some(d) = self.dirs.get(dir) else {
            return Ok(Listing::default());
        };
        let entries = entries_at(&d.entries)?;
        let mut objects: Vec<Listed> = (entries.into_iter().zip(&d.entries))
            .map(|(entry, &i)| Listed { entry, deferred: false, presence: Presence::Entry, index: i })
            .collect();
        objects.extend(d.unnamed.iter().map(|(name, &presence)| {
            let mut entry = Entry::implied_dir();
            entry.path = path::join(dir, name).into();
            Listed { entry, deferred: false, presence, index: NO_INDEX }
        }));
        objects.sort_by(|a, b| name_of(&a.entry).cmp(name_of(&b.entry)));
        Ok(Listing { opaque: d.opaque, whiteouts: d.whiteouts.clone(), objects })
    }

    /// The index of the first name of `entry`'s hard-link set (the entry's own for a single name).
    pub fn first_name(&self, entry: &Entry, index: u32) -> u32 {
        match self.link_set(entry.link_id).first() {
            Some(&first) if entry.link_id != 0 => first,
            _ => index,
        }
    }
}

/// (parent, name) of a non-root path.
fn split(p: &[u8]) -> Option<(&[u8], &[u8])> {
    (!p.is_empty()).then(|| path::split_parent(p).unwrap_or((b"", p)))
}

fn name_of(entry: &Entry) -> &[u8] {
    split(&entry.path).map_or(&[][..], |(_, name)| name)
}
