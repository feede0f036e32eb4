//! The on-disk encoding of a layer index: a small header (magic, format version, payload length,
//! CRC-32 of the payload) and a little-endian payload. Decoding validates everything, so a
//! truncated, corrupt or foreign file is reported (and rebuilt by the caller), never trusted.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::blob::Compression;
use super::by_dir::ByDirectory;
use super::cache::INDEX_FORMAT_VERSION;
use super::index::{Entry, Kind, LayerIndex, Timestamp};
use super::LayerInfo;

const MAGIC: &[u8; 8] = b"STRATAIX";
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why a persisted index was not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeProblem {
    NotAnIndex,
    OtherVersion(u32),
    Truncated,
    ChecksumMismatch,
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeProblem::NotAnIndex => f.write_str("not a strata index"),
            DecodeProblem::OtherVersion(v) => write!(f, "index format version {v}, expected {INDEX_FORMAT_VERSION}"),
            DecodeProblem::Truncated => f.write_str("truncated"),
            DecodeProblem::ChecksumMismatch => f.write_str("checksum mismatch"),
            DecodeProblem::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

pub fn encode(info: &LayerInfo, index: &LayerIndex) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + index.entries.len() * 96));
    w.str(&info.stored_digest);
    w.str(&info.diff_id);
    w.u8(info.compression as u8);
    w.u64(info.stored_size);
    w.u64(info.uncompressed_size);
    w.u64(index.entries.len() as u64);
    for e in &index.entries {
        w.bytes(&e.path);
        w.u8(e.kind as u8);
        w.u32(e.mode);
        w.u32(e.uid);
        w.u32(e.gid);
        w.u64(e.mtime.sec as u64);
        w.u32(e.mtime.nsec);
        w.u64(e.size);
        w.u64(e.data_offset);
        w.u32(e.rdev_major);
        w.u32(e.rdev_minor);
        w.bytes(&e.link_target);
        w.u32(e.link_id);
        w.u32(e.xattrs.len() as u32);
        for (name, value) in &e.xattrs {
            w.bytes(name);
            w.bytes(value);
        }
    }
    for list in [&index.whiteouts, &index.opaque_dirs] {
        w.u64(list.len() as u64);
        for path in list {
            w.bytes(path);
        }
    }
    let payload = w.0;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The payload's checksum: CRC-32, which catches the accidental damage a cache file can suffer
/// (truncation, torn or flipped bytes) at memory speed; each container start checks its image's
/// indexes, so this is paid on every start. (Deliberate rewrites are the cache owner's to
/// prevent: a stronger hash stored next to the data would not stop them either.)
fn crc32(payload: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    crc.sum()
}

