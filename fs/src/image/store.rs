//! Read access to the files of an image, whether it is a directory (OCI layout, extracted
//! `docker save`) or a tar archive holding one. Members of an archive are served in place as
//! byte ranges of it, so a `docker save` tarball is never extracted.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::layer::blob::BlobRange;
use crate::path;

/// Metadata documents (index, manifests, configs) larger than this are refused as corrupt.
const MAX_DOCUMENT: u64 = 64 << 20;

pub enum Store {
    Dir(PathBuf),
    Archive { range: BlobRange, members: HashMap<Vec<u8>, (u64, u64)> },
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if fs::metadata(path).at(path)?.is_dir() {
            return Ok(Store::Dir(path.to_path_buf()));
        }
        let file = File::open(path).at(path)?;
        let range = BlobRange::whole(file, path.to_path_buf()).at(path)?;
        let members = list_members(&range)?;
        Ok(Store::Archive { range, members })
    }

    pub fn path(&self) -> &Path {
        match self {
            Store::Dir(p) => p,
            Store::Archive { range, .. } => &range.path,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Store::Dir(p) => p.join(name).is_file(),
            Store::Archive { members, .. } => members.contains_key(name.as_bytes()),
        }
    }

    /// A member's bytes as a range of a host file.
    pub fn blob(&self, name: &str) -> Result<BlobRange> {
        match self {
            Store::Dir(dir) => {
                let rel = path::normalize(name.as_bytes())
                    .map_err(|p| Error::bad_image(dir, format!("member {name:?} {p}")))?;
                let host = dir.join(std::str::from_utf8(&rel).unwrap_or(name));
                let file = File::open(&host).at(&host)?;
                BlobRange::whole(file, host.clone()).at(&host)
            }
            Store::Archive { range, members } => {
                let &(offset, len) = members
                    .get(name.as_bytes())
                    .ok_or_else(|| Error::bad_image(&range.path, format!("the archive has no member {name:?}")))?;
                Ok(BlobRange {
                    file: Arc::clone(&range.file),
                    path: range.path.clone(),
                    offset: range.offset + offset,
                    len,
                })
            }
        }
    }

    /// A small member (JSON document) read whole.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let blob = self.blob(name)?;
        if blob.len > MAX_DOCUMENT {
            return Err(Error::bad_image(
                self.path(),
                format!("{name} is {} bytes, too large for an image document", blob.len),
            ));
        }
        let mut out = Vec::with_capacity(blob.len as usize);
        blob.reader().read_to_end(&mut out).at(self.path())?;
        Ok(out)
    }
}

/// Regular files of the outer archive with their data ranges; symlinks and hard links between
/// members (older `docker save` links duplicate layers) resolve to their targets.
fn list_members(range: &BlobRange) -> Result<HashMap<Vec<u8>, (u64, u64)>> {
    let bad = |detail: String| Error::bad_image(&range.path, format!("not a readable image archive: {detail}"));
    let mut members = HashMap::new();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(range.reader());
    for item in archive.entries_with_seek().map_err(|e| bad(e.to_string()))? {
        let entry = item.map_err(|e| bad(e.to_string()))?;
        let Ok(name) = path::normalize(&entry.path_bytes()) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let (offset, len) = (entry.raw_file_position(), entry.size());
            if offset.checked_add(len).is_none_or(|end| end > range.len) {
                return Err(bad(format!(
                    "member {:?} extends past the end of the archive",
                    String::from_utf8_lossy(&name)
                )));
            }
            members.insert(name, (offset, len));
        } else if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                let base = if kind.is_symlink() {
                    path::split_parent(&name).map(|(p, _)| p.to_vec()).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let joined = [base.as_slice(), b"/", &target].concat();
                if let Ok(target) = path::normalize(&resolve_dots(&joined)) {
                    links.push((name, target));
                }
            }
        }
    }
    for (name, target) in links {
        if let Some(&r) = members.get(&target) {
            members.insert(name, r);
        }
    }
    Ok(members)
}

/// Resolves `..` lexically (`a/b/../c` → `a/c`) for link targets inside the archive.
fn resolve_dots(p: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}
