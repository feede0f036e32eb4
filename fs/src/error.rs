//! The one error type of strata-fs. Messages say what failed, on which path, and what to do;
//! the FUSE adapter turns them into errno values in exactly one place (`fuse::errno`).

use std::io;
use std::path::PathBuf;

use crate::path::PathProblem;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Not `source`: the message already carries the cause, and chained printing would repeat it.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },

    #[error("layer {layer}: entry {entry:?} {problem}; refusing the layer")]
    UnsafeEntryPath { layer: String, entry: String, problem: PathProblem },

    #[error("layer {layer}: hard link {link:?} points at {target:?}, which is not an earlier entry of the same layer")]
    HardLinkTargetMissing { layer: String, link: String, target: String },

    #[error("layer {layer}: entry {entry:?} is {what}, which strata does not support")]
    Unsupported { layer: String, entry: String, what: String },

    #[error("layer {layer}: corrupt or truncated archive: {detail}")]
    CorruptArchive { layer: String, detail: String },

    #[error("{}: digest mismatch: expected {expected}, computed {actual}; the blob is corrupt or was modified", path.display())]
    DigestMismatch { path: PathBuf, expected: String, actual: String },

    #[error("{}: {detail}", path.display())]
    BadImage { path: PathBuf, detail: String },

    #[error("layer {layer}: entry {entry:?} lies under {parent:?}, which is not a directory")]
    ParentNotDirectory { layer: String, entry: String, parent: String },

    #[error("{0:?}: no such path in the image")]
    NoSuchPath(String),

    #[error("layer {layer}: cannot store it in the cache: {}: {cause}; make room there, or point STRATA_CACHE at a writable directory with space", path.display())]
    CacheWrite { layer: String, path: PathBuf, cause: io::Error },

    #[error("layer {layer}: {cause}")]
    Index { layer: String, cause: io::Error },

    #[error("mount on {}: {detail}", path.display())]
    Mount { path: PathBuf, detail: String },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, cause: io::Error) -> Error {
        Error::Io { path: path.into(), cause }
    }

    pub fn bad_image(path: impl Into<PathBuf>, detail: impl Into<String>) -> Error {
        Error::BadImage { path: path.into(), detail: detail.into() }
    }
}

/// Adds the path to an `io::Result`, so every I/O error says where it happened.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
