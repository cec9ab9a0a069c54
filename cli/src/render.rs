//! Tables and JSON for jobs, metrics, recoveries, checkpoints, confusion matrices and workers.

use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use plankton_proto::v1::{
    Checkpoint, EvalMetrics, Job, JobPhase, Recovery, WorkerInfo, WorkerProgress,
};

pub fn phase_name(phase: JobPhase) -> &'static str {
    phase.short_name()
}

fn metrics_json(metrics: &EvalMetrics) -> Value {
    json!({
        "epoch": metrics.epoch,
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "biological_macro_f1": metrics.biological_macro_f1,
        "weighted_f1": metrics.weighted_f1,
        "balanced_accuracy": metrics.balanced_accuracy,
        "test_loss": metrics.test_loss,
        "per_class": metrics.per_class.iter().map(|class| json!({
            "class": class.class_name, "precision": class.precision, "recall": class.recall,
            "f1": class.f1, "support": class.support,
        })).collect::<Vec<_>>(),
        "confusion": metrics.confusion.chunks(metrics.num_classes.max(1) as usize).collect::<Vec<_>>(),
    })
}

pub fn job_json(job: &Job) -> Value {
    let spec = job.spec.clone().unwrap_or_default();
    json!({
        "id": job.id,
        "phase": phase_name(job.phase()),
        "message": job.message,
        "created_unix_ms": job.created_unix_ms,
        "finished_unix_ms": job.finished_unix_ms,
        "spec": {
            "name": spec.name, "dataset": spec.dataset_url, "world_size": spec.world_size, "model": spec.model,
            "epochs": spec.epochs, "batch_size": spec.batch_size, "learning_rate": spec.learning_rate,
            "class_weighting": spec.class_weighting().as_str_name(), "optimizer": spec.optimizer().as_str_name(),
            "lr_schedule": spec.lr_schedule().as_str_name(), "augmentation": spec.augmentation().as_str_name(),
            "resize_mode": spec.resize_mode().as_str_name(), "output_url": spec.output_url, "seed": spec.seed,
            "max_objects": spec.max_objects, "min_workers": spec.min_workers,
            "max_recoveries": spec.max_recoveries, "checkpoint_every_steps": spec.checkpoint_every_steps,
            "keep_checkpoints": spec.keep_checkpoints, "init_from": spec.init_from,
            "non_finite_policy": spec.non_finite_policy().as_str_name(),
            "loss": spec.loss().as_str_name(), "logit_tau": spec.logit_tau,
        },
        "classes": job.class_names,
        "class_weights": job.class_weights,
        "train_objects": job.train_objects,
        "test_objects": job.test_objects,
        "skipped_objects": job.skipped_objects,
        "skipped_meta_rows": job.skipped_meta_rows,
        "skipped_meta_row_examples": job.skipped_meta_row_examples,
        "skipped_steps": job.skipped_steps,
        "feature_imputation": job.feature_imputation.as_ref().map(|imputation| json!({
            "objects": imputation.objects, "objects_without_row": imputation.objects_without_row,
            "imputed_values": imputation.imputed_values, "imputed_by_column": imputation.imputed_by_column,
            "input_columns": imputation.input_columns, "transformed_width": imputation.transformed_width,
            "dropped_columns": imputation.dropped_columns, "skipped_feature_rows": imputation.skipped_feature_rows,
        })),
        "model_url": job.model_url,
        "training_summary": job.training_summary,
        "weights_digest": job.weights_digest,
        "generation": job.generation,
        "global_step": job.global_step,
        "steps_per_epoch": job.steps_per_epoch,
        "total_steps": total_steps(job),
        "virtual_shard_count": job.virtual_shard_count,
        "workers": job.workers.iter().map(|worker| json!({
            "rank": worker.rank, "worker_id": worker.worker_id, "generation": worker.generation,
            "virtual_shards": worker.virtual_shards, "epoch": worker.epoch, "step": worker.step,
            "global_step": worker.global_step, "loss": worker.loss, "images_per_second": worker.images_per_second,
            "data_seconds_per_step": worker.data_seconds_per_step,
            "compute_seconds_per_step": worker.compute_seconds_per_step,
            "communication_seconds_per_step": worker.communication_seconds_per_step,
            "hidden_communication_seconds_per_step": worker.hidden_communication_seconds_per_step,
            "optimizer_seconds_per_step": worker.optimizer_seconds_per_step,
        })).collect::<Vec<_>>(),
        "recoveries": job.recoveries.iter().map(|recovery| json!({
            "generation": recovery.generation, "reason": recovery.reason, "fault": recovery.fault,
            "lost_workers": recovery.lost_workers, "joined_workers": recovery.joined_workers,
            "detected_unix_ms": recovery.detected_unix_ms, "formed_unix_ms": recovery.formed_unix_ms,
            "resumed_unix_ms": recovery.resumed_unix_ms, "resumed_from_step": recovery.resumed_from_step,
            "steps_lost": recovery.steps_lost, "world_size": recovery.world_size,
            "state_source": recovery.state_source,
        })).collect::<Vec<_>>(),
        "checkpoints": job.checkpoints.iter().map(|checkpoint| json!({
            "url": checkpoint.url, "global_step": checkpoint.global_step, "epoch": checkpoint.epoch,
            "unix_ms": checkpoint.unix_ms,
        })).collect::<Vec<_>>(),
        "epochs": job.epochs.iter().map(metrics_json).collect::<Vec<_>>(),
    })
}

