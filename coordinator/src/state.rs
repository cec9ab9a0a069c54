//! The coordinator's live state: registered workers, jobs with their event logs, and the job lifecycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast};
use tracing::{info, warn};

use plankton_proto::v1::{
    DoneReport, EpochReport, Job, JobEvent, JobPhase, JobSpec, ShardAssignment, WorkerInfo,
    WorkerProgress, job_event,
};

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::metrics::ConfusionMatrix;
use crate::planner::JobPlan;
use crate::registry::ModelRegistry;
use crate::store::StateStore;

/// Events kept per job for late watchers; progress events beyond this are dropped from the replay log.
const MAX_REPLAYED_EVENTS: usize = 4096;

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Timeouts that bound every wait of the coordinator.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A worker not heard from for this long fails its job and leaves the pool.
    pub worker_timeout: Duration,
    /// A job waits at most this long for `world_size` free workers.
    pub registration_timeout: Duration,
    /// Interval workers are asked to heartbeat at.
    pub heartbeat_interval: Duration,
}

struct WorkerEntry {
    name: String,
    peer_address: String,
    threads: u32,
    has_gpu: bool,
    last_seen: Instant,
    last_seen_unix_ms: i64,
    current_job: Option<String>,
    pending_assignment: Option<ShardAssignment>,
    assignment_ready: Arc<Notify>,
}

struct JobEntry {
    job: Job,
    events: Vec<JobEvent>,
    sender: broadcast::Sender<JobEvent>,
    /// Worker id of each rank once assigned.
    ranks: Vec<String>,
    epoch_reports: BTreeMap<u32, Vec<Option<EpochReport>>>,
    done_reports: Vec<Option<DoneReport>>,
    plan: Option<JobPlan>,
}

impl JobEntry {
    fn is_finished(&self) -> bool {
        is_terminal(self.job.phase())
    }
}

pub fn is_terminal(phase: JobPhase) -> bool {
    matches!(
        phase,
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
    )
}

#[derive(Default)]
struct Inner {
    workers: HashMap<String, WorkerEntry>,
    jobs: BTreeMap<String, JobEntry>,
    next_worker_number: u64,
}

/// Shared, cloneable handle on the coordinator's state.
#[derive(Clone)]
pub struct ClusterState {
    inner: Arc<Mutex<Inner>>,
    store: Arc<StateStore>,
    pub registry: Arc<ModelRegistry>,
    pub timeouts: Timeouts,
}

