//! Local on-disk cache of preprocessed shards, written atomically (temporary file, then rename): a whole
//! shard in one file read into memory ([`ShardCache::load`], [`ShardCache::store`]), or its record file read
//! image by image ([`ShardCache::record_writer`], [`ShardCache::open_records`]), both under one key.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::record_file::{RecordShard, ShardRecordWriter, temporary_record_path};
use crate::{IMAGE_LEN, ResizeMode};

/// File signature and format version of a cached shard.
const MAGIC: &[u8; 8] = b"PLKSHRD1";
/// Bumped whenever the pixels the pipeline produces change, so stale caches stop matching.
const PIPELINE_VERSION: u32 = 1;
const FILE_EXTENSION: &str = "shard";
/// The record form of a shard ([`crate::record_file`]), next to the whole-shard file.
const RECORD_FILE_EXTENSION: &str = "records";

/// A shard's preprocessed images, in objid order, and the objects that could not be preprocessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedShard {
    pub objids: Vec<i64>,
    /// `objids.len() * IMAGE_LEN` bytes, image `i` at `i * IMAGE_LEN`.
    pub images: Vec<u8>,
    /// Objects left out because they are bad (missing or undecodable), with the reason. Never an object
    /// that failed for a transient reason: a shard that could not be fully read is not cached at all.
    pub skipped: Vec<(i64, String)>,
}

/// Why the shard cache could not read or write an entry.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("shard cache i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt cached shard {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("record {index} asked of {path}, which holds {record_count}")]
    RecordOutOfRange {
        path: PathBuf,
        index: usize,
        record_count: usize,
    },
    #[error("invalid shard cache key {0:?}: only ascii letters, digits, '-' and '_' are allowed")]
    InvalidKey(String),
    #[error("shard for key {key} is inconsistent: {reason}")]
    InvalidShard { key: String, reason: String },
}

/// A directory of cached shards, one file per key.
#[derive(Clone, Debug)]
pub struct ShardCache {
    dir: PathBuf,
}

