//! Bad input gets a clear error naming the problem, never a panic, never a partial mount.

mod support;

use std::io::Write;
use std::path::Path;

use strata_tools::fixture;
use support::{is_mounted, require_fuse, run_strata};

fn header(name: &[u8], kind: u8, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    h
}

/// A tar with one entry whose header is written as given (bypassing the tar crate's checks).
fn tar_with(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, data) in entries {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn good_tar() -> Vec<u8> {
    let big = vec![7u8; 5000];
    tar_with(&[
        (header(b"etc", b'5', 0), b""),
        (header(b"etc/big", b'0', big.len() as u64), &big),
        (header(b"etc/small", b'0', 2), b"ok"),
    ])
}

/// Mounting `layer` must fail with every `needles` in the message, and leave nothing mounted.
fn assert_refused(work: &Path, name: &str, layer: &[u8], needles: &[&str]) {
    let path = work.join(name);
    std::fs::write(&path, layer).unwrap();
    let mnt = work.join(format!("mnt-{name}"));
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run_strata(&work.join("cache"), &["mount", "--layer", path.to_str().unwrap(), mnt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name}: mount succeeded");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{name}: expected {needle:?} in: {stderr}");
    }
    assert!(!is_mounted(&mnt), "{name}: left a mount behind");
}

#[test]
fn corrupt_and_hostile_layers_are_refused_clearly() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let good = good_tar();

    assert_refused(w, "cut-in-data.tar", &good[..512 * 4], &["corrupt or truncated", "etc/big", "past the end"]);
    assert_refused(w, "cut-in-header.tar", &good[..512 * 12 + 100], &["corrupt or truncated"]);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&good).unwrap();
    let gz = gz.finish().unwrap();
    assert_refused(w, "cut.tar.gz", &gz[..gz.len() / 2], &["corrupt or truncated"]);

    let zst = zstd::encode_all(&good[..], 3).unwrap();
    assert_refused(w, "cut.tar.zst", &zst[..zst.len() - 8], &["corrupt or truncated"]);

    assert_refused(w, "climb.tar", &tar_with(&[(header(b"../evil", b'0', 1), b"x")]), &["\"../evil\"", "climbs out"]);
    assert_refused(w, "nested-climb.tar", &tar_with(&[(header(b"a/../../evil", b'0', 1), b"x")]), &["climbs out"]);
    assert_refused(
        w,
        "absolute.tar",
        &tar_with(&[(header(b"/etc/evil", b'0', 1), b"x")]),
        &["\"/etc/evil\"", "absolute"],
    );

    let mut absurd = header(b"huge", b'0', 0);
    absurd.as_old_mut().size.copy_from_slice(b"77777777777\0");
    absurd.set_cksum();
    assert_refused(w, "absurd-size.tar", &tar_with(&[(absurd, b"tiny")]), &["huge", "past the end"]);

    let mut link = header(b"link", b'1', 0);
    link.set_link_name("missing/target").unwrap();
    link.set_cksum();
    assert_refused(w, "dangling-hardlink.tar", &tar_with(&[(link, b"")]), &["\"link\"", "missing/target"]);

    assert_refused(w, "sparse.tar", &tar_with(&[(header(b"sparse", b'S', 0), b"")]), &["sparse"]);

    let mut bad_sum = header(b"x", b'0', 1);
    bad_sum.as_old_mut().cksum.copy_from_slice(b"0000000\0");
    assert_refused(w, "checksum.tar", &tar_with(&[(bad_sum, b"x")]), &["checksum"]);
}

#[test]
fn a_modified_blob_fails_its_digest() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    fixture::write_oci_layout(&layout, &fixture::standard_image()).unwrap();
    // Flip one byte of file data in the bottom (uncompressed) layer: same size, other digest.
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&biggest, bytes).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = run_strata(&work.path().join("cache"), &["mount", layout.to_str().unwrap(), mnt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("digest mismatch") && stderr.contains(biggest.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
    assert!(!is_mounted(&mnt));
}

/// A manifest rewritten in place (another document under the digest the index names) and a
/// docker config naming fewer diff_ids than layers (a layer left unverified) are refused.
#[test]
fn image_documents_are_held_to_their_digests() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inspect = |image: &Path| run_strata(&w.join("cache"), &["inspect", image.to_str().unwrap()]);

    let layout = w.join("layout");
    let manifest = fixture::write_oci_layout(&layout, &fixture::standard_image()).unwrap();
    assert!(inspect(&layout).status.success(), "{}", String::from_utf8_lossy(&inspect(&layout).stderr));
    let manifest_blob = layout.join("blobs/sha256").join(manifest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&manifest_blob).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&manifest_blob, bytes).unwrap();
    let out = inspect(&layout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&manifest) && stderr.contains("not the"), "{stderr}");

    let archive = w.join("archive");
    fixture::write_docker_archive(&archive, &fixture::standard_image()).unwrap();
    assert!(inspect(&archive).status.success());
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join("manifest.json")).unwrap()).unwrap();
    let config_path = archive.join(listing[0]["Config"].as_str().unwrap());
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = inspect(&archive);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("diff_ids for the"), "{stderr}");
}

