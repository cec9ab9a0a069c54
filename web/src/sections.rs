//! HTML blocks both the dashboard and the report show: a job's members, recoveries, checkpoints, per-class
//! metrics and spec. Every string from a message goes through [`escape`].

use std::fmt::Write as _;

use plankton_proto::v1::{
    Checkpoint, ClassMetrics, EvalMetrics, Job, JobSpec, Recovery, WorkerProgress,
};

use crate::escape;
use crate::text::{
    class_name, count_text, duration_text, enum_label, loss_text, metric_text, time_of,
};

/// Order of the per-class table's rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClassOrder {
    /// As the classes are numbered (the dashboard; its script re-sorts).
    ByIndex,
    /// Worst F1 first (the report: what to look at).
    ByF1Ascending,
}

/// The latest evaluated epoch (highest epoch number; the last reported on a tie).
pub fn latest_epoch(job: &Job) -> Option<&EvalMetrics> {
    job.epochs
        .iter()
        .enumerate()
        .max_by_key(|(position, metrics)| (metrics.epoch, *position))
        .map(|(_, metrics)| metrics)
}

/// A class's name: the metrics' own, else the job's, else "class N".
fn metrics_class_name(class: &ClassMetrics, class_names: &[String], index: usize) -> String {
    if class.class_name.is_empty() {
        class_name(class_names, index)
    } else {
        class.class_name.clone()
    }
}

