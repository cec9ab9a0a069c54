//! Shard record files: written as records arrive, read back bit-identical through the memory map, corrupt
//! files detected and removed, and the map's resident pages kept under the cap.

use plankton_preprocess::{CacheError, IMAGE_LEN, RECORD_LEN, ShardCache};

/// Image `index`: bytes that differ between images and along each image.
fn image(index: usize) -> Vec<u8> {
    (0..IMAGE_LEN)
        .map(|offset| ((offset * 31 + index * 7919) % 251) as u8)
        .collect()
}

fn write_records(cache: &ShardCache, key: &str, count: usize, skipped: &[(i64, String)]) {
    let mut writer = cache.record_writer(key).expect("writer");
    for index in 0..count {
        writer
            .append(1000 + index as i64, (index % 7) as u32, &image(index))
            .expect("append");
    }
    writer.finish(skipped).expect("finish");
}

#[test]
fn records_read_back_bit_identical_with_their_skipped_objects() {
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = ShardCache::open(directory.path().to_path_buf()).expect("cache");
    let skipped = vec![
        (7, "imgs/7.jpg: not a JPEG".to_string()),
        (9, String::new()),
    ];
    write_records(&cache, "shard-records-a", 300, &skipped);
    let mapped = cache
        .open_records("shard-records-a", 0)
        .expect("open")
        .expect("present");
    assert_eq!(mapped.len(), 300);
    assert_eq!(mapped.skipped(), &skipped[..]);
    for index in 0..300 {
        assert_eq!(mapped.objid(index), 1000 + index as i64);
        assert_eq!(mapped.label(index), (index % 7) as u32);
        assert!(mapped.image(index) == &image(index)[..], "image {index}");
    }
    assert!(
        cache
            .open_records("shard-records-missing", 0)
            .expect("open")
            .is_none()
    );
    // A writer dropped unfinished leaves nothing behind.
    let mut abandoned = cache.record_writer("shard-records-b").expect("writer");
    abandoned.append(1, 0, &image(1)).expect("append");
    drop(abandoned);
    assert_eq!(
        std::fs::read_dir(directory.path()).expect("list").count(),
        1
    );
}

#[test]
fn truncated_or_corrupt_record_files_are_detected_and_removed() {
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = ShardCache::open(directory.path().to_path_buf()).expect("cache");
    let path = directory.path().join("shard-records-c.records");

    write_records(&cache, "shard-records-c", 20, &[]);
    let full_length = std::fs::metadata(&path).expect("metadata").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(full_length - RECORD_LEN as u64 / 2)
        .expect("truncate");
    drop(file);
    let error = cache
        .open_records("shard-records-c", 0)
        .expect_err("truncated");
    assert!(
        matches!(&error, CacheError::Corrupt { reason, .. } if reason.contains("truncated")),
        "{error}"
    );
    assert!(
        !path.exists(),
        "a corrupt record file is removed so it is rebuilt"
    );

    write_records(&cache, "shard-records-c", 20, &[]);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[64 + 5 * RECORD_LEN + 100] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let error = cache
        .open_records("shard-records-c", 0)
        .expect_err("flipped bit");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    assert!(!path.exists());

    // Rebuilt, it reads again.
    write_records(&cache, "shard-records-c", 20, &[]);
    let mapped = cache
        .open_records("shard-records-c", 0)
        .expect("open")
        .expect("present");
    assert!(mapped.image(19) == &image(19)[..]);
}

/// A 2,000-record shard (24.6 MB) read twice in full, once without a cap and once with a 2 MiB cap: the
/// mapping's resident pages (its Rss in /proc/self/smaps) stay under cap + one record + the kernel's
/// fault-around (it maps up to 64 KiB of cached pages around a faulting one) with it.
#[test]
fn resident_pages_stay_under_the_cap() {
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = ShardCache::open(directory.path().to_path_buf()).expect("cache");
    let count = 2000;
    write_records(&cache, "shard-records-d", count, &[]);
    let shard_bytes = count * RECORD_LEN;
    let checksum_of_all = |mapped: &plankton_preprocess::MappedShard| {
        let mut peak = 0usize;
        let mut sum = 0u64;
        for index in 0..count {
            sum += mapped
                .image(index)
                .iter()
                .map(|byte| u64::from(*byte))
                .sum::<u64>();
            if index % 100 == 99 {
                peak = peak.max(mapped.resident_bytes().expect("smaps"));
            }
        }
        (sum, peak)
    };
    let uncapped = cache
        .open_records("shard-records-d", 0)
        .expect("open")
        .expect("present");
    let (uncapped_sum, uncapped_peak) = checksum_of_all(&uncapped);
    assert!(
        uncapped_peak > shard_bytes / 2,
        "without a cap the whole shard becomes resident ({uncapped_peak} of {shard_bytes} bytes)"
    );
    drop(uncapped);

    let cap = 2 << 20;
    let capped = cache
        .open_records("shard-records-d", cap)
        .expect("open")
        .expect("present");
    let (capped_sum, capped_peak) = checksum_of_all(&capped);
    assert_eq!(capped_sum, uncapped_sum);
    assert!(
        capped_peak <= cap + RECORD_LEN + (128 << 10),
        "resident {capped_peak} bytes over the cap of {cap}"
    );
    assert!(capped.releases() >= (shard_bytes / cap) as u64 - 1);
}
