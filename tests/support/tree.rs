//! A snapshot of a directory tree as the kernel shows it (lstat, readlink, xattrs, content
//! digests), so two trees — a strata mount and a reference unpack — compare with one assert.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub target: Option<String>,
    pub content: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub nlink: u64,
}

/// Every path below `root` (relative, `/`-separated) with its node; also the inode of each path.
pub fn snapshot(root: &Path) -> (BTreeMap<String, Node>, BTreeMap<String, u64>) {
    let mut nodes = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    walk(root, root, &mut nodes, &mut inodes);
    (nodes, inodes)
}

fn walk(root: &Path, dir: &Path, nodes: &mut BTreeMap<String, Node>, inodes: &mut BTreeMap<String, u64>) {
    for child in std::fs::read_dir(dir).unwrap() {
        let path = child.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "file"
        };
        let node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if ft.is_dir() { 0 } else { meta.size() },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            rdev: meta.rdev(),
            target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap().to_string_lossy().into_owned()),
            content: ft.is_file().then(|| format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()))),
            xattrs: xattrs(&path),
            nlink: if ft.is_dir() { 0 } else { meta.nlink() },
        };
        inodes.insert(rel.clone(), meta.ino());
        nodes.insert(rel, node);
        if ft.is_dir() {
            walk(root, &path, nodes, inodes);
        }
    }
}

/// User-visible xattrs (`user.*`, `trusted.*`), as strata promises to show them.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name).into_owned();
        if !(shown.starts_with("user.") || shown.starts_with("trusted.")) {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(len >= 0, "lgetxattr {shown} on {}", path.display());
        value.truncate(len as usize);
        out.insert(shown, value);
    }
    out
}

/// Lists the differences between two snapshots, one line each (empty when equal).
pub fn differences(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out.push(format!("missing in strata: {path}")),
            Some(a) if a != e => out.push(format!("{path}:\n  expected {e:?}\n  strata   {a:?}")),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        out.push(format!("extra in strata: {path}"));
    }
    out
}
