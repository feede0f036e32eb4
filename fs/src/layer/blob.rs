//! Byte access to stored layer blobs: a byte range of a host file (a tar file, a member of a
//! `docker save` archive, a cached decompressed blob), compression detection by magic bytes, and
//! one-time decompression with digest verification. Reads are `pread`s at absolute offsets, so
//! one open file serves every thread and every mount.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// How a layer blob is compressed, detected from its first bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    #[default]
    None = 0,
    Gzip = 1,
    Zstd = 2,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn from_u8(v: u8) -> Option<Compression> {
        Some(match v {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Zstd,
            _ => return None,
        })
    }

    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A byte range of a host file.
#[derive(Clone, Debug)]
pub struct BlobRange {
    pub file: Arc<File>,
    /// The host path, for messages.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl BlobRange {
    /// The whole of `file`.
    pub fn whole(file: File, path: PathBuf) -> io::Result<BlobRange> {
        let len = file.metadata()?.len();
        Ok(BlobRange { file: Arc::new(file), path, offset: 0, len })
    }

    /// Reads at `pos` within the range; short only at the range's end. A host file that ends
    /// before the range does was truncated or replaced after it was opened: an error naming it,
    /// never a silently short file.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if pos >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - pos) as usize);
        let mut done = 0;
        while done < want {
            match self.file.read_at(&mut buf[done..want], self.offset + pos + done as u64) {
                Ok(0) => {
                    let now = self.file.metadata().map_or_else(|e| e.to_string(), |m| format!("{} bytes", m.len()));
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} is {now} long but held at least {} when strata opened it: it was truncated or \
                             replaced under a running mount; restore it (or re-pull the image) and remount",
                            self.path.display(),
                            self.offset + self.len
                        ),
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    pub fn reader(&self) -> RangeReader<'_> {
        RangeReader { range: self, pos: 0 }
    }

    /// The first bytes of the range, enough to tell its compression.
    pub fn compression(&self) -> io::Result<Compression> {
        let mut magic = [0u8; 4];
        let n = self.read_at(&mut magic, 0)?;
        Ok(Compression::detect(&magic[..n]))
    }

    /// sha256 of the range's bytes, as `sha256:<hex>`.
    pub fn sha256(&self, progress: &dyn Fn(u64)) -> io::Result<String> {
        let mut hashing = HashingReader::new(self.reader());
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = hashing.read(&mut buf)?;
            if n == 0 {
                break;
            }
            done += n as u64;
            progress(done);
        }
        Ok(hashing.digest())
    }
}

/// `Read + Seek` over a [`BlobRange`], positions relative to the range start.
pub struct RangeReader<'a> {
    range: &'a BlobRange,
    pos: u64,
}

impl RangeReader<'_> {
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.range.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.range.len.checked_add_signed(d),
        };
        self.pos =
            target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the blob"))?;
        Ok(self.pos)
    }
}

/// Hashes everything read through it with sha256.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new() }
    }

    pub fn digest(self) -> String {
        format!("sha256:{:x}", self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Digests of a decompressed blob: of the stored (compressed) bytes and of the tar inside.
pub struct Decompressed {
    pub stored_digest: String,
    pub diff_id: String,
    pub uncompressed_size: u64,
}

/// Why a decompression failed: the blob (corrupt, truncated, unreadable) or where it was going.
#[derive(Debug)]
pub enum DecompressFailure {
    Input(io::Error),
    Output(io::Error),
}

/// Decompresses `range` into `out`, hashing both sides, reporting compressed bytes consumed.
pub fn decompress(
    range: &BlobRange,
    compression: Compression,
    out: &mut File,
    progress: &dyn Fn(u64),
) -> Result<Decompressed, DecompressFailure> {
    use DecompressFailure::{Input, Output};
    struct Progress<'a, R> {
        inner: R,
        done: u64,
        report: &'a dyn Fn(u64),
    }
    impl<R: Read> Read for Progress<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.done += n as u64;
            (self.report)(self.done);
            Ok(n)
        }
    }
    let mut stored = HashingReader::new(Progress { inner: range.reader(), done: 0, report: progress });
    let mut hasher = Sha256::new();
    let mut writer = io::BufWriter::with_capacity(1 << 20, &mut *out);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    {
        let mut decoder: Box<dyn Read + '_> = match compression {
            Compression::Gzip => {
                Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, &mut stored)))
            }
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut stored).map_err(Input)?),
            Compression::None => {
                return Err(Input(io::Error::new(io::ErrorKind::InvalidInput, "the blob is not compressed")))
            }
        };
        loop {
            let n = decoder.read(&mut buf).map_err(Input)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n]).map_err(Output)?;
            total += n as u64;
        }
    }
    writer.flush().map_err(Output)?;
    drop(writer);
    // Trailing bytes after the last compressed frame would be silently ignored by the decoder;
    // reading the rest keeps the stored digest honest.
    io::copy(&mut stored, &mut io::sink()).map_err(Input)?;
    Ok(Decompressed {
        stored_digest: stored.digest(),
        diff_id: format!("sha256:{:x}", hasher.finalize()),
        uncompressed_size: total,
    })
}

