//! One loaded model on its own inference thread, fed by a dynamic batcher.
//!
//! libtorch tensors are `Send` but not `Sync`, and a forward pass is heavy blocking work, so every model
//! lives on a dedicated OS thread that owns it. Requests (already decoded and preprocessed) are queued on
//! a bounded channel; the thread takes the oldest request, then keeps taking queued requests until the
//! batch holds `max_batch_size` images or `max_queue_delay` has passed since the oldest one was queued,
//! runs ONE forward pass over the concatenated images and hands each request its rows. The batcher only
//! waits for requests that are on their way: a request announces itself ([`InferenceEngine::announce`])
//! before its images are decoded, and when the queue is empty and no announced request is still being
//! preprocessed the batch runs at once, so a lone client never pays the queue delay. While a forward
//! pass runs, new requests queue up and form the next batch. A request never splits across batches; one
//! request larger than `max_batch_size` forms a batch of its own. `max_batch_size = 1` turns batching off.
//!
//! A queued request carries its deadline (the client's `grpc-timeout`): a request whose deadline has passed,
//! or whose client went away (its answer channel is closed), is skipped before the forward pass and counted in
//! `plankton_serve_queued_requests_skipped_total`; only live requests are computed.
//!
//! When the last handle ([`InferenceEngine`]) is dropped, the thread answers the requests still queued
//! and exits, dropping the model: a model swapped out finishes its in-flight requests first.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::{Duration, Instant};

use plankton_gbdt::{FeatureMatrix, GbdtModel};
use plankton_trainer::{IMAGE_LEN, InferenceModel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use crate::error::{ServeError, ServeResult};
use crate::metrics::ReasonLabels;

/// What an inference thread runs: a libtorch network (images, and features for a network that takes them), or
/// gradient-boosted trees, which answer from the transformed features alone.
#[derive(Debug)]
// One value per loaded model: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ServedModel {
    Network(InferenceModel),
    Trees(GbdtModel),
}

impl From<InferenceModel> for ServedModel {
    fn from(model: InferenceModel) -> Self {
        ServedModel::Network(model)
    }
}

impl From<GbdtModel> for ServedModel {
    fn from(model: GbdtModel) -> Self {
        ServedModel::Trees(model)
    }
}

impl ServedModel {
    pub fn num_classes(&self) -> usize {
        match self {
            ServedModel::Network(model) => model.num_classes(),
            ServedModel::Trees(model) => model.num_classes(),
        }
    }

    fn tree_probabilities(
        model: &GbdtModel,
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, String> {
        let matrix = FeatureMatrix::new(features, count, model.num_features())
            .map_err(|error| error.to_string())?;
        model
            .predict_probabilities(&matrix)
            .map_err(|error| error.to_string())
    }

    /// Probabilities of `count` u8 CHW images (ignored by trees) and their transformed features.
    fn predict_pixels(
        &self,
        pixels: &[u8],
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, String> {
        match self {
            ServedModel::Network(model) => model
                .predict_probabilities_with_features(pixels, features, count)
                .map_err(|error| error.to_string()),
            ServedModel::Trees(model) => Self::tree_probabilities(model, features, count),
        }
    }

    /// Probabilities of `count` images scaled to the network's input (ignored by trees) and their features.
    fn predict_scaled(
        &self,
        values: &[f32],
        features: &[f32],
        count: usize,
    ) -> Result<Vec<f32>, String> {
        match self {
            ServedModel::Network(model) => model
                .predict_probabilities_scaled_with_features(values, features, count)
                .map_err(|error| error.to_string()),
            ServedModel::Trees(model) => Self::tree_probabilities(model, features, count),
        }
    }
}

/// How requests are grouped into forward passes.
#[derive(Clone, Debug)]
pub struct BatchingConfig {
    /// Most images in one forward pass (1 disables batching).
    pub max_batch_size: usize,
    /// Longest time the oldest queued request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Requests that may wait in the queue; more are refused with RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::from_millis(5),
            queue_capacity: 4096,
        }
    }
}

/// How often a waiting batcher looks whether announced requests are still on their way.
const ARRIVAL_POLL_INTERVAL: Duration = Duration::from_micros(200);

