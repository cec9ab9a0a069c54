//! Rank 0's checkpoint writer: uploads the training state the trainer hands over, in order, off the training
//! thread; prunes old checkpoints; tells the coordinator about each complete one.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use plankton_checkpoint::{CheckpointManifest, prune_checkpoints, write_checkpoint};
use plankton_proto::v1::{Checkpoint, CheckpointReport};
use plankton_trainer::TrainingProgress;

use crate::outbox::Report;

/// Checkpoints waiting for upload; when uploads fall this far behind, a new checkpoint is skipped.
const QUEUE: usize = 2;

pub(crate) struct CheckpointJob {
    pub state: Vec<u8>,
    pub progress: TrainingProgress,
}

/// What every checkpoint of a job shares.
#[derive(Clone)]
pub(crate) struct CheckpointTarget {
    pub job_id: String,
    pub worker_id: String,
    pub generation: u32,
    pub output_url: String,
    pub steps_per_epoch: u64,
    pub architecture: String,
    pub class_names: Vec<String>,
    pub keep: usize,
}

pub(crate) struct CheckpointWriter {
    sender: mpsc::Sender<CheckpointJob>,
    task: JoinHandle<()>,
}

impl CheckpointWriter {
    pub fn spawn(target: CheckpointTarget, outbox: mpsc::UnboundedSender<Report>) -> Self {
        let (sender, mut receiver) = mpsc::channel::<CheckpointJob>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some(job) = receiver.recv().await {
                let manifest = CheckpointManifest {
                    format_version: 1,
                    job_id: target.job_id.clone(),
                    global_step: job.progress.global_step,
                    epoch: job.progress.evaluated_epochs,
                    steps_per_epoch: target.steps_per_epoch,
                    architecture: target.architecture.clone(),
                    class_names: target.class_names.clone(),
                    state_file: String::new(),
                    state_bytes: 0,
                    state_sha256: String::new(),
                    created_unix_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|elapsed| elapsed.as_millis() as i64)
                        .unwrap_or(0),
                };
                match write_checkpoint(&target.output_url, manifest, Bytes::from(job.state)).await {
                    Ok(written) => {
                        info!(
                            url = written.url,
                            global_step = job.progress.global_step,
                            "checkpoint written"
                        );
                        let _ = outbox.send(Report::Checkpoint(CheckpointReport {
                            job_id: target.job_id.clone(),
                            worker_id: target.worker_id.clone(),
                            generation: target.generation,
                            checkpoint: Some(Checkpoint {
                                url: written.url.clone(),
                                global_step: written.manifest.global_step,
                                epoch: written.manifest.epoch,
                                unix_ms: written.manifest.created_unix_ms,
                            }),
                        }));
                        if let Err(error) = prune_checkpoints(&target.output_url, target.keep).await
                        {
                            warn!(%error, "pruning old checkpoints failed");
                        }
                    }
                    Err(error) => {
                        warn!(%error, global_step = job.progress.global_step, "writing a checkpoint failed; training goes on")
                    }
                }
            }
        });
        CheckpointWriter { sender, task }
    }

    /// Where the training thread queues checkpoints (with `try_send`: a full queue skips one, never blocks).
    pub fn sender(&self) -> mpsc::Sender<CheckpointJob> {
        self.sender.clone()
    }

    /// Waits for queued uploads.
    pub async fn finish(self) {
        drop(self.sender);
        let _ = self.task.await;
    }
}
