//! Writes a whole synthetic dataset root to an object store, streamed batch by batch.
//!
//! Objects are planned up front (class and object id per row, shuffled), then rendered, encoded and
//! measured in batches on rayon inside `spawn_blocking`, one batch ahead of the writes. CSVs (and the
//! optional zip) stream through multipart `BufWriter`s; loose images are put with bounded concurrency.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use plankton_dataset::layout::{
    FEATURES_FILE, FEATURES_GZ_FILE, FEATURES_MISSING_GROUP_A, FEATURES_MISSING_GROUP_A_ROWS,
    FEATURES_MISSING_GROUP_B, FEATURES_MISSING_GROUP_B_ROWS, IMAGES_DIR, IMAGES_ZIP, META_COLUMNS,
    META_FILE, NATIVE_FEATURE_COLUMNS, REFERENCE_TOTAL,
};
use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use crate::SynthError;
use crate::counts::{class_counts, class_name};
use crate::features::measure_features;
use crate::meta::push_meta_row;
use crate::morphology::render_object;
use crate::rng::{Stream, keyed_rng};
use crate::zip::ZipStreamWriter;

/// Objects rendered per blocking task.
const BATCH_SIZE: usize = 256;
/// Rendered batches kept ahead of the writers.
const BATCHES_IN_FLIGHT: usize = 2;
/// JPEG quality of the images.
const JPEG_QUALITY: u8 = 90;
/// Object ids start near this value.
const FIRST_OBJID_BASE: u64 = 30_000_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of objects (at least 80: two per class).
    pub count: u64,
    /// Seed of every random draw; same seed and count give byte-identical files.
    pub seed: u64,
    /// Write one `imgs.zip` instead of loose `imgs/<objid>.jpg` objects.
    pub images_as_zip: bool,
    /// Write `features_native.csv.gz` instead of `features_native.csv`.
    pub gzip_features: bool,
    /// Concurrent image uploads (loose images only).
    pub concurrency: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            count: 2_000,
            seed: 42,
            images_as_zip: false,
            gzip_features: false,
            concurrency: 16,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// Objects written.
    pub objects: u64,
    /// Objects per class, as [`crate::class_counts`] returns them.
    pub class_counts: Vec<(String, u64)>,
    /// Bytes written to the store, all files together.
    pub bytes_written: u64,
    /// Wall time of the whole generation.
    pub elapsed: Duration,
}

/// One row of the dataset before rendering.
#[derive(Debug, Clone, Copy)]
struct PlannedObject {
    objid: u64,
    class_index: usize,
}

/// One row after rendering: its image and its two CSV rows.
struct RenderedObject {
    objid: u64,
    jpeg: Bytes,
    meta_row: String,
    features_row: String,
}

/// Generates a synthetic FlowCam dataset of `config.count` objects under `prefix` in `store`.
pub async fn generate(
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: &SynthConfig,
) -> Result<SynthSummary, SynthError> {
    let started = Instant::now();
    if config.concurrency == 0 {
        return Err(SynthError::InvalidConfig(
            "concurrency must be at least 1".to_string(),
        ));
    }
    let counts = class_counts(config.count)?;
    let (plan, first_objid) = plan_objects(&counts, config.seed);
    info!(objects = config.count, seed = config.seed, zip = config.images_as_zip, gzip = config.gzip_features, %prefix, "generating synthetic dataset");

    let mut meta_sink = CsvSink::new(&store, prefix.child(META_FILE), false);
    let features_file = if config.gzip_features {
        FEATURES_GZ_FILE
    } else {
        FEATURES_FILE
    };
    let mut features_sink = CsvSink::new(&store, prefix.child(features_file), config.gzip_features);
    let zip_path = prefix.child(IMAGES_ZIP);
    let mut zip_writer = config.images_as_zip.then(|| {
        ZipStreamWriter::new(
            BufWriter::new(Arc::clone(&store), zip_path.clone()),
            zip_path.to_string(),
        )
    });

    let written = write_all_objects(
        &store,
        &prefix,
        config,
        &plan,
        first_objid,
        &mut meta_sink,
        &mut features_sink,
        &mut zip_writer,
    )
    .await;
    let loose_image_bytes = match written {
        Ok(bytes) => bytes,
        Err(error) => {
            meta_sink.abort().await;
            features_sink.abort().await;
            if let Some(zip) = zip_writer.take() {
                let mut sink = zip.into_sink();
                if let Err(error) = sink.abort().await {
                    tracing::warn!(path = %zip_path, %error, "aborting a partial zip upload failed");
                }
            }
            return Err(error);
        }
    };
    let mut bytes_written = loose_image_bytes;
    bytes_written += meta_sink.finish().await?;
    bytes_written += features_sink.finish().await?;
    if let Some(zip) = zip_writer {
        let (mut sink, archive_bytes) = zip.finish().await?;
        sink.shutdown().await.map_err(|source| SynthError::Io {
            path: zip_path.to_string(),
            source,
        })?;
        bytes_written += archive_bytes;
    }
    let elapsed = started.elapsed();
    info!(
        objects = config.count,
        bytes_written,
        elapsed_ms = elapsed.as_millis() as u64,
        "synthetic dataset written"
    );
    Ok(SynthSummary {
        objects: config.count,
        class_counts: counts,
        bytes_written,
        elapsed,
    })
}

