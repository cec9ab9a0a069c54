//! Tables and JSON for jobs, metrics, confusion matrices and workers.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use plankton_proto::v1::{EvalMetrics, Job, JobPhase, WorkerInfo};

pub fn phase_name(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Unspecified => "unknown",
        JobPhase::Pending => "pending",
        JobPhase::Loading => "loading",
        JobPhase::Training => "training",
        JobPhase::Succeeded => "succeeded",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
    }
}

fn metrics_json(metrics: &EvalMetrics) -> Value {
    json!({
        "epoch": metrics.epoch,
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
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
            "max_objects": spec.max_objects,
        },
        "classes": job.class_names,
        "class_weights": job.class_weights,
        "train_objects": job.train_objects,
        "test_objects": job.test_objects,
        "skipped_objects": job.skipped_objects,
        "model_url": job.model_url,
        "workers": job.workers.iter().map(|worker| json!({
            "rank": worker.rank, "worker_id": worker.worker_id, "epoch": worker.epoch, "step": worker.step,
            "loss": worker.loss, "images_per_second": worker.images_per_second,
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
    if !job.model_url.is_empty() {
        out.push_str(&format!("model      {}\n", job.model_url));
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
        "weighted-F1",
        "balanced acc.",
        "test loss",
    ]);
    for metrics in &job.epochs {
        curve.add_row([
            metrics.epoch.to_string(),
            format!("{:.4}", metrics.accuracy),
            format!("{:.4}", metrics.macro_f1),
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
    })
}

pub fn worker_table(workers: &[WorkerInfo]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["worker", "peer address", "threads", "current job"]);
    for worker in workers {
        table.add_row([
            worker.worker_id.clone(),
            worker.peer_address.clone(),
            worker.threads.to_string(),
            if worker.current_job.is_empty() {
                "-".into()
            } else {
                worker.current_job.clone()
            },
        ]);
    }
    format!("{table}\n")
}
