//! One read-only layer: where it comes from ([`LayerSource`]), its index ([`index::LayerIndex`],
//! built by [`tar_index`] or [`dir_index`], persisted by [`codec`] in the [`cache::Cache`]) and
//! access to its file bytes ([`FileReader`]). A loaded [`Layer`] is immutable; share it by `Arc`.
//! A cached index is kept encoded; a read-only view decodes it whole ([`Layer::index`]), a
//! writable mount arranges it by directory ([`Layer::by_directory`]) and from then on reads its
//! entries from the cache file ([`Layer::entries_at`]), so daemons share its pages.

pub mod blob;
pub mod by_dir;
pub mod cache;
pub mod codec;
pub mod dir_index;
pub mod index;
pub mod override_stat;
pub mod tar_index;
pub mod whiteout;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use sha2::{Digest, Sha256};

use blob::{BlobRange, Compression};
use cache::Cache;
use index::{Entry, Kind, LayerIndex};

use crate::error::{Error, IoContext, Result};

/// Facts about a layer's stored blob, recorded in its index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the blob as stored (maybe compressed), `sha256:<hex>`; empty for directories.
    pub stored_digest: String,
    /// sha256 of the uncompressed tar; empty for directories.
    pub diff_id: String,
    pub compression: Compression,
    pub stored_size: u64,
    pub uncompressed_size: u64,
}

/// Where a layer's bytes are, and what the image says they must hash to.
#[derive(Clone, Debug)]
pub enum LayerSource {
    /// A tar (plain, gzip or zstd) stored in a byte range of a host file.
    Blob { range: BlobRange, expected_digest: Option<String>, expected_diff_id: Option<String> },
    /// A plain host directory.
    Directory(PathBuf),
}

impl LayerSource {
    /// A layer given by path: a directory, or a tar file in any supported compression.
    pub fn from_path(path: &Path) -> Result<LayerSource> {
        let meta = fs::metadata(path).at(path)?;
        if meta.is_dir() {
            return Ok(LayerSource::Directory(path.to_path_buf()));
        }
        let file = File::open(path).at(path)?;
        Ok(LayerSource::Blob {
            range: BlobRange::whole(file, path.to_path_buf()).at(path)?,
            expected_digest: None,
            expected_diff_id: None,
        })
    }

    /// How the layer is named in messages and tables.
    pub fn describe(&self) -> String {
        match self {
            LayerSource::Blob { expected_digest: Some(d), .. } => d.clone(),
            LayerSource::Blob { range, .. } if range.offset == 0 => range.path.display().to_string(),
            LayerSource::Blob { range, .. } => format!("{}@{}", range.path.display(), range.offset),
            LayerSource::Directory(p) => p.display().to_string(),
        }
    }
}

/// Where a layer's file bytes are read from.
#[derive(Debug)]
enum Data {
    /// A tar (the original, or its decompressed copy in the cache): files are byte ranges of it.
    /// `key` names the layer in the cache (its digest, or its identity on the host).
    Tar { blob: BlobRange, key: String },
    /// A host directory. `deferred[i]` marks an entry whose metadata is read on first use into
    /// `completed[i]` (see `dir_index`).
    Directory { host: dir_index::HostDir, deferred: Vec<bool>, completed: Box<[OnceLock<Entry>]> },
}

/// A loaded, immutable layer.
#[derive(Debug)]
pub struct Layer {
    pub name: String,
    pub info: LayerInfo,
    index: Indexed,
    data: Data,
    /// The index by directory, made on first use (by a mount that merges lazily).
    by_dir: OnceLock<by_dir::ByDirectory>,
}

/// A layer's index: decoded (as read from a directory or a tar), or as loaded from the cache,
/// each entry decoded when asked for ([`codec::EncodedIndex`]); a whole-stack merge decodes it
/// all once, and the encoded copy goes.
#[derive(Debug)]
enum Indexed {
    Decoded(LayerIndex),
    /// Read-locked to read entries (preads of several threads at once), write-locked to decode or
    /// arrange the whole index.
    Encoded {
        encoded: RwLock<Option<codec::EncodedIndex>>,
        decoded: OnceLock<LayerIndex>,
    },
}

/// Reports progress of a long indexing step: total and done bytes.
pub trait Progress {
    fn start(&self, what: &str, total: u64);
    fn set(&self, done: u64);
    fn finish(&self);
}

/// A [`Progress`] that shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
}