/// Renders and writes every planned object; returns the bytes of loose images written.
#[allow(clippy::too_many_arguments)]
async fn write_all_objects(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    config: &SynthConfig,
    plan: &[PlannedObject],
    first_objid: u64,
    meta_sink: &mut CsvSink,
    features_sink: &mut CsvSink,
    zip_writer: &mut Option<ZipStreamWriter<BufWriter>>,
) -> Result<u64, SynthError> {
    let mut meta_header = META_COLUMNS.join(",");
    meta_header.push('\n');
    meta_sink.write(meta_header.into_bytes()).await?;
    let mut features_header = format!("objid,{}", NATIVE_FEATURE_COLUMNS.join(","));
    features_header.push('\n');
    features_sink.write(features_header.into_bytes()).await?;

    let seed = config.seed;
    let mut rendered_batches =
        futures::stream::iter(plan.chunks(BATCH_SIZE).map(<[PlannedObject]>::to_vec))
            .map(|batch| async move {
                tokio::task::spawn_blocking(move || render_batch(&batch, seed, first_objid))
                    .await
                    .map_err(|join_error| SynthError::RenderTask(join_error.to_string()))?
            })
            .buffered(BATCHES_IN_FLIGHT);

    let images_prefix = prefix.child(IMAGES_DIR);
    let mut loose_image_bytes = 0u64;
    let mut objects_done = 0usize;
    while let Some(batch) = rendered_batches.next().await {
        let batch = batch?;
        let mut meta_rows = String::with_capacity(batch.len() * 200);
        let mut features_rows = String::with_capacity(batch.len() * 700);
        for object in &batch {
            meta_rows.push_str(&object.meta_row);
            features_rows.push_str(&object.features_row);
        }
        meta_sink.write(meta_rows.into_bytes()).await?;
        features_sink.write(features_rows.into_bytes()).await?;
        match zip_writer {
            Some(zip) => {
                for object in &batch {
                    zip.add_stored(&format!("{IMAGES_DIR}/{}.jpg", object.objid), &object.jpeg)
                        .await?;
                }
            }
            None => {
                loose_image_bytes += batch
                    .iter()
                    .map(|object| object.jpeg.len() as u64)
                    .sum::<u64>();
                futures::stream::iter(batch.into_iter().map(|object| {
                    let image_path = images_prefix.child(format!("{}.jpg", object.objid));
                    let store = Arc::clone(store);
                    async move {
                        store
                            .put(&image_path, object.jpeg.into())
                            .await
                            .map_err(|source| SynthError::Store {
                                path: image_path.to_string(),
                                source,
                            })
                    }
                }))
                .buffer_unordered(config.concurrency)
                .try_for_each(|_| async { Ok(()) })
                .await?;
            }
        }
        objects_done = (objects_done + BATCH_SIZE).min(plan.len());
        debug!(objects_done, objects = plan.len(), "batch written");
    }
    Ok(loose_image_bytes)
}

/// Shuffled rows (classes interleaved) with unique, increasing-with-gaps object ids.
fn plan_objects(counts: &[(String, u64)], seed: u64) -> (Vec<PlannedObject>, u64) {
    let mut rng = keyed_rng(seed, 0, Stream::Plan);
    let total: u64 = counts.iter().map(|(_, count)| count).sum();
    let mut class_of_row: Vec<usize> = Vec::with_capacity(total as usize);
    for (class_index, (_, count)) in counts.iter().enumerate() {
        class_of_row.extend(std::iter::repeat_n(class_index, *count as usize));
    }
    class_of_row.shuffle(&mut rng);
    let first_objid = FIRST_OBJID_BASE + rng.random_range(0..100_000);
    let mut objid = first_objid;
    let plan = class_of_row
        .into_iter()
        .map(|class_index| {
            let planned = PlannedObject { objid, class_index };
            // Mostly consecutive ids, with the occasional gap of discarded objects.
            objid += 1 + if rng.random_range(0..8) == 0 {
                rng.random_range(1..40)
            } else {
                0
            };
            planned
        })
        .collect();
    (plan, first_objid)
}

