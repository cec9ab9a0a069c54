//! Streaming ingestion: a shard's training images arrive in the first epoch's visit order while training
//! reads them; the first batch is readable long before the last image is fetched, every image equals a whole
//! load's (held in memory or spilled to disk), unreadable images are counted and left out, and every wait is
//! bounded and names the object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use plankton_dataset::faults::{FaultInjectingStore, InjectedFault};
use plankton_dataset::{
    FetchRetry, ImageSource, StoreLocation, image_path, list_image_objids, open_image_source,
    open_location,
};
use plankton_preprocess::{IMAGE_LEN, PreprocessConfig};
use plankton_proto::v1::ShardObject;
use plankton_synth::{MINIMUM_OBJECTS, SynthConfig};
use plankton_trainer::{EpochBatches, ImageRecords};
use tokio_util::sync::CancellationToken;

use plankton_worker::{
    ShardResidence, StreamedImages, first_epoch_order, load_shard, spawn_stream,
};

const BATCH: usize = 8;
const SEED: u64 = 5;

async fn synthetic_dataset(
    name: &str,
) -> anyhow::Result<(StoreLocation, Arc<ImageSource>, Vec<i64>)> {
    let location = open_location(&format!("memory://{name}"))?;
    let config = SynthConfig {
        count: MINIMUM_OBJECTS,
        seed: 3,
        images_as_zip: false,
        gzip_features: false,
        concurrency: 8,
    };
    plankton_synth::generate(location.store.clone(), location.prefix.clone(), &config).await?;
    let source = Arc::new(open_image_source(&location).await?);
    let mut objids = list_image_objids(&location, &source).await?;
    objids.sort_unstable();
    Ok((location, source, objids))
}

/// Streams `objids` from `location` into new records (waits bounded by `wait_bound`).
fn stream(
    location: &StoreLocation,
    source: &Arc<ImageSource>,
    objids: &[i64],
    wait_bound: Duration,
) -> Arc<StreamedImages> {
    stream_into(
        location,
        source,
        Arc::new(StreamedImages::new(objids.to_vec(), wait_bound)),
    )
}

/// Streams `records`' images from `location` into them.
fn stream_into(
    location: &StoreLocation,
    source: &Arc<ImageSource>,
    records: Arc<StreamedImages>,
) -> Arc<StreamedImages> {
    let objids = records.len();
    let order = first_epoch_order(objids, BATCH, SEED, 0, objids / BATCH);
    spawn_stream(
        location.clone(),
        source.clone(),
        records.clone(),
        order,
        PreprocessConfig::default(),
        4,
        CancellationToken::new(),
    );
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_batch_is_readable_before_the_shard_is_in_and_every_image_equals_a_whole_load()
-> anyhow::Result<()> {
    let (location, source, objids) = synthetic_dataset("streaming-slow").await?;
    // 25 ms per read, 4 reads in flight: the 80 images take ~0.5 s, a batch of 8 ~50 ms.
    let slow = Arc::new(ThrottledStore::new(
        location.store.clone(),
        ThrottleConfig {
            wait_get_per_call: Duration::from_millis(25),
            ..ThrottleConfig::default()
        },
    ));
    let slow_location = location.with_store(slow);
    let started = Instant::now();
    let records = stream(&slow_location, &source, &objids, Duration::from_secs(30));

    let first_step: Vec<usize> = EpochBatches::new(
        objids.len(),
        BATCH,
        SEED,
        0,
        0,
        plankton_trainer::AugmentationMode::None,
        &[],
    )
    .step_indices(0)
    .collect();
    let waiter = records.clone();
    let first_step_for_wait = first_step.clone();
    tokio::task::spawn_blocking(move || waiter.wait_for(&first_step_for_wait))
        .await?
        .map_err(anyhow::Error::msg)?;
    let first_batch_in = started.elapsed();
    let settled_then = records.settled();
    assert!(
        settled_then < objids.len() / 2,
        "the first batch waited for {settled_then} of {} images",
        objids.len()
    );

    let all: Vec<usize> = (0..objids.len()).collect();
    let waiter = records.clone();
    tokio::task::spawn_blocking(move || waiter.wait_for(&all))
        .await?
        .map_err(anyhow::Error::msg)?;
    let all_in = started.elapsed();
    assert!(
        first_batch_in * 3 < all_in,
        "first batch after {first_batch_in:?}, whole shard after {all_in:?}"
    );
    assert!(records.skipped().is_empty(), "{:?}", records.skipped());

    // A whole load of the same objects gives the same bytes for every image.
    let objects: Vec<ShardObject> = objids
        .iter()
        .map(|&objid| ShardObject { objid, label: 0 })
        .collect();
    let mut progress = |_: usize, _: usize| {};
    let whole = load_shard(
        &location,
        &source,
        &objects,
        &PreprocessConfig::default(),
        None,
        None,
        ShardResidence::InMemory,
        8,
        &CancellationToken::new(),
        &mut progress,
    )
    .await?;
    assert_eq!(whole.objids, objids);
    for (index, objid) in objids.iter().enumerate() {
        assert!(records.contains(index));
        let mut image = Vec::new();
        records.append_image(index, &mut image).expect("arrived");
        assert!(
            image == whole.data.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN],
            "image {index} (objid {objid}) differs from the whole load's"
        );
    }
    Ok(())
}