pub fn job_table(jobs: &[Job]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header([
        "job", "phase", "model", "workers", "epochs", "accuracy", "macro-F1", "message",
    ]);
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let last = job.epochs.last();
        table.add_row([
            job.id.clone(),
            phase_name(job.phase()).to_string(),
            spec.model,
            spec.world_size.to_string(),
            format!("{}/{}", job.epochs.len(), spec.epochs),
            last.map_or("-".into(), |metrics| format!("{:.3}", metrics.accuracy)),
            last.map_or("-".into(), |metrics| format!("{:.3}", metrics.macro_f1)),
            truncate(&job.message, 60),
        ]);
    }
    format!("{table}\n")
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let kept: String = text.chars().take(limit - 1).collect();
    format!("{kept}…")
}

/// A job's summary, its per-epoch curve, the last epoch's per-class table and (optionally) confusion matrix.
pub fn job_report(job: &Job, with_confusion: bool) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("job        {}\n", job.id));
    out.push_str(&format!("phase      {}\n", phase_name(job.phase())));
    out.push_str(&format!("message    {}\n", job.message));
    out.push_str(&format!(
        "spec       {} x{} workers, {} epochs, batch {}, lr {}, dataset {}\n",
        spec.model,
        spec.world_size,
        spec.epochs,
        spec.batch_size,
        spec.learning_rate,
        spec.dataset_url
    ));
    out.push_str(&format!(
        "data       {} train / {} test objects, {} classes, {} unreadable skipped\n",
        job.train_objects,
        job.test_objects,
        job.class_names.len(),
        job.skipped_objects
    ));
    out.push_str(&skipped_meta_rows_report(job));
    out.push_str(&feature_imputation_report(job));
    out.push_str(&format!("tolerance  {}\n", tolerance_summary(&spec)));
    if !job.training_summary.is_empty() {
        out.push_str(&format!("training   {}\n", job.training_summary));
    }
    if spec.loss() == plankton_proto::v1::LossFunction::LogitAdjusted {
        out.push_str(&format!(
            "loss       logit-adjusted cross-entropy, tau {}, class weighting {}\n",
            spec.logit_tau,
            spec.class_weighting().as_str_name()
        ));
    }
    if !spec.init_from.is_empty() {
        out.push_str(&format!("init from  {}\n", spec.init_from));
    }
    let recoveries = match job.recoveries.len() {
        1 => "1 recovery".to_string(),
        count => format!("{count} recoveries"),
    };
    out.push_str(&format!("generation {} ({recoveries})\n", job.generation));
    out.push_str(&format!("steps      {}\n", step_summary(job, spec.epochs)));
    if job.skipped_steps > 0 {
        out.push_str(&format!(
            "skipped    {} (non-finite loss or gradients)\n",
            steps_text(job.skipped_steps)
        ));
    }
    if !job.model_url.is_empty() {
        out.push_str(&format!("model      {}\n", job.model_url));
    }
    if !job.weights_digest.is_empty() {
        out.push_str(&format!("digest     {}\n", job.weights_digest));
    }
    if !job.workers.is_empty() {
        out.push_str("Members\n");
        out.push_str(&member_table(&job.workers));
    }
    if !job.recoveries.is_empty() {
        out.push_str("Recoveries\n");
        out.push_str(&recovery_table(&job.recoveries));
    }
    if !job.checkpoints.is_empty() {
        out.push_str("Checkpoints\n");
        out.push_str(&checkpoint_table(&job.checkpoints));
    }
    if job.epochs.is_empty() {
        return out;
    }
    let mut curve = Table::new();
    curve.load_preset(UTF8_BORDERS_ONLY);
    curve.set_header([
        "epoch",
        "accuracy",
        "macro-F1",
        "bio. macro-F1",
        "weighted-F1",
        "balanced acc.",
        "test loss",
    ]);
    for metrics in &job.epochs {
        curve.add_row([
            metrics.epoch.to_string(),
            format!("{:.4}", metrics.accuracy),
            format!("{:.4}", metrics.macro_f1),
            format!("{:.4}", metrics.biological_macro_f1),
            format!("{:.4}", metrics.weighted_f1),
            format!("{:.4}", metrics.balanced_accuracy),
            format!("{:.4}", metrics.test_loss),
        ]);
    }
    out.push_str(&format!("{curve}\n"));
    let last = job.epochs.last().expect("checked non-empty");
    let mut classes = Table::new();
    classes.load_preset(UTF8_BORDERS_ONLY);
    classes.set_header(["#", "class", "precision", "recall", "F1", "support"]);
    for (index, class) in last.per_class.iter().enumerate() {
        classes.add_row([
            index.to_string(),
            class.class_name.clone(),
            format!("{:.3}", class.precision),
            format!("{:.3}", class.recall),
            format!("{:.3}", class.f1),
            class.support.to_string(),
        ]);
    }
    out.push_str(&format!("{classes}\n"));
    if with_confusion {
        out.push_str(&confusion_matrix(last));
    }
    out
}

