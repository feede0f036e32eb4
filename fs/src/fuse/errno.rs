//! The one place where strata's errors become errno values for the kernel. Every I/O error keeps
//! its OS code; anything without one is EIO, never a guessed code.

use std::io;

use fuser::Errno;

use crate::error::Error;

pub fn from_io(err: &io::Error) -> Errno {
    match err.raw_os_error() {
        Some(code) if code > 0 => Errno::from_i32(code),
        _ => Errno::EIO,
    }
}

pub fn from_error(err: &Error) -> Errno {
    match err {
        Error::Io { cause, .. } => from_io(cause),
        Error::NoSuchPath(_) => Errno::ENOENT,
        Error::UnsafeEntryPath { .. }
        | Error::HardLinkTargetMissing { .. }
        | Error::Unsupported { .. }
        | Error::CorruptArchive { .. }
        | Error::DigestMismatch { .. }
        | Error::BadImage { .. }
        | Error::ParentNotDirectory { .. }
        | Error::Mount { .. } => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_os_codes_and_falls_back_to_eio() {
        assert_eq!(from_io(&io::Error::from_raw_os_error(libc::ENOTDIR)), Errno::ENOTDIR);
        assert_eq!(from_io(&io::Error::other("no code")), Errno::EIO);
        assert_eq!(from_error(&Error::io("/x", io::Error::from_raw_os_error(libc::EACCES))), Errno::EACCES);
        assert_eq!(from_error(&Error::NoSuchPath("a".into())), Errno::ENOENT);
        assert_eq!(from_error(&Error::bad_image("/x", "bad")), Errno::EIO);
    }
}
