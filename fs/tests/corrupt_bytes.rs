//! Property tests on damaged input, the way a fuzzer would feed it: a tar layer with bytes
//! overwritten or cut short is indexed without a panic, and an index it accepts never points
//! outside the archive; a cached index with any byte changed or cut is refused (and so rebuilt),
//! never trusted.

use std::io::Cursor;

use proptest::prelude::*;
use strata_fs::layer::codec;
use strata_fs::layer::tar_index::index_tar;
use strata_fs::layer::LayerInfo;

/// A layer with what the parser has to handle: directories, files, a symlink, a hard link, a
/// long name (GNU and PAX headers), a PAX xattr, whiteouts and an opaque marker.
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    add(&mut b, "etc/", tar::EntryType::Directory, b"", None);
    add(&mut b, "etc/hosts", tar::EntryType::Regular, b"127.0.0.1 localhost\n", None);
    add(&mut b, "etc/hosts.link", tar::EntryType::Link, b"", Some("etc/hosts"));
    add(&mut b, "etc/localtime", tar::EntryType::Symlink, b"", Some("/usr/share/zoneinfo/UTC"));
    let long = format!("usr/share/{}/file", "n".repeat(150));
    add(&mut b, &long, tar::EntryType::Regular, &[7u8; 3000], None);
    add(&mut b, "var/.wh.cache", tar::EntryType::Regular, b"", None);
    add(&mut b, "opt/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    b.append_pax_extensions([("SCHILY.xattr.user.origin", &b"sample"[..])]).unwrap();
    add(&mut b, "etc/xattr", tar::EntryType::Regular, b"x", None);
    b.into_inner().unwrap()
}

#[test]
fn the_undamaged_sample_indexes_whole() {
    let tar = sample_tar();
    let index = index_tar(Cursor::new(&tar), tar.len() as u64, "sample", &|_| {}).unwrap();
    let paths: Vec<String> = index.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect();
    assert_eq!(paths.len(), 6, "{paths:?}");
    assert!(paths.iter().any(|p| p.len() > 150), "the long name: {paths:?}");
    let xattr = index.entries.iter().find(|e| &*e.path == b"etc/xattr").unwrap();
    assert_eq!(xattr.xattrs.len(), 1);
    assert_eq!((index.whiteouts.len(), index.opaque_dirs.len()), (1, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_damaged_tar_never_panics_nor_points_outside_the_archive(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut tar = sample_tar();
        for (at, byte) in edits {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        if let Some(at) = cut {
            tar.truncate(at.index(tar.len()));
        }
        let len = tar.len() as u64;
        if let Ok(index) = index_tar(Cursor::new(&tar), len, "damaged", &|_| {}) {
            for e in &index.entries {
                prop_assert!(e.data_offset.checked_add(e.size).is_some_and(|end| end <= len),
                    "{:?} points at {}+{} in {len} bytes", String::from_utf8_lossy(&e.path), e.data_offset, e.size);
            }
        }
    }

    #[test]
    fn a_damaged_index_is_refused(edit in (any::<prop::sample::Index>(), 1u8..=255), cut in any::<prop::sample::Index>(), cut_it in any::<bool>()) {
        let tar = sample_tar();
        let index = index_tar(Cursor::new(&tar), tar.len() as u64, "sample", &|_| {}).unwrap();
        let encoded = codec::encode(&LayerInfo::default(), &index);
        prop_assert_eq!(codec::decode(&encoded).unwrap().1, index);
        let mut damaged = encoded.clone();
        if cut_it {
            damaged.truncate(cut.index(encoded.len()));
        } else {
            let i = edit.0.index(damaged.len());
            damaged[i] ^= edit.1;
        }
        prop_assert!(codec::decode(&damaged).is_err());
    }
}
