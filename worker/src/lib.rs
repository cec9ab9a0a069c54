//! The worker role: registers with the coordinator, fetches and preprocesses its shard, trains data-parallel
//! with its ring peers, reports progress and metrics, and writes the trained model to the object store.
#![forbid(unsafe_code)]

mod job;
mod loader;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{info, warn};

use plankton_collective::{RingConfig, RingListener};
use plankton_proto::v1::worker_control_client::WorkerControlClient;
use plankton_proto::v1::{HeartbeatRequest, NextAssignmentRequest, RegisterRequest};

/// Largest gRPC message accepted from the coordinator (a full-dataset shard assignment is a few MB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Coordinator gRPC endpoint, e.g. `http://127.0.0.1:7070`.
    pub coordinator_url: String,
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
    pub ring: RingConfig,
}

impl WorkerConfig {
    pub fn new(coordinator_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            coordinator_url: coordinator_url.into(),
            peer_listen: "127.0.0.1:0".into(),
            advertise_host: None,
            name: name.into(),
            threads: 1,
            cache_dir: None,
            fetch_concurrency: 32,
            ring: RingConfig {
                connect_timeout: Duration::from_secs(120),
                io_timeout: Duration::from_secs(60),
                chunk_bytes: 256 * 1024,
            },
        }
    }
}

/// The job this worker is running, shared with the heartbeat loop so the coordinator can stop it.
#[derive(Clone, Default)]
pub(crate) struct CurrentJob {
    slot: Arc<Mutex<Option<(String, CancellationToken)>>>,
}

impl CurrentJob {
    fn set(&self, job_id: &str, cancel: CancellationToken) {
        *self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((job_id.to_string(), cancel));
    }
    fn clear(&self) {
        *self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
    fn get(&self) -> Option<(String, CancellationToken)> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Runs the worker until `shutdown` is cancelled: registers (again after a coordinator restart), takes
/// assignments one at a time and runs them.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
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

    while !shutdown.is_cancelled() {
        let Some(mut client) = connect(&config.coordinator_url, &shutdown).await else {
            break;
        };
        let registration = client
            .register(RegisterRequest {
                worker_name: config.name.clone(),
                peer_address: peer_address.clone(),
                threads: config.threads as u32,
                has_gpu: tch::Cuda::is_available(),
            })
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
        let heartbeat_interval = Duration::from_millis(registration.heartbeat_interval_ms.max(100));
        info!(worker_id, "registered with the coordinator");
        let session = shutdown.child_token();
        let heartbeats = tokio::spawn(heartbeat_loop(
            client.clone(),
            worker_id.clone(),
            heartbeat_interval,
            current_job.clone(),
            session.clone(),
        ));
        while !session.is_cancelled() {
            let request = NextAssignmentRequest {
                worker_id: worker_id.clone(),
            };
            let response = tokio::select! {
                _ = session.cancelled() => break,
                response = client.next_assignment(request) => response,
            };
            match response {
                Ok(response) => {
                    if let Some(assignment) = response.into_inner().assignment {
                        job::run_assignment(
                            &config,
                            &mut client,
                            &worker_id,
                            assignment,
                            listener.clone(),
                            &current_job,
                            &session,
                        )
                        .await;
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

async fn connect(url: &str, shutdown: &CancellationToken) -> Option<WorkerControlClient<Channel>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match WorkerControlClient::connect(url.to_string()).await {
            Ok(client) => {
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

/// Heartbeats for the worker's whole registration; cancels the running job when the coordinator says so and
/// ends the session when the coordinator forgot this worker.
async fn heartbeat_loop(
    mut client: WorkerControlClient<Channel>,
    worker_id: String,
    interval: Duration,
    current_job: CurrentJob,
    session: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
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
                .map(|(job_id, _)| job_id.clone())
                .unwrap_or_default(),
        };
        match client.heartbeat(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.cancel_current_job
                    && let Some((job_id, cancel)) = running
                    && !cancel.is_cancelled()
                {
                    info!(job_id, "coordinator ended the job; stopping it");
                    cancel.cancel();
                }
                if response.unknown_worker && current_job.get().is_none() {
                    session.cancel();
                    return;
                }
            }
            Err(status) => warn!(%status, "heartbeat failed"),
        }
    }
}
