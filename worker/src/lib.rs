//! The worker role: registers with the coordinator, fetches and preprocesses its shard, trains data-parallel
//! with its ring peers, reports progress and metrics, and writes the trained model to the object store.
#![forbid(unsafe_code)]

mod checkpointing;
mod credentials;
mod fault_injection;
mod feature_cache;
pub mod features;
mod gbdt_job;
mod job;
mod loader;
mod outbox;
mod streaming;
pub mod telemetry;
mod tensorboard_log;
mod train_settings;
mod training_events;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request};
use tracing::{error, info, warn};

use plankton_collective::{RingAbort, RingConfig, RingListener};
use plankton_proto::v1::worker_control_client::WorkerControlClient;
use plankton_proto::v1::{
    GenerationEndReport, HeartbeatRequest, NextAssignmentRequest, RegisterRequest,
};
use plankton_security::ClientSecurity;

use credentials::{CoordinatorClient, WorkerCredentials};
pub use fault_injection::{FaultPoint, InjectedFault};
pub use loader::{LoadedShard, ShardResidence, load_shard};
pub use streaming::{StreamedImages, first_epoch_order, spawn_stream};

/// Largest gRPC message accepted from the coordinator (a full-dataset shard assignment is a few MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Coordinator gRPC endpoint, e.g. `https://coordinator:7070` (or `http://127.0.0.1:7070`, plaintext).
    pub coordinator_url: String,
    /// How to reach the coordinator: its CA (https), an optional client certificate, the `worker` token.
    pub security: ClientSecurity,
    /// Where ring peers connect, e.g. `0.0.0.0:7071` or `127.0.0.1:0`.
    pub peer_listen: String,
    /// Host peers should dial (a pod IP); defaults to the listen address's host.
    pub advertise_host: Option<String>,
    /// Human-readable name, shown in job messages.
    pub name: String,
    /// libtorch intra-op threads for training.
    pub threads: usize,
    /// Folder for preprocessed shards; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent image fetches from the object store.
    pub fetch_concurrency: usize,
    /// Train from the shard cache's record files, read image by image, with at most this many bytes of them
    /// kept in the page cache over all the job's shards (0: no cap); `None` holds shards in memory. Needs
    /// `cache_dir`.
    pub max_resident_bytes: Option<usize>,
    /// Streaming ingestion: start training once the first batch of each training shard is in, fetching the
    /// rest in the order the first epoch visits it (the test split loads first, whole). With
    /// `max_resident_bytes` the streamed images go to an unnamed file in `cache_dir`, read image by image;
    /// otherwise they are held in memory. Not for models that take native features.
    pub stream_shards: bool,
    pub ring: RingConfig,
    /// Plaintext probe port (`grpc.health.v1`: SERVING once registered with the coordinator; reflection), for
    /// Kubernetes' gRPC probes; `None` opens none.
    pub health_listen: Option<String>,
    /// Prometheus `/metrics` listen address; `None` serves no metrics.
    pub metrics_listen: Option<String>,
    /// A fault to inject (tests and the recovery benchmark); `None` in production.
    pub fault: Option<InjectedFault>,
}

impl WorkerConfig {
    pub fn new(coordinator_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            coordinator_url: coordinator_url.into(),
            security: ClientSecurity::default(),
            health_listen: None,
            metrics_listen: None,
            peer_listen: "127.0.0.1:0".into(),
            advertise_host: None,
            name: name.into(),
            threads: 1,
            cache_dir: None,
            fetch_concurrency: 32,
            max_resident_bytes: None,
            stream_shards: false,
            ring: RingConfig {
                // Peers may still be loading their shards: the coordinator aborts the formation when one is
                // lost, so this long bound only catches a coordinator that is gone for good.
                connect_timeout: Duration::from_secs(600),
                io_timeout: Duration::from_secs(60),
                ..RingConfig::default()
            },
            fault: None,
        }
    }
}

/// The job a worker runs, shared between the job's task, its training thread and the heartbeat loop.
pub(crate) struct JobHandle {
    pub job_id: String,
    /// Ends the job on this worker (cancelled or failed elsewhere).
    pub cancel: CancellationToken,
    pub generation: AtomicU32,
    pub rank: AtomicU32,
    /// Set when the coordinator asks the ring to end at the next step boundary.
    pub reform_requested: AtomicBool,
    /// Aborts the current generation's ring.
    abort: Mutex<RingAbort>,
    /// The end of the last generation, while waiting for the next one (re-sent after a coordinator restart).
    pending_end: Mutex<Option<GenerationEndReport>>,
}

impl JobHandle {
    fn new(job_id: &str, cancel: CancellationToken) -> Self {
        JobHandle {
            job_id: job_id.to_string(),
            cancel,
            generation: AtomicU32::new(0),
            rank: AtomicU32::new(0),
            reform_requested: AtomicBool::new(false),
            abort: Mutex::new(RingAbort::new()),
            pending_end: Mutex::new(None),
        }
    }

