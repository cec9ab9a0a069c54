//! Transient store faults never lose data: a shard load retries them, skips only images that are really bad,
//! fails (uncached) when the store stays down, and never serves a rewritten image stale from the cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plankton_dataset::faults::{FaultInjectingStore, InjectedFault};
use plankton_dataset::layout::IMAGES_ZIP;
use plankton_dataset::{
    FetchRetry, ImageSource, StoreLocation, image_path, list_image_objids, open_image_source,
    open_location,
};
use plankton_preprocess::{IMAGE_LEN, PreprocessConfig, ShardCache};
use plankton_proto::v1::ShardObject;
use plankton_synth::{MINIMUM_OBJECTS, SynthConfig};
use tokio_util::sync::CancellationToken;

use plankton_worker::{LoadedShard, ShardResidence, load_shard};

/// Retries as many as the default, with waits short enough for tests.
const FAST_RETRY: FetchRetry = FetchRetry {
    max_attempts: 6,
    initial_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(8),
    max_elapsed: Duration::from_secs(20),
};

/// A synthetic dataset (the generator's minimum, 80 objects) in the process-wide memory store `name`.
async fn synthetic_dataset(name: &str, images_as_zip: bool) -> anyhow::Result<StoreLocation> {
    let location = open_location(&format!("memory://{name}"))?;
    let config = SynthConfig {
        count: MINIMUM_OBJECTS,
        seed: 11,
        images_as_zip,
        gzip_features: false,
        concurrency: 8,
    };
    plankton_synth::generate(location.store.clone(), location.prefix.clone(), &config).await?;
    Ok(location)
}

/// `location` read through a store that fails the first `failures` reads of every object (of every byte
/// range of `imgs.zip`), retried as [`FAST_RETRY`] says.
fn with_faults(
    location: &StoreLocation,
    failures: u32,
    fault: InjectedFault,
) -> (StoreLocation, Arc<FaultInjectingStore>) {
    let faulty = Arc::new(
        FaultInjectingStore::new(location.store.clone(), failures)
            .with_fault(fault)
            .per_byte_range(),
    );
    let faulty_location = location.with_store(faulty.clone()).with_retry(FAST_RETRY);
    (faulty_location, faulty)
}

/// Every image of the dataset, label 0.
async fn all_objects(
    location: &StoreLocation,
    source: &ImageSource,
) -> anyhow::Result<Vec<ShardObject>> {
    let objids = list_image_objids(location, source).await?;
    Ok(objids
        .into_iter()
        .map(|objid| ShardObject { objid, label: 0 })
        .collect())
}

async fn load(
    location: &StoreLocation,
    source: &Arc<ImageSource>,
    objects: &[ShardObject],
    cache: &ShardCache,
) -> anyhow::Result<LoadedShard> {
    let mut progress = |_done: usize, _total: usize| {};
    load_shard(
        location,
        source,
        objects,
        &PreprocessConfig::default(),
        Some(cache),
        None,
        ShardResidence::InMemory,
        8,
        &CancellationToken::new(),
        &mut progress,
    )
    .await
}

fn cached_shard_files(cache: &ShardCache) -> usize {
    std::fs::read_dir(cache.dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "shard"))
                .count()
        })
        .unwrap_or(0)
}

/// The preprocessed image of the `position`-th object (in objid order) of a loaded shard.
fn image_at(shard: &LoadedShard, position: usize) -> &[u8] {
    &shard.data.images[position * IMAGE_LEN..(position + 1) * IMAGE_LEN]
}

