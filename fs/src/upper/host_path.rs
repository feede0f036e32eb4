//! Host paths of upper objects, whatever their length. The kernel takes at most PATH_MAX bytes
//! of path in one call, but a mount's paths may come close to that below its mountpoint (the
//! kernel resolves them a name at a time), and the upper's own path then takes them past it. A
//! path too long for one call is reached through a descriptor of a directory above it, opened a
//! few thousand bytes at a time, and named `/proc/self/fd/N/REST`, which every path-taking call
//! resolves as the kernel would the long path. Owns no policy: `Upper` decides what to do there.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// The most bytes of path one call takes, its terminating NUL excluded.
const LONGEST_PATH: usize = libc::PATH_MAX as usize - 1;
/// Bytes of path resolved by one openat(2) on the way down a long path, and the most left for
/// the final call. Names are at most NAME_MAX bytes, so a step always ends at a `/`.
const WALK_STEP: usize = 3072;

/// The host path of an upper object; holds the descriptor a long path goes through.
#[derive(Debug)]
pub struct HostPath {
    path: PathBuf,
    _through: Option<OwnedFd>,
}

impl HostPath {
    /// `root` joined with `rel` (a relative path without `.` or `..`): that path when one call
    /// can take it, else (see the module doc) through a directory above it. A directory on the
    /// way that cannot be opened is left for the final call to resolve, and fail on as it would.
    pub fn new(root: &Path, rel: &[u8]) -> HostPath {
        let joined = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(rel)) };
        if joined.as_os_str().len() <= LONGEST_PATH {
            return HostPath { path: joined, _through: None };
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let Ok(mut dir) = nix::fcntl::open(root, flags, Mode::empty()) else {
            return HostPath { path: joined, _through: None };
        };
        let mut rest = rel;
        while rest.len() > WALK_STEP {
            let Some(cut) = rest[..=WALK_STEP].iter().rposition(|&b| b == b'/') else { break };
            match nix::fcntl::openat(dir.as_fd(), Path::new(OsStr::from_bytes(&rest[..cut])), flags, Mode::empty()) {
                Ok(below) => (dir, rest) = (below, &rest[cut + 1..]),
                Err(_) => break,
            }
        }
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        path.push(OsStr::from_bytes(rest));
        HostPath { path, _through: Some(dir) }
    }
}

impl std::ops::Deref for HostPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_paths_are_plain_joins() {
        let host = HostPath::new(Path::new("/upper"), b"a/b");
        assert_eq!(&*host, Path::new("/upper/a/b"));
        assert_eq!(&*HostPath::new(Path::new("/upper"), b""), Path::new("/upper"));
    }

    #[test]
    fn paths_longer_than_one_call_takes_are_reached_through_a_directory_above() {
        let root = tempfile::tempdir().unwrap();
        let component = "d".repeat(200);
        let mut rel = String::new();
        while rel.len() < 2 * libc::PATH_MAX as usize {
            rel = if rel.is_empty() { component.clone() } else { format!("{rel}/{component}") };
            std::fs::create_dir(HostPath::new(root.path(), rel.as_bytes())).unwrap();
        }
        let file = format!("{rel}/file");
        std::fs::write(HostPath::new(root.path(), file.as_bytes()), b"deep").unwrap();
        let host = HostPath::new(root.path(), file.as_bytes());
        assert!(host.as_os_str().len() <= WALK_STEP + 32, "{}", host.display());
        assert_eq!(std::fs::read(&host).unwrap(), b"deep");
        assert_eq!(std::fs::read_dir(HostPath::new(root.path(), rel.as_bytes())).unwrap().count(), 1);
        let missing = HostPath::new(root.path(), format!("{rel}/missing/file").as_bytes());
        assert_eq!(std::fs::metadata(&missing).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
}
