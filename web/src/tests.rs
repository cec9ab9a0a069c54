//! Tests over realistic jobs: a few evaluated epochs of a 3- to 40-class run, members, recoveries, checkpoints.

use plankton_proto::v1::{
    Checkpoint, ClassMetrics, EvalMetrics, Job, JobPhase, JobSpec, LossPoint, ModelVersion,
    Recovery, WorkerInfo, WorkerProgress,
};

use crate::pages::{self, JobFilter, Viewer};
use crate::{Thumbnail, escape, job_report, svg};

const STEPS_PER_EPOCH: u64 = 50;

/// A job with `classes` classes that evaluated `epochs` epochs (of 10 planned) and is still training, with
/// imbalanced class counts, a loss curve, two members, a recovery and a checkpoint.
fn sample_job(classes: usize, epochs: u32) -> Job {
    let class_names: Vec<String> = (0..classes)
        .map(|index| match index % 4 {
            0 => format!("Chaetoceros_{index}"),
            1 => format!("detritus {index}"),
            2 => format!("Rhizosolenia_pungens_very_long_name_{index}"),
            _ => format!("copepod{index}"),
        })
        .collect();
    // Zipf-like: class 0 has thousands, the last few a handful.
    let train_class_counts: Vec<u64> = (0..classes)
        .map(|index| (4000 / (index as u64 + 1).pow(2)).max(2))
        .collect();
    let test_class_counts: Vec<u64> = train_class_counts
        .iter()
        .map(|count| (count / 4).max(1))
        .collect();
    let evaluated: Vec<EvalMetrics> = (1..=epochs)
        .map(|epoch| epoch_metrics(epoch, &class_names, &test_class_counts))
        .collect();
    let global_step = u64::from(epochs) * STEPS_PER_EPOCH + 17;
    let loss_curve: Vec<LossPoint> = (1..=global_step)
        .step_by(3)
        .map(|step| LossPoint {
            global_step: step,
            loss: 3.5 / (1.0 + step as f64 / 40.0) + 0.05 * ((step % 7) as f64 / 7.0),
            images_per_second: 820.0,
            unix_ms: 1_796_088_604_000 + step as i64 * 250,
        })
        .collect();
    Job {
        id: "job-7f3a".to_string(),
        spec: Some(JobSpec {
            name: "whoi-resnet".to_string(),
            dataset_url: "s3://plankton/whoi".to_string(),
            world_size: 2,
            model: String::new(),
            epochs: 10,
            batch_size: 64,
            learning_rate: 0.001,
            seed: 42,
            min_workers: 1,
            max_recoveries: 10,
            keep_checkpoints: 2,
            ..Default::default()
        }),
        phase: JobPhase::Training as i32,
        message: "training epoch 3".to_string(),
        created_unix_ms: 1_796_088_604_000,
        epochs: evaluated,
        workers: (0..2)
            .map(|rank| WorkerProgress {
                rank,
                worker_id: format!("w{}", rank + 1),
                epoch: epochs + 1,
                step: 17,
                steps_per_epoch: STEPS_PER_EPOCH,
                loss: 0.8,
                images_per_second: 410.0,
                loaded_objects: 5000,
                skipped_objects: 1,
                generation: 1,
                global_step,
                virtual_shards: vec![rank, rank + 2],
                skipped_steps: 0,
                ..WorkerProgress::default()
            })
            .collect(),
        class_names,
        class_weights: (0..classes).map(|index| 0.2 + index as f32 * 0.1).collect(),
        train_objects: train_class_counts.iter().sum(),
        test_objects: test_class_counts.iter().sum(),
        skipped_objects: 2,
        generation: 1,
        recoveries: vec![Recovery {
            generation: 1,
            reason: "worker w3 missed 3 heartbeats".to_string(),
            lost_workers: vec!["w3".to_string()],
            joined_workers: vec![],
            detected_unix_ms: 1_796_088_700_000,
            formed_unix_ms: 1_796_088_701_000,
            resumed_unix_ms: 1_796_088_703_400,
            resumed_from_step: 60,
            steps_lost: 1,
            world_size: 2,
            state_source: "worker w1 (rank 0)".to_string(),
            fault: true,
        }],
        checkpoints: vec![Checkpoint {
            url: "s3://plankton/whoi/models/job-7f3a/checkpoints/step-50".to_string(),
            global_step: 50,
            epoch: 1,
            unix_ms: 1_796_088_690_000,
        }],
        global_step,
        steps_per_epoch: STEPS_PER_EPOCH,
        virtual_shard_count: 4,
        skipped_meta_rows: 3,
        skipped_meta_row_examples: vec!["meta.csv:17: unknown label 'foo'".to_string()],
        loss_curve,
        train_class_counts,
        test_class_counts,
        ..Default::default()
    }
}