/// The header's checks (magic, format version); returns the payload length it announces.
fn check_header(data: &[u8]) -> Result<u64, DecodeProblem> {
    if data.len() < HEADER_LEN {
        return Err(if data.starts_with(MAGIC) || MAGIC.starts_with(data) {
            DecodeProblem::Truncated
        } else {
            DecodeProblem::NotAnIndex
        });
    }
    if &data[..8] != MAGIC {
        return Err(DecodeProblem::NotAnIndex);
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != INDEX_FORMAT_VERSION {
        return Err(DecodeProblem::OtherVersion(version));
    }
    Ok(u64::from_le_bytes(data[12..20].try_into().expect("8 bytes")))
}

fn read_info(r: &mut Reader<'_>) -> Result<LayerInfo, DecodeProblem> {
    Ok(LayerInfo {
        stored_digest: r.string()?,
        diff_id: r.string()?,
        compression: Compression::from_u8(r.u8()?).ok_or(DecodeProblem::Malformed("compression"))?,
        stored_size: r.u64()?,
        uncompressed_size: r.u64()?,
    })
}

/// Only the layer's description, from the start of an index file (its first KiB is plenty),
/// without the checksum: enough to tell which decompressed blob an index is served from.
pub fn decode_info(head: &[u8]) -> Result<LayerInfo, DecodeProblem> {
    check_header(head)?;
    read_info(&mut Reader(&head[HEADER_LEN..]))
}

pub fn decode(data: &[u8]) -> Result<(LayerInfo, LayerIndex), DecodeProblem> {
    let (info, encoded) = decode_lazily(data.to_vec())?;
    Ok((info, encoded.to_index().expect("decoded from memory")))
}

/// A validated index kept encoded: each entry is decoded when asked for. An encoded entry takes
/// about a third of the memory of a decoded one, which matters to a container's daemon: it reads
/// only the entries of directories it looks into. Once [`EncodedIndex::read_in_place`] has been
/// called, the payload is not held in memory at all but read from its cache file where needed:
/// its pages are then the page cache's, one copy for every daemon of a host that mounts the layer.
#[derive(Debug)]
pub struct EncodedIndex {
    /// The index file's bytes (the payload from [`HEADER_LEN`]), until
    /// [`EncodedIndex::read_in_place`] lets them go.
    in_memory: Option<Vec<u8>>,
    /// The cache file this payload was read from (it starts at [`HEADER_LEN`]), if known.
    file: Option<(File, PathBuf)>,
    /// Where entry `i` starts in the payload; the last element is where the entries end.
    offsets: Box<[u32]>,
    pub whiteouts: Vec<Box<[u8]>>,
    pub opaque_dirs: Vec<Box<[u8]>>,
}

/// Entries whose bytes lie at most this far apart in the file are read with one pread.
const READ_GAP: usize = 16 << 10;
/// The most bytes one pread of entries asks for.
const READ_SPAN: usize = 1 << 20;

impl EncodedIndex {
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers the cache file the payload was read from (read through `file`, so the same inode).
    pub fn set_file(&mut self, file: File, path: PathBuf) {
        self.file = Some((file, path));
    }

    /// Drops the payload from memory when the cache file can serve it instead.
    pub fn read_in_place(&mut self) {
        if self.file.is_some() {
            self.in_memory = None;
        }
    }

    /// Entries `indices`, in that order. From the file, entries close to each other are read
    /// together (a directory's entries usually are), and each is checked again as it is decoded:
    /// a cache file truncated or garbled since it was validated gives an error, never a panic.
    /// (The cache is its owner's: a consistent rewrite in place is not guarded against.)
    pub fn entries(&self, indices: &[u32]) -> io::Result<Vec<Entry>> {
        let bounds = |i: u32| (self.offsets[i as usize] as usize, self.offsets[i as usize + 1] as usize);
        if let Some(payload) = self.payload_in_memory() {
            let decode = |&i: &u32| read_entry(&mut Reader(&payload[bounds(i).0..])).expect("validated when decoded");
            return Ok(indices.iter().map(decode).collect());
        }
        let (file, path) = self.file.as_ref().expect("the payload is in memory or in its file");
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while let Some(&first) = rest.first() {
            let (span_start, mut span_end) = bounds(first);
            let mut run = 1;
            while let Some(&next) = rest.get(run) {
                let (start, end) = bounds(next);
                if start < span_end || start - span_end > READ_GAP || end - span_start > READ_SPAN {
                    break;
                }
                span_end = end;
                run += 1;
            }
            let mut buf = vec![0u8; span_end - span_start];
            std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, (HEADER_LEN + span_start) as u64)
                .map_err(|e| changed_in_place(path, &e.to_string()))?;
            for &i in &rest[..run] {
                let (start, end) = bounds(i);
                let mut r = Reader(&buf[start - span_start..end - span_start]);
                let entry = read_entry(&mut r).map_err(|problem| changed_in_place(path, &problem.to_string()))?;
                out.push(entry);
            }
            rest = &rest[run..];
        }
        Ok(out)
    }

    fn payload_in_memory(&self) -> Option<&[u8]> {
        self.in_memory.as_deref().map(|data| &data[HEADER_LEN..])
    }

    /// The payload: borrowed while in memory, else read whole from the file and checked again.
    fn payload(&self) -> io::Result<Cow<'_, [u8]>> {
        if let Some(payload) = self.payload_in_memory() {
            return Ok(Cow::Borrowed(payload));
        }
        let (file, path) = self.file.as_ref().expect("the payload is in memory or in its file");
        let read_whole = || {
            let mut data = vec![0u8; file.metadata()?.len() as usize];
            std::os::unix::fs::FileExt::read_exact_at(file, &mut data, 0).map(|()| data)
        };
        let data = read_whole().map_err(|e| changed_in_place(path, &e.to_string()))?;
        let (_, again) = decode_lazily(data).map_err(|problem| changed_in_place(path, &problem.to_string()))?;
        if again.offsets != self.offsets {
            return Err(changed_in_place(path, "other entries"));
        }
        let mut data = again.in_memory.expect("just read");
        data.drain(..HEADER_LEN);
        Ok(Cow::Owned(data))
    }

    /// The entries arranged by directory (for a merge that reads one directory at a time).
    pub fn by_directory(&self) -> io::Result<ByDirectory> {
        let payload = self.payload()?;
        let entry = |i: usize| path_kind_link(&payload[self.offsets[i] as usize..]);
        Ok(ByDirectory::build(self.len(), entry, &self.whiteouts, &self.opaque_dirs))
    }

    pub fn to_index(&self) -> io::Result<LayerIndex> {
        let payload = self.payload()?;
        let entry = |i: usize| read_entry(&mut Reader(&payload[self.offsets[i] as usize..])).expect("validated");
        Ok(LayerIndex {
            entries: (0..self.len()).map(entry).collect(),
            whiteouts: self.whiteouts.clone(),
            opaque_dirs: self.opaque_dirs.clone(),
        })
    }
}

