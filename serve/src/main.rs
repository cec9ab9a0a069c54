//! `plankton-serve`: the inference service as a process.
use std::net::SocketAddr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use plankton_security::{ClientSecurityFlags, InsecureFlags, ServerSecurityFlags};
use plankton_serve::{AdmissionConfig, BatchingConfig, LoadBackoff, ServeConfig, run};

#[derive(Parser, Debug)]
#[command(
    name = "plankton-serve",
    about = "plankton-cluster inference service: gRPC predictions with dynamic batching"
)]
struct Options {
    /// gRPC listen address.
    #[arg(long, env = "PLANKTON_LISTEN", default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// This server's TLS and the tokens of its callers (role `client` predicts).
    #[command(flatten)]
    security: ServerSecurityFlags,
    /// The coordinator's CA and a token with role `viewer`, to read the model registry.
    #[command(flatten)]
    coordinator_security: ClientSecurityFlags,
    #[command(flatten)]
    insecure: InsecureFlags,
    /// Prometheus /metrics listen address (omit to serve no metrics).
    #[arg(long, env = "PLANKTON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Plaintext probe port: only grpc.health.v1 (SERVING once the model is loaded) and reflection, for
    /// Kubernetes' native gRPC probes (no TLS).
    #[arg(long, env = "PLANKTON_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// The coordinator whose model registry resolves model names.
    #[arg(
        long,
        env = "PLANKTON_COORDINATOR",
        default_value = "https://127.0.0.1:7070"
    )]
    coordinator: String,
    /// Default model: "name", "name:3" or "name@production" (an alias is followed as it moves).
    #[arg(long, env = "PLANKTON_MODEL")]
    model: String,
    /// Most images in one forward pass; 1 turns dynamic batching off.
    #[arg(long, env = "PLANKTON_MAX_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch_size: u32,
    /// Longest wait of a queued request for others to join its batch.
    #[arg(long, env = "PLANKTON_MAX_QUEUE_DELAY", default_value = "5ms", value_parser = humantime::parse_duration)]
    max_queue_delay: Duration,
    /// Requests waiting for a forward pass at most; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLANKTON_QUEUE_CAPACITY", default_value_t = 4096)]
    queue_capacity: usize,
    /// Most images in one request (Predict or ModelInfer); more are refused with INVALID_ARGUMENT.
    #[arg(long, env = "PLANKTON_MAX_IMAGES_PER_REQUEST", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_images_per_request: u32,
    /// Most images admitted and not answered yet, server-wide; a request that does not fit is refused at once
    /// with RESOURCE_EXHAUSTED and a retry hint, before any of its images is decoded.
    #[arg(long, env = "PLANKTON_MAX_QUEUED_IMAGES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_queued_images: u32,
    /// Most requests decoded and computed at a time; further admitted requests wait (until their deadline).
    #[arg(long, env = "PLANKTON_MAX_CONCURRENT_REQUESTS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_requests: u32,
    /// Retry hint sent with RESOURCE_EXHAUSTED (grpc-retry-pushback-ms and the message).
    #[arg(long, env = "PLANKTON_RETRY_AFTER", default_value = "100ms", value_parser = humantime::parse_duration)]
    retry_after: Duration,
    /// Wait before a model version whose load failed is tried again; doubles per consecutive failure.
    #[arg(long, env = "PLANKTON_LOAD_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    load_backoff: Duration,
    /// Longest wait between load attempts of a failing version.
    #[arg(long, env = "PLANKTON_MAX_LOAD_BACKOFF", default_value = "5m", value_parser = humantime::parse_duration)]
    max_load_backoff: Duration,
    /// How often the default model's alias is re-resolved in the registry.
    #[arg(long, env = "PLANKTON_REFRESH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    refresh_interval: Duration,
    /// Largest accepted gRPC message in bytes.
    #[arg(long, env = "PLANKTON_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Largest accepted image width or height (checked from the JPEG header).
    #[arg(long, env = "PLANKTON_MAX_IMAGE_SIDE", default_value_t = 10_000)]
    max_image_side: u32,
    /// Largest accepted image area in pixels (checked from the JPEG header).
    #[arg(long, env = "PLANKTON_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// Models kept loaded at most.
    #[arg(long, env = "PLANKTON_MODEL_CACHE_SIZE", default_value_t = 4)]
    model_cache_size: usize,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, env = "PLANKTON_TORCH_THREADS", default_value_t = 0)]
    torch_threads: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A batch's freed activations stay in the heap for the next batch.
    let malloc = plankton_common::malloc::keep_freed_memory_for_reuse();
    plankton_common::init_tracing();
    tracing::debug!(?malloc, "malloc thresholds");
    let options = Options::parse();
    let usage_error = |error: plankton_security::SecurityError| -> ! {
        Options::command()
            .error(ErrorKind::ArgumentConflict, error)
            .exit()
    };
    let security = options
        .security
        .resolve(options.listen, &options.insecure)
        .unwrap_or_else(|error| usage_error(error));
    let coordinator_security = options
        .coordinator_security
        .resolve(&options.coordinator, &options.insecure)
        .unwrap_or_else(|error| usage_error(error));
    let config = ServeConfig {
        listen_address: options.listen,
        security,
        coordinator_security,
        metrics_listen: options.metrics_listen,
        health_listen: options.health_listen,
        coordinator_url: options.coordinator,
        model: options.model,
        batching: BatchingConfig {
            max_batch_size: options.max_batch_size as usize,
            max_queue_delay: options.max_queue_delay,
            queue_capacity: options.queue_capacity,
        },
        admission: AdmissionConfig {
            max_images_per_request: options.max_images_per_request as usize,
            max_queued_images: options.max_queued_images as usize,
            max_concurrent_requests: options.max_concurrent_requests as usize,
            retry_after: options.retry_after,
        },
        load_backoff: LoadBackoff {
            initial: options.load_backoff,
            max: options.max_load_backoff,
        },
        refresh_interval: options.refresh_interval,
        max_message_bytes: options.max_message_bytes,
        max_image_side: options.max_image_side,
        max_image_pixels: options.max_image_pixels,
        model_cache_size: options.model_cache_size,
        torch_threads: options.torch_threads,
    };
    let shutdown = plankton_common::shutdown_on_signals();
    run(config, shutdown).await
}
