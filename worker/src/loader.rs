//! Loads a rank's shard: fetches images from the object store with bounded concurrency, preprocesses them on
//! the blocking pool, skips (and counts) unreadable ones, and caches the result on local disk.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plankton_dataset::{ImageSource, StoreLocation, fetch_images};
use plankton_preprocess::{
    CachedShard, IMAGE_LEN, PreprocessConfig, ShardCache, preprocess_batch_into,
};
use plankton_proto::v1::ShardObject;
use plankton_trainer::ShardData;

/// Objects decoded per blocking preprocessing task.
const PREPROCESS_CHUNK: usize = 256;

/// A loaded shard and what could not be loaded.
pub struct LoadedShard {
    pub data: ShardData,
    pub skipped: Vec<(i64, String)>,
}

/// Progress callback: (objects done, objects total).
pub type LoadProgress<'a> = &'a mut (dyn FnMut(usize, usize) + Send);

#[allow(clippy::too_many_arguments)]
pub async fn load_shard(
    location: &StoreLocation,
    image_source: &Arc<ImageSource>,
    objects: &[ShardObject],
    preprocess_config: &PreprocessConfig,
    cache: Option<&ShardCache>,
    fetch_concurrency: usize,
    cancel: &CancellationToken,
    progress: LoadProgress<'_>,
) -> anyhow::Result<LoadedShard> {
    let objids: Vec<i64> = objects.iter().map(|object| object.objid).collect();
    let cache_key = ShardCache::key(&location.url, preprocess_config.resize_mode, &objids);
    if let Some(cache) = cache {
        match cache.load(&cache_key) {
            Ok(Some(cached)) => {
                info!(
                    objects = cached.objids.len(),
                    skipped = cached.skipped.len(),
                    "shard loaded from the local cache"
                );
                progress(objects.len(), objects.len());
                return Ok(from_cached(cached, objects));
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "shard cache unreadable; fetching again"),
        }
    }
    let started = Instant::now();
    let mut loaded = CachedShard {
        objids: Vec::with_capacity(objects.len()),
        images: Vec::with_capacity(objects.len() * IMAGE_LEN),
        skipped: Vec::new(),
    };
    let mut fetched = fetch_images(location, image_source, objids.clone(), fetch_concurrency)
        .chunks(PREPROCESS_CHUNK);
    let mut done = 0usize;
    while let Some(chunk) = fetched.next().await {
        if cancel.is_cancelled() {
            anyhow::bail!("cancelled while loading the shard");
        }
        let mut chunk_objids = Vec::with_capacity(chunk.len());
        let mut chunk_bytes = Vec::with_capacity(chunk.len());
        for (objid, result) in chunk {
            match result {
                Ok(bytes) => {
                    chunk_objids.push(objid);
                    chunk_bytes.push(bytes);
                }
                Err(error) => {
                    warn!(objid, %error, "image skipped");
                    loaded.skipped.push((objid, error.to_string()));
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
                    let slot = first_slot + index * IMAGE_LEN;
                    images.copy_within(slot..slot + IMAGE_LEN, kept_slot);
                    kept_slot += IMAGE_LEN;
                    loaded.objids.push(objid);
                }
                Err(error) => {
                    warn!(objid, %error, "image skipped");
                    loaded
                        .skipped
                        .push((objid, format!("imgs/{objid}.jpg: {error}")));
                }
            }
        }
        images.truncate(kept_slot);
        loaded.images = images;
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
    if let Some(cache) = cache
        && let Err(error) = cache.store(&cache_key, &loaded)
    {
        warn!(%error, "could not write the shard cache");
    }
    Ok(from_cached(loaded, objects))
}

/// Joins preprocessed images with their labels from the assignment.
fn from_cached(cached: CachedShard, objects: &[ShardObject]) -> LoadedShard {
    let label_of: std::collections::HashMap<i64, u32> = objects
        .iter()
        .map(|object| (object.objid, object.label))
        .collect();
    let mut labels = Vec::with_capacity(cached.objids.len());
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
                images
                    .extend_from_slice(&cached.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN]);
            }
            None => skipped.push((*objid, "not part of this shard".into())),
        }
    }
    LoadedShard {
        data: ShardData { images, labels },
        skipped,
    }
}