/// The per-class table of one epoch: class, precision, recall, F1, support. Cells carry `data-value` (the raw
/// number, or the name) so a script can sort them; header cells carry `data-sort-key` and `data-type`.
pub fn per_class_table(
    metrics: &EvalMetrics,
    class_names: &[String],
    table_attributes: &str,
    order: ClassOrder,
) -> String {
    let mut rows: Vec<(usize, &ClassMetrics)> = metrics.per_class.iter().enumerate().collect();
    if order == ClassOrder::ByF1Ascending {
        rows.sort_by(|(left_index, left), (right_index, right)| {
            left.f1
                .total_cmp(&right.f1)
                .then(right.support.cmp(&left.support))
                .then(left_index.cmp(right_index))
        });
    }
    let mut out = format!(
        r#"<table {table_attributes}><caption>Per-class metrics, epoch {}</caption><thead><tr><th data-sort-key="index" data-type="number" class="num">#</th><th data-sort-key="class" data-type="text">class</th><th data-sort-key="precision" data-type="number" class="num">precision</th><th data-sort-key="recall" data-type="number" class="num">recall</th><th data-sort-key="f1" data-type="number" class="num">F1</th><th data-sort-key="support" data-type="number" class="num">support</th></tr></thead><tbody>"#,
        metrics.epoch
    );
    for (index, class) in rows {
        let name = metrics_class_name(class, class_names, index);
        let _ = write!(
            out,
            r#"<tr class="class-row" data-class-index="{index}"><td class="num" data-value="{index}">{index}</td><td data-value="{name}">{name}</td><td class="num" data-value="{precision}">{}</td><td class="num" data-value="{recall}">{}</td><td class="num f1" data-value="{f1}">{}{}</td><td class="num" data-value="{support}">{}</td></tr>"#,
            metric_text(class.precision),
            metric_text(class.recall),
            f1_bar(class.f1),
            metric_text(class.f1),
            count_text(class.support),
            name = escape(&name),
            precision = finite_or_zero(class.precision),
            recall = finite_or_zero(class.recall),
            f1 = finite_or_zero(class.f1),
            support = class.support,
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// A small inline bar behind an F1 value (CSS draws it from the custom property).
fn f1_bar(f1: f64) -> String {
    format!(
        r#"<span class="bar" style="--value:{:.3}"></span>"#,
        finite_or_zero(f1).clamp(0.0, 1.0)
    )
}

/// The headline numbers of one epoch (the biological macro-F1 leaves out non-living and unlabeled classes).
pub fn metrics_summary(metrics: &EvalMetrics) -> String {
    format!(
        r#"<dl class="summary"><div><dt>epoch</dt><dd>{}</dd></div><div><dt>macro-F1</dt><dd class="macro-f1">{}</dd></div><div><dt>biological macro-F1</dt><dd class="biological-macro-f1">{}</dd></div><div><dt>accuracy</dt><dd>{}</dd></div><div><dt>balanced accuracy</dt><dd>{}</dd></div><div><dt>weighted F1</dt><dd>{}</dd></div><div><dt>test loss</dt><dd>{}</dd></div></dl>"#,
        metrics.epoch,
        metric_text(metrics.macro_f1),
        metric_text(metrics.biological_macro_f1),
        metric_text(metrics.accuracy),
        metric_text(metrics.balanced_accuracy),
        metric_text(metrics.weighted_f1),
        loss_text(metrics.test_loss),
    )
}

/// The job's members as they last reported: rank, worker, generation, epoch/step, loss, throughput, objects.
pub fn worker_progress_table(workers: &[WorkerProgress], table_attributes: &str) -> String {
    let mut out = format!(
        r#"<table {table_attributes}><thead><tr><th class="num">rank</th><th>worker</th><th class="num">generation</th><th>virtual shards</th><th>epoch / step</th><th class="num">global step</th><th class="num">loss</th><th class="num">images/s</th><th class="num">loaded</th><th class="num">skipped</th></tr></thead><tbody>"#
    );
    let mut sorted: Vec<&WorkerProgress> = workers.iter().collect();
    sorted.sort_by_key(|worker| (worker.rank, worker.worker_id.clone()));
    for worker in sorted {
        let step = if worker.steps_per_epoch > 0 {
            format!("{} / {}", worker.step, worker.steps_per_epoch)
        } else {
            worker.step.to_string()
        };
        let _ = write!(
            out,
            r#"<tr class="worker-row" data-worker-id="{id}" data-rank="{rank}"><td class="num">{rank}</td><td>{id}</td><td class="num">{}</td><td>{}</td><td>epoch {} · step {step}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{:.1}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            worker.generation,
            worker.shard_ranges(),
            worker.epoch,
            count_text(worker.global_step),
            loss_text(worker.loss),
            worker.images_per_second,
            count_text(worker.loaded_objects),
            count_text(worker.skipped_objects),
            id = escape(&worker.worker_id),
            rank = worker.rank,
        );
    }
    if workers.is_empty() {
        out.push_str(
            r#"<tr class="empty"><td colspan="10">No worker has reported progress yet.</td></tr>"#,
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn names_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        return "-".to_string();
    }
    escape(&names.join(", "))
}

/// One row per re-formation of the ring: why, who left and joined, what it cost.
pub fn recovery_table(recoveries: &[Recovery], table_attributes: &str) -> String {
    let mut out = format!(
        r#"<table {table_attributes}><thead><tr><th class="num">generation</th><th>detected</th><th>reason</th><th>lost</th><th>joined</th><th class="num">resumed from step</th><th class="num">steps lost</th><th class="num">recovery time</th><th class="num">world size</th><th>state source</th></tr></thead><tbody>"#
    );
    for recovery in recoveries {
        let recovery_time = if recovery.resumed_unix_ms > 0 && recovery.detected_unix_ms > 0 {
            duration_text(recovery.resumed_unix_ms - recovery.detected_unix_ms)
        } else {
            "resuming…".to_string()
        };
        let kind = if recovery.fault { "fault" } else { "requested" };
        let _ = write!(
            out,
            r#"<tr class="recovery-row {kind}" data-generation="{}"><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{recovery_time}</td><td class="num">{}</td><td>{}</td></tr>"#,
            recovery.generation,
            recovery.generation,
            time_of(recovery.detected_unix_ms),
            escape(&recovery.reason),
            names_or_dash(&recovery.lost_workers),
            names_or_dash(&recovery.joined_workers),
            count_text(recovery.resumed_from_step),
            recovery.steps_lost,
            recovery.world_size,
            escape(&recovery.state_source),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The job's complete checkpoints, oldest first.
pub fn checkpoint_table(checkpoints: &[Checkpoint], table_attributes: &str) -> String {
    let mut out = format!(
        r#"<table {table_attributes}><thead><tr><th class="num">global step</th><th class="num">epochs done</th><th>written</th><th>location</th></tr></thead><tbody>"#
    );
    for checkpoint in checkpoints {
        let _ = write!(
            out,
            r#"<tr class="checkpoint-row"><td class="num">{}</td><td class="num">{}</td><td>{}</td><td class="url">{}</td></tr>"#,
            count_text(checkpoint.global_step),
            checkpoint.epoch,
            time_of(checkpoint.unix_ms),
            escape(&checkpoint.url),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// Every field of the spec that is set (enums always: their zero value is a real choice), as (label, value).
pub fn spec_fields(spec: &JobSpec) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    let mut text = |label: &'static str, value: &str| {
        if !value.is_empty() {
            fields.push((label, value.to_string()));
        }
    };
    text("name", &spec.name);
    text("dataset", &spec.dataset_url);
    text(
        "model",
        if spec.model.is_empty() {
            "resnet"
        } else {
            &spec.model
        },
    );
    text("output", &spec.output_url);
    text("initialised from", &spec.init_from);
    let mut number = |label: &'static str, value: u64| {
        if value != 0 {
            fields.push((label, value.to_string()));
        }
    };
    number("world size", u64::from(spec.world_size));
    number("epochs", u64::from(spec.epochs));
    number("batch size (per worker)", u64::from(spec.batch_size));
    number("seed", spec.seed);
    number("max objects", u64::from(spec.max_objects));
    number("threads per worker", u64::from(spec.threads_per_worker));
    number("min workers", u64::from(spec.min_workers));
    number("max recoveries", u64::from(spec.max_recoveries));
    number(
        "checkpoint every (steps)",
        u64::from(spec.checkpoint_every_steps),
    );
    number("checkpoints kept", u64::from(spec.keep_checkpoints));
    if spec.learning_rate != 0.0 {
        fields.push(("learning rate", format!("{}", spec.learning_rate)));
    }
    if spec.test_fraction != 0.0 {
        fields.push(("test fraction", format!("{}", spec.test_fraction)));
    }
    fields.push((
        "class weighting",
        enum_label(spec.class_weighting().as_str_name(), "CLASS_WEIGHTING_"),
    ));
    fields.push((
        "optimizer",
        enum_label(spec.optimizer().as_str_name(), "OPTIMIZER_"),
    ));
    fields.push((
        "learning-rate schedule",
        enum_label(spec.lr_schedule().as_str_name(), "LR_SCHEDULE_"),
    ));
    fields.push((
        "augmentation",
        enum_label(spec.augmentation().as_str_name(), "AUGMENTATION_"),
    ));
    fields.push((
        "resize",
        enum_label(spec.resize_mode().as_str_name(), "RESIZE_"),
    ));
    fields.push((
        "non-finite steps",
        enum_label(spec.non_finite_policy().as_str_name(), "NON_FINITE_POLICY_"),
    ));
    fields.push((
        "loss",
        enum_label(spec.loss().as_str_name(), "LOSS_FUNCTION_"),
    ));
    if spec.logit_tau != 0.0 {
        fields.push(("logit-adjustment tau", format!("{}", spec.logit_tau)));
    }
    fields
}

/// The spec as a two-column table, one row per set field.
pub fn spec_table(spec: &JobSpec, table_attributes: &str) -> String {
    let mut out = format!("<table {table_attributes}><tbody>");
    for (label, value) in spec_fields(spec) {
        let _ = write!(
            out,
            r#"<tr><th scope="row">{label}</th><td>{}</td></tr>"#,
            escape(&value)
        );
    }
    out.push_str("</tbody></table>");
    out
}
