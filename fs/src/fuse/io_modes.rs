//! The FUSE io mode of every open inode of a writable mount, under the kernel's rules: an inode's
//! opens are either all cached (page cache of the FUSE inode, data through the daemon) or all
//! passthrough (the kernel reads and writes a backing file itself), and every passthrough open of
//! an inode names the same backing file. Which backing that is: the upper file, or, for a file
//! still in a lower layer, a read-only host file holding its bytes (the file of a directory layer
//! itself, or the shared copy of a tar-layer file that container mounts ask for). Also which
//! inodes are being executed, for the one truncation the kernel does not check against that.
//! Owns only this bookkeeping; opening files and registering backings are the caller's.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use fuser::BackingId;

use crate::layer::FileReader;
use crate::overlay::OpenFile;

#[derive(Default)]
pub struct IoModes {
    /// Passthrough was negotiated at init (it needs root, and excludes the writeback cache).
    pub passthrough: bool,
    inodes: Mutex<HashMap<u64, InodeIo>>,
    /// Signalled whenever an open is released.
    released: Condvar,
    handles: DashMap<u64, Handle>,
}

/// What the release of an open file handle undoes.
#[derive(Clone, Copy)]
struct Handle {
    ino: u64,
    passthrough: bool,
    exec: bool,
}

/// The kernel's `__FMODE_EXEC`, set in the flags of the open that execve(2) makes of a program or
/// its interpreter (not in libc). That open stays until the process exits or execs again.
pub const FMODE_EXEC: i32 = 0x20;

/// How long a change of a file's data waits for the last reader pinning it to its lower file to
/// be released: close(2) returns before the kernel's RELEASE reaches the daemon, so a write right
/// after the reader closed would otherwise find it still open. (Needs a second serving thread to
/// read that RELEASE: writable mounts have at least two.)
const RELEASE_GRACE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct InodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Backing>,
    /// Opens made by execve(2): the kernel denies writes to the inode while one lives.
    executing: u32,
}

struct Backing {
    id: Arc<BackingId>,
    /// The backing file holds the lower bytes: read-only, and stale once the inode's data changes.
    lower: bool,
}

impl InodeIo {
    /// True while the inode is served from its lower file: its data must not change until those
    /// opens are closed (their reads would not see it, and no other backing can be named).
    fn pinned_to_lower(&self) -> bool {
        self.backing.as_ref().is_some_and(|b| b.lower)
    }
}

/// What an open needs in order to become a passthrough open.
pub struct Open<'a> {
    pub ino: u64,
    pub file: &'a OpenFile,
    /// The upper file was opened read-write (it can back later writing opens as it is).
    pub read_write: bool,
    /// The file shows set-user-id or set-group-id bits (on the host or stored in an xattr): not
    /// in passthrough, since the daemon must drop them on unprivileged writes.
    pub privilege_bits: bool,
    /// Opens the upper file read-write when `file` is a read-only one.
    pub reopen: &'a dyn Fn() -> io::Result<File>,
    /// Turns a file into a backing id (the reply's `open_backing`).
    pub register: &'a dyn Fn(&File) -> io::Result<BackingId>,
}

impl IoModes {
    /// The io state of every open inode, locked: opens of one inode decide their mode under it.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u64, InodeIo>> {
        self.inodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The io state, locked for a change of `ino`'s data once no open pins the inode to its lower
    /// file and, unless the kernel checked the change against running programs, none executes it
    /// (waiting up to [`RELEASE_GRACE`] for releases in flight); Err(ETXTBSY) if one still does.
    /// The kernel checks every change but the truncation of open(O_RDONLY|O_TRUNC), which it
    /// checks after the daemon has truncated (atomic O_TRUNC): a running program would crash.
    pub fn lock_for_data_change(
        &self,
        ino: u64,
        checked_by_kernel: bool,
    ) -> io::Result<MutexGuard<'_, HashMap<u64, InodeIo>>> {
        let busy = |io: &InodeIo| io.pinned_to_lower() || (!checked_by_kernel && io.executing > 0);
        let deadline = Instant::now() + RELEASE_GRACE;
        let mut inodes = self.lock();
        while inodes.get(&ino).is_some_and(busy) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from_raw_os_error(libc::ETXTBSY));
            }
            inodes = self.released.wait_timeout(inodes, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        Ok(inodes)
    }

    /// Picks the mode of an open and counts it: passthrough when the inode has a backing already
    /// or can get one, cached otherwise. No passthrough while cached opens exist (the kernel
    /// would refuse the mix), for an archive-served lower file (no file of its own), or for a
    /// set-user-id or set-group-id upper file, whose writes must come through the daemon to drop
    /// those bits (the kernel writes a backing file with the mounter's credentials, which keep
    /// them). Returns the backing of a passthrough open; [`IoModes::track`] then records the
    /// handle the open is answered with.
    pub fn adopt(&self, inodes: &mut HashMap<u64, InodeIo>, open: Open<'_>) -> Option<Arc<BackingId>> {
        let io = inodes.entry(open.ino).or_default();
        let backing = if io.cached > 0 || !self.passthrough { None } else { Self::backing(io, &open) };
        match backing {
            Some(_) => io.passthrough += 1,
            None => io.cached += 1,
        }
        backing
    }

    /// Records the handle of an open [`IoModes::adopt`] counted; `exec`: made by execve(2).
    pub fn track(&self, inodes: &mut HashMap<u64, InodeIo>, fh: u64, ino: u64, passthrough: bool, exec: bool) {
        if exec {
            inodes.entry(ino).or_default().executing += 1;
        }
        self.handles.insert(fh, Handle { ino, passthrough, exec });
    }

    fn backing(io: &mut InodeIo, open: &Open<'_>) -> Option<Arc<BackingId>> {
        if let Some(backing) = &io.backing {
            return Some(Arc::clone(&backing.id));
        }
        let (id, lower) = match open.file {
            OpenFile::Lower(FileReader::Host(file)) => ((open.register)(file).ok()?, true),
            OpenFile::Lower(FileReader::InArchive { .. }) => return None,
            OpenFile::Upper(file) => {
                if open.privilege_bits {
                    return None;
                }
                // Read-write whatever this open asks: later opens of the inode share the backing.
                let id = match open.read_write {
                    true => (open.register)(file).ok()?,
                    false => (open.register)(&(open.reopen)().ok()?).ok()?,
                };
                (id, false)
            }
        };
        let id = Arc::new(id);
        io.backing = Some(Backing { id: Arc::clone(&id), lower });
        Some(id)
    }

    pub fn released(&self, fh: u64) {
        let Some((_, Handle { ino, passthrough, exec })) = self.handles.remove(&fh) else { return };
        let mut inodes = self.lock();
        let Some(io) = inodes.get_mut(&ino) else { return };
        io.executing -= u32::from(exec);
        if passthrough {
            io.passthrough -= 1;
            if io.passthrough == 0 {
                io.backing = None;
            }
        } else {
            io.cached -= 1;
        }
        if io.passthrough == 0 && io.cached == 0 {
            inodes.remove(&ino);
        }
        self.released.notify_all();
    }
}
