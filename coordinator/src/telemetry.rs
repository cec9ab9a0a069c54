//! Prometheus metrics of the coordinator (`--metrics-listen`): jobs by phase, workers by state, registry size,
//! jobs submitted and refused (sampled from the cluster state at each scrape), and the latency and status of
//! every gRPC call ([`RpcMetricsLayer`]).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use plankton_proto::v1::JobPhase;

use crate::state::ClusterState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerStateLabels {
    state: &'static str,
}

/// The coordinator's series; clones share them.
#[derive(Clone, Debug)]
pub struct CoordinatorMetrics {
    registry: Arc<Registry>,
    jobs: Family<PhaseLabels, Gauge>,
    workers: Family<WorkerStateLabels, Gauge>,
    models: Gauge,
    recoveries: Gauge,
    /// Jobs accepted at submit.
    pub jobs_submitted: Counter,
    /// Jobs refused at submit (invalid or outside the allowed locations).
    pub jobs_refused: Counter,
    rpc: RpcSeries,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

const PHASES: [JobPhase; 7] = [
    JobPhase::Pending,
    JobPhase::Loading,
    JobPhase::Training,
    JobPhase::Recovering,
    JobPhase::Succeeded,
    JobPhase::Failed,
    JobPhase::Cancelled,
];

impl CoordinatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("plankton_coordinator");
        let jobs = Family::<PhaseLabels, Gauge>::default();
        registry.register("jobs", "Jobs by phase", jobs.clone());
        let workers = Family::<WorkerStateLabels, Gauge>::default();
        registry.register(
            "workers",
            "Registered workers, busy (holding a job) or idle",
            workers.clone(),
        );
        let models = Gauge::default();
        registry.register(
            "registry_models",
            "Registered model versions",
            models.clone(),
        );
        let recoveries = Gauge::default();
        registry.register(
            "job_recoveries",
            "Ring re-formations over every known job",
            recoveries.clone(),
        );
        let jobs_submitted = Counter::default();
        registry.register(
            "jobs_submitted",
            "Jobs accepted at submit",
            jobs_submitted.clone(),
        );
        let jobs_refused = Counter::default();
        registry.register(
            "jobs_refused",
            "Jobs refused at submit (invalid spec or location)",
            jobs_refused.clone(),
        );
        let rpc = RpcSeries::register(&mut registry);
        CoordinatorMetrics {
            registry: Arc::new(registry),
            rpc,
            jobs,
            workers,
            models,
            recoveries,
            jobs_submitted,
            jobs_refused,
        }
    }

    /// Samples the gauges from `state`.
    pub fn sample(&self, state: &ClusterState) {
        let jobs = state.list_jobs();
        for phase in PHASES {
            let count = jobs.iter().filter(|job| job.phase() == phase).count();
            self.jobs
                .get_or_create(&PhaseLabels {
                    phase: phase.short_name(),
                })
                .set(count as i64);
        }
        let recoveries: usize = jobs.iter().map(|job| job.recoveries.len()).sum();
        self.recoveries.set(recoveries as i64);
        let workers = state.list_workers();
        let busy = workers
            .iter()
            .filter(|worker| !worker.current_job.is_empty())
            .count();
        self.workers
            .get_or_create(&WorkerStateLabels { state: "busy" })
            .set(busy as i64);
        self.workers
            .get_or_create(&WorkerStateLabels { state: "idle" })
            .set((workers.len() - busy) as i64);
        self.models.set(state.registry.list("").len() as i64);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The layer recording every gRPC call of a server into these metrics.
    pub fn rpc_layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            series: self.rpc.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

/// The series of every gRPC call the coordinator answers (refused ones included).
#[derive(Clone, Debug)]
struct RpcSeries {
    seconds: Family<MethodLabels, Histogram>,
    requests: Family<RpcLabels, Counter>,
}

impl RpcSeries {
    fn register(registry: &mut Registry) -> Self {
        let seconds = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "rpc_seconds",
            "Time to answer a gRPC call (to its response headers; the first event of a stream)",
            seconds.clone(),
        );
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by method and status code",
            requests.clone(),
        );
        RpcSeries { seconds, requests }
    }
}

/// A tower layer recording [`CoordinatorMetrics`]' RPC series for every call of a tonic server. Methods
/// without an access rule are counted as "unknown", so callers cannot grow the label set.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    series: RpcSeries,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            series: self.series.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    series: RpcSeries,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>>
    for RpcMetricsService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        let method = if plankton_security::rule_for(path).is_some() {
            path.trim_start_matches('/').to_string()
        } else {
            "unknown".to_string()
        };
        let started = std::time::Instant::now();
        let answer = self.inner.call(request);
        let series = self.series.clone();
        Box::pin(async move {
            let response = answer.await;
            let code = plankton_security::layer::grpc_status_of(&response);
            series
                .seconds
                .get_or_create(&MethodLabels {
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            series
                .requests
                .get_or_create(&RpcLabels { method, code })
                .inc();
            response
        })
    }
}
