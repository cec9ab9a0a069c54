//! The job state machine.
//!
//! A job runs as a sequence of ring *generations*. Generation 0 is formed from `world_size` idle workers. When
//! a member is lost (silent, or its ring broke) the job turns `Recovering`: live members are told to abort
//! the generation, each reports the step it reached, the coordinator waits (bounded) for a replacement, and
//! forms the next generation from the survivors (plus joiners), starting from the survivor with the newest
//! state. With no survivor the job restarts from its latest checkpoint. Every transition happens in [`tick`],
//! called by one driver task per job (`driver.rs`) under the state lock; reports only record facts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;
use tracing::{info, warn};

use plankton_proto::v1::{
    Checkpoint, DoneReport, EpochReport, GenerationEndReport, Job, JobEvent, JobPhase, JobSpec,
    Misclassification, Recovery, ShardAssignment, StateSource, VirtualShard, WorkerProgress,
    job_event, state_source,
};

use crate::generation::{GenerationLayout, SurvivorState, layout_generation};
use crate::metrics::ConfusionMatrix;
use crate::planner::JobPlan;
use crate::state::{Tick, Timeouts, is_terminal, unix_ms_now};
use crate::workers::WorkerPool;

/// Events kept per job for late watchers; progress events beyond this are dropped from the replay log.
const MAX_REPLAYED_EVENTS: usize = 4096;

/// The ring generation a job is training in.
pub(crate) struct Ring {
    pub(crate) generation: u32,
    /// Worker id of each rank.
    pub(crate) members: Vec<String>,
    pub(crate) shards_of_rank: Vec<Vec<u32>>,
    /// Members that left this generation, with what they reported.
    pub(crate) ended: BTreeMap<String, GenerationEndReport>,
    /// Members taken for lost (silent), with why.
    pub(crate) lost: BTreeMap<String, String>,
    pub(crate) formed: Instant,
    /// Ask members to end the generation at the next step boundary (a worker is waiting to join).
    pub(crate) reform_requested: bool,
}

impl Ring {
    /// Whether a fault (a lost member, or a member's own failure) ended this generation, not only a
    /// requested re-formation.
    fn broken_by_fault(&self) -> bool {
        !self.lost.is_empty() || self.ended.values().any(|report| !report.clean)
    }

    pub(crate) fn rank_of(&self, worker_id: &str) -> Option<usize> {
        self.members.iter().position(|member| member == worker_id)
    }
}

/// A re-formation in progress.
pub(crate) struct PendingRecovery {
    pub(crate) detected: Instant,
    pub(crate) detected_unix_ms: i64,
    pub(crate) reasons: Vec<String>,
    /// Whether a fault (not only a clean, requested re-formation) ended the generation.
    pub(crate) fault: bool,
    /// The latest complete checkpoint, once the driver looked it up (`Some(None)`: there is none).
    pub(crate) checkpoint_lookup: Option<Option<Checkpoint>>,
    /// An operator's resume: without a checkpoint the job fails instead of starting over.
    pub(crate) resume: bool,
}

pub(crate) struct JobEntry {
    pub(crate) job: Job,
    pub(crate) events: Vec<JobEvent>,
    pub(crate) sender: broadcast::Sender<JobEvent>,
    /// The split and virtual shards; `None` after a restart until the driver plans again.
    pub(crate) plan: Option<Arc<JobPlan>>,
    pub(crate) ring: Option<Ring>,
    pub(crate) recovery: Option<PendingRecovery>,
    /// Per epoch, each virtual shard's evaluation.
    pub(crate) epoch_reports: BTreeMap<u32, Vec<Option<EpochReport>>>,
    /// Done reports of the current generation by rank.
    pub(crate) done_reports: BTreeMap<u32, DoneReport>,
    /// When the job started waiting for workers (submit, resume, or the coordinator's start).
    pub(crate) waiting_since: Instant,
    /// Encrypt the ring's traffic (the coordinator's `--ring-tls`).
    pub(crate) ring_tls: bool,
}