impl Layer {
    /// Loads a layer: its cached index if there is a valid one, else indexes it (decompressing a
    /// compressed blob into the cache once, and verifying the digests the image names) and
    /// persists the index for every later mount.
    pub fn load(source: &LayerSource, cache: &Cache, progress: &dyn Progress) -> Result<Layer> {
        let name = source.describe();
        match source {
            LayerSource::Directory(path) => {
                let host = dir_index::HostDir::open(path)?;
                let dir_index::DirIndex { index, deferred } = host.index()?;
                let completed = (0..index.entries.len()).map(|_| OnceLock::new()).collect();
                let data = Data::Directory { host, deferred, completed };
                Ok(Layer::new(name, LayerInfo::default(), Indexed::Decoded(index), data))
            }
            LayerSource::Blob { range, expected_digest, expected_diff_id } => {
                let key = match expected_digest {
                    Some(d) => d.clone(),
                    None => identity_key(range)?,
                };
                let index_path = cache.index_path(&key);
                if let Some(layer) = Self::load_cached(&name, &key, range, &index_path, cache) {
                    return Ok(layer);
                }
                let (info, index, data) = Self::build(
                    &name,
                    &key,
                    range,
                    expected_digest.as_deref(),
                    expected_diff_id.as_deref(),
                    cache,
                    progress,
                )?;
                let bytes = codec::encode(&info, &index);
                // The index is in memory: this mount needs nothing more, the next one indexes again.
                if let Err(e) = cache.write_atomic(&index_path, |f| io::Write::write_all(f, &bytes)) {
                    tracing::warn!(
                        "layer {name}: its index is not kept for later mounts ({e}); make room in the cache, or point \
                         STRATA_CACHE at a writable directory with space"
                    );
                }
                Ok(Layer::new(name, info, Indexed::Decoded(index), data))
            }
        }
    }

