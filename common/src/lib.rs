//! What every plankton-cluster process shares: tracing set-up, signal-driven shutdown, the Prometheus
//! `/metrics` endpoint, and [`malloc`] settings for the processes that run libtorch.
#![deny(unsafe_code)]

pub mod malloc;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); `PLANKTON_LOG_FORMAT=json` for JSON lines.
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// As [`init_tracing`], with another default filter when `RUST_LOG` is unset.
pub fn init_tracing_with_default(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var("PLANKTON_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests, all-in-one processes): keep the first subscriber.
    drop(result);
}

/// A token cancelled on SIGINT or SIGTERM (Kubernetes sends SIGTERM to start a graceful shutdown).
/// Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
            _ = terminate => tracing::info!("terminate signal received; shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Serves `GET /metrics` on `listener` (the OpenMetrics text of `registry`, encoded at each scrape after
/// `before_scrape` refreshed whatever is sampled rather than counted) until `shutdown` is cancelled.
pub async fn serve_metrics(
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    before_scrape: impl Fn() + Clone + Send + Sync + 'static,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            let before_scrape = before_scrape.clone();
            async move {
                before_scrape();
                let mut text = String::new();
                // Writing into a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    tracing::info!(address = ?listener.local_addr().ok(), "metrics listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