impl JobEntry {
    pub(crate) fn new(job: Job, plan: Option<Arc<JobPlan>>) -> Self {
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
            ring_tls: false,
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        is_terminal(self.job.phase())
    }

    pub(crate) fn spec(&self) -> JobSpec {
        self.job.spec.clone().unwrap_or_default()
    }

    pub(crate) fn shard_count(&self) -> u32 {
        self.job.virtual_shard_count.max(1)
    }

    /// Whether `worker_id` holds this job: a member of its generation, or handed an assignment of it.
    pub(crate) fn involves(&self, worker_id: &str) -> bool {
        self.ring.as_ref().is_some_and(|ring| {
            ring.rank_of(worker_id).is_some() && !ring.lost.contains_key(worker_id)
        })
    }

    pub(crate) fn set_phase(&mut self, job_id: &str, phase: JobPhase, message: String) {
        if self.job.phase() != phase {
            self.job.set_phase(phase);
            push_event(self, job_id, job_event::Event::Phase(phase as i32));
        }
        self.job.message = message;
    }
}

/// Advances a job's state machine by one step: forms generation 0, detects lost members and broken rings,
/// waits (bounded) for survivors' reports and replacements, forms the next generation or fails the job.
/// Returns what the driver must do next and the job to persist, if it changed in a way worth saving.
pub(crate) fn tick(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    timeouts: &Timeouts,
    restart_grace_over: bool,
) -> (Tick, Option<Job>) {
    if entry.ring.is_none() && entry.recovery.is_none() {
        return form_first_generation(entry, pool, job_id, timeouts);
    }
    mark_lost_members(entry, pool, job_id, timeouts, restart_grace_over);
    if entry.recovery.is_none() {
        return watch_generation(entry, pool, job_id, timeouts);
    }
    re_form(entry, pool, job_id, timeouts)
}

/// Generation 0: waits (up to the registration timeout) for `world_size` idle workers.
fn form_first_generation(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    timeouts: &Timeouts,
) -> (Tick, Option<Job>) {
    let spec = entry.spec();
    let world_size = spec.world_size as usize;
    let idle = pool.idle(timeouts.worker_timeout);
    if idle.len() >= world_size {
        if entry.plan.is_none() {
            return (Tick::NeedsPlan(spec), None);
        }
        let joiners: Vec<String> = idle.into_iter().take(world_size).collect();
        let layout = layout_generation(entry.shard_count(), &[], &joiners, &BTreeMap::new());
        let source = StateSource {
            source: Some(state_source::Source::Fresh(true)),
            init_weights_url: spec.init_from.clone(),
        };
        let snapshot = form_generation(entry, pool, job_id, 0, layout, source, None);
        return (Tick::Wait, Some(snapshot));
    }
    if entry.waiting_since.elapsed() > timeouts.registration_timeout {
        let registered = pool.workers.len();
        let message = format!(
            "timed out after {:.0}s waiting for {world_size} free workers ({} free, {registered} registered)",
            timeouts.registration_timeout.as_secs_f64(),
            idle.len()
        );
        let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
        return (Tick::Finished, Some(snapshot));
    }
    (Tick::Wait, None)
}

