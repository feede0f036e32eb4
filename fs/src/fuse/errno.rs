//! The one place where strata's errors become errno values for the kernel. Every I/O error keeps
//! its OS code; anything without one is EIO, never a guessed code. Answers that mean trouble on
//! the host (EIO, ENOSPC, …), rather than a caller asking for something that is not there or not
//! allowed, are logged here with the error's own message, so a daemon detached from its terminal
//! still says what failed (`strata --log FILE`).

use std::io;

use fuser::Errno;

pub fn from_io(err: &io::Error) -> Errno {
    let code = match err.raw_os_error() {
        Some(code) if code > 0 => code,
        _ => libc::EIO,
    };
    if !is_routine(code) {
        tracing::warn!("a request failed: {err}");
    }
    Errno::from_i32(code)
}

/// The answers of a healthy filesystem to callers: names that are missing or taken, permissions,
/// wrong kinds of files, unsupported requests. Everything else (EIO, ENOSPC, EDQUOT, ENOMEM,
/// EUCLEAN …) points at the host or the image and is worth a log line.
fn is_routine(code: i32) -> bool {
    matches!(
        code,
        libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::EACCES
            | libc::EPERM
            | libc::EROFS
            | libc::ENODATA
            | libc::ENAMETOOLONG
            | libc::EINVAL
            | libc::EXDEV
            | libc::ELOOP
            | libc::ETXTBSY
            | libc::EBADF
            | libc::ENOSYS
            | libc::EOPNOTSUPP
            | libc::ERANGE
            | libc::EAGAIN
            | libc::EINTR
            | libc::EMLINK
            | libc::EFBIG
            | libc::E2BIG
            | libc::EBUSY
            | libc::ESPIPE
            | libc::EOVERFLOW
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_os_codes_and_falls_back_to_eio() {
        assert_eq!(from_io(&io::Error::from_raw_os_error(libc::ENOTDIR)), Errno::ENOTDIR);
        assert_eq!(from_io(&io::Error::other("no code")), Errno::EIO);
    }
}
