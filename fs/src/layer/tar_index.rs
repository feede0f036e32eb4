//! Indexing a tar layer (ustar, GNU long names and links, PAX) in one pass over its headers,
//! seeking over file data: the index records where each file's bytes start so that reads are
//! served from the archive itself. OCI whiteouts become index records, never entries.

use std::io::{Read, Seek};

use base64::Engine;
use tar::EntryType;

use super::index::{BuildProblem, Entry, IndexBuilder, Kind, LayerIndex, Timestamp};
use super::whiteout::{self, WhiteoutName};
use crate::error::{Error, Result};
use crate::path;

/// libarchive writes xattr values as base64 with or without padding.
const LIBARCHIVE_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Indexes the tar read from `reader`, whose total length is `len`. `layer` names the layer in
/// errors; `progress` is told the archive position after each entry.
pub fn index_tar<R: Read + Seek>(reader: R, len: u64, layer: &str, progress: &dyn Fn(u64)) -> Result<LayerIndex> {
    let corrupt = |detail: String| Error::CorruptArchive { layer: layer.to_string(), detail };
    let mut archive = tar::Archive::new(reader);
    let mut builder = IndexBuilder::default();
    for item in archive.entries_with_seek().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = item.map_err(|e| corrupt(e.to_string()))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = shown_in_errors(&raw_path);
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        let unsupported =
            |what: &str| Error::Unsupported { layer: layer.to_string(), entry: shown.clone(), what: what.to_string() };
        let refused = |problem: BuildProblem, target: String| match problem {
            BuildProblem::HardLinkTargetMissing => {
                Error::HardLinkTargetMissing { layer: layer.to_string(), link: shown.clone(), target }
            }
            BuildProblem::HardLinkToDirectory => unsupported("a hard link to a directory"),
            BuildProblem::ParentNotDirectory(parent) => Error::ParentNotDirectory {
                layer: layer.to_string(),
                entry: shown.clone(),
                parent: String::from_utf8_lossy(&parent).into_owned(),
            },
        };
        match entry_type.as_byte() {
            b'g' => continue, // PAX global header: no file of its own
            b'S' => return Err(unsupported("a GNU sparse file")),
            b'M' => return Err(unsupported("a multi-volume continuation")),
            b'V' => continue, // GNU volume label: not a file
            _ => {}
        }
        let normalized = path::normalize(&raw_path).map_err(|problem| Error::UnsafeEntryPath {
            layer: layer.to_string(),
            entry: shown.clone(),
            problem,
        })?;

        let bad = |field: &str, e: std::io::Error| corrupt(format!("entry {shown:?}: bad {field}: {e}"));
        let mut e = Entry::new(&normalized, Kind::File);
        e.mode = header.mode().map_err(|err| bad("mode", err))? & 0o7777;
        e.uid = header.uid().map_err(|err| bad("uid", err))? as u32;
        e.gid = header.gid().map_err(|err| bad("gid", err))? as u32;
        e.mtime = Timestamp { sec: header.mtime().map_err(|err| bad("mtime", err))? as i64, nsec: 0 };
        let link_name = entry.link_name_bytes().map(|l| l.into_owned());
        let data_offset = entry.raw_file_position();
        let size = entry.size();
        if let Some(pax) = entry.pax_extensions().map_err(|err| bad("PAX header", err))? {
            for ext in pax {
                let ext = ext.map_err(|err| bad("PAX record", err))?;
                apply_pax(&mut e, ext.key_bytes(), ext.value_bytes()).map_err(|what| match what {
                    PaxProblem::Sparse => unsupported("a PAX sparse file"),
                    PaxProblem::Malformed(field) => corrupt(format!("entry {shown:?}: malformed PAX {field}")),
                })?;
            }
        }
        e.xattrs.sort();
        progress(data_offset + size);
        // Go's archive/tar (Docker, containerd) and Python read no data after a header-only entry
        // whatever its size field says, where the tar crate skips that many bytes: the layer
        // would show another tree here than everywhere else.
        if size != 0 && !matches!(entry_type, EntryType::Regular | EntryType::Continuous) {
            return Err(corrupt(format!(
                "entry {shown:?} (tar type {:?}) declares {size} bytes of data, which its type never has: \
                 tar readers disagree on where the next entry starts",
                entry_type.as_byte() as char
            )));
        }

        if let Some((parent, name)) = path::split_parent(&normalized) {
            match whiteout::classify(name) {
                WhiteoutName::Opaque => {
                    builder.add_opaque_dir(parent);
                    continue;
                }
                WhiteoutName::Hides(hidden) => {
                    builder.add_whiteout(&path::join(parent, hidden));
                    continue;
                }
                WhiteoutName::Metadata => continue,
                WhiteoutName::Plain => {}
            }
        }

        match entry_type {
            EntryType::Link => {
                let target = link_name.ok_or_else(|| corrupt(format!("hard link {shown:?} has no target")))?;
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let target = path::normalize(&target).map_err(|problem| Error::UnsafeEntryPath {
                    layer: layer.to_string(),
                    entry: target_shown.clone(),
                    problem,
                })?;
                builder.add_hard_link(&normalized, &target).map_err(|problem| refused(problem, target_shown))?;
                continue;
            }
            EntryType::Regular | EntryType::Continuous => {
                if data_offset.checked_add(size).is_none_or(|end| end > len) {
                    return Err(corrupt(format!(
                        "entry {shown:?} claims {size} bytes at offset {data_offset}, past the end of the archive ({len} bytes)"
                    )));
                }
                e.size = size;
                e.data_offset = data_offset;
            }
            EntryType::Directory => e.kind = Kind::Dir,
            EntryType::Symlink => {
                e.kind = Kind::Symlink;
                e.link_target = link_name.ok_or_else(|| corrupt(format!("symlink {shown:?} has no target")))?.into();
                e.size = e.link_target.len() as u64;
            }
            EntryType::Char | EntryType::Block => {
                e.kind = if entry_type == EntryType::Char { Kind::CharDevice } else { Kind::BlockDevice };
                e.rdev_major = header.device_major().map_err(|err| bad("device major", err))?.unwrap_or(0);
                e.rdev_minor = header.device_minor().map_err(|err| bad("device minor", err))?.unwrap_or(0);
            }
            EntryType::Fifo => e.kind = Kind::Fifo,
            other => return Err(unsupported(&format!("of tar type {:?}", other.as_byte() as char))),
        }
        builder.add(e).map_err(|problem| refused(problem, String::new()))?;
    }
    Ok(builder.finish())
}