#[tokio::test]
async fn images_failing_their_first_two_reads_are_all_loaded() -> anyhow::Result<()> {
    for (name, images_as_zip, fault) in [
        ("faults-dir-503", false, InjectedFault::ServiceUnavailable),
        ("faults-dir-reset", false, InjectedFault::ConnectionReset),
        ("faults-zip-503", true, InjectedFault::ServiceUnavailable),
    ] {
        let location = synthetic_dataset(name, images_as_zip).await?;
        let (faulty_location, faulty) = with_faults(&location, 2, fault);
        // Opening the zip index reads its tail and central directory through the faults too.
        let source = Arc::new(open_image_source(&faulty_location).await?);
        let objects = all_objects(&location, &source).await?;
        let cache_dir = tempfile::tempdir()?;
        let cache = ShardCache::open(cache_dir.path().to_path_buf())?;

        let loaded = load(&faulty_location, &source, &objects, &cache).await?;

        assert!(loaded.skipped.is_empty(), "{name}: {:?}", loaded.skipped);
        assert_eq!(loaded.data.labels.len(), objects.len(), "{name}");
        assert!(
            faulty.injected_faults() >= 2 * objects.len() as u64,
            "{name}: only {} faults injected",
            faulty.injected_faults()
        );
        assert_eq!(cached_shard_files(&cache), 1, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn corrupt_and_missing_images_are_still_skipped_and_named() -> anyhow::Result<()> {
    let location = synthetic_dataset("faults-corrupt", false).await?;
    let (faulty_location, _faulty) = with_faults(&location, 2, InjectedFault::ServiceUnavailable);
    let source = Arc::new(open_image_source(&faulty_location).await?);
    let objects = all_objects(&location, &source).await?;
    let corrupt_objid = objects[5].objid;
    let missing_objid = objects[9].objid;
    location
        .put_bytes(
            &image_path(corrupt_objid),
            Bytes::from_static(b"\xFF\xD8 not a jpeg at all"),
        )
        .await?;
    location
        .store
        .delete(&location.child(&image_path(missing_objid)))
        .await?;
    let cache_dir = tempfile::tempdir()?;
    let cache = ShardCache::open(cache_dir.path().to_path_buf())?;

    let loaded = load(&faulty_location, &source, &objects, &cache).await?;

    let mut skipped = loaded.skipped.clone();
    skipped.sort_unstable();
    let skipped_objids: Vec<i64> = skipped.iter().map(|(objid, _)| *objid).collect();
    assert_eq!(skipped_objids, vec![corrupt_objid, missing_objid]);
    for (objid, reason) in &skipped {
        assert!(
            reason.contains(&format!("{objid}.jpg")),
            "reason does not name the object: {reason}"
        );
    }
    assert_eq!(loaded.data.labels.len(), objects.len() - 2);
    Ok(())
}

#[tokio::test]
async fn a_store_down_longer_than_the_retries_fails_the_load_uncached() -> anyhow::Result<()> {
    let location = synthetic_dataset("faults-outage", false).await?;
    let (faulty_location, _faulty) = with_faults(
        &location,
        FAST_RETRY.max_attempts + 4,
        InjectedFault::ServiceUnavailable,
    );
    let source = Arc::new(open_image_source(&faulty_location).await?);
    let objects = all_objects(&location, &source).await?;
    let cache_dir = tempfile::tempdir()?;
    let cache = ShardCache::open(cache_dir.path().to_path_buf())?;

    let error = match load(&faulty_location, &source, &objects, &cache).await {
        Ok(loaded) => panic!(
            "load succeeded with {} images, {} skipped",
            loaded.data.labels.len(),
            loaded.skipped.len()
        ),
        Err(error) => format!("{error:#}"),
    };

    let named_objid = objects
        .iter()
        .find(|object| error.contains(&format!("objid {} ", object.objid)))
        .map(|object| object.objid)
        .unwrap_or_else(|| panic!("error names no objid: {error}"));
    assert!(error.contains(&image_path(named_objid)), "{error}");
    assert!(error.contains("gave up after 6 attempts"), "{error}");
    assert!(error.contains("503 Service Unavailable"), "{error}");
    assert_eq!(cached_shard_files(&cache), 0);
    Ok(())
}

#[tokio::test]
async fn a_rewritten_image_is_fetched_again_not_served_from_the_cache() -> anyhow::Result<()> {
    for (name, images_as_zip) in [("faults-rewrite-dir", false), ("faults-rewrite-zip", true)] {
        let location = synthetic_dataset(name, images_as_zip).await?;
        // No faults: the store only counts reads.
        let (counting_location, counter) =
            with_faults(&location, 0, InjectedFault::ServiceUnavailable);
        let source = Arc::new(open_image_source(&counting_location).await?);
        let objects = all_objects(&location, &source).await?;
        let cache_dir = tempfile::tempdir()?;
        let cache = ShardCache::open(cache_dir.path().to_path_buf())?;

        let first = load(&counting_location, &source, &objects, &cache).await?;
        let reads_after_first_load = counter.reads();
        let second = load(&counting_location, &source, &objects, &cache).await?;
        assert_eq!(
            counter.reads(),
            reads_after_first_load,
            "{name}: not served from the cache"
        );
        assert_eq!(second.data.images, first.data.images, "{name}");

        if images_as_zip {
            // Same bytes, new object version: the identity changes, so the shard is read again.
            let archive = location.get_bytes(IMAGES_ZIP).await?;
            location.put_bytes(IMAGES_ZIP, archive).await?;
        } else {
            let other_image = location.get_bytes(&image_path(objects[4].objid)).await?;
            location
                .put_bytes(&image_path(objects[3].objid), other_image)
                .await?;
        }
        let third = load(&counting_location, &source, &objects, &cache).await?;

        assert!(
            counter.reads() >= reads_after_first_load + objects.len() as u64,
            "{name}: the shard was not fetched again"
        );
        assert!(third.skipped.is_empty(), "{name}: {:?}", third.skipped);
        if !images_as_zip {
            assert_eq!(
                image_at(&third, 3),
                image_at(&first, 4),
                "{name}: stale image"
            );
            assert_ne!(image_at(&third, 3), image_at(&first, 3), "{name}");
        }
        assert_eq!(cached_shard_files(&cache), 2, "{name}");
    }
    Ok(())
}

/// A shard loaded into a record file (page-cache cap of 64 KiB, a few images) trains from the same
/// images, labels and objids as one held in memory; a second load reads the cached file, and a truncated
/// file is detected, removed and rebuilt from the store.
#[tokio::test]
async fn a_record_file_shard_matches_the_in_memory_one_and_a_truncated_record_file_is_rebuilt()
-> anyhow::Result<()> {
    let location = synthetic_dataset("record-file-shard", false).await?;
    let source = Arc::new(open_image_source(&location).await?);
    let objects: Vec<ShardObject> = all_objects(&location, &source)
        .await?
        .into_iter()
        .map(|object| ShardObject {
            label: (object.objid % 5) as u32,
            ..object
        })
        .collect();
    let cache_dir = tempfile::tempdir()?;
    let cache = ShardCache::open(cache_dir.path().to_path_buf())?;
    let in_memory = load(&location, &source, &objects, &cache).await?;
    let record_file_residence = ShardResidence::RecordFile {
        max_cached_bytes: 64 << 10,
    };
    let load_from_records = || async {
        let mut progress = |_done: usize, _total: usize| {};
        load_shard(
            &location,
            &source,
            &objects,
            &PreprocessConfig::default(),
            Some(&cache),
            None,
            record_file_residence,
            8,
            &CancellationToken::new(),
            &mut progress,
        )
        .await
    };
    let record_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.dir())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "records"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let same_as_in_memory = |from_records: &LoadedShard, what: &str| {
        assert!(
            from_records.data.images.is_empty(),
            "{what}: images held in memory"
        );
        assert_eq!(from_records.objids, in_memory.objids, "{what}");
        assert_eq!(from_records.data.labels, in_memory.data.labels, "{what}");
        for position in 0..in_memory.objids.len() {
            let mut image = Vec::new();
            from_records
                .data
                .append_image(position, &mut image)
                .expect("record read");
            assert!(
                image == image_at(&in_memory, position),
                "{what}: image {position} differs"
            );
        }
    };

    let fetched = load_from_records().await?;
    same_as_in_memory(&fetched, "fetched");
    let files = record_files();
    assert_eq!(files.len(), 1);
    let written_at = std::fs::metadata(&files[0])?.modified()?;
    let from_cache = load_from_records().await?;
    same_as_in_memory(&from_cache, "from the record cache");
    assert_eq!(
        std::fs::metadata(&files[0])?.modified()?,
        written_at,
        "the second load must map the cached file, not rewrite it"
    );

    let file = std::fs::OpenOptions::new().write(true).open(&files[0])?;
    file.set_len(file.metadata()?.len() - 1000)?;
    drop(file);
    let rebuilt = load_from_records().await?;
    same_as_in_memory(&rebuilt, "rebuilt");
    assert_eq!(record_files().len(), 1);
    Ok(())
}
