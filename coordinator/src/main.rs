//! `plankton-coordinator`: the coordinator role as a process.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use plankton_coordinator::state::Timeouts;
use plankton_coordinator::{CoordinatorConfig, run};

#[derive(Parser, Debug)]
#[command(
    name = "plankton-coordinator",
    about = "plankton-cluster coordinator: jobs, shards, metrics"
)]
struct Options {
    /// gRPC listen address.
    #[arg(long, env = "PLANKTON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Folder of the embedded job store; jobs survive restarts. Omit to keep jobs in memory.
    #[arg(long, env = "PLANKTON_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A worker silent for this long fails its job.
    #[arg(long, env = "PLANKTON_WORKER_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    worker_timeout: Duration,
    /// How long a job waits for enough free workers.
    #[arg(long, env = "PLANKTON_REGISTRATION_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    registration_timeout: Duration,
    /// Heartbeat interval asked of workers.
    #[arg(long, env = "PLANKTON_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plankton_common::init_tracing();
    let options = Options::parse();
    let config = CoordinatorConfig {
        listen_address: options.listen,
        state_dir: options.state_dir,
        timeouts: Timeouts {
            worker_timeout: options.worker_timeout,
            registration_timeout: options.registration_timeout,
            heartbeat_interval: options.heartbeat_interval,
        },
    };
    let shutdown = plankton_common::shutdown_on_signals();
    run(config, shutdown).await
}