/// The `meta.csv` rows the coordinator left out while planning: a count, then the examples it kept, one a
/// line ("meta.csv:17: <reason>"); empty when none was skipped.
pub fn skipped_meta_rows_report(job: &Job) -> String {
    if job.skipped_meta_rows == 0 {
        return String::new();
    }
    let rows = if job.skipped_meta_rows == 1 {
        "1 row".to_string()
    } else {
        format!("{} rows", job.skipped_meta_rows)
    };
    let mut out = format!("meta.csv   {rows} skipped\n");
    for example in &job.skipped_meta_row_examples {
        out.push_str(&format!("           {example}\n"));
    }
    let unnamed = job
        .skipped_meta_rows
        .saturating_sub(job.skipped_meta_row_examples.len() as u64);
    if unnamed > 0 && !job.skipped_meta_row_examples.is_empty() {
        out.push_str(&format!("           ... and {unnamed} more\n"));
    }
    out
}

/// What the native-features transform of a job that uses features imputed (empty for other jobs): one line,
/// plus the most imputed columns.
pub fn feature_imputation_report(job: &Job) -> String {
    let Some(imputation) = &job.feature_imputation else {
        return String::new();
    };
    let mut out = format!(
        "features   {} of {} columns kept -> {} values per object; {} of {} objects without a feature row \
         (imputed), {} values imputed\n",
        imputation.input_columns as usize - imputation.dropped_columns.len(),
        imputation.input_columns,
        imputation.transformed_width,
        imputation.objects_without_row,
        imputation.objects,
        imputation.imputed_values
    );
    let mut columns: Vec<(&String, &u64)> = imputation.imputed_by_column.iter().collect();
    columns.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
    if !columns.is_empty() {
        let listed: Vec<String> = columns
            .iter()
            .take(5)
            .map(|(column, count)| format!("{column} {count}"))
            .collect();
        out.push_str(&format!("           imputed most: {}\n", listed.join(", ")));
    }
    out
}

