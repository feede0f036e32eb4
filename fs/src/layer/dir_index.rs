//! Indexing a plain host directory used as a layer (an extracted layer, or an overlayfs upper or
//! lower directory). Reads every whiteout form: `.wh.` names, 0/0 character devices, and the
//! overlayfs opaque/whiteout xattrs. Never follows symlinks; never writes.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::index::{Entry, IndexBuilder, Kind, LayerIndex, Timestamp, Xattrs};
use super::whiteout::{self, WhiteoutName};
use crate::error::{IoContext, Result};
use crate::path;

/// A host directory tree cannot hold what the builder refuses: entries below files, hard links
/// to directories or to names not yet walked (the first name of a link set is always indexed first).
const HOST_TREE: &str = "a host directory tree is well formed";

pub fn index_dir(root: &Path) -> Result<LayerIndex> {
    let mut builder = IndexBuilder::default();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let meta = fs::symlink_metadata(root).at(root)?;
    builder.add(entry_from(root, b"", &meta)?).expect(HOST_TREE);
    if xattrs(root)?.iter().any(|(n, v)| whiteout::OPAQUE_XATTRS.contains(&&**n) && whiteout::is_opaque_value(v)) {
        builder.add_opaque_dir(b"");
    }
    walk(root, b"", &mut builder, &mut links)?;
    Ok(builder.finish())
}

fn walk(
    host_dir: &Path,
    rel_dir: &[u8],
    builder: &mut IndexBuilder,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(host_dir).at(host_dir)?.collect::<std::io::Result<_>>().at(host_dir)?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let name = child.file_name();
        let host = child.path();
        match whiteout::classify(name.as_bytes()) {
            WhiteoutName::Opaque => {
                builder.add_opaque_dir(rel_dir);
                continue;
            }
            WhiteoutName::Hides(hidden) => {
                builder.add_whiteout(&path::join(rel_dir, hidden));
                continue;
            }
            WhiteoutName::Metadata => continue,
            WhiteoutName::Plain => {}
        }
        let rel = path::join(rel_dir, name.as_bytes());
        let meta = fs::symlink_metadata(&host).at(&host)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            builder.add_whiteout(&rel);
            continue;
        }
        let entry = entry_from(&host, &rel, &meta)?;
        if ft.is_file()
            && meta.len() == 0
            && entry.xattrs.iter().any(|(n, _)| whiteout::WHITEOUT_XATTRS.contains(&&**n))
        {
            builder.add_whiteout(&rel);
            continue;
        }
        if ft.is_dir() {
            if entry.xattrs.iter().any(|(n, v)| whiteout::OPAQUE_XATTRS.contains(&&**n) && whiteout::is_opaque_value(v))
            {
                builder.add_opaque_dir(&rel);
            }
            builder.add(entry).expect(HOST_TREE);
            walk(&host, &rel, builder, links)?;
            continue;
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                builder.add_hard_link(&rel, first).expect(HOST_TREE);
                continue;
            }
            links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        builder.add(entry).expect(HOST_TREE);
    }
    Ok(())
}

fn entry_from(host: &Path, rel: &[u8], meta: &fs::Metadata) -> Result<Entry> {
    let ft = meta.file_type();
    let kind = Kind::of_host(ft);
    let mut e = Entry::new(rel, kind);
    e.mode = meta.mode() & 0o7777;
    e.uid = meta.uid();
    e.gid = meta.gid();
    e.mtime = Timestamp { sec: meta.mtime(), nsec: meta.mtime_nsec() as u32 };
    match kind {
        Kind::File => e.size = meta.len(),
        Kind::Symlink => {
            e.link_target = fs::read_link(host).at(host)?.as_os_str().as_bytes().into();
            e.size = e.link_target.len() as u64;
        }
        Kind::CharDevice | Kind::BlockDevice => {
            e.rdev_major = libc::major(meta.rdev());
            e.rdev_minor = libc::minor(meta.rdev());
        }
        _ => {}
    }
    e.xattrs = xattrs(host)?;
    Ok(e)
}

/// Every extended attribute of `path` itself (not of a symlink's target), sorted by name.
fn xattrs(path: &Path) -> Result<Xattrs> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("host paths have no NUL");
    let names = read_sized(path, |buf, len| unsafe { libc::llistxattr(c_path.as_ptr(), buf.cast(), len) })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name).expect("xattr names have no NUL");
        let value =
            read_sized(path, |buf, len| unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len) })?;
        out.push((name.into(), value.into()));
    }
    out.sort();
    Ok(out)
}

/// Calls a size-then-fill xattr syscall, retrying if the value grew in between.
fn read_sized(path: &Path, call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(err).at(path),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            return Err(std::io::Error::last_os_error()).at(path);
        }
    }
}
