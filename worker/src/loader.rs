//! Loads a rank's shard: fetches images from the object store with bounded concurrency (transient store errors
//! retried by the location), preprocesses them on the blocking pool, skips (and counts) images that are
//! really bad (missing or undecodable), fails on any other fetch error, and caches a complete result on local
//! disk under a key that includes the identity of the source objects.
//!
//! With [`ShardResidence::RecordFile`] the shard never sits in memory whole: preprocessed images are appended
//! to the shard's record file as they arrive, and training copies them out image by image with positioned
//! reads, the file's pages in the page cache capped (`plankton_preprocess::RecordShard`). A truncated or
//! corrupt record file is counted, logged, removed and rebuilt from the store.
//!
//! Self-contained on purpose (no `crate::` paths): `tests/transient_faults.rs` compiles this file directly.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plankton_dataset::{
    DatasetError, ImageSource, ImageVersions, StoreLocation, fetch_images, image_source_version,
    is_bad_image,
};
use plankton_preprocess::{
    CacheError, CachedShard, IMAGE_LEN, PreprocessConfig, RecordShard, ShardCache,
    ShardRecordWriter, preprocess_batch_into,
};
use plankton_proto::v1::ShardObject;
use plankton_trainer::{ImageRecords, ShardData};

/// Objects decoded per blocking preprocessing task.
const PREPROCESS_CHUNK: usize = 256;

/// A loaded shard and what could not be loaded.
pub struct LoadedShard {
    pub data: ShardData,
    /// The objid of each image of `data`, in its order (ascending).
    pub objids: Vec<i64>,
    /// Objects left out because they are missing from the store or undecodable, with the reason.
    pub skipped: Vec<(i64, String)>,
}

/// Where a loaded shard's images live while the job trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardResidence {
    /// In one buffer in memory (the shard cache, when there is one, holds a copy on disk).
    #[default]
    InMemory,
    /// In the shard cache's record file on disk, read image by image into the batch, with what the file keeps
    /// in the page cache capped at `max_cached_bytes` (0: no cap). Needs a shard cache.
    RecordFile { max_cached_bytes: usize },
}

/// A record file's images in objid order (the file holds them in fetch order).
#[derive(Debug)]
struct OrderedRecords {
    file: RecordShard,
    /// `order[i]` is the record of the i-th image in objid order.
    order: Vec<u32>,
}

impl ImageRecords for OrderedRecords {
    fn append_image(&self, index: usize, out: &mut Vec<u8>) -> Result<(), String> {
        self.file
            .read_image_into(self.order[index] as usize, out)
            .map_err(|error| error.to_string())
    }
}

/// Progress callback: (objects done, objects total).
pub type LoadProgress<'a> = &'a mut (dyn FnMut(usize, usize) + Send);