    /// A cached index, if present, valid, and still describing the blob it is served from.
    fn load_cached(name: &str, key: &str, range: &BlobRange, index_path: &Path, cache: &Cache) -> Option<Layer> {
        let file = File::open(index_path).ok().filter(cache::trusted)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes).ok()?;
        let (info, mut encoded) = codec::decode_lazily(bytes).ok()?;
        encoded.set_file(file, index_path.to_path_buf());
        if info.stored_size != range.len {
            return None;
        }
        let data = if info.compression == Compression::None {
            range.clone()
        } else {
            let path = cache.blob_path(&info.diff_id);
            let file = File::open(&path).ok().filter(cache::trusted)?;
            let blob = BlobRange::whole(file, path).ok()?;
            if blob.len != info.uncompressed_size {
                return None;
            }
            blob
        };
        let index = Indexed::Encoded { encoded: RwLock::new(Some(encoded)), decoded: OnceLock::new() };
        Some(Layer::new(name.to_string(), info, index, Data::Tar { blob: data, key: key.to_string() }))
    }

    /// Indexes a tar layer not in the cache: its description, index, and where its bytes are.
    fn build(
        name: &str,
        key: &str,
        range: &BlobRange,
        expected_digest: Option<&str>,
        expected_diff_id: Option<&str>,
        cache: &Cache,
        progress: &dyn Progress,
    ) -> Result<(LayerInfo, LayerIndex, Data)> {
        let compression = range.compression().at(&range.path)?;
        let mismatch = |expected: &str, actual: &str| Error::DigestMismatch {
            path: PathBuf::from(&name),
            expected: expected.into(),
            actual: actual.into(),
        };
        let corrupt = |e: io::Error| Error::CorruptArchive { layer: name.to_string(), detail: e.to_string() };
        let (info, tar) = if compression == Compression::None {
            let digest = if expected_digest.is_some() || expected_diff_id.is_some() {
                progress.start(&format!("verifying {name}"), range.len);
                let d = range.sha256(&|done| progress.set(done)).at(&range.path)?;
                progress.finish();
                d
            } else {
                String::new()
            };
            for expected in [expected_digest, expected_diff_id].into_iter().flatten() {
                if expected != digest {
                    return Err(mismatch(expected, &digest));
                }
            }
            let info = LayerInfo {
                stored_digest: digest.clone(),
                diff_id: digest,
                compression,
                stored_size: range.len,
                uncompressed_size: range.len,
            };
            (info, range.clone())
        } else {
            progress.start(&format!("decompressing {name}"), range.len);
            let unstored = |path: &Path, cause: io::Error| Error::CacheWrite {
                layer: name.to_string(),
                path: path.to_path_buf(),
                cause,
            };
            let tmp_dir = cache.root().join("blobs");
            fs::create_dir_all(&tmp_dir).map_err(|e| unstored(&tmp_dir, e))?;
            let mut tmp =
                tempfile::Builder::new().prefix(".tmp-").tempfile_in(&tmp_dir).map_err(|e| unstored(&tmp_dir, e))?;
            let out = blob::decompress(range, compression, tmp.as_file_mut(), &|done| progress.set(done)).map_err(
                |failure| match failure {
                    blob::DecompressFailure::Input(e) => corrupt(e),
                    blob::DecompressFailure::Output(e) => unstored(tmp.path(), e),
                },
            )?;
            progress.finish();
            if let Some(expected) = expected_digest.filter(|e| *e != out.stored_digest) {
                return Err(mismatch(expected, &out.stored_digest));
            }
            if let Some(expected) = expected_diff_id.filter(|e| *e != out.diff_id) {
                return Err(mismatch(expected, &out.diff_id));
            }
            let blob_path = cache.blob_path(&out.diff_id);
            tmp.as_file().sync_data().map_err(|e| unstored(tmp.path(), e))?;
            let file = tmp.persist(&blob_path).map_err(|e| unstored(&blob_path, e.error))?;
            let info = LayerInfo {
                stored_digest: out.stored_digest,
                diff_id: out.diff_id,
                compression,
                stored_size: range.len,
                uncompressed_size: out.uncompressed_size,
            };
            (info, BlobRange::whole(file, blob_path.clone()).at(&blob_path)?)
        };
        progress.start(&format!("indexing {name}"), tar.len);
        let index = tar_index::index_tar(tar.reader(), tar.len, name, &|done| progress.set(done))?;
        progress.finish();
        Ok((info, index, Data::Tar { blob: tar, key: key.to_string() }))
    }

    fn new(name: String, info: LayerInfo, index: Indexed, data: Data) -> Layer {
        Layer { name, info, index, data, by_dir: OnceLock::new() }
    }

    /// The whole index, decoded (once; a cached index kept encoded is decoded on the first call
    /// and its encoded copy dropped).
    pub fn index(&self) -> Result<&LayerIndex> {
        match &self.index {
            Indexed::Decoded(index) => Ok(index),
            Indexed::Encoded { decoded, .. } if decoded.get().is_some() => Ok(decoded.get().expect("just checked")),
            Indexed::Encoded { encoded, decoded } => {
                let mut kept = encoded.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(index) = decoded.get() {
                    return Ok(index);
                }
                let index = kept.as_ref().expect("kept until decoded").to_index().map_err(|e| self.index_error(e))?;
                *kept = None;
                Ok(decoded.get_or_init(|| index))
            }
        }
    }

    /// The whole index, which [`Layer::index`] has decoded before (the read-only view asks for
    /// it before anything else).
    pub(crate) fn decoded_index(&self) -> &LayerIndex {
        self.index().expect("the whole index is decoded before its entries are asked for")
    }

    fn index_error(&self, cause: io::Error) -> Error {
        Error::Index { layer: self.name.clone(), cause }
    }

    /// Entries `indices` as the index has them (a deferred entry of a directory layer as a
    /// placeholder), in that order.
    pub fn entries_at(&self, indices: &[u32]) -> Result<Vec<Entry>> {
        let decoded_entries = |index: &LayerIndex| indices.iter().map(|&i| index.entries[i as usize].clone()).collect();
        match &self.index {
            Indexed::Decoded(index) => Ok(decoded_entries(index)),
            Indexed::Encoded { encoded, decoded } => {
                match encoded.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
                    Some(encoded) => encoded.entries(indices).map_err(|e| self.index_error(e)),
                    None => Ok(decoded_entries(decoded.get().expect("decoded before the encoded copy goes"))),
                }
            }
        }
    }

    /// Entry `i` as the index has it.
    pub fn entry_at(&self, i: u32) -> Result<Entry> {
        Ok(self.entries_at(&[i])?.pop().expect("one entry asked for"))
    }

    /// The index arranged by directory, for a merge that reads one directory at a time. Built
    /// once; a cached index kept encoded is from then on read from its cache file where needed
    /// (see `codec::EncodedIndex`), not kept in this process' memory.
    pub fn by_directory(&self) -> Result<&by_dir::ByDirectory> {
        if let Some(arranged) = self.by_dir.get() {
            return Ok(arranged);
        }
        let arranged = match &self.index {
            Indexed::Decoded(index) => by_dir::ByDirectory::new(index),
            Indexed::Encoded { encoded, decoded } => {
                let mut kept = encoded.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(arranged) = self.by_dir.get() {
                    return Ok(arranged);
                }
                match kept.as_mut() {
                    Some(encoded) => {
                        let arranged = encoded.by_directory().map_err(|e| self.index_error(e))?;
                        encoded.read_in_place();
                        arranged
                    }
                    None => by_dir::ByDirectory::new(decoded.get().expect("decoded before the encoded copy goes")),
                }
            }
        };
        Ok(self.by_dir.get_or_init(|| arranged))
    }

    /// Entry `i` of the index, its metadata read from the host first if it was deferred. A file
    /// that vanished from a directory layer since the mount keeps its placeholder.
    pub fn entry(&self, i: usize) -> &Entry {
        let placeholder = &self.decoded_index().entries[i];
        match &self.data {
            Data::Directory { host, deferred, completed } if deferred[i] => {
                completed[i].get_or_init(|| host.complete(placeholder).unwrap_or_else(|_| placeholder.clone()))
            }
            _ => placeholder,
        }
    }

    /// The kind of entry `i`, without reading anything deferred.
    pub fn kind(&self, i: usize) -> Kind {
        self.decoded_index().entries[i].kind
    }

    /// Opens the bytes of a file entry for reading.
    pub fn open(&self, entry: &Entry) -> io::Result<FileReader> {
        match &self.data {
            Data::Tar { blob, .. } => {
                Ok(FileReader::InArchive { blob: blob.clone(), start: entry.data_offset, len: entry.size })
            }
            Data::Directory { host, .. } => host.open_file(&entry.path).map(FileReader::Host),
        }
    }

    /// The host directory of a directory layer.
    pub fn host_dir(&self) -> Option<&Path> {
        match &self.data {
            Data::Directory { host, .. } => Some(&host.path),
            Data::Tar { .. } => None,
        }
    }

    /// A host file holding exactly the bytes of file `entry` of this tar layer, made once in the
    /// cache and shared by every mount and process: the kernel can serve it itself (FUSE
    /// passthrough), with one page cache for every container of the image instead of one per
    /// mount. None for a directory layer, whose files are host files already.
    pub fn shared_copy(&self, entry: &Entry, cache: &Cache) -> io::Result<Option<File>> {
        let Data::Tar { blob, key } = &self.data else { return Ok(None) };
        let path = cache.shared_file_path(key, entry.data_offset);
        let open = || {
            use std::os::unix::fs::OpenOptionsExt;
            let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
            match cache::trusted(&file) {
                true => Ok(file),
                false => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} belongs to another user: not used; give the cache directory to this user",
                        path.display()
                    ),
                )),
            }
        };
        // A copy of another size is not this entry's (a cache made by a different index): redo it.
        if let Ok(file) = open() {
            if file.metadata().is_ok_and(|m| m.len() == entry.size) {
                return Ok(Some(file));
            }
        }
        // Made, then opened by name: `strata cache prune` in between removes it, so then once more.
        let mut attempts = 0;
        loop {
            cache
                .write_atomic(&path, |out| {
                    blob::copy_range(&blob.file, blob.offset + entry.data_offset, entry.size, out)?;
                    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
                })
                .map_err(io::Error::other)?;
            attempts += 1;
            match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 2 => continue,
                opened => return opened.map(Some),
            }
        }
    }
}

