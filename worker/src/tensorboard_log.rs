//! Rank 0's TensorBoard event file (`<output_url>/tensorboard/events.out.tfevents.<secs>.rank0`): every step's
//! scalars, recorded in memory on the training thread and rewritten whole (object stores cannot append) at each
//! epoch end and when the job finishes, from the async side.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::{debug, warn};

use plankton_tensorboard::{EventFile, unix_seconds_now};
use plankton_trainer::StepProgress;

/// Folder of every job's event files, under its output URL.
pub(crate) const TENSORBOARD_FOLDER: &str = "tensorboard";

/// The step scalars of one job, as rank 0 of some generation on this worker saw them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StepLog {
    file: Arc<Mutex<EventFile>>,
    output_url: String,
    /// Serializes rewrites: each one takes the latest content once it holds the lock, so a slow earlier
    /// rewrite never overwrites a later one.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StepLog {
    pub(crate) fn new(output_url: &str) -> Self {
        StepLog {
            file: Arc::new(Mutex::new(EventFile::new("rank0"))),
            output_url: output_url.to_string(),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Records one step (`train/loss`, `train/learning_rate`, `train/images_per_second`, `time/step_seconds`)
    /// at its global step (numbered from 1). In memory only: called on the training thread. A step at or before
    /// the last one recorded means training resumed from an earlier state: the steps it redoes are dropped.
    pub(crate) fn record(&self, progress: &StepProgress) {
        let step = progress.global_step as i64;
        let timings = &progress.timings;
        let step_seconds =
            (timings.data + timings.forward_backward + timings.all_reduce + timings.optimizer)
                .as_secs_f64();
        let wall_time = unix_seconds_now();
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if file.last_step().is_some_and(|last| last >= step) {
            file.truncate_from_step(step);
        }
        file.add_scalar("train/loss", step, progress.loss, wall_time);
        file.add_scalar(
            "train/learning_rate",
            step,
            progress.learning_rate,
            wall_time,
        );
        file.add_scalar(
            "train/images_per_second",
            step,
            progress.images_per_second,
            wall_time,
        );
        file.add_scalar("time/step_seconds", step, step_seconds, wall_time);
    }

    /// Rewrites the file in the background; a failure is logged.
    pub(crate) fn flush(&self) {
        let log = self.clone();
        tokio::spawn(async move { log.write().await });
    }

    /// Rewrites the file now; a failure is logged (the event file is not worth failing a job for).
    pub(crate) async fn write(&self) {
        let _turn = self.write_lock.lock().await;
        let (name, bytes) = {
            let file = self
                .file
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (file.name().to_string(), file.to_bytes())
        };
        let written = async {
            let folder =
                plankton_dataset::open_location(&self.output_url)?.sub_location(TENSORBOARD_FOLDER);
            folder.put_bytes(&name, Bytes::from(bytes)).await
        }
        .await;
        match written {
            Ok(()) => debug!(
                output_url = self.output_url,
                name, "tensorboard events written"
            ),
            Err(write_error) => warn!(
                output_url = self.output_url,
                name,
                error = %write_error,
                "writing the tensorboard events failed"
            ),
        }
    }
}
