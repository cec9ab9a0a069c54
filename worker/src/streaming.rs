//! Streaming ingestion: a virtual shard's training images are fetched and preprocessed in the order the first
//! epoch visits them, into records that training reads as each image arrives, so a rank starts training after
//! its first batch instead of its whole shard.
//!
//! The shard's length is the assignment's, fixed before any image arrives. When every image is readable,
//! training sees exactly the images, order and batches of a fully loaded shard (the same weights, bit for bit).
//! An image that turns out missing or undecodable is counted, logged and left out of its batches (a full load
//! drops it from the shard instead, which changes the shuffle). A store failure that retries do not cure fails
//! the records: the rank waiting on them fails its step with the error, naming the object.
//!
//! Arrived images are held in memory, or, with [`StreamedImages::spilled`], written to an unnamed file on disk
//! (image `i` of the shard at `i * IMAGE_LEN`) and copied into each batch with positioned reads, so a worker
//! streams a shard larger than its memory; what the file keeps in the page cache is capped as the record
//! files' is.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plankton_dataset::{ImageSource, StoreLocation, fetch_images, is_bad_image};
use plankton_preprocess::{CappedFile, IMAGE_LEN, PreprocessConfig, preprocess_batch_into};
use plankton_trainer::{AugmentationMode, EpochBatches, ImageRecords};

/// Images preprocessed per blocking task: small, so the first batch is in soon.
const STREAM_CHUNK: usize = 64;

/// A shard's images, filled in any order while training reads them.
#[derive(Debug)]
pub struct StreamedImages {
    /// The objid of each slot (the shard's order: ascending objid).
    objids: Vec<i64>,
    /// Set once the image arrived or turned out unreadable; unset until then.
    slots: Vec<OnceLock<Slot>>,
    /// Where arrived images go when they are not held in memory: an unnamed file (gone when closed, also after
    /// a crash), image `slot` at `slot * IMAGE_LEN`.
    spill: Option<SpillFile>,
    state: Mutex<StreamState>,
    arrived: Condvar,
    /// The longest a reader waits for a missing image.
    wait_bound: Duration,
}

/// The unnamed file spilled images go to, and the directory it lives in (named in errors).
#[derive(Debug)]
struct SpillFile {
    file: CappedFile,
    dir: std::path::PathBuf,
}

/// A settled slot.
#[derive(Debug)]
enum Slot {
    InMemory(Box<[u8]>),
    /// In the spill file at `slot * IMAGE_LEN`.
    Spilled,
    Unreadable,
}

#[derive(Debug, Default)]
struct StreamState {
    /// Slots set (arrived or unreadable).
    settled: usize,
    /// Why the rest will never arrive.
    failure: Option<String>,
    /// Unreadable images: objid and reason.
    skipped: Vec<(i64, String)>,
}

impl StreamedImages {
    /// Empty records for `objids` (the shard's order); a reader waits at most `wait_bound` for an image.
    pub fn new(objids: Vec<i64>, wait_bound: Duration) -> Self {
        let slots = (0..objids.len()).map(|_| OnceLock::new()).collect();
        StreamedImages {
            objids,
            slots,
            spill: None,
            state: Mutex::new(StreamState::default()),
            arrived: Condvar::new(),
            wait_bound,
        }
    }

