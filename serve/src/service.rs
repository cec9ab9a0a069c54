//! The `plankton.v1.Inference` gRPC service: admission, then decode + preprocess on rayon, then the model's
//! batcher. The Open Inference Protocol service ([`crate::open_inference`]) runs the same pipeline.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admission;
use crate::deadline::request_deadline;
use crate::engine::ModelInput;

use futures::{Stream, StreamExt};
use plankton_preprocess::{PreprocessConfig, preprocess_image};
use plankton_proto::v1::inference_server::Inference;
use plankton_proto::v1::{
    ClassScore, GetModelInfoRequest, ImagePrediction, ModelInfo, PredictRequest, PredictResponse,
};
use plankton_trainer::IMAGE_LEN;
use rayon::prelude::*;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::error::{ServeError, ServeResult};
use crate::features::transform_request_features;
use crate::metrics::{ErrorLabels, MethodLabels, ServeMetrics};
use crate::models::{LoadedModel, ModelStore};

/// Classes per image when the request's `top_k` is 0.
pub const DEFAULT_TOP_K: usize = 5;
/// Requests of one stream processed concurrently (answers keep the request order).
const STREAM_CONCURRENCY: usize = 16;

/// The Inference service; clones share the model store.
#[derive(Clone, Debug)]
pub struct InferenceService {
    store: Arc<ModelStore>,
    metrics: ServeMetrics,
    admission: Arc<Admission>,
}

/// The preprocessing outcome of one request image.
type PreprocessedImage = Result<Vec<u8>, String>;

/// Decodes and preprocesses every image in parallel on the rayon pool (never on the async runtime). Once the
/// caller has gone away (deadline, cancelled call), images not started yet are skipped.
async fn preprocess_on_rayon<Image>(
    images: Vec<Image>,
    config: PreprocessConfig,
) -> ServeResult<Vec<PreprocessedImage>>
where
    Image: AsRef<[u8]> + Send + Sync + 'static,
{
    let (sender, receiver) = oneshot::channel();
    rayon::spawn(move || {
        let preprocessed: Vec<PreprocessedImage> = images
            .par_iter()
            .map(|image| {
                if sender.is_closed() {
                    return Err("the caller went away".to_string());
                }
                preprocess_image(image.as_ref(), &config).map_err(|error| error.to_string())
            })
            .collect();
        let _ = sender.send(preprocessed);
    });
    receiver.await.map_err(|_| {
        ServeError::Internal("image preprocessing ended without an answer".to_string())
    })
}

/// The `top_k` most probable classes of one probability row, most probable first.
fn top_classes(probabilities: &[f32], class_names: &[String], top_k: usize) -> Vec<ClassScore> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|left, right| {
        probabilities[*right]
            .total_cmp(&probabilities[*left])
            .then(left.cmp(right))
    });
    order
        .into_iter()
        .take(top_k)
        .map(|class_index| ClassScore {
            class_name: class_names.get(class_index).cloned().unwrap_or_default(),
            class_index: class_index as u32,
            probability: probabilities[class_index],
        })
        .collect()
}

/// One request image's outcome: `Ok` (its row is in the probabilities) or why it could not be used.
pub(crate) type ImageOutcome = Result<(), String>;

impl InferenceService {
    pub fn new(store: Arc<ModelStore>, metrics: ServeMetrics, admission: Arc<Admission>) -> Self {
        InferenceService {
            store,
            metrics,
            admission,
        }
    }

    pub(crate) fn store(&self) -> &Arc<ModelStore> {
        &self.store
    }

    pub(crate) fn metrics(&self) -> &ServeMetrics {
        &self.metrics
    }