/// The preprocessed images of one request, in either of the two forms the network takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// `image_count * IMAGE_LEN` bytes, u8 CHW, as preprocessing writes them (divided by 255 on the way in).
    Pixels(Vec<u8>),
    /// `image_count * IMAGE_LEN` values, f32 CHW, already scaled to [0, 1] (the Open Inference Protocol's
    /// FP32 `input`).
    Scaled(Vec<f32>),
}

impl ModelInput {
    fn len(&self) -> usize {
        match self {
            ModelInput::Pixels(pixels) => pixels.len(),
            ModelInput::Scaled(values) => values.len(),
        }
    }

    fn is_scaled(&self) -> bool {
        matches!(self, ModelInput::Scaled(_))
    }
}

/// The counters and histogram the inference thread records.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Forward passes run.
    pub forward_passes: Counter,
    /// Queued requests skipped before compute, by reason.
    pub skipped: Family<ReasonLabels, Counter>,
}

/// Why a queued request was not computed.
#[derive(Debug)]
enum Refusal {
    /// Its deadline passed while it waited.
    DeadlineExceeded,
    /// The forward pass failed.
    Failed(String),
}

/// The preprocessed images of one request waiting for a forward pass.
struct QueuedRequest {
    images: ModelInput,
    image_count: usize,
    /// Each image's transformed features, row-major (empty for a model without features).
    features: Vec<f32>,
    queued_at: Instant,
    /// The client's deadline, if it sent one.
    deadline: Option<Instant>,
    respond: oneshot::Sender<Result<Vec<f32>, Refusal>>,
}

impl QueuedRequest {
    /// Why this request must not be computed now (`None`: it is still wanted).
    fn drop_reason(&self, now: Instant) -> Option<&'static str> {
        if self.respond.is_closed() {
            Some("cancelled")
        } else if self.deadline.is_some_and(|deadline| now >= deadline) {
            Some("deadline")
        } else {
            None
        }
    }
}

/// A handle to a model's inference thread; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct InferenceEngine {
    label: String,
    num_classes: usize,
    queue_capacity: usize,
    sender: SyncSender<QueuedRequest>,
    /// Requests announced but not queued yet (being decoded and preprocessed).
    arriving: Arc<AtomicUsize>,
}

