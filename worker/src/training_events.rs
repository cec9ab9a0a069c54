//! How a worker's training thread reports to the rest of the worker and to the coordinator: the observer the
//! training loop calls on each step, epoch and checkpoint, the events it sends to the async side, and the
//! best-effort progress reports that go out from there.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use plankton_proto::v1::{JobPhase, ProgressReport, WorkerProgress};
use plankton_trainer::{EpochEvaluation, StepProgress, TrainingObserver, TrainingProgress};

use crate::checkpointing::CheckpointJob;
use crate::credentials::CoordinatorClient;
use crate::tensorboard_log::StepLog;
use crate::{JobHandle, with_deadline};

/// Progress reports sent to the coordinator at most this often (epoch ends always go out).
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Sends one rank's progress of one generation to the coordinator.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) client: CoordinatorClient,
    pub(crate) job_id: String,
    pub(crate) rank: u32,
    pub(crate) generation: u32,
    pub(crate) worker_id: String,
}

impl Reporter {
    /// Progress is best effort: a report that fails is not retried (the next one supersedes it).
    pub(crate) async fn progress(&mut self, phase: JobPhase, progress: WorkerProgress) {
        let report = ProgressReport {
            job_id: self.job_id.clone(),
            progress: Some(progress),
            phase: phase as i32,
        };
        let mut request = with_deadline(report);
        request.set_timeout(Duration::from_secs(2));
        if let Err(status) = self.client.report_progress(request).await {
            tracing::debug!(job_id = self.job_id, %status, "progress report failed");
        }
    }

    pub(crate) fn base_progress(&self) -> WorkerProgress {
        WorkerProgress {
            rank: self.rank,
            worker_id: self.worker_id.clone(),
            generation: self.generation,
            ..Default::default()
        }
    }
}

/// What the training thread tells the async side.
pub(crate) enum TrainingEvent {
    /// A step, with where the steps since the previous event spent their time.
    Step(StepProgress, StepTimeSplit),
    Epoch(EpochEvaluation),
}

/// Bridges the training thread to the async side; stops training when the job is cancelled and asks for a
/// re-formation when the coordinator wants one.
pub(crate) struct ChannelObserver {
    pub(crate) sender: mpsc::Sender<TrainingEvent>,
    pub(crate) handle: Arc<JobHandle>,
    pub(crate) last_progress: Option<Instant>,
    pub(crate) checkpoints: Option<mpsc::Sender<CheckpointJob>>,
    /// Rank 0 records every step for TensorBoard (in memory; written from the async side).
    pub(crate) step_log: Option<StepLog>,
    /// Where the steps since the last progress event spent their time.
    pub(crate) time_split: StepTimeSplit,
}

/// Seconds spent per phase over a run of steps, and how many steps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepTimeSplit {
    steps: u32,
    data: f64,
    compute: f64,
    communication: f64,
    hidden_communication: f64,
    optimizer: f64,
}

impl StepTimeSplit {
    pub(crate) fn add(&mut self, timings: &plankton_trainer::StepTimings) {
        self.steps += 1;
        self.data += timings.data.as_secs_f64();
        self.compute += timings.forward_backward.as_secs_f64();
        self.communication += timings.all_reduce.as_secs_f64();
        self.hidden_communication += timings.all_reduce_hidden.as_secs_f64();
        self.optimizer += timings.optimizer.as_secs_f64();
    }

    /// The mean seconds per step of each phase, as `WorkerProgress` carries them.
    pub(crate) fn fill(&self, progress: &mut WorkerProgress) {
        let steps = f64::from(self.steps.max(1));
        progress.data_seconds_per_step = self.data / steps;
        progress.compute_seconds_per_step = self.compute / steps;
        progress.communication_seconds_per_step = self.communication / steps;
        progress.hidden_communication_seconds_per_step = self.hidden_communication / steps;
        progress.optimizer_seconds_per_step = self.optimizer / steps;
    }
}

impl TrainingObserver for ChannelObserver {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()> {
        crate::telemetry::metrics().record_step(progress);
        if let Some(step_log) = &self.step_log {
            step_log.record(progress);
        }
        self.time_split.add(&progress.timings);
        if self.handle.cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        let due = self
            .last_progress
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL)
            || progress.step == progress.steps_per_epoch;
        if due {
            self.last_progress = Some(Instant::now());
            // A full channel only delays progress display; never block training on it.
            let time_split = std::mem::take(&mut self.time_split);
            let _ = self
                .sender
                .try_send(TrainingEvent::Step(progress.clone(), time_split));
        }
        ControlFlow::Continue(())
    }

    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        if self.handle.cancel.is_cancelled()
            || self
                .sender
                .blocking_send(TrainingEvent::Epoch(evaluation.clone()))
                .is_err()
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn reform_requested(&mut self) -> bool {
        self.handle.reform_requested.load(Ordering::SeqCst)
    }

    fn on_checkpoint(&mut self, state: &[u8], progress: TrainingProgress) -> ControlFlow<()> {
        if let Some(checkpoints) = &self.checkpoints
            && checkpoints
                .try_send(CheckpointJob {
                    state: state.to_vec(),
                    progress,
                })
                .is_err()
        {
            warn!(
                global_step = progress.global_step,
                "checkpoint uploads are behind; this checkpoint is skipped"
            );
        }
        ControlFlow::Continue(())
    }
}