/// An entry's path as error messages show it: lossy UTF-8, cut after 1,024 bytes (a GNU or PAX
/// long name can be as long as the archive).
fn shown_in_errors(path: &[u8]) -> String {
    const SHOWN: usize = 1024;
    match path.len() > SHOWN {
        true => format!("{}… ({} bytes)", String::from_utf8_lossy(&path[..SHOWN]), path.len()),
        false => String::from_utf8_lossy(path).into_owned(),
    }
}

enum PaxProblem {
    Sparse,
    Malformed(&'static str),
}

/// Applies the PAX records that tar's ustar fields cannot carry: sub-second mtime and xattrs.
/// (path, linkpath, size, uid and gid are applied by the tar crate itself.)
fn apply_pax(e: &mut Entry, key: &[u8], value: &[u8]) -> std::result::Result<(), PaxProblem> {
    if key.starts_with(b"GNU.sparse.") {
        return Err(PaxProblem::Sparse);
    }
    if key == b"mtime" {
        e.mtime = parse_pax_time(value).ok_or(PaxProblem::Malformed("mtime"))?;
    } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
        e.xattrs.push((name.into(), value.into()));
    } else if let Some(encoded) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
        let name = percent_decode(encoded).ok_or(PaxProblem::Malformed("xattr name"))?;
        let value = LIBARCHIVE_BASE64.decode(value).map_err(|_| PaxProblem::Malformed("xattr value"))?;
        e.xattrs.retain(|(n, _)| **n != *name);
        e.xattrs.push((name.into(), value.into()));
    }
    Ok(())
}