/// A request on its way to the queue; dropping it (queued or given up) withdraws the announcement.
#[derive(Debug)]
pub struct Arrival {
    arriving: Arc<AtomicUsize>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arriving.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InferenceEngine {
    /// Starts the inference thread of `label` (e.g. `plankton:3`): it runs `load_model` (heavy: builds
    /// the network and copies the weights), then serves batches. Returns once the model is loaded.
    pub async fn start<Model, LoadError>(
        label: String,
        num_classes: usize,
        batching: BatchingConfig,
        metrics: EngineMetrics,
        load_model: impl FnOnce() -> Result<Model, LoadError> + Send + 'static,
    ) -> ServeResult<InferenceEngine>
    where
        Model: Into<ServedModel>,
        LoadError: std::fmt::Display,
    {
        let max_batch_size = batching.max_batch_size.max(1);
        let queue_capacity = batching.queue_capacity.max(1);
        let (sender, receiver) = sync_channel::<QueuedRequest>(queue_capacity);
        let (loaded_sender, loaded_receiver) = oneshot::channel::<Result<(), String>>();
        let thread_label = label.clone();
        let max_queue_delay = batching.max_queue_delay;
        let arriving = Arc::new(AtomicUsize::new(0));
        let batcher_arriving = arriving.clone();
        std::thread::Builder::new()
            .name(format!("inference-{label}"))
            .spawn(move || {
                let model: ServedModel =
                    match std::panic::catch_unwind(AssertUnwindSafe(load_model)) {
                        Ok(Ok(model)) => model.into(),
                        Ok(Err(load_error)) => {
                            let _ = loaded_sender.send(Err(load_error.to_string()));
                            return;
                        }
                        Err(_) => {
                            let _ =
                                loaded_sender.send(Err("the model loader panicked".to_string()));
                            return;
                        }
                    };
                if model.num_classes() != num_classes {
                    let _ = loaded_sender.send(Err(format!(
                        "the network has {} outputs, the model has {num_classes} classes",
                        model.num_classes()
                    )));
                    return;
                }
                let _ = loaded_sender.send(Ok(()));
                let batcher = Batcher {
                    model,
                    label: thread_label,
                    max_batch_size,
                    max_queue_delay,
                    metrics,
                    arriving: batcher_arriving,
                };
                batcher.run(receiver);
            })
            .map_err(|spawn_error| ServeError::ModelLoad {
                model: label.clone(),
                reason: format!("cannot start the inference thread: {spawn_error}"),
            })?;
        match loaded_receiver.await {
            Ok(Ok(())) => {
                info!(model = %label, max_batch_size, "model loaded");
                Ok(InferenceEngine {
                    label,
                    num_classes,
                    queue_capacity,
                    sender,
                    arriving,
                })
            }
            Ok(Err(reason)) => Err(ServeError::ModelLoad {
                model: label,
                reason,
            }),
            Err(_) => Err(ServeError::ModelLoad {
                model: label,
                reason: "the inference thread ended".to_string(),
            }),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Announces a request that will call [`InferenceEngine::predict`] once its images are preprocessed,
    /// so that the batcher waits for it (at most the queue delay).
    pub fn announce(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::AcqRel);
        Arrival {
            arriving: self.arriving.clone(),
        }
    }

    /// Softmax probabilities (`image_count * num_classes`) of `images` (`image_count * IMAGE_LEN` values),
    /// computed in whatever batch the queue forms, unless `deadline` passes first. `arrival` is this
    /// request's announcement.
    pub async fn predict(
        &self,
        images: ModelInput,
        image_count: usize,
        deadline: Option<Instant>,
        arrival: Arrival,
    ) -> ServeResult<Vec<f32>> {
        self.predict_with_features(images, Vec::new(), image_count, deadline, arrival)
            .await
    }

    /// [`InferenceEngine::predict`] for a model that takes features: `features` holds each image's transformed
    /// features, row-major (the model's feature width per image).
    pub async fn predict_with_features(
        &self,
        images: ModelInput,
        features: Vec<f32>,
        image_count: usize,
        deadline: Option<Instant>,
        arrival: Arrival,
    ) -> ServeResult<Vec<f32>> {
        if image_count == 0 || images.len() != image_count * IMAGE_LEN {
            return Err(ServeError::Internal(format!(
                "{} values for {image_count} images (expected {IMAGE_LEN} per image)",
                images.len()
            )));
        }
        let (respond, response) = oneshot::channel();
        let request = QueuedRequest {
            images,
            image_count,
            features,
            queued_at: Instant::now(),
            deadline,
            respond,
        };
        let sent = self.sender.try_send(request);
        drop(arrival);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServeError::Overloaded {
                    reason: format!(
                        "the inference queue of model {} is full ({} requests waiting)",
                        self.label, self.queue_capacity
                    ),
                    retry_after: crate::admission::DEFAULT_RETRY_AFTER,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::Internal(format!(
                    "the inference thread of {} has stopped",
                    self.label
                )));
            }
        }
        match response.await {
            Ok(Ok(probabilities)) => Ok(probabilities),
            Ok(Err(Refusal::DeadlineExceeded)) => Err(ServeError::DeadlineExceeded(format!(
                "the deadline passed while the request waited for model {}",
                self.label
            ))),
            Ok(Err(Refusal::Failed(reason))) => Err(ServeError::Inference {
                model: self.label.clone(),
                reason,
            }),
            Err(_) => Err(ServeError::Internal(format!(
                "the inference thread of {} dropped a request",
                self.label
            ))),
        }
    }
}

/// The inference thread's state.
struct Batcher {
    model: ServedModel,
    label: String,
    max_batch_size: usize,
    max_queue_delay: Duration,
    metrics: EngineMetrics,
    arriving: Arc<AtomicUsize>,
}

