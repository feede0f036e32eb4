//! A tar layer's index arranged by directory, for the merge that reads one directory at a time
//! (`merge::lazy`): pure, built once from the [`LayerIndex`] and shared by every mount of the
//! layer. A tar names paths in any order and may leave parents out; here every directory the
//! layer touches is known, with how it is there ([`Presence`]), its entries, whiteouts and
//! opaque marker, and every hard-link set with its names. It holds entry numbers only: listing
//! a directory reads its entries from the index (see `codec::EncodedIndex`).

use std::collections::{BTreeMap, HashMap};

use super::index::{Entry, LayerIndex, Listed, Listing, Presence, NO_INDEX};
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
        let entry = |i: usize| (index.entries[i].path.clone(), index.entries[i].link_id);
        ByDirectory::build(index.entries.len(), entry, &index.whiteouts, &index.opaque_dirs)
    }

    /// From the index's `count` entries (`entry(i)`: path and hard-link set), whiteouts and
    /// opaque directories.
    pub fn build(
        count: usize,
        entry: impl Fn(usize) -> (Box<[u8]>, u32),
        whiteouts: &[Box<[u8]>],
        opaque_dirs: &[Box<[u8]>],
    ) -> ByDirectory {
        let mut by = ByDirectory::default();
        let entries: Vec<(Box<[u8]>, u32)> = (0..count).map(entry).collect();
        let named: HashMap<&[u8], usize> = entries.iter().enumerate().map(|(i, (p, _))| (&**p, i)).collect();
        for (i, (path, link_id)) in entries.iter().enumerate() {
            if *link_id != 0 {
                by.link_sets.entry(*link_id).or_default().push(i as u32);
            }
            match split(path) {
                Some((parent, _)) => {
                    by.dirs.entry(parent.into()).or_default().entries.push(i as u32);
                    by.reach(parent, Presence::Implied, &named);
                }
                None => by.root = Some(i as u32),
            }
        }
        for gone in whiteouts {
            if let Some((parent, name)) = split(gone) {
                by.dirs.entry(parent.into()).or_default().whiteouts.push(name.into());
                by.reach(parent, Presence::Markers, &named);
            }
        }
        for dir in opaque_dirs {
            by.dirs.entry(dir.clone()).or_default().opaque = true;
            by.reach(dir, Presence::Markers, &named);
        }
        by
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
    fn reach(&mut self, mut dir: &[u8], how: Presence, named: &HashMap<&[u8], usize>) {
        while let Some((parent, name)) = split(dir) {
            if named.contains_key(dir) {
                return;
            }
            let unnamed = &mut self.dirs.entry(parent.into()).or_default().unnamed;
            match unnamed.get(name) {
                Some(Presence::Implied) => return,
                Some(_) if how == Presence::Markers => return,
                _ => drop(unnamed.insert(name.into(), how)),
            }
            dir = parent;
        }
    }

    /// Directory `dir`, its entries read with `entry_at` from the index this was built from.
    pub fn list(&self, dir: &[u8], entry_at: impl Fn(usize) -> Entry) -> Listing {
        let Some(d) = self.dirs.get(dir) else {
            return Listing::default();
        };
        let mut objects: Vec<Listed> = d
            .entries
            .iter()
            .map(|&i| Listed { entry: entry_at(i as usize), deferred: false, presence: Presence::Entry, index: i })
            .collect();
        objects.extend(d.unnamed.iter().map(|(name, &presence)| {
            let mut entry = Entry::implied_dir();
            entry.path = path::join(dir, name).into();
            Listed { entry, deferred: false, presence, index: NO_INDEX }
        }));
        objects.sort_by(|a, b| name_of(&a.entry).cmp(name_of(&b.entry)));
        Listing { opaque: d.opaque, whiteouts: d.whiteouts.clone(), objects }
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