    /// Like [`StreamedImages::new`], with arrived images written to an unnamed file in `dir` instead of held
    /// in memory; `max_cached_bytes` > 0 caps what reading it keeps in the page cache (see
    /// `plankton_preprocess::RecordShard::open`).
    pub fn spilled(
        objids: Vec<i64>,
        wait_bound: Duration,
        dir: &Path,
        max_cached_bytes: usize,
    ) -> std::io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(StreamedImages {
            spill: Some(SpillFile {
                file: CappedFile::new(file, max_cached_bytes),
                dir: dir.to_path_buf(),
            }),
            ..StreamedImages::new(objids, wait_bound)
        })
    }

    /// Number of slots (the shard's length).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the records have no slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Images arrived or known unreadable so far.
    pub fn settled(&self) -> usize {
        self.lock().settled
    }

    /// The unreadable images so far: objid and reason.
    pub fn skipped(&self) -> Vec<(i64, String)> {
        self.lock().skipped.clone()
    }

    /// Number of unreadable images so far.
    pub fn skipped_count(&self) -> usize {
        self.lock().skipped.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Settles slots (`None`: unreadable, with its reason in `skipped`) and wakes the readers. The images are
    /// borrowed from the preprocessing buffer: held records copy each into memory, spilled records write it to
    /// their file (blocking I/O: call it off the async runtime). A write that fails settles nothing and is
    /// returned, naming the image's objid and the spill file's directory.
    pub fn fill(
        &self,
        arrivals: &[(usize, Option<&[u8]>)],
        skipped: Vec<(i64, String)>,
    ) -> Result<(), String> {
        if let Some(spill) = &self.spill {
            for (slot, image) in arrivals {
                if let Some(image) = image {
                    spill
                        .file
                        .file()
                        .write_all_at(image, (slot * IMAGE_LEN) as u64)
                        .map_err(|error| {
                            format!(
                                "writing the streamed image of objid {} to its spill file in {}: {error}",
                                self.objids[*slot],
                                spill.dir.display()
                            )
                        })?;
                }
            }
        }
        let mut newly_settled = 0;
        for &(slot, image) in arrivals {
            debug_assert!(image.is_none_or(|image| image.len() == IMAGE_LEN));
            let settled = match image {
                None => Slot::Unreadable,
                Some(_) if self.spill.is_some() => Slot::Spilled,
                Some(image) => Slot::InMemory(Box::from(image)),
            };
            if self.slots[slot].set(settled).is_ok() {
                newly_settled += 1;
            }
        }
        let mut state = self.lock();
        state.settled += newly_settled;
        state.skipped.extend(skipped);
        drop(state);
        self.arrived.notify_all();
        Ok(())
    }

    /// Marks the stream failed: readers of images that have not arrived fail with `reason`.
    pub fn fail(&self, reason: String) {
        self.lock().failure.get_or_insert(reason);
        self.arrived.notify_all();
    }
}

impl ImageRecords for StreamedImages {
    fn append_image(&self, index: usize, out: &mut Vec<u8>) -> Result<(), String> {
        if self.slots[index].get().is_none() {
            self.wait_for(&[index])?;
        }
        match (self.slots[index].get(), &self.spill) {
            (Some(Slot::InMemory(image)), _) => {
                out.extend_from_slice(image);
                Ok(())
            }
            (Some(Slot::Spilled), Some(spill)) => spill
                .file
                .read_into((index * IMAGE_LEN) as u64, IMAGE_LEN, out)
                .map_err(|error| {
                    format!(
                        "reading the streamed image of objid {} from its spill file in {}: {error}",
                        self.objids[index],
                        spill.dir.display()
                    )
                }),
            _ => Err(format!(
                "streamed image of objid {} is unreadable",
                self.objids[index]
            )),
        }
    }

    fn wait_for(&self, indices: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + self.wait_bound;
        let mut state = self.lock();
        loop {
            let Some(&missing) = indices
                .iter()
                .find(|&&index| self.slots[index].get().is_none())
            else {
                return Ok(());
            };
            if let Some(failure) = &state.failure {
                return Err(format!(
                    "streaming the shard's images failed before the image of objid {} arrived: {failure}",
                    self.objids[missing]
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "waited {:.0?} for the image of objid {} (streaming: {} of {} images in)",
                    self.wait_bound,
                    self.objids[missing],
                    state.settled,
                    self.slots.len()
                ));
            }
            state = self
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn contains(&self, index: usize) -> bool {
        !matches!(self.slots[index].get(), Some(Slot::Unreadable))
    }
}

/// The shard's indices in the order the first epoch visits them (each once), then those it does not visit.
pub fn first_epoch_order(
    shard_len: usize,
    batch_size: usize,
    seed: u64,
    virtual_shard: usize,
    steps_per_epoch: usize,
) -> Vec<usize> {
    let batches = EpochBatches::new(
        shard_len,
        batch_size,
        seed,
        virtual_shard,
        0,
        AugmentationMode::None,
        &[],
    );
    let mut seen = vec![false; shard_len];
    let mut order = Vec::with_capacity(shard_len);
    for step in 0..steps_per_epoch {
        for index in batches.step_indices(step) {
            if !std::mem::replace(&mut seen[index], true) {
                order.push(index);
            }
        }
        if order.len() == shard_len {
            break;
        }
    }
    order.extend((0..shard_len).filter(|&index| !seen[index]));
    order
}

/// Fetches and preprocesses `records`' images in `order` (slot indices) into them, in the background.
pub fn spawn_stream(
    location: StoreLocation,
    image_source: Arc<ImageSource>,
    records: Arc<StreamedImages>,
    order: Vec<usize>,
    preprocess_config: PreprocessConfig,
    fetch_concurrency: usize,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = stream_images(
            &location,
            &image_source,
            &records,
            order,
            &preprocess_config,
            fetch_concurrency,
            &cancel,
        )
        .await;
        match outcome {
            Ok(()) => info!(
                images = records.len(),
                skipped = records.skipped_count(),
                seconds = started.elapsed().as_secs_f64(),
                "shard streamed in"
            ),
            Err(reason) => {
                warn!(%reason, "streaming the shard failed");
                records.fail(reason);
            }
        }
    })
}

