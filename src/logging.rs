//! Where strata's log goes: the `--log FILE` option and the `STRATA_LOG` level. The libraries
//! only emit `tracing` events (failed requests, mounts, unmounts); this module alone decides
//! their destination and detail. A container's log goes to its own file by default.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// The variable that sets the detail: error, warn, info, debug or trace.
pub const LEVEL_VARIABLE: &str = "STRATA_LOG";

/// Sends events to `file` (appended to, so several daemons can share one) or to stderr. A
/// background daemon's stderr is /dev/null, so without a file it logs nowhere. The default
/// detail is `info` in a file (every mount and unmount, with its pid) and `warn` on stderr.
pub fn init(file: Option<&Path>) -> Result<()> {
    let level = match std::env::var(LEVEL_VARIABLE) {
        Ok(value) if !value.is_empty() => parse_level(&value)?,
        _ if file.is_some() => Level::INFO,
        _ => Level::WARN,
    };
    let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_timer(TimeAndPid);
    match file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            builder.with_writer(Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Sends events to the file `path`, from the first event on (its directory may not exist yet),
/// each appended as it comes: the log of one container (`strata run` without `--log`), kept in
/// its data directory so that its lines never mix with the container's own stderr. The default
/// detail is `warn`: a start writes nothing there unless something went wrong. Does nothing when
/// the log already has a destination (`--log`).
pub fn init_appending(path: &Path) -> Result<()> {
    let level = match std::env::var(LEVEL_VARIABLE) {
        Ok(value) if !value.is_empty() => parse_level(&value)?,
        _ => Level::WARN,
    };
    let path = path.to_path_buf();
    let _already_set = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_timer(TimeAndPid)
        .with_writer(move || AppendOnWrite(path.clone()))
        .try_init();
    Ok(())
}

/// Opens its file for each write: no descriptor is held, and nothing is made before the first
/// event; a write after the file's directory has gone (`--rm`) is dropped.
struct AppendOnWrite(PathBuf);

impl Write for AppendOnWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().create(true).append(true).mode(0o600).open(&self.0)?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parse_level(value: &str) -> Result<Level> {
    value.parse().map_err(|_| anyhow!("{LEVEL_VARIABLE}={value:?}: use error, warn, info, debug or trace"))
}

/// The time and the process id: a daemon forks from the command that started it, and several
/// daemons may append to one file.
struct TimeAndPid;

impl FormatTime for TimeAndPid {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        SystemTime.format_time(w)?;
        write!(w, " [{}]", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_named_as_tracing_names_them() {
        assert_eq!(parse_level("WARN").unwrap(), Level::WARN);
        assert_eq!(parse_level("debug").unwrap(), Level::DEBUG);
        let err = parse_level("loud").unwrap_err().to_string();
        assert!(err.contains("STRATA_LOG") && err.contains("error, warn"), "{err}");
    }
}
