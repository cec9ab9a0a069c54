//! Shard record files: fixed-size records (objid, label, preprocessed image) copied out one image at a time
//! with positioned reads, so a worker trains on a shard larger than its memory and holds only the batch it
//! assembles. The file's pages in the kernel's page cache are capped: once the records read since the last
//! release exceed the cap, the kernel is advised to drop them (they are read from the disk again).
//!
//! Layout: a 64-byte header (magic, pipeline version, record and image length, record count, skipped-list
//! length), the records, the skipped list (objid i64, reason length u32, utf-8 reason), then a checksum u64:
//! FNV-1a over 64-bit words of everything after the header, then of the header. Files are written to a
//! temporary name and renamed into place, never modified in place.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::IMAGE_LEN;
use crate::cache::CacheError;
use crate::page_cache::CappedFile;

const RECORD_MAGIC: &[u8; 8] = b"PLKREC01";
/// Bumped whenever the pixels the pipeline produces change (as the whole-shard format's version).
const RECORD_PIPELINE_VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// objid i64, label u32, reserved u32, then the image.
const RECORD_PREFIX_LEN: usize = 16;
/// Bytes of one record.
pub const RECORD_LEN: usize = RECORD_PREFIX_LEN + IMAGE_LEN;
/// Bytes read and hashed per window while a file is verified.
const VERIFY_WINDOW_BYTES: usize = 8 << 20;

static TEMPORARY_RECORD_FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// FNV-1a over little-endian 64-bit words (a short tail is zero-padded): one multiply per 8 bytes.
#[derive(Debug, Clone, Copy)]
struct WordHash(u64);

impl WordHash {
    fn new() -> Self {
        WordHash(0xcbf2_9ce4_8422_2325)
    }

    /// `bytes.len()` must be a multiple of 8 except in the last update.
    fn update(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.0 ^= u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut padded = [0u8; 8];
            padded[..tail.len()].copy_from_slice(tail);
            self.0 ^= u64::from_le_bytes(padded);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn encode_header(record_count: u64, skipped_count: u64, skipped_bytes: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(RECORD_MAGIC);
    header[8..12].copy_from_slice(&RECORD_PIPELINE_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(IMAGE_LEN as u64).to_le_bytes());
    header[24..32].copy_from_slice(&record_count.to_le_bytes());
    header[32..40].copy_from_slice(&skipped_count.to_le_bytes());
    header[40..48].copy_from_slice(&skipped_bytes.to_le_bytes());
    header
}

/// Writes a record file as records arrive (the shard never has to be in memory whole); [`Self::finish`]
/// renames it into place, dropping the writer without finishing removes the temporary file.
#[derive(Debug)]
pub struct ShardRecordWriter {
    path: PathBuf,
    temporary_path: PathBuf,
    file: Option<BufWriter<File>>,
    record_count: u64,
    hash: WordHash,
}

impl ShardRecordWriter {
    pub(crate) fn create(path: PathBuf, temporary_path: PathBuf) -> Result<Self, CacheError> {
        let io_error = |source| CacheError::Io {
            path: temporary_path.clone(),
            source,
        };
        let mut file =
            BufWriter::with_capacity(1 << 20, File::create(&temporary_path).map_err(io_error)?);
        file.write_all(&[0u8; HEADER_LEN]).map_err(io_error)?;
        Ok(ShardRecordWriter {
            path,
            temporary_path,
            file: Some(file),
            record_count: 0,
            hash: WordHash::new(),
        })
    }

    /// Appends one record; `image` must be `IMAGE_LEN` bytes.
    pub fn append(&mut self, objid: i64, label: u32, image: &[u8]) -> Result<(), CacheError> {
        if image.len() != IMAGE_LEN {
            return Err(CacheError::InvalidShard {
                key: self.path.display().to_string(),
                reason: format!(
                    "image of objid {objid} has {} bytes, not {IMAGE_LEN}",
                    image.len()
                ),
            });
        }
        let mut prefix = [0u8; RECORD_PREFIX_LEN];
        prefix[0..8].copy_from_slice(&objid.to_le_bytes());
        prefix[8..12].copy_from_slice(&label.to_le_bytes());
        self.hash.update(&prefix);
        self.hash.update(image);
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(&prefix)
            .and_then(|()| file.write_all(image))
            .map_err(|source| CacheError::Io {
                path: self.temporary_path.clone(),
                source,
            })?;
        self.record_count += 1;
        Ok(())
    }

    /// Number of records appended so far.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Writes the skipped list, the header and the checksum, syncs and renames the file into place.
    pub fn finish(mut self, skipped: &[(i64, String)]) -> Result<PathBuf, CacheError> {
        let mut file = self.file.take().expect("open until finished");
        let mut skipped_bytes = Vec::new();
        for (objid, reason) in skipped {
            skipped_bytes.extend_from_slice(&objid.to_le_bytes());
            let reason_len = u32::try_from(reason.len()).unwrap_or(u32::MAX);
            skipped_bytes.extend_from_slice(&reason_len.to_le_bytes());
            skipped_bytes.extend_from_slice(&reason.as_bytes()[..reason_len as usize]);
        }
        let header = encode_header(
            self.record_count,
            skipped.len() as u64,
            skipped_bytes.len() as u64,
        );
        let mut hash = self.hash;
        hash.update(&skipped_bytes);
        hash.update(&header);
        let written = (|| -> io::Result<()> {
            file.write_all(&skipped_bytes)?;
            file.write_all(&hash.0.to_le_bytes())?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
            let file = file.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            fs::rename(&self.temporary_path, &self.path)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&self.temporary_path);
            return Err(CacheError::Io {
                path: self.path.clone(),
                source,
            });
        }
        Ok(self.path.clone())
    }
}

impl Drop for ShardRecordWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temporary_path);
        }
    }
}