/// An index file that no longer holds what was validated: someone wrote into the cache.
fn changed_in_place(path: &Path, detail: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the cached index {} changed while in use ({detail}); unmount, then mount again to rebuild it",
            path.display()
        ),
    )
}

/// An entry's path, kind and hard-link set, decoding nothing else (from validated bytes).
fn path_kind_link(bytes: &[u8]) -> (Box<[u8]>, Kind, u32) {
    let mut r = Reader(bytes);
    let read = (|| {
        let path = r.bytes()?;
        let kind = Kind::from_u8(r.u8()?).ok_or(DecodeProblem::Malformed("entry kind"))?;
        r.take(FIXED_FIELDS)?;
        r.skip_bytes()?;
        Ok::<_, DecodeProblem>((path, kind, r.u32()?))
    })();
    read.expect("validated when decoded")
}

/// Validates an index file completely (header, checksum, every entry) and keeps it encoded.
pub fn decode_lazily(data: Vec<u8>) -> Result<(LayerInfo, EncodedIndex), DecodeProblem> {
    let len = check_header(&data)?;
    let payload_len = data.len() - HEADER_LEN;
    if (payload_len as u64) < len {
        return Err(DecodeProblem::Truncated);
    }
    if payload_len as u64 != len {
        return Err(DecodeProblem::Malformed("length"));
    }
    if crc32(&data[HEADER_LEN..]).to_le_bytes() != data[20..24] {
        return Err(DecodeProblem::ChecksumMismatch);
    }
    let payload = &data[HEADER_LEN..];
    // Entry offsets are kept as u32: a larger index (possible only with huge PAX xattrs) is
    // refused, so its layer is indexed again on each mount rather than read at wrapped offsets.
    if u32::try_from(payload.len()).is_err() {
        return Err(DecodeProblem::Malformed("size over 4 GiB"));
    }
    let mut r = Reader(payload);
    let info = read_info(&mut r)?;
    let count = r.count()?;
    let mut offsets = Vec::with_capacity(count + 1);
    for _ in 0..count {
        offsets.push((payload.len() - r.0.len()) as u32);
        check_entry(&mut r)?;
    }
    offsets.push((payload.len() - r.0.len()) as u32);
    let whiteouts = r.path_list()?;
    let opaque_dirs = r.path_list()?;
    if !r.0.is_empty() {
        return Err(DecodeProblem::Malformed("trailing bytes"));
    }
    let encoded = EncodedIndex { offsets: offsets.into(), whiteouts, opaque_dirs, in_memory: Some(data), file: None };
    Ok((info, encoded))
}

/// The bytes of an entry's fixed-size fields after its kind: mode, uid, gid, mtime (8 + 4),
/// size, data offset, device major and minor.
const FIXED_FIELDS: usize = 4 + 4 + 4 + 12 + 8 + 8 + 4 + 4;

