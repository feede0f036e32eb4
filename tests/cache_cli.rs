//! `strata cache` and `strata cache prune` against a real cache: indexes and a decompressed layer
//! from a mount, shared copies from a container, and what running processes hold open.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{require_command, require_fuse, run_strata, Mounted};

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn files(doc: &Value, section: &str, kind: &str) -> u64 {
    doc[section][kind]["files"].as_u64().unwrap_or_else(|| panic!("no {section}.{kind} in {doc}"))
}

/// A gzip layer: indexed, decompressed once into the cache.
fn gzip_layer(path: &Path) -> Vec<u8> {
    let content = b"compressed layer content\n".repeat(100);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    builder.append_data(&mut header, "etc/data", content.as_slice()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
    content
}

#[test]
fn prune_removes_what_is_cheap_to_rebuild_and_never_what_is_open() {
    if !require_fuse() || !require_command("busybox") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let strata = |args: &[&str]| run_strata(&cache, args);

    // A container makes shared copies of the files it opens (busybox, /etc/passwd, …).
    let image = work.path().join("image");
    strata_tools::fixture::write_oci_layout(&image, &strata_tools::fixture::runner_image().unwrap()).unwrap();
    let ran = support::strata()
        .env("STRATA_CACHE", &cache)
        .env("STRATA_RUN_DIR", work.path().join("run"))
        .env("STRATA_DATA_DIR", work.path().join("data"))
        .args(["run", "--rm", image.to_str().unwrap(), "cat", "/etc/passwd"])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    // A mounted gzip layer: its index, and its decompressed tar held open by the daemon.
    let layer = work.path().join("layer.tar.gz");
    let content = gzip_layer(&layer);
    let mnt = work.path().join("mnt");
    let mounted = Mounted::new(&cache, &["--layer", layer.to_str().unwrap()], &mnt);
    // What a crash or an older strata leaves.
    std::fs::write(cache.join("blobs/.tmp-crashed"), b"partial").unwrap();
    std::fs::create_dir_all(cache.join("index/v0")).unwrap();
    std::fs::write(cache.join("index/v0/sha256-old"), b"old format").unwrap();

    let before = json_of(&strata(&["cache", "--json"]));
    let copies = files(&before, "contents", "shared_copies");
    assert!(copies >= 2, "the container made shared copies: {before}");
    let decompressed = files(&before, "contents", "decompressed_layers");
    assert!(decompressed >= 1, "the gzip layer was decompressed: {before}");
    assert_eq!(files(&before, "contents", "leftovers"), 1, "{before}");
    assert_eq!(files(&before, "contents", "stale_indexes"), 1, "{before}");
    let indexes = files(&before, "contents", "indexes");
    assert!(indexes >= 3, "the image's layers and the gzip layer are indexed: {before}");

    // One shared copy held open here: kept; the others go, and so do the leftover and the stale index.
    let copy_dir = std::fs::read_dir(cache.join("files")).unwrap().next().unwrap().unwrap().path();
    let held_path = std::fs::read_dir(&copy_dir).unwrap().next().unwrap().unwrap().path();
    let held = std::fs::File::open(&held_path).unwrap();
    let pruned = json_of(&strata(&["cache", "prune", "--json"]));
    assert_eq!(files(&pruned, "removed", "shared_copies"), copies - 1, "{pruned}");
    assert_eq!(files(&pruned, "kept_in_use", "shared_copies"), 1, "{pruned}");
    assert_eq!(files(&pruned, "removed", "leftovers"), 1, "{pruned}");
    assert_eq!(files(&pruned, "removed", "stale_indexes"), 1, "{pruned}");
    assert_eq!(files(&pruned, "removed", "indexes"), 0, "indexes stay without --all: {pruned}");
    assert_eq!(files(&pruned, "removed", "decompressed_layers"), 0, "{pruned}");
    assert!(held_path.exists());
    drop(held);

    // --all while mounted: the indexes go, the decompressed layer the daemon reads stays, and
    // the mount keeps serving.
    let all = json_of(&strata(&["cache", "prune", "--all", "--json"]));
    assert_eq!(files(&all, "removed", "indexes"), indexes, "{all}");
    assert_eq!(files(&all, "kept_in_use", "decompressed_layers"), 1, "{all}");
    assert_eq!(files(&all, "removed", "decompressed_layers"), decompressed - 1, "{all}");
    assert_eq!(std::fs::read(mnt.join("etc/data")).unwrap(), content);
    drop(mounted);
    let emptied = json_of(&strata(&["cache", "prune", "--all", "--json"]));
    assert_eq!(files(&emptied, "removed", "decompressed_layers"), 1, "unused once unmounted: {emptied}");
    let after = json_of(&strata(&["cache", "--json"]));
    let left: u64 = after["contents"].as_object().unwrap().values().map(|v| v["files"].as_u64().unwrap()).sum();
    assert_eq!(left, 0, "{after}");

    // Everything is rebuilt on demand.
    let _remounted = Mounted::new(&cache, &["--layer", layer.to_str().unwrap()], &mnt);
    assert_eq!(std::fs::read(mnt.join("etc/data")).unwrap(), content);
}