impl Batcher {
    fn run(self, receiver: Receiver<QueuedRequest>) {
        let mut carried_over: Option<QueuedRequest> = None;
        loop {
            let oldest = match carried_over.take() {
                Some(request) => request,
                None => match receiver.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let deadline = oldest.queued_at + self.max_queue_delay;
            let mut image_total = oldest.image_count;
            let mut batch = vec![oldest];
            while image_total < self.max_batch_size {
                // A disconnection runs what is batched; the outer loop ends after it.
                let next = match receiver.try_recv() {
                    Ok(request) => request,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline || self.arriving.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        match receiver.recv_timeout((deadline - now).min(ARRIVAL_POLL_INTERVAL)) {
                            Ok(request) => request,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                // A batch is all pixels or all scaled values; the other kind starts the next batch.
                if image_total + next.image_count > self.max_batch_size
                    || next.images.is_scaled() != batch[0].images.is_scaled()
                {
                    carried_over = Some(next);
                    break;
                }
                image_total += next.image_count;
                batch.push(next);
            }
            let (live, live_images) = self.without_dropped(batch);
            if live_images > 0 {
                self.run_batch(live, live_images);
            }
        }
        info!(model = %self.label, "inference thread stopped");
    }

    /// The requests of `batch` still wanted and their image count; the others (deadline passed, client
    /// gone) are answered DEADLINE_EXCEEDED and counted, never computed.
    fn without_dropped(&self, batch: Vec<QueuedRequest>) -> (Vec<QueuedRequest>, usize) {
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        let mut live_images = 0;
        for request in batch {
            match request.drop_reason(now) {
                None => {
                    live_images += request.image_count;
                    live.push(request);
                }
                Some(reason) => {
                    self.metrics
                        .skipped
                        .get_or_create(&ReasonLabels { reason })
                        .inc();
                    debug!(model = %self.label, reason, images = request.image_count, "queued request skipped");
                    let _ = request.respond.send(Err(Refusal::DeadlineExceeded));
                }
            }
        }
        (live, live_images)
    }

    fn run_batch(&self, mut batch: Vec<QueuedRequest>, image_total: usize) {
        self.metrics.batch_size.observe(image_total as f64);
        self.metrics.forward_passes.inc();
        let started = Instant::now();
        let mut features: Vec<f32> = Vec::new();
        for request in &mut batch {
            if features.is_empty() {
                features = std::mem::take(&mut request.features);
            } else {
                features.extend_from_slice(&request.features);
            }
        }
        let outcome = if batch[0].images.is_scaled() {
            let mut values: Vec<f32> = Vec::with_capacity(image_total * IMAGE_LEN);
            for request in &mut batch {
                if let ModelInput::Scaled(request_values) = &mut request.images {
                    if values.is_empty() {
                        values = std::mem::take(request_values);
                    } else {
                        values.extend_from_slice(request_values);
                    }
                }
            }
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.model.predict_scaled(&values, &features, image_total)
            }))
        } else {
            let mut pixels: Vec<u8> = Vec::with_capacity(image_total * IMAGE_LEN);
            for request in &mut batch {
                if let ModelInput::Pixels(request_pixels) = &mut request.images {
                    if pixels.is_empty() {
                        pixels = std::mem::take(request_pixels);
                    } else {
                        pixels.extend_from_slice(request_pixels);
                    }
                }
            }
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.model.predict_pixels(&pixels, &features, image_total)
            }))
        };
        let probabilities = match outcome {
            Ok(Ok(probabilities)) => probabilities,
            Ok(Err(predict_error)) => {
                error!(model = %self.label, %predict_error, "forward pass failed");
                return answer_all(batch, &predict_error);
            }
            Err(_) => {
                error!(model = %self.label, "forward pass panicked");
                return answer_all(batch, "the forward pass panicked");
            }
        };
        let num_classes = self.model.num_classes();
        debug!(model = %self.label, requests = batch.len(), images = image_total, elapsed = ?started.elapsed(), "batch done");
        let mut rows = probabilities.chunks_exact(num_classes);
        for request in batch {
            let request_rows: Vec<f32> = rows
                .by_ref()
                .take(request.image_count)
                .flatten()
                .copied()
                .collect();
            // The client may have gone away (cancelled call): nothing to answer then.
            let _ = request.respond.send(Ok(request_rows));
        }
    }
}

fn answer_all(batch: Vec<QueuedRequest>, reason: &str) {
    for request in batch {
        let _ = request
            .respond
            .send(Err(Refusal::Failed(reason.to_string())));
    }
}
