//! Sidecar entries of the shard cache: a shard's transformed native features, next to its preprocessed images
//! in the same directory, so a cache hit reads neither the images nor `features_native.csv`.
//!
//! Keyed by the dataset, the shard's objids (in order), the identity of the feature file in the store (size,
//! e-tag, modification time) and the fitted transform: a rewritten feature file or a new transform misses.
//! Written atomically (temporary file, then rename); a corrupt or unreadable entry reads as a miss.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use plankton_dataset::ImputationCounts;

const MAGIC: &[u8; 8] = b"PLKFEAT1";
const FILE_EXTENSION: &str = "features";

/// A shard's transformed features (`objids.len() * width` values, row-major) and what was imputed.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedFeatures {
    pub width: usize,
    pub values: Vec<f32>,
    pub counts: ImputationCounts,
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sidecar key: file-name safe, `features-<hash>-<objects>`.
pub fn sidecar_key(
    dataset_url: &str,
    feature_file_version: &str,
    transform_json: &str,
    objids: &[i64],
) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in [dataset_url, feature_file_version, transform_json] {
        hash = fnv1a(hash, &(part.len() as u64).to_le_bytes());
        hash = fnv1a(hash, part.as_bytes());
    }
    for objid in objids {
        hash = fnv1a(hash, &objid.to_le_bytes());
    }
    format!("features-{hash:016x}-{}", objids.len())
}

fn path_of(dir: &std::path::Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.{FILE_EXTENSION}"))
}

/// Layout: magic, width u64, value count u64, column count u64, objects u64, objects without a row u64, per-column
/// counts u64, values f32 LE, FNV-1a checksum u64 of all before.
fn encode(features: &CachedFeatures) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + features.values.len() * 4);
    bytes.extend_from_slice(MAGIC);
    for value in [
        features.width as u64,
        features.values.len() as u64,
        features.counts.per_column.len() as u64,
        features.counts.objects,
        features.counts.objects_without_row,
    ]
    .into_iter()
    .chain(features.counts.per_column.iter().copied())
    {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    for value in &features.values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let checksum = fnv1a(0xcbf2_9ce4_8422_2325, &bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<CachedFeatures> {
    let (body, checksum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
    if fnv1a(0xcbf2_9ce4_8422_2325, body).to_le_bytes() != checksum {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let mut words = rest
        .chunks_exact(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8-byte chunks")));
    let width = usize::try_from(words.next()?).ok()?;
    let value_count = usize::try_from(words.next()?).ok()?;
    let column_count = usize::try_from(words.next()?).ok()?;
    let objects = words.next()?;
    let objects_without_row = words.next()?;
    let header_len = (5 + column_count).checked_mul(8)?;
    if rest.len() != header_len.checked_add(value_count.checked_mul(4)?)? {
        return None;
    }
    let per_column: Vec<u64> = words.take(column_count).collect();
    let values = rest[header_len..]
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4-byte chunks")))
        .collect();
    Some(CachedFeatures {
        width,
        values,
        counts: ImputationCounts {
            per_column,
            objects_without_row,
            objects,
        },
    })
}

/// Reads the entry `key` of the cache directory `dir`; `None` when absent, unreadable or corrupt.
pub fn load(dir: &std::path::Path, key: &str) -> Option<CachedFeatures> {
    let bytes = fs::read(path_of(dir, key)).ok()?;
    let decoded = decode(&bytes);
    if decoded.is_none() {
        tracing::warn!(
            key,
            "corrupt feature sidecar in the shard cache; transforming again"
        );
    }
    decoded
}

/// Writes the entry `key` atomically.
pub fn store(dir: &std::path::Path, key: &str, features: &CachedFeatures) -> io::Result<()> {
    let path = path_of(dir, key);
    static TEMPORARY_FILE_COUNTER: AtomicU64 = AtomicU64::new(0);
    let temporary = dir.join(format!(
        ".{key}.{}.{}.tmp",
        std::process::id(),
        TEMPORARY_FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = fs::File::create(&temporary)?;
    file.write_all(&encode(features))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, &path).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_corruption_reads_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let features = CachedFeatures {
            width: 2,
            values: vec![0.5, -1.0, 2.0, 0.0],
            counts: ImputationCounts {
                per_column: vec![1, 0, 3],
                objects_without_row: 1,
                objects: 2,
            },
        };
        let key = sidecar_key("memory://d", "v1", "{}", &[3, 4]);
        assert_ne!(key, sidecar_key("memory://d", "v2", "{}", &[3, 4]));
        assert_ne!(key, sidecar_key("memory://d", "v1", "{\"a\":1}", &[3, 4]));
        assert!(load(dir.path(), &key).is_none());
        store(dir.path(), &key, &features).unwrap();
        assert_eq!(load(dir.path(), &key), Some(features));
        let path = path_of(dir.path(), &key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(load(dir.path(), &key).is_none());
    }
}
