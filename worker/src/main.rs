//! `plankton-worker`: the worker role as a process.
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use plankton_collective::RingConfig;
use plankton_security::{ClientSecurityFlags, InsecureFlags};
use plankton_worker::{WorkerConfig, run};

#[derive(Parser, Debug)]
#[command(
    name = "plankton-worker",
    about = "plankton-cluster worker: fetch a shard, preprocess, train data-parallel"
)]
struct Options {
    /// Coordinator gRPC endpoint.
    #[arg(
        long,
        env = "PLANKTON_COORDINATOR",
        default_value = "https://127.0.0.1:7070"
    )]
    coordinator: String,
    /// The coordinator's CA, this worker's token (role `worker`) and an optional client certificate.
    #[command(flatten)]
    security: ClientSecurityFlags,
    #[command(flatten)]
    insecure: InsecureFlags,
    /// Address ring peers connect to.
    #[arg(long, env = "PLANKTON_PEER_LISTEN", default_value = "127.0.0.1:0")]
    peer_listen: String,
    /// Host peers should dial, when it differs from the listen host (e.g. the pod IP).
    #[arg(long, env = "PLANKTON_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Name shown in job messages (default: hostname-pid).
    #[arg(long, env = "PLANKTON_WORKER_NAME")]
    name: Option<String>,
    /// libtorch threads used for training.
    #[arg(long, env = "PLANKTON_THREADS", default_value_t = 1)]
    threads: usize,
    /// Folder caching preprocessed shards across epochs and restarts.
    #[arg(long, env = "PLANKTON_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Concurrent image fetches from the object store.
    #[arg(long, env = "PLANKTON_FETCH_CONCURRENCY", default_value_t = 32)]
    fetch_concurrency: usize,
    /// Train from shard record files in --cache-dir, read image by image into each batch, with at most this
    /// many MiB of them kept in the page cache over all the job's shards (0: no cap). Omitted: shards are held
    /// in memory.
    #[arg(long, env = "PLANKTON_MAX_RESIDENT_MB", requires = "cache_dir")]
    max_resident_mb: Option<usize>,
    /// Start training once each training shard's first batch is in and stream the rest in the order the first
    /// epoch reads it (the test split loads first). With --max-resident-mb the streamed images go to a file in
    /// --cache-dir, otherwise they are held in memory.
    #[arg(long, env = "PLANKTON_STREAM_SHARDS")]
    stream_shards: bool,
    /// Longest wait for ring peers to connect (peers may still be loading; the coordinator aborts the wait
    /// early when one of them is lost).
    #[arg(long, env = "PLANKTON_RING_CONNECT_TIMEOUT", default_value = "600s", value_parser = humantime::parse_duration)]
    ring_connect_timeout: Duration,
    /// Plaintext probe port: only grpc.health.v1 (SERVING once registered) and reflection, for Kubernetes'
    /// native gRPC probes (no TLS).
    #[arg(long, env = "PLANKTON_HEALTH_LISTEN")]
    health_listen: Option<String>,
    /// Prometheus /metrics listen address (omit to serve no metrics).
    #[arg(long, env = "PLANKTON_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// A ring peer silent for this long fails the step.
    #[arg(long, env = "PLANKTON_RING_IO_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    ring_io_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before training allocates: a step's freed activations stay in the heap for the next step.
    let malloc = plankton_common::malloc::keep_freed_memory_for_reuse();
    plankton_common::init_tracing();
    tracing::debug!(?malloc, "malloc thresholds");
    let options = Options::parse();
    let name = options.name.unwrap_or_else(default_name);
    let security = options
        .security
        .resolve(&options.coordinator, &options.insecure)
        .unwrap_or_else(|error| {
            Options::command()
                .error(ErrorKind::ArgumentConflict, error)
                .exit()
        });
    let mut config = WorkerConfig::new(options.coordinator, name);
    config.security = security;
    config.health_listen = options.health_listen;
    config.metrics_listen = options.metrics_listen;
    config.peer_listen = options.peer_listen;
    config.advertise_host = options.advertise_host;
    config.threads = options.threads;
    config.cache_dir = options.cache_dir;
    config.fetch_concurrency = options.fetch_concurrency;
    config.max_resident_bytes = options.max_resident_mb.map(|mib| mib << 20);
    config.stream_shards = options.stream_shards;
    config.ring = RingConfig {
        connect_timeout: options.ring_connect_timeout,
        io_timeout: options.ring_io_timeout,
        ..config.ring
    };
    let shutdown = plankton_common::shutdown_on_signals();
    run(config, shutdown).await
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}
