//! The whiteout encodings strata reads: OCI/AUFS names (`.wh.NAME`, `.wh..wh..opq`) in tar and
//! directory layers, and kernel overlayfs' upper format (0/0 character devices, the
//! `trusted.overlay.*` / `user.overlay.*` xattrs) in directory layers. Pure name and value rules;
//! the upper-directory writer of a later issue must use these same constants.

/// Prefix of an OCI whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Overlayfs xattrs that mark an opaque directory (privileged and userxattr forms).
pub const OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];
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

/// True for xattrs that carry overlay bookkeeping and must never be shown to users.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
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
        assert!(!is_internal_xattr(b"user.mime"));
    }
}
