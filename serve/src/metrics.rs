//! Prometheus metrics of the inference service and the `/metrics` HTTP endpoint.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// A call dropped before its answer: `reason` is `deadline` (its grpc-timeout passed) or `cancelled` (the
/// client went away); `stage` is `arrival` (the deadline had passed when it came) or `in_flight`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
    pub stage: &'static str,
}

/// Why a queued request was skipped by the batcher: `deadline` or `cancelled`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// One version of one model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelVersionLabels {
    pub model: String,
    pub version: String,
}

/// Every metric the service records; clones share the same series.
#[derive(Clone, Debug)]
pub struct ServeMetrics {
    registry: Arc<Registry>,
    pub requests: Family<MethodLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub images: Counter,
    pub image_errors: Counter,
    pub latency_seconds: Histogram,
    pub batch_size: Histogram,
    pub loaded_model_version: Family<ModelLabels, Gauge>,
    pub forward_passes: Counter,
    pub dropped: Family<DropLabels, Counter>,
    pub skipped: Family<ReasonLabels, Counter>,
    pub queued_images: Gauge,
    pub model_load_failures: Family<ModelVersionLabels, Counter>,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("plankton_serve");
        let requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "requests",
            "gRPC prediction requests received",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Requests answered with an error status, by gRPC code",
            errors.clone(),
        );
        let images = Counter::default();
        registry.register(
            "images",
            "Images received for classification",
            images.clone(),
        );
        let image_errors = Counter::default();
        registry.register(
            "image_errors",
            "Images refused (not decodable, too large, ...)",
            image_errors.clone(),
        );
        // 0.5 ms .. ~8 s.
        let latency_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "request_latency_seconds",
            "Time to answer one Predict request",
            latency_seconds.clone(),
        );
        // 1, 2, 4, ... 512 images.
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let loaded_model_version = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "loaded_model_version",
            "Version of the default model currently serving",
            loaded_model_version.clone(),
        );
        let forward_passes = Counter::default();
        registry.register(
            "forward_passes",
            "Forward passes run (one per batch)",
            forward_passes.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "requests_dropped",
            "Requests dropped before compute because their deadline passed or their client went away",
            dropped.clone(),
        );
        let skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "queued_requests_skipped",
            "Queued requests the batcher never computed: their deadline passed or their caller went away",
            skipped.clone(),
        );
        let queued_images = Gauge::default();
        registry.register(
            "queued_images",
            "Images admitted and not answered yet (waiting, preprocessing, queued or computing)",
            queued_images.clone(),
        );
        let model_load_failures = Family::<ModelVersionLabels, Counter>::default();
        registry.register(
            "model_load_failures",
            "Failed model loads (weights or card unreadable or inconsistent), by model and version",
            model_load_failures.clone(),
        );
        ServeMetrics {
            registry: Arc::new(registry),
            requests,
            errors,
            images,
            image_errors,
            latency_seconds,
            batch_size,
            loaded_model_version,
            forward_passes,
            dropped,
            skipped,
            queued_images,
            model_load_failures,
        }
    }

    /// The series a model's inference thread records.
    pub fn engine_metrics(&self) -> crate::engine::EngineMetrics {
        crate::engine::EngineMetrics {
            batch_size: self.batch_size.clone(),
            forward_passes: self.forward_passes.clone(),
            skipped: self.skipped.clone(),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve_metrics(
    metrics: ServeMetrics,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    plankton_common::serve_metrics(metrics.registry.clone(), || {}, listener, shutdown).await
}
