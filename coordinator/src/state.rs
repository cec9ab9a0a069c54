//! The coordinator's live state: the worker pool and the jobs behind one lock, persisted to the store, and
//! the calls RPC handlers make. The job state machine itself lives in `lifecycle.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast};
use tracing::{info, warn};

use plankton_proto::v1::{
    Checkpoint, DoneReport, EpochReport, GenerationEndReport, Job, JobEvent, JobPhase, JobSpec,
    LossPoint, RegisterRequest, ShardAssignment, WorkerInfo, WorkerProgress, job_event,
};

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::lifecycle::{
    self, DoneOutcome, JobEntry, PendingRecovery, accept_done_report, accept_epoch_report,
    finish_entry, public_job, push_event, record_generation_end, restore_running_job,
};
use crate::planner::JobPlan;
use crate::registry::ModelRegistry;
use crate::store::StateStore;
use crate::workers::WorkerPool;

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Timeouts that bound every wait of the coordinator.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A worker not heard from for this long is lost: its generation ends and it leaves the pool.
    pub worker_timeout: Duration,
    /// A job waits at most this long for `world_size` free workers.
    pub registration_timeout: Duration,
    /// Interval workers are asked to heartbeat at. Once a generation is known to be broken, a member silent
    /// for three intervals is taken for lost without waiting for `worker_timeout`.
    pub heartbeat_interval: Duration,
    /// After a fault, how long the survivors wait for a replacement worker before shrinking.
    pub replacement_wait: Duration,
}