/// Optimizer steps of the whole job (epochs x steps per epoch); 0 until the coordinator knows the shards.
fn total_steps(job: &Job) -> u64 {
    let epochs = job.spec.as_ref().map_or(0, |spec| spec.epochs);
    u64::from(epochs) * job.steps_per_epoch
}

fn step_summary(job: &Job, epochs: u32) -> String {
    if job.steps_per_epoch == 0 {
        return format!(
            "global step {} (steps per epoch not known yet)",
            job.global_step
        );
    }
    format!(
        "global step {} / {} ({} steps per epoch x {} epochs, {} virtual shards)",
        job.global_step,
        total_steps(job),
        job.steps_per_epoch,
        epochs,
        job.virtual_shard_count
    )
}

/// The fault-tolerance settings (the coordinator fills their defaults into every job's spec).
fn tolerance_summary(spec: &plankton_proto::v1::JobSpec) -> String {
    let (min_workers, max_recoveries, keep) =
        (spec.min_workers, spec.max_recoveries, spec.keep_checkpoints);
    let cadence = if spec.checkpoint_every_steps == 0 {
        "at epoch ends".to_string()
    } else {
        format!(
            "at epoch ends and every {} steps",
            spec.checkpoint_every_steps
        )
    };
    format!(
        "goes on with at least {min_workers} worker(s), up to {max_recoveries} recoveries; checkpoints {cadence}, {keep} kept"
    )
}

/// Unix milliseconds as an RFC 3339 UTC time to the second; "-" for 0 (not happened yet).
fn time_of(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn names_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        return "-".into();
    }
    names.join(", ")
}

fn steps_text(steps: u64) -> String {
    if steps == 1 {
        "1 step".into()
    } else {
        format!("{steps} steps")
    }
}

/// Seconds from the fault's detection to the new generation's first completed step; None until it resumed.
fn time_to_resume(recovery: &Recovery) -> Option<f64> {
    if recovery.resumed_unix_ms <= 0 || recovery.detected_unix_ms <= 0 {
        return None;
    }
    Some((recovery.resumed_unix_ms - recovery.detected_unix_ms) as f64 / 1000.0)
}

fn member_table(workers: &[WorkerProgress]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header([
        "rank",
        "worker",
        "generation",
        "virtual shards",
        "epoch",
        "step",
        "global step",
        "loss",
        "img/s",
        "ms/step data/compute/comm/opt (+comm hidden)",
    ]);
    for worker in workers {
        table.add_row([
            worker.rank.to_string(),
            worker.worker_id.clone(),
            worker.generation.to_string(),
            worker.shard_ranges(),
            worker.epoch.to_string(),
            format!("{}/{}", worker.step, worker.steps_per_epoch),
            worker.global_step.to_string(),
            format!("{:.3}", worker.loss),
            format!("{:.0}", worker.images_per_second),
            format!(
                "{:.1}/{:.1}/{:.1}/{:.1} (+{:.1})",
                worker.data_seconds_per_step * 1e3,
                worker.compute_seconds_per_step * 1e3,
                worker.communication_seconds_per_step * 1e3,
                worker.optimizer_seconds_per_step * 1e3,
                worker.hidden_communication_seconds_per_step * 1e3
            ),
        ]);
    }
    format!("{table}\n")
}

/// Widest reason shown in the recoveries table; longer ones are written out in full below it.
const REASON_COLUMN_CHARS: usize = 48;

