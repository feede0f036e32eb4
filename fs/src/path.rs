//! Path normalisation for layer entries: pure byte manipulation, no syscalls.
//!
//! Layer paths are stored relative to the image root, without leading `/` or `./`, without
//! trailing `/`, with `//` collapsed; the root itself is the empty path. Paths that climb out of
//! the root or are absolute are refused, because a layer must never name anything outside it.

/// Why an entry path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Absolute,
    ClimbsOut,
    Empty,
    NulByte,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Absolute => "is absolute",
            PathProblem::ClimbsOut => "climbs out of the root with '..'",
            PathProblem::Empty => "is empty",
            PathProblem::NulByte => "contains a NUL byte",
        })
    }
}

impl std::error::Error for PathProblem {}

/// Normalises a tar entry path. `./a//b/` becomes `a/b`; `.` and `./` become the root (empty).
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Empty);
    }
    if raw.contains(&0) {
        return Err(PathProblem::NulByte);
    }
    if raw[0] == b'/' {
        return Err(PathProblem::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err(PathProblem::ClimbsOut),
            name => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Ok(out)
}

/// Splits a normalised path into (parent, name). The root has no parent.
pub fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    })
}

/// Joins a normalised parent path and a component name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    out.extend_from_slice(parent);
    if !parent.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// True when `path` is `ancestor` or lies below it.
pub fn is_within(path: &[u8], ancestor: &[u8]) -> bool {
    ancestor.is_empty()
        || (path.starts_with(ancestor) && (path.len() == ancestor.len() || path[ancestor.len()] == b'/'))
}

/// The proper ancestors of a normalised path, nearest last: `a/b/c` gives `a`, `a/b`.
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter().enumerate().filter(|(_, &b)| b == b'/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dots_slashes_and_root() {
        assert_eq!(normalize(b"./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
        assert_eq!(normalize(b"a/./b").unwrap(), b"a/b");
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(normalize(b"../etc"), Err(PathProblem::ClimbsOut));
        assert_eq!(normalize(b"a/../../b"), Err(PathProblem::ClimbsOut));
        assert_eq!(normalize(b"/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(normalize(b""), Err(PathProblem::Empty));
        assert_eq!(normalize(b"a\0b"), Err(PathProblem::NulByte));
    }

    #[test]
    fn splits_joins_and_ancestors() {
        assert_eq!(split_parent(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split_parent(b"a"), Some((&b""[..], &b"a"[..])));
        assert_eq!(split_parent(b""), None);
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(!is_within(b"ab", b"a"));
        assert!(is_within(b"x", b""));
        let anc: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(anc, vec![&b"a"[..], &b"a/b"[..]]);
    }
}
