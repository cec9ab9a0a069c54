//! Prometheus metrics of the coordinator (`--metrics-listen`): jobs by phase, workers by state, registry size,
//! jobs submitted and refused. Sampled from the cluster state at each scrape.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
        CoordinatorMetrics {
            registry: Arc::new(registry),
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
                    phase: phase_label(phase),
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
}

fn phase_label(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Unspecified => "unspecified",
        JobPhase::Pending => "pending",
        JobPhase::Loading => "loading",
        JobPhase::Training => "training",
        JobPhase::Succeeded => "succeeded",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
        JobPhase::Recovering => "recovering",
    }
}
