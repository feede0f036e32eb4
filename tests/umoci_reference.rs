//! The merged tree strata mounts equals the tree `umoci raw unpack` extracts from the same OCI
//! layout: an independent implementation of the OCI layer rules as the reference.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_tools::fixture;
use support::tree::{differences, snapshot};
use support::{require_command, require_fuse, Mounted};

/// The standard fixture as an OCI layout, and the tree `umoci raw unpack` makes of it; None
/// when FUSE or umoci is missing (outside CI).
fn layout_and_reference(work: &Path) -> Option<(PathBuf, PathBuf)> {
    if !require_fuse() || !require_command("umoci") {
        return None;
    }
    let layout = work.join("layout");
    // umoci 0.4 reads no zstd layers: the reference image stores those layers gzip'd instead.
    fixture::write_oci_layout(&layout, &fixture::standard_image().with_zstd_as_gzip()).unwrap();
    let reference = work.join("reference");
    let out = Command::new("umoci")
        .args(["raw", "unpack", "--image", &format!("{}:standard", layout.display()), reference.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci: {}", String::from_utf8_lossy(&out.stderr));
    Some((layout, reference))
}

/// Compares a mount with the reference path by path, and their hard-link sets (paths grouped
/// by inode).
fn assert_matches_reference(mounted: &Path, reference: &Path) {
    let (expected, expected_inodes) = snapshot(reference);
    let (actual, actual_inodes) = snapshot(mounted);
    let diffs = differences(&expected, &actual);
    assert!(diffs.is_empty(), "strata differs from umoci:\n{}", diffs.join("\n"));
    let groups = |inodes: &BTreeMap<String, u64>| {
        let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, i) in inodes {
            if expected[p].kind != "dir" {
                by_ino.entry(*i).or_default().push(p.clone());
            }
        }
        let mut sets: Vec<Vec<String>> = by_ino.into_values().filter(|v| v.len() > 1).collect();
        sets.sort();
        sets
    };
    assert_eq!(groups(&actual_inodes), groups(&expected_inodes));
    assert!(!groups(&actual_inodes).is_empty(), "the fixture has a surviving hard-link set");
}

#[test]
fn standard_image_matches_umoci_unpack() {
    let work = tempfile::tempdir().unwrap();
    let Some((layout, reference)) = layout_and_reference(work.path()) else { return };
    let mnt = Mounted::new(&work.path().join("cache"), &[layout.to_str().unwrap()], &work.path().join("mnt"));
    assert_matches_reference(&mnt.dir, &reference);
}

/// The writable mount reads the same layers a directory at a time, through their indexes
/// arranged by directory: the same tree.
#[test]
fn standard_image_mounted_writable_matches_umoci_unpack() {
    let work = tempfile::tempdir().unwrap();
    let Some((layout, reference)) = layout_and_reference(work.path()) else { return };
    let (upper, scratch) = (work.path().join("upper"), work.path().join("work"));
    let args = ["--upper", upper.to_str().unwrap(), "--work", scratch.to_str().unwrap(), layout.to_str().unwrap()];
    let mnt = Mounted::new(&work.path().join("cache"), &args, &work.path().join("mnt"));
    assert_matches_reference(&mnt.dir, &reference);
}
