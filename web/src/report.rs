//! The job report: one self-contained, printable HTML file (inline CSS, SVG and `data:` images, no script, no
//! external address) with the spec, the data, the curves, the per-class table, the confusion heatmap and the
//! worst classes' misclassified test images.

use std::fmt::Write as _;

use plankton_proto::v1::{ClassMetrics, EvalMetrics, Job};

use crate::Thumbnail;
use crate::escape;
use crate::sections::{
    ClassOrder, checkpoint_table, latest_epoch, metrics_summary, per_class_table, recovery_table,
    spec_table,
};
use crate::style::{BASE_CSS, REPORT_CSS};
use crate::svg;
use crate::text::{
    base64, class_name, count_text, is_finished, model_of, name_of, planned_epochs, time_of,
    total_steps,
};

/// Classes the misclassified section shows: the worst by F1.
pub const WORST_CLASSES: usize = 5;

/// Thumbnails shown per class at most.
const THUMBNAILS_PER_CLASS: usize = 24;

/// The report of `job`; `thumbnails` are misclassified test images (JPEG bytes read from the dataset) to show
/// under the worst classes.
pub fn job_report(job: &Job, thumbnails: &[Thumbnail]) -> String {
    let title = format!("plankton-cluster report: {}", job.id);
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{}</title><style>{BASE_CSS}{REPORT_CSS}</style></head><body><main>"#,
        escape(&title)
    );
    out.push_str(&header(job));
    out.push_str(&spec_section(job));
    out.push_str(&data_section(job));
    out.push_str(&curves_section(job));
    let latest = latest_epoch(job);
    out.push_str(&per_class_section(job, latest));
    out.push_str(&confusion_section(job, latest));
    out.push_str(&misclassified_section(job, latest, thumbnails));
    if !job.recoveries.is_empty() {
        let _ = write!(
            out,
            r#"<section id="recoveries"><h2>Recoveries</h2><p>The ring re-formed {} time(s); generation {} finished the job.</p>{}</section>"#,
            job.recoveries.len(),
            job.generation,
            recovery_table(&job.recoveries, r#"class="recoveries""#)
        );
    }
    if !job.checkpoints.is_empty() {
        let _ = write!(
            out,
            r#"<section id="checkpoints"><h2>Checkpoints</h2>{}</section>"#,
            checkpoint_table(&job.checkpoints, r#"class="checkpoints""#)
        );
    }
    out.push_str(&footer(job));
    out.push_str("</main></body></html>");
    out
}

fn header(job: &Job) -> String {
    let name = name_of(job);
    let state = if is_finished(job) {
        format!("finished {}", time_of(job.finished_unix_ms))
    } else {
        "still running when this report was made".to_string()
    };
    format!(
        r#"<header class="report-header"><h1>Training report <span class="mono">{id}</span></h1><p>{name}<span class="phase phase-{phase}">{phase}</span> · {model} · created {created} · {state}</p>{message}</header>"#,
        id = escape(&job.id),
        name = if name.is_empty() {
            String::new()
        } else {
            format!("<strong>{}</strong> · ", escape(name))
        },
        phase = job.phase().short_name(),
        model = escape(&model_of(job)),
        created = time_of(job.created_unix_ms),
        message = if job.message.is_empty() {
            String::new()
        } else {
            format!(r#"<p class="job-message">{}</p>"#, escape(&job.message))
        },
    )
}

fn spec_section(job: &Job) -> String {
    let table = match job.spec.as_ref() {
        Some(spec) => spec_table(spec, r#"class="spec""#),
        None => r#"<p class="placeholder">The job carries no spec.</p>"#.to_string(),
    };
    let steps = if job.steps_per_epoch > 0 {
        format!(
            "<p>{} steps per epoch × {} epochs = {} optimizer steps; {} completed.</p>",
            count_text(job.steps_per_epoch),
            planned_epochs(job),
            count_text(total_steps(job)),
            count_text(job.global_step)
        )
    } else {
        String::new()
    };
    format!(r#"<section id="spec"><h2>Spec</h2>{table}{steps}</section>"#)
}

fn data_section(job: &Job) -> String {
    let mut out = String::from(r#"<section id="data"><h2>Data</h2><dl class="fields">"#);
    let _ = write!(
        out,
        "<dt>classes</dt><dd>{}</dd><dt>train objects</dt><dd>{}</dd><dt>test objects</dt><dd>{}</dd><dt>unreadable images skipped</dt><dd>{}</dd><dt>meta.csv rows skipped</dt><dd>{}</dd>",
        job.class_names.len(),
        count_text(job.train_objects),
        count_text(job.test_objects),
        count_text(job.skipped_objects),
        count_text(job.skipped_meta_rows)
    );
    if job.skipped_steps > 0 {
        let _ = write!(
            out,
            "<dt>steps skipped (non-finite)</dt><dd>{}</dd>",
            count_text(job.skipped_steps)
        );
    }
    out.push_str("</dl>");
    if !job.skipped_meta_row_examples.is_empty() {
        out.push_str(r#"<h3>Skipped meta.csv rows</h3><ul class="examples">"#);
        for example in &job.skipped_meta_row_examples {
            let _ = write!(out, "<li>{}</li>", escape(example));
        }
        let unnamed = job
            .skipped_meta_rows
            .saturating_sub(job.skipped_meta_row_examples.len() as u64);
        if unnamed > 0 {
            let _ = write!(out, "<li>… and {} more</li>", count_text(unnamed));
        }
        out.push_str("</ul>");
    }
    let has_counts = !job.train_class_counts.is_empty() || !job.test_class_counts.is_empty();
    if has_counts {
        out.push_str("<h3>Class distribution</h3>");
        let _ = write!(
            out,
            r#"<div class="chart-scroll">{}</div>"#,
            svg::class_distribution(
                "class-distribution",
                &job.class_names,
                &job.train_class_counts,
                &job.test_class_counts
            )
        );
    } else {
        out.push_str(r#"<p class="placeholder">The job reported no per-class counts.</p>"#);
    }
    let class_count = job
        .class_names
        .len()
        .max(job.train_class_counts.len())
        .max(job.class_weights.len());
    if class_count > 0 {
        out.push_str(r#"<table class="class-data"><thead><tr><th class="num">#</th><th>class</th><th class="num">train</th><th class="num">test</th><th class="num">loss weight</th></tr></thead><tbody>"#);
        for index in 0..class_count {
            let count = |counts: &[u64]| {
                counts
                    .get(index)
                    .map_or("-".to_string(), |count| count_text(*count))
            };
            let weight = job
                .class_weights
                .get(index)
                .map_or("-".to_string(), |weight| format!("{weight:.4}"));
            let _ = write!(
                out,
                r#"<tr><td class="num">{index}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{weight}</td></tr>"#,
                escape(&class_name(&job.class_names, index)),
                count(&job.train_class_counts),
                count(&job.test_class_counts),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

fn curves_section(job: &Job) -> String {
    let mut out = String::from(r#"<section id="curves"><h2>Curves</h2><h3>Training loss</h3>"#);
    if job.loss_curve.is_empty() {
        out.push_str(r#"<p class="placeholder">No training step was reported.</p>"#);
    } else {
        out.push_str(&svg::loss_curve(
            "loss-curve",
            &job.loss_curve,
            job.steps_per_epoch,
            total_steps(job),
        ));
    }
    out.push_str("<h3>Evaluation per epoch</h3>");
    if job.epochs.is_empty() {
        out.push_str(r#"<p class="placeholder">No epoch was evaluated.</p>"#);
    } else {
        out.push_str(&svg::epoch_curve(
            "epoch-curve",
            &job.epochs,
            planned_epochs(job),
        ));
    }
    out.push_str("</section>");
    out
}

fn per_class_section(job: &Job, latest: Option<&EvalMetrics>) -> String {
    let mut out = String::from(r#"<section id="per-class"><h2>Per-class metrics</h2>"#);
    match latest {
        Some(metrics) => {
            out.push_str(&metrics_summary(metrics));
            if metrics.per_class.is_empty() {
                out.push_str(
                    r#"<p class="placeholder">The epoch carries no per-class metrics.</p>"#,
                );
            } else {
                out.push_str("<p>Worst F1 first.</p>");
                out.push_str(&per_class_table(
                    metrics,
                    &job.class_names,
                    r#"class="per-class-table""#,
                    ClassOrder::ByF1Ascending,
                ));
            }
        }
        None => out.push_str(r#"<p class="placeholder">No epoch was evaluated.</p>"#),
    }
    out.push_str("</section>");
    out
}

fn confusion_section(job: &Job, latest: Option<&EvalMetrics>) -> String {
    let heatmap = latest
        .and_then(|metrics| svg::confusion_heatmap("confusion-matrix", metrics, &job.class_names));
    let body = match heatmap {
        Some(heatmap) => format!(
            r#"<p>Rows are the true class, columns the predicted one; colour is log(1 + count) over log(1 + the largest count).</p><div class="chart-scroll">{heatmap}</div>"#
        ),
        None => {
            r#"<p class="placeholder">No confusion matrix: no epoch was evaluated.</p>"#.to_string()
        }
    };
    format!(r#"<section id="confusion"><h2>Confusion matrix</h2>{body}</section>"#)
}

/// The classes the misclassified section shows: up to [`WORST_CLASSES`] with test objects, worst F1 first, as
/// (class index, metrics). The caller reads thumbnails of these classes' mistakes.
pub fn worst_classes(metrics: &EvalMetrics) -> Vec<(usize, &ClassMetrics)> {
    let mut classes: Vec<(usize, &ClassMetrics)> = metrics
        .per_class
        .iter()
        .enumerate()
        .filter(|(_, class)| class.support > 0)
        .collect();
    classes.sort_by(|(left_index, left), (right_index, right)| {
        left.f1
            .total_cmp(&right.f1)
            .then(right.support.cmp(&left.support))
            .then(left_index.cmp(right_index))
    });
    classes.truncate(WORST_CLASSES);
    classes
}

fn misclassified_section(
    job: &Job,
    latest: Option<&EvalMetrics>,
    thumbnails: &[Thumbnail],
) -> String {
    let mut out = String::from(r#"<section id="misclassified"><h2>Misclassified test images</h2>"#);
    let Some(metrics) = latest else {
        out.push_str(r#"<p class="placeholder">No epoch was evaluated, so there are no mistakes to show.</p></section>"#);
        return out;
    };
    let classes = worst_classes(metrics);
    let name_of_class = |index: usize| -> String {
        match metrics.per_class.get(index) {
            Some(class) if !class.class_name.is_empty() => class.class_name.clone(),
            _ => class_name(&job.class_names, index),
        }
    };
    if thumbnails.is_empty() || classes.is_empty() {
        out.push_str(r#"<p class="placeholder" id="no-misclassified">No misclassified test images to show.</p></section>"#);
        return out;
    }
    let _ = write!(
        out,
        "<p>The {} worst classes by F1 (epoch {}), with their most confident mistakes.</p>",
        classes.len(),
        metrics.epoch
    );
    for (index, class) in classes {
        let mut shown: Vec<&Thumbnail> = thumbnails
            .iter()
            .filter(|thumbnail| thumbnail.true_class as usize == index)
            .collect();
        shown.sort_by(|left, right| right.confidence.total_cmp(&left.confidence));
        let name = name_of_class(index);
        let _ = write!(
            out,
            r#"<div class="worst-class" data-class-index="{index}"><h3>{} <span class="muted">F1 {:.3}, recall {:.3}, {} test object{}</span></h3>"#,
            escape(&name),
            class.f1,
            class.recall,
            count_text(class.support),
            if class.support == 1 { "" } else { "s" }
        );
        if shown.is_empty() {
            out.push_str(r#"<p class="placeholder">No misclassified image of this class was recorded.</p></div>"#);
            continue;
        }
        out.push_str(r#"<div class="thumbnails">"#);
        for thumbnail in shown.iter().take(THUMBNAILS_PER_CLASS) {
            let predicted = name_of_class(thumbnail.predicted_class as usize);
            let _ = write!(
                out,
                r#"<figure class="thumbnail" data-objid="{objid}"><img src="data:image/jpeg;base64,{}" width="64" height="64" alt="object {objid}"><figcaption>true {} → predicted {} (p={:.2})<br><span class="muted">object {objid}</span></figcaption></figure>"#,
                base64(&thumbnail.jpeg),
                escape(&name),
                escape(&predicted),
                thumbnail.confidence,
                objid = thumbnail.objid,
            );
        }
        out.push_str("</div></div>");
    }
    out.push_str("</section>");
    out
}

fn footer(job: &Job) -> String {
    let mut out = format!(
        r#"<footer><p>job <span class="mono">{}</span>"#,
        escape(&job.id)
    );
    if !job.model_url.is_empty() {
        let _ = write!(
            out,
            r#" · model <span class="url">{}</span>"#,
            escape(&job.model_url)
        );
    }
    if !job.weights_digest.is_empty() {
        let _ = write!(
            out,
            r#" · weights digest <span class="mono">{}</span>"#,
            escape(&job.weights_digest)
        );
    }
    out.push_str("</p><p>Generated by plankton-cluster.</p></footer>");
    out
}
