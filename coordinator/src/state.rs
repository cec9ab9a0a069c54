//! The coordinator's live state and the job state machine.
//!
//! A job runs as a sequence of ring *generations*. Generation 0 is formed from `world_size` idle workers. When
//! a member is lost (silent, or its ring broke) the job turns `Recovering`: live members are told to abort
//! the generation, each reports the step it reached, the coordinator waits (bounded) for a replacement, and
//! forms the next generation from the survivors (plus joiners), starting from the survivor with the newest
//! state. With no survivor the job restarts from its latest checkpoint. Every transition happens in
//! [`ClusterState::tick_job`], driven by one task per job (`driver.rs`); RPC handlers only record reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast};
use tracing::{info, warn};

use plankton_proto::v1::{
    Checkpoint, DoneReport, EpochReport, GenerationEndReport, Job, JobEvent, JobPhase, JobSpec,
    Recovery, RegisterRequest, ShardAssignment, StateSource, VirtualShard, WorkerInfo,
    WorkerProgress, job_event, state_source,
};

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::generation::{SurvivorState, layout_generation};
use crate::metrics::ConfusionMatrix;
use crate::planner::JobPlan;
use crate::registry::ModelRegistry;
use crate::store::StateStore;
use crate::workers::WorkerPool;

/// Events kept per job for late watchers; progress events beyond this are dropped from the replay log.
const MAX_REPLAYED_EVENTS: usize = 4096;

pub const DEFAULT_MAX_RECOVERIES: u32 = 10;
pub const DEFAULT_KEEP_CHECKPOINTS: u32 = 2;

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
    fn suspect_after(&self) -> Duration {
        (self.heartbeat_interval * 3).min(self.worker_timeout)
    }
}

/// The ring generation a job is training in.
struct Ring {
    generation: u32,
    /// Worker id of each rank.
    members: Vec<String>,
    shards_of_rank: Vec<Vec<u32>>,
    /// Members that left this generation, with what they reported.
    ended: BTreeMap<String, GenerationEndReport>,
    /// Members taken for lost (silent), with why.
    lost: BTreeMap<String, String>,
    formed: Instant,
    /// Ask members to end the generation at the next step boundary (a worker is waiting to join).
    reform_requested: bool,
}

impl Ring {
    fn rank_of(&self, worker_id: &str) -> Option<usize> {
        self.members.iter().position(|member| member == worker_id)
    }
}

/// A re-formation in progress.
struct PendingRecovery {
    detected: Instant,
    detected_unix_ms: i64,
    reasons: Vec<String>,
    /// Whether a fault (not only a clean, requested re-formation) ended the generation.
    fault: bool,
    /// The latest complete checkpoint, once the driver looked it up (`Some(None)`: there is none).
    checkpoint_lookup: Option<Option<Checkpoint>>,
    /// An operator's resume: without a checkpoint the job fails instead of starting over.
    resume: bool,
}

struct JobEntry {
    job: Job,
    events: Vec<JobEvent>,
    sender: broadcast::Sender<JobEvent>,
    /// The split and virtual shards; `None` after a restart until the driver plans again.
    plan: Option<Arc<JobPlan>>,
    ring: Option<Ring>,
    recovery: Option<PendingRecovery>,
    /// Per epoch, each virtual shard's evaluation.
    epoch_reports: BTreeMap<u32, Vec<Option<EpochReport>>>,
    /// Done reports of the current generation by rank.
    done_reports: BTreeMap<u32, DoneReport>,
    /// When the job started waiting for workers (submit, resume, or the coordinator's start).
    waiting_since: Instant,
}

impl JobEntry {
    fn new(job: Job, plan: Option<Arc<JobPlan>>) -> Self {
        let (sender, _) = broadcast::channel(1024);
        JobEntry {
            job,
            events: Vec::new(),
            sender,
            plan,
            ring: None,
            recovery: None,
            epoch_reports: BTreeMap::new(),
            done_reports: BTreeMap::new(),
            waiting_since: Instant::now(),
        }
    }

    fn is_finished(&self) -> bool {
        is_terminal(self.job.phase())
    }

    fn spec(&self) -> JobSpec {
        self.job.spec.clone().unwrap_or_default()
    }

    fn shard_count(&self) -> u32 {
        self.job.virtual_shard_count.max(1)
    }

