//! The inference service: gRPC predictions with dynamic batching, models resolved through the registry.
//!
//! A request names a model (`name`, `name:3`, `name@production`, or nothing for the server's default).
//! Its images are decoded and preprocessed exactly as in training (the model's resize mode) in parallel on
//! the rayon pool, then queued on the model's inference thread, whose batcher groups concurrent requests
//! into one forward pass ([`engine`]). The default model follows its alias: the registry is polled every
//! `refresh_interval` and a newly promoted version is loaded and swapped in without a restart; requests
//! already queued finish on the old model. Health (`grpc.health.v1`) is NOT_SERVING until the default model
//! is loaded; reflection (v1 and v1alpha) lets `grpcurl` list and call the service; Prometheus metrics are
//! on a separate port.
//!
//! The same port answers the Open Inference Protocol v2 ([`open_inference`]), so `tritonclient` and KServe
//! clients work unchanged. Both protocols share one admission policy ([`admission`]: images per request,
//! images queued, concurrent requests; RESOURCE_EXHAUSTED with a retry hint when full, before anything is
//! decoded) and honour client deadlines ([`deadline`]: work whose deadline passed or whose client left is
//! dropped before compute, and counted).
#![forbid(unsafe_code)]

pub mod admission;
pub mod deadline;
pub mod engine;
pub mod error;
pub mod features;
pub mod in_memory_registry;
pub mod metrics;
pub mod model_ref;
pub mod models;
pub mod open_inference;
pub mod registry;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plankton_preprocess::PreprocessConfig;
use plankton_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use plankton_proto::v1::inference_server::InferenceServer;
use plankton_security::{ClientSecurity, ServerSecurity};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

pub use admission::{Admission, AdmissionConfig};
pub use engine::{BatchingConfig, InferenceEngine, ModelInput, ServedModel};
pub use error::{ServeError, ServeResult};
pub use in_memory_registry::InMemoryRegistry;
pub use metrics::ServeMetrics;
pub use model_ref::{ModelReference, VersionSelector};
pub use models::{LoadBackoff, LoadedModel, ModelStore, ModelStoreConfig};
pub use open_inference::OpenInferenceService;
pub use registry::RegistryClient;
pub use service::InferenceService;

/// The gRPC service name health reports on (besides the server-wide "").
pub const INFERENCE_SERVICE_NAME: &str = "plankton.v1.Inference";

/// Everything the inference server needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen_address: SocketAddr,
    /// Prometheus `/metrics` listen address; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext probe port (`grpc.health.v1`: SERVING once the default model is loaded; reflection), for
    /// Kubernetes' gRPC probes.
    pub health_listen: Option<SocketAddr>,
    /// The coordinator serving the model registry, e.g. `https://127.0.0.1:7070`.
    pub coordinator_url: String,
    /// How to reach the coordinator: its CA and a `viewer` token.
    pub coordinator_security: ClientSecurity,
    /// TLS of the gRPC port and the tokens of its callers (role `client`); see the coordinator's.
    pub security: ServerSecurity,
    /// The default model reference (`name@production` follows the alias).
    pub model: String,
    pub batching: BatchingConfig,
    /// Images per request, images queued, concurrent requests, retry hint.
    pub admission: AdmissionConfig,
    /// Wait before a version whose load failed is tried again (doubling per failure).
    pub load_backoff: LoadBackoff,
    /// How often the default model's reference is re-resolved (and how long a request's resolved alias is kept).
    pub refresh_interval: Duration,
    /// Largest accepted gRPC message.
    pub max_message_bytes: usize,
    /// Per-image limits, checked from the JPEG header before decoding (decompression bombs).
    pub max_image_side: u32,
    pub max_image_pixels: u64,
    /// Models kept loaded at most (the default model is never evicted).
    pub model_cache_size: usize,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub torch_threads: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let image_limits = PreprocessConfig::default();
        ServeConfig {
            listen_address: ([127, 0, 0, 1], 7080).into(),
            metrics_listen: None,
            health_listen: None,
            coordinator_url: "http://127.0.0.1:7070".to_string(),
            coordinator_security: ClientSecurity::default(),
            security: ServerSecurity::default(),
            model: String::new(),
            batching: BatchingConfig::default(),
            admission: AdmissionConfig::default(),
            load_backoff: LoadBackoff::default(),
            refresh_interval: Duration::from_secs(2),
            max_message_bytes: 64 * 1024 * 1024,
            max_image_side: image_limits.max_side,
            max_image_pixels: image_limits.max_pixels,
            model_cache_size: 4,
            torch_threads: 0,
        }
    }
}

/// Binds the configured addresses and serves until `shutdown` is cancelled.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen_address).await?;
    serve(config, listener, shutdown).await
}

/// Serves gRPC on an already bound listener (tests bind `127.0.0.1:0` first); binds the metrics address.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics_listener = match config.metrics_listen {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    serve_with_metrics_listener(config, listener, metrics_listener, shutdown).await
}