/// An open file of a layer.
#[derive(Debug)]
pub enum FileReader {
    InArchive { blob: BlobRange, start: u64, len: u64 },
    Host(File),
}

impl FileReader {
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            FileReader::InArchive { blob, start, len } => {
                if offset >= *len {
                    return Ok(0);
                }
                let want = buf.len().min((*len - offset) as usize);
                blob.read_at(&mut buf[..want], start + offset)
            }
            FileReader::Host(file) => file.read_at(buf, offset),
        }
    }

    /// lseek(2)'s SEEK_DATA and SEEK_HOLE (`whence`) from `offset`: a host file's own holes; a
    /// file in an archive is data from its start to its end.
    pub fn seek_data_or_hole(&self, offset: u64, whence: libc::c_int) -> io::Result<u64> {
        match self {
            FileReader::InArchive { len, .. } if offset >= *len => Err(io::Error::from_raw_os_error(libc::ENXIO)),
            FileReader::InArchive { len, .. } => Ok(if whence == libc::SEEK_DATA { offset } else { *len }),
            FileReader::Host(file) => blob::seek_data_or_hole(file, offset, whence),
        }
    }
}

/// Cache key of a blob the image names no digest for: its identity on the host (path, device,
/// inode, size, times, range). Hashing the whole blob on every mount would cost a full read.
fn identity_key(range: &BlobRange) -> Result<String> {
    let path = fs::canonicalize(&range.path).at(&range.path)?;
    let meta = range.file.metadata().at(&range.path)?;
    let identity = format!(
        "{}\0{}\0{}\0{}\0{}.{}\0{}.{}\0{}\0{}",
        path.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        range.offset,
        range.len
    );
    Ok(format!("file-{:x}", Sha256::digest(identity.as_bytes())))
}

/// Loads every source in order (bottom first), sharing each loaded layer by `Arc`.
pub fn load_all(sources: &[LayerSource], cache: &Cache, progress: &dyn Progress) -> Result<Vec<Arc<Layer>>> {
    sources.iter().map(|s| Layer::load(s, cache, progress).map(Arc::new)).collect()
}
