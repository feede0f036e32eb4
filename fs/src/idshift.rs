//! fuse-overlayfs' ownership options, `uidmapping=`/`gidmapping=` (`STORED:SHOWN:COUNT[:…]`) and
//! `squash_to_root`/`squash_to_uid=`/`squash_to_gid=`: ids as stored in the layers and the upper
//! translated to the ids a mount shows, and back for the ids a caller writes. Pure; the FUSE
//! adapter applies it to every attribute it replies with and every owner it stores.

/// Shown for an id no range maps (the kernel's default overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// `count` ids starting at `stored` on disk are shown starting at `shown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub stored: u32,
    pub shown: u32,
    pub count: u32,
}

/// Parses `STORED:SHOWN:COUNT[:STORED:SHOWN:COUNT…]`, fuse-overlayfs' format.
pub fn parse_ranges(text: &str) -> Result<Vec<IdRange>, String> {
    let numbers = text
        .split(':')
        .map(|n| n.parse::<u32>().map_err(|_| format!("{text:?}: {n:?} is not an id")))
        .collect::<Result<Vec<u32>, String>>()?;
    if numbers.is_empty() || numbers.len() % 3 != 0 {
        return Err(format!("{text:?}: expected STORED:SHOWN:COUNT triples"));
    }
    numbers
        .chunks(3)
        .map(|c| match c {
            [stored, shown, count]
                if *count > 0 && stored.checked_add(*count).is_some() && shown.checked_add(*count).is_some() =>
            {
                Ok(IdRange { stored: *stored, shown: *shown, count: *count })
            }
            _ => Err(format!("{text:?}: a range is empty or overflows")),
        })
        .collect()
}

/// How a mount shows owners. The default shows them as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdShift {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Every file shown as owned by this uid (`squash_to_uid=`, or 0 for `squash_to_root`).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

/// Maps `id` from one side of the ranges to the other (`from`/`to` pick the side); ids outside
/// every range become [`OVERFLOW_ID`], and no ranges at all means ids pass unchanged.
fn translate(ranges: &[IdRange], id: u32, from: fn(&IdRange) -> u32, to: fn(&IdRange) -> u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges.iter().find(|r| id >= from(r) && id - from(r) < r.count).map_or(OVERFLOW_ID, |r| to(r) + (id - from(r)))
}

fn show(ranges: &[IdRange], stored: u32) -> u32 {
    translate(ranges, stored, |r| r.stored, |r| r.shown)
}

fn store(ranges: &[IdRange], shown: u32) -> u32 {
    translate(ranges, shown, |r| r.shown, |r| r.stored)
}

impl IdShift {
    pub fn is_identity(&self) -> bool {
        *self == IdShift::default()
    }

    /// Owners are squashed: a chown through the mount is accepted and changes nothing visible,
    /// so it is not applied (as fuse-overlayfs ignores its result).
    pub fn squashes(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    pub fn shown_uid(&self, stored: u32) -> u32 {
        self.squash_uid.unwrap_or_else(|| show(&self.uids, stored))
    }

    pub fn shown_gid(&self, stored: u32) -> u32 {
        self.squash_gid.unwrap_or_else(|| show(&self.gids, stored))
    }

    pub fn stored_uid(&self, shown: u32) -> u32 {
        store(&self.uids, shown)
    }

    pub fn stored_gid(&self, shown: u32) -> u32 {
        store(&self.gids, shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_example_round_trips() {
        // uidmapping=0:1000:1:1:110000:65536 — stored 0 shows as 1000, stored 1.. as 110000..
        let ranges = parse_ranges("0:1000:1:1:110000:65536").unwrap();
        let ids = IdShift { uids: ranges.clone(), gids: ranges, ..IdShift::default() };
        assert_eq!((ids.shown_uid(0), ids.shown_uid(1), ids.shown_uid(65536)), (1000, 110000, 175535));
        assert_eq!(ids.shown_uid(65537), OVERFLOW_ID, "unmapped");
        assert_eq!((ids.stored_uid(1000), ids.stored_uid(110005)), (0, 6));
        assert_eq!(ids.stored_gid(5), OVERFLOW_ID);
    }

    #[test]
    fn squash_wins_for_display_only() {
        let ids = IdShift { squash_uid: Some(0), squash_gid: Some(7), ..IdShift::default() };
        assert_eq!((ids.shown_uid(1234), ids.shown_gid(1234)), (0, 7));
        assert_eq!(ids.stored_uid(42), 42);
        assert!(ids.squashes() && !ids.is_identity());
        assert!(IdShift::default().is_identity());
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in ["", "1:2", "a:b:c", "0:0:0", "4294967295:0:2", "0:1:1:2"] {
            assert!(parse_ranges(bad).is_err(), "{bad:?} accepted");
        }
    }
}