/// One row per re-formation: what happened, when, what it cost.
pub fn recovery_table(recoveries: &[Recovery]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header([
        "generation",
        "detected",
        "reason",
        "lost",
        "joined",
        "resumed from step",
        "steps lost",
        "time to resume",
        "world size",
        "state source",
    ]);
    for recovery in recoveries {
        table.add_row([
            recovery.generation.to_string(),
            time_of(recovery.detected_unix_ms),
            truncate(&recovery.reason, REASON_COLUMN_CHARS),
            names_or_dash(&recovery.lost_workers),
            names_or_dash(&recovery.joined_workers),
            recovery.resumed_from_step.to_string(),
            recovery.steps_lost.to_string(),
            time_to_resume(recovery).map_or("-".into(), |seconds| format!("{seconds:.1} s")),
            recovery.world_size.to_string(),
            recovery.state_source.clone(),
        ]);
    }
    let mut out = format!("{table}\n");
    for recovery in recoveries {
        if recovery.reason.chars().count() > REASON_COLUMN_CHARS {
            out.push_str(&format!(
                "generation {} reason: {}\n",
                recovery.generation, recovery.reason
            ));
        }
    }
    out
}

pub fn checkpoint_table(checkpoints: &[Checkpoint]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["step", "epochs done", "written", "url"]);
    for checkpoint in checkpoints {
        table.add_row([
            checkpoint.global_step.to_string(),
            checkpoint.epoch.to_string(),
            time_of(checkpoint.unix_ms),
            checkpoint.url.clone(),
        ]);
    }
    format!("{table}\n")
}

/// The watch line for a recovery event. The coordinator sends one when a generation forms (resumed_unix_ms 0)
/// and again when it completes its first step.
pub fn recovery_line(recovery: &Recovery) -> String {
    let lost = &recovery.lost_workers;
    let joined = &recovery.joined_workers;
    let cause = if !lost.is_empty() && joined.is_empty() {
        format!("after losing {}", lost.join(", "))
    } else if !lost.is_empty() {
        format!(
            "after losing {} (joined by {})",
            lost.join(", "),
            joined.join(", ")
        )
    } else if !joined.is_empty() && (joined.len() as u32) < recovery.world_size {
        format!("to add {}", joined.join(", "))
    } else {
        // Nobody lost, everyone new: a restart (a resume by the operator, a coordinator restart).
        format!("({})", recovery.reason)
    };
    let workers = if recovery.world_size == 1 {
        "1 worker".to_string()
    } else {
        format!("{} workers", recovery.world_size)
    };
    match time_to_resume(recovery) {
        Some(seconds) => format!(
            "generation {} formed on {workers} {cause}: resumed from step {}, {} lost, {seconds:.1} s",
            recovery.generation,
            recovery.resumed_from_step,
            steps_text(recovery.steps_lost)
        ),
        None => format!(
            "generation {} forming on {workers} {cause}: resuming from step {} with the state of {}",
            recovery.generation, recovery.resumed_from_step, recovery.state_source
        ),
    }
}

pub fn checkpoint_line(checkpoint: &Checkpoint) -> String {
    let epochs = if checkpoint.epoch == 1 {
        "1 epoch done".to_string()
    } else {
        format!("{} epochs done", checkpoint.epoch)
    };
    format!(
        "checkpoint at step {} ({epochs}): {}",
        checkpoint.global_step, checkpoint.url
    )
}

/// The confusion matrix with class numbers as headers (rows: true class, columns: predicted).
pub fn confusion_matrix(metrics: &EvalMetrics) -> String {
    let n = metrics.num_classes as usize;
    if n == 0 || metrics.confusion.len() != n * n {
        return String::new();
    }
    let width = metrics
        .confusion
        .iter()
        .max()
        .map_or(1, |max| max.to_string().len())
        .max(n.to_string().len());
    let mut out = format!(
        "confusion matrix (rows: true class #, columns: predicted class #; '.' = 0)\n{:>4} ",
        ""
    );
    for column in 0..n {
        out.push_str(&format!("{column:>width$} "));
    }
    out.push('\n');
    for row in 0..n {
        out.push_str(&format!("{row:>4} "));
        for column in 0..n {
            let count = metrics.confusion[row * n + column];
            if count == 0 {
                out.push_str(&format!("{:>width$} ", "."));
            } else {
                out.push_str(&format!("{count:>width$} "));
            }
        }
        out.push('\n');
    }
    out
}

