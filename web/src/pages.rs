//! The dashboard's pages: server-rendered HTML with inline CSS, and a little inline JavaScript on the job page
//! (live refresh, per-class sorting). The coordinator's HTTP server calls these; they only render.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use plankton_proto::v1::{Job, JobPhase, ModelVersion, WorkerInfo};

use crate::escape;
use crate::sections::{
    ClassOrder, checkpoint_table, latest_epoch, per_class_table, recovery_table,
    worker_progress_table,
};
use crate::style::{BASE_CSS, DASHBOARD_CSS};
use crate::svg;
use crate::text::{
    best_macro_f1, count_text, duration_text, is_finished, metric_text, model_of, name_of,
    path_segment, planned_epochs, rfc3339_of, time_of, total_steps, truncate,
};

/// Who is looking: shown in the header; `can_promote` shows the promote form on the models page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    pub role: String,
    pub can_promote: bool,
    /// Sent back as the `csrf` field of every form that changes something (logout, promote).
    pub csrf_token: String,
}

/// The jobs list's filters, as the query string gives them (`phase`, `model`, `q`); None or empty = any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// A phase's short name ("training", "failed", ...).
    pub phase: Option<String>,
    /// A model name ("resnet", "lenet", "wide_lenet"); a job with no model set trains "resnet".
    pub model: Option<String>,
    /// Free text, matched case-insensitively against the job's id and name.
    pub text: Option<String>,
}

/// Every phase's short name, in the order the phase filter offers them.
const PHASE_NAMES: [&str; 7] = [
    "pending",
    "loading",
    "training",
    "recovering",
    "succeeded",
    "failed",
    "cancelled",
];

/// The filter's value when it constrains anything: trimmed, None when empty.
fn active(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Whether `job` passes `filter`: same phase (short name), same model ("resnet" when unset), and the text found
/// in the id or the name (case-insensitive). An empty or missing filter field matches everything.
pub fn matches(filter: &JobFilter, job: &Job) -> bool {
    if let Some(phase) = active(&filter.phase)
        && !job.phase().short_name().eq_ignore_ascii_case(phase)
    {
        return false;
    }
    if let Some(model) = active(&filter.model)
        && !model_of(job).eq_ignore_ascii_case(model)
    {
        return false;
    }
    if let Some(text) = active(&filter.text) {
        let needle = text.to_lowercase();
        let in_id = job.id.to_lowercase().contains(&needle);
        let in_name = name_of(job).to_lowercase().contains(&needle);
        if !in_id && !in_name {
            return false;
        }
    }
    true
}

/// Which nav entry is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Jobs,
    Workers,
    Models,
    None,
}