pub(crate) fn temporary_record_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!(
        ".{key}.{}.{}.records.tmp",
        std::process::id(),
        TEMPORARY_RECORD_FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A verified record file whose images are copied out with positioned reads (`pread`), never mapped: the
/// reader's resident memory is the caller's buffers, whatever the file's size or the order of reads. The
/// file's pages live in the kernel's page cache, which a cap keeps in check (see [`RecordShard::open`]).
#[derive(Debug)]
pub struct RecordShard {
    path: PathBuf,
    file: CappedFile,
    record_count: usize,
    /// Each record's objid and label, read once while verifying.
    objids: Vec<i64>,
    labels: Vec<u32>,
    skipped: Vec<(i64, String)>,
}

impl RecordShard {
    /// Opens and verifies the record file at `path` (size against the header, then the checksum, read in
    /// windows). `max_cached_bytes` > 0 bounds what reading the file keeps in the page cache: after every
    /// `max_cached_bytes` of records read (verifying included, and once after it), the kernel is advised to
    /// drop the file's clean cached pages (`POSIX_FADV_DONTNEED`; later reads come from the disk). 0 leaves
    /// the page cache to the kernel.
    pub fn open(path: &Path, max_cached_bytes: usize) -> Result<Self, CacheError> {
        let corrupt = |reason: String| CacheError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let io_error = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut header = [0u8; HEADER_LEN];
        if file_len < (HEADER_LEN + 8) as u64 {
            return Err(corrupt("missing record file signature".to_string()));
        }
        file.read_exact_at(&mut header, 0).map_err(io_error)?;
        if &header[..8] != RECORD_MAGIC {
            return Err(corrupt("missing record file signature".to_string()));
        }
        let read_u32 =
            |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
        let read_u64 =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let (version, record_len, image_len) = (read_u32(8), read_u32(12), read_u64(16));
        if version != RECORD_PIPELINE_VERSION
            || record_len as usize != RECORD_LEN
            || image_len != IMAGE_LEN as u64
        {
            return Err(corrupt(format!(
                "pipeline version {version}, records of {record_len} bytes with images of {image_len}: this build \
                 writes version {RECORD_PIPELINE_VERSION}, {RECORD_LEN} and {IMAGE_LEN}"
            )));
        }
        let (record_count, skipped_count, skipped_bytes) =
            (read_u64(24), read_u64(32), read_u64(40));
        let expected_length = (record_count as u128) * RECORD_LEN as u128
            + skipped_bytes as u128
            + (HEADER_LEN + 8) as u128;
        if expected_length != file_len as u128 {
            return Err(corrupt(format!(
                "{file_len} bytes, the header's {record_count} records and {skipped_bytes} bytes of skipped \
                 objects need {expected_length} (truncated or overwritten)"
            )));
        }
        let record_count = record_count as usize;
        // One pass over the records in windows of whole records: hash them, keep their objids and labels (so
        // reading those later reads no file). The windows are read under the cap, so verifying a file larger
        // than the cap does not fill the page cache with it.
        let file = CappedFile::new(file, max_cached_bytes);
        let mut hash = WordHash::new();
        let mut objids = Vec::with_capacity(record_count);
        let mut labels = Vec::with_capacity(record_count);
        let window_bytes = match max_cached_bytes {
            0 => VERIFY_WINDOW_BYTES,
            cap => VERIFY_WINDOW_BYTES.min(cap),
        };
        let records_per_window = (window_bytes / RECORD_LEN).max(1);
        let mut window = Vec::new();
        let mut first_record = 0;
        while first_record < record_count {
            let end_record = (first_record + records_per_window).min(record_count);
            window.clear();
            file.read_into(
                (HEADER_LEN + first_record * RECORD_LEN) as u64,
                (end_record - first_record) * RECORD_LEN,
                &mut window,
            )
            .map_err(io_error)?;
            hash.update(&window);
            for record in window.chunks_exact(RECORD_LEN) {
                objids.push(i64::from_le_bytes(
                    record[0..8].try_into().unwrap_or([0; 8]),
                ));
                labels.push(u32::from_le_bytes(
                    record[8..12].try_into().unwrap_or([0; 4]),
                ));
            }
            first_record = end_record;
        }
        drop(window);
        let skipped_start = (HEADER_LEN + record_count * RECORD_LEN) as u64;
        let mut tail = vec![0u8; skipped_bytes as usize + 8];
        file.file()
            .read_exact_at(&mut tail, skipped_start)
            .map_err(io_error)?;
        let (skipped_list, checksum) = tail.split_at(skipped_bytes as usize);
        hash.update(skipped_list);
        hash.update(&header);
        if hash.0 != u64::from_le_bytes(checksum.try_into().unwrap_or([0; 8])) {
            return Err(corrupt("checksum mismatch".to_string()));
        }
        let mut skipped =
            Vec::with_capacity((skipped_count as usize).min(skipped_bytes as usize / 12));
        let mut position = 0;
        for _ in 0..skipped_count {
            let entry = (|| {
                let objid =
                    i64::from_le_bytes(skipped_list.get(position..position + 8)?.try_into().ok()?);
                let reason_len = u32::from_le_bytes(
                    skipped_list
                        .get(position + 8..position + 12)?
                        .try_into()
                        .ok()?,
                ) as usize;
                let reason =
                    skipped_list.get(position + 12..(position + 12).checked_add(reason_len)?)?;
                Some((
                    objid,
                    String::from_utf8_lossy(reason).into_owned(),
                    12 + reason_len,
                ))
            })()
            .ok_or_else(|| {
                corrupt(format!(
                    "skipped object list ends early at offset {}",
                    skipped_start as usize + position
                ))
            })?;
            position += entry.2;
            skipped.push((entry.0, entry.1));
        }
        if position != skipped_list.len() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the skipped object list",
                skipped_list.len() - position
            )));
        }
        if max_cached_bytes > 0 {
            file.drop_cached_pages();
        }
        Ok(RecordShard {
            path: path.to_path_buf(),
            file,
            record_count,
            objids,
            labels,
            skipped,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.record_count
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Objects that could not be preprocessed when the file was written, with the reason.
    pub fn skipped(&self) -> &[(i64, String)] {
        &self.skipped
    }

    /// The objid of record `index` (held in memory: reading it reads no file).
    pub fn objid(&self, index: usize) -> i64 {
        self.objids[index]
    }

    /// The label of record `index` as written.
    pub fn label(&self, index: usize) -> u32 {
        self.labels[index]
    }

    /// Appends the preprocessed image of record `index` (`IMAGE_LEN` bytes) to `out`; on an error `out` is
    /// left as it was. Past the cap, the file's cached pages are dropped first.
    pub fn read_image_into(&self, index: usize, out: &mut Vec<u8>) -> Result<(), CacheError> {
        if index >= self.record_count {
            return Err(CacheError::RecordOutOfRange {
                path: self.path.clone(),
                index,
                record_count: self.record_count,
            });
        }
        let offset = (HEADER_LEN + index * RECORD_LEN + RECORD_PREFIX_LEN) as u64;
        self.file
            .read_into(offset, IMAGE_LEN, out)
            .map_err(|source| CacheError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The preprocessed image of record `index`, copied.
    pub fn image(&self, index: usize) -> Result<Vec<u8>, CacheError> {
        let mut image = Vec::with_capacity(IMAGE_LEN);
        self.read_image_into(index, &mut image)?;
        Ok(image)
    }

    /// Times the cap dropped the file's cached pages (the drop after verifying included).
    pub fn releases(&self) -> u64 {
        self.file.releases()
    }
}