static TEMPORARY_FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ShardCache {
    /// Opens (creating it if needed) the cache directory.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(ShardCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file-name-safe key naming the preprocessed form of these objects of this dataset, whatever their
    /// bytes in the store. Prefer [`ShardCache::key_with_source_version`], which stops matching when an
    /// image is rewritten.
    pub fn key(dataset_url: &str, resize_mode: ResizeMode, objids: &[i64]) -> String {
        Self::key_with_source_version(dataset_url, resize_mode, objids, "")
    }

    /// A file-name-safe key naming the preprocessed form of these objects of this dataset as they are in the
    /// store now: `source_version` identifies the source objects (e.g. sizes and e-tags, as
    /// `plankton_dataset::image_source_version` gives them), so a rewritten image changes the key and is
    /// fetched again instead of being served stale. An empty `source_version` gives [`ShardCache::key`].
    pub fn key_with_source_version(
        dataset_url: &str,
        resize_mode: ResizeMode,
        objids: &[i64],
        source_version: &str,
    ) -> String {
        let mut hash = Fnv1a::new();
        hash.update(&PIPELINE_VERSION.to_le_bytes());
        hash.update(&(dataset_url.len() as u64).to_le_bytes());
        hash.update(dataset_url.as_bytes());
        let mode_tag: u8 = match resize_mode {
            ResizeMode::Stretch => 0,
            ResizeMode::PadToSquare => 1,
        };
        hash.update(&[mode_tag]);
        for objid in objids {
            hash.update(&objid.to_le_bytes());
        }
        if !source_version.is_empty() {
            hash.update(&(source_version.len() as u64).to_le_bytes());
            hash.update(source_version.as_bytes());
        }
        format!("shard-{:016x}-{}", hash.finish(), objids.len())
    }

    /// Reads the shard stored under `key`; `Ok(None)` if there is none.
    pub fn load(&self, key: &str) -> Result<Option<CachedShard>, CacheError> {
        let path = self.path_for(key)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        decode_shard(&bytes)
            .map(Some)
            .map_err(|reason| CacheError::Corrupt { path, reason })
    }

    /// Stores `shard` under `key`: written to a temporary file in the same directory, then renamed,
    /// so readers see either the old entry or the whole new one.
    pub fn store(&self, key: &str, shard: &CachedShard) -> Result<(), CacheError> {
        let path = self.path_for(key)?;
        let expected_image_bytes = shard.objids.len() * IMAGE_LEN;
        if shard.images.len() != expected_image_bytes {
            return Err(CacheError::InvalidShard {
                key: key.to_string(),
                reason: format!(
                    "{} objids need {expected_image_bytes} image bytes, got {}",
                    shard.objids.len(),
                    shard.images.len()
                ),
            });
        }
        let bytes = encode_shard(shard);
        let temporary_path = self.dir.join(format!(
            ".{key}.{}.{}.tmp",
            std::process::id(),
            TEMPORARY_FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write_result = (|| {
            let mut file = fs::File::create(&temporary_path)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temporary_path, &path)
        })();
        if let Err(source) = write_result {
            let _ = fs::remove_file(&temporary_path);
            return Err(CacheError::Io { path, source });
        }
        Ok(())
    }

    /// Starts writing the record file of `key` (the record form of a shard, read by
    /// [`ShardCache::open_records`]); it replaces any earlier one when finished.
    pub fn record_writer(&self, key: &str) -> Result<ShardRecordWriter, CacheError> {
        let path = self.record_path_for(key)?;
        ShardRecordWriter::create(path, temporary_record_path(&self.dir, key))
    }

    /// Opens the record file of `key`, `Ok(None)` if there is none. A truncated or corrupt file is removed
    /// (so the caller rebuilds it) and reported as [`CacheError::Corrupt`]. `max_cached_bytes` caps what
    /// reading it keeps in the page cache ([`RecordShard::open`]; 0: no cap).
    pub fn open_records(
        &self,
        key: &str,
        max_cached_bytes: usize,
    ) -> Result<Option<RecordShard>, CacheError> {
        let path = self.record_path_for(key)?;
        if !path.exists() {
            return Ok(None);
        }
        match RecordShard::open(&path, max_cached_bytes) {
            Ok(records) => Ok(Some(records)),
            Err(error @ CacheError::Corrupt { .. }) => {
                let _ = fs::remove_file(&path);
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    fn record_path_for(&self, key: &str) -> Result<PathBuf, CacheError> {
        Ok(self.path_for(key)?.with_extension(RECORD_FILE_EXTENSION))
    }

    fn path_for(&self, key: &str) -> Result<PathBuf, CacheError> {
        let is_safe = !key.is_empty()
            && key.len() <= 200
            && key
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !is_safe {
            return Err(CacheError::InvalidKey(key.to_string()));
        }
        Ok(self.dir.join(format!("{key}.{FILE_EXTENSION}")))
    }
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `DefaultHasher`).
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Layout: magic, image_len u64, objid count u64, skipped count u64, objids (i64 LE), images,
/// skipped entries (objid i64, reason length u32, utf-8 reason), FNV-1a checksum u64 of all before.
fn encode_shard(shard: &CachedShard) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(40 + shard.objids.len() * 8 + shard.images.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(IMAGE_LEN as u64).to_le_bytes());
    bytes.extend_from_slice(&(shard.objids.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(shard.skipped.len() as u64).to_le_bytes());
    for objid in &shard.objids {
        bytes.extend_from_slice(&objid.to_le_bytes());
    }
    bytes.extend_from_slice(&shard.images);
    for (objid, reason) in &shard.skipped {
        bytes.extend_from_slice(&objid.to_le_bytes());
        let reason_len = u32::try_from(reason.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&reason_len.to_le_bytes());
        bytes.extend_from_slice(&reason.as_bytes()[..reason_len as usize]);
    }
    let mut checksum = Fnv1a::new();
    checksum.update(&bytes);
    bytes.extend_from_slice(&checksum.finish().to_le_bytes());
    bytes
}

/// A cursor that fails with a message instead of panicking on short input.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "file ends inside {what} (needs {len} bytes at offset {})",
                    self.position
                )
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let slice = self.take(8, what)?;
        Ok(u64::from_le_bytes(
            slice.try_into().map_err(|_| format!("bad {what}"))?,
        ))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(self.u64(what)? as i64)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let slice = self.take(4, what)?;
        Ok(u32::from_le_bytes(
            slice.try_into().map_err(|_| format!("bad {what}"))?,
        ))
    }
}

fn decode_shard(bytes: &[u8]) -> Result<CachedShard, String> {
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("missing shard file signature".to_string());
    }
    let (body, checksum_bytes) = bytes.split_at(bytes.len() - 8);
    let stored_checksum = u64::from_le_bytes(
        checksum_bytes
            .try_into()
            .map_err(|_| "bad checksum".to_string())?,
    );
    let mut checksum = Fnv1a::new();
    checksum.update(body);
    if checksum.finish() != stored_checksum {
        return Err("checksum mismatch".to_string());
    }
    let mut reader = Reader {
        bytes: body,
        position: MAGIC.len(),
    };
    let image_len = reader.u64("image length")?;
    if image_len != IMAGE_LEN as u64 {
        return Err(format!(
            "images of {image_len} bytes, this build uses {IMAGE_LEN}"
        ));
    }
    let objid_count = usize::try_from(reader.u64("objid count")?)
        .map_err(|_| "objid count overflows".to_string())?;
    let skipped_count = usize::try_from(reader.u64("skipped count")?)
        .map_err(|_| "skipped count overflows".to_string())?;
    let objid_bytes = objid_count.checked_mul(8).ok_or("objid count overflows")?;
    let objids = reader
        .take(objid_bytes, "objids")?
        .chunks_exact(8)
        .map(|chunk| i64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])))
        .collect();
    let image_bytes = objid_count
        .checked_mul(IMAGE_LEN)
        .ok_or("image size overflows")?;
    let images = reader.take(image_bytes, "images")?.to_vec();
    let mut skipped = Vec::with_capacity(skipped_count.min(body.len() / 12));
    for _ in 0..skipped_count {
        let objid = reader.i64("skipped objid")?;
        let reason_len = reader.u32("skip reason length")? as usize;
        let reason = reader.take(reason_len, "skip reason")?;
        let reason = String::from_utf8(reason.to_vec())
            .map_err(|_| format!("skip reason of {objid} is not utf-8"))?;
        skipped.push((objid, reason));
    }
    if reader.position != body.len() {
        return Err(format!(
            "{} unexpected trailing bytes",
            body.len() - reader.position
        ));
    }
    Ok(CachedShard {
        objids,
        images,
        skipped,
    })
}
