//! The coordinator role: accepts jobs, plans splits/weights/shards, assigns workers, aggregates metrics, and
//! keeps every job in an embedded store.
#![forbid(unsafe_code)]

pub mod error;
pub mod metrics;
pub mod planner;
pub mod registry;
pub mod service;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use plankton_proto::v1::job_service_server::JobServiceServer;
use plankton_proto::v1::model_registry_server::ModelRegistryServer;
use plankton_proto::v1::worker_control_server::WorkerControlServer;

pub use error::{CoordinatorError, CoordinatorResult};
use service::CoordinatorService;
use state::{ClusterState, Timeouts};
use store::StateStore;

/// Largest gRPC message: an assignment of the full dataset's shard is a few MB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// gRPC listen address (operators and workers).
    pub listen_address: SocketAddr,
    /// Folder of the embedded job store; `None` keeps jobs in memory only.
    pub state_dir: Option<PathBuf>,
    pub timeouts: Timeouts,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen_address: ([127, 0, 0, 1], 7070).into(),
            state_dir: None,
            timeouts: Timeouts {
                worker_timeout: Duration::from_secs(15),
                registration_timeout: Duration::from_secs(120),
                heartbeat_interval: Duration::from_secs(2),
            },
        }
    }
}

/// How long a starting coordinator waits for a previous one (shutting down) to release the state store.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Opens the state store, waiting (bounded) while a previous coordinator still holds its lock.
async fn open_state_store(
    state_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<StateStore> {
    let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        match StateStore::open(state_dir) {
            Err(CoordinatorError::StoreLocked(path)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    path,
                    "state store still held by a previous coordinator; waiting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shut down while waiting for the state store {path}"),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            result => return Ok(result?),
        }
    }
}

/// Binds the configured address and serves until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen_address).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0` first).
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = match &config.state_dir {
        Some(state_dir) => open_state_store(state_dir, &shutdown).await?,
        None => StateStore::in_memory()?,
    };
    let state = ClusterState::new(store, config.timeouts.clone())?;
    let reaper_state = state.clone();
    let reaper_shutdown = shutdown.clone();
    let check_interval = (config.timeouts.worker_timeout / 4).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(check_interval);
        loop {
            tokio::select! {
                _ = reaper_shutdown.cancelled() => return,
                _ = ticker.tick() => { reaper_state.reap_silent_workers(); }
            }
        }
    });

    let service = CoordinatorService::new(state);
    let local_address = listener.local_addr()?;
    info!(%local_address, state_dir = ?config.state_dir, "coordinator listening");
    tonic::transport::Server::builder()
        .add_service(
            JobServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(ModelRegistryServer::new(service.clone()))
        .add_service(
            WorkerControlServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    info!("coordinator stopped");
    Ok(())
}
