//! Every way of naming the same image — OCI layout (zstd or gzip layers), `docker save` as a
//! tarball or a directory, an explicit `--layer` stack, directory layers — mounts the same tree.

mod support;

use std::path::Path;

use strata_tools::fixture::{self, Compression, Image, Item, Layer, Meta};
use support::tree::{differences, snapshot};
use support::{require_fuse, run_strata, Mounted};

fn mounted_tree(work: &Path, name: &str, args: &[&str]) -> std::collections::BTreeMap<String, support::tree::Node> {
    let mnt = Mounted::new(&work.join("cache"), args, &work.join(name));
    snapshot(&mnt.dir).0
}

fn assert_same(
    expected: &std::collections::BTreeMap<String, support::tree::Node>,
    actual: &std::collections::BTreeMap<String, support::tree::Node>,
    what: &str,
) {
    let diffs = differences(expected, actual);
    assert!(diffs.is_empty(), "{what} differs from the OCI layout mount:\n{}", diffs.join("\n"));
}

#[test]
fn every_image_form_mounts_the_same_tree() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = fixture::standard_image();
    let layout = w.join("layout");
    fixture::write_oci_layout(&layout, &image).unwrap();
    let reference = mounted_tree(w, "oci", &[layout.to_str().unwrap()]);
    assert!(reference.len() > 40, "the standard image has {} paths", reference.len());

    let gzip_layout = w.join("layout-gzip");
    fixture::write_oci_layout(&gzip_layout, &image.with_zstd_as_gzip()).unwrap();
    assert_same(&reference, &mounted_tree(w, "gzip", &[gzip_layout.to_str().unwrap()]), "the gzip-only layout");

    let archive = w.join("saved.tar");
    fixture::write_docker_archive(&archive, &image).unwrap();
    assert_same(&reference, &mounted_tree(w, "docker-tar", &[archive.to_str().unwrap()]), "the docker save tarball");

    let saved_dir = w.join("saved");
    fixture::write_docker_archive(&saved_dir, &image).unwrap();
    assert_same(
        &reference,
        &mounted_tree(w, "docker-dir", &[saved_dir.to_str().unwrap()]),
        "the docker save directory",
    );

    let mut args = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let path = w.join(format!("layer{i}.blob"));
        std::fs::write(&path, fixture::layer_blob(layer).unwrap()).unwrap();
        args.push("--layer".to_string());
        args.push(path.to_str().unwrap().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_same(&reference, &mounted_tree(w, "layers", &args), "the --layer stack");
}

#[test]
fn tag_selects_among_several_images() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layout = w.join("layout");
    let one = |tag: &str, file: &str| Image {
        layers: vec![Layer {
            items: vec![Item::File {
                path: file.into(),
                data: tag.as_bytes().to_vec(),
                meta: Meta::default(),
                xattrs: vec![],
            }],
            compression: Compression::None,
        }],
        tag: tag.into(),
        config: Default::default(),
    };
    fixture::write_oci_layout(&layout, &one("first", "a")).unwrap();
    fixture::add_to_oci_layout(&layout, &one("second", "b")).unwrap();
    let cache = w.join("cache");

    let no_tag = run_strata(&cache, &["mount", layout.to_str().unwrap(), w.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&no_tag.stderr);
    assert!(!no_tag.status.success());
    assert!(stderr.contains("first") && stderr.contains("second") && stderr.contains("--tag"), "{stderr}");

    let mnt = Mounted::new(&cache, &["--tag", "second", layout.to_str().unwrap()], &w.join("mnt"));
    assert_eq!(std::fs::read_to_string(mnt.dir.join("b")).unwrap(), "second");
    assert!(!mnt.dir.join("a").exists());

    let missing = run_strata(&cache, &["mount", "--tag", "third", layout.to_str().unwrap(), w.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no manifest matches tag \"third\""), "{stderr}");
}

#[test]
fn directory_layers_read_every_whiteout_form() {
    if !require_fuse() {
        return;
    }
    use std::os::unix::fs::symlink;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let lower = w.join("lower");
    for d in ["keep", "opq", "gone-dir", "oci-opq"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    for f in ["keep/a", "opq/old", "gone-dir/x", "gone-file", "wh-file", "oci-opq/old"] {
        std::fs::write(lower.join(f), f).unwrap();
    }
    symlink("/etc/passwd", lower.join("abs-link")).unwrap();
    let upper = w.join("upper");
    std::fs::create_dir_all(upper.join("opq")).unwrap();
    std::fs::create_dir_all(upper.join("oci-opq")).unwrap();
    std::fs::write(upper.join("opq/new"), "new").unwrap();
    std::fs::write(upper.join("oci-opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(upper.join(".wh.wh-file"), "").unwrap();
    nix::sys::stat::mknod(&upper.join("gone-file"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
        .unwrap();
    nix::sys::stat::mknod(&upper.join("gone-dir"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
        .unwrap();
    let opq = std::ffi::CString::new(upper.join("opq").to_str().unwrap()).unwrap();
    let rc = unsafe { libc::setxattr(opq.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "setting the opaque xattr");

    let mnt = Mounted::new(
        &w.join("cache"),
        &["--layer", lower.to_str().unwrap(), "--layer", upper.to_str().unwrap()],
        &w.join("mnt"),
    );
    let (tree, _) = snapshot(&mnt.dir);
    let paths: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(paths, vec!["abs-link", "keep", "keep/a", "oci-opq", "opq", "opq/new"]);
    // An absolute symlink is shown as it is, never followed out of the image by strata itself.
    assert_eq!(tree["abs-link"].target.as_deref(), Some("/etc/passwd"));
    assert!(!tree["opq"].xattrs.contains_key("trusted.overlay.opaque"), "overlay xattrs are internal");
    assert!(std::fs::read_to_string(lower.join("gone-file")).is_ok(), "the lower layer is untouched");
}