/// `1700000000.5` → (1700000000, 500000000); negative times as `-1.5` are before the epoch.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    // Digits only (no second sign): then negating cannot overflow.
    if whole.is_empty() || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = whole.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !negative {
        Timestamp { sec, nsec }
    } else if nsec == 0 {
        Timestamp { sec: -sec, nsec: 0 }
    } else {
        Timestamp { sec: -sec - 1, nsec: 1_000_000_000 - nsec }
    })
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        h
    }

    fn index(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Result<LayerIndex> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let data = b.into_inner().unwrap();
        let len = data.len() as u64;
        index_tar(Cursor::new(data), len, "test", &|_| {})
    }

    #[test]
    fn records_files_dirs_links_and_whiteouts() {
        let idx = index(|b| {
            b.append(&header("./etc/", EntryType::Directory, 0), &[][..]).unwrap();
            b.append(&header("etc/hosts", EntryType::Regular, 5), &b"hello"[..]).unwrap();
            let mut h = header("etc/hosts2", EntryType::Link, 0);
            h.set_link_name("etc/hosts").unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            b.append(&header("etc/.wh.shadow", EntryType::Regular, 0), &[][..]).unwrap();
            b.append(&header("var/.wh..wh..opq", EntryType::Regular, 0), &[][..]).unwrap();
            b.append(&header("var/.wh..wh.plnk", EntryType::Regular, 0), &[][..]).unwrap();
        })
        .unwrap();
        let paths: Vec<String> = idx.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect();
        assert_eq!(paths, vec!["etc", "etc/hosts", "etc/hosts2"]);
        assert_eq!(idx.entries[1].size, 5);
        assert_eq!(idx.entries[1].data_offset, 1024);
        assert_eq!(idx.entries[1].link_id, idx.entries[2].link_id);
        assert_eq!(idx.whiteouts, vec![Box::from(&b"etc/shadow"[..])]);
        assert_eq!(idx.opaque_dirs, vec![Box::from(&b"var"[..])]);
    }

    #[test]
    fn refuses_paths_that_escape_the_root() {
        let mut h = header("x", EntryType::Regular, 0);
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        let err = index(|b| b.append(&h, &[][..]).unwrap()).unwrap_err();
        assert!(matches!(err, Error::UnsafeEntryPath { .. }), "{err}");
        assert!(err.to_string().contains("../escape"), "{err}");
    }

    #[test]
    fn refuses_hard_links_to_missing_targets() {
        let err = index(|b| {
            let mut h = header("a", EntryType::Link, 0);
            h.set_link_name("nowhere").unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"a\"") && msg.contains("nowhere"), "{msg}");
    }

    #[test]
    fn refuses_sizes_past_the_end() {
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header("big", EntryType::Regular, 4), &b"abcd"[..]).unwrap();
        let mut data = b.into_inner().unwrap();
        // Claim 8 GiB in the size field, then cut the archive after the header.
        data[124..136].copy_from_slice(b"77777777777\0");
        let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
        h.set_cksum();
        data[..512].copy_from_slice(h.as_bytes());
        data.truncate(1024);
        let err = index_tar(Cursor::new(&data), 1024, "t", &|_| {}).unwrap_err();
        assert!(matches!(err, Error::CorruptArchive { .. }), "{err}");
    }

    /// Docker and Python read no data after a symlink, directory or device header whatever its
    /// size says; the tar crate would skip that much and show another tree: refused.
    #[test]
    fn refuses_data_sizes_on_header_only_entries() {
        for kind in [EntryType::Symlink, EntryType::Directory, EntryType::Char, EntryType::Fifo, EntryType::Link] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = header("odd", kind, 512);
            if matches!(kind, EntryType::Symlink | EntryType::Link) {
                h.set_link_name("target").unwrap();
            }
            h.set_cksum();
            b.append(&h, &[0u8; 512][..]).unwrap();
            b.append(&header("hidden", EntryType::Regular, 1), &b"x"[..]).unwrap();
            let data = b.into_inner().unwrap();
            let err = index_tar(Cursor::new(&data), data.len() as u64, "t", &|_| {}).unwrap_err();
            assert!(
                matches!(err, Error::CorruptArchive { .. }) && err.to_string().contains("\"odd\""),
                "{kind:?}: {err}"
            );
        }
    }

    #[test]
    fn parses_pax_times_and_xattr_names() {
        assert_eq!(parse_pax_time(b"1700000000.25"), Some(Timestamp { sec: 1_700_000_000, nsec: 250_000_000 }));
        assert_eq!(parse_pax_time(b"5"), Some(Timestamp { sec: 5, nsec: 0 }));
        assert_eq!(parse_pax_time(b"-1.5"), Some(Timestamp { sec: -2, nsec: 500_000_000 }));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"--9223372036854775808"), None, "a second sign");
        assert_eq!(parse_pax_time(b"-+5"), None);
        assert_eq!(parse_pax_time(b"-9223372036854775807.5"), Some(Timestamp { sec: i64::MIN, nsec: 500_000_000 }));
        assert_eq!(percent_decode(b"user.a%3Db").unwrap(), b"user.a=b");
    }
}