    /// Whether `worker_id` holds this job: a member of its generation, or handed an assignment of it.
    fn involves(&self, worker_id: &str) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|ring| ring.rank_of(worker_id).is_some() && !ring.lost.contains_key(worker_id))
    }

    fn set_phase(&mut self, job_id: &str, phase: JobPhase, message: String) {
        if self.job.phase() != phase {
            self.job.set_phase(phase);
            push_event(self, job_id, job_event::Event::Phase(phase as i32));
        }
        self.job.message = message;
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
}

impl ClusterState {
    /// Loads persisted jobs. Jobs that were running keep running: their generation is rebuilt from the store
    /// and their members re-register (the ring trains on while the coordinator is away).
    pub fn new(store: StateStore, timeouts: Timeouts) -> CoordinatorResult<Self> {
        let mut inner = Inner::default();
        let mut jobs = Vec::new();
        for job in store.load_all()? {
            jobs.push(job.clone());
            let job_id = job.id.clone();
            let mut entry = JobEntry::new(job, None);
            if !entry.is_finished() {
                restore_running_job(&mut entry);
                info!(job_id, phase = entry.job.phase().as_str_name(), generation = entry.job.generation, "job restored; waiting for its workers");
            }
            inner.jobs.insert(job_id, entry);
        }
        let store = Arc::new(store);
        let registry = Arc::new(ModelRegistry::load(store.clone())?);
        let repaired = registry.repair_missing(&jobs)?;
        for model in repaired {
            warn!(name = model.name, version = model.version, "registered the model of a job that succeeded just before a crash");
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            store,
            registry,
            timeouts,
            started: Instant::now(),
            changed: Arc::new(Notify::new()),
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
    pub fn register_worker(&self, request: &RegisterRequest) -> String {
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
            info!(worker_id, job_id = request.running_job_id, generation = request.generation, "worker re-joined its running job");
            if let Some(report) = &request.pending_generation_end {
                let entry = jobs.get_mut(&request.running_job_id).expect("checked above");
                record_generation_end(entry, report.clone());
            }
        }
        drop(inner);
        self.changed.notify_waiters();
        worker_id
    }

    /// Records a heartbeat; answers what the worker must do about its job.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        job_id: &str,
        generation: u32,
        global_step: u64,
    ) -> CoordinatorResult<HeartbeatAnswer> {
        let grace = self.timeouts.heartbeat_interval * 2 + Duration::from_secs(1);
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        let worker = pool
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker(worker_id.into()))?;
        worker.observe_heartbeat(job_id, generation, global_step, grace);
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
            answer.abort_generation = entry.recovery.as_ref().is_some_and(|recovery| recovery.fault);
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
            spec: Some(spec),
            created_unix_ms: unix_ms_now(),
            message: "waiting for workers".into(),
            ..Default::default()
        };
        job.set_phase(JobPhase::Pending);
        self.store.save(&job)?;
        let mut entry = JobEntry::new(job.clone(), Some(Arc::new(plan)));
        push_event(&mut entry, &job_id, job_event::Event::Phase(JobPhase::Pending as i32));
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
        let mut jobs: Vec<Job> = inner.jobs.values().map(|entry| public_job(&entry.job)).collect();
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
        self.finish_job(job_id, JobPhase::Cancelled, "cancelled by the operator".into())?;
        self.get_job(job_id)
    }

    /// Restarts a failed or cancelled job from its latest complete checkpoint (looked up by its driver).
    pub fn resume_job(&self, job_id: &str) -> CoordinatorResult<Job> {
        let snapshot = {
            let mut inner = self.lock();
            let entry = inner
                .jobs
                .get_mut(job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
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
            entry.set_phase(job_id, JobPhase::Recovering, "resuming from the latest checkpoint".into());
            entry.job.clone()
        };
        self.store.save(&snapshot)?;
        Ok(public_job(&snapshot))
    }

    /// Moves a job to a terminal phase (once), frees its pending assignments, persists it and ends its events.
    pub fn finish_job(&self, job_id: &str, phase: JobPhase, message: String) -> CoordinatorResult<()> {
        let finished_job = {
            let mut inner = self.lock();
            let Inner { pool, jobs } = &mut *inner;
            let entry = jobs
                .get_mut(job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
            if entry.is_finished() {
                return Err(CoordinatorError::JobFinished {
                    job_id: job_id.into(),
                    phase: entry.job.phase().as_str_name().to_string(),
                });
            }
            finish_entry(entry, pool, job_id, phase, message)
        };
        self.store.save(&finished_job)?;
        if phase == JobPhase::Succeeded && !finished_job.model_url.is_empty() {
            self.registry.register_job_model(&finished_job)?;
        }
        self.changed.notify_waiters();
        Ok(())
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

    /// Advances a job's state machine by one step: detects lost members, forms generations, fails the job
    /// when it cannot continue.
    pub fn tick_job(&self, job_id: &str) -> CoordinatorResult<Tick> {
        let mut inner = self.lock();
        let Inner { pool, jobs } = &mut *inner;
        let entry = jobs
            .get_mut(job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
        if entry.is_finished() {
            return Ok(Tick::Finished);
        }
        let timeouts = &self.timeouts;
        let spec = entry.spec();
        let world_size = spec.world_size as usize;

        // 1. Generation 0: wait for world_size idle workers.
        if entry.ring.is_none() && entry.recovery.is_none() {
            let idle = pool.idle(timeouts.worker_timeout);
            if idle.len() >= world_size {
                if entry.plan.is_none() {
                    return Ok(Tick::NeedsPlan(spec));
                }
                let joiners: Vec<String> = idle.into_iter().take(world_size).collect();
                let layout = layout_generation(entry.shard_count(), &[], &joiners, &BTreeMap::new());
                let source = StateSource {
                    source: Some(state_source::Source::Fresh(true)),
                    init_weights_url: spec.init_from.clone(),
                };
                let snapshot = form_generation(entry, pool, job_id, 0, layout, source, None);
                drop(inner);
                self.save(Some(snapshot))?;
                return Ok(Tick::Wait);
            }
            if entry.waiting_since.elapsed() > timeouts.registration_timeout {
                let registered = pool.workers.len();
                let message = format!(
                    "timed out after {:.0}s waiting for {world_size} free workers ({} free, {registered} registered)",
                    timeouts.registration_timeout.as_secs_f64(),
                    idle.len()
                );
                let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
                drop(inner);
                self.save(Some(snapshot))?;
                return Ok(Tick::Finished);
            }
            return Ok(Tick::Wait);
        }

        // 2. A running generation: look for lost members, broken rings and workers waiting to join.
        let restart_grace_over = self.started.elapsed() > timeouts.worker_timeout;
        let fault_known = entry.recovery.as_ref().is_some_and(|recovery| recovery.fault)
            || entry.ring.as_ref().is_some_and(|ring| {
                ring.ended.values().any(|report| !report.clean) || !ring.lost.is_empty()
            });
        let mut newly_lost = Vec::new();
        if let Some(ring) = &mut entry.ring {
            for member in &ring.members {
                if ring.ended.contains_key(member) || ring.lost.contains_key(member) {
                    continue;
                }
                let reason = match pool.workers.get(member) {
                    None if restart_grace_over || ring.formed.elapsed() > timeouts.worker_timeout => {
                        Some(format!("worker {member} is gone (not registered)"))
                    }
                    None => None,
                    Some(worker) => {
                        let silence = worker.last_seen.elapsed();
                        if silence > timeouts.worker_timeout
                            || (fault_known && silence > timeouts.suspect_after())
                        {
                            Some(format!(
                                "worker {member} ({}, peer {}) stopped heart-beating: silent for {:.1}s",
                                worker.name,
                                worker.peer_address,
                                silence.as_secs_f64()
                            ))
                        } else if worker.current_job.as_deref() != Some(job_id) {
                            Some(format!("worker {member} left the job"))
                        } else {
                            None
                        }
                    }
                };
                if let Some(reason) = reason {
                    newly_lost.push((member.clone(), reason));
                }
            }
            for (member, reason) in &newly_lost {
                warn!(job_id, worker_id = member, reason, "generation member lost");
                ring.lost.insert(member.clone(), reason.clone());
            }
        }
        let ring = entry.ring.as_ref();
        let ended_any = ring.is_some_and(|ring| !ring.ended.is_empty() || !ring.lost.is_empty());
        if entry.recovery.is_none() {
            if ended_any {
                let ring = ring.expect("ended_any implies a ring");
                let fault = !ring.lost.is_empty() || ring.ended.values().any(|report| !report.clean);
                let mut reasons: Vec<String> = ring.lost.values().cloned().collect();
                reasons.extend(ring.ended.iter().filter(|(_, report)| !report.clean).map(|(worker_id, report)| {
                    format!("worker {worker_id} (rank {}): {}", report.rank, report.reason)
                }));
                if reasons.is_empty() {
                    reasons.push("re-forming to add workers".into());
                }
                info!(job_id, generation = ring.generation, fault, reasons = ?reasons, "generation ended; re-forming");
                entry.recovery = Some(PendingRecovery {
                    detected: Instant::now(),
                    detected_unix_ms: unix_ms_now(),
                    reasons,
                    fault,
                    checkpoint_lookup: None,
                    resume: false,
                });
                let message = if fault { "recovering: a member was lost" } else { "re-forming to add workers" };
                entry.set_phase(job_id, JobPhase::Recovering, message.into());
                let snapshot = entry.job.clone();
                drop(inner);
                self.save(Some(snapshot))?;
                return Ok(Tick::Wait);
            }
            // Growth: a job short of its world size takes an idle worker at the next step boundary.
            if let Some(ring) = &mut entry.ring
                && ring.members.len() < world_size
                && !ring.reform_requested
                && entry.job.phase() == JobPhase::Training
                && !pool.idle(timeouts.worker_timeout).is_empty()
            {
                info!(job_id, generation = ring.generation, "a free worker can join; re-forming at the next step");
                ring.reform_requested = true;
            }
            return Ok(Tick::Wait);
        }

        // 3. Recovering: wait until every member reported its end or is lost, then for replacements.
        if let Some(ring) = &entry.ring {
            let unaccounted: Vec<&String> = ring
                .members
                .iter()
                .filter(|member| !ring.ended.contains_key(*member) && !ring.lost.contains_key(*member))
                .collect();
            if !unaccounted.is_empty() {
                let recovery = entry.recovery.as_ref().expect("recovering");
                if recovery.detected.elapsed() < timeouts.worker_timeout {
                    return Ok(Tick::Wait);
                }
                // Alive but never ending its generation (stuck): exclude it.
                let stuck: Vec<String> = unaccounted.into_iter().cloned().collect();
                let ring = entry.ring.as_mut().expect("checked");
                for member in stuck {
                    warn!(job_id, worker_id = member, "member did not leave its generation in time; excluded");
                    ring.lost.insert(member.clone(), format!("worker {member} did not leave generation {} within {:.0}s", ring.generation, timeouts.worker_timeout.as_secs_f64()));
                }
            }
        }
        let survivors: Vec<SurvivorState> = match &entry.ring {
            Some(ring) => ring
                .members
                .iter()
                .filter_map(|member| ring.ended.get(member).map(|report| (member, report)))
                .filter(|(member, report)| {
                    report.holds_state
                        && !ring.lost.contains_key(*member)
                        && pool.workers.get(*member).is_some_and(|worker| worker.is_alive(timeouts.worker_timeout))
                })
                .map(|(member, report)| SurvivorState {
                    worker_id: member.clone(),
                    completed_steps: report.completed_steps,
                    evaluated_epochs: report.evaluated_epochs,
                })
                .collect(),
            None => Vec::new(),
        };
        let recovery = entry.recovery.as_ref().expect("recovering");
        let fault = recovery.fault;
        let wanted_joiners = world_size.saturating_sub(survivors.len());
        let idle: Vec<String> = pool
            .idle(timeouts.worker_timeout)
            .into_iter()
            .filter(|worker_id| !survivors.iter().any(|survivor| &survivor.worker_id == worker_id))
            .collect();
        let joiners: Vec<String> = idle.into_iter().take(wanted_joiners).collect();
        let members = survivors.len() + joiners.len();
        let short = members < world_size;
        let patience = if survivors.is_empty() {
            timeouts.registration_timeout
        } else {
            timeouts.replacement_wait
        };
        if short && recovery.detected.elapsed() < patience {
            return Ok(Tick::Wait);
        }
        let min_workers = (spec.min_workers.max(1) as usize).min(world_size);
        if members < min_workers {
            let message = format!(
                "only {members} worker(s) available after losing members ({}); min_workers is {min_workers}",
                recovery.reasons.join("; ")
            );
            let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
            drop(inner);
            self.save(Some(snapshot))?;
            return Ok(Tick::Finished);
        }
        let max_recoveries = if spec.max_recoveries == 0 { DEFAULT_MAX_RECOVERIES } else { spec.max_recoveries };
        let fault_recoveries = entry.job.recoveries.iter().filter(|recovery| recovery.fault).count() as u32;
        if fault && fault_recoveries >= max_recoveries {
            let message = format!(
                "gave up after {fault_recoveries} recoveries (max_recoveries {max_recoveries}); last fault: {}",
                recovery.reasons.join("; ")
            );
            let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
            drop(inner);
            self.save(Some(snapshot))?;
            return Ok(Tick::Finished);
        }
        if entry.plan.is_none() {
            return Ok(Tick::NeedsPlan(spec));
        }
        let (source, resumed_from_step, source_name) = if survivors.is_empty() {
            match &recovery.checkpoint_lookup {
                None => return Ok(Tick::NeedsCheckpoint(spec.output_url.clone())),
                Some(Some(checkpoint)) => (
                    StateSource {
                        source: Some(state_source::Source::CheckpointUrl(checkpoint.url.clone())),
                        init_weights_url: String::new(),
                    },
                    checkpoint.global_step,
                    format!("checkpoint {}", checkpoint.url),
                ),
                Some(None) => {
                    if recovery.resume {
                        let message = format!(
                            "cannot resume: no complete checkpoint under {}/checkpoints",
                            spec.output_url.trim_end_matches('/')
                        );
                        let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
                        drop(inner);
                        self.save(Some(snapshot))?;
                        return Ok(Tick::Finished);
                    }
                    (
                        StateSource {
                            source: Some(state_source::Source::Fresh(true)),
                            init_weights_url: spec.init_from.clone(),
                        },
                        0,
                        "a fresh start (no member held the state and there is no checkpoint)".to_string(),
                    )
                }
            }
        } else {
            (StateSource::default(), 0, String::new())
        };
        let previous_shards: BTreeMap<String, Vec<u32>> = entry
            .ring
            .as_ref()
            .map(|ring| {
                ring.members
                    .iter()
                    .cloned()
                    .zip(ring.shards_of_rank.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let layout = layout_generation(entry.shard_count(), &survivors, &joiners, &previous_shards);
        let (source, resumed_from_step, source_name) = match layout.source_rank {
            Some(rank) => (
                StateSource {
                    source: Some(state_source::Source::PeerRank(rank as u32)),
                    init_weights_url: String::new(),
                },
                survivors[rank].completed_steps,
                format!("worker {} (rank {rank})", survivors[rank].worker_id),
            ),
            None => (source, resumed_from_step, source_name),
        };
        let ring = entry.ring.as_ref();
        let highest_completed = ring
            .map(|ring| ring.ended.values().map(|report| report.completed_steps).max().unwrap_or(0))
            .unwrap_or(0)
            .max(entry.job.global_step);
        let lost_workers: Vec<String> = ring.map(|ring| ring.lost.keys().cloned().collect()).unwrap_or_default();
        let steps_lost = highest_completed.saturating_sub(resumed_from_step) + u64::from(fault);
        let record = Recovery {
            // After a resume there is no ring, but the job's earlier generations are still numbered.
            generation: ring.map_or(
                if entry.job.workers.is_empty() { 0 } else { entry.job.generation + 1 },
                |ring| ring.generation + 1,
            ),
            reason: recovery.reasons.join("; "),
            lost_workers,
            joined_workers: joiners.clone(),
            detected_unix_ms: recovery.detected_unix_ms,
            formed_unix_ms: unix_ms_now(),
            resumed_unix_ms: 0,
            resumed_from_step,
            steps_lost,
            world_size: layout.members.len() as u32,
            state_source: source_name,
            fault,
        };
        let generation = record.generation;
        info!(job_id, generation, members = ?layout.members, resumed_from_step, steps_lost, source = record.state_source, "forming a new generation");
        let snapshot = form_generation(entry, pool, job_id, generation, layout, source, Some(record));
        drop(inner);
        self.save(Some(snapshot))?;
        Ok(Tick::Wait)
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
            worker.global_step = worker.global_step.max(progress.global_step);
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
            entry.job.global_step = entry.job.global_step.max(progress.global_step);
            if entry.recovery.is_none() && matches!(entry.job.phase(), JobPhase::Loading | JobPhase::Recovering) {
                entry.set_phase(job_id, JobPhase::Training, "training".into());
            }
            if let Some(last) = entry.job.recoveries.last_mut()
                && last.generation == generation
                && last.resumed_unix_ms == 0
                && progress.global_step > last.resumed_from_step
            {
                last.resumed_unix_ms = unix_ms_now();
                info!(job_id, generation, recovery_ms = last.resumed_unix_ms - last.detected_unix_ms, "training resumed after re-forming");
                let record = last.clone();
                push_event(entry, job_id, job_event::Event::Recovery(record));
            }
        }
        if let Some(slot) = entry.job.workers.get_mut(progress.rank as usize) {
            let virtual_shards = std::mem::take(&mut slot.virtual_shards);
            *slot = WorkerProgress { virtual_shards, ..progress.clone() };
        }
        push_event(entry, job_id, job_event::Event::Progress(progress));
        Ok(())
    }

    /// A member left its generation.
    pub fn record_generation_end(&self, report: GenerationEndReport) -> CoordinatorResult<()> {
        let mut inner = self.lock();
        let entry = inner
            .jobs
            .get_mut(&report.job_id)
            .ok_or_else(|| CoordinatorError::JobNotFound(report.job_id.clone()))?;
        record_generation_end(entry, report);
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stores one virtual shard's evaluation; when every shard has reported the epoch, publishes its metrics.
    pub fn record_epoch(&self, report: EpochReport) -> CoordinatorResult<()> {
        let job_id = report.job_id.clone();
        let snapshot = {
            let mut inner = self.lock();
            let entry = inner
                .jobs
                .get_mut(&job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.clone()))?;
            accept_epoch_report(entry, &job_id, report)
        };
        self.save(snapshot)
    }

    /// A rank finished its last generation (or failed). Returns `Some(summary)` when every rank succeeded with
    /// identical weights, for the caller to complete the model card and then call [`Self::finish_job`].
    pub fn record_done(&self, report: DoneReport) -> CoordinatorResult<Option<String>> {
        let job_id = report.job_id.clone();
        let failure = {
            let mut inner = self.lock();
            let entry = inner
                .jobs
                .get_mut(&job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.clone()))?;
            let Some(ring) = &entry.ring else {
                return Ok(None);
            };
            let rank = report.rank as usize;
            if entry.is_finished()
                || report.generation != ring.generation
                || ring.rank_of(&report.worker_id) != Some(rank)
            {
                return Ok(None);
            }
            let member_count = ring.members.len();
            entry.job.skipped_objects += report.skipped_objects;
            if !report.model_url.is_empty() {
                entry.job.model_url = report.model_url.clone();
            }
            if !report.ok {
                Some(format!("rank {rank} (worker {}) failed: {}", report.worker_id, report.error))
            } else {
                entry.done_reports.insert(report.rank, report);
                if entry.done_reports.len() < member_count {
                    return Ok(None);
                }
                let digests: BTreeSet<&str> = entry.done_reports.values().map(|done| done.weights_digest.as_str()).collect();
                if digests.len() > 1 {
                    let listed: Vec<String> = entry.done_reports.iter().map(|(rank, done)| format!("rank {rank}: {}", done.weights_digest)).collect();
                    Some(format!("ranks ended with different weights ({})", listed.join(", ")))
                } else {
                    entry.job.weights_digest = digests.into_iter().next().unwrap_or_default().to_string();
                    let summary = match entry.job.epochs.last() {
                        Some(last) => format!(
                            "trained {} epochs on {member_count} worker(s), generation {}: accuracy {:.3}, macro-F1 {:.3}",
                            entry.job.epochs.len(),
                            entry.job.generation,
                            last.accuracy,
                            last.macro_f1
                        ),
                        None => "finished".to_string(),
                    };
                    return Ok(Some(summary));
                }
            }
        };
        if let Some(message) = failure {
            self.finish_job(&job_id, JobPhase::Failed, message).or_else(ignore_finished)?;
        }
        Ok(None)
    }

    /// Rank 0 wrote a complete checkpoint.
    pub fn record_checkpoint(&self, job_id: &str, generation: u32, checkpoint: Checkpoint) -> CoordinatorResult<()> {
        let snapshot = {
            let mut inner = self.lock();
            let entry = inner
                .jobs
                .get_mut(job_id)
                .ok_or_else(|| CoordinatorError::JobNotFound(job_id.into()))?;
            if entry.is_finished() || entry.ring.as_ref().is_none_or(|ring| ring.generation != generation) {
                return Ok(());
            }
            let keep = entry.spec().keep_checkpoints;
            let keep = if keep == 0 { DEFAULT_KEEP_CHECKPOINTS } else { keep } as usize;
            entry.job.checkpoints.retain(|existing| existing.url != checkpoint.url);
            entry.job.checkpoints.push(checkpoint.clone());
            entry.job.checkpoints.sort_by_key(|existing| existing.global_step);
            let excess = entry.job.checkpoints.len().saturating_sub(keep);
            entry.job.checkpoints.drain(..excess);
            push_event(entry, job_id, job_event::Event::Checkpoint(checkpoint));
            entry.job.clone()
        };
        self.store.save(&snapshot)
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

/// The job as operators see it (internal bookkeeping stripped).
fn public_job(job: &Job) -> Job {
    Job {
        pending_epoch_reports: Vec::new(),
        ..job.clone()
    }
}

/// Rebuilds the generation of a job that was running when the coordinator stopped.
fn restore_running_job(entry: &mut JobEntry) {
    entry.waiting_since = Instant::now();
    for report in std::mem::take(&mut entry.job.pending_epoch_reports) {
        entry
            .epoch_reports
            .entry(report.epoch)
            .or_insert_with(|| vec![None; entry.job.virtual_shard_count.max(1) as usize])
            .get_mut(report.virtual_shard as usize)
            .map(|slot| *slot = Some(report.clone()));
    }
    entry.job.pending_epoch_reports = entry.epoch_reports.values().flatten().flatten().cloned().collect();
    let phase = entry.job.phase();
    if phase == JobPhase::Pending || entry.job.workers.is_empty() {
        return;
    }
    entry.ring = Some(Ring {
        generation: entry.job.generation,
        members: entry.job.workers.iter().map(|progress| progress.worker_id.clone()).collect(),
        shards_of_rank: entry.job.workers.iter().map(|progress| progress.virtual_shards.clone()).collect(),
        ended: BTreeMap::new(),
        lost: BTreeMap::new(),
        formed: Instant::now(),
        reform_requested: false,
    });
    if phase == JobPhase::Recovering {
        entry.recovery = Some(PendingRecovery {
            detected: Instant::now(),
            detected_unix_ms: unix_ms_now(),
            reasons: vec!["the coordinator restarted during a re-formation".into()],
            fault: true,
            checkpoint_lookup: None,
            resume: false,
        });
    }
}

fn record_generation_end(entry: &mut JobEntry, report: GenerationEndReport) {
    let Some(ring) = &mut entry.ring else {
        return;
    };
    if entry.job.phase() == JobPhase::Succeeded
        || report.generation != ring.generation
        || ring.rank_of(&report.worker_id).is_none()
    {
        return;
    }
    info!(job_id = report.job_id, worker_id = report.worker_id, generation = report.generation, completed_steps = report.completed_steps, clean = report.clean, holds_state = report.holds_state, reason = report.reason, "member left its generation");
    ring.ended.insert(report.worker_id.clone(), report);
}

fn accept_epoch_report(entry: &mut JobEntry, job_id: &str, report: EpochReport) -> Option<Job> {
    let shard_count = entry.shard_count() as usize;
    let shard = report.virtual_shard as usize;
    let epoch = report.epoch;
    if entry.is_finished() || shard >= shard_count || entry.job.epochs.iter().any(|published| published.epoch == epoch) {
        return None;
    }
    let reports = entry
        .epoch_reports
        .entry(epoch)
        .or_insert_with(|| vec![None; shard_count]);
    reports[shard] = Some(report);
    if reports.iter().any(Option::is_none) {
        entry.job.pending_epoch_reports = entry.epoch_reports.values().flatten().flatten().cloned().collect();
        return Some(entry.job.clone());
    }
    let reports = entry.epoch_reports.remove(&epoch)?;
    let num_classes = entry.job.class_names.len();
    let mut confusion = ConfusionMatrix::zeros(num_classes);
    let (mut loss_sum, mut count) = (0.0, 0u64);
    for shard_report in reports.iter().flatten() {
        if confusion.add(&shard_report.confusion).is_none() {
            warn!(job_id, virtual_shard = shard_report.virtual_shard, "epoch report with a confusion matrix of the wrong shape ignored");
        }
        loss_sum += shard_report.test_loss_sum;
        count += shard_report.test_count;
    }
    let test_loss = if count > 0 { loss_sum / count as f64 } else { 0.0 };
    let metrics = confusion.metrics(epoch, &entry.job.class_names, test_loss);
    info!(job_id, epoch, accuracy = metrics.accuracy, macro_f1 = metrics.macro_f1, "epoch evaluated");
    entry.job.epochs.push(metrics.clone());
    entry.job.epochs.sort_by_key(|published| published.epoch);
    entry.job.pending_epoch_reports = entry.epoch_reports.values().flatten().flatten().cloned().collect();
    push_event(entry, job_id, job_event::Event::EpochMetrics(metrics));
    Some(entry.job.clone())
}

/// Hands every member its assignment of a new generation and records it on the job.
fn form_generation(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    generation: u32,
    layout: crate::generation::GenerationLayout,
    source: StateSource,
    recovery: Option<Recovery>,
) -> Job {
    let plan = entry.plan.clone().expect("checked by the caller");
    let spec = entry.spec();
    let world_size = layout.members.len();
    let peers: Vec<String> = layout
        .members
        .iter()
        .map(|worker_id| pool.workers.get(worker_id).map(|worker| worker.peer_address.clone()).unwrap_or_default())
        .collect();
    let every_rank_has_a_gpu = layout
        .members
        .iter()
        .all(|worker_id| pool.workers.get(worker_id).is_some_and(|worker| worker.has_gpu));
    let nccl_unique_id = if every_rank_has_a_gpu { nccl_unique_id(job_id) } else { Vec::new() };
    for (rank, worker_id) in layout.members.iter().enumerate() {
        let virtual_shards = layout.shards_of_rank[rank]
            .iter()
            .map(|&index| VirtualShard {
                index,
                train: plan.shards[index as usize].train.clone(),
                test: plan.shards[index as usize].test.clone(),
            })
            .collect();
        let assignment = ShardAssignment {
            job_id: job_id.to_string(),
            spec: Some(spec.clone()),
            rank: rank as u32,
            world_size: world_size as u32,
            ring_peer_addresses: peers.clone(),
            class_names: plan.class_names.clone(),
            class_weights: plan.class_weights.clone(),
            nccl_unique_id: nccl_unique_id.clone(),
            global_train_objects: plan.train_objects,
            steps_per_epoch: plan.steps_per_epoch,
            output_url: spec.output_url.clone(),
            image_source: plan.image_source.clone(),
            generation,
            virtual_shards,
            virtual_shard_count: plan.shards.len() as u32,
            state_source: Some(source.clone()),
        };
        if let Some(worker) = pool.workers.get_mut(worker_id) {
            worker.assign(assignment);
        }
    }
    entry.ring = Some(Ring {
        generation,
        members: layout.members.clone(),
        shards_of_rank: layout.shards_of_rank.clone(),
        ended: BTreeMap::new(),
        lost: BTreeMap::new(),
        formed: Instant::now(),
        reform_requested: false,
    });
    entry.recovery = None;
    entry.done_reports.clear();
    entry.job.generation = generation;
    entry.job.workers = layout
        .members
        .iter()
        .enumerate()
        .map(|(rank, worker_id)| WorkerProgress {
            rank: rank as u32,
            worker_id: worker_id.clone(),
            generation,
            virtual_shards: layout.shards_of_rank[rank].clone(),
            ..Default::default()
        })
        .collect();
    let listing = layout.members.join(", ");
    match recovery {
        None => {
            info!(job_id, workers = ?layout.members, "job assigned");
            entry.set_phase(job_id, JobPhase::Loading, format!("assigned to {listing}"));
        }
        Some(record) => {
            let message = format!("generation {generation} on {listing} from {}", record.state_source);
            entry.job.recoveries.push(record.clone());
            push_event(entry, job_id, job_event::Event::Recovery(record));
            entry.set_phase(job_id, JobPhase::Recovering, message);
        }
    }
    entry.job.clone()
}

/// Moves an entry to a terminal phase; returns the job to persist.
fn finish_entry(entry: &mut JobEntry, pool: &mut WorkerPool, job_id: &str, phase: JobPhase, message: String) -> Job {
    match phase {
        JobPhase::Failed => warn!(job_id, message, "job failed"),
        _ => info!(job_id, phase = phase.as_str_name(), message, "job finished"),
    }
    for worker in pool.workers.values_mut() {
        if worker.pending_assignment.as_ref().is_some_and(|assignment| assignment.job_id == job_id) {
            worker.pending_assignment = None;
        }
    }
    entry.recovery = None;
    entry.set_phase(job_id, phase, message);
    entry.job.finished_unix_ms = unix_ms_now();
    entry.job.pending_epoch_reports.clear();
    let job = entry.job.clone();
    push_event(entry, job_id, job_event::Event::Finished(public_job(&job)));
    job
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

/// A fresh NCCL unique id for a generation whose ranks all have GPUs (empty: the ranks use the TCP ring).
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
