//! Directory listings of the writable mount, served without open directories (the kernel's
//! zero-message opendir: no OPENDIR/RELEASEDIR round trip per directory walked). A READDIR then
//! names no open directory, so its offset must mean the same whatever changed in between: an
//! offset is a cookie of a name (a hash, as ext4's hash-ordered directories use), never a
//! position. A listing is ordered by cookie and resumes after the cookie the kernel sends back,
//! so a name created or deleted meanwhile cannot make an unchanged one appear twice or not at
//! all. [`Listings`] keeps the listings of passes under way.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, Mutex};

use crate::layer::index::Kind;
use crate::overlay::{DirEntry, Ino};

/// The offsets of `.` and `..`; names' cookies are above them.
const FIRST_NAME_COOKIE: u64 = 3;

/// One directory's entries, in cookie order.
pub struct Listing {
    entries: Vec<(u64, DirEntry)>,
}

/// A name's cookie: stable within a build, below 2^63 (the kernel keeps offsets as loff_t).
pub fn cookie(name: &[u8]) -> u64 {
    // A fixed-key SipHash: the same name gets the same cookie in every process of the mount.
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    FIRST_NAME_COOKIE + hasher.finish() % (i64::MAX as u64 - FIRST_NAME_COOKIE)
}

impl Listing {
    pub fn new(entries: Vec<DirEntry>) -> Listing {
        let mut entries: Vec<(u64, DirEntry)> = entries.into_iter().map(|e| (cookie(&e.name), e)).collect();
        entries.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.name.cmp(&y.name)));
        Listing { entries }
    }

    /// The entries after `offset`, `.` and `..` (of directory `dir`) first, each with the offset
    /// that resumes after it.
    pub fn after(&self, dir: Ino, offset: u64) -> impl Iterator<Item = (u64, Ino, Kind, &[u8])> {
        let dots = [(1, dir, Kind::Dir, &b"."[..]), (2, dir, Kind::Dir, &b".."[..])];
        let names = self.entries.iter().map(|(c, e)| (*c, e.ino, e.kind, &e.name[..]));
        dots.into_iter().chain(names).filter(move |(c, ..)| *c > offset)
    }
}

/// Listings by directory, taken when a pass starts (offset 0) and reused by its later pages;
/// since offsets are cookies, passes over one directory may share them.
#[derive(Default)]
pub struct Listings {
    kept: Mutex<HashMap<Ino, Arc<Listing>>>,
}

/// A pass is short: a few listings suffice, and one dropped early is taken again.
const LISTINGS_KEPT: usize = 64;

impl Listings {
    /// The listing a READDIR of `dir` at `offset` continues: a fresh one (from `take`) at the
    /// start of a pass or when none is kept.
    pub fn for_pass(
        &self,
        dir: Ino,
        offset: u64,
        take: impl FnOnce() -> io::Result<Vec<DirEntry>>,
    ) -> io::Result<Arc<Listing>> {
        let lock = || self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if offset != 0 {
            if let Some(listing) = lock().get(&dir) {
                return Ok(Arc::clone(listing));
            }
        }
        let listing = Arc::new(Listing::new(take()?));
        let mut kept = lock();
        if kept.len() >= LISTINGS_KEPT {
            kept.clear();
        }
        kept.insert(dir, Arc::clone(&listing));
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<DirEntry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| DirEntry { name: n.as_bytes().to_vec(), ino: 10 + i as u64, kind: Kind::File })
            .collect()
    }

    fn names(listing: &Listing, offset: u64, take: usize) -> (Vec<String>, u64) {
        let page: Vec<_> = listing.after(1, offset).take(take).collect();
        let next = page.last().map_or(offset, |(c, ..)| *c);
        (page.iter().map(|(_, _, _, n)| String::from_utf8_lossy(n).into_owned()).collect(), next)
    }

    #[test]
    fn a_listing_read_in_pages_across_changes_shows_every_unchanged_name_once() {
        let all: Vec<String> = (0..50).map(|i| format!("file-{i}")).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let before = Listing::new(entries(&refs));
        let (mut seen, next) = names(&before, 0, 20);
        // Between two pages, ten names go and ten new ones come.
        let mut changed: Vec<&str> = refs[10..].to_vec();
        let added: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
        changed.extend(added.iter().map(String::as_str));
        let after = Listing::new(entries(&changed));
        let (rest, _) = names(&after, next, usize::MAX);
        seen.extend(rest);
        assert_eq!(&seen[..2], [".", ".."]);
        for unchanged in &refs[10..] {
            assert_eq!(seen.iter().filter(|s| s == unchanged).count(), 1, "{unchanged} exactly once: {seen:?}");
        }
    }

    #[test]
    fn offsets_resume_after_the_dots_and_past_the_end() {
        let listing = Listing::new(entries(&["a", "b"]));
        assert_eq!(names(&listing, 0, usize::MAX).0.len(), 4);
        assert_eq!(names(&listing, 1, usize::MAX).0[0], "..");
        assert_eq!(names(&listing, 2, usize::MAX).0.len(), 2);
        let (_, last) = names(&listing, 0, usize::MAX);
        assert!(names(&listing, last, usize::MAX).0.is_empty());
        assert!(cookie(b"a") >= FIRST_NAME_COOKIE && cookie(b"a") < i64::MAX as u64);
        assert_eq!(cookie(b"same"), cookie(b"same"));
    }
}
