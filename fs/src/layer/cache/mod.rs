//! The cache directory shared by every mount and process: persisted layer indexes, decompressed
//! layer blobs, and host copies of files that containers open (shared page cache). Everything is
//! written to a temporary file in the destination directory and renamed into place, so a reader
//! never sees a partial file. Only files made by this user or by root are read back
//! ([`trusted`]): a cache directory others can write to cannot plant an index or a layer. [`prune`]
//! lists and shrinks it.

pub mod prune;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// True for a cache file this user or root made. Another user who can write to the cache
/// directory (a shared `STRATA_CACHE`, a directory in /tmp) could have put any other there: a
/// crafted index or decompressed layer, served as the layer its name claims.
pub fn trusted(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw() || m.uid() == 0)
}

/// Bumped whenever the index encoding or its meaning changes; old indexes are then ignored.
pub const INDEX_FORMAT_VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$STRATA_CACHE`, else `/var/cache/strata` for root, else `$XDG_CACHE_HOME/strata`
    /// (`~/.cache/strata`), else (no home) `strata-UID` in the temporary directory.
    pub fn from_env() -> Cache {
        if let Some(dir) = std::env::var_os("STRATA_CACHE").filter(|v| !v.is_empty()) {
            return Cache::new(dir);
        }
        if nix::unistd::geteuid().is_root() {
            return Cache::new("/var/cache/strata");
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
        match base {
            Some(base) => Cache::new(base.join("strata")),
            None => Cache::new(std::env::temp_dir().join(format!("strata-{}", nix::unistd::geteuid()))),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the index of the layer with this key lives.
    pub fn index_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("index/v{INDEX_FORMAT_VERSION}")).join(key_file_name(key))
    }

    /// Where the decompressed tar of a compressed layer lives, named by its diff_id.
    pub fn blob_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("blobs").join(key_file_name(diff_id))
    }

    /// Where the shared copy of the file whose bytes start at `offset` of a layer's tar lives
    /// (see `Layer::shared_copy`).
    pub fn shared_file_path(&self, layer_key: &str, offset: u64) -> PathBuf {
        self.root.join("files").join(key_file_name(layer_key)).join(offset.to_string())
    }

    /// Writes `dest` through a temporary file in its directory and renames it into place.
    pub fn write_atomic<T>(&self, dest: &Path, write: impl FnOnce(&mut File) -> io::Result<T>) -> Result<T> {
        let dir = dest.parent().expect("cache paths have a parent");
        fs::create_dir_all(dir).at(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).at(dir)?;
        let value = write(tmp.as_file_mut()).at(tmp.path())?;
        tmp.as_file().sync_data().at(tmp.path())?;
        tmp.persist(dest).map_err(|e| e.error).at(dest)?;
        Ok(value)
    }
}

/// `sha256:abc` becomes `sha256-abc`: one file name, no separators.
pub(crate) fn key_file_name(key: &str) -> String {
    key.replace([':', '/'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_this_user_or_root_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        fs::write(&path, b"").unwrap();
        assert!(trusted(&File::open(&path).unwrap()), "this user's own file");
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(1234), None).unwrap();
            assert!(!trusted(&File::open(&path).unwrap()), "another user's file");
        }
    }
}