fn render_batch(
    batch: &[PlannedObject],
    seed: u64,
    first_objid: u64,
) -> Result<Vec<RenderedObject>, SynthError> {
    batch
        .par_iter()
        .map(|planned| render_row(*planned, seed, first_objid))
        .collect()
}

fn render_row(
    planned: PlannedObject,
    seed: u64,
    first_objid: u64,
) -> Result<RenderedObject, SynthError> {
    let PlannedObject { objid, class_index } = planned;
    let image = render_object(class_index, objid, seed);
    let jpeg = image
        .encode_jpeg(JPEG_QUALITY)
        .map_err(|message| SynthError::JpegEncode {
            objid,
            width: image.width,
            height: image.height,
            message,
        })?;
    let name = class_name(class_index).unwrap_or(plankton_dataset::layout::UNLABELED_CLASS);
    let mut meta_row = String::with_capacity(200);
    push_meta_row(&mut meta_row, objid, name, seed, first_objid);
    let features = measure_features(&image);
    Ok(RenderedObject {
        objid,
        jpeg: Bytes::from(jpeg),
        meta_row,
        features_row: features_row(objid, &features, seed),
    })
}

/// The `features_native.csv` row of `objid`, with the real data's missing-value groups blanked.
fn features_row(objid: u64, features: &[Option<f32>; 64], seed: u64) -> String {
    use std::fmt::Write as _;
    let mut rng = keyed_rng(seed, objid, Stream::Missing);
    let group_a_missing = rng.random_range(0..REFERENCE_TOTAL) < FEATURES_MISSING_GROUP_A_ROWS;
    let group_b_missing = rng.random_range(0..REFERENCE_TOTAL) < FEATURES_MISSING_GROUP_B_ROWS;
    let mut row = String::with_capacity(700);
    let _ = write!(row, "{objid}");
    for (column, value) in NATIVE_FEATURE_COLUMNS.iter().zip(features) {
        row.push(',');
        let blanked = (group_a_missing && FEATURES_MISSING_GROUP_A.contains(column))
            || (group_b_missing && FEATURES_MISSING_GROUP_B.contains(column));
        if let (false, Some(number)) = (blanked, value) {
            let _ = write!(row, "{number}");
        }
    }
    row.push('\n');
    row
}

/// A CSV object streamed through a multipart writer, optionally gzipped on a blocking thread.
struct CsvSink {
    path: Path,
    writer: BufWriter,
    gzip: Option<GzEncoder<Vec<u8>>>,
    bytes_written: u64,
}

impl CsvSink {
    fn new(store: &Arc<dyn ObjectStore>, path: Path, gzip: bool) -> Self {
        let writer = BufWriter::new(Arc::clone(store), path.clone());
        let gzip = gzip.then(|| GzEncoder::new(Vec::new(), Compression::default()));
        Self {
            path,
            writer,
            gzip,
            bytes_written: 0,
        }
    }

    async fn write(&mut self, text: Vec<u8>) -> Result<(), SynthError> {
        let chunk = match self.gzip.take() {
            None => text,
            Some(mut encoder) => {
                let (encoder, compressed) = tokio::task::spawn_blocking(move || {
                    let written = encoder.write_all(&text);
                    let compressed = std::mem::take(encoder.get_mut());
                    written.map(|()| (encoder, compressed))
                })
                .await
                .map_err(|join_error| SynthError::RenderTask(join_error.to_string()))?
                .map_err(|source| self.io_error(source))?;
                self.gzip = Some(encoder);
                compressed
            }
        };
        self.put(chunk).await
    }

    async fn put(&mut self, chunk: Vec<u8>) -> Result<(), SynthError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.bytes_written += chunk.len() as u64;
        self.writer
            .put(Bytes::from(chunk))
            .await
            .map_err(|source| SynthError::Store {
                path: self.path.to_string(),
                source,
            })
    }

    /// Flushes the gzip trailer and completes the upload; returns the bytes written.
    async fn finish(mut self) -> Result<u64, SynthError> {
        if let Some(encoder) = self.gzip.take() {
            let trailer = encoder.finish().map_err(|source| self.io_error(source))?;
            self.put(trailer).await?;
        }
        self.writer
            .shutdown()
            .await
            .map_err(|source| self.io_error(source))?;
        Ok(self.bytes_written)
    }

    async fn abort(&mut self) {
        if let Err(error) = self.writer.abort().await {
            tracing::warn!(path = %self.path, %error, "aborting a partial upload failed");
        }
    }

    fn io_error(&self, source: std::io::Error) -> SynthError {
        SynthError::Io {
            path: self.path.to_string(),
            source,
        }
    }
}