pub fn worker_json(worker: &WorkerInfo) -> Value {
    json!({
        "worker_id": worker.worker_id, "peer_address": worker.peer_address, "current_job": worker.current_job,
        "last_heartbeat_unix_ms": worker.last_heartbeat_unix_ms, "threads": worker.threads,
        "generation": worker.generation, "rank": worker.rank,
    })
}

pub fn worker_table(workers: &[WorkerInfo]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header([
        "worker",
        "peer address",
        "threads",
        "current job",
        "generation",
        "rank",
    ]);
    for worker in workers {
        let idle = worker.current_job.is_empty();
        let while_busy = |value: u32| {
            if idle {
                "-".to_string()
            } else {
                value.to_string()
            }
        };
        table.add_row([
            worker.worker_id.clone(),
            worker.peer_address.clone(),
            worker.threads.to_string(),
            if idle {
                "-".into()
            } else {
                worker.current_job.clone()
            },
            while_busy(worker.generation),
            while_busy(worker.rank),
        ]);
    }
    format!("{table}\n")
}

#[cfg(test)]
mod tests {
    use plankton_proto::v1::JobSpec;

    use super::*;

    fn recovered_job() -> Job {
        let mut job = Job {
            id: "job-7".into(),
            spec: Some(JobSpec {
                model: "lenet".into(),
                world_size: 3,
                epochs: 4,
                checkpoint_every_steps: 20,
                // As the coordinator serves it: defaults filled in.
                min_workers: 1,
                max_recoveries: 10,
                keep_checkpoints: 2,
                ..JobSpec::default()
            }),
            generation: 1,
            global_step: 61,
            steps_per_epoch: 30,
            virtual_shard_count: 3,
            workers: vec![
                WorkerProgress {
                    rank: 0,
                    worker_id: "w-1".into(),
                    generation: 1,
                    virtual_shards: vec![0, 2],
                    epoch: 3,
                    step: 1,
                    steps_per_epoch: 30,
                    global_step: 61,
                    ..WorkerProgress::default()
                },
                WorkerProgress {
                    rank: 1,
                    worker_id: "w-3".into(),
                    generation: 1,
                    virtual_shards: vec![1],
                    ..WorkerProgress::default()
                },
            ],
            recoveries: vec![Recovery {
                generation: 1,
                reason: "worker w-1 (rank 0): collective operation failed: all_reduce_sum: peer rank 1 closed the connection".into(),
                lost_workers: vec!["w-2".into()],
                joined_workers: vec![],
                detected_unix_ms: 1_700_000_000_000,
                formed_unix_ms: 1_700_000_001_000,
                resumed_unix_ms: 1_700_000_004_100,
                resumed_from_step: 57,
                steps_lost: 1,
                world_size: 2,
                state_source: "worker w-1 (rank 0)".into(),
                fault: true,
            }],
            checkpoints: vec![Checkpoint {
                url: "file:///models/job-7/checkpoints/step-40".into(),
                global_step: 40,
                epoch: 1,
                unix_ms: 1_699_999_990_000,
            }],
            ..Job::default()
        };
        job.set_phase(JobPhase::Recovering);
        job
    }