/// One epoch's metrics: better with every epoch, worse for rarer classes; a confusion matrix that mostly hits
/// the diagonal and spills into the next class.
fn epoch_metrics(epoch: u32, class_names: &[String], test_counts: &[u64]) -> EvalMetrics {
    let classes = class_names.len();
    let skill = 1.0 - 0.5 / f64::from(epoch);
    let mut confusion = vec![0u64; classes * classes];
    for (true_class, &support) in test_counts.iter().enumerate() {
        let rarity = true_class as f64 / classes as f64;
        let correct = ((support as f64) * skill * (1.0 - 0.5 * rarity)).round() as u64;
        confusion[true_class * classes + true_class] = correct;
        confusion[true_class * classes + (true_class + 1) % classes] += support - correct;
    }
    let per_class: Vec<ClassMetrics> = class_names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let recall = confusion[index * classes + index] as f64 / test_counts[index] as f64;
            let predicted: u64 = (0..classes)
                .map(|row| confusion[row * classes + index])
                .sum();
            let precision = if predicted == 0 {
                0.0
            } else {
                confusion[index * classes + index] as f64 / predicted as f64
            };
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                class_name: name.clone(),
                precision,
                recall,
                f1,
                support: test_counts[index],
            }
        })
        .collect();
    let macro_f1 = per_class.iter().map(|class| class.f1).sum::<f64>() / classes.max(1) as f64;
    EvalMetrics {
        epoch,
        accuracy: skill * 0.95,
        macro_f1,
        weighted_f1: skill * 0.9,
        balanced_accuracy: skill * 0.8,
        test_loss: 2.0 / f64::from(epoch),
        per_class,
        num_classes: classes as u32,
        confusion,
        train_loss: 2.2 / f64::from(epoch),
        biological_macro_f1: 0.4321,
        biological_classes: classes as u32,
    }
}

fn viewer() -> Viewer {
    Viewer {
        name: "ada".to_string(),
        role: "operator".to_string(),
        can_promote: true,
        csrf_token: "csrf-123".to_string(),
    }
}

/// Occurrences of `needle` in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The `<svg id="{id}" ...>...</svg>` element of `html`.
fn svg_element<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!(r#"<svg id="{id}""#))
        .unwrap_or_else(|| panic!("no svg #{id}"));
    let end = html[start..].find("</svg>").expect("svg closes") + start;
    &html[start..end + "</svg>".len()]
}

/// The value of attribute `name` in the first tag of `element`.
fn attribute<'a>(element: &'a str, name: &str) -> &'a str {
    let marker = format!(r#" {name}=""#);
    let start = element.find(&marker).unwrap_or_else(|| panic!("no {name}")) + marker.len();
    let end = element[start..].find('"').expect("attribute closes") + start;
    &element[start..end]
}