#[test]
fn an_entry_below_a_lower_file_is_refused() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("l0.tar"), tar_with(&[(header(b"a", b'0', 1), b"x")])).unwrap();
    std::fs::write(w.join("l1.tar"), tar_with(&[(header(b"a/b", b'0', 1), b"y")])).unwrap();
    let out = run_strata(
        &w.join("cache"),
        &[
            "mount",
            "--layer",
            w.join("l0.tar").to_str().unwrap(),
            "--layer",
            w.join("l1.tar").to_str().unwrap(),
            w.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("\"a/b\"") && stderr.contains("not a directory"), "{stderr}");
}

/// A shared copy (what container mounts serve tar-layer files from) on a full cache disk fails
/// cleanly: no partial copy is left to be trusted later, and once there is room the copy is whole.
#[test]
fn a_full_cache_disk_leaves_no_partial_shared_copy() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let big = vec![9u8; 256 << 10];
    let layer_path = work.path().join("layer.tar");
    std::fs::write(&layer_path, tar_with(&[(header(b"big", b'0', big.len() as u64), &big)])).unwrap();
    let cache_dir = work.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    let source = strata_fs::layer::LayerSource::from_path(&layer_path).unwrap();
    let layer = strata_fs::layer::Layer::load(
        &source,
        &strata_fs::layer::cache::Cache::new(work.path().join("index-cache")),
        &strata_fs::layer::Quiet,
    )
    .unwrap();
    let entry = layer.index().unwrap().entries.iter().find(|e| &*e.path == b"big").unwrap();

    // A 128 KiB tmpfs cannot hold the 256 KiB copy.
    let tmpfs = support::mount_tmpfs(&cache_dir, "size=128k");
    let full = strata_fs::layer::cache::Cache::new(&cache_dir);
    let err = layer.shared_copy(entry, &full).unwrap_err();
    let leftovers: Vec<_> = walk(&cache_dir).into_iter().filter(|p| p.is_file()).collect();
    drop(tmpfs);
    assert!(err.to_string().contains("No space") || err.raw_os_error() == Some(libc::ENOSPC), "{err}");
    assert!(leftovers.is_empty(), "no partial copy is left: {leftovers:?}");

    let copy = layer.shared_copy(entry, &strata_fs::layer::cache::Cache::new(&cache_dir)).unwrap().unwrap();
    let mut copied = Vec::new();
    std::io::Read::read_to_end(&mut &copy, &mut copied).unwrap();
    assert!(copied == big, "the copy holds the file's bytes");
}