impl Timeouts {
    pub(crate) fn suspect_after(&self) -> Duration {
        (self.heartbeat_interval * 3).min(self.worker_timeout)
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
    pool: WorkerPool,
    jobs: BTreeMap<String, JobEntry>,
}

/// What a job's driver must do after a tick.
#[derive(Debug, PartialEq)]
pub enum Tick {
    /// Nothing to do until the next tick.
    Wait,
    /// The job ended: the driver stops.
    Finished,
    /// The job's plan is needed (after a restart): plan it and call [`ClusterState::set_plan`].
    NeedsPlan(JobSpec),
    /// No member holds the training state: look up the latest checkpoint under this output URL and call
    /// [`ClusterState::set_checkpoint_lookup`].
    NeedsCheckpoint(String),
}

/// Shared, cloneable handle on the coordinator's state.
#[derive(Clone)]
pub struct ClusterState {
    inner: Arc<Mutex<Inner>>,
    store: Arc<StateStore>,
    pub registry: Arc<ModelRegistry>,
    pub timeouts: Timeouts,
    /// When this coordinator started (members of running jobs get `worker_timeout` from here to re-register).
    started: Instant,
    /// Woken when something a driver waits on changes.
    pub changed: Arc<Notify>,
    /// Encrypt every job's ring traffic.
    ring_tls: bool,
    /// Each job's TensorBoard file of epoch evaluations.
    eval_logs: crate::tensorboard_log::EvalLogs,
}

impl ClusterState {
    /// Loads persisted jobs. Jobs that were running keep running: their generation is rebuilt from the store
    /// and their members re-register (the ring trains on while the coordinator is away).
    pub fn new(store: StateStore, timeouts: Timeouts, ring_tls: bool) -> CoordinatorResult<Self> {
        let mut inner = Inner::default();
        let mut jobs = Vec::new();
        for mut job in store.load_all()? {
            if let Some(spec) = &mut job.spec {
                crate::planner::fill_fault_tolerance_defaults(spec);
            }
            jobs.push(job.clone());
            let job_id = job.id.clone();
            let mut entry = JobEntry::new(job, None);
            entry.ring_tls = ring_tls;
            if !entry.is_finished() {
                restore_running_job(&mut entry);
                info!(
                    job_id,
                    phase = entry.job.phase().as_str_name(),
                    generation = entry.job.generation,
                    "job restored; waiting for its workers"
                );
            }
            inner.jobs.insert(job_id, entry);
        }
        let store = Arc::new(store);
        let registry = Arc::new(ModelRegistry::load(store.clone())?);
        let repaired = registry.repair_missing(&jobs)?;
        for model in repaired {
            warn!(
                name = model.name,
                version = model.version,
                "registered the model of a job that succeeded just before a crash"
            );
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            store,
            registry,
            timeouts,
            started: Instant::now(),
            changed: Arc::new(Notify::new()),
            ring_tls,
            eval_logs: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save(&self, job: Option<Job>) -> CoordinatorResult<()> {
        if let Some(job) = job {
            self.store.save(&job)?;
        }
        Ok(())
    }

    /// Ids of jobs that have not ended (their drivers run).
    pub fn unfinished_jobs(&self) -> Vec<String> {
        self.lock()
            .jobs
            .iter()
            .filter(|(_, entry)| !entry.is_finished())
            .map(|(job_id, _)| job_id.clone())
            .collect()
    }

    // ------------------------------------------------------------------ workers

    /// Registers a worker (again, after a coordinator restart, with its previous id and running job).
    /// Registers a worker; returns its id and the session token its later calls must carry.
    pub fn register_worker(&self, request: &RegisterRequest) -> (String, String) {
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        let worker_id = pool.register(
            &request.worker_name,
            &request.peer_address,
            request.threads,
            request.has_gpu,
            &request.previous_worker_id,
        );
        let rejoined = worker_id == request.previous_worker_id
            && !request.running_job_id.is_empty()
            && jobs
                .get(&request.running_job_id)
                .is_some_and(|entry| !entry.is_finished() && entry.involves(&worker_id));
        if rejoined {
            let worker = pool.workers.get_mut(&worker_id).expect("just registered");
            worker.current_job = Some(request.running_job_id.clone());
            worker.generation = request.generation;
            worker.rank = Some(request.rank);
            // The place is the one the job's restored ring records, not what the request claims.
            let ring_place = jobs[&request.running_job_id]
                .ring
                .as_ref()
                .and_then(|ring| Some((ring.generation, ring.rank_of(&worker_id)? as u32)));
            if let Some((generation, rank)) = ring_place {
                worker.add_membership(&request.running_job_id, generation, rank);
            }
            info!(
                worker_id,
                job_id = request.running_job_id,
                generation = request.generation,
                "worker re-joined its running job"
            );
            if let Some(report) = &request.pending_generation_end {
                let entry = jobs
                    .get_mut(&request.running_job_id)
                    .expect("checked above");
                record_generation_end(entry, report.clone());
            }
        }
        let session_token = pool.workers[&worker_id].session_token().to_string();
        drop(inner);
        self.changed.notify_waiters();
        (worker_id, session_token)
    }

    /// The registered worker a WorkerControl call's session token belongs to.
    pub fn worker_of_session(&self, session_token: &str) -> Option<String> {
        self.lock().pool.worker_of_session(session_token)
    }

    /// Whether `worker_id` was given `rank` in `generation` of `job_id` (a report may name only such a place).
    pub fn worker_holds(&self, worker_id: &str, job_id: &str, generation: u32, rank: u32) -> bool {
        self.lock()
            .pool
            .workers
            .get(worker_id)
            .is_some_and(|worker| worker.holds(job_id, generation, rank))
    }

    /// Whether `worker_id` was given any place in `job_id`.
    pub fn worker_holds_job(&self, worker_id: &str, job_id: &str) -> bool {
        self.lock()
            .pool
            .workers
            .get(worker_id)
            .is_some_and(|worker| worker.holds_job(job_id))
    }

    /// Records a heartbeat; answers what the worker must do about its job.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        job_id: &str,
        generation: u32,
    ) -> CoordinatorResult<HeartbeatAnswer> {
        let grace = self.timeouts.heartbeat_interval * 2 + Duration::from_secs(1);
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        let worker = pool
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker(worker_id.into()))?;
        worker.observe_heartbeat(job_id, generation, grace);
        let mut answer = HeartbeatAnswer::default();
        if job_id.is_empty() {
            return Ok(answer);
        }
        let Some(entry) = jobs.get(job_id) else {
            answer.cancel_current_job = true;
            return Ok(answer);
        };
        let awaiting_assignment = worker
            .pending_assignment
            .as_ref()
            .is_some_and(|assignment| assignment.job_id == job_id);
        if entry.is_finished() || (!entry.involves(worker_id) && !awaiting_assignment) {
            answer.cancel_current_job = true;
            worker.current_job = None;
            return Ok(answer);
        }
        if let Some(ring) = &entry.ring
            && ring.generation == generation
        {
            answer.abort_generation = entry
                .recovery
                .as_ref()
                .is_some_and(|recovery| recovery.fault);
            answer.reform_at_step = ring.reform_requested;
        }
        Ok(answer)
    }

