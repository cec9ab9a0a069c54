//! The coordinator's TensorBoard event file of each job
//! (`<output_url>/tensorboard/events.out.tfevents.<job created secs>.coordinator`): the global evaluation of
//! every epoch, which only the coordinator has, at the epoch's last global step. Kept in memory and rewritten
//! whole (object stores cannot append) by a background task each time an epoch's metrics complete.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::{debug, warn};

use plankton_proto::v1::{EvalMetrics, Job};
use plankton_tensorboard::{EventFile, unix_seconds_now};

/// Folder of every job's event files, under its output URL (the workers write theirs there too).
pub const TENSORBOARD_FOLDER: &str = "tensorboard";

/// The event files of the jobs still evaluating epochs. Cheap to clone.
#[derive(Clone, Default)]
pub struct EvalLogs {
    jobs: Arc<Mutex<HashMap<String, JobEvalLog>>>,
}

struct JobEvalLog {
    file: EventFile,
    logged_epochs: BTreeSet<u32>,
    /// Numbers the file's versions; the writer skips a version older than the one it last wrote.
    version: u64,
    /// The last version written.
    written: Arc<tokio::sync::Mutex<u64>>,
}

impl EvalLogs {
    /// Drops the file of a job that ended (its last write, if any, is already under way).
    pub fn forget(&self, job_id: &str) {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(job_id);
    }

    /// Adds the scalars of a completed epoch and rewrites the job's file in the background (a failure is
    /// logged). `train_loss` is the epoch's mean global step loss. Call it outside the state lock.
    pub fn record_epoch(&self, job: &Job, metrics: &EvalMetrics, train_loss: f64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!(
                job_id = job.id,
                "no runtime; tensorboard events not written"
            );
            return;
        };
        let spec = job.spec.clone().unwrap_or_default();
        let (name, bytes, version, written) = {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let log = jobs.entry(job.id.clone()).or_insert_with(|| JobEvalLog {
                file: EventFile::with_created(
                    u64::try_from(job.created_unix_ms / 1000).unwrap_or(0),
                    "coordinator",
                ),
                logged_epochs: BTreeSet::new(),
                version: 0,
                written: Arc::new(tokio::sync::Mutex::new(0)),
            });
            // After a coordinator restart, the epochs published before it are logged again (without their
            // train loss, which the job does not keep).
            for earlier in &job.epochs {
                if earlier.epoch != metrics.epoch && !log.logged_epochs.contains(&earlier.epoch) {
                    add_epoch(&mut log.file, job.steps_per_epoch, earlier, None);
                    log.logged_epochs.insert(earlier.epoch);
                }
            }
            if log.logged_epochs.insert(metrics.epoch) {
                add_epoch(
                    &mut log.file,
                    job.steps_per_epoch,
                    metrics,
                    Some(train_loss),
                );
            }
            log.version += 1;
            let snapshot = (
                log.file.name().to_string(),
                log.file.to_bytes(),
                log.version,
                log.written.clone(),
            );
            if metrics.epoch >= spec.epochs {
                jobs.remove(&job.id);
            }
            snapshot
        };
        let job_id = job.id.clone();
        let output_url = spec.output_url;
        runtime.spawn(async move {
            let mut last_written = written.lock().await;
            if *last_written > version {
                return;
            }
            let result = async {
                plankton_dataset::open_location(&output_url)?
                    .sub_location(TENSORBOARD_FOLDER)
                    .put_bytes(&name, Bytes::from(bytes))
                    .await
            }
            .await;
            match result {
                Ok(()) => {
                    *last_written = version;
                    debug!(
                        job_id,
                        output_url, name, "tensorboard evaluation events written"
                    );
                }
                Err(write_error) => warn!(
                    job_id,
                    output_url,
                    name,
                    error = %write_error,
                    "writing the tensorboard evaluation events failed"
                ),
            }
        });
    }
}

/// The scalars of one epoch, at its last global step.
fn add_epoch(
    file: &mut EventFile,
    steps_per_epoch: u64,
    metrics: &EvalMetrics,
    train_loss: Option<f64>,
) {
    let step = (u64::from(metrics.epoch) * steps_per_epoch) as i64;
    let wall_time = unix_seconds_now();
    let mut scalars = vec![
        ("eval/accuracy".to_string(), metrics.accuracy),
        ("eval/macro_f1".to_string(), metrics.macro_f1),
        (
            "eval/biological_macro_f1".to_string(),
            metrics.biological_macro_f1,
        ),
        ("eval/weighted_f1".to_string(), metrics.weighted_f1),
        (
            "eval/balanced_accuracy".to_string(),
            metrics.balanced_accuracy,
        ),
        ("eval/test_loss".to_string(), metrics.test_loss),
    ];
    if let Some(train_loss) = train_loss {
        scalars.push(("train/epoch_loss".to_string(), train_loss));
    }
    for class in &metrics.per_class {
        scalars.push((format!("eval_f1/{}", class.class_name), class.f1));
    }
    for (tag, value) in scalars {
        file.add_scalar(&tag, step, value, wall_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_proto::v1::ClassMetrics;

    #[test]
    fn an_epoch_is_logged_at_its_last_step() {
        let mut file = EventFile::with_created(1, "coordinator");
        let metrics = EvalMetrics {
            epoch: 2,
            accuracy: 0.5,
            per_class: vec![ClassMetrics {
                class_name: "(unlabeled)".into(),
                f1: 0.25,
                ..Default::default()
            }],
            ..Default::default()
        };
        add_epoch(&mut file, 7, &metrics, Some(1.5));
        // 6 eval scalars, the train loss and one class.
        assert_eq!(file.scalar_count(), 8);
        assert_eq!(file.last_step(), Some(14));
        let events = plankton_tensorboard::read_events(&file.to_bytes()).unwrap();
        let tags: Vec<String> = events
            .iter()
            .filter_map(|event| match &event.what {
                Some(plankton_tensorboard::event::What::Summary(summary)) => {
                    Some(summary.value[0].tag.clone())
                }
                _ => None,
            })
            .collect();
        assert!(tags.contains(&"eval_f1/(unlabeled)".to_string()));
        assert!(tags.contains(&"train/epoch_loss".to_string()));
    }
}
