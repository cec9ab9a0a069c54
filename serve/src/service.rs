//! The `plankton.v1.Inference` gRPC service: decode + preprocess on rayon, then the model's batcher.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use plankton_preprocess::{PreprocessConfig, preprocess_image};
use plankton_proto::v1::inference_server::Inference;
use plankton_proto::v1::{
    ClassScore, GetModelInfoRequest, ImageInput, ImagePrediction, ModelInfo, PredictRequest,
    PredictResponse,
};
use plankton_trainer::IMAGE_LEN;
use rayon::prelude::*;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use crate::error::{ServeError, ServeResult};
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
}

/// The preprocessing outcome of one request image.
type PreprocessedImage = Result<Vec<u8>, String>;

/// Decodes and preprocesses every image in parallel on the rayon pool (never on the async runtime).
async fn preprocess_on_rayon(
    images: Vec<ImageInput>,
    config: PreprocessConfig,
) -> ServeResult<Vec<PreprocessedImage>> {
    let (sender, receiver) = oneshot::channel();
    rayon::spawn(move || {
        let preprocessed: Vec<PreprocessedImage> = images
            .par_iter()
            .map(|image| preprocess_image(&image.data, &config).map_err(|error| error.to_string()))
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

impl InferenceService {
    pub fn new(store: Arc<ModelStore>, metrics: ServeMetrics) -> Self {
        InferenceService { store, metrics }
    }

    /// Classifies the images of one request. Bad images get a per-image error; the call fails only when
    /// the request is empty or its model cannot be found or loaded.
    pub async fn classify(&self, request: PredictRequest) -> ServeResult<PredictResponse> {
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
        self.metrics.images.inc_by(request.images.len() as u64);
        let arrival = model.engine.announce();
        let ids: Vec<String> = request
            .images
            .iter()
            .map(|image| image.id.clone())
            .collect();
        let preprocessed = preprocess_on_rayon(request.images, model.preprocess.clone()).await?;

        let valid_count = preprocessed
            .iter()
            .filter(|outcome| outcome.is_ok())
            .count();
        let mut batch = Vec::with_capacity(valid_count * IMAGE_LEN);
        for channels in preprocessed.iter().flatten() {
            batch.extend_from_slice(channels);
        }
        let probabilities = if valid_count > 0 {
            model.engine.predict(batch, valid_count, arrival).await?
        } else {
            Vec::new()
        };

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

    fn record_error(&self, method: &'static str, error: &ServeError) -> Status {
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
            ServeError::InvalidRequest(_) | ServeError::ModelNotFound(_) | ServeError::NotReady(_)
        ) {
            warn!(method, %error, "request failed");
        }
        status
    }

    async fn predict_counted(
        &self,
        method: &'static str,
        request: PredictRequest,
    ) -> Result<PredictResponse, Status> {
        let started = Instant::now();
        self.metrics
            .requests
            .get_or_create(&MethodLabels { method })
            .inc();
        let outcome = self.classify(request).await;
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
        let outcome = self
            .classify(request.into_inner())
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
        let responses = request
            .into_inner()
            .map(move |message| {
                let service = service.clone();
                async move {
                    match message {
                        Ok(predict_request) => {
                            service
                                .predict_counted("PredictStream", predict_request)
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
            resize_mode: match model.preprocess.resize_mode {
                plankton_preprocess::ResizeMode::Stretch => "stretch".to_string(),
                plankton_preprocess::ResizeMode::PadToSquare => "pad_to_square".to_string(),
            },
            test_metrics: entry.test_metrics.clone(),
            weights_url: entry.weights_url.clone(),
            aliases: entry.aliases.clone(),
            is_default,
            max_batch_size: self.store.batching().max_batch_size as u32,
        }))
    }
}