/// Takes members for lost that went silent (faster once the generation is known broken), left the job, or
/// never re-registered after a coordinator restart.
fn mark_lost_members(
    entry: &mut JobEntry,
    pool: &WorkerPool,
    job_id: &str,
    timeouts: &Timeouts,
    restart_grace_over: bool,
) {
    let fault_known = entry
        .recovery
        .as_ref()
        .is_some_and(|recovery| recovery.fault)
        || entry.ring.as_ref().is_some_and(Ring::broken_by_fault);
    let mut newly_lost = Vec::new();
    if let Some(ring) = &mut entry.ring {
        for member in &ring.members {
            // A member that reported the job done is idle on purpose while slower ranks finish.
            let done = entry
                .done_reports
                .values()
                .any(|report| report.worker_id == *member && report.generation == ring.generation);
            if done || ring.ended.contains_key(member) || ring.lost.contains_key(member) {
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
}

/// Why a generation ended: lost members, then each member's own report of its fault.
fn generation_end_reasons(ring: &Ring) -> Vec<String> {
    let mut reasons: Vec<String> = ring.lost.values().cloned().collect();
    reasons.extend(ring.ended.iter().filter(|(_, report)| !report.clean).map(
        |(worker_id, report)| {
            format!(
                "worker {worker_id} (rank {}): {}",
                report.rank, report.reason
            )
        },
    ));
    if reasons.is_empty() {
        reasons.push("re-forming to add workers".into());
    }
    reasons
}

/// A generation that is running: starts a recovery when a member ended or was lost, or asks the members to
/// re-form at the next step when the job runs short and a worker is free.
fn watch_generation(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    timeouts: &Timeouts,
) -> (Tick, Option<Job>) {
    let world_size = entry.spec().world_size as usize;
    let ring = entry.ring.as_ref();
    let ended_any = ring.is_some_and(|ring| !ring.ended.is_empty() || !ring.lost.is_empty());
    if ended_any {
        let ring = ring.expect("ended_any implies a ring");
        let fault = ring.broken_by_fault();
        let reasons = generation_end_reasons(ring);
        info!(job_id, generation = ring.generation, fault, reasons = ?reasons, "generation ended; re-forming");
        entry.recovery = Some(PendingRecovery {
            detected: Instant::now(),
            detected_unix_ms: unix_ms_now(),
            reasons,
            fault,
            checkpoint_lookup: None,
            resume: false,
        });
        let message = if fault {
            "recovering: a member was lost"
        } else {
            "re-forming to add workers"
        };
        entry.set_phase(job_id, JobPhase::Recovering, message.into());
        let snapshot = entry.job.clone();
        return (Tick::Wait, Some(snapshot));
    }
    // Growth: a job short of its world size takes an idle worker at the next step boundary.
    if let Some(ring) = &mut entry.ring
        && ring.members.len() < world_size
        && !ring.reform_requested
        && entry.job.phase() == JobPhase::Training
        && !pool.idle(timeouts.worker_timeout).is_empty()
    {
        info!(
            job_id,
            generation = ring.generation,
            "a free worker can join; re-forming at the next step"
        );
        ring.reform_requested = true;
    }
    (Tick::Wait, None)
}

/// Recovering: waits until every member reported its end or is lost, then (bounded) for replacements, and
/// forms the next generation from the newest state, or fails the job.
fn re_form(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    timeouts: &Timeouts,
) -> (Tick, Option<Job>) {
    let spec = entry.spec();
    let world_size = spec.world_size as usize;
    if let Some(ring) = &entry.ring {
        let unaccounted: Vec<&String> = ring
            .members
            .iter()
            .filter(|member| !ring.ended.contains_key(*member) && !ring.lost.contains_key(*member))
            .collect();
        if !unaccounted.is_empty() {
            let recovery = entry.recovery.as_ref().expect("recovering");
            if recovery.detected.elapsed() < timeouts.worker_timeout {
                return (Tick::Wait, None);
            }
            // Alive but never ending its generation (stuck): exclude it.
            let stuck: Vec<String> = unaccounted.into_iter().cloned().collect();
            let ring = entry.ring.as_mut().expect("checked");
            for member in stuck {
                warn!(
                    job_id,
                    worker_id = member,
                    "member did not leave its generation in time; excluded"
                );
                ring.lost.insert(
                    member.clone(),
                    format!(
                        "worker {member} did not leave generation {} within {:.0}s",
                        ring.generation,
                        timeouts.worker_timeout.as_secs_f64()
                    ),
                );
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
                    && pool
                        .workers
                        .get(*member)
                        .is_some_and(|worker| worker.is_alive(timeouts.worker_timeout))
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
        .filter(|worker_id| {
            !survivors
                .iter()
                .any(|survivor| &survivor.worker_id == worker_id)
        })
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
        return (Tick::Wait, None);
    }
    let min_workers = (spec.min_workers.max(1) as usize).min(world_size);
    let max_recoveries = spec.max_recoveries;
    if members < min_workers {
        let message = format!(
            "only {members} worker(s) available after losing members ({}); min_workers is {min_workers}",
            recovery.reasons.join("; ")
        );
        let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
        return (Tick::Finished, Some(snapshot));
    }
    let fault_recoveries = entry
        .job
        .recoveries
        .iter()
        .filter(|recovery| recovery.fault)
        .count() as u32;
    if fault && fault_recoveries >= max_recoveries {
        let message = format!(
            "gave up after {fault_recoveries} recoveries (max_recoveries {max_recoveries}); last fault: {}",
            recovery.reasons.join("; ")
        );
        let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
        return (Tick::Finished, Some(snapshot));
    }
    if entry.plan.is_none() {
        return (Tick::NeedsPlan(spec), None);
    }
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
    // The newest survivor's state; with none, the latest checkpoint; with none either, a fresh start.
    let (source, resumed_from_step, source_name) =
        match (layout.source_rank, &recovery.checkpoint_lookup) {
            (Some(rank), _) => (
                state_source::Source::PeerRank(rank as u32),
                survivors[rank].completed_steps,
                format!("worker {} (rank {rank})", survivors[rank].worker_id),
            ),
            (None, None) => return (Tick::NeedsCheckpoint(spec.output_url.clone()), None),
            (None, Some(Some(checkpoint))) => (
                state_source::Source::CheckpointUrl(checkpoint.url.clone()),
                checkpoint.global_step,
                format!("checkpoint {}", checkpoint.url),
            ),
            (None, Some(None)) if recovery.resume => {
                let message = format!(
                    "cannot resume: no complete checkpoint under {}/checkpoints",
                    spec.output_url.trim_end_matches('/')
                );
                let snapshot = finish_entry(entry, pool, job_id, JobPhase::Failed, message);
                return (Tick::Finished, Some(snapshot));
            }
            (None, Some(None)) => (
                state_source::Source::Fresh(true),
                0,
                "a fresh start (no member held the state and there is no checkpoint)".to_string(),
            ),
        };
    let source = StateSource {
        init_weights_url: match source {
            state_source::Source::Fresh(_) => spec.init_from.clone(),
            _ => String::new(),
        },
        source: Some(source),
    };
    let ring = entry.ring.as_ref();
    let highest_completed = ring
        .map(|ring| {
            ring.ended
                .values()
                .map(|report| report.completed_steps)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        .max(entry.job.global_step);
    let lost_workers: Vec<String> = ring
        .map(|ring| ring.lost.keys().cloned().collect())
        .unwrap_or_default();
    let steps_lost = highest_completed.saturating_sub(resumed_from_step) + u64::from(fault);
    let record = Recovery {
        // After a resume there is no ring, but the job's earlier generations are still numbered.
        generation: ring.map_or(
            if entry.job.workers.is_empty() {
                0
            } else {
                entry.job.generation + 1
            },
            |ring| ring.generation + 1,
        ),
        // Every member has spoken by now: their reports together name the rank at fault.
        reason: match ring.map(generation_end_reasons) {
            Some(reasons) if recovery.fault => reasons.join("; "),
            _ => recovery.reasons.join("; "),
        },
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
    let snapshot = form_generation(
        entry,
        pool,
        job_id,
        generation,
        layout,
        source,
        Some(record),
    );
    (Tick::Wait, Some(snapshot))
}

/// The job as operators see it (internal bookkeeping stripped).
pub(crate) fn public_job(job: &Job) -> Job {
    Job {
        pending_epoch_reports: Vec::new(),
        ..job.clone()
    }
}

/// Rebuilds the generation of a job that was running when the coordinator stopped.
pub(crate) fn restore_running_job(entry: &mut JobEntry) {
    entry.waiting_since = Instant::now();
    let shard_count = entry.job.virtual_shard_count.max(1) as usize;
    for report in std::mem::take(&mut entry.job.pending_epoch_reports) {
        let reports = entry
            .epoch_reports
            .entry(report.epoch)
            .or_insert_with(|| vec![None; shard_count]);
        if let Some(slot) = reports.get_mut(report.virtual_shard as usize) {
            *slot = Some(report);
        }
    }
    entry.job.pending_epoch_reports = entry
        .epoch_reports
        .values()
        .flatten()
        .flatten()
        .cloned()
        .collect();
    let phase = entry.job.phase();
    if phase == JobPhase::Pending || entry.job.workers.is_empty() {
        return;
    }
    entry.ring = Some(Ring {
        generation: entry.job.generation,
        members: entry
            .job
            .workers
            .iter()
            .map(|progress| progress.worker_id.clone())
            .collect(),
        shards_of_rank: entry
            .job
            .workers
            .iter()
            .map(|progress| progress.virtual_shards.clone())
            .collect(),
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

pub(crate) fn record_generation_end(entry: &mut JobEntry, report: GenerationEndReport) {
    let Some(ring) = &mut entry.ring else {
        return;
    };
    if entry.job.phase() == JobPhase::Succeeded
        || report.generation != ring.generation
        || ring.rank_of(&report.worker_id).is_none()
    {
        return;
    }
    info!(
        job_id = report.job_id,
        worker_id = report.worker_id,
        generation = report.generation,
        completed_steps = report.completed_steps,
        clean = report.clean,
        holds_state = report.holds_state,
        reason = report.reason,
        "member left its generation"
    );
    ring.ended.insert(report.worker_id.clone(), report);
}

pub(crate) fn accept_epoch_report(
    entry: &mut JobEntry,
    job_id: &str,
    report: EpochReport,
) -> Option<Job> {
    let shard_count = entry.shard_count() as usize;
    let shard = report.virtual_shard as usize;
    let epoch = report.epoch;
    if entry.is_finished()
        || shard >= shard_count
        || entry
            .job
            .epochs
            .iter()
            .any(|published| published.epoch == epoch)
    {
        return None;
    }
    let reports = entry
        .epoch_reports
        .entry(epoch)
        .or_insert_with(|| vec![None; shard_count]);
    reports[shard] = Some(report);
    if reports.iter().any(Option::is_none) {
        entry.job.pending_epoch_reports = entry
            .epoch_reports
            .values()
            .flatten()
            .flatten()
            .cloned()
            .collect();
        return Some(entry.job.clone());
    }
    let reports = entry.epoch_reports.remove(&epoch)?;
    let num_classes = entry.job.class_names.len();
    let mut confusion = ConfusionMatrix::zeros(num_classes);
    let (mut loss_sum, mut count) = (0.0, 0u64);
    let mut misclassified = Vec::new();
    for shard_report in reports.iter().flatten() {
        misclassified.extend(
            shard_report
                .misclassified
                .iter()
                .filter(|mistake| {
                    (mistake.true_class as usize) < num_classes
                        && (mistake.predicted_class as usize) < num_classes
                })
                .cloned(),
        );
        if confusion.add(&shard_report.confusion).is_none() {
            warn!(
                job_id,
                virtual_shard = shard_report.virtual_shard,
                "epoch report with a confusion matrix of the wrong shape ignored"
            );
        }
        loss_sum += shard_report.test_loss_sum;
        count += shard_report.test_count;
    }
    let test_loss = if count > 0 {
        loss_sum / count as f64
    } else {
        0.0
    };
    let mut metrics = confusion.metrics(epoch, &entry.job.class_names, test_loss);
    // Every report of an epoch carries the same (global) mean step loss.
    metrics.train_loss = reports
        .iter()
        .flatten()
        .map(|shard_report| shard_report.train_loss)
        .next()
        .unwrap_or_default();
    entry.job.misclassified = most_confident_per_class(misclassified);
    info!(
        job_id,
        epoch,
        accuracy = metrics.accuracy,
        macro_f1 = metrics.macro_f1,
        "epoch evaluated"
    );
    entry.job.epochs.push(metrics.clone());
    entry.job.epochs.sort_by_key(|published| published.epoch);
    entry.job.pending_epoch_reports = entry
        .epoch_reports
        .values()
        .flatten()
        .flatten()
        .cloned()
        .collect();
    push_event(entry, job_id, job_event::Event::EpochMetrics(metrics));
    Some(entry.job.clone())
}

/// Misclassified test objects a job keeps per true class (workers send a few per class and virtual shard).
const MISTAKES_KEPT_PER_CLASS: usize = 6;

/// The most confident mistakes of each true class, at most [`MISTAKES_KEPT_PER_CLASS`] each, by class then
/// confidence.
fn most_confident_per_class(mut mistakes: Vec<Misclassification>) -> Vec<Misclassification> {
    mistakes.sort_by(|a, b| {
        a.true_class
            .cmp(&b.true_class)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(a.objid.cmp(&b.objid))
    });
    let mut kept: Vec<Misclassification> = Vec::with_capacity(mistakes.len());
    let mut in_class = 0;
    for mistake in mistakes {
        in_class = match kept.last() {
            Some(last) if last.true_class == mistake.true_class => in_class + 1,
            _ => 0,
        };
        if in_class < MISTAKES_KEPT_PER_CLASS {
            kept.push(mistake);
        }
    }
    kept
}

/// What a rank's done report means for its job.
pub(crate) enum DoneOutcome {
    /// Other ranks have not reported yet (or the report is stale).
    Wait,
    /// Every rank succeeded with the same weights: the summary to finish the job with.
    Succeeded(String),
    /// The job fails with this message.
    Failed(String),
}

/// Records a rank's end of the job's last generation; ignores reports of other generations or ranks.
pub(crate) fn accept_done_report(entry: &mut JobEntry, report: DoneReport) -> DoneOutcome {
    let Some(ring) = &entry.ring else {
        return DoneOutcome::Wait;
    };
    let rank = report.rank as usize;
    if entry.is_finished()
        || report.generation != ring.generation
        || ring.rank_of(&report.worker_id) != Some(rank)
    {
        return DoneOutcome::Wait;
    }
    let member_count = ring.members.len();
    entry.job.skipped_objects += report.skipped_objects;
    if !report.model_url.is_empty() {
        entry.job.model_url = report.model_url.clone();
    }
    if !report.ok {
        return DoneOutcome::Failed(format!(
            "rank {rank} (worker {}) failed: {}",
            report.worker_id, report.error
        ));
    }
    entry.done_reports.insert(report.rank, report);
    if entry.done_reports.len() < member_count {
        return DoneOutcome::Wait;
    }
    let digests: BTreeSet<&str> = entry
        .done_reports
        .values()
        .map(|done| done.weights_digest.as_str())
        .collect();
    if digests.len() > 1 {
        let listed: Vec<String> = entry
            .done_reports
            .iter()
            .map(|(rank, done)| format!("rank {rank}: {}", done.weights_digest))
            .collect();
        return DoneOutcome::Failed(format!(
            "ranks ended with different weights ({})",
            listed.join(", ")
        ));
    }
    entry.job.weights_digest = digests.into_iter().next().unwrap_or_default().to_string();
    DoneOutcome::Succeeded(match entry.job.epochs.last() {
        Some(last) => format!(
            "trained {} epochs on {member_count} worker(s), generation {}: accuracy {:.3}, macro-F1 {:.3}",
            entry.job.epochs.len(),
            entry.job.generation,
            last.accuracy,
            last.macro_f1
        ),
        None => "finished".to_string(),
    })
}

/// Hands every member its assignment of a new generation and records it on the job.
pub(crate) fn form_generation(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    generation: u32,
    layout: GenerationLayout,
    source: StateSource,
    recovery: Option<Recovery>,
) -> Job {
    let plan = entry.plan.clone().expect("checked by the caller");
    let spec = entry.spec();
    let world_size = layout.members.len();
    let peers: Vec<String> = layout
        .members
        .iter()
        .map(|worker_id| {
            pool.workers
                .get(worker_id)
                .map(|worker| worker.peer_address.clone())
                .unwrap_or_default()
        })
        .collect();
    let every_rank_has_a_gpu = layout.members.iter().all(|worker_id| {
        pool.workers
            .get(worker_id)
            .is_some_and(|worker| worker.has_gpu)
    });
    let nccl_unique_id = if every_rank_has_a_gpu {
        nccl_unique_id(job_id)
    } else {
        Vec::new()
    };
    // A fresh key per generation: a ring handshake proves knowledge of it, so only this generation's members
    // (who got it with their assignment) can join.
    let ring_secret = rand::random::<[u8; 32]>().to_vec();
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
            ring_secret: ring_secret.clone(),
            ring_tls: entry.ring_tls,
            train_class_counts: entry.job.train_class_counts.clone(),
            feature_transform_json: plan
                .features
                .as_ref()
                .map(|features| features.transform_json.clone())
                .unwrap_or_default(),
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
            let message = format!(
                "generation {generation} on {listing} from {}",
                record.state_source
            );
            entry.job.recoveries.push(record.clone());
            push_event(entry, job_id, job_event::Event::Recovery(record));
            entry.set_phase(job_id, JobPhase::Recovering, message);
        }
    }
    entry.job.clone()
}

/// Moves an entry to a terminal phase; returns the job to persist.
pub(crate) fn finish_entry(
    entry: &mut JobEntry,
    pool: &mut WorkerPool,
    job_id: &str,
    phase: JobPhase,
    message: String,
) -> Job {
    match phase {
        JobPhase::Failed => warn!(job_id, message, "job failed"),
        _ => info!(job_id, phase = phase.as_str_name(), message, "job finished"),
    }
    for worker in pool.workers.values_mut() {
        if worker
            .pending_assignment
            .as_ref()
            .is_some_and(|assignment| assignment.job_id == job_id)
        {
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

pub(crate) fn push_event(entry: &mut JobEntry, job_id: &str, event: job_event::Event) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plankton_proto::v1::ShardObject;

    use super::*;
    use crate::planner::RankShard;
    use crate::workers::WorkerEntry;

    fn timeouts() -> Timeouts {
        Timeouts {
            worker_timeout: Duration::from_secs(60),
            registration_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(100),
            replacement_wait: Duration::ZERO,
        }
    }

    /// A 3-shard job and a pool of `workers` idle, live workers named w0, w1, ...
    fn job_and_pool(workers: usize, min_workers: u32) -> (JobEntry, WorkerPool) {
        let shard = |first: i64| RankShard {
            train: (first..first + 4)
                .map(|objid| ShardObject { objid, label: 0 })
                .collect(),
            test: vec![ShardObject {
                objid: first + 100,
                label: 0,
            }],
        };
        let plan = JobPlan {
            class_names: vec!["a".into()],
            class_weights: vec![1.0],
            shards: vec![shard(0), shard(10), shard(20)],
            steps_per_epoch: 2,
            train_objects: 12,
            test_objects: 3,
            image_source: "imgs/".into(),
            ..JobPlan::default()
        };
        let job = Job {
            id: "job-1".into(),
            // As submitted: defaults filled in.
            spec: Some({
                let mut spec = JobSpec {
                    world_size: 3,
                    min_workers,
                    ..Default::default()
                };
                crate::planner::fill_fault_tolerance_defaults(&mut spec);
                spec
            }),
            virtual_shard_count: 3,
            ..Default::default()
        };
        let mut pool = WorkerPool::default();
        for index in 0..workers {
            let worker_id = format!("w{index}");
            pool.workers.insert(
                worker_id,
                WorkerEntry::new("test", &format!("127.0.0.1:{}", 7000 + index), 1, false),
            );
        }
        (JobEntry::new(job, Some(Arc::new(plan))), pool)
    }

    fn end(worker_id: &str, rank: u32, completed_steps: u64) -> GenerationEndReport {
        GenerationEndReport {
            job_id: "job-1".into(),
            worker_id: worker_id.into(),
            generation: 0,
            rank,
            completed_steps,
            holds_state: true,
            reason: "peer closed the connection".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_silent_member_is_replaced_by_the_survivors_from_the_newest_state() {
        let (mut entry, mut pool) = job_and_pool(3, 0);
        let timeouts = timeouts();
        assert_eq!(
            tick(&mut entry, &mut pool, "job-1", &timeouts, true).0,
            Tick::Wait
        );
        assert_eq!(entry.ring.as_ref().unwrap().members, vec!["w0", "w1", "w2"]);
        for worker in pool.workers.values_mut() {
            worker.pending_assignment = None;
        }
        // w1 goes silent; w0 and w2 report that the ring broke, w2 one step ahead of w0.
        pool.workers.get_mut("w1").unwrap().last_seen = Instant::now() - Duration::from_secs(1);
        record_generation_end(&mut entry, end("w0", 0, 7));
        record_generation_end(&mut entry, end("w2", 2, 8));
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        assert_eq!(entry.job.phase(), JobPhase::Recovering);
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        let ring = entry.ring.as_ref().unwrap();
        assert_eq!(
            (ring.generation, ring.members.clone()),
            (1, vec!["w0".to_string(), "w2".to_string()])
        );
        assert_eq!(ring.shards_of_rank, vec![vec![0, 1], vec![2]]);
        let recovery = entry.job.recoveries.last().unwrap();
        assert_eq!((recovery.resumed_from_step, recovery.steps_lost), (8, 1));
        assert_eq!(recovery.lost_workers, vec!["w1"]);
        let assignment = pool.workers["w0"].pending_assignment.as_ref().unwrap();
        assert_eq!(
            assignment.state_source.as_ref().unwrap().source,
            Some(state_source::Source::PeerRank(1)),
            "w2 (rank 1 now) holds the newest state"
        );
    }

    #[test]
    fn a_member_done_with_the_job_is_not_lost_while_the_others_finish() {
        let (mut entry, mut pool) = job_and_pool(3, 0);
        let timeouts = timeouts();
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        for worker in pool.workers.values_mut() {
            worker.pending_assignment = None;
            worker.current_job = Some("job-1".into());
        }
        let done = DoneReport {
            job_id: "job-1".into(),
            rank: 1,
            ok: true,
            generation: 0,
            worker_id: "w1".into(),
            weights_digest: "d".into(),
            ..Default::default()
        };
        assert!(matches!(
            accept_done_report(&mut entry, done),
            DoneOutcome::Wait
        ));
        // w1 is idle now (its heartbeats name no job); w0 and w2 are still writing.
        pool.workers.get_mut("w1").unwrap().current_job = None;
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        assert!(entry.ring.as_ref().unwrap().lost.is_empty());
        assert_ne!(entry.job.phase(), JobPhase::Recovering);
        // A member that left without reporting done is lost.
        pool.workers.get_mut("w2").unwrap().current_job = None;
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        let lost: Vec<&String> = entry.ring.as_ref().unwrap().lost.keys().collect();
        assert_eq!(lost, vec!["w2"]);
    }

    #[test]
    fn too_few_survivors_fail_the_job_naming_the_fault() {
        let (mut entry, mut pool) = job_and_pool(3, 3);
        let timeouts = timeouts();
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        for worker in pool.workers.values_mut() {
            worker.pending_assignment = None;
        }
        pool.workers.remove("w1");
        record_generation_end(&mut entry, end("w0", 0, 3));
        record_generation_end(&mut entry, end("w2", 2, 3));
        tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        let (last_tick, _) = tick(&mut entry, &mut pool, "job-1", &timeouts, true);
        assert_eq!(last_tick, Tick::Finished);
        assert_eq!(entry.job.phase(), JobPhase::Failed);
        assert!(
            entry.job.message.contains("min_workers is 3"),
            "{}",
            entry.job.message
        );
        assert!(entry.job.message.contains("w1"), "{}", entry.job.message);
    }
}