async fn stream_images(
    location: &StoreLocation,
    image_source: &ImageSource,
    records: &Arc<StreamedImages>,
    order: Vec<usize>,
    preprocess_config: &PreprocessConfig,
    fetch_concurrency: usize,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let slot_of: HashMap<i64, usize> = records
        .objids
        .iter()
        .enumerate()
        .map(|(slot, objid)| (*objid, slot))
        .collect();
    let objids: Vec<i64> = order.iter().map(|&slot| records.objids[slot]).collect();
    let mut fetched =
        fetch_images(location, image_source, objids, fetch_concurrency).ready_chunks(STREAM_CHUNK);
    while let Some(chunk) = fetched.next().await {
        if cancel.is_cancelled() {
            return Err(
                "stopped while its images streamed in: the job stopped or the shard left this worker".into(),
            );
        }
        let mut slots = Vec::with_capacity(chunk.len());
        let mut jpegs = Vec::with_capacity(chunk.len());
        let mut missing_slots = Vec::new();
        let mut skipped = Vec::new();
        for (objid, result) in chunk {
            match result {
                Ok(bytes) => {
                    slots.push((slot_of[&objid], objid));
                    jpegs.push(bytes);
                }
                Err(error) if is_bad_image(&error) => {
                    crate::telemetry::metrics().images_skipped.inc();
                    warn!(objid, %error, "image skipped");
                    missing_slots.push(slot_of[&objid]);
                    skipped.push((objid, error.to_string()));
                }
                Err(error) => {
                    return Err(format!(
                        "the image of objid {objid} could not be fetched: {error}"
                    ));
                }
            }
        }
        let config = preprocess_config.clone();
        let filled = records.clone();
        tokio::task::spawn_blocking(move || {
            let mut images = vec![0u8; jpegs.len() * IMAGE_LEN];
            let results = preprocess_batch_into(&jpegs, &config, &mut images);
            let mut arrivals: Vec<(usize, Option<&[u8]>)> =
                missing_slots.into_iter().map(|slot| (slot, None)).collect();
            let mut failures = Vec::new();
            for (((slot, objid), result), image) in slots
                .into_iter()
                .zip(results)
                .zip(images.chunks_exact(IMAGE_LEN))
            {
                match result {
                    Ok(()) => {
                        crate::telemetry::metrics().images_fetched.inc();
                        arrivals.push((slot, Some(image)));
                    }
                    Err(error) => {
                        arrivals.push((slot, None));
                        failures.push((objid, format!("imgs/{objid}.jpg: {error}")));
                    }
                }
            }
            for (objid, reason) in &failures {
                crate::telemetry::metrics().images_skipped.inc();
                warn!(objid, %reason, "image skipped");
            }
            skipped.extend(failures);
            filled.fill(&arrivals, skipped)
        })
        .await
        .map_err(|join_error| format!("preprocessing panicked: {join_error}"))??;
    }
    Ok(())
}
