//! fuse-overlayfs' stored ownership and permissions ("stat override"), which containers-storage
//! relies on with its `force_mask` option: a layer's files keep a forced host mode and owner,
//! and the ones to show are in an xattr, `UID:GID:MODE` (decimal, decimal, octal). A layer is in
//! that mode when its root directory carries one of the [`NAMES`] (the first found, in this
//! order, names the xattr read for every object of the layer); only directories and regular
//! files are overridden, as fuse-overlayfs does. An upper mounted with `xattr_permissions=1|2`
//! stores chmod and chown there too (see `upper`). Pure: names and value rules only.

/// `xattr_permissions=1`: settable by root only.
pub const PRIVILEGED: &[u8] = b"security.fuseoverlayfs.override_stat";
/// Written by containers-storage when it extracts a layer with `force_mask`.
pub const CONTAINERS: &[u8] = b"user.containers.override_stat";
/// `xattr_permissions=2`: settable by the files' owner, so by a rootless daemon.
pub const USER: &[u8] = b"user.fuseoverlayfs.override_stat";
/// Every override xattr, in the order fuse-overlayfs looks for them on a layer's root.
pub const NAMES: [&[u8]; 3] = [PRIVILEGED, CONTAINERS, USER];

/// What fuse-overlayfs writes on an upper root that has no stored mode and no lower to take one
/// from: root-owned, read-only.
pub const ROOT_DEFAULT: Stored = Stored { uid: 0, gid: 0, mode: 0o555 };

/// Ownership and permission bits as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, setuid, setgid and sticky (mask 0o7777).
    pub mode: u32,
}

impl Stored {
    /// Reads `UID:GID:MODE`; fields after the third (containers-storage adds the object type to
    /// some) are ignored, as fuse-overlayfs' `sscanf` does.
    pub fn parse(value: &[u8]) -> Option<Stored> {
        let text = std::str::from_utf8(value).ok()?;
        let text = text.trim_end_matches('\0');
        let mut fields = text.split(':');
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        Some(Stored { uid, gid, mode: mode & 0o7777 })
    }

    /// The value fuse-overlayfs writes (`%d:%d:%o`).
    pub fn format(&self) -> Vec<u8> {
        format!("{}:{}:{:o}", self.uid, self.gid, self.mode & 0o7777).into_bytes()
    }
}

/// The xattr a layer's objects keep their stored mode in, from its root directory's xattr names.
pub fn layer_name(mut root_has: impl FnMut(&[u8]) -> bool) -> Option<&'static [u8]> {
    NAMES.into_iter().find(|name| root_has(name))
}

/// True for the objects fuse-overlayfs overrides.
pub fn applies_to(kind: super::index::Kind) -> bool {
    matches!(kind, super::index::Kind::Dir | super::index::Kind::File)
}

/// Shows `entry` with the mode stored in its xattr `name` (a layer's [`layer_name`]), where
/// there is one and it applies; a value that does not parse leaves the host's mode.
pub fn apply(entry: &mut super::index::Entry, name: &[u8]) {
    if !applies_to(entry.kind) {
        return;
    }
    let stored = entry.xattrs.iter().find(|(n, _)| &**n == name).and_then(|(_, v)| Stored::parse(v));
    if let Some(stored) = stored {
        entry.uid = stored.uid;
        entry.gid = stored.gid;
        entry.mode = stored.mode;
    }
}

/// True for the override xattrs: bookkeeping, never shown, never copied as they are.
pub fn is_override_xattr(name: &[u8]) -> bool {
    NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_fuse_overlayfs_and_containers_storage_write() {
        assert_eq!(Stored::parse(b"1000:100:755"), Some(Stored { uid: 1000, gid: 100, mode: 0o755 }));
        assert_eq!(Stored::parse(b"0:0:04755"), Some(Stored { uid: 0, gid: 0, mode: 0o4755 }));
        assert_eq!(Stored::parse(b"0:5:0644:file"), Some(Stored { uid: 0, gid: 5, mode: 0o644 }));
        assert_eq!(Stored::parse(b"0:0:100644"), Some(Stored { uid: 0, gid: 0, mode: 0o644 }));
        assert_eq!(Stored::parse(b"0:0:755\0"), Some(Stored { uid: 0, gid: 0, mode: 0o755 }));
        for bad in [&b""[..], b"0:0", b"a:0:755", b"0:0:789", b"-1:0:755", b"\xff"] {
            assert_eq!(Stored::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_as_fuse_overlayfs_does_and_reads_back() {
        let stored = Stored { uid: 1000, gid: 1000, mode: 0o2775 };
        assert_eq!(stored.format(), b"1000:1000:2775");
        assert_eq!(Stored::parse(&stored.format()), Some(stored));
    }

    #[test]
    fn only_directories_and_files_with_a_valid_value_are_overridden() {
        use crate::layer::index::{Entry, Kind};
        let with = |kind, value: &[u8]| {
            let mut e = Entry::new(b"x", kind);
            (e.uid, e.gid, e.mode) = (1000, 1000, 0o700);
            e.xattrs = vec![(CONTAINERS.into(), value.into())];
            apply(&mut e, CONTAINERS);
            (e.uid, e.gid, e.mode)
        };
        assert_eq!(with(Kind::File, b"0:0:4755"), (0, 0, 0o4755));
        assert_eq!(with(Kind::Dir, b"33:33:1777"), (33, 33, 0o1777));
        assert_eq!(with(Kind::Symlink, b"0:0:777"), (1000, 1000, 0o700));
        assert_eq!(with(Kind::File, b"garbage"), (1000, 1000, 0o700));
        let mut other_name = Entry::new(b"x", Kind::File);
        other_name.xattrs = vec![(USER.into(), b"0:0:644".to_vec().into())];
        apply(&mut other_name, CONTAINERS);
        assert_eq!((other_name.uid, other_name.mode), (0, 0));
    }

    #[test]
    fn a_layer_takes_the_first_name_its_root_has() {
        assert_eq!(layer_name(|n| n == USER || n == CONTAINERS), Some(CONTAINERS));
        assert_eq!(layer_name(|n| n == USER), Some(USER));
        assert_eq!(layer_name(|_| false), None);
    }
}
