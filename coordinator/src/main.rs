//! `plankton-coordinator`: the coordinator role as a process.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use plankton_coordinator::state::Timeouts;
use plankton_coordinator::validation::JobPolicy;
use plankton_coordinator::{CoordinatorConfig, default_state_dir, run};
use plankton_security::{InsecureFlags, ServerSecurityFlags};

#[derive(Parser, Debug)]
#[command(
    name = "plankton-coordinator",
    about = "plankton-cluster coordinator: jobs, shards, metrics"
)]
struct Options {
    /// gRPC listen address.
    #[arg(long, env = "PLANKTON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[command(flatten)]
    security: ServerSecurityFlags,
    #[command(flatten)]
    insecure: InsecureFlags,
    /// Jobs may read datasets only under these locations (repeatable; comma-separated in the environment),
    /// e.g. file:///data/plankton or s3://lab-bucket/plankton. With none, every job is refused.
    #[arg(
        long = "allow-dataset",
        env = "PLANKTON_ALLOW_DATASET",
        value_delimiter = ','
    )]
    allow_datasets: Vec<String>,
    /// Jobs may write models and checkpoints only under these locations (repeatable). With none, a job writes
    /// only under its own dataset's folder.
    #[arg(
        long = "allow-output",
        env = "PLANKTON_ALLOW_OUTPUT",
        value_delimiter = ','
    )]
    allow_outputs: Vec<String>,
    /// Largest world size a job may ask for.
    #[arg(long, env = "PLANKTON_MAX_WORLD_SIZE", default_value_t = 256)]
    max_world_size: u32,
    /// Prometheus /metrics listen address (omit to serve no metrics).
    #[arg(long, env = "PLANKTON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Web dashboard listen address (omit to serve none): same TLS certificate and tokens as the gRPC port;
    /// a viewer token suffices to look, an operator's to promote models.
    #[arg(long, env = "PLANKTON_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Plaintext probe port: only grpc.health.v1 and reflection, for Kubernetes' native gRPC probes (no TLS).
    #[arg(long, env = "PLANKTON_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Encrypt every job's ring traffic with TLS (the ring handshake is authenticated either way).
    #[arg(long, env = "PLANKTON_RING_TLS", value_parser = FalseyValueParser::new())]
    ring_tls: bool,
    /// Folder of the embedded job and model store; jobs and models survive restarts. Default:
    /// $XDG_STATE_HOME/plankton/coordinator, else ~/.local/state/plankton/coordinator (created if missing).
    #[arg(long, env = "PLANKTON_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Keep jobs and models in memory only: all of them are lost when the coordinator stops. Not with --state-dir.
    #[arg(long, env = "PLANKTON_IN_MEMORY", value_parser = FalseyValueParser::new())]
    in_memory: bool,
    /// A worker silent for this long is lost: its job re-forms its ring without it (3 heartbeat intervals suffice
    /// once the ring is known broken).
    #[arg(long, env = "PLANKTON_WORKER_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    worker_timeout: Duration,
    /// How long a job waits for enough free workers (to start, or to resume from a checkpoint).
    #[arg(long, env = "PLANKTON_REGISTRATION_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    registration_timeout: Duration,
    /// Heartbeat interval asked of workers.
    #[arg(long, env = "PLANKTON_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// After a fault, how long the surviving workers of a job wait for a replacement before going on with fewer.
    #[arg(long, env = "PLANKTON_REPLACEMENT_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    replacement_wait: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plankton_common::init_tracing();
    let options = Options::parse();
    let state_dir = state_dir_of(&options);
    if state_dir.is_none() {
        tracing::warn!(
            "state kept in memory only (--in-memory): jobs and models are lost at shutdown"
        );
    }
    let security = options
        .security
        .resolve(options.listen, &options.insecure)
        .and_then(|security| {
            // A plaintext or token-less dashboard is held to the same loopback rule as the gRPC port.
            match options.http_listen {
                Some(address) if options.insecure.insecure => {
                    plankton_security::check_insecure_allowed(
                        &address.to_string(),
                        options.insecure.allow_insecure_remote,
                    )?;
                    Ok(security)
                }
                _ => Ok(security),
            }
        })
        .unwrap_or_else(|error| {
            Options::command()
                .error(ErrorKind::ArgumentConflict, error)
                .exit()
        });
    let job_policy = JobPolicy {
        dataset_prefixes: options.allow_datasets.clone(),
        output_prefixes: options.allow_outputs.clone(),
        max_world_size: options.max_world_size,
    };
    if let Err(error) = job_policy.check() {
        Options::command()
            .error(ErrorKind::InvalidValue, error)
            .exit();
    }
    if job_policy.dataset_prefixes.is_empty() {
        tracing::warn!("no --allow-dataset: every job will be refused until one is given");
    }
    let config = CoordinatorConfig {
        listen_address: options.listen,
        security,
        job_policy,
        ring_tls: options.ring_tls,
        health_listen: options.health_listen,
        metrics_listen: options.metrics_listen,
        dashboard_listen: options.http_listen,
        state_dir,
        timeouts: Timeouts {
            worker_timeout: options.worker_timeout,
            registration_timeout: options.registration_timeout,
            heartbeat_interval: options.heartbeat_interval,
            replacement_wait: options.replacement_wait,
        },
    };
    let shutdown = plankton_common::shutdown_on_signals();
    run(config, shutdown).await
}

/// The state folder to use (`None`: memory only). Exits with a usage error for `--in-memory` together with
/// `--state-dir` (from flags or environment), or when no default folder can be derived.
fn state_dir_of(options: &Options) -> Option<PathBuf> {
    let explicit_state_dir = options
        .state_dir
        .clone()
        .filter(|state_dir| !state_dir.as_os_str().is_empty());
    match (options.in_memory, explicit_state_dir) {
        (true, Some(state_dir)) => Options::command()
            .error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--in-memory (PLANKTON_IN_MEMORY) and --state-dir {} (PLANKTON_STATE_DIR) contradict each other: give one",
                    state_dir.display()
                ),
            )
            .exit(),
        (true, None) => None,
        (false, Some(state_dir)) => Some(state_dir),
        (false, None) => match default_state_dir() {
            Some(state_dir) => Some(state_dir),
            None => Options::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "neither XDG_STATE_HOME nor HOME is an absolute path, so there is no default state folder: \
                     give --state-dir DIR (or --in-memory)",
                )
                .exit(),
        },
    }
}