    /// Admits `jpegs` (refused at once when the server is full), then decodes and preprocesses them as in
    /// training and runs the usable ones through `model`'s batcher. Returns each image's outcome and the
    /// probability rows of the usable images, in order. `features` holds every image's transformed features
    /// (row-major) for a model that takes them, else nothing.
    pub(crate) async fn classify_jpegs<Image>(
        &self,
        model: &LoadedModel,
        jpegs: Vec<Image>,
        features: Vec<f32>,
        deadline: Option<Instant>,
    ) -> ServeResult<(Vec<ImageOutcome>, Vec<f32>)>
    where
        Image: AsRef<[u8]> + Send + Sync + 'static,
    {
        let _admitted = self.admission.admit(jpegs.len()).await?;
        self.metrics.images.inc_by(jpegs.len() as u64);
        let arrival = model.engine.announce();
        let preprocessed = preprocess_on_rayon(jpegs, model.preprocess.clone()).await?;
        let valid_count = preprocessed
            .iter()
            .filter(|outcome| outcome.is_ok())
            .count();
        let mut batch = Vec::with_capacity(valid_count * IMAGE_LEN);
        for channels in preprocessed.iter().flatten() {
            batch.extend_from_slice(channels);
        }
        let feature_width = if preprocessed.is_empty() {
            0
        } else {
            features.len() / preprocessed.len()
        };
        let valid_features: Vec<f32> = if feature_width == 0 {
            Vec::new()
        } else {
            features
                .chunks_exact(feature_width)
                .zip(&preprocessed)
                .filter(|(_, outcome)| outcome.is_ok())
                .flat_map(|(row, _)| row.iter().copied())
                .collect()
        };
        let probabilities = if valid_count > 0 {
            model
                .engine
                .predict_with_features(
                    ModelInput::Pixels(batch),
                    valid_features,
                    valid_count,
                    deadline,
                    arrival,
                )
                .await?
        } else {
            Vec::new()
        };
        let outcomes = preprocessed
            .into_iter()
            .map(|outcome| outcome.map(|_| ()))
            .collect();
        Ok((outcomes, probabilities))
    }

    /// Admits `image_count` images already scaled to the network's input (f32 CHW in [0, 1]) and runs them
    /// through `model`'s batcher with their transformed `features` (empty for a model without features); their
    /// probability rows, in order.
    pub(crate) async fn classify_scaled(
        &self,
        model: &LoadedModel,
        values: Vec<f32>,
        features: Vec<f32>,
        image_count: usize,
        deadline: Option<Instant>,
    ) -> ServeResult<Vec<f32>> {
        let _admitted = self.admission.admit(image_count).await?;
        self.metrics.images.inc_by(image_count as u64);
        let arrival = model.engine.announce();
        model
            .engine
            .predict_with_features(
                ModelInput::Scaled(values),
                features,
                image_count,
                deadline,
                arrival,
            )
            .await
    }

    /// Classifies the images of one request. Bad images get a per-image error; the call fails only when
    /// the request is empty or too large, the server is full, or its model cannot be found or loaded.
    pub async fn classify(
        &self,
        request: PredictRequest,
        deadline: Option<Instant>,
    ) -> ServeResult<PredictResponse> {
        if request.images.is_empty() {
            return Err(ServeError::InvalidRequest(
                "the request has no images".to_string(),
            ));
        }
        let model: Arc<LoadedModel> = self.store.model_for(&request.model).await?;
        let num_classes = model.class_names.len();
        let top_k = match request.top_k as usize {
            0 => DEFAULT_TOP_K,
            requested => requested,
        }
        .min(num_classes);
        let features = match &model.feature_transform {
            Some(transform) => {
                let (features, counts) =
                    transform_request_features(transform, &model.label(), &request.images)?;
                if counts.imputed_values() > 0 {
                    debug!(
                        model = %model.label(),
                        imputed_values = counts.imputed_values(),
                        "missing feature values imputed"
                    );
                }
                features
            }
            None => Vec::new(),
        };
        let (ids, jpegs): (Vec<String>, Vec<Vec<u8>>) = request
            .images
            .into_iter()
            .map(|image| (image.id, image.data))
            .unzip();
        let (preprocessed, probabilities) = self
            .classify_jpegs(&model, jpegs, features, deadline)
            .await?;
        let valid_count = preprocessed
            .iter()
            .filter(|outcome| outcome.is_ok())
            .count();

        let mut rows = probabilities.chunks_exact(num_classes);
        let mut predictions = Vec::with_capacity(ids.len());
        for (id, outcome) in ids.into_iter().zip(preprocessed) {
            let prediction = match outcome {
                Ok(_) => {
                    let row = rows.next().ok_or_else(|| {
                        ServeError::Internal(format!(
                            "the model answered fewer than {valid_count} rows"
                        ))
                    })?;
                    ImagePrediction {
                        id,
                        top: top_classes(row, &model.class_names, top_k),
                        error: String::new(),
                    }
                }
                Err(problem) => {
                    self.metrics.image_errors.inc();
                    ImagePrediction {
                        id,
                        top: Vec::new(),
                        error: problem,
                    }
                }
            };
            predictions.push(prediction);
        }
        Ok(PredictResponse {
            predictions,
            model_name: model.entry.name.clone(),
            model_version: model.entry.version,
        })
    }