impl ClusterState {
    /// Loads persisted jobs; jobs that were still running when the coordinator stopped are marked failed.
    pub fn new(store: StateStore, timeouts: Timeouts) -> CoordinatorResult<Self> {
        let mut inner = Inner::default();
        for mut job in store.load_all()? {
            if !is_terminal(job.phase()) {
                job.set_phase(JobPhase::Failed);
                job.message =
                    "interrupted: the coordinator restarted while the job was running".into();
                job.finished_unix_ms = unix_ms_now();
                store.save(&job)?;
            }
            let (sender, _) = broadcast::channel(16);
            inner.jobs.insert(
                job.id.clone(),
                JobEntry {
                    job,
                    events: Vec::new(),
                    sender,
                    ranks: Vec::new(),
                    epoch_reports: BTreeMap::new(),
                    done_reports: Vec::new(),
                    plan: None,
                },
            );
        }
        let store = Arc::new(store);
        let registry = Arc::new(ModelRegistry::load(store.clone())?);
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            store,
            registry,
            timeouts,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ------------------------------------------------------------------ workers

    pub fn register_worker(
        &self,
        name: &str,
        peer_address: &str,
        threads: u32,
        has_gpu: bool,
    ) -> String {
        let mut inner = self.lock();
        inner.next_worker_number += 1;
        let worker_id = format!("w{}-{}", inner.next_worker_number, sanitize(name));
        inner.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                name: name.to_string(),
                peer_address: peer_address.to_string(),
                threads,
                has_gpu,
                last_seen: Instant::now(),
                last_seen_unix_ms: unix_ms_now(),
                current_job: None,
                pending_assignment: None,
                assignment_ready: Arc::new(Notify::new()),
            },
        );
        info!(
            worker_id,
            peer_address, threads, has_gpu, "worker registered"
        );
        worker_id
    }

    /// Records that a worker is alive; returns whether its current job should stop.
    pub fn heartbeat(&self, worker_id: &str) -> CoordinatorResult<bool> {
        let mut inner = self.lock();
        let Inner { workers, jobs, .. } = &mut *inner;
        let worker = workers
            .get_mut(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker(worker_id.into()))?;
        worker.last_seen = Instant::now();
        worker.last_seen_unix_ms = unix_ms_now();
        let cancel = match &worker.current_job {
            Some(job_id) => jobs.get(job_id).is_none_or(JobEntry::is_finished),
            None => false,
        };
        if cancel {
            worker.current_job = None;
        }
        Ok(cancel)
    }

    /// Takes the worker's pending assignment, or returns the notifier to wait on.
    pub fn take_assignment(
        &self,
        worker_id: &str,
    ) -> CoordinatorResult<Result<ShardAssignment, Arc<Notify>>> {
        let mut inner = self.lock();
        let worker = inner
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker(worker_id.into()))?;
        worker.last_seen = Instant::now();
        worker.last_seen_unix_ms = unix_ms_now();
        Ok(match worker.pending_assignment.take() {
            Some(assignment) => Ok(assignment),
            None => Err(worker.assignment_ready.clone()),
        })
    }

    pub fn list_workers(&self) -> Vec<WorkerInfo> {
        let inner = self.lock();
        let mut workers: Vec<WorkerInfo> = inner
            .workers
            .iter()
            .map(|(worker_id, worker)| WorkerInfo {
                worker_id: worker_id.clone(),
                peer_address: worker.peer_address.clone(),
                current_job: worker.current_job.clone().unwrap_or_default(),
                last_heartbeat_unix_ms: worker.last_seen_unix_ms,
                threads: worker.threads,
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        workers
    }

    // ------------------------------------------------------------------ jobs

    pub fn create_job(&self, spec: JobSpec, plan: JobPlan) -> CoordinatorResult<Job> {
        let job_id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut job = Job {
            id: job_id.clone(),
            spec: Some(spec),
            created_unix_ms: unix_ms_now(),
            class_names: plan.class_names.clone(),
            class_weights: plan.class_weights.clone(),
            train_objects: plan.train_objects,
            test_objects: plan.test_objects,
            message: "waiting for workers".into(),
            ..Default::default()
        };
        job.set_phase(JobPhase::Pending);
        self.store.save(&job)?;
        let (sender, _) = broadcast::channel(1024);
        let mut inner = self.lock();
        inner.jobs.insert(
            job_id.clone(),
            JobEntry {
                job: job.clone(),
                events: Vec::new(),
                sender,
                ranks: Vec::new(),
                epoch_reports: BTreeMap::new(),
                done_reports: Vec::new(),
                plan: Some(plan),
            },
        );
        drop(inner);
        self.emit(&job_id, job_event::Event::Phase(JobPhase::Pending as i32));
        Ok(job)
    }

    pub fn get_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        let inner = self.lock();
        inner
            .jobs
            .get(job_id)
            .map(|entry| entry.job.clone())
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))
    }

    pub fn list_jobs(&self) -> Vec<Job> {
        let inner = self.lock();
        let mut jobs: Vec<Job> = inner.jobs.values().map(|entry| entry.job.clone()).collect();
        jobs.sort_by_key(|job| job.created_unix_ms);
        jobs
    }

    /// Events so far plus a receiver for the rest; `None` receiver when the job already ended.
    pub fn subscribe(
        &self,
        job_id: &str,
    ) -> CoordinatorResult<(Vec<JobEvent>, Option<broadcast::Receiver<JobEvent>>, Job)> {
        let inner = self.lock();
        let entry = inner
            .jobs
            .get(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        let receiver = if entry.is_finished() {
            None
        } else {
            Some(entry.sender.subscribe())
        };
        Ok((entry.events.clone(), receiver, entry.job.clone()))
    }

    fn emit(&self, job_id: &str, event: job_event::Event) {
        let mut inner = self.lock();
        if let Some(entry) = inner.jobs.get_mut(job_id) {
            push_event(entry, job_id, event);
        }
    }

    pub fn cancel_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        self.finish_job(
            job_id,
            JobPhase::Cancelled,
            "cancelled by the operator".into(),
        )?;
        self.get_job(job_id)
    }

    /// Moves a job to a terminal phase (once), frees its workers, persists it and ends its event stream.
    pub fn finish_job(
        &self,
        job_id: &str,
        phase: JobPhase,
        message: String,
    ) -> CoordinatorResult<()> {
        let finished_job = {
            let mut inner = self.lock();
            let Inner { workers, jobs, .. } = &mut *inner;
            let entry = jobs
                .get_mut(job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
            if entry.is_finished() {
                return Err(CoordinatorError::JobFinished {
                    job_id: job_id.into(),
                    phase: entry.job.phase().as_str_name().to_string(),
                });
            }
            match phase {
                JobPhase::Failed => warn!(job_id, message, "job failed"),
                _ => info!(job_id, phase = phase.as_str_name(), message, "job finished"),
            }
            entry.job.set_phase(phase);
            entry.job.message = message;
            entry.job.finished_unix_ms = unix_ms_now();
            entry.plan = None;
            for worker_id in &entry.ranks {
                if let Some(worker) = workers.get_mut(worker_id) {
                    worker.pending_assignment = None;
                    // A healthy worker clears current_job itself when its heartbeat hears of the end.
                    if phase == JobPhase::Succeeded {
                        worker.current_job = None;
                    }
                }
            }
            push_event(entry, job_id, job_event::Event::Phase(phase as i32));
            let job = entry.job.clone();
            push_event(entry, job_id, job_event::Event::Finished(job.clone()));
            job
        };
        self.store.save(&finished_job)?;
        if phase == JobPhase::Succeeded && !finished_job.model_url.is_empty() {
            self.registry.register_job_model(&finished_job)?;
        }
        Ok(())
    }

    fn update_job<T>(
        &self,
        job_id: &str,
        update: impl FnOnce(&mut JobEntry) -> T,
    ) -> CoordinatorResult<T> {
        let mut inner = self.lock();
        let entry = inner
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        Ok(update(entry))
    }

    /// Picks `world_size` idle live workers and hands each its rank's shard. `Ok(false)` while too few are free.
    pub fn try_assign(&self, job_id: &str) -> CoordinatorResult<bool> {
        let mut inner = self.lock();
        let Inner { workers, jobs, .. } = &mut *inner;
        let entry = jobs
            .get_mut(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        if entry.is_finished() {
            return Ok(true);
        }
        let spec = entry.job.spec.clone().unwrap_or_default();
        let world_size = spec.world_size as usize;
        let live_limit = self.timeouts.worker_timeout;
        let mut idle: Vec<&String> = workers
            .iter()
            .filter(|(_, worker)| {
                worker.current_job.is_none() && worker.last_seen.elapsed() < live_limit
            })
            .map(|(worker_id, _)| worker_id)
            .collect();
        if idle.len() < world_size {
            return Ok(false);
        }
        idle.sort();
        let chosen: Vec<String> = idle.into_iter().take(world_size).cloned().collect();
        let plan = entry
            .plan
            .take()
            .ok_or_else(|| CoordinatorError::Internal(format!("job {job_id} has no plan")))?;
        let ring_peer_addresses: Vec<String> = chosen
            .iter()
            .map(|worker_id| workers[worker_id].peer_address.clone())
            .collect();
        let every_rank_has_a_gpu = chosen.iter().all(|worker_id| workers[worker_id].has_gpu);
        let nccl_unique_id = if every_rank_has_a_gpu {
            nccl_unique_id(job_id)
        } else {
            Vec::new()
        };
        let output_url = if spec.output_url.is_empty() {
            format!(
                "{}/models/{}",
                spec.dataset_url.trim_end_matches('/'),
                job_id
            )
        } else {
            spec.output_url.clone()
        };
        for (rank, (worker_id, shard)) in chosen.iter().zip(plan.shards).enumerate() {
            let worker = workers.get_mut(worker_id).expect("chosen from the map");
            worker.current_job = Some(job_id.to_string());
            worker.pending_assignment = Some(ShardAssignment {
                job_id: job_id.to_string(),
                spec: Some(spec.clone()),
                rank: rank as u32,
                world_size: world_size as u32,
                ring_peer_addresses: ring_peer_addresses.clone(),
                train: shard.train,
                test: shard.test,
                class_names: plan.class_names.clone(),
                class_weights: plan.class_weights.clone(),
                nccl_unique_id: nccl_unique_id.clone(),
                global_train_objects: plan.train_objects,
                steps_per_epoch: plan.steps_per_epoch,
                output_url: output_url.clone(),
                image_source: plan.image_source.clone(),
            });
            worker.assignment_ready.notify_one();
        }
        entry.ranks = chosen.clone();
        entry.done_reports = vec![None; world_size];
        entry.job.set_phase(JobPhase::Loading);
        entry.job.message = format!("assigned to {}", chosen.join(", "));
        entry.job.workers = chosen
            .iter()
            .enumerate()
            .map(|(rank, worker_id)| WorkerProgress {
                rank: rank as u32,
                worker_id: worker_id.clone(),
                ..Default::default()
            })
            .collect();
        info!(job_id, workers = ?chosen, "job assigned");
        push_event(
            entry,
            job_id,
            job_event::Event::Phase(JobPhase::Loading as i32),
        );
        let snapshot = entry.job.clone();
        drop(inner);
        self.store.save(&snapshot)?;
        Ok(true)
    }

    pub fn record_progress(
        &self,
        job_id: &str,
        progress: WorkerProgress,
        phase: JobPhase,
    ) -> CoordinatorResult<()> {
        self.update_job(job_id, |entry| {
            if entry.is_finished() {
                return;
            }
            if phase == JobPhase::Training && entry.job.phase() == JobPhase::Loading {
                entry.job.set_phase(JobPhase::Training);
                entry.job.message = "training".into();
                push_event(
                    entry,
                    job_id,
                    job_event::Event::Phase(JobPhase::Training as i32),
                );
            }
            if let Some(slot) = entry.job.workers.get_mut(progress.rank as usize) {
                *slot = progress.clone();
            }
            push_event(entry, job_id, job_event::Event::Progress(progress));
        })
    }

    /// Stores one rank's evaluation; when every rank has reported the epoch, sums and publishes its metrics.
    pub fn record_epoch(&self, report: EpochReport) -> CoordinatorResult<()> {
        let job_id = report.job_id.clone();
        let snapshot = self.update_job(&job_id, |entry| {
            let world_size = entry.ranks.len();
            let rank = report.rank as usize;
            if entry.is_finished() || rank >= world_size {
                return None;
            }
            let epoch = report.epoch;
            let reports = entry
                .epoch_reports
                .entry(epoch)
                .or_insert_with(|| vec![None; world_size]);
            reports[rank] = Some(report);
            if reports.iter().any(Option::is_none) {
                return None;
            }
            let reports = entry.epoch_reports.remove(&epoch)?;
            let num_classes = entry.job.class_names.len();
            let mut confusion = ConfusionMatrix::zeros(num_classes);
            let (mut loss_sum, mut count) = (0.0, 0u64);
            for rank_report in reports.iter().flatten() {
                if confusion.add(&rank_report.confusion).is_none() {
                    warn!(
                        job_id,
                        rank = rank_report.rank,
                        "epoch report with a confusion matrix of the wrong shape ignored"
                    );
                }
                loss_sum += rank_report.test_loss_sum;
                count += rank_report.test_count;
            }
            let test_loss = if count > 0 {
                loss_sum / count as f64
            } else {
                0.0
            };
            let metrics = confusion.metrics(epoch, &entry.job.class_names, test_loss);
            info!(
                job_id,
                epoch,
                accuracy = metrics.accuracy,
                macro_f1 = metrics.macro_f1,
                "epoch evaluated"
            );
            entry.job.epochs.push(metrics.clone());
            push_event(entry, &job_id, job_event::Event::EpochMetrics(metrics));
            Some(entry.job.clone())
        })?;
        if let Some(job) = snapshot {
            self.store.save(&job)?;
        }
        Ok(())
    }

    /// A rank finished (or failed). Fails the job at the first failure; returns `Some(summary)` when every rank
    /// succeeded, for the caller to complete the model card and then call [`Self::finish_job`].
    pub fn record_done(&self, report: DoneReport) -> CoordinatorResult<Option<String>> {
        let job_id = report.job_id.clone();
        enum Outcome {
            Wait,
            Succeeded(String),
            Failed(String),
        }
        let outcome = self.update_job(&job_id, |entry| {
            let rank = report.rank as usize;
            if entry.is_finished() || rank >= entry.done_reports.len() {
                return Outcome::Wait;
            }
            entry.job.skipped_objects += report.skipped_objects;
            if !report.model_url.is_empty() {
                entry.job.model_url = report.model_url.clone();
            }
            let ok = report.ok;
            let error = report.error.clone();
            entry.done_reports[rank] = Some(report);
            if !ok {
                let worker_id = entry.ranks.get(rank).cloned().unwrap_or_default();
                return Outcome::Failed(format!(
                    "rank {rank} (worker {worker_id}) failed: {error}"
                ));
            }
            if entry
                .done_reports
                .iter()
                .all(|done| done.as_ref().is_some_and(|d| d.ok))
            {
                let summary = match entry.job.epochs.last() {
                    Some(last) => format!(
                        "trained {} epochs: accuracy {:.3}, macro-F1 {:.3}",
                        entry.job.epochs.len(),
                        last.accuracy,
                        last.macro_f1
                    ),
                    None => "finished".to_string(),
                };
                return Outcome::Succeeded(summary);
            }
            Outcome::Wait
        })?;
        match outcome {
            Outcome::Wait => Ok(None),
            Outcome::Succeeded(summary) => Ok(Some(summary)),
            Outcome::Failed(message) => {
                let message = self.name_peers(&job_id, &message);
                self.finish_job(&job_id, JobPhase::Failed, message)
                    .or_else(ignore_finished)?;
                Ok(None)
            }
        }
    }

    /// Annotates every ring peer address in `message` with its worker and rank, so a "connection to
    /// 127.0.0.1:4001 lost" names the worker that died.
    fn name_peers(&self, job_id: &str, message: &str) -> String {
        let inner = self.lock();
        let Some(entry) = inner.jobs.get(job_id) else {
            return message.to_string();
        };
        let mut annotated = message.to_string();
        for (rank, worker_id) in entry.ranks.iter().enumerate() {
            if let Some(worker) = inner.workers.get(worker_id)
                && !worker.peer_address.is_empty()
                && annotated.contains(&worker.peer_address)
            {
                annotated = annotated.replace(
                    &worker.peer_address,
                    &format!("{} = rank {rank}, worker {worker_id}", worker.peer_address),
                );
            }
        }
        annotated
    }

    /// Fails running jobs whose workers went silent and forgets silent idle workers. Returns failed job ids.
    pub fn reap_silent_workers(&self) -> Vec<String> {
        let timeout = self.timeouts.worker_timeout;
        let mut failures = Vec::new();
        {
            let mut inner = self.lock();
            let Inner { workers, jobs, .. } = &mut *inner;
            let silent: Vec<String> = workers
                .iter()
                .filter(|(_, worker)| worker.last_seen.elapsed() > timeout)
                .map(|(worker_id, _)| worker_id.clone())
                .collect();
            for worker_id in silent {
                let worker = workers.remove(&worker_id).expect("listed above");
                let silence = worker.last_seen.elapsed();
                warn!(worker_id, silent_for = ?silence, "worker stopped heart-beating; removed");
                if let Some(job_id) = worker.current_job
                    && let Some(entry) = jobs.get(&job_id)
                    && !entry.is_finished()
                {
                    let rank = entry
                        .ranks
                        .iter()
                        .position(|id| *id == worker_id)
                        .unwrap_or(usize::MAX);
                    failures.push((
                                job_id,
                                format!(
                                    "worker {worker_id} ({}, rank {rank}, peer {}) stopped heart-beating: silent for {:.1}s (timeout {:.1}s)",
                                    worker.name,
                                    worker.peer_address,
                                    silence.as_secs_f64(),
                                    timeout.as_secs_f64()
                                ),
                            ));
                }
            }
        }
        let mut failed_jobs = Vec::new();
        for (job_id, message) in failures {
            if self.finish_job(&job_id, JobPhase::Failed, message).is_ok() {
                failed_jobs.push(job_id);
            }
        }
        failed_jobs
    }

    pub fn job_phase(&self, job_id: &str) -> Option<JobPhase> {
        self.lock().jobs.get(job_id).map(|entry| entry.job.phase())
    }
}

pub fn ignore_finished(error: CoordinatorError) -> CoordinatorResult<()> {
    match error {
        CoordinatorError::JobFinished { .. } => Ok(()),
        other => Err(other),
    }
}

fn push_event(entry: &mut JobEntry, job_id: &str, event: job_event::Event) {
    let event = JobEvent {
        job_id: job_id.to_string(),
        unix_ms: unix_ms_now(),
        event: Some(event),
    };
    let is_progress = matches!(event.event, Some(job_event::Event::Progress(_)));
    if !is_progress || entry.events.len() < MAX_REPLAYED_EVENTS {
        entry.events.push(event.clone());
    }
    // Nobody listening is fine.
    let _ = entry.sender.send(event);
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.chars().take(40).collect()
}

/// A fresh NCCL unique id for a job whose ranks all have GPUs (empty: the ranks use the TCP ring).
#[cfg(feature = "nccl")]
fn nccl_unique_id(job_id: &str) -> Vec<u8> {
    match plankton_collective::nccl::new_unique_id() {
        Ok(unique_id) => unique_id,
        Err(error) => {
            warn!(job_id, %error, "no NCCL unique id (libnccl missing?); ranks fall back to the TCP ring");
            Vec::new()
        }
    }
}

#[cfg(not(feature = "nccl"))]
fn nccl_unique_id(_job_id: &str) -> Vec<u8> {
    Vec::new()
}
