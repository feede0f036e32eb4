//! The whiteout encodings strata reads: OCI/AUFS names (`.wh.NAME`, `.wh..wh..opq`) in tar and
//! directory layers, and kernel overlayfs' upper format (0/0 character devices, the
//! `trusted.overlay.*` / `user.overlay.*` xattrs) in directory layers, and fuse-overlayfs' own
//! (`user.fuseoverlayfs.opaque`, which it writes where `trusted.*` is refused). Pure name and
//! value rules, shared by the layer readers and the upper.

/// Prefix of an OCI whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Xattrs that mark an opaque directory: overlayfs' privileged and userxattr forms (the upper
/// writes these two), then fuse-overlayfs' unprivileged one.
pub const OPAQUE_XATTRS: [&[u8]; 3] = [b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque"];
/// Overlayfs xattrs that mark a zero-size file as a whiteout.
pub const WHITEOUT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.whiteout", b"user.overlay.whiteout"];

/// What a directory entry's name means to the union.
#[derive(Debug, PartialEq, Eq)]
pub enum WhiteoutName<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: deletes NAME from the layers below.
    Hides(&'a [u8]),
    /// `.wh..wh..opq`: the containing directory is opaque.
    Opaque,
    /// Other `.wh..wh.*` names: AUFS metadata, never shown.
    Metadata,
}

pub fn classify(name: &[u8]) -> WhiteoutName<'_> {
    if name == OPAQUE_MARKER {
        return WhiteoutName::Opaque;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(rest) if rest.starts_with(WHITEOUT_PREFIX) => WhiteoutName::Metadata,
        Some(rest) if !rest.is_empty() => WhiteoutName::Hides(rest),
        Some(_) => WhiteoutName::Metadata,
        None => WhiteoutName::Plain,
    }
}

/// True for xattrs that carry overlay bookkeeping and must never be shown to users: overlayfs'
/// and fuse-overlayfs' own namespaces, and the stored modes of `override_stat`.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
        || super::override_stat::is_override_xattr(name)
}

/// True when an opaque xattr's value means "opaque" (overlayfs writes `y`).
pub fn is_opaque_value(value: &[u8]) -> bool {
    value == b"y"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(b"file"), WhiteoutName::Plain);
        assert_eq!(classify(b".wh.file"), WhiteoutName::Hides(b"file"));
        assert_eq!(classify(b".wh..wh..opq"), WhiteoutName::Opaque);
        assert_eq!(classify(b".wh..wh.plnk"), WhiteoutName::Metadata);
        assert_eq!(classify(b".wh."), WhiteoutName::Metadata);
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.fuseoverlayfs.origin"));
        assert!(is_internal_xattr(b"user.containers.override_stat"));
        assert!(!is_internal_xattr(b"user.containers.other"));
        assert!(!is_internal_xattr(b"user.mime"));
    }
}