    /// Takes the worker's pending assignment, or returns the notifier to wait on.
    pub fn take_assignment(
        &self,
        worker_id: &str,
    ) -> CoordinatorResult<Result<ShardAssignment, Arc<Notify>>> {
        let mut inner = self.lock();
        let worker = inner
            .pool
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker(worker_id.into()))?;
        worker.touch();
        Ok(match worker.pending_assignment.take() {
            Some(assignment) => {
                worker.assignment_taken = Some(Instant::now());
                Ok(assignment)
            }
            None => Err(worker.assignment_ready.clone()),
        })
    }

    pub fn list_workers(&self) -> Vec<WorkerInfo> {
        let inner = self.lock();
        let mut workers: Vec<WorkerInfo> = inner
            .pool
            .workers
            .iter()
            .map(|(worker_id, worker)| WorkerInfo {
                worker_id: worker_id.clone(),
                peer_address: worker.peer_address.clone(),
                current_job: worker.current_job.clone().unwrap_or_default(),
                last_heartbeat_unix_ms: worker.last_seen_unix_ms,
                threads: worker.threads,
                generation: worker.generation,
                rank: worker.rank.unwrap_or_default(),
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        workers
    }

    /// Forgets workers silent for longer than the worker timeout (their jobs notice in their next tick).
    pub fn reap_silent_workers(&self) -> Vec<String> {
        let timeout = self.timeouts.worker_timeout;
        let mut inner = self.lock();
        let silent: Vec<String> = inner
            .pool
            .workers
            .iter()
            .filter(|(_, worker)| !worker.is_alive(timeout))
            .map(|(worker_id, _)| worker_id.clone())
            .collect();
        for worker_id in &silent {
            let worker = inner.pool.workers.remove(worker_id).expect("listed above");
            warn!(worker_id, silent_for = ?worker.last_seen.elapsed(), job = ?worker.current_job, "worker stopped heart-beating; removed");
        }
        silent
    }

    // ------------------------------------------------------------------ jobs

    pub fn create_job(&self, mut spec: JobSpec, plan: JobPlan) -> CoordinatorResult<Job> {
        let job_id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        if spec.output_url.is_empty() {
            spec.output_url = format!("{}/models/{job_id}", spec.dataset_url.trim_end_matches('/'));
        }
        let mut job = Job {
            id: job_id.clone(),
            class_names: plan.class_names.clone(),
            class_weights: plan.class_weights.clone(),
            train_objects: plan.train_objects,
            test_objects: plan.test_objects,
            steps_per_epoch: plan.steps_per_epoch,
            virtual_shard_count: plan.shards.len() as u32,
            skipped_meta_rows: plan.skipped_meta_rows,
            skipped_meta_row_examples: plan.skipped_meta_row_examples.clone(),
            feature_imputation: plan
                .features
                .as_ref()
                .map(|features| features.imputation.clone()),
            train_class_counts: class_counts(&plan, |shard| &shard.train),
            test_class_counts: class_counts(&plan, |shard| &shard.test),
            training_summary: if spec.model == crate::planner::GBDT_MODEL {
                crate::planner::GBDT_TRAINING_SUMMARY.to_string()
            } else {
                String::new()
            },
            spec: Some(spec),
            created_unix_ms: unix_ms_now(),
            message: "waiting for workers".into(),
            ..Default::default()
        };
        job.set_phase(JobPhase::Pending);
        self.store.save(&job)?;
        let mut entry = JobEntry::new(job.clone(), Some(Arc::new(plan)));
        entry.ring_tls = self.ring_tls;
        push_event(
            &mut entry,
            &job_id,
            job_event::Event::Phase(JobPhase::Pending as i32),
        );
        self.lock().jobs.insert(job_id, entry);
        Ok(job)
    }

    pub fn get_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        let inner = self.lock();
        inner
            .jobs
            .get(job_id)
            .map(|entry| public_job(&entry.job))
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))
    }

    pub fn list_jobs(&self) -> Vec<Job> {
        let inner = self.lock();
        let mut jobs: Vec<Job> = inner
            .jobs
            .values()
            .map(|entry| public_job(&entry.job))
            .collect();
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
        Ok((entry.events.clone(), receiver, public_job(&entry.job)))
    }

    pub fn cancel_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        self.finish_job(
            job_id,
            JobPhase::Cancelled,
            "cancelled by the operator".into(),
        )?;
        self.get_job(job_id)
    }

    /// Restarts a failed or cancelled job from its latest complete checkpoint (looked up by its driver).
    pub fn resume_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        let snapshot = self.with_job(job_id, |entry, _| {
            let phase = entry.job.phase();
            if !matches!(phase, JobPhase::Failed | JobPhase::Cancelled) {
                return Err(CoordinatorError::InvalidSpec(format!(
                    "job {job_id} is {}: only a failed or cancelled job can be resumed",
                    phase.as_str_name()
                )));
            }
            entry.ring = None;
            entry.done_reports.clear();
            entry.waiting_since = Instant::now();
            // Watchers of the resumed job must not stop at the earlier run's end.
            entry
                .events
                .retain(|event| !matches!(event.event, Some(job_event::Event::Finished(_))));
            entry.recovery = Some(PendingRecovery {
                detected: Instant::now(),
                detected_unix_ms: unix_ms_now(),
                reasons: vec!["resumed by the operator".into()],
                fault: false,
                checkpoint_lookup: None,
                resume: true,
            });
            entry.job.finished_unix_ms = 0;
            entry.set_phase(
                job_id,
                JobPhase::Recovering,
                "resuming from the latest checkpoint".into(),
            );
            Ok(entry.job.clone())
        })?;
        self.store.save(&snapshot)?;
        Ok(public_job(&snapshot))
    }

    /// Moves a job to a terminal phase (once), frees its pending assignments, persists it and ends its events.
    pub fn finish_job(
        &self,
        job_id: &str,
        phase: JobPhase,
        message: String,
    ) -> CoordinatorResult<()> {
        let finished_job = self.with_job(job_id, |entry, pool| {
            if entry.is_finished() {
                return Err(CoordinatorError::JobFinished {
                    job_id: job_id.into(),
                    phase: entry.job.phase().as_str_name().to_string(),
                });
            }
            Ok(finish_entry(entry, pool, job_id, phase, message))
        })?;
        self.store.save(&finished_job)?;
        if phase == JobPhase::Succeeded && !finished_job.model_url.is_empty() {
            self.registry.register_job_model(&finished_job)?;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Runs `change` on a job's entry and the worker pool under the state lock.
    fn with_job<T>(
        &self,
        job_id: &str,
        change: impl FnOnce(&mut JobEntry, &mut WorkerPool) -> CoordinatorResult<T>,
    ) -> CoordinatorResult<T> {
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        let entry = jobs
            .get_mut(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        change(entry, pool)
    }

    pub fn job_phase(&self, job_id: &str) -> Option<JobPhase> {
        self.lock().jobs.get(job_id).map(|entry| entry.job.phase())
    }

    /// The plan the driver computed for a job restored without one.
    pub fn set_plan(&self, job_id: &str, plan: JobPlan) {
        if let Some(entry) = self.lock().jobs.get_mut(job_id) {
            entry.plan = Some(Arc::new(plan));
        }
    }

    /// The result of the driver's checkpoint lookup for a job no member holds state of.
    pub fn set_checkpoint_lookup(&self, job_id: &str, checkpoint: Option<Checkpoint>) {
        if let Some(entry) = self.lock().jobs.get_mut(job_id)
            && let Some(recovery) = &mut entry.recovery
        {
            recovery.checkpoint_lookup = Some(checkpoint);
        }
    }

    /// Advances a job's state machine by one step (see [`lifecycle::tick`]).
    pub fn tick_job(&self, job_id: &str) -> CoordinatorResult<Tick> {
        let restart_grace_over = self.started.elapsed() > self.timeouts.worker_timeout;
        let (tick, snapshot) = self.with_job(job_id, |entry, pool| {
            if entry.is_finished() {
                return Ok((Tick::Finished, None));
            }
            Ok(lifecycle::tick(
                entry,
                pool,
                job_id,
                &self.timeouts,
                restart_grace_over,
            ))
        })?;
        self.save(snapshot)?;
        if matches!(tick, Tick::Finished) {
            // However the job ended (succeeded, failed, cancelled), its event file has no more epochs coming.
            self.eval_logs.forget(job_id);
        }
        Ok(tick)
    }

    // ------------------------------------------------------------------ reports

    pub fn record_progress(
        &self,
        job_id: &str,
        progress: WorkerProgress,
        phase: JobPhase,
    ) -> CoordinatorResult<()> {
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        if let Some(worker) = pool.workers.get_mut(&progress.worker_id) {
            worker.touch();
        }
        let entry = jobs
            .get_mut(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        let Some(ring) = &entry.ring else {
            return Ok(());
        };
        if entry.is_finished()
            || progress.generation != ring.generation
            || ring.rank_of(&progress.worker_id) != Some(progress.rank as usize)
        {
            return Ok(());
        }
        let generation = ring.generation;
        let training = phase == JobPhase::Training;
        if training {
            if progress.rank == 0 {
                record_loss_point(
                    &mut entry.job.loss_curve,
                    LossPoint {
                        global_step: progress.global_step,
                        loss: progress.loss,
                        images_per_second: progress.images_per_second,
                        unix_ms: unix_ms_now(),
                    },
                );
            }
            entry.job.global_step = entry.job.global_step.max(progress.global_step);
            entry.job.skipped_steps = entry.job.skipped_steps.max(progress.skipped_steps);
            if entry.recovery.is_none()
                && matches!(entry.job.phase(), JobPhase::Loading | JobPhase::Recovering)
            {
                entry.set_phase(job_id, JobPhase::Training, "training".into());
            }
            if let Some(last) = entry.job.recoveries.last_mut()
                && last.generation == generation
                && last.resumed_unix_ms == 0
                && progress.global_step > last.resumed_from_step
            {
                last.resumed_unix_ms = unix_ms_now();
                info!(
                    job_id,
                    generation,
                    recovery_ms = last.resumed_unix_ms - last.detected_unix_ms,
                    "training resumed after re-forming"
                );
                let record = last.clone();
                push_event(entry, job_id, job_event::Event::Recovery(record));
            }
        }
        if let Some(slot) = entry.job.workers.get_mut(progress.rank as usize) {
            let virtual_shards = std::mem::take(&mut slot.virtual_shards);
            *slot = WorkerProgress {
                virtual_shards,
                ..progress.clone()
            };
        }
        push_event(entry, job_id, job_event::Event::Progress(progress));
        Ok(())
    }

    /// A member left its generation.
    pub fn record_generation_end(&self, report: GenerationEndReport) -> CoordinatorResult<()> {
        self.with_job(&report.job_id.clone(), |entry, _| {
            record_generation_end(entry, report);
            Ok(())
        })?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stores one virtual shard's evaluation; when every shard has reported the epoch, publishes its metrics.
    pub fn record_epoch(&self, report: EpochReport) -> CoordinatorResult<()> {
        let job_id = report.job_id.clone();
        let (epoch, train_loss) = (report.epoch, report.train_loss);
        let (snapshot, published) = self.with_job(&job_id, |entry, _| {
            let was_published = entry
                .job
                .epochs
                .iter()
                .any(|metrics| metrics.epoch == epoch);
            let snapshot = accept_epoch_report(entry, &job_id, report);
            let published = entry
                .job
                .epochs
                .iter()
                .find(|metrics| metrics.epoch == epoch && !was_published)
                .cloned();
            Ok((snapshot, published))
        })?;
        if let (Some(metrics), Some(job)) = (&published, &snapshot) {
            // Every report of an epoch carries the same (global) mean step loss.
            self.eval_logs.record_epoch(job, metrics, train_loss);
        }
        self.save(snapshot)
    }

    /// A rank finished its last generation (or failed). Returns `Some(summary)` when every rank succeeded with
    /// identical weights, for the caller to complete the model card and then call [`Self::finish_job`].
    pub fn record_done(&self, report: DoneReport) -> CoordinatorResult<Option<String>> {
        let job_id = report.job_id.clone();
        let outcome = self.with_job(&job_id, |entry, _| Ok(accept_done_report(entry, report)))?;
        match outcome {
            DoneOutcome::Wait => Ok(None),
            DoneOutcome::Succeeded(summary) => Ok(Some(summary)),
            DoneOutcome::Failed(message) => {
                self.finish_job(&job_id, JobPhase::Failed, message)
                    .or_else(ignore_finished)?;
                Ok(None)
            }
        }
    }

    /// Rank 0 wrote a complete checkpoint.
    pub fn record_checkpoint(
        &self,
        job_id: &str,
        generation: u32,
        checkpoint: Checkpoint,
    ) -> CoordinatorResult<()> {
        let snapshot = self.with_job(job_id, |entry, _| {
            if entry.is_finished()
                || entry
                    .ring
                    .as_ref()
                    .is_none_or(|ring| ring.generation != generation)
            {
                return Ok(None);
            }
            let keep = entry.spec().keep_checkpoints.max(1) as usize;
            let checkpoints = &mut entry.job.checkpoints;
            checkpoints.retain(|existing| existing.url != checkpoint.url);
            checkpoints.push(checkpoint.clone());
            checkpoints.sort_by_key(|existing| existing.global_step);
            let excess = checkpoints.len().saturating_sub(keep);
            checkpoints.drain(..excess);
            push_event(entry, job_id, job_event::Event::Checkpoint(checkpoint));
            Ok(Some(entry.job.clone()))
        })?;
        self.save(snapshot)
    }
}

/// Objects per class over every shard of `plan` (`part` picks the train or the test objects).
fn class_counts(
    plan: &JobPlan,
    part: impl Fn(&crate::planner::RankShard) -> &Vec<plankton_proto::v1::ShardObject>,
) -> Vec<u64> {
    let mut counts = vec![0u64; plan.class_names.len()];
    for object in plan.shards.iter().flat_map(|shard| part(shard).iter()) {
        if let Some(count) = counts.get_mut(object.label as usize) {
            *count += 1;
        }
    }
    counts
}

/// Most points a job's loss curve keeps: past it, every other point is dropped and later points come at
/// least as far apart as the curve's first two.
pub const LOSS_CURVE_POINTS: usize = 2000;

/// Appends a step's loss to `curve`. A step at or before the last point (a recovery resumed from an earlier
/// step) first drops the points it replaces, so the curve is the trajectory the model took.
pub fn record_loss_point(curve: &mut Vec<LossPoint>, point: LossPoint) {
    if !point.loss.is_finite() {
        return;
    }
    let kept = curve.partition_point(|existing| existing.global_step < point.global_step);
    curve.truncate(kept);
    let spacing = match curve.as_slice() {
        [first, second, ..] => second.global_step - first.global_step,
        _ => 1,
    };
    if curve
        .last()
        .is_some_and(|last| point.global_step < last.global_step + spacing)
    {
        return;
    }
    curve.push(point);
    if curve.len() >= LOSS_CURVE_POINTS {
        let last = curve.pop().expect("not empty");
        let mut index = 0;
        curve.retain(|_| {
            index += 1;
            index % 2 == 1
        });
        curve.push(last);
    }
}

/// What a heartbeat answer tells the worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub cancel_current_job: bool,
    pub abort_generation: bool,
    pub reform_at_step: bool,
}

pub fn ignore_finished(error: CoordinatorError) -> CoordinatorResult<()> {
    match error {
        CoordinatorError::JobFinished { .. } => Ok(()),
        other => Err(other),
    }
}