    #[test]
    fn shard_ranges_are_compact() {
        let ranges = |virtual_shards: &[u32]| {
            WorkerProgress {
                virtual_shards: virtual_shards.to_vec(),
                ..Default::default()
            }
            .shard_ranges()
        };
        assert_eq!(ranges(&[5, 0, 1, 2, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[]), "-");
    }

    #[test]
    fn a_recovered_job_shows_generation_steps_members_recoveries_and_checkpoints() {
        let job = recovered_job();
        let report = job_report(&job, false);
        println!("{report}");
        assert!(report.contains("phase      recovering"), "{report}");
        assert!(report.contains("generation 1 (1 recovery)"), "{report}");
        assert!(report.contains("global step 61 / 120"), "{report}");
        assert!(report.contains("every 20 steps, 2 kept"), "{report}");
        assert!(report.contains("0, 2"), "{report}");
        assert!(report.contains("Recoveries"), "{report}");
        assert!(report.contains("4.1 s"), "{report}");
        assert!(
            report.contains("generation 1 reason: worker w-1 (rank 0): collective operation failed: all_reduce_sum: peer rank 1 closed the connection\n"),
            "{report}"
        );
        assert!(report.contains("2023-11-14T22:13:20Z"), "{report}");
        assert!(report.contains("worker w-1 (rank 0)"), "{report}");
        assert!(report.contains("Checkpoints"), "{report}");
        assert!(report.contains("checkpoints/step-40"), "{report}");

        let value = job_json(&job);
        assert_eq!(value["total_steps"], 120);
        assert_eq!(value["recoveries"][0]["resumed_from_step"], 57);
        assert_eq!(value["checkpoints"][0]["global_step"], 40);
        assert_eq!(value["workers"][0]["virtual_shards"], json!([0, 2]));
    }

    #[test]
    fn skipped_meta_rows_and_steps_are_shown_when_there_are_some() {
        let clean = job_report(&recovered_job(), false);
        assert!(!clean.contains("meta.csv"), "{clean}");
        assert!(!clean.contains("skipped    "), "{clean}");

        let job = Job {
            skipped_meta_rows: 7,
            skipped_meta_row_examples: vec![
                "meta.csv:17: objid 'x' is not an integer".into(),
                "meta.csv:20: duplicate objid 5".into(),
            ],
            skipped_steps: 3,
            ..recovered_job()
        };
        let report = job_report(&job, false);
        assert!(
            report.contains(
                "meta.csv   7 rows skipped\n           meta.csv:17: objid 'x' is not an integer\n           \
                 meta.csv:20: duplicate objid 5\n           ... and 5 more\n"
            ),
            "{report}"
        );
        assert!(
            report.contains("skipped    3 steps (non-finite loss or gradients)\n"),
            "{report}"
        );
        let value = job_json(&job);
        assert_eq!(value["skipped_meta_rows"], 7);
        assert_eq!(
            value["skipped_meta_row_examples"][1],
            "meta.csv:20: duplicate objid 5"
        );
        assert_eq!(value["skipped_steps"], 3);
        assert_eq!(value["spec"]["non_finite_policy"], "NON_FINITE_POLICY_FAIL");
    }

    #[test]
    fn watch_lines_for_recoveries_and_checkpoints() {
        let job = recovered_job();
        let mut recovery = job.recoveries[0].clone();
        assert_eq!(
            recovery_line(&recovery),
            "generation 1 formed on 2 workers after losing w-2: resumed from step 57, 1 step lost, 4.1 s"
        );
        recovery.resumed_unix_ms = 0;
        assert_eq!(
            recovery_line(&recovery),
            "generation 1 forming on 2 workers after losing w-2: resuming from step 57 with the state of worker w-1 (rank 0)"
        );
        let growth = Recovery {
            generation: 2,
            reason: "a free worker can join".into(),
            joined_workers: vec!["w-4".into()],
            world_size: 3,
            ..recovery.clone()
        };
        let growth = Recovery {
            lost_workers: vec![],
            fault: false,
            ..growth
        };
        assert!(
            recovery_line(&growth).starts_with("generation 2 forming on 3 workers to add w-4:")
        );
        let resumed = Recovery {
            generation: 3,
            reason: "resumed by the operator".into(),
            lost_workers: vec![],
            joined_workers: vec!["w-1".into(), "w-4".into()],
            world_size: 2,
            resumed_from_step: 40,
            state_source: "checkpoint file:///models/job-7/checkpoints/step-40".into(),
            fault: false,
            ..recovery.clone()
        };
        assert_eq!(
            recovery_line(&resumed),
            "generation 3 forming on 2 workers (resumed by the operator): resuming from step 40 with the state of checkpoint file:///models/job-7/checkpoints/step-40"
        );
        assert_eq!(
            checkpoint_line(&job.checkpoints[0]),
            "checkpoint at step 40 (1 epoch done): file:///models/job-7/checkpoints/step-40"
        );
    }
}