/// Copies `len` bytes at `offset` of `file` to the start of `out`: `copy_file_range` (in-kernel
/// copy, reflink where the filesystem can), `sendfile` across filesystems (where
/// `copy_file_range` answers EXDEV; a splice through the page cache, as kernel overlayfs' own
/// copy-up does), and a read/write loop where the kernel can do neither. Holes of a sparse
/// source stay holes (found with SEEK_DATA/SEEK_HOLE, as kernel overlayfs' copy-up skips them):
/// a 1 GiB sparse file copies as the few blocks it has, not a gigabyte of zeros.
pub fn copy_range(file: &File, offset: u64, len: u64, out: &File) -> io::Result<()> {
    let end = offset + len;
    if file.metadata()?.len() < end {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ended before the file's last byte"));
    }
    let mut copier = Copier { in_kernel: Some(KernelCopy::CopyFileRange), buf: Vec::new() };
    let mut pos = offset;
    while let Some((data, data_end)) = next_data(file, pos, end)? {
        copier.copy(file, data, data_end - data, out, data - offset)?;
        pos = data_end;
    }
    // A hole at the end: the size says where the copy ends.
    out.set_len(len)
}

/// The next stretch of data in `file` from `pos` up to `end` (its start and end), skipping holes;
/// None when only holes are left. Where the filesystem cannot tell, everything is data.
fn next_data(file: &File, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    if pos >= end {
        return Ok(None);
    }
    let data = match seek_data_or_hole(file, pos, libc::SEEK_DATA) {
        Ok(data) => data,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, end))),
        Err(e) => return Err(e),
    };
    if data >= end {
        return Ok(None);
    }
    let hole = seek_data_or_hole(file, data, libc::SEEK_HOLE)?;
    Ok(Some((data, hole.min(end))))
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE (`whence`): where the next data or hole at or after
/// `offset` starts. Moves only the descriptor's file position, which no reader or copy here uses
/// (they all give offsets).
pub fn seek_data_or_hole(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::ENXIO))?;
    // SAFETY: an open descriptor.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

/// Copies byte ranges between files the fastest way the kernel allows for the pair, learning
/// which from the first refusal.
struct Copier {
    in_kernel: Option<KernelCopy>,
    buf: Vec<u8>,
}