/// Loads `objects` from `location`, from `cache` when it holds them as they are in the store now: as
/// `versions` says when given (read for several shards at once), else as read from the store for this load.
///
/// An image missing from the store or undecodable is skipped and listed in [`LoadedShard::skipped`]. Any other
/// fetch error (the store still failing after `location.retry`, permissions, ...) fails the whole load with an
/// error naming the object, and nothing is cached: no image is ever lost to a transient fault.
#[allow(clippy::too_many_arguments)]
pub async fn load_shard(
    location: &StoreLocation,
    image_source: &Arc<ImageSource>,
    objects: &[ShardObject],
    preprocess_config: &PreprocessConfig,
    cache: Option<&ShardCache>,
    versions: Option<&ImageVersions>,
    residence: ShardResidence,
    fetch_concurrency: usize,
    cancel: &CancellationToken,
    progress: LoadProgress<'_>,
) -> anyhow::Result<LoadedShard> {
    let objids: Vec<i64> = objects.iter().map(|object| object.objid).collect();
    let cache_key = match cache {
        Some(_) => {
            shard_cache_key(location, image_source, versions, preprocess_config, &objids).await?
        }
        None => None,
    };
    let records_into = match (residence, cache, &cache_key) {
        (ShardResidence::RecordFile { max_cached_bytes }, Some(cache), Some(cache_key)) => {
            Some((cache, cache_key.as_str(), max_cached_bytes))
        }
        (ShardResidence::RecordFile { .. }, _, _) => {
            warn!("no shard cache key for a record-file shard; holding it in memory");
            None
        }
        (ShardResidence::InMemory, _, _) => None,
    };
    if let Some((cache, cache_key, max_cached_bytes)) = records_into {
        match cache.open_records(cache_key, max_cached_bytes) {
            Ok(Some(records)) => {
                info!(
                    objects = records.len(),
                    skipped = records.skipped().len(),
                    "shard read from the local record cache"
                );
                progress(objects.len(), objects.len());
                crate::telemetry::metrics().shard_cache_hits.inc();
                return Ok(from_records(records, objects));
            }
            Ok(None) => {}
            Err(error @ CacheError::Corrupt { .. }) => {
                crate::telemetry::metrics().shard_cache_corrupt.inc();
                warn!(%error, "shard record file corrupt; removed, fetching again");
            }
            Err(error) => warn!(%error, "shard record file unreadable; fetching again"),
        }
    }
    let mut record_writer = match records_into {
        Some((cache, cache_key, _)) => Some(cache.record_writer(cache_key)?),
        None => None,
    };
    if let (None, Some(cache), Some(cache_key)) = (&records_into, cache, &cache_key) {
        match cache.load(cache_key) {
            Ok(Some(cached)) => {
                info!(
                    objects = cached.objids.len(),
                    skipped = cached.skipped.len(),
                    "shard loaded from the local cache"
                );
                progress(objects.len(), objects.len());
                crate::telemetry::metrics().shard_cache_hits.inc();
                return Ok(from_cached(cached, objects));
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "shard cache unreadable; fetching again"),
        }
    }
    let started = Instant::now();
    crate::telemetry::metrics().shard_cache_misses.inc();
    let label_of = labels_by_objid(objects);
    let images_held = if record_writer.is_some() {
        PREPROCESS_CHUNK
    } else {
        objects.len()
    };
    let mut loaded = CachedShard {
        objids: Vec::with_capacity(objects.len()),
        images: Vec::with_capacity(images_held * IMAGE_LEN),
        skipped: Vec::new(),
    };
    let mut fetched = fetch_images(location, image_source, objids.clone(), fetch_concurrency)
        .chunks(PREPROCESS_CHUNK);
    let mut done = 0usize;
    while let Some(chunk) = fetched.next().await {
        if cancel.is_cancelled() {
            anyhow::bail!("cancelled while loading the shard");
        }
        let objids_before = loaded.objids.len();
        let mut chunk_objids = Vec::with_capacity(chunk.len());
        let mut chunk_bytes = Vec::with_capacity(chunk.len());
        for (objid, result) in chunk {
            match result {
                Ok(bytes) => {
                    chunk_objids.push(objid);
                    chunk_bytes.push(bytes);
                }
                Err(error) if is_bad_image(&error) => {
                    crate::telemetry::metrics().images_skipped.inc();
                    warn!(objid, %error, "image skipped");
                    loaded.skipped.push((objid, error.to_string()));
                }
                Err(error) => {
                    anyhow::bail!(
                        "cannot load the shard: the image of objid {objid} could not be fetched, \
                         nothing was skipped or cached: {error}"
                    );
                }
            }
        }
        let config = preprocess_config.clone();
        // Preprocess straight into the shard's buffer, then drop the slots of images that failed.
        let first_slot = loaded.images.len();
        loaded
            .images
            .resize(first_slot + chunk_bytes.len() * IMAGE_LEN, 0);
        let mut images = std::mem::take(&mut loaded.images);
        let (mut images, results) = tokio::task::spawn_blocking(move || {
            let results = preprocess_batch_into(&chunk_bytes, &config, &mut images[first_slot..]);
            (images, results)
        })
        .await?;
        let mut kept_slot = first_slot;
        for (index, (objid, result)) in chunk_objids.into_iter().zip(results).enumerate() {
            match result {
                Ok(()) => {
                    crate::telemetry::metrics().images_fetched.inc();
                    let slot = first_slot + index * IMAGE_LEN;
                    images.copy_within(slot..slot + IMAGE_LEN, kept_slot);
                    kept_slot += IMAGE_LEN;
                    loaded.objids.push(objid);
                }
                Err(error) => {
                    crate::telemetry::metrics().images_skipped.inc();
                    warn!(objid, %error, "image skipped");
                    loaded
                        .skipped
                        .push((objid, format!("imgs/{objid}.jpg: {error}")));
                }
            }
        }
        images.truncate(kept_slot);
        loaded.images = images;
        if let Some(writer) = record_writer.take() {
            // The chunk's images go to the record file and leave memory.
            let chunk_objids = loaded.objids[objids_before..].to_vec();
            let chunk_images = std::mem::take(&mut loaded.images);
            let labels: Vec<u32> = chunk_objids
                .iter()
                .map(|objid| label_of.get(objid).copied().unwrap_or(0))
                .collect();
            let writer = tokio::task::spawn_blocking(move || {
                append_records(writer, &chunk_objids, &labels, &chunk_images)
            })
            .await??;
            record_writer = Some(writer);
        }
        done = loaded.objids.len() + loaded.skipped.len();
        progress(done, objects.len());
    }
    info!(
        objects = loaded.objids.len(),
        skipped = loaded.skipped.len(),
        seconds = started.elapsed().as_secs_f64(),
        "shard fetched and preprocessed"
    );
    debug_assert_eq!(done, objects.len());
    if let (Some(writer), Some((cache, cache_key, max_cached_bytes))) =
        (record_writer, records_into)
    {
        let skipped = loaded.skipped.clone();
        tokio::task::spawn_blocking(move || writer.finish(&skipped)).await??;
        let records = cache
            .open_records(cache_key, max_cached_bytes)?
            .ok_or_else(|| anyhow::anyhow!("the shard record file just written is gone"))?;
        return Ok(from_records(records, objects));
    }
    if let (Some(cache), Some(cache_key)) = (cache, &cache_key)
        && let Err(error) = cache.store(cache_key, &loaded)
    {
        warn!(%error, "could not write the shard cache");
    }
    Ok(from_cached(loaded, objects))
}

