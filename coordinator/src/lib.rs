//! The coordinator role: accepts jobs, plans splits/weights/shards, assigns workers, aggregates metrics, and
//! keeps every job in an embedded store.
#![forbid(unsafe_code)]

pub mod dashboard;
pub mod driver;
pub mod error;
pub mod features;
pub mod generation;
mod lifecycle;
pub mod metrics;
pub mod planner;
pub mod registry;
pub mod report;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tensorboard_log;
pub mod validation;
pub mod worker_service;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use plankton_proto::v1::job_service_server::JobServiceServer;
use plankton_proto::v1::model_registry_server::ModelRegistryServer;
use plankton_proto::v1::worker_control_server::WorkerControlServer;
use plankton_security::ServerSecurity;

pub use error::{CoordinatorError, CoordinatorResult};
use service::CoordinatorService;
use state::{ClusterState, Timeouts};
use store::StateStore;
use validation::JobPolicy;

/// Largest gRPC message: an assignment of the full dataset's shard is a few MB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// gRPC listen address (operators and workers).
    pub listen_address: SocketAddr,
    /// Folder of the embedded job and model store; `None` keeps them in memory only (in-process tests). The
    /// binary defaults to [`default_state_dir`] and keeps state in memory only when told `--in-memory`.
    pub state_dir: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// TLS of the gRPC port (reloaded when its files change) and the hashed bearer tokens of every caller.
    /// Without TLS the port is plaintext, without tokens everyone may do everything: the binary allows either
    /// only when told `--insecure`.
    pub security: ServerSecurity,
    /// Where jobs may read and write, and how large they may be.
    pub job_policy: JobPolicy,
    /// Encrypt ring traffic of every job (the ring handshake is authenticated either way).
    pub ring_tls: bool,
    /// Plaintext probe port (`grpc.health.v1` and reflection only), for Kubernetes' gRPC probes.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Web dashboard listen address (same TLS and tokens as the gRPC port); `None` serves no dashboard.
    pub dashboard_listen: Option<SocketAddr>,
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
                replacement_wait: Duration::from_secs(10),
            },
            security: ServerSecurity::default(),
            job_policy: JobPolicy::default(),
            ring_tls: false,
            health_listen: None,
            metrics_listen: None,
            dashboard_listen: None,
        }
    }
}

/// Where the coordinator binary keeps its state unless told otherwise: `$XDG_STATE_HOME/plankton/coordinator`,
/// else `$HOME/.local/state/plankton/coordinator`; `None` when neither variable gives an absolute path.
pub fn default_state_dir() -> Option<PathBuf> {
    default_state_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// [`default_state_dir`] from given values of `XDG_STATE_HOME` and `HOME`. Per the XDG base directory
/// specification, an empty or relative `XDG_STATE_HOME` is ignored.
pub fn default_state_dir_from(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let absolute = |value: Option<std::ffi::OsString>| {
        value.map(PathBuf::from).filter(|path| path.is_absolute())
    };
    let state_home = absolute(xdg_state_home)
        .or_else(|| absolute(home).map(|home| home.join(".local").join("state")))?;
    Some(state_home.join("plankton").join("coordinator"))
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
    let probe_listener = match config.health_listen {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    serve_with_probe_port(config, listener, probe_listener, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0` first).
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_probe_port(config, listener, None, shutdown).await
}

/// As [`serve`], with the probe port's listener bound by the caller too.
pub async fn serve_with_probe_port(
    config: CoordinatorConfig,
    listener: TcpListener,
    probe_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = match &config.state_dir {
        Some(state_dir) => open_state_store(state_dir, &shutdown).await?,
        None => StateStore::in_memory()?,
    };
    let state = ClusterState::new(store, config.timeouts.clone(), config.ring_tls)?;
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

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    if let Some(probe_listener) = probe_listener {
        tokio::spawn(plankton_proto::serve_probe_port(
            probe_listener,
            health_service.clone(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    let (reflection_service, reflection_v1alpha_service) = plankton_proto::reflection_services(&[
        plankton_proto::HEALTH_SERVICE,
        <JobServiceServer<CoordinatorService> as tonic::server::NamedService>::NAME,
        <ModelRegistryServer<CoordinatorService> as tonic::server::NamedService>::NAME,
        <WorkerControlServer<CoordinatorService> as tonic::server::NamedService>::NAME,
    ])?;

    let metrics = telemetry::CoordinatorMetrics::new();
    if let Some(address) = config.metrics_listen {
        let metrics_listener = TcpListener::bind(address).await?;
        let (metrics, state, shutdown) = (metrics.clone(), state.clone(), shutdown.clone());
        let registry = metrics.registry();
        tokio::spawn(async move {
            let sample = move || metrics.sample(&state);
            if let Err(error) =
                plankton_common::serve_metrics(registry, sample, metrics_listener, shutdown).await
            {
                tracing::error!(%error, "metrics endpoint failed");
            }
        });
    }
    if let Some(address) = config.dashboard_listen {
        let dashboard_listener = TcpListener::bind(address).await?;
        let (state, security, shutdown) =
            (state.clone(), config.security.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) =
                dashboard::serve_dashboard(state, &security, dashboard_listener, shutdown).await
            {
                tracing::error!(%error, "dashboard failed");
            }
        });
    }
    let service = CoordinatorService::new(
        state,
        config.job_policy.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let local_address = listener.local_addr()?;
    info!(
        %local_address,
        state_dir = ?config.state_dir,
        tls = config.security.tls.is_some(),
        authentication = config.security.tokens_file.is_some(),
        "coordinator listening"
    );
    let (auth_layer, incoming) = config
        .security
        .serve(listener, "coordinator", shutdown.clone())
        .await?;
    let rpc_layer = metrics.rpc_layer();
    tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                .layer(rpc_layer)
                .layer(auth_layer)
                .into_inner(),
        )
        .add_service(health_service)
        .add_service(reflection_service)
        .add_service(reflection_v1alpha_service)
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
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    info!("coordinator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dir_prefers_an_absolute_xdg_state_home_then_home() {
        let xdg = Some("/xdg/state".into());
        let home = Some("/home/ada".into());
        assert_eq!(
            default_state_dir_from(xdg, home.clone()),
            Some(PathBuf::from("/xdg/state/plankton/coordinator"))
        );
        let expected_under_home =
            Some(PathBuf::from("/home/ada/.local/state/plankton/coordinator"));
        assert_eq!(
            default_state_dir_from(None, home.clone()),
            expected_under_home
        );
        assert_eq!(
            default_state_dir_from(Some("".into()), home.clone()),
            expected_under_home
        );
        assert_eq!(
            default_state_dir_from(Some("relative/state".into()), home),
            expected_under_home
        );
        assert_eq!(default_state_dir_from(None, None), None);
        assert_eq!(default_state_dir_from(None, Some("".into())), None);
    }
}