/// Checks one entry's encoding as [`read_entry`] reads it, allocating nothing.
fn check_entry(r: &mut Reader<'_>) -> Result<(), DecodeProblem> {
    r.skip_bytes()?;
    Kind::from_u8(r.u8()?).ok_or(DecodeProblem::Malformed("entry kind"))?;
    r.take(FIXED_FIELDS)?;
    r.skip_bytes()?;
    r.u32()?;
    for _ in 0..r.u32()? {
        r.skip_bytes()?;
        r.skip_bytes()?;
    }
    Ok(())
}

fn read_entry(r: &mut Reader<'_>) -> Result<Entry, DecodeProblem> {
    let path = r.bytes()?;
    let kind = Kind::from_u8(r.u8()?).ok_or(DecodeProblem::Malformed("entry kind"))?;
    let mut e = Entry::new(&path, kind);
    e.mode = r.u32()?;
    e.uid = r.u32()?;
    e.gid = r.u32()?;
    e.mtime = Timestamp { sec: r.u64()? as i64, nsec: r.u32()? };
    e.size = r.u64()?;
    e.data_offset = r.u64()?;
    e.rdev_major = r.u32()?;
    e.rdev_minor = r.u32()?;
    e.link_target = r.bytes()?;
    e.link_id = r.u32()?;
    let xattrs = r.u32()? as usize;
    for _ in 0..xattrs {
        e.xattrs.push((r.bytes()?, r.bytes()?));
    }
    Ok(e)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeProblem> {
        if self.0.len() < n {
            return Err(DecodeProblem::Malformed("payload"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeProblem> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeProblem> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeProblem> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A element count, bounded by the bytes left so a corrupt count cannot allocate wildly.
    fn count(&mut self) -> Result<usize, DecodeProblem> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(DecodeProblem::Malformed("count"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<Box<[u8]>, DecodeProblem> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.into())
    }
    fn skip_bytes(&mut self) -> Result<(), DecodeProblem> {
        let n = self.u32()? as usize;
        self.take(n).map(|_| ())
    }
    fn string(&mut self) -> Result<String, DecodeProblem> {
        String::from_utf8(self.bytes()?.into_vec()).map_err(|_| DecodeProblem::Malformed("string"))
    }
    fn path_list(&mut self) -> Result<Vec<Box<[u8]>>, DecodeProblem> {
        let n = self.count()?;
        (0..n).map(|_| self.bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (LayerInfo, LayerIndex) {
        let mut e = Entry::new(b"etc/passwd", Kind::File);
        e.mode = 0o644;
        e.size = 42;
        e.data_offset = 1536;
        e.mtime = Timestamp { sec: 1_700_000_000, nsec: 123 };
        e.xattrs.push((b"user.k"[..].into(), b"v"[..].into()));
        let info = LayerInfo {
            stored_digest: "sha256:aa".into(),
            diff_id: "sha256:bb".into(),
            compression: Compression::Gzip,
            stored_size: 10,
            uncompressed_size: 20,
        };
        let index = LayerIndex {
            entries: vec![Entry::new(b"", Kind::Dir), e],
            whiteouts: vec![b"gone"[..].into()],
            opaque_dirs: vec![b"opq"[..].into()],
        };
        (info, index)
    }

    #[test]
    fn round_trips() {
        let (info, index) = sample();
        let (info2, index2) = decode(&encode(&info, &index)).unwrap();
        assert_eq!(info2, info);
        assert_eq!(index2, index);
    }

    #[test]
    fn an_encoded_index_reads_entries_one_at_a_time() {
        let (info, mut index) = sample();
        let mut linked = Entry::new(b"etc/link", Kind::Symlink);
        (linked.link_target, linked.link_id) = (b"passwd"[..].into(), 7);
        index.entries.push(linked);
        let (_, encoded) = decode_lazily(encode(&info, &index)).unwrap();
        assert_eq!(encoded.len(), 3);
        for (i, e) in index.entries.iter().enumerate() {
            assert_eq!(encoded.entries(&[i as u32]).unwrap(), [e.clone()]);
        }
        assert_eq!(encoded.entries(&[2, 0]).unwrap(), [index.entries[2].clone(), index.entries[0].clone()]);
        assert_eq!(encoded.to_index().unwrap(), index);
        assert_eq!(encoded.by_directory().unwrap().link_set(7), [2]);
    }

    /// Many entries, some with large xattrs, so that reads span several preads.
    fn many() -> (LayerInfo, LayerIndex) {
        let (info, mut index) = sample();
        for i in 0..3000u32 {
            let mut e = Entry::new(format!("d{}/f{i:05}", i % 7).as_bytes(), Kind::File);
            e.size = i as u64;
            if i % 500 == 0 {
                e.xattrs.push((b"user.big"[..].into(), vec![i as u8; 40_000].into()));
            }
            index.entries.push(e);
        }
        (info, index)
    }

    fn in_place(data: &[u8]) -> (tempfile::TempDir, PathBuf, EncodedIndex) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        std::fs::write(&path, data).unwrap();
        let (_, mut encoded) = decode_lazily(data.to_vec()).unwrap();
        encoded.set_file(File::open(&path).unwrap(), path.clone());
        encoded.read_in_place();
        (dir, path, encoded)
    }

    /// Read in place from its file, an index gives what it gives from memory, whichever entries
    /// are asked for together (near each other, far apart, out of order, over large entries).
    #[test]
    fn an_index_read_in_place_gives_the_same_entries() {
        let (info, index) = many();
        let data = encode(&info, &index);
        let (_dir, _path, encoded) = in_place(&data);
        let all: Vec<u32> = (0..index.entries.len() as u32).collect();
        assert_eq!(encoded.entries(&all).unwrap(), index.entries);
        let picks: Vec<u32> = vec![2999, 5, 6, 7, 1500, 1501, 2, 2500, 0, 2502];
        let expected: Vec<Entry> = picks.iter().map(|&i| index.entries[i as usize].clone()).collect();
        assert_eq!(encoded.entries(&picks).unwrap(), expected);
        assert_eq!(encoded.to_index().unwrap(), index);
        let arranged = encoded.by_directory().unwrap();
        assert_eq!(arranged.root(), Some(0));
    }

    /// A cache file written into after it was validated (truncated, or bytes changed) gives an
    /// error naming it, never a panic or a wrong entry.
    #[test]
    fn an_index_changed_in_place_under_a_reader_is_an_error() {
        let (info, index) = many();
        let data = encode(&info, &index);
        let (_dir, path, encoded) = in_place(&data);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(data.len() as u64 / 2).unwrap();
        let err = encoded.entries(&[2999]).unwrap_err();
        assert!(err.to_string().contains("changed while in use") && err.to_string().contains("index"), "{err}");
        assert!(encoded.to_index().is_err() && encoded.by_directory().is_err());

        let (_dir, path, encoded) = in_place(&data);
        let mut garbled = data.clone();
        for b in &mut garbled[HEADER_LEN + 200..] {
            *b = 0xff;
        }
        std::fs::write(&path, &garbled).unwrap();
        let picks: Vec<u32> = (0..index.entries.len() as u32).step_by(97).collect();
        let err = encoded.entries(&picks).unwrap_err();
        assert!(err.to_string().contains("changed while in use"), "{err}");
        assert!(encoded.to_index().is_err());
    }

    #[test]
    fn the_layer_description_reads_from_the_first_kib() {
        let (info, index) = sample();
        let data = encode(&info, &index);
        assert_eq!(decode_info(&data[..data.len().min(1024)]).unwrap(), info);
        assert_eq!(
            decode_info(b"not an index at all, and long enough to hold a header"),
            Err(DecodeProblem::NotAnIndex)
        );
    }

    #[test]
    fn rejects_truncation_corruption_and_foreign_files() {
        let (info, index) = sample();
        let data = encode(&info, &index);
        assert_eq!(decode(&data[..data.len() - 1]), Err(DecodeProblem::Truncated));
        assert_eq!(decode(&data[..10]), Err(DecodeProblem::Truncated));
        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), Err(DecodeProblem::ChecksumMismatch));
        assert_eq!(
            decode(b"#!/bin/sh\nexit 0\n........................................................"),
            Err(DecodeProblem::NotAnIndex)
        );
        let mut other = data;
        other[8] = 99;
        assert_eq!(decode(&other), Err(DecodeProblem::OtherVersion(99)));
    }
}
