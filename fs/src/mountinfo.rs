//! `/proc/PID/mountinfo` lines, parsed: the one reader of that format for the filesystem's mount
//! lifecycle and the runner (cgroup hierarchies, state clean-up). Pure text handling.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The fields of one mountinfo line strata uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine<'a> {
    /// `major:minor` of the filesystem (field 3).
    pub device: &'a str,
    /// The root of the mount within its filesystem (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Filesystem type, after the ` - ` separator.
    pub fstype: &'a str,
    pub source: &'a str,
    /// Per-superblock options (the last field).
    pub super_options: &'a str,
}

/// Parses one line; None for a malformed one.
pub fn parse_line(line: &str) -> Option<MountLine<'_>> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(MountLine {
        device: fields.get(2)?,
        root: PathBuf::from(unescape(fields.get(3)?)),
        mount_point: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(sep + 1)?,
        source: fields.get(sep + 2)?,
        super_options: fields.get(sep + 3).copied().unwrap_or(""),
    })
}

/// Every well-formed line of a mountinfo text.
pub fn parse(text: &str) -> impl Iterator<Item = MountLine<'_>> {
    text.lines().filter_map(parse_line)
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (`\\040`).
pub fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, b| acc.wrapping_mul(8).wrapping_add(b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_paths() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn parses_fields_around_optional_tags() {
        let line = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.device, "0:32");
        assert_eq!((m.fstype, m.source, m.super_options), ("cgroup", "cgroup", "rw,memory"));
        assert!(parse_line("garbage").is_none());
    }
}
