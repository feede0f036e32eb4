//! Copying a lower file's bytes into the work directory ([`crate::layer::blob::copy_range`]),
//! synced before the copy is renamed into the upper.

use std::fs::{self, File};
use std::io;
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
    crate::layer::blob::copy_range(source.file, source.offset, source.len, &out)?;
    out.sync_data()
}