/// As [`serve`], with the metrics listener bound by the caller too.
pub async fn serve_with_metrics_listener(
    config: ServeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let default_reference: ModelReference = config
        .model
        .parse()
        .map_err(|error| anyhow::anyhow!("--model {:?}: {error}", config.model))?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads as i32);
    }
    let metrics = ServeMetrics::new();
    let registry =
        RegistryClient::connect_lazy(&config.coordinator_url, &config.coordinator_security)?;

    let image_limits = PreprocessConfig {
        max_side: config.max_image_side,
        max_pixels: config.max_image_pixels,
        ..PreprocessConfig::default()
    };
    let store = Arc::new(ModelStore::new(
        registry,
        default_reference,
        metrics.clone(),
        ModelStoreConfig {
            batching: config.batching.clone(),
            image_limits,
            cache_capacity: config.model_cache_size,
            resolution_ttl: config.refresh_interval,
            load_backoff: config.load_backoff.clone(),
        },
    ));
    let admission = Arc::new(Admission::new(
        config.admission.clone(),
        metrics.queued_images.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    if let Some(address) = config.health_listen {
        let probe_listener = TcpListener::bind(address).await?;
        tokio::spawn(plankton_proto::serve_probe_port(
            probe_listener,
            health_service.clone(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    let (reflection_service, reflection_v1alpha_service) = plankton_proto::reflection_services(&[
        plankton_proto::HEALTH_SERVICE,
        INFERENCE_SERVICE_NAME,
        plankton_proto::OPEN_INFERENCE_SERVICE,
    ])?;

    let metrics_task = metrics_listener.map(|metrics_listener| {
        let metrics_address = metrics_listener.local_addr().ok();
        info!(?metrics_address, "metrics listening");
        tokio::spawn(metrics::serve_metrics(
            metrics.clone(),
            metrics_listener,
            shutdown.clone(),
        ))
    });
    let watcher_task = tokio::spawn(watch_default_model(
        store.clone(),
        health_reporter.clone(),
        config.refresh_interval,
        shutdown.clone(),
    ));

    let deadline_layer = deadline::DeadlineLayer::new(metrics.dropped.clone());
    let inference_service = InferenceService::new(store, metrics, admission);
    let open_inference_service = OpenInferenceService::new(inference_service.clone());
    let local_address = listener.local_addr()?;
    info!(%local_address, model = %config.model, coordinator = %config.coordinator_url, "inference server listening");
    let drain_signal = {
        let shutdown = shutdown.clone();
        let health_reporter = health_reporter.clone();
        async move {
            shutdown.cancelled().await;
            // Load balancers stop sending before the listener closes.
            set_health(&health_reporter, ServingStatus::NotServing).await;
        }
    };
    let (auth_layer, incoming) = config
        .security
        .serve(listener, "inference", shutdown.clone())
        .await?;
    let served = tonic::transport::Server::builder()
        .layer(auth_layer)
        .layer(deadline_layer)
        .add_service(health_service)
        .add_service(reflection_service)
        .add_service(reflection_v1alpha_service)
        .add_service(
            InferenceServer::new(inference_service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            GrpcInferenceServiceServer::new(open_inference_service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .serve_with_incoming_shutdown(incoming, drain_signal)
        .await;
    shutdown.cancel();
    let _ = watcher_task.await;
    if let Some(metrics_task) = metrics_task {
        match metrics_task.await {
            Ok(Err(error)) => warn!(%error, "metrics server failed"),
            Err(error) => warn!(%error, "metrics task failed"),
            Ok(Ok(())) => {}
        }
    }
    served?;
    info!("inference server stopped");
    Ok(())
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(INFERENCE_SERVICE_NAME, status)
        .await;
    reporter
        .set_service_status(plankton_proto::OPEN_INFERENCE_SERVICE, status)
        .await;
}

/// Loads the default model, then re-resolves its reference every `refresh_interval` and swaps in new
/// versions. Health turns SERVING once a default model is loaded.
async fn watch_default_model(
    store: Arc<ModelStore>,
    health_reporter: HealthReporter,
    refresh_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut serving = false;
    loop {
        match store.refresh_default().await {
            Ok(_) => {}
            // Logged (and counted) once per attempt by the store; the old version keeps serving.
            Err(error @ (ServeError::LoadBackoff { .. } | ServeError::ModelLoad { .. })) => {
                tracing::debug!(reference = %store.default_reference(), %error, "default model in load backoff");
            }
            Err(error) => {
                warn!(reference = %store.default_reference(), %error, "cannot refresh the default model");
            }
        }
        if !serving && store.default_model().is_some() {
            set_health(&health_reporter, ServingStatus::Serving).await;
            serving = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(refresh_interval) => {}
        }
    }
}