    /// Starts a generation: a fresh abort switch, no re-formation requested.
    pub fn begin_generation(&self, generation: u32, rank: u32) -> RingAbort {
        self.generation.store(generation, Ordering::SeqCst);
        self.rank.store(rank, Ordering::SeqCst);
        self.reform_requested.store(false, Ordering::SeqCst);
        *lock(&self.pending_end) = None;
        let abort = RingAbort::new();
        *lock(&self.abort) = abort.clone();
        abort
    }

    pub fn abort_ring(&self, reason: &str) {
        let abort = lock(&self.abort).clone();
        if !abort.is_aborted() {
            abort.abort(reason);
        }
    }

    pub fn set_pending_end(&self, report: Option<GenerationEndReport>) {
        *lock(&self.pending_end) = report;
    }

    fn pending_end(&self) -> Option<GenerationEndReport> {
        lock(&self.pending_end).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The job this worker is running, if any.
#[derive(Clone, Default)]
pub(crate) struct CurrentJob {
    slot: Arc<Mutex<Option<Arc<JobHandle>>>>,
}

impl CurrentJob {
    fn set(&self, handle: Arc<JobHandle>) {
        *lock(&self.slot) = Some(handle);
    }
    fn clear(&self) {
        *lock(&self.slot) = None;
    }
    fn get(&self) -> Option<Arc<JobHandle>> {
        lock(&self.slot).clone()
    }
}

/// What identifies this worker to the coordinator.
#[derive(Clone)]
pub(crate) struct Identity {
    name: String,
    peer_address: String,
    threads: u32,
    has_gpu: bool,
}

impl Identity {
    fn registration(
        &self,
        previous_worker_id: &str,
        running: Option<&JobHandle>,
    ) -> RegisterRequest {
        RegisterRequest {
            worker_name: self.name.clone(),
            peer_address: self.peer_address.clone(),
            threads: self.threads,
            has_gpu: self.has_gpu,
            previous_worker_id: previous_worker_id.to_string(),
            running_job_id: running.map(|job| job.job_id.clone()).unwrap_or_default(),
            generation: running.map_or(0, |job| job.generation.load(Ordering::SeqCst)),
            rank: running.map_or(0, |job| job.rank.load(Ordering::SeqCst)),
            pending_generation_end: running.and_then(JobHandle::pending_end),
        }
    }
}

/// Runs the worker until `shutdown` is cancelled: registers (again after a coordinator restart), takes
/// assignments one at a time and runs them.
pub async fn run(mut config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = Arc::new(RingListener::bind(&config.peer_listen)?);
    let listen_address = listener.local_addr();
    let peer_address = match &config.advertise_host {
        Some(host) => format!("{host}:{}", listen_address.port()),
        None => listen_address.to_string(),
    };
    info!(
        peer_address,
        coordinator = config.coordinator_url,
        "worker starting"
    );
    let current_job = CurrentJob::default();
    let identity = Identity {
        name: config.name.clone(),
        peer_address: peer_address.clone(),
        threads: config.threads as u32,
        has_gpu: tch::Cuda::is_available(),
    };
    let health = match &config.health_listen {
        Some(address) => {
            let probe_listener = tokio::net::TcpListener::bind(address).await?;
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            tokio::spawn(plankton_proto::serve_probe_port(
                probe_listener,
                service,
                shutdown.clone().cancelled_owned(),
            ));
            Some(reporter)
        }
        None => None,
    };
    if let Some(address) = &config.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(address).await?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let registry = telemetry::metrics().registry();
            if let Err(error) =
                plankton_common::serve_metrics(registry, || {}, metrics_listener, shutdown).await
            {
                error!(%error, "metrics endpoint failed");
            }
        });
    }
    let mut previous_worker_id = String::new();
    let credentials = WorkerCredentials::new(config.security.token.as_deref())?;

    while !shutdown.is_cancelled() {
        let Some(mut client) = connect(
            &config.coordinator_url,
            &config.security,
            &credentials,
            &shutdown,
        )
        .await
        else {
            break;
        };
        let registration = client
            .register(with_deadline(
                identity.registration(&previous_worker_id, None),
            ))
            .await;
        let registration = match registration {
            Ok(response) => response.into_inner(),
            Err(status) => {
                warn!(%status, "registration failed; retrying");
                sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        let worker_id = registration.worker_id;
        credentials.set_session(&registration.session_token);
        if let Some(health) = &health {
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        }
        previous_worker_id = worker_id.clone();
        let heartbeat_interval = Duration::from_millis(registration.heartbeat_interval_ms.max(100));
        info!(worker_id, "registered with the coordinator");
        let session = shutdown.child_token();
        let heartbeats = tokio::spawn(heartbeat_loop(
            client.clone(),
            credentials.clone(),
            worker_id.clone(),
            identity.clone(),
            heartbeat_interval,
            current_job.clone(),
            session.clone(),
        ));
        while !session.is_cancelled() {
            let mut request = Request::new(NextAssignmentRequest {
                worker_id: worker_id.clone(),
            });
            request.set_timeout(job::ASSIGNMENT_POLL_DEADLINE);
            let response = tokio::select! {
                _ = session.cancelled() => break,
                response = client.next_assignment(request) => response,
            };
            match response {
                Ok(response) => {
                    if let Some(assignment) = response.into_inner().assignment {
                        let end = job::run_assignment(
                            &config,
                            &mut client,
                            &worker_id,
                            assignment,
                            listener.clone(),
                            &current_job,
                            &session,
                        )
                        .await;
                        // An injected fault fires in the first job only.
                        config.fault = None;
                        if end == job::AssignmentEnd::Crashed {
                            warn!(worker_id, "injected crash: the worker stops without a word");
                            session.cancel();
                            let _ = heartbeats.await;
                            return Ok(());
                        }
                    }
                }
                Err(status) if status.code() == Code::NotFound => {
                    warn!(%status, "the coordinator no longer knows this worker; registering again");
                    break;
                }
                Err(status) => {
                    warn!(%status, "asking for an assignment failed; reconnecting");
                    sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                    break;
                }
            }
        }
        session.cancel();
        let _ = heartbeats.await;
    }
    info!("worker stopped");
    Ok(())
}

/// Connects to the coordinator, retrying (with backoff) until it answers or shutdown. `None` at shutdown, or
/// when the URL or the TLS files are unusable (logged).
async fn connect(
    url: &str,
    security: &ClientSecurity,
    credentials: &WorkerCredentials,
    shutdown: &CancellationToken,
) -> Option<CoordinatorClient> {
    let mut delay = Duration::from_millis(100);
    let endpoint = match plankton_security::endpoint(url, security) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
        Err(error) => {
            error!(url, %error, "cannot reach the coordinator with this configuration");
            return None;
        }
    };
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let client =
                    WorkerControlClient::new(InterceptedService::new(channel, credentials.clone()));
                return Some(
                    client
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                );
            }
            Err(error) => warn!(url, %error, "coordinator unreachable; retrying"),
        }
        if sleep_or_shutdown(delay, shutdown).await {
            return None;
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Sleeps; returns true when shutdown came first.
async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// A request with the deadline every call to the coordinator carries.
pub(crate) fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(outbox::CALL_DEADLINE);
    request
}

