//! Prometheus metrics of a worker (`--metrics-listen`): images fetched and skipped, shard cache hits, steps and
//! where their time goes (data, forward-backward, all-reduce, optimizer), all-reduce bytes, and the current
//! epoch, step and loss. One set per process.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use plankton_trainer::StepProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

/// The worker's series.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    pub images_fetched: Counter,
    pub images_skipped: Counter,
    pub shard_cache_hits: Counter,
    pub shard_cache_misses: Counter,
    pub shard_cache_corrupt: Counter,
    pub steps: Counter,
    pub step_seconds: Family<PhaseLabels, Counter<f64, AtomicU64>>,
    pub all_reduce_bytes: Counter,
    pub all_reduce_hidden_seconds: Counter<f64, AtomicU64>,
    pub epoch: Gauge,
    pub global_step: Gauge,
    pub loss: Gauge<f64, AtomicU64>,
    pub images_per_second: Gauge<f64, AtomicU64>,
}

/// The process's worker metrics.
pub fn metrics() -> &'static WorkerMetrics {
    static METRICS: OnceLock<WorkerMetrics> = OnceLock::new();
    METRICS.get_or_init(WorkerMetrics::new)
}

impl WorkerMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("plankton_worker");
        macro_rules! registered {
            ($name:literal, $help:literal, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let images_fetched = registered!(
            "images_fetched",
            "Images fetched from the object store and preprocessed",
            Counter::default()
        );
        let images_skipped = registered!(
            "images_skipped",
            "Images skipped (missing or undecodable)",
            Counter::default()
        );
        let shard_cache_hits = registered!(
            "shard_cache_hits",
            "Shards loaded from the local preprocessed cache",
            Counter::default()
        );
        let shard_cache_misses = registered!(
            "shard_cache_misses",
            "Shards fetched and preprocessed (not in the cache)",
            Counter::default()
        );
        let shard_cache_corrupt = registered!(
            "shard_cache_corrupt",
            "Shard record files found truncated or corrupt (removed and rebuilt from the store)",
            Counter::default()
        );
        let steps = registered!("steps", "Optimizer steps taken", Counter::default());
        let step_seconds = registered!(
            "step_seconds",
            "Time spent in steps, by phase: data, forward_backward, all_reduce, optimizer",
            Family::<PhaseLabels, Counter<f64, AtomicU64>>::default()
        );
        let all_reduce_bytes = registered!(
            "all_reduce_bytes",
            "Bytes of gradient buffers all-reduced (divide by step_seconds{phase=\"all_reduce\"} for GB/s)",
            Counter::default()
        );
        let all_reduce_hidden_seconds = registered!(
            "all_reduce_hidden_seconds",
            "Time the gradient all-reduce ran alongside the backward pass (overlapped: not in step_seconds)",
            Counter::<f64, AtomicU64>::default()
        );
        let epoch = registered!("epoch", "Current epoch (from 1)", Gauge::default());
        let global_step = registered!(
            "global_step",
            "Optimizer steps of the current job so far",
            Gauge::default()
        );
        let loss = registered!(
            "loss",
            "Class-weighted loss of the last step's global batch",
            Gauge::<f64, AtomicU64>::default()
        );
        let images_per_second = registered!(
            "images_per_second",
            "Images this worker trains per second in the current epoch",
            Gauge::<f64, AtomicU64>::default()
        );
        WorkerMetrics {
            registry: Arc::new(registry),
            images_fetched,
            images_skipped,
            shard_cache_hits,
            shard_cache_misses,
            shard_cache_corrupt,
            steps,
            step_seconds,
            all_reduce_bytes,
            all_reduce_hidden_seconds,
            epoch,
            global_step,
            loss,
            images_per_second,
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Records one step.
    pub fn record_step(&self, progress: &StepProgress) {
        self.steps.inc();
        let timings = &progress.timings;
        for (phase, duration) in [
            ("data", timings.data),
            ("forward_backward", timings.forward_backward),
            ("all_reduce", timings.all_reduce),
            ("optimizer", timings.optimizer),
        ] {
            self.step_seconds
                .get_or_create(&PhaseLabels { phase })
                .inc_by(duration.as_secs_f64());
        }
        self.all_reduce_bytes.inc_by(timings.all_reduce_bytes);
        self.all_reduce_hidden_seconds
            .inc_by(timings.all_reduce_hidden.as_secs_f64());
        self.epoch.set(i64::from(progress.epoch));
        self.global_step.set(progress.global_step as i64);
        if progress.loss.is_finite() {
            self.loss.set(progress.loss);
        }
        self.images_per_second.set(progress.images_per_second);
    }
}