#[test]
fn the_first_epoch_order_visits_each_image_once_in_batch_order() {
    for (len, steps) in [(80, 10), (83, 10), (20, 5)] {
        let order = first_epoch_order(len, BATCH, SEED, 1, steps);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "len {len}");
        let batches = EpochBatches::new(
            len,
            BATCH,
            SEED,
            1,
            0,
            plankton_trainer::AugmentationMode::None,
            &[],
        );
        let first: Vec<usize> = batches.step_indices(0).collect();
        assert_eq!(&order[..BATCH], &first[..], "len {len}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_image_is_counted_named_and_left_out() -> anyhow::Result<()> {
    let (location, source, objids) = synthetic_dataset("streaming-bad").await?;
    let corrupt = objids[3];
    let missing = objids[40];
    location
        .put_bytes(
            &image_path(corrupt),
            Bytes::from_static(b"\xFF\xD8 not a jpeg"),
        )
        .await?;
    location
        .store
        .delete(&location.child(&image_path(missing)))
        .await?;
    let records = stream(&location, &source, &objids, Duration::from_secs(30));
    let all: Vec<usize> = (0..objids.len()).collect();
    let waiter = records.clone();
    tokio::task::spawn_blocking(move || waiter.wait_for(&all))
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut skipped = records.skipped();
    skipped.sort_unstable();
    assert_eq!(
        skipped.iter().map(|(objid, _)| *objid).collect::<Vec<_>>(),
        vec![corrupt, missing]
    );
    for (objid, reason) in &skipped {
        assert!(reason.contains(&format!("{objid}.jpg")), "{reason}");
    }
    assert!(!records.contains(3) && !records.contains(40));
    assert_eq!(
        (0..objids.len())
            .filter(|&index| records.contains(index))
            .count(),
        objids.len() - 2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stays_down_fails_the_waiting_reader_with_the_object_named()
-> anyhow::Result<()> {
    let (location, source, objids) = synthetic_dataset("streaming-down").await?;
    let down = Arc::new(
        FaultInjectingStore::new(location.store.clone(), u32::MAX)
            .with_fault(InjectedFault::ServiceUnavailable),
    );
    let down_location = location.with_store(down).with_retry(FetchRetry {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_elapsed: Duration::from_secs(5),
    });
    // The bound is long: the failure, not the bound, ends the wait.
    let records = stream(&down_location, &source, &objids, Duration::from_secs(60));
    let started = Instant::now();
    let waiter = records.clone();
    let error = tokio::task::spawn_blocking(move || waiter.wait_for(&[0, 1, 2]))
        .await?
        .expect_err("the store is down");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("could not be fetched") && error.contains("objid"),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_wait_for_an_image_that_never_comes_ends_at_its_bound_naming_the_object() {
    let records = StreamedImages::new(vec![101, 102, 103], Duration::from_millis(50));
    records
        .fill(&[(0, Some(&[7u8; IMAGE_LEN][..]))], Vec::new())
        .expect("held in memory");
    assert!(records.wait_for(&[0]).is_ok());
    let started = Instant::now();
    let error = records
        .wait_for(&[0, 2])
        .expect_err("image 2 never arrives");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(
        error.contains("objid 103") && error.contains("1 of 3"),
        "{error}"
    );
}

/// Spilled to an unnamed file in the cache folder with a 64 KiB page-cache cap (five images), a streamed shard
/// reads back every image as the in-memory stream does, in the first epoch's order, and leaves no file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_streams_read_back_every_image_and_leave_no_file() -> anyhow::Result<()> {
    let (location, source, objids) = synthetic_dataset("streaming-spilled").await?;
    let cache_dir = tempfile::tempdir()?;
    let wait_bound = Duration::from_secs(30);
    let spilled = stream_into(
        &location,
        &source,
        Arc::new(StreamedImages::spilled(
            objids.clone(),
            wait_bound,
            cache_dir.path(),
            64 << 10,
        )?),
    );
    let in_memory = stream(&location, &source, &objids, wait_bound);
    let order = first_epoch_order(objids.len(), BATCH, SEED, 0, objids.len() / BATCH);
    for records in [&spilled, &in_memory] {
        let waiter = records.clone();
        let all = order.clone();
        tokio::task::spawn_blocking(move || waiter.wait_for(&all))
            .await?
            .map_err(anyhow::Error::msg)?;
    }
    for index in order {
        let (mut from_disk, mut from_memory) = (Vec::new(), Vec::new());
        spilled
            .append_image(index, &mut from_disk)
            .map_err(anyhow::Error::msg)?;
        in_memory
            .append_image(index, &mut from_memory)
            .map_err(anyhow::Error::msg)?;
        assert_eq!(from_disk.len(), IMAGE_LEN);
        assert!(
            from_disk == from_memory,
            "image {index} (objid {}) differs once spilled",
            objids[index]
        );
    }
    assert_eq!(
        std::fs::read_dir(cache_dir.path())?.count(),
        0,
        "the spill file has no name"
    );
    Ok(())
}
