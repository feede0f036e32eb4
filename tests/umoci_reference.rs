//! The merged tree strata mounts equals the tree `umoci raw unpack` extracts from the same OCI
//! layout: an independent implementation of the OCI layer rules as the reference.

mod support;

use std::process::Command;

use strata_tools::fixture;
use support::tree::{differences, snapshot};
use support::{require_command, require_fuse, Mounted};

#[test]
fn standard_image_matches_umoci_unpack() {
    if !require_fuse() || !require_command("umoci") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    // umoci 0.4 reads no zstd layers: the reference image stores those layers gzip'd instead.
    fixture::write_oci_layout(&layout, &fixture::standard_image().with_zstd_as_gzip()).unwrap();
    let reference = work.path().join("reference");
    let out = Command::new("umoci")
        .args(["raw", "unpack", "--image", &format!("{}:standard", layout.display()), reference.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci: {}", String::from_utf8_lossy(&out.stderr));

    let mnt = Mounted::new(&work.path().join("cache"), &[layout.to_str().unwrap()], &work.path().join("mnt"));
    let (expected, expected_inodes) = snapshot(&reference);
    let (actual, actual_inodes) = snapshot(&mnt.dir);
    let diffs = differences(&expected, &actual);
    assert!(diffs.is_empty(), "strata differs from umoci:\n{}", diffs.join("\n"));

    // Hard-link sets: the same grouping of paths by inode in both trees.
    let groups = |inodes: &std::collections::BTreeMap<String, u64>| {
        let mut by_ino: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
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
