//! The one error type of strata-runner. Messages say what failed, on which path or for which
//! container, and what to do; the CLI adds context with anyhow.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Not `source`: the message already carries the cause, and chained printing would repeat it.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },

    /// A system call that is not about one path (unshare, pivot_root, capset, …).
    #[error("{what}: {cause}")]
    Sys { what: String, cause: io::Error },

    /// The user's options or the image's config cannot be turned into a container.
    #[error("{0}")]
    Invalid(String),

    #[error("cgroup {}: {detail}", path.display())]
    Cgroup { path: PathBuf, detail: String },

    #[error("container {name:?}: {detail}")]
    Container { name: String, detail: String },

    #[error(transparent)]
    Fs(#[from] strata_fs::Error),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, cause: io::Error) -> Error {
        Error::Io { path: path.into(), cause }
    }

    /// Wraps a failed system call with what strata was doing.
    pub fn sys(what: impl Into<String>, cause: impl Into<io::Error>) -> Error {
        Error::Sys { what: what.into(), cause: cause.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> Error {
        Error::Invalid(detail.into())
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
