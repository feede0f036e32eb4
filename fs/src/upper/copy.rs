//! Copying a lower file's bytes into the work directory: `copy_file_range` from the layer's
//! backing file at the file's offset (in-kernel copy, reflink where the filesystem can), with a
//! read/write loop where the kernel cannot.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where a lower file's bytes are: `len` bytes at `offset` of `file`.
pub struct CopySource<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub len: u64,
}

/// Copies the bytes and syncs them, so that once the copy is renamed into the upper it is whole
/// on disk too (as kernel overlayfs does unless mounted volatile).
pub fn copy_file(source: &CopySource, dest: &Path) -> io::Result<()> {
    let out = fs::OpenOptions::new().write(true).create_new(true).open(dest)?;
    copy_bytes(source, &out)?;
    out.sync_data()
}

fn copy_bytes(source: &CopySource, out: &File) -> io::Result<()> {
    let mut done = 0u64;
    while done < source.len {
        let mut off_in = (source.offset + done) as libc::loff_t;
        let mut off_out = done as libc::loff_t;
        let want = (source.len - done).min(1 << 30) as usize;
        // SAFETY: two open descriptors and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(source.file.as_raw_fd(), &mut off_in, out.as_raw_fd(), &mut off_out, want, 0)
        };
        if n > 0 {
            done += n as u64;
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ended before the file's last byte"));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                return copy_by_reading(source, out, done)
            }
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
    Ok(())
}

fn copy_by_reading(source: &CopySource, out: &File, mut done: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while done < source.len {
        let want = buf.len().min((source.len - done) as usize);
        let n = source.file.read_at(&mut buf[..want], source.offset + done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ended before the file's last byte"));
        }
        out.write_all_at(&buf[..n], done)?;
        done += n as u64;
    }
    Ok(())
}