/// The shared page: head with inline CSS, the top bar (nav, viewer, logout), the body, an optional script.
fn layout(title: &str, viewer: Option<&Viewer>, current: Nav, body: &str, script: &str) -> String {
    let mut out = String::with_capacity(body.len() + 8192);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{} · plankton-cluster</title><style>{BASE_CSS}{DASHBOARD_CSS}</style></head><body><header class="topbar"><nav><a class="brand" href="/">plankton-cluster</a>"#,
        escape(title)
    );
    for (entry, href, label) in [
        (Nav::Jobs, "/", "Jobs"),
        (Nav::Workers, "/workers", "Workers"),
        (Nav::Models, "/models", "Models"),
    ] {
        let current_attribute = if entry == current {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<a class="nav-{}" href="{href}"{current_attribute}>{label}</a>"#,
            label.to_lowercase()
        );
    }
    out.push_str("</nav>");
    if let Some(viewer) = viewer {
        let _ = write!(
            out,
            r#"<div class="viewer"><span class="viewer-name">{}</span><span class="viewer-role">{}</span><form method="post" action="/logout" class="logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Log out</button></form></div>"#,
            escape(&viewer.name),
            escape(&viewer.role),
            escape(&viewer.csrf_token)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main>");
    if !script.is_empty() {
        let _ = write!(out, "<script>{script}</script>");
    }
    out.push_str("</body></html>");
    out
}

/// The sign-in page: a token field, the page to return to, and the last attempt's error. No script.
pub fn login_page(error: Option<&str>, next: &str) -> String {
    let mut body = String::from(
        r#"<div class="login"><h1>Sign in</h1><p class="muted">Paste your plankton-cluster access token.</p>"#,
    );
    if let Some(error) = error.filter(|error| !error.is_empty()) {
        let _ = write!(
            body,
            r#"<p class="error" role="alert">{}</p>"#,
            escape(error)
        );
    }
    let _ = write!(
        body,
        r#"<form method="post" action="/login" id="login-form"><label for="token">Access token</label><input type="password" id="token" name="token" autocomplete="current-password" required autofocus><input type="hidden" name="next" value="{}"><button type="submit">Sign in</button></form></div>"#,
        escape(next)
    );
    layout("Sign in", None, Nav::None, &body, "")
}

/// A job's phase as a coloured badge.
fn phase_badge(phase: JobPhase, id_attribute: &str) -> String {
    let name = phase.short_name();
    format!(r#"<span{id_attribute} class="phase phase-{name}">{name}</span>"#)
}

/// The link to a job's page.
fn job_href(job_id: &str) -> String {
    format!("/jobs/{}", path_segment(job_id))
}

/// "epoch 3/10" and the step progress as a `<progress>` with its percent.
fn progress_cell(job: &Job) -> String {
    let epochs = format!("epoch {}/{}", job.epochs.len(), planned_epochs(job));
    let total = total_steps(job);
    if total == 0 {
        return format!(r#"{epochs} <span class="muted">· steps not known yet</span>"#);
    }
    let done = job.global_step.min(total);
    let percent = done as f64 / total as f64 * 100.0;
    format!(
        r#"{epochs} <progress value="{done}" max="{total}" title="step {} of {}">{percent:.0}%</progress> <span class="percent">{percent:.0}%</span>"#,
        count_text(job.global_step),
        count_text(total)
    )
}

/// `<option>`s with `selected` on the current value; the first, empty, is "any".
fn options(values: &[String], selected: Option<&str>, any_label: &str) -> String {
    let mut out = format!(r#"<option value="">{any_label}</option>"#);
    for value in values {
        let is_selected = selected.is_some_and(|selected| selected.eq_ignore_ascii_case(value));
        let _ = write!(
            out,
            r#"<option value="{value}"{}>{value}</option>"#,
            if is_selected { " selected" } else { "" },
            value = escape(value)
        );
    }
    out
}

/// The jobs list (`GET /`): a filter form (phase, model, text) and one `tr.job-row` per job that
/// [`matches`] the filter, in the order given.
pub fn jobs_page(viewer: &Viewer, jobs: &[Job], filter: &JobFilter) -> String {
    let mut models: Vec<String> = jobs.iter().map(model_of).collect();
    models.extend(["resnet", "lenet", "wide_lenet"].map(str::to_string));
    if let Some(model) = active(&filter.model) {
        models.push(model.to_string());
    }
    models.sort();
    models.dedup();
    let phases: Vec<String> = PHASE_NAMES.iter().map(|phase| phase.to_string()).collect();
    let shown: Vec<&Job> = jobs.iter().filter(|job| matches(filter, job)).collect();
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Jobs</h1><form class="filters" id="job-filter" method="get" action="/"><label>phase<select name="phase">{}</select></label><label>model<select name="model">{}</select></label><label>search<input type="search" name="q" value="{}" placeholder="id or name"></label><button type="submit">Filter</button> <a href="/">clear</a></form><p class="muted" id="job-count">{} of {} jobs</p>"#,
        options(&phases, active(&filter.phase), "any phase"),
        options(&models, active(&filter.model), "any model"),
        escape(active(&filter.text).unwrap_or("")),
        shown.len(),
        jobs.len()
    );
    body.push_str(
        r#"<table id="jobs"><thead><tr><th>job</th><th>name</th><th>phase</th><th>model</th><th class="num">workers</th><th>progress</th><th class="num">best macro-F1</th><th>created</th></tr></thead><tbody>"#,
    );
    for job in &shown {
        let world_size = job.spec.as_ref().map_or(0, |spec| spec.world_size);
        let best = best_macro_f1(job).map_or("-".to_string(), metric_text);
        let _ = write!(
            body,
            r#"<tr class="job-row" data-job-id="{id}" data-phase="{phase}"><td class="mono"><a href="{href}">{id}</a></td><td>{name}</td><td>{badge}</td><td>{model}</td><td class="num">{world_size}</td><td>{progress}</td><td class="num best-macro-f1">{best}</td><td><time datetime="{datetime}">{created}</time></td></tr>"#,
            id = escape(&job.id),
            phase = job.phase().short_name(),
            href = escape(&job_href(&job.id)),
            name = escape(name_of(job)),
            badge = phase_badge(job.phase(), ""),
            model = escape(&model_of(job)),
            progress = progress_cell(job),
            datetime = rfc3339_of(job.created_unix_ms),
            created = time_of(job.created_unix_ms),
        );
    }
    if shown.is_empty() {
        let message = if jobs.is_empty() {
            "No jobs yet."
        } else {
            "No job matches the filter."
        };
        let _ = write!(
            body,
            r#"<tr class="empty"><td colspan="8">{message}</td></tr>"#
        );
    }
    body.push_str("</tbody></table>");
    layout("Jobs", Some(viewer), Nav::Jobs, &body, "")
}

/// One line of what the spec asks for: "resnet · 4 workers · 10 epochs · batch 64 · lr 0.001 · dataset ...".
fn spec_summary(job: &Job) -> String {
    let Some(spec) = job.spec.as_ref() else {
        return "no spec".to_string();
    };
    let mut parts = vec![
        escape(&model_of(job)),
        format!("{} workers", spec.world_size),
        format!("{} epochs", spec.epochs),
        format!("batch {}", spec.batch_size),
        format!("lr {}", spec.learning_rate),
    ];
    if !spec.dataset_url.is_empty() {
        parts.push(format!(
            r#"dataset <span class="url">{}</span>"#,
            escape(&spec.dataset_url)
        ));
    }
    parts.join(" · ")
}

/// A job's page (`/jobs/{id}`): header, a link to the report, and the live part, refreshed every 1.5 s from
/// `/jobs/{id}/live` until the job finishes. The per-class table's sort survives refreshes.
pub fn job_page(viewer: &Viewer, job: &Job) -> String {
    let href = job_href(&job.id);
    let mut body = String::new();
    let name = name_of(job);
    let _ = write!(
        body,
        r#"<header class="job-header" data-job-id="{id}"><h1><span class="mono">{id}</span>{name_part} {badge}</h1><p id="job-message" class="job-message">{message}</p><p class="spec-summary">{spec}</p><p class="muted">created {created}{finished} · <a id="report-link" href="{href}/report">report</a></p></header>"#,
        id = escape(&job.id),
        name_part = if name.is_empty() {
            String::new()
        } else {
            format!(r#" <span class="job-name">{}</span>"#, escape(name))
        },
        badge = phase_badge(job.phase(), r#" id="job-phase""#),
        message = escape(&job.message),
        spec = spec_summary(job),
        created = time_of(job.created_unix_ms),
        finished = if job.finished_unix_ms > 0 {
            format!(" · finished {}", time_of(job.finished_unix_ms))
        } else {
            String::new()
        },
        href = escape(&href),
    );
    let _ = write!(
        body,
        r#"<div id="live" data-finished="{}" data-src="{}">{}</div><p class="muted" id="live-status" aria-live="polite"></p>"#,
        is_finished(job),
        escape(&format!("{href}/live")),
        job_live_fragment(job)
    );
    layout(
        &format!("job {}", job.id),
        Some(viewer),
        Nav::Jobs,
        &body,
        JOB_PAGE_SCRIPT,
    )
}

/// The job page's script: polls the live fragment and swaps it in, keeps the header's phase and message in
/// step, and sorts `table.sortable` by a clicked header (state kept across swaps).
const JOB_PAGE_SCRIPT: &str = r#"
(function () {
  'use strict';
  var live = document.getElementById('live');
  var status = document.getElementById('live-status');
  var sort = null;
  function applySort() {
    var table = live.querySelector('table.sortable');
    if (!table || !table.tHead) return;
    var headers = table.tHead.rows[0].cells, column = -1;
    for (var i = 0; i < headers.length; i++) {
      if (sort && headers[i].dataset.sortKey === sort.key) {
        column = i;
        headers[i].setAttribute('aria-sort', sort.dir > 0 ? 'ascending' : 'descending');
      } else {
        headers[i].removeAttribute('aria-sort');
      }
    }
    if (column < 0) return;
    var numeric = headers[column].dataset.type === 'number';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var order = numeric ? parseFloat(x) - parseFloat(y) : String(x).localeCompare(String(y));
      return order * sort.dir || (parseInt(a.dataset.classIndex, 10) - parseInt(b.dataset.classIndex, 10));
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.addEventListener('click', function (event) {
    var header = event.target.closest ? event.target.closest('table.sortable th[data-sort-key]') : null;
    if (!header) return;
    var key = header.dataset.sortKey;
    if (sort && sort.key === key) {
      sort = { key: key, dir: -sort.dir };
    } else {
      sort = { key: key, dir: header.dataset.type === 'number' && key !== 'index' ? -1 : 1 };
    }
    applySort();
  });
  function finished() { return live.dataset.finished === 'true'; }
  function swap(html) {
    var template = document.createElement('template');
    template.innerHTML = html.trim();
    var fragment = template.content.firstElementChild;
    live.innerHTML = html;
    if (!fragment) return;
    live.dataset.finished = fragment.dataset.finished === 'true' ? 'true' : 'false';
    var phase = document.getElementById('job-phase');
    if (phase && fragment.dataset.phase) {
      phase.textContent = fragment.dataset.phase;
      phase.className = 'phase phase-' + fragment.dataset.phase;
    }
    var message = document.getElementById('job-message');
    if (message && fragment.hasAttribute('data-message')) message.textContent = fragment.dataset.message;
    applySort();
  }
  function schedule() { if (!finished()) setTimeout(refresh, 1500); }
  function refresh() {
    fetch(live.dataset.src, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (response) {
        if (response.status === 401 || response.status === 403 || response.status === 404) {
          status.textContent = 'live updates stopped (HTTP ' + response.status + ')';
          return null;
        }
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text().then(function (html) {
          swap(html);
          status.textContent = finished() ? '' : 'updated ' + new Date().toLocaleTimeString();
          schedule();
        });
      })
      .catch(function (error) {
        status.textContent = 'update failed (' + error.message + '), retrying';
        schedule();
      });
  }
  schedule();
})();
"#;

/// The part of the job page that updates (`/jobs/{id}/live`): one `<div class="live-fragment">` carrying
/// `data-finished`, `data-phase` and `data-message`, holding the progress line, the loss and epoch curves, the
/// members, recoveries, checkpoints, the latest epoch's per-class table and confusion heatmap (placeholders
/// until an epoch is evaluated).
pub fn job_live_fragment(job: &Job) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<div class="live-fragment" data-finished="{}" data-phase="{}" data-message="{}" data-epochs="{}">"#,
        is_finished(job),
        job.phase().short_name(),
        escape(&job.message),
        job.epochs.len()
    );
    let images_per_second: f64 = job
        .workers
        .iter()
        .map(|worker| worker.images_per_second)
        .filter(|value| value.is_finite())
        .sum();
    let latest = latest_epoch(job);
    let _ = write!(
        out,
        r#"<div class="panel live-summary">{} <span>{}</span> <span>generation {}</span> <span>{} images/s</span> <span>latest macro-F1 {}</span> <span class="biological-macro-f1">biological {}</span>"#,
        phase_badge(job.phase(), ""),
        progress_cell(job),
        job.generation,
        count_text(images_per_second.round() as u64),
        latest.map_or("-".to_string(), |metrics| metric_text(metrics.macro_f1)),
        latest.map_or("-".to_string(), |metrics| metric_text(
            metrics.biological_macro_f1
        )),
    );
    if job.skipped_steps > 0 {
        let _ = write!(
            out,
            r#" <span class="skipped-steps">{} steps skipped (non-finite)</span>"#,
            job.skipped_steps
        );
    }
    out.push_str("</div>");
    out.push_str(r#"<div class="panel"><h2>Training loss</h2>"#);
    if job.loss_curve.is_empty() {
        out.push_str(r#"<p class="placeholder" id="loss-curve-placeholder">No training step reported yet.</p>"#);
    } else {
        out.push_str(&svg::loss_curve(
            "loss-curve",
            &job.loss_curve,
            job.steps_per_epoch,
            total_steps(job),
        ));
    }
    out.push_str(r#"</div><div class="panel"><h2>Evaluation per epoch</h2>"#);
    if job.epochs.is_empty() {
        out.push_str(
            r#"<p class="placeholder" id="epoch-curve-placeholder">No epoch evaluated yet.</p>"#,
        );
    } else {
        out.push_str(&svg::epoch_curve(
            "epoch-curve",
            &job.epochs,
            planned_epochs(job),
        ));
    }
    out.push_str(r#"</div><div class="panel"><h2>Workers</h2>"#);
    out.push_str(&worker_progress_table(&job.workers, r#"id="workers""#));
    out.push_str("</div>");
    if !job.recoveries.is_empty() {
        out.push_str(r#"<div class="panel"><h2>Recoveries</h2>"#);
        out.push_str(&recovery_table(&job.recoveries, r#"id="recoveries""#));
        out.push_str("</div>");
    }
    if !job.checkpoints.is_empty() {
        out.push_str(r#"<div class="panel"><h2>Checkpoints</h2>"#);
        out.push_str(&checkpoint_table(&job.checkpoints, r#"id="checkpoints""#));
        out.push_str("</div>");
    }
    out.push_str(r#"<div class="panel"><h2>Per class</h2>"#);
    match latest {
        Some(metrics) if !metrics.per_class.is_empty() => {
            out.push_str(&per_class_table(
                metrics,
                &job.class_names,
                r#"id="per-class" class="sortable""#,
                ClassOrder::ByIndex,
            ));
        }
        _ => out.push_str(r#"<p class="placeholder" id="per-class-placeholder">No epoch evaluated yet: per-class metrics appear after the first evaluation.</p>"#),
    }
    out.push_str(r#"</div><div class="panel"><h2>Confusion matrix</h2>"#);
    let heatmap =
        latest.and_then(|metrics| svg::confusion_heatmap("confusion", metrics, &job.class_names));
    match heatmap {
        Some(heatmap) => {
            let _ = write!(out, r#"<div class="chart-scroll">{heatmap}</div>"#);
        }
        None => out.push_str(r#"<p class="placeholder" id="confusion-placeholder">No epoch evaluated yet: the confusion matrix appears after the first evaluation.</p>"#),
    }
    out.push_str("</div></div>");
    out
}

/// The workers (`/workers`): id, address, threads, idle or busy, current job, generation/rank, heartbeat age,
/// and the throughput its running job last reported for it.
pub fn workers_page(viewer: &Viewer, workers: &[WorkerInfo], jobs: &[Job]) -> String {
    let now_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64);
    workers_page_at(viewer, workers, jobs, now_unix_ms)
}

/// [`workers_page`] as seen at `now_unix_ms` (heartbeat ages are relative to it).
pub fn workers_page_at(
    viewer: &Viewer,
    workers: &[WorkerInfo],
    jobs: &[Job],
    now_unix_ms: i64,
) -> String {
    let busy = workers
        .iter()
        .filter(|worker| !worker.current_job.is_empty())
        .count();
    let mut body = format!(
        r#"<h1>Workers</h1><p class="muted" id="worker-count">{} workers, {busy} busy, {} idle</p>"#,
        workers.len(),
        workers.len() - busy
    );
    body.push_str(r#"<table id="workers-list"><thead><tr><th>worker</th><th>peer address</th><th class="num">threads</th><th>state</th><th>current job</th><th>generation / rank</th><th>last heartbeat</th><th class="num">images/s</th></tr></thead><tbody>"#);
    for worker in workers {
        let is_busy = !worker.current_job.is_empty();
        let job = jobs.iter().find(|job| job.id == worker.current_job);
        let progress = job.and_then(|job| {
            job.workers
                .iter()
                .find(|progress| progress.worker_id == worker.worker_id)
        });
        let current_job = if is_busy {
            format!(
                r#"<a href="{}">{}</a>"#,
                escape(&job_href(&worker.current_job)),
                escape(&worker.current_job)
            )
        } else {
            "-".to_string()
        };
        let placement = if is_busy {
            format!("{} / {}", worker.generation, worker.rank)
        } else {
            "-".to_string()
        };
        let heartbeat = if worker.last_heartbeat_unix_ms > 0 {
            format!(
                r#"<time datetime="{}" title="{}">{} ago</time>"#,
                rfc3339_of(worker.last_heartbeat_unix_ms),
                time_of(worker.last_heartbeat_unix_ms),
                duration_text((now_unix_ms - worker.last_heartbeat_unix_ms).max(0))
            )
        } else {
            "never".to_string()
        };
        let images_per_second = progress.map_or("-".to_string(), |progress| {
            format!("{:.1}", progress.images_per_second)
        });
        let state = if is_busy { "busy" } else { "idle" };
        let _ = write!(
            body,
            r#"<tr class="worker-row {state}" data-worker-id="{id}"><td class="mono">{id}</td><td class="mono">{address}</td><td class="num">{threads}</td><td><span class="state state-{state}">{state}</span></td><td>{current_job}</td><td>{placement}</td><td>{heartbeat}</td><td class="num">{images_per_second}</td></tr>"#,
            id = escape(&worker.worker_id),
            address = escape(&worker.peer_address),
            threads = worker.threads,
        );
    }
    if workers.is_empty() {
        body.push_str(r#"<tr class="empty"><td colspan="8">No worker is registered.</td></tr>"#);
    }
    body.push_str("</tbody></table>");
    layout("Workers", Some(viewer), Nav::Workers, &body, "")
}

/// The model registry (`/models`): one `tr.model-row` per version, with its test metrics; a promote form per
/// row when the viewer may promote (POST `/models/promote`: `name`, `version`, `alias`, `csrf`).
pub fn models_page(viewer: &Viewer, models: &[ModelVersion], notice: Option<&str>) -> String {
    let mut body = String::from("<h1>Models</h1>");
    if let Some(notice) = notice.filter(|notice| !notice.is_empty()) {
        let _ = write!(
            body,
            r#"<p class="notice" role="status">{}</p>"#,
            escape(notice)
        );
    }
    let promote_header = if viewer.can_promote {
        "<th>promote</th>"
    } else {
        ""
    };
    let _ = write!(
        body,
        r#"<table id="models"><thead><tr><th>name</th><th class="num">version</th><th>aliases</th><th>architecture</th><th class="num">classes</th><th>resize</th><th>job</th><th>created</th><th class="num">macro-F1</th><th class="num">accuracy</th><th class="num">balanced acc.</th>{promote_header}</tr></thead><tbody>"#
    );
    for model in models {
        let aliases: String = model
            .aliases
            .iter()
            .map(|alias| format!(r#"<span class="alias">{}</span>"#, escape(alias)))
            .collect();
        let metrics = model.test_metrics.as_ref();
        let metric = |value: fn(&plankton_proto::v1::EvalMetrics) -> f64| {
            metrics.map_or("-".to_string(), |metrics| metric_text(value(metrics)))
        };
        let job_link = if model.job_id.is_empty() {
            "-".to_string()
        } else {
            format!(
                r#"<a href="{}">{}</a>"#,
                escape(&job_href(&model.job_id)),
                escape(&model.job_id)
            )
        };
        let _ = write!(
            body,
            r#"<tr class="model-row" data-model-name="{name}" data-model-version="{version}"><td>{name}</td><td class="num">{version}</td><td class="aliases">{aliases}</td><td>{architecture}</td><td class="num">{classes}</td><td>{resize}</td><td class="mono">{job_link}</td><td>{created}</td><td class="num">{macro_f1}</td><td class="num">{accuracy}</td><td class="num">{balanced}</td>"#,
            name = escape(&model.name),
            version = model.version,
            architecture = escape(&model.architecture),
            classes = model.class_names.len(),
            resize = escape(&model.resize_mode),
            created = time_of(model.created_unix_ms),
            macro_f1 = metric(|metrics| metrics.macro_f1),
            accuracy = metric(|metrics| metrics.accuracy),
            balanced = metric(|metrics| metrics.balanced_accuracy),
        );
        if viewer.can_promote {
            let _ = write!(
                body,
                r#"<td><form class="promote" method="post" action="/models/promote"><input type="hidden" name="name" value="{}"><input type="hidden" name="version" value="{}"><input type="hidden" name="csrf" value="{}"><input type="text" name="alias" value="production" required aria-label="alias"><button type="submit">Promote</button></form></td>"#,
                escape(&model.name),
                model.version,
                escape(&viewer.csrf_token)
            );
        }
        body.push_str("</tr>");
    }
    if models.is_empty() {
        let columns = if viewer.can_promote { 12 } else { 11 };
        let _ = write!(
            body,
            r#"<tr class="empty"><td colspan="{columns}">No model registered yet: every succeeded job registers one.</td></tr>"#
        );
    }
    body.push_str("</tbody></table>");
    layout("Models", Some(viewer), Nav::Models, &body, "")
}

/// The standard reason phrase of the statuses the dashboard answers with.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// An error page: the status, its reason, the message; the nav when someone is signed in.
pub fn error_page(viewer: Option<&Viewer>, status: u16, message: &str) -> String {
    let reason = reason_phrase(status);
    let body = format!(
        r#"<h1 class="error-status" data-status="{status}">{status} {reason}</h1><p class="error" role="alert">{}</p><p><a href="/">Back to the jobs</a></p>"#,
        escape(&truncate(message, 2000))
    );
    layout(&format!("{status} {reason}"), viewer, Nav::None, &body, "")
}