/// A cache disk with no room: an uncompressed layer still mounts (its index stays in memory and
/// a warning says it is not kept), a compressed one, which must be decompressed into the cache,
/// is refused with an error naming the cache and what to do (not "corrupt archive"), and nothing
/// partial is left in the cache.
#[test]
fn a_full_cache_disk_is_named_and_uncompressed_layers_still_mount() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let names: Vec<String> = (0..400).map(|i| format!("etc/file-with-a-long-name-{i:04}")).collect();
    let mut entries = vec![(header(b"etc", b'5', 0), &b""[..])];
    entries.extend(names.iter().map(|n| (header(n.as_bytes(), b'0', 2), &b"ok"[..])));
    let tar = tar_with(&entries);
    std::fs::write(w.join("layer.tar"), &tar).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    std::fs::write(w.join("layer.tar.gz"), gz.finish().unwrap()).unwrap();

    // One 4 KiB page: room for the cache's directories, not for the index or the blob.
    let cache = w.join("cache");
    std::fs::create_dir(&cache).unwrap();
    let _tmpfs = support::mount_tmpfs(&cache, "size=4k");

    let mnt = w.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = run_strata(&cache, &["mount", "--layer", w.join("layer.tar").to_str().unwrap(), mnt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mount = support::Mounted { dir: mnt.clone() };
    assert!(stderr.contains("index is not kept") && stderr.contains("STRATA_CACHE"), "{stderr}");
    assert_eq!(std::fs::read_to_string(mnt.join(&names[399])).unwrap(), "ok");
    drop(mount);

    let gz_mnt = w.join("mnt-gz");
    std::fs::create_dir(&gz_mnt).unwrap();
    let out =
        run_strata(&cache, &["mount", "--layer", w.join("layer.tar.gz").to_str().unwrap(), gz_mnt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !is_mounted(&gz_mnt), "{stderr}");
    assert!(stderr.contains("cannot store it in the cache") && stderr.contains("No space left"), "{stderr}");
    assert!(!stderr.contains("corrupt"), "{stderr}");
    let files: Vec<_> = walk(&cache).into_iter().filter(|p| p.is_file()).collect();
    assert!(files.is_empty(), "nothing partial is left in the cache: {files:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// A layer file truncated under a running mount: reads of what it lost fail with EIO (never a
/// silently short or zero-filled file), and the daemon's `--log` says which file and what to do.
#[test]
fn a_layer_truncated_under_a_mount_answers_eio_and_the_log_names_it() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layer_path = work.path().join("layer.tar");
    let layer = good_tar();
    std::fs::write(&layer_path, &layer).unwrap();
    let mnt = work.path().join("mnt");
    let log = work.path().join("daemon.log");
    let mounted = support::Mounted::new(
        &work.path().join("cache"),
        &["--log", log.to_str().unwrap(), "--layer", layer_path.to_str().unwrap()],
        &mnt,
    );
    assert_eq!(std::fs::read(mnt.join("etc/small")).unwrap(), b"ok", "readable before the truncation");

    // Keep the first header and part of etc/big's data: etc/big loses its end.
    std::fs::OpenOptions::new().write(true).open(&layer_path).unwrap().set_len(512 + 3000).unwrap();
    let err = std::fs::read(mnt.join("etc/big")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(mounted);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.first().is_some_and(|l| l.contains("INFO") && l.contains("mounted")), "{text}");
    let failure = lines.iter().find(|l| l.contains("WARN")).unwrap_or_else(|| panic!("no warning in: {text}"));
    let expected = format!("{} is 3512 bytes long but held at least {}", layer_path.display(), layer.len());
    assert!(failure.contains(&expected) && failure.contains("remount"), "{failure}");
    assert!(lines.last().is_some_and(|l| l.contains("unmounted")), "{text}");
}

/// A writable mount reads a cached index in place (entries from the cache file when their
/// directory is first listed): that file truncated under the mount makes the next listing fail
/// with EIO, the log names the file and says what to do, and what was already listed still works.
#[test]
fn a_cached_index_truncated_under_a_writable_mount_answers_eio_and_the_log_names_it() {
    if !require_fuse() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let layer_path = w.join("layer.tar");
    let mut entries = vec![(header(b"etc", b'5', 0), &b""[..]), (header(b"etc/small", b'0', 2), &b"ok"[..])];
    entries.push((header(b"var", b'5', 0), b""));
    entries.push((header(b"var/later", b'0', 2), b"ok"));
    std::fs::write(&layer_path, tar_with(&entries)).unwrap();
    let cache = w.join("cache");
    // The first mount indexes the layer and writes the index to the cache.
    drop(support::Mounted::new(&cache, &["--layer", layer_path.to_str().unwrap()], &w.join("ro")));
    let index_files: Vec<_> = walk(&cache.join("index")).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(index_files.len(), 1, "{index_files:?}");

    let (mnt, log) = (w.join("mnt"), w.join("daemon.log"));
    let mounted = support::Mounted::writable(&cache, w, &layer_path, &mnt, &["--log", log.to_str().unwrap()]);
    assert_eq!(std::fs::read(mnt.join("etc/small")).unwrap(), b"ok");
    std::fs::OpenOptions::new().write(true).open(&index_files[0]).unwrap().set_len(100).unwrap();
    let err = std::fs::read_dir(mnt.join("var")).and_then(|d| d.collect::<Result<Vec<_>, _>>()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(std::fs::read(mnt.join("etc/small")).unwrap(), b"ok", "what was listed before still works");
    drop(mounted);

    let text = std::fs::read_to_string(&log).unwrap();
    let expected = format!("the cached index {} changed while in use", index_files[0].display());
    assert!(text.lines().any(|l| l.contains("WARN") && l.contains(&expected) && l.contains("mount again")), "{text}");
}