/// Every `<rect class="cell...` tag of a heatmap.
fn cells(heatmap: &str) -> Vec<&str> {
    heatmap
        .split(r#"<rect class="cell"#)
        .skip(1)
        .map(|rest| &rest[..rest.find('>').expect("tag closes")])
        .collect()
}

fn luminance(color: &str) -> u32 {
    let channel =
        |range: std::ops::Range<usize>| u32::from_str_radix(&color[range], 16).expect("hex");
    channel(1..3) * 299 + channel(3..5) * 587 + channel(5..7) * 114
}

#[test]
fn heatmap_has_one_cell_per_class_pair() {
    for classes in [3, 40] {
        let job = sample_job(classes, 2);
        let metrics = job.epochs.last().expect("evaluated");
        let heatmap =
            svg::confusion_heatmap("confusion", metrics, &job.class_names).expect("a heatmap");
        let cells = cells(&heatmap);
        assert_eq!(cells.len(), classes * classes, "{classes} classes");
        assert_eq!(count(&heatmap, "<title>true: "), classes * classes);
        let first = cells[0];
        assert_eq!(attribute(first, "data-true"), "0");
        assert_eq!(attribute(first, "data-predicted"), "0");
        assert_eq!(
            attribute(first, "data-count"),
            metrics.confusion[0].to_string()
        );
        // Long names are cut on the axes but whole in the titles.
        assert!(heatmap.contains("Rhizosolenia_pungens_very_long_name_2</title>"));
    }
}

#[test]
fn heatmap_is_absent_without_a_well_formed_matrix() {
    let empty = EvalMetrics::default();
    assert!(svg::confusion_heatmap("confusion", &empty, &[]).is_none());
    let ragged = EvalMetrics {
        num_classes: 3,
        confusion: vec![1, 2, 3, 4, 5],
        ..Default::default()
    };
    assert!(svg::confusion_heatmap("confusion", &ragged, &[]).is_none());
}

#[test]
fn heatmap_colour_darkens_with_count_on_a_log_scale() {
    let counts: Vec<u64> = vec![0, 1, 2, 5, 10, 100, 1000, 5000, 9999];
    let metrics = EvalMetrics {
        epoch: 1,
        num_classes: 3,
        confusion: counts.clone(),
        ..Default::default()
    };
    let heatmap = svg::confusion_heatmap("confusion", &metrics, &[]).expect("a heatmap");
    let luminances: Vec<u32> = cells(&heatmap)
        .iter()
        .map(|cell| luminance(attribute(cell, "fill")))
        .collect();
    for pair in luminances.windows(2) {
        assert!(
            pair[0] >= pair[1],
            "a larger count is never lighter: {luminances:?}"
        );
    }
    assert!(luminances[0] > luminances[8]);
    // Log, not linear: a count of 10 out of 9999 is already visibly coloured (a quarter of the scale).
    let fraction = svg::heat_fraction(10, 9999);
    assert!(fraction > 0.25 && fraction < 0.3, "{fraction}");
    assert_eq!(svg::heat_color(0.0), "#f7fbff");
    assert_eq!(svg::heat_color(1.0), "#08306b");
    for step in 0..100 {
        let lighter = svg::heat_color(f64::from(step) / 100.0);
        let darker = svg::heat_color(f64::from(step + 1) / 100.0);
        assert!(luminance(&lighter) >= luminance(&darker));
    }
}

#[test]
fn epoch_curve_has_one_macro_f1_point_per_epoch() {
    for epochs in [1, 4, 10] {
        let job = sample_job(5, epochs);
        let curve = svg::epoch_curve("epoch-curve", &job.epochs, 10);
        assert_eq!(
            count(&curve, r#"class="point" data-epoch="#),
            5 * epochs as usize
        );
        assert_eq!(
            count(&curve, r#"data-series="macro_f1" data-value"#),
            epochs as usize
        );
        for epoch in 1..=epochs {
            assert!(curve.contains(&format!(
                r#"<circle class="point" data-epoch="{epoch}" data-series="macro_f1""#
            )));
        }
    }
    // The live fragment grows by one point per evaluated epoch.
    let fragment_points = |epochs| {
        let fragment = pages::job_live_fragment(&sample_job(3, epochs));
        count(
            svg_element(&fragment, "epoch-curve"),
            r#"data-series="macro_f1" data-value"#,
        )
    };
    assert_eq!(fragment_points(2), 2);
    assert_eq!(fragment_points(3), 3);
}

#[test]
fn loss_polyline_has_a_point_per_loss_point() {
    let job = sample_job(4, 3);
    let curve = svg::loss_curve("loss-curve", &job.loss_curve, STEPS_PER_EPOCH, 500);
    let polyline_start = curve.find(r#"<polyline class="series""#).expect("a series");
    let polyline = &curve[polyline_start..];
    let points = attribute(polyline, "points");
    assert_eq!(points.split(' ').count(), job.loss_curve.len());
    assert!(points.split(' ').all(|pair| {
        let (x, y) = pair.split_once(',').expect("x,y");
        x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok()
    }));
    // Epoch boundaries at every multiple of the steps per epoch up to the planned 500 steps.
    assert_eq!(count(&curve, r#"class="epoch-boundary""#), 9);
    assert!(curve.contains(r#"class="tick""#));
}

#[test]
fn class_distribution_has_a_train_and_a_test_bar_per_class() {
    let job = sample_job(40, 1);
    let chart = svg::class_distribution(
        "class-distribution",
        &job.class_names,
        &job.train_class_counts,
        &job.test_class_counts,
    );
    assert_eq!(count(&chart, r#"data-split="train""#), 40);
    assert_eq!(count(&chart, r#"data-split="test""#), 40);
    assert!(chart.contains(">1k<"), "log axis labels powers of ten");
}

#[test]
fn report_is_self_contained_with_every_section() {
    let mut job = sample_job(6, 4);
    job.phase = JobPhase::Succeeded as i32;
    job.finished_unix_ms = 1_796_089_604_000;
    job.model_url = "s3://plankton/whoi/models/job-7f3a/model.safetensors".to_string();
    let jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46];
    let thumbnails: Vec<Thumbnail> = (0..6)
        .flat_map(|class| {
            let jpeg = jpeg.clone();
            (0..2).map(move |copy| Thumbnail {
                objid: 1000 + class * 10 + copy,
                true_class: class as u32,
                predicted_class: (class as u32 + 1) % 6,
                confidence: 0.93,
                jpeg: jpeg.clone(),
            })
        })
        .collect();
    let report = job_report(&job, &thumbnails);
    assert!(report.contains("<title>plankton-cluster report: job-7f3a</title>"));
    for section in [
        "spec",
        "data",
        "curves",
        "per-class",
        "confusion",
        "misclassified",
        "recoveries",
        "checkpoints",
    ] {
        assert_eq!(
            count(&report, &format!(r#"<section id="{section}">"#)),
            1,
            "section {section}"
        );
    }
    for forbidden in [
        "http://",
        "https://",
        r#"src="/"#,
        r#"href="/"#,
        "<script",
        "url(",
    ] {
        assert!(
            !report.contains(forbidden),
            "the report references {forbidden}"
        );
    }
    assert!(report.contains(r#"<svg id="class-distribution""#));
    assert!(report.contains(r#"<svg id="loss-curve""#));
    assert!(report.contains(r#"<svg id="epoch-curve""#));
    assert_eq!(
        count(
            svg_element(&report, "confusion-matrix"),
            r#"<rect class="cell"#
        ),
        36
    );
    // Five worst classes, two thumbnails each, inlined.
    assert_eq!(
        count(&report, r#"<figure class="thumbnail" data-objid="#),
        10
    );
    assert_eq!(
        count(&report, r#"<img src="data:image/jpeg;base64,/9j/4AAQSkY=""#),
        10
    );
    assert!(report.contains("(p=0.93)"));
    assert!(report.contains(&job.model_url));
    // The per-class table is worst F1 first.
    let table_start = report.find(r#"class="per-class-table""#).expect("table");
    let f1_values: Vec<f64> = report[table_start..]
        .split(r#"<td class="num f1" data-value=""#)
        .skip(1)
        .map(|rest| rest[..rest.find('"').expect("closes")].parse().expect("f1"))
        .collect();
    assert_eq!(f1_values.len(), 6);
    assert!(
        f1_values.windows(2).all(|pair| pair[0] <= pair[1]),
        "{f1_values:?}"
    );
}

/// The headline numbers carry the biological macro-F1 next to the macro-F1.
#[test]
fn report_shows_the_biological_macro_f1() {
    let report = job_report(&sample_job(3, 2), &[]);
    assert!(
        report.contains(r#"<dt>biological macro-F1</dt><dd class="biological-macro-f1">0.432"#),
        "{report}"
    );
}

#[test]
fn report_says_so_when_nothing_was_misclassified() {
    let report = job_report(&sample_job(3, 2), &[]);
    assert!(report.contains(r#"id="no-misclassified""#));
    assert!(!report.contains("<figure"));
}

#[test]
fn hostile_names_are_escaped_everywhere() {
    let hostile = r#"<script>alert("x")</script>'"#;
    let mut job = sample_job(3, 2);
    job.id = format!("job{hostile}");
    job.spec.as_mut().expect("spec").name = hostile.to_string();
    job.message = hostile.to_string();
    job.class_names[1] = hostile.to_string();
    for metrics in &mut job.epochs {
        metrics.per_class[1].class_name = hostile.to_string();
    }
    job.workers[0].worker_id = hostile.to_string();
    job.recoveries[0].reason = hostile.to_string();
    let thumbnails = [Thumbnail {
        objid: 1,
        true_class: 1,
        predicted_class: 0,
        confidence: 0.5,
        jpeg: vec![1, 2, 3],
    }];
    let viewer = Viewer {
        name: hostile.to_string(),
        role: hostile.to_string(),
        can_promote: true,
        csrf_token: hostile.to_string(),
    };
    let model = ModelVersion {
        name: hostile.to_string(),
        version: 1,
        job_id: hostile.to_string(),
        aliases: vec![hostile.to_string()],
        ..Default::default()
    };
    let worker = WorkerInfo {
        worker_id: hostile.to_string(),
        peer_address: hostile.to_string(),
        current_job: job.id.clone(),
        ..Default::default()
    };
    let filter = JobFilter {
        text: Some(hostile.to_string()),
        ..Default::default()
    };
    let rendered = [
        job_report(&job, &thumbnails),
        pages::job_page(&viewer, &job),
        pages::job_live_fragment(&job),
        pages::jobs_page(&viewer, std::slice::from_ref(&job), &JobFilter::default()),
        pages::jobs_page(&viewer, std::slice::from_ref(&job), &filter),
        pages::workers_page(&viewer, &[worker], std::slice::from_ref(&job)),
        pages::models_page(&viewer, &[model], Some(hostile)),
        pages::login_page(Some(hostile), hostile),
        pages::error_page(Some(&viewer), 404, hostile),
    ];
    for html in &rendered {
        assert!(!html.contains("<script>alert"), "unescaped in:\n{html}");
        assert!(!html.contains(r#"alert("x")"#));
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;"));
    }
    assert_eq!(
        escape(r#"<a href="x">&'"#),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
    // Links percent-encode the id.
    assert!(
        rendered[3].contains(r#"href="/jobs/job%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%27""#)
    );
}

#[test]
fn filter_matches_phase_model_and_text() {
    let mut resnet = sample_job(3, 1);
    resnet.id = "job-aaa".to_string();
    let mut lenet = sample_job(3, 1);
    lenet.id = "job-bbb".to_string();
    lenet.phase = JobPhase::Failed as i32;
    {
        let spec = lenet.spec.as_mut().expect("spec");
        spec.model = "lenet".to_string();
        spec.name = "Quick LeNet".to_string();
    }
    let filter = |phase: Option<&str>, model: Option<&str>, text: Option<&str>| JobFilter {
        phase: phase.map(str::to_string),
        model: model.map(str::to_string),
        text: text.map(str::to_string),
    };
    let everything = filter(None, None, None);
    assert!(pages::matches(&everything, &resnet) && pages::matches(&everything, &lenet));
    let blank = filter(Some(""), Some(" "), Some(""));
    assert!(pages::matches(&blank, &resnet) && pages::matches(&blank, &lenet));
    let failed = filter(Some("failed"), None, None);
    assert!(!pages::matches(&failed, &resnet) && pages::matches(&failed, &lenet));
    let resnet_model = filter(None, Some("resnet"), None);
    assert!(
        pages::matches(&resnet_model, &resnet),
        "an empty model is resnet"
    );
    assert!(!pages::matches(&resnet_model, &lenet));
    let by_name = filter(None, None, Some("quick"));
    assert!(!pages::matches(&by_name, &resnet) && pages::matches(&by_name, &lenet));
    let by_id = filter(None, None, Some("AAA"));
    assert!(pages::matches(&by_id, &resnet) && !pages::matches(&by_id, &lenet));
    let both = filter(Some("training"), Some("lenet"), None);
    assert!(!pages::matches(&both, &resnet) && !pages::matches(&both, &lenet));

    let page = pages::jobs_page(&viewer(), &[resnet, lenet], &failed);
    assert_eq!(count(&page, r#"<tr class="job-row""#), 1);
    assert!(page.contains(r#"data-job-id="job-bbb""#));
    assert!(page.contains(r#"<option value="failed" selected>"#));
    assert!(page.contains(r#"<table id="jobs">"#));
}

#[test]
fn jobs_page_shows_progress_and_best_macro_f1() {
    let job = sample_job(3, 4);
    let best = job
        .epochs
        .iter()
        .map(|metrics| metrics.macro_f1)
        .fold(0.0, f64::max);
    let page = pages::jobs_page(&viewer(), &[job], &JobFilter::default());
    assert!(page.contains(&format!("{best:.4}")));
    assert!(page.contains("epoch 4/10"));
    assert!(page.contains(r#"<progress value="217" max="500""#));
    assert!(page.contains(r#"<a href="/jobs/job-7f3a">job-7f3a</a>"#));
    assert!(page.contains("<td>resnet</td>"));
    // The shared layout: nav, the viewer, a logout form with the token.
    assert!(page.contains(r#"<a class="nav-workers" href="/workers">Workers</a>"#));
    assert!(page.contains(r#"<form method="post" action="/logout""#));
    assert!(page.contains(r#"name="csrf" value="csrf-123""#));
    let empty = pages::jobs_page(&viewer(), &[], &JobFilter::default());
    assert_eq!(count(&empty, r#"class="job-row""#), 0);
}

#[test]
fn job_without_epochs_renders_placeholders() {
    let mut job = sample_job(5, 0);
    job.phase = JobPhase::Loading as i32;
    job.loss_curve.clear();
    job.workers.clear();
    job.recoveries.clear();
    job.checkpoints.clear();
    let fragment = pages::job_live_fragment(&job);
    assert!(fragment.starts_with(r#"<div class="live-fragment" data-finished="false""#));
    assert!(!fragment.contains("<svg"), "no chart without data");
    assert!(fragment.contains(r#"id="per-class-placeholder""#));
    assert!(fragment.contains(r#"id="confusion-placeholder""#));
    assert!(fragment.contains(r#"id="epoch-curve-placeholder""#));
    assert!(fragment.contains(r#"<table id="workers">"#));
    let page = pages::job_page(&viewer(), &job);
    assert!(page.contains(r#"<div id="live" data-finished="false""#));
    let report = job_report(&job, &[]);
    assert!(report.contains(r#"<section id="misclassified">"#));
    // A bare job (no spec, nothing) renders everywhere too.
    let bare = Job::default();
    let _ = job_report(&bare, &[]);
    let _ = pages::job_page(&viewer(), &bare);
    let _ = pages::jobs_page(&viewer(), &[bare], &JobFilter::default());
}

#[test]
fn job_page_polls_until_finished_and_keeps_the_sort() {
    let running = sample_job(4, 3);
    let page = pages::job_page(&viewer(), &running);
    assert!(
        page.contains(r#"<div id="live" data-finished="false" data-src="/jobs/job-7f3a/live">"#)
    );
    assert!(page.contains(r#"<a id="report-link" href="/jobs/job-7f3a/report">report</a>"#));
    assert!(page.contains("setTimeout(refresh, 1500)"));
    assert!(page.contains("credentials: 'same-origin'"));
    let fragment = pages::job_live_fragment(&running);
    assert!(
        page.contains(&fragment),
        "the page embeds the fragment as served"
    );
    assert!(fragment.contains(r#"<table id="per-class" class="sortable">"#));
    assert!(fragment.contains(r#"<svg id="loss-curve""#));
    assert!(fragment.contains(r#"<svg id="confusion""#));
    assert!(fragment.contains(r#"<table id="recoveries">"#));
    assert!(fragment.contains(r#"<table id="checkpoints">"#));
    assert!(
        !fragment.contains("<script"),
        "the script lives in the page"
    );
    assert_eq!(count(&fragment, r#"<tr class="class-row""#), 4);
    let mut done = running;
    done.phase = JobPhase::Succeeded as i32;
    assert!(
        pages::job_live_fragment(&done).starts_with(
            r#"<div class="live-fragment" data-finished="true" data-phase="succeeded""#
        )
    );
    assert!(pages::job_page(&viewer(), &done).contains(r#"<div id="live" data-finished="true""#));
}

#[test]
fn workers_page_shows_state_and_throughput() {
    let job = sample_job(3, 1);
    let workers = [
        WorkerInfo {
            worker_id: "w1".to_string(),
            peer_address: "10.0.0.5:7100".to_string(),
            current_job: job.id.clone(),
            last_heartbeat_unix_ms: 1_796_088_604_000,
            threads: 8,
            generation: 1,
            rank: 0,
        },
        WorkerInfo {
            worker_id: "w9".to_string(),
            peer_address: "10.0.0.9:7100".to_string(),
            last_heartbeat_unix_ms: 1_796_088_600_000,
            threads: 4,
            ..Default::default()
        },
    ];
    let page = pages::workers_page_at(&viewer(), &workers, &[job], 1_796_088_606_500);
    assert!(page.contains(r#"<table id="workers-list">"#));
    assert_eq!(count(&page, r#"<tr class="worker-row"#), 2);
    assert!(page.contains(r#"<tr class="worker-row busy" data-worker-id="w1">"#));
    assert!(page.contains(r#"<tr class="worker-row idle" data-worker-id="w9">"#));
    assert!(page.contains(">2.5 s ago<"));
    assert!(page.contains(">410.0<"));
    assert!(page.contains(r#"<a href="/jobs/job-7f3a">job-7f3a</a>"#));
}

#[test]
fn models_page_offers_promotion_only_to_promoters() {
    let models = [ModelVersion {
        name: "whoi".to_string(),
        version: 3,
        job_id: "job-7f3a".to_string(),
        architecture: "resnet".to_string(),
        class_names: vec!["a".to_string(), "b".to_string()],
        resize_mode: "stretch".to_string(),
        test_metrics: Some(EvalMetrics {
            macro_f1: 0.8125,
            accuracy: 0.9,
            ..Default::default()
        }),
        aliases: vec!["production".to_string()],
        created_unix_ms: 1_796_088_604_000,
        ..Default::default()
    }];
    let page = pages::models_page(&viewer(), &models, Some("whoi v3 is now production"));
    assert!(page.contains(r#"<table id="models">"#));
    assert!(
        page.contains(r#"<tr class="model-row" data-model-name="whoi" data-model-version="3">"#)
    );
    assert!(page.contains(r#"<form class="promote" method="post" action="/models/promote">"#));
    assert!(page.contains(r#"<input type="hidden" name="version" value="3">"#));
    assert!(page.contains(r#"<input type="hidden" name="csrf" value="csrf-123">"#));
    assert!(page.contains(r#"name="alias" value="production""#));
    assert!(page.contains("0.8125"));
    assert!(page.contains(r#"class="notice""#));
    let reader = Viewer {
        can_promote: false,
        ..viewer()
    };
    let page = pages::models_page(&reader, &models, None);
    assert!(!page.contains("/models/promote"));
}

#[test]
fn login_and_error_pages() {
    let login = pages::login_page(Some("invalid token"), "/jobs/a");
    assert!(login.contains(r#"<form method="post" action="/login""#));
    assert!(login.contains(r#"<input type="password" id="token" name="token""#));
    assert!(login.contains(r#"<input type="hidden" name="next" value="/jobs/a">"#));
    assert!(login.contains("invalid token"));
    assert!(!login.contains("<script"));
    assert!(!login.contains("/logout"));
    let clean = pages::login_page(None, "/");
    assert!(!clean.contains(r#"class="error""#));
    let error = pages::error_page(None, 404, "no job x");
    assert!(error.contains("404 Not Found"));
    assert!(error.contains("no job x"));
}

#[test]
fn nice_ticks_cover_the_range_without_an_extra_step() {
    for (min, max) in [
        (0.0, 3.5),
        (0.0, 1.0),
        (0.0, 0.042),
        (0.0, 12_345.0),
        (0.2, 0.9),
    ] {
        let (ticks, step) = svg::nice_ticks(min, max, 5);
        let first = *ticks.first().expect("ticks");
        let last = *ticks.last().expect("ticks");
        assert!(
            first <= min + 1e-12 && first > min - step,
            "{min}..{max}: {ticks:?}"
        );
        assert!(
            last >= max - 1e-12 && last < max + step,
            "{min}..{max}: {ticks:?}"
        );
        let mantissa = step / 10f64.powf(step.log10().floor());
        assert!(
            [1.0, 2.0, 5.0, 10.0]
                .iter()
                .any(|nice| (mantissa - nice).abs() < 1e-6),
            "step {step}"
        );
    }
    assert_eq!(svg::nice_ticks(0.0, 1.0, 5).0.first(), Some(&0.0));
}

/// Writes sample pages (a 40-class running job page whose `live` answer is the finished job, a 3-class job page,
/// the jobs list, a report, a job without epochs) under `$TMPDIR/plankton-web-samples`, to look at in a
/// browser: `python3 -m http.server -d $TMPDIR/plankton-web-samples`, then `/jobs/job-7f3a/`.
#[test]
#[ignore = "writes files; run by hand to look at the pages"]
fn write_sample_pages() {
    let directory = std::env::temp_dir().join("plankton-web-samples");
    let job_directory = directory.join("jobs/job-7f3a");
    std::fs::create_dir_all(&job_directory).expect("sample directory");
    let running = sample_job(40, 3);
    let mut finished = sample_job(40, 6);
    finished.phase = JobPhase::Succeeded as i32;
    let small = sample_job(3, 4);
    // A real image when `PLANKTON_WEB_SAMPLE_JPEG` names one (a dataset's imgs/*.jpg), else bytes that show as
    // a broken image.
    let jpeg = std::env::var_os("PLANKTON_WEB_SAMPLE_JPEG")
        .and_then(|path| std::fs::read(path).ok())
        .unwrap_or_else(|| vec![0xff, 0xd8, 0xff, 0xd9]);
    let thumbnails: Vec<Thumbnail> = (0..40u32)
        .flat_map(|class| {
            let jpeg = jpeg.clone();
            (0..3u32).map(move |copy| Thumbnail {
                objid: i64::from(30_000_000 + class * 10 + copy),
                true_class: class,
                predicted_class: (class + 1) % 40,
                confidence: 0.5 + copy as f32 * 0.2,
                jpeg: jpeg.clone(),
            })
        })
        .collect();
    let files = [
        (
            job_directory.join("index.html"),
            pages::job_page(&viewer(), &running),
        ),
        (
            job_directory.join("live"),
            pages::job_live_fragment(&finished),
        ),
        (
            directory.join("job-3-classes.html"),
            pages::job_page(&viewer(), &small),
        ),
        (
            directory.join("report.html"),
            job_report(&finished, &thumbnails),
        ),
        (
            directory.join("jobs.html"),
            pages::jobs_page(
                &viewer(),
                &[running.clone(), small, finished],
                &JobFilter::default(),
            ),
        ),
        (
            directory.join("no-epochs.html"),
            pages::job_page(&viewer(), &sample_job(4, 0)),
        ),
    ];
    for (path, html) in files {
        std::fs::write(&path, html).expect("sample page written");
    }
}
