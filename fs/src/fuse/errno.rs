//! The one place where strata's errors become errno values for the kernel. Every I/O error keeps
//! its OS code; anything without one is EIO, never a guessed code. Answers that mean trouble on
//! the host (EIO, ENOSPC, …), rather than a caller asking for something that is not there or not
//! allowed, are logged here with the error's own message, so a daemon detached from its terminal
//! still says what failed (`strata --log FILE`), at most [`LINES_PER_SECOND`] lines a second.

use std::io;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::Errno;

/// A full disk or a vanished layer fails every request: the log says so, without becoming the
/// next thing to fill the disk.
pub const LINES_PER_SECOND: u32 = 20;

static LOG_BUDGET: Mutex<LogBudget> = Mutex::new(LogBudget { second: 0, used: 0, dropped: 0 });

pub fn from_io(err: &io::Error) -> Errno {
    let code = match err.raw_os_error() {
        Some(code) if code > 0 => code,
        _ => libc::EIO,
    };
    if !is_routine(code) {
        log_failure(&format_args!("a request failed: {err}"));
    }
    Errno::from_i32(code)
}

/// Logs why a request failed, within the shared budget of [`LINES_PER_SECOND`] lines: for a
/// failure whose errno alone would not say where (a layer directory that cannot be read).
pub(crate) fn log_failure(line: &dyn std::fmt::Display) {
    let second = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let admitted = LOG_BUDGET.lock().unwrap_or_else(|e| e.into_inner()).admit(second);
    match admitted {
        Admit::Log { dropped_before: 0 } => tracing::warn!("{line}"),
        Admit::Log { dropped_before } => {
            tracing::warn!("{dropped_before} more failed requests were not logged");
            tracing::warn!("{line}");
        }
        Admit::Drop => {}
    }
}

/// How many failure lines this second has had, and how many were left out.
struct LogBudget {
    second: u64,
    used: u32,
    dropped: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log it, after saying how many were left out since the last logged line.
    Log {
        dropped_before: u64,
    },
    Drop,
}

impl LogBudget {
    fn admit(&mut self, second: u64) -> Admit {
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used == LINES_PER_SECOND {
            self.dropped += 1;
            return Admit::Drop;
        }
        self.used += 1;
        Admit::Log { dropped_before: std::mem::take(&mut self.dropped) }
    }
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
    fn a_flood_of_failures_is_logged_at_a_bounded_rate_and_counted() {
        let mut budget = LogBudget { second: 0, used: 0, dropped: 0 };
        let first_second: Vec<Admit> = (0..25).map(|_| budget.admit(7)).collect();
        assert!(first_second[..20].iter().all(|a| *a == Admit::Log { dropped_before: 0 }));
        assert!(first_second[20..].iter().all(|a| *a == Admit::Drop));
        assert_eq!(budget.admit(8), Admit::Log { dropped_before: 5 }, "the next second says how many were left out");
        assert_eq!(budget.admit(8), Admit::Log { dropped_before: 0 });
    }

    #[test]
    fn keeps_os_codes_and_falls_back_to_eio() {
        assert_eq!(from_io(&io::Error::from_raw_os_error(libc::ENOTDIR)), Errno::ENOTDIR);
        assert_eq!(from_io(&io::Error::other("no code")), Errno::EIO);
    }
}