impl Copier {
    /// Copies `len` bytes at `from` of `file` to `to` of `out`.
    fn copy(&mut self, file: &File, from: u64, len: u64, out: &File, to: u64) -> io::Result<()> {
        let ended = || io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ended before the file's last byte");
        let mut done = 0u64;
        while done < len {
            let Some(how) = self.in_kernel else {
                self.buf.resize(1 << 20, 0);
                let want = self.buf.len().min((len - done) as usize);
                let n = file.read_at(&mut self.buf[..want], from + done)?;
                out.write_all_at(&self.buf[..n], to + done)?;
                if n == 0 {
                    return Err(ended());
                }
                done += n as u64;
                continue;
            };
            let want = (len - done).min(COPY_CHUNK) as usize;
            match how.copy(file, from + done, out, to + done, want) {
                Ok(0) => return Err(ended()),
                Ok(n) => done += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if how.unsupported(&e) => self.in_kernel = how.fallback(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The in-kernel ways to copy between files, in order of preference.
#[derive(Clone, Copy)]
enum KernelCopy {
    CopyFileRange,
    Sendfile,
}

impl KernelCopy {
    /// Copies up to `want` bytes from `at` of `file` to `to` of `out`; the count copied.
    fn copy(self, file: &File, at: u64, out: &File, to: u64, want: usize) -> io::Result<usize> {
        let mut off_in = at as libc::loff_t;
        let n = match self {
            KernelCopy::CopyFileRange => {
                let mut off_out = to as libc::loff_t;
                // SAFETY: two open descriptors and offsets owned by this frame.
                unsafe { libc::copy_file_range(file.as_raw_fd(), &mut off_in, out.as_raw_fd(), &mut off_out, want, 0) }
            }
            KernelCopy::Sendfile => {
                // sendfile writes at the output's file position.
                // SAFETY: open descriptors, and an offset owned by this frame.
                unsafe {
                    if libc::lseek(out.as_raw_fd(), to as libc::off_t, libc::SEEK_SET) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), &mut off_in, want)
                }
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The error says this way cannot copy between these two files at all.
    fn unsupported(self, e: &io::Error) -> bool {
        match self {
            KernelCopy::CopyFileRange => {
                matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP))
            }
            KernelCopy::Sendfile => matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)),
        }
    }

    fn fallback(self) -> Option<KernelCopy> {
        match self {
            KernelCopy::CopyFileRange => Some(KernelCopy::Sendfile),
            KernelCopy::Sendfile => None,
        }
    }
}

/// The most one copy call is asked for (the kernel caps sendfile below 2 GiB anyway).
const COPY_CHUNK: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::detect(b"ustar"), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }

    #[test]
    fn range_reader_reads_and_seeks_within_its_range() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(b"0123456789").unwrap();
        let range = BlobRange { file: Arc::new(tmp), path: "t".into(), offset: 2, len: 5 };
        let mut r = range.reader();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        r.seek(SeekFrom::Start(3)).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(r.read(&mut b).unwrap(), 2);
        assert_eq!(&b[..2], b"56");
    }

    /// From tmpfs to the temporary directory's filesystem: copy_file_range refuses (EXDEV) and
    /// the copy goes through sendfile; within one file: copy_file_range itself.
    #[test]
    fn copy_range_copies_a_byte_range_within_and_across_filesystems() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for source_dir in [std::path::Path::new("/dev/shm"), &std::env::temp_dir()] {
            let mut source = tempfile::tempfile_in(source_dir).unwrap();
            source.write_all(&data).unwrap();
            let out = tempfile::tempfile().unwrap();
            super::copy_range(&source, 1000, 2_000_000, &out).unwrap();
            let mut copied = Vec::new();
            (&out).seek(SeekFrom::Start(0)).unwrap();
            (&out).read_to_end(&mut copied).unwrap();
            assert!(copied == data[1000..2_001_000], "from {}", source_dir.display());
            let short = super::copy_range(&source, 2_999_000, 5000, &tempfile::tempfile().unwrap());
            assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    /// A sparse source: its data lands at the same places, its holes (at the start, between and
    /// at the end) stay holes in the copy.
    #[test]
    fn copy_range_keeps_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        const MIB: u64 = 1 << 20;
        let source = tempfile::tempfile().unwrap();
        source.set_len(64 * MIB).unwrap();
        source.write_all_at(b"first", 8 * MIB).unwrap();
        source.write_all_at(b"second", 40 * MIB).unwrap();
        let out = tempfile::tempfile().unwrap();
        super::copy_range(&source, MIB, 62 * MIB, &out).unwrap();
        let meta = out.metadata().unwrap();
        assert_eq!(meta.len(), 62 * MIB);
        assert!(meta.blocks() * 512 < 2 * MIB, "{} bytes allocated", meta.blocks() * 512);
        let mut copied = vec![0u8; (62 * MIB) as usize];
        out.read_exact_at(&mut copied, 0).unwrap();
        let mut expected = vec![0u8; (62 * MIB) as usize];
        expected[(7 * MIB) as usize..][..5].copy_from_slice(b"first");
        expected[(39 * MIB) as usize..][..6].copy_from_slice(b"second");
        assert!(copied == expected);
    }
}