    pub(crate) fn record_error(&self, method: &'static str, error: &ServeError) -> Status {
        let status = Status::from(error);
        self.metrics
            .errors
            .get_or_create(&ErrorLabels {
                method,
                code: format!("{:?}", status.code()),
            })
            .inc();
        if !matches!(
            error,
            ServeError::InvalidRequest(_)
                | ServeError::ModelNotFound(_)
                | ServeError::NotReady(_)
                | ServeError::Overloaded { .. }
                | ServeError::DeadlineExceeded(_)
                | ServeError::LoadBackoff { .. }
        ) {
            warn!(method, %error, "request failed");
        }
        status
    }

    async fn predict_counted(
        &self,
        method: &'static str,
        request: PredictRequest,
        deadline: Option<Instant>,
    ) -> Result<PredictResponse, Status> {
        let started = Instant::now();
        self.metrics
            .requests
            .get_or_create(&MethodLabels { method })
            .inc();
        let outcome = self.classify(request, deadline).await;
        self.metrics
            .latency_seconds
            .observe(started.elapsed().as_secs_f64());
        outcome.map_err(|error| self.record_error(method, &error))
    }
}

#[tonic::async_trait]
impl Inference for InferenceService {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        const METHOD: &str = "Predict";
        let started = Instant::now();
        self.metrics
            .requests
            .get_or_create(&MethodLabels { method: METHOD })
            .inc();
        let deadline = request_deadline(&request);
        let outcome = self
            .classify(request.into_inner(), deadline)
            .await
            .and_then(|response| {
                // A unary request where no image could be used is an error of the request itself.
                if response
                    .predictions
                    .iter()
                    .all(|prediction| !prediction.error.is_empty())
                {
                    let problems: Vec<String> = response
                        .predictions
                        .iter()
                        .enumerate()
                        .map(|(index, prediction)| {
                            format!(
                                "image {index} (id {:?}): {}",
                                prediction.id, prediction.error
                            )
                        })
                        .collect();
                    return Err(ServeError::InvalidRequest(format!(
                        "no usable image: {}",
                        problems.join("; ")
                    )));
                }
                Ok(response)
            });
        self.metrics
            .latency_seconds
            .observe(started.elapsed().as_secs_f64());
        outcome
            .map(Response::new)
            .map_err(|error| self.record_error(METHOD, &error))
    }

    type PredictStreamStream =
        Pin<Box<dyn Stream<Item = Result<PredictResponse, Status>> + Send + 'static>>;

    async fn predict_stream(
        &self,
        request: Request<Streaming<PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let service = self.clone();
        let deadline = request_deadline(&request);
        let responses = request
            .into_inner()
            .map(move |message| {
                let service = service.clone();
                async move {
                    match message {
                        Ok(predict_request) => {
                            service
                                .predict_counted("PredictStream", predict_request, deadline)
                                .await
                        }
                        Err(status) => Err(status),
                    }
                }
            })
            .buffered(STREAM_CONCURRENCY);
        // The first error status ends the stream.
        let mut failed = false;
        let until_first_error = responses.take_while(move |outcome| {
            let keep = !failed;
            failed = outcome.is_err();
            futures::future::ready(keep)
        });
        Ok(Response::new(Box::pin(until_first_error)))
    }

    async fn get_model_info(
        &self,
        request: Request<GetModelInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let model_text = request.into_inner().model;
        let model = self
            .store
            .model_for(&model_text)
            .await
            .map_err(|error| self.record_error("GetModelInfo", &error))?;
        let is_default = self
            .store
            .default_model()
            .is_some_and(|default_model| Arc::ptr_eq(&default_model, &model));
        let entry = &model.entry;
        Ok(Response::new(ModelInfo {
            name: entry.name.clone(),
            version: entry.version,
            architecture: model.architecture.to_string(),
            class_names: model.class_names.clone(),
            resize_mode: model.preprocess.resize_mode.name().to_string(),
            test_metrics: entry.test_metrics.clone(),
            weights_url: entry.weights_url.clone(),
            aliases: entry.aliases.clone(),
            is_default,
            max_batch_size: self.store.batching().max_batch_size as u32,
            requires_features: model.feature_transform.is_some(),
            feature_columns: model
                .feature_transform
                .as_ref()
                .map(|transform| transform.input_columns.clone())
                .unwrap_or_default(),
        }))
    }
}