/// Heartbeats for the worker's whole registration. Relays the coordinator's orders to the running job (stop,
/// abort the ring, re-form at the next step) and, when a restarted coordinator no longer knows this worker,
/// registers again under the same id so the running job carries on.
async fn heartbeat_loop(
    mut client: CoordinatorClient,
    credentials: WorkerCredentials,
    mut worker_id: String,
    identity: Identity,
    interval: Duration,
    current_job: CurrentJob,
    session: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = session.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let running = current_job.get();
        let request = HeartbeatRequest {
            worker_id: worker_id.clone(),
            job_id: running
                .as_ref()
                .map(|job| job.job_id.clone())
                .unwrap_or_default(),
            generation: running
                .as_ref()
                .map_or(0, |job| job.generation.load(Ordering::SeqCst)),
        };
        let response = match client.heartbeat(with_deadline(request)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                warn!(%status, "heartbeat failed");
                continue;
            }
        };
        if response.unknown_worker {
            let Some(job) = running else {
                // Idle: start a fresh session (the main loop registers again).
                session.cancel();
                return;
            };
            let registration = identity.registration(&worker_id, Some(&job));
            let granted = client.register(with_deadline(registration)).await;
            if let Ok(granted) = &granted {
                credentials.set_session(&granted.get_ref().session_token);
            }
            match granted {
                Ok(granted) if granted.get_ref().worker_id == worker_id => {
                    info!(
                        worker_id,
                        job_id = job.job_id,
                        "registered again after a coordinator restart; the job continues"
                    );
                }
                Ok(granted) => {
                    warn!(
                        worker_id,
                        new_id = granted.get_ref().worker_id,
                        job_id = job.job_id,
                        "the coordinator gave this worker a new identity; stopping the job"
                    );
                    worker_id = granted.into_inner().worker_id;
                    job.cancel.cancel();
                    job.abort_ring("the coordinator no longer counts this worker in the job");
                }
                Err(status) => warn!(%status, "registering again failed"),
            }
            continue;
        }
        let Some(job) = running else {
            continue;
        };
        if response.cancel_current_job && !job.cancel.is_cancelled() {
            info!(
                job_id = job.job_id,
                "coordinator ended the job (or dropped this worker from it); stopping"
            );
            job.cancel.cancel();
            job.abort_ring("the job ended on the coordinator");
        }
        if response.abort_generation {
            job.abort_ring("the coordinator lost a member of this generation");
        }
        if response.reform_at_step {
            job.reform_requested.store(true, Ordering::SeqCst);
        }
    }
}
