//! Shard record files: written as records arrive, read back bit-identical image by image, corrupt files
//! detected and removed, and, read in a shuffled order, neither the reader's resident set nor the file's
//! page cache growing with the file.

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
    let records = cache
        .open_records("shard-records-a", 0)
        .expect("open")
        .expect("present");
    assert_eq!(records.len(), 300);
    assert_eq!(records.skipped(), &skipped[..]);
    for index in 0..300 {
        assert_eq!(records.objid(index), 1000 + index as i64);
        assert_eq!(records.label(index), (index % 7) as u32);
        assert!(
            records.image(index).expect("read") == image(index),
            "image {index}"
        );
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
    let records = cache
        .open_records("shard-records-c", 0)
        .expect("open")
        .expect("present");
    assert!(records.image(19).expect("read") == image(19));
    assert!(
        records.image(20).is_err(),
        "a record past the end is an error"
    );
}

/// Kilobytes of this process's resident set (`VmRSS`).
fn resident_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Bytes of `path` in the page cache: `mincore` over a fresh map of the file, which reports the file's cached
/// pages without faulting any in (the test owns the file, so the kernel answers for it).
fn cached_bytes(path: &std::path::Path) -> usize {
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: the file is not modified while mapped; the map is only passed to mincore, never read.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    let mut resident = vec![0u8; map.len().div_ceil(page)];
    // SAFETY: `map` is a live mapping of `map.len()` bytes and `resident` holds one byte per page of it.
    #[allow(unsafe_code)]
    let status = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            resident.as_mut_ptr(),
        )
    };
    assert_eq!(status, 0, "mincore: {}", std::io::Error::last_os_error());
    resident
        .iter()
        .filter(|page_state| **page_state & 1 != 0)
        .count()
        * page
}

/// A 4,000-record shard (49 MB) read in full in a shuffled order, as an epoch reads it, once without a cap
/// and once with a 2 MiB cap: the reader maps nothing, so its resident set grows by no more than its buffer
/// whatever the order; without a cap the page cache keeps the file, with the cap it holds at most the cap
/// plus the kernel's read-around, also while the file is verified on opening.
#[test]
fn shuffled_reads_keep_neither_the_resident_set_nor_the_page_cache_growing_with_the_file() {
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = ShardCache::open(directory.path().to_path_buf()).expect("cache");
    let count = 4000;
    write_records(&cache, "shard-records-d", count, &[]);
    let path = directory.path().join("shard-records-d.records");
    let shard_bytes = count * RECORD_LEN;
    // A fixed permutation (multiplication by a unit mod `count`): every record once, far apart.
    let order: Vec<usize> = (0..count).map(|step| (step * 2897) % count).collect();
    let read_all = |records: &plankton_preprocess::RecordShard| {
        let resident_before = resident_kib();
        let (mut peak_resident, mut peak_cached) = (0usize, 0usize);
        let mut batch = Vec::with_capacity(64 * IMAGE_LEN);
        let mut sum = 0u64;
        for (position, &index) in order.iter().enumerate() {
            records.read_image_into(index, &mut batch).expect("read");
            if batch.len() == 64 * IMAGE_LEN {
                sum += batch.iter().map(|byte| u64::from(*byte)).sum::<u64>();
                batch.clear();
            }
            if position % 250 == 249 {
                peak_resident =
                    peak_resident.max(resident_kib().saturating_sub(resident_before) << 10);
                peak_cached = peak_cached.max(cached_bytes(&path));
            }
        }
        sum += batch.iter().map(|byte| u64::from(*byte)).sum::<u64>();
        let cached_after = cached_bytes(&path);
        eprintln!(
            "{shard_bytes} bytes read shuffled: resident set +{peak_resident} bytes at most, page cache \
             {peak_cached} bytes at most, {cached_after} after"
        );
        (sum, peak_resident, peak_cached, cached_after)
    };
    let expected_sum: u64 = order
        .iter()
        .map(|&index| {
            image(index)
                .iter()
                .map(|byte| u64::from(*byte))
                .sum::<u64>()
        })
        .sum();

    let uncapped = cache
        .open_records("shard-records-d", 0)
        .expect("open")
        .expect("present");
    let (sum, resident, _, cached_after) = read_all(&uncapped);
    assert_eq!(sum, expected_sum);
    assert!(
        resident < 8 << 20,
        "reading {shard_bytes} bytes grew the resident set by {resident} bytes"
    );
    assert!(
        cached_after > shard_bytes / 2,
        "without a cap the page cache keeps the file ({cached_after} of {shard_bytes} bytes)"
    );
    drop(uncapped);

    let cap = 2 << 20;
    let capped = cache
        .open_records("shard-records-d", cap)
        .expect("open")
        .expect("present");
    // Verifying read the whole file in windows no larger than the cap, dropping the pages behind them.
    let releases_while_verifying = capped.releases();
    assert!(
        releases_while_verifying >= (shard_bytes / cap) as u64,
        "{releases_while_verifying} releases while verifying {shard_bytes} bytes under a cap of {cap}"
    );
    let (sum, resident, peak_cached, _) = read_all(&capped);
    assert_eq!(sum, expected_sum);
    assert!(
        resident < 8 << 20,
        "reading {shard_bytes} bytes grew the resident set by {resident} bytes"
    );
    assert!(
        peak_cached <= 2 * cap,
        "{peak_cached} bytes of the file cached, over twice the cap of {cap}"
    );
    assert!(capped.releases() - releases_while_verifying >= (shard_bytes / cap) as u64);
}
