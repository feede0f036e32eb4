//! `strata inspect`: the layer table and per-path provenance, as text and JSON; and manifest
//! selection by digest and through a multi-platform index.

mod support;

use sha2::{Digest, Sha256};
use strata_tools::fixture;
use support::{require_fuse, run_strata, Mounted};

fn standard_layout(dir: &std::path::Path) -> String {
    let layout = dir.join("layout");
    fixture::write_oci_layout(&layout, &fixture::standard_image()).unwrap();
    layout.to_str().unwrap().to_string()
}

fn json(out: std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn layer_table_lists_every_layer_with_its_media_type_and_counts() {
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let rows = json(run_strata(&work.path().join("cache"), &["inspect", &layout, "--json"]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let media: Vec<&str> = rows.iter().map(|r| r["media_type"].as_str().unwrap()).collect();
    assert!(media[1].ends_with("+gzip") && media[2].ends_with("+zstd") && !media[0].contains('+'), "{media:?}");
    assert!(rows[1]["whiteouts"].as_u64().unwrap() >= 3, "layer 1 deletes etc/hostname, var/cache/apt, links/b");
    assert_eq!(rows[2]["opaque_dirs"].as_u64(), Some(1));
    assert!(rows.iter().all(|r| r["digest"].as_str().unwrap().starts_with("sha256:")));
    assert!(rows[1]["uncompressed_size"].as_u64() > rows[1]["stored_size"].as_u64());
    let text = run_strata(&work.path().join("cache"), &["inspect", &layout]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("application/vnd.oci.image.layer.v1.tar+zstd"));
}

#[test]
fn path_report_names_the_provider_the_shadowed_and_the_deleters() {
    let work = tempfile::tempdir().unwrap();
    let layout = standard_layout(work.path());
    let cache = work.path().join("cache");
    let swap = json(run_strata(&cache, &["inspect", &layout, "--path", "/data/swap", "--json"]));
    assert_eq!(swap["provided_by"], 2);
    let mentions = swap["mentions"].as_array().unwrap();
    assert!(mentions.iter().any(|m| m["layer"] == 0 && m["shadowed"] == true));
    assert!(mentions.iter().any(|m| m["layer"] == 1 && m["detail"] == "directory"));

    let hostname = json(run_strata(&cache, &["inspect", &layout, "--path", "etc/hostname", "--json"]));
    assert_eq!(hostname["visible"], false);
    assert!(hostname["mentions"].as_array().unwrap().iter().any(|m| m["layer"] == 1 && m["what"] == "whiteout"));

    let doc = run_strata(&cache, &["inspect", &layout, "--path", "/usr/share/doc/README"]);
    let text = String::from_utf8_lossy(&doc.stdout);
    assert!(text.contains("not visible") && text.contains("/usr/share/doc is opaque"), "{text}");
}

/// Wraps the layout's only manifest in a multi-platform index (an arm64 decoy first).
fn make_multi_platform(layout: &std::path::Path) {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0].clone();
    let mut decoy = manifest.clone();
    decoy["digest"] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
    let platform = |arch: &str| serde_json::json!({"architecture": arch, "os": "linux"});
    let mut amd64 = manifest.clone();
    amd64["platform"] = platform("amd64");
    decoy["platform"] = platform("arm64");
    let nested = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [decoy, amd64]});
    let bytes = serde_json::to_vec(&nested).unwrap();
    let hex = format!("{:x}", Sha256::digest(&bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

#[test]
fn manifests_are_picked_by_digest_and_by_platform() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layout = std::path::PathBuf::from(standard_layout(w));
    let cache = w.join("cache");
    let digest = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_string()
    };
    let by_digest = Mounted::new(&cache, &["--tag", &digest, layout.to_str().unwrap()], &w.join("m1"));
    assert!(by_digest.dir.join("etc/passwd").exists());
    drop(by_digest);

    make_multi_platform(&layout);
    let multi = Mounted::new(&cache, &[layout.to_str().unwrap()], &w.join("m2"));
    assert!(multi.dir.join("etc/passwd").exists(), "the linux/amd64 manifest of the nested index");
}