/// Appends a chunk's kept images to the record file (on the blocking pool) and hands the writer back.
fn append_records(
    mut writer: ShardRecordWriter,
    objids: &[i64],
    labels: &[u32],
    images: &[u8],
) -> Result<ShardRecordWriter, CacheError> {
    for ((objid, label), image) in objids
        .iter()
        .zip(labels)
        .zip(images.chunks_exact(IMAGE_LEN))
    {
        writer.append(*objid, *label, image)?;
    }
    Ok(writer)
}

/// The assignment's label of each of its objects.
fn labels_by_objid(objects: &[ShardObject]) -> std::collections::HashMap<i64, u32> {
    objects
        .iter()
        .map(|object| (object.objid, object.label))
        .collect()
}

/// A record file's images in objid order with their labels from the assignment.
fn from_records(file: RecordShard, objects: &[ShardObject]) -> LoadedShard {
    let label_of = labels_by_objid(objects);
    let mut skipped = file.skipped().to_vec();
    let mut order: Vec<u32> = Vec::with_capacity(file.len());
    for index in 0..file.len() {
        let objid = file.objid(index);
        if label_of.contains_key(&objid) {
            order.push(index as u32);
        } else {
            skipped.push((objid, "not part of this shard".into()));
        }
    }
    order.sort_by_key(|&index| file.objid(index as usize));
    let objids: Vec<i64> = order
        .iter()
        .map(|&index| file.objid(index as usize))
        .collect();
    let labels = objids.iter().map(|objid| label_of[objid]).collect();
    let records = OrderedRecords { file, order };
    LoadedShard {
        data: ShardData::from_records(std::sync::Arc::new(records), labels),
        objids,
        skipped,
    }
}

/// The cache key of these objects as they are in the store now, or `None` (load without the cache) when
/// their identity cannot be read, e.g. a store that allows GET but not LIST. Fails when `imgs.zip` was
/// replaced since `image_source` indexed it: reading members at stale offsets would condemn good images.
async fn shard_cache_key(
    location: &StoreLocation,
    image_source: &ImageSource,
    versions: Option<&ImageVersions>,
    preprocess_config: &PreprocessConfig,
    objids: &[i64],
) -> anyhow::Result<Option<String>> {
    let source_version = match versions {
        Some(versions) => Ok(versions.digest(objids)),
        None => image_source_version(location, image_source, objids).await,
    };
    match source_version {
        Ok(source_version) => Ok(Some(ShardCache::key_with_source_version(
            &location.url,
            preprocess_config.resize_mode,
            objids,
            &source_version,
        ))),
        Err(error @ DatasetError::Zip { .. }) => Err(error.into()),
        Err(error) => {
            warn!(%error, "cannot read the identity of the shard's images; loading without the shard cache");
            Ok(None)
        }
    }
}

/// Joins preprocessed images with their labels from the assignment.
fn from_cached(cached: CachedShard, objects: &[ShardObject]) -> LoadedShard {
    let label_of = labels_by_objid(objects);
    let mut labels = Vec::with_capacity(cached.objids.len());
    let mut objids = Vec::with_capacity(cached.objids.len());
    let mut images = Vec::with_capacity(cached.images.len());
    let mut skipped = cached.skipped;
    // Fetches complete in any order: take images by objid so a shard (and so training) is the same on every
    // run, whether it was just fetched or read from a cache written in fetch order.
    let mut order: Vec<usize> = (0..cached.objids.len()).collect();
    order.sort_by_key(|&index| cached.objids[index]);
    for index in order {
        let objid = &cached.objids[index];
        match label_of.get(objid) {
            Some(&label) => {
                labels.push(label);
                objids.push(*objid);
                images
                    .extend_from_slice(&cached.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN]);
            }
            None => skipped.push((*objid, "not part of this shard".into())),
        }
    }
    LoadedShard {
        data: ShardData {
            images,
            labels,
            ..ShardData::default()
        },
        objids,
        skipped,
    }
}
