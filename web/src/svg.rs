//! Inline SVG charts shared by the dashboard and the report: the training-loss curve, the per-epoch evaluation
//! curve, the train/test class-distribution bars and the confusion heatmap.
//!
//! Every chart is one `<svg>` with a `viewBox` (CSS scales it to its container), no `xmlns` (inline SVG in HTML
//! needs none, and the report must not name any `http://` address), and data attributes on its marks so tests
//! and scripts can read the values back.

use std::fmt::Write as _;

use plankton_proto::v1::{EvalMetrics, LossPoint};

use crate::escape;
use crate::text::{class_name, count_text, loss_text, metric_text, truncate};

/// Font every chart's text uses (the page's font stack).
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', sans-serif";

/// Plot area of a line chart inside its `viewBox`.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn plot_left(&self) -> f64 {
        self.left
    }
    fn plot_right(&self) -> f64 {
        self.width - self.right
    }
    fn plot_top(&self) -> f64 {
        self.top
    }
    fn plot_bottom(&self) -> f64 {
        self.height - self.bottom
    }
}

/// A linear map from data values onto pixels.
#[derive(Clone, Copy)]
struct Scale {
    domain_min: f64,
    domain_max: f64,
    range_min: f64,
    range_max: f64,
}

impl Scale {
    fn map(&self, value: f64) -> f64 {
        let span = self.domain_max - self.domain_min;
        if span.abs() < f64::EPSILON {
            return (self.range_min + self.range_max) / 2.0;
        }
        self.range_min + (value - self.domain_min) / span * (self.range_max - self.range_min)
    }
}

/// Evenly spaced "nice" ticks (steps of 1, 2 or 5 times a power of ten) covering `[min, max]`, about `target`
/// of them: the domain widened to whole steps, and the step.
pub fn nice_ticks(min: f64, max: f64, target: usize) -> (Vec<f64>, f64) {
    let (low, high) = if max > min && min.is_finite() && max.is_finite() {
        (min, max)
    } else if min.is_finite() {
        (min, min + 1.0)
    } else {
        (0.0, 1.0)
    };
    let raw_step = (high - low) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let normalised = raw_step / magnitude;
    let step = magnitude
        * if normalised < 1.5 {
            1.0
        } else if normalised < 3.0 {
            2.0
        } else if normalised < 7.0 {
            5.0
        } else {
            10.0
        };
    // The epsilon keeps a bound already on a step (0, 1.0) from growing by a whole step to rounding.
    let first = (low / step + 1e-9).floor() * step;
    let last = (high / step - 1e-9).ceil() * step;
    let count = ((last - first) / step).round() as usize;
    let ticks = (0..=count)
        .map(|index| first + index as f64 * step)
        .collect();
    (ticks, step)
}

/// A tick label with as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let text = format!("{value:.decimals$}");
    if text.starts_with('-') && text.trim_start_matches(['-', '0', '.']).is_empty() {
        return text.trim_start_matches('-').to_string();
    }
    text
}

fn open_svg(out: &mut String, id: &str, class: &str, width: f64, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg id="{id}" class="chart {class}" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="{label}" font-family="{FONT}" font-size="11">"#,
        id = escape(id),
        label = escape(label),
    );
    let _ = write!(out, "<title>{}</title>", escape(label));
}

/// Horizontal grid lines and left (or right) tick labels.
fn y_axis(
    out: &mut String,
    frame: &Frame,
    scale: Scale,
    ticks: &[f64],
    step: f64,
    on_right: bool,
    title: &str,
) {
    let class = if on_right {
        "axis axis-y2"
    } else {
        "axis axis-y"
    };
    let _ = write!(out, r#"<g class="{class}">"#);
    for &tick in ticks {
        let y = scale.map(tick);
        if !on_right {
            let _ = write!(
                out,
                r##"<line class="grid" x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e6e6e6"/>"##,
                frame.plot_left(),
                frame.plot_right()
            );
        }
        let (x, anchor) = if on_right {
            (frame.plot_right() + 6.0, "start")
        } else {
            (frame.plot_left() - 6.0, "end")
        };
        let _ = write!(
            out,
            r##"<text class="tick" x="{x:.1}" y="{:.1}" text-anchor="{anchor}" fill="#555">{}</text>"##,
            y + 3.5,
            tick_label(tick, step)
        );
    }
    let middle = (frame.plot_top() + frame.plot_bottom()) / 2.0;
    let (x, rotation) = if on_right {
        (frame.width - 10.0, 90)
    } else {
        (12.0, -90)
    };
    let _ = write!(
        out,
        r##"<text class="axis-title" transform="translate({x:.1},{middle:.1}) rotate({rotation})" text-anchor="middle" fill="#333">{}</text></g>"##,
        escape(title)
    );
}

/// The x axis line, its ticks and labels, and its title.
fn x_axis(out: &mut String, frame: &Frame, scale: Scale, ticks: &[f64], step: f64, title: &str) {
    let bottom = frame.plot_bottom();
    let _ = write!(
        out,
        r##"<g class="axis axis-x"><line x1="{:.1}" x2="{:.1}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="#888"/>"##,
        frame.plot_left(),
        frame.plot_right()
    );
    for &tick in ticks {
        let x = scale.map(tick);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="#888"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            bottom + 4.0,
            bottom + 16.0,
            tick_label(tick, step)
        );
    }
    let _ = write!(
        out,
        r##"<text class="axis-title" x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text></g>"##,
        (frame.plot_left() + frame.plot_right()) / 2.0,
        frame.height - 6.0,
        escape(title)
    );
}

/// The training-loss curve: one `<polyline class="series">` point per finite [`LossPoint`] (x = global step,
/// y = loss), faint vertical lines at epoch boundaries (multiples of `steps_per_epoch`). The x axis runs to
/// `total_steps` when known, so a live chart fills from the left instead of rescaling.
pub fn loss_curve(
    id: &str,
    points: &[LossPoint],
    steps_per_epoch: u64,
    total_steps: u64,
) -> String {
    let frame = Frame {
        width: 720.0,
        height: 280.0,
        left: 56.0,
        right: 20.0,
        top: 14.0,
        bottom: 40.0,
    };
    let finite: Vec<&LossPoint> = points
        .iter()
        .filter(|point| point.loss.is_finite())
        .collect();
    let last_step = finite
        .iter()
        .map(|point| point.global_step)
        .max()
        .unwrap_or(0);
    let first_step = finite
        .iter()
        .map(|point| point.global_step)
        .min()
        .unwrap_or(0);
    let x_max = last_step.max(total_steps).max(first_step + 1) as f64;
    let x_min = if total_steps > 0 {
        0.0
    } else {
        first_step as f64
    };
    let (x_ticks, x_step) = nice_ticks(x_min, x_max, 8);
    let x_ticks: Vec<f64> = x_ticks
        .into_iter()
        .filter(|tick| *tick <= x_max + 1e-9 && *tick >= x_min - 1e-9)
        .collect();
    let x_scale = Scale {
        domain_min: x_min,
        domain_max: x_max,
        range_min: frame.plot_left(),
        range_max: frame.plot_right(),
    };
    let loss_max = finite.iter().map(|point| point.loss).fold(0.0f64, f64::max);
    let loss_min = finite.iter().map(|point| point.loss).fold(0.0f64, f64::min);
    let loss_top = if loss_max > 0.0 { loss_max } else { 1.0 };
    let (y_ticks, y_step) = nice_ticks(loss_min, loss_top, 5);
    let y_scale = Scale {
        domain_min: *y_ticks.first().unwrap_or(&0.0),
        domain_max: *y_ticks.last().unwrap_or(&1.0),
        range_min: frame.plot_bottom(),
        range_max: frame.plot_top(),
    };
    let mut out = String::new();
    open_svg(
        &mut out,
        id,
        "loss-chart",
        frame.width,
        frame.height,
        &format!("training loss over {} steps", points.len()),
    );
    y_axis(
        &mut out,
        &frame,
        y_scale,
        &y_ticks,
        y_step,
        false,
        "train loss",
    );
    if steps_per_epoch > 0 {
        let boundaries = (x_max / steps_per_epoch as f64) as u64;
        // Hundreds of boundaries would grey the plot out: draw them only while they stay readable.
        if boundaries <= 200 {
            out.push_str(r#"<g class="epoch-boundaries">"#);
            for epoch in 1..=boundaries {
                let step = epoch * steps_per_epoch;
                if (step as f64) <= x_min || (step as f64) >= x_max {
                    continue;
                }
                let x = x_scale.map(step as f64);
                let _ = write!(
                    out,
                    r##"<line class="epoch-boundary" data-epoch="{epoch}" x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#b8b8b8" stroke-dasharray="3 3"><title>end of epoch {epoch} (step {step})</title></line>"##,
                    frame.plot_top(),
                    frame.plot_bottom()
                );
            }
            out.push_str("</g>");
        }
    }
    x_axis(&mut out, &frame, x_scale, &x_ticks, x_step, "global step");
    let coordinates: Vec<String> = finite
        .iter()
        .map(|point| {
            format!(
                "{:.1},{:.1}",
                x_scale.map(point.global_step as f64),
                y_scale.map(point.loss)
            )
        })
        .collect();
    let _ = write!(
        out,
        r##"<polyline class="series" data-series="train_loss" data-points="{}" points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5" stroke-linejoin="round"/>"##,
        coordinates.len(),
        coordinates.join(" ")
    );
    if let Some(last) = finite.last() {
        let _ = write!(
            out,
            r##"<circle class="last-point" cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"><title>step {}: loss {}</title></circle>"##,
            x_scale.map(last.global_step as f64),
            y_scale.map(last.loss),
            last.global_step,
            loss_text(last.loss)
        );
    }
    out.push_str("</svg>");
    out
}

/// One line of the epoch chart.
struct EpochSeries {
    key: &'static str,
    label: &'static str,
    color: &'static str,
    is_loss: bool,
    value: fn(&EvalMetrics) -> f64,
}

const EPOCH_SERIES: [EpochSeries; 5] = [
    EpochSeries {
        key: "macro_f1",
        label: "macro-F1",
        color: "#d62728",
        is_loss: false,
        value: |metrics| metrics.macro_f1,
    },
    EpochSeries {
        key: "accuracy",
        label: "accuracy",
        color: "#1f77b4",
        is_loss: false,
        value: |metrics| metrics.accuracy,
    },
    EpochSeries {
        key: "balanced_accuracy",
        label: "balanced accuracy",
        color: "#2ca02c",
        is_loss: false,
        value: |metrics| metrics.balanced_accuracy,
    },
    EpochSeries {
        key: "test_loss",
        label: "test loss",
        color: "#9467bd",
        is_loss: true,
        value: |metrics| metrics.test_loss,
    },
    EpochSeries {
        key: "train_loss",
        label: "train loss",
        color: "#8c564b",
        is_loss: true,
        value: |metrics| metrics.train_loss,
    },
];

/// The per-epoch evaluation curve: macro-F1, accuracy and balanced accuracy on the left axis (0..1), test and
/// train loss dashed on the right one. Every evaluated epoch gives each series exactly one
/// `<circle class="point" data-epoch="N" data-series="macro_f1">` (a non-finite value gives none). The x axis
/// spans the `planned_epochs`, so a live chart does not rescale as epochs complete.
pub fn epoch_curve(id: &str, epochs: &[EvalMetrics], planned_epochs: u32) -> String {
    let frame = Frame {
        width: 720.0,
        height: 300.0,
        left: 56.0,
        right: 56.0,
        top: 36.0,
        bottom: 40.0,
    };
    let last_epoch = epochs
        .iter()
        .map(|metrics| metrics.epoch)
        .max()
        .unwrap_or(1);
    let x_max = last_epoch.max(planned_epochs).max(1);
    let (x_min, x_max_padded) = if x_max == 1 {
        (0.5, 1.5)
    } else {
        (1.0, f64::from(x_max))
    };
    let x_scale = Scale {
        domain_min: x_min,
        domain_max: x_max_padded,
        range_min: frame.plot_left() + 8.0,
        range_max: frame.plot_right() - 8.0,
    };
    let (x_ticks, x_step): (Vec<f64>, f64) = if x_max <= 20 {
        ((1..=x_max).map(f64::from).collect(), 1.0)
    } else {
        let (ticks, step) = nice_ticks(1.0, f64::from(x_max), 10);
        (
            ticks
                .into_iter()
                .filter(|tick| *tick >= 1.0 && *tick <= f64::from(x_max))
                .collect(),
            step,
        )
    };
    let score_ticks: Vec<f64> = (0..=5).map(|index| f64::from(index) * 0.2).collect();
    let score_scale = Scale {
        domain_min: 0.0,
        domain_max: 1.0,
        range_min: frame.plot_bottom(),
        range_max: frame.plot_top(),
    };
    let loss_max = epochs
        .iter()
        .flat_map(|metrics| [metrics.test_loss, metrics.train_loss])
        .filter(|value| value.is_finite())
        .fold(0.0f64, f64::max);
    let (loss_ticks, loss_step) = nice_ticks(0.0, loss_max.max(0.1), 5);
    let loss_scale = Scale {
        domain_min: 0.0,
        domain_max: *loss_ticks.last().unwrap_or(&1.0),
        range_min: frame.plot_bottom(),
        range_max: frame.plot_top(),
    };
    let mut out = String::new();
    open_svg(
        &mut out,
        id,
        "epoch-chart",
        frame.width,
        frame.height,
        &format!("evaluation over {} epoch(s)", epochs.len()),
    );
    y_axis(
        &mut out,
        &frame,
        score_scale,
        &score_ticks,
        0.2,
        false,
        "score",
    );
    y_axis(
        &mut out,
        &frame,
        loss_scale,
        &loss_ticks,
        loss_step,
        true,
        "loss",
    );
    x_axis(&mut out, &frame, x_scale, &x_ticks, x_step, "epoch");
    // The legend, one entry per series, across the top.
    out.push_str(r#"<g class="legend">"#);
    let mut legend_x = frame.plot_left();
    for series in &EPOCH_SERIES {
        let dash = if series.is_loss {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<g class="legend-item" data-series="{key}"><line x1="{legend_x:.1}" x2="{:.1}" y1="14" y2="14" stroke="{color}" stroke-width="2"{dash}/><circle cx="{:.1}" cy="14" r="3" fill="{color}"/><text x="{:.1}" y="18" fill="#333">{label}</text></g>"##,
            legend_x + 22.0,
            legend_x + 11.0,
            legend_x + 27.0,
            key = series.key,
            color = series.color,
            label = series.label,
        );
        legend_x += 34.0 + series.label.len() as f64 * 6.2;
    }
    out.push_str("</g>");
    for series in &EPOCH_SERIES {
        let y_scale = if series.is_loss {
            loss_scale
        } else {
            score_scale
        };
        let points: Vec<(u32, f64)> = epochs
            .iter()
            .map(|metrics| (metrics.epoch, (series.value)(metrics)))
            .filter(|(_, value)| value.is_finite())
            .collect();
        let dash = if series.is_loss {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<g class="series-group" data-series="{}">"#,
            series.key
        );
        let coordinates: Vec<String> = points
            .iter()
            .map(|(epoch, value)| {
                format!(
                    "{:.1},{:.1}",
                    x_scale.map(f64::from(*epoch)),
                    y_scale.map(*value)
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="series" data-series="{}" points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            series.key,
            coordinates.join(" "),
            series.color
        );
        for (epoch, value) in &points {
            let shown = if series.is_loss {
                loss_text(*value)
            } else {
                metric_text(*value)
            };
            let _ = write!(
                out,
                r#"<circle class="point" data-epoch="{epoch}" data-series="{key}" data-value="{value}" cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>epoch {epoch}: {label} {shown}</title></circle>"#,
                x_scale.map(f64::from(*epoch)),
                y_scale.map(*value),
                key = series.key,
                color = series.color,
                label = series.label,
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// Train and test objects per class as paired bars on a log y axis (counts are very imbalanced): each bar a
/// `<rect class="bar" data-class=".." data-split="train|test" data-count="..">`.
pub fn class_distribution(
    id: &str,
    class_names: &[String],
    train_counts: &[u64],
    test_counts: &[u64],
) -> String {
    let class_count = class_names
        .len()
        .max(train_counts.len())
        .max(test_counts.len());
    let group_width = (840.0 / class_count.max(1) as f64).clamp(14.0, 44.0);
    let longest_label = (0..class_count)
        .map(|index| {
            truncate(&class_name(class_names, index), 18)
                .chars()
                .count()
        })
        .max()
        .unwrap_or(4) as f64;
    let label_height = longest_label * 5.6 * 0.87 + 12.0;
    let frame = Frame {
        width: 56.0 + class_count as f64 * group_width + 24.0,
        height: 24.0 + 220.0 + label_height,
        left: 56.0,
        right: 24.0,
        top: 24.0,
        bottom: label_height,
    };
    let max_count = train_counts
        .iter()
        .chain(test_counts)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let top_power = (max_count as f64).log10().ceil().max(1.0) as i32;
    // log10 of the count; the axis starts at 0.5 so a class of one object still shows a bar.
    let y_scale = Scale {
        domain_min: 0.5f64.log10(),
        domain_max: f64::from(top_power),
        range_min: frame.plot_bottom(),
        range_max: frame.plot_top(),
    };
    let height_of = |count: u64| -> f64 {
        if count == 0 {
            return frame.plot_bottom();
        }
        y_scale.map((count as f64).log10())
    };
    let mut out = String::new();
    open_svg(
        &mut out,
        id,
        "distribution-chart",
        frame.width,
        frame.height,
        &format!("train and test objects per class ({class_count} classes, log scale)"),
    );
    out.push_str(r#"<g class="axis axis-y">"#);
    for power in 0..=top_power {
        let y = y_scale.map(f64::from(power));
        let label = match power {
            0..=2 => 10u64.pow(power as u32).to_string(),
            3..=5 => format!("{}k", 10u64.pow(power as u32 - 3)),
            _ => format!("{}M", 10u64.pow(power as u32 - 6)),
        };
        let _ = write!(
            out,
            r##"<line class="grid" x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{label}</text>"##,
            frame.plot_left(),
            frame.plot_right(),
            frame.plot_left() - 6.0,
            y + 3.5
        );
    }
    let middle = (frame.plot_top() + frame.plot_bottom()) / 2.0;
    let _ = write!(
        out,
        r##"<text class="axis-title" transform="translate(12,{middle:.1}) rotate(-90)" text-anchor="middle" fill="#333">objects (log scale)</text></g>"##
    );
    let _ = write!(
        out,
        r##"<g class="legend"><rect x="{:.1}" y="6" width="10" height="10" fill="#4c78a8"/><text x="{:.1}" y="15" fill="#333">train</text><rect x="{:.1}" y="6" width="10" height="10" fill="#f58518"/><text x="{:.1}" y="15" fill="#333">test</text></g>"##,
        frame.plot_left(),
        frame.plot_left() + 14.0,
        frame.plot_left() + 60.0,
        frame.plot_left() + 74.0
    );
    let bar_width = (group_width - 4.0) / 2.0;
    for index in 0..class_count {
        let name = class_name(class_names, index);
        let group_left = frame.plot_left() + index as f64 * group_width + 2.0;
        for (split, counts, color, offset) in [
            ("train", train_counts, "#4c78a8", 0.0),
            ("test", test_counts, "#f58518", bar_width),
        ] {
            let count = counts.get(index).copied().unwrap_or(0);
            let top = height_of(count);
            let _ = write!(
                out,
                r#"<rect class="bar" data-class="{escaped}" data-split="{split}" data-count="{count}" x="{:.1}" y="{top:.1}" width="{bar_width:.1}" height="{:.1}" fill="{color}"><title>{escaped} {split}: {}</title></rect>"#,
                group_left + offset,
                (frame.plot_bottom() - top).max(0.0),
                count_text(count),
                escaped = escape(&name),
            );
        }
        let label_x = group_left + bar_width;
        let label_y = frame.plot_bottom() + 10.0;
        let _ = write!(
            out,
            r##"<text class="class-label" transform="translate({label_x:.1},{label_y:.1}) rotate(-60)" text-anchor="end" font-size="10" fill="#333">{}<title>{}</title></text>"##,
            escape(&truncate(&name, 18)),
            escape(&name)
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#888"/></svg>"##,
        frame.plot_left(),
        frame.plot_right(),
        frame.plot_bottom(),
        frame.plot_bottom()
    );
    out
}

/// Colour stops of the heatmap's sequential scale (light to dark blue): every channel falls from one stop to
/// the next, so a larger count is never lighter.
const HEAT_STOPS: [(f64, [f64; 3]); 5] = [
    (0.0, [247.0, 251.0, 255.0]),
    (0.25, [198.0, 219.0, 239.0]),
    (0.5, [107.0, 174.0, 214.0]),
    (0.75, [33.0, 113.0, 181.0]),
    (1.0, [8.0, 48.0, 107.0]),
];

/// The heatmap's colour for a fraction in [0, 1] of its (log) scale, as `#rrggbb`.
pub fn heat_color(fraction: f64) -> String {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let upper = HEAT_STOPS
        .iter()
        .position(|(stop, _)| *stop >= fraction)
        .unwrap_or(HEAT_STOPS.len() - 1)
        .max(1);
    let (low_stop, low_rgb) = HEAT_STOPS[upper - 1];
    let (high_stop, high_rgb) = HEAT_STOPS[upper];
    let within = (fraction - low_stop) / (high_stop - low_stop);
    let channel =
        |index: usize| (low_rgb[index] + (high_rgb[index] - low_rgb[index]) * within).round() as u8;
    format!("#{:02x}{:02x}{:02x}", channel(0), channel(1), channel(2))
}

/// Where `count` sits on the heatmap's log scale: `log1p(count) / log1p(max)`.
pub fn heat_fraction(count: u64, max_count: u64) -> f64 {
    if max_count == 0 {
        return 0.0;
    }
    (count as f64).ln_1p() / (max_count as f64).ln_1p()
}

/// The confusion matrix as a heatmap (rows: true class, columns: predicted), on a log colour scale
/// (`log1p(count) / log1p(max)`, not row-normalised). Exactly `num_classes²` `<rect class="cell">` elements,
/// each with `data-true`, `data-predicted`, `data-count` and a `<title>true: X, predicted: Y, n</title>`.
/// Cells shrink and labels turn small and slanted as classes grow (40 classes stay legible); long class names
/// are cut, their full name in a `<title>`. None when the metrics carry no well-formed matrix.
pub fn confusion_heatmap(
    id: &str,
    metrics: &EvalMetrics,
    class_names: &[String],
) -> Option<String> {
    let class_count = matrix_size(metrics)?;
    let name_of = |index: usize| -> String {
        match metrics.per_class.get(index) {
            Some(class)
                if !class.class_name.is_empty() && metrics.per_class.len() == class_count =>
            {
                class.class_name.clone()
            }
            _ => class_name(class_names, index),
        }
    };
    let names: Vec<String> = (0..class_count).map(name_of).collect();
    let cell = (560.0 / class_count as f64).clamp(10.0, 48.0).floor();
    let font_size = (cell * 0.75).clamp(7.0, 12.0);
    let label_limit = if class_count > 20 { 16 } else { 22 };
    let labels: Vec<String> = names
        .iter()
        .map(|name| truncate(name, label_limit))
        .collect();
    let longest = labels
        .iter()
        .map(|label| label.chars().count())
        .max()
        .unwrap_or(1) as f64;
    let label_extent = longest * font_size * 0.6 + 8.0;
    // Column labels slant up at 60 degrees: their height and their overhang to the right.
    let column_label_height = label_extent * 0.87 + 4.0;
    let column_label_overhang = label_extent * 0.5;
    let grid_left = 22.0 + label_extent;
    let grid_top = 22.0 + column_label_height;
    let grid_size = cell * class_count as f64;
    let legend_height = 44.0;
    let max_count = metrics.confusion.iter().copied().max().unwrap_or(0);
    let swatch_counts = legend_counts(max_count);
    let legend_width = 100.0 + swatch_counts.len() as f64 * 44.0 + 24.0;
    let width = (grid_left + grid_size + column_label_overhang.max(16.0) + 8.0)
        .max(grid_left + legend_width);
    let height = grid_top + grid_size + legend_height;
    let total: u64 = metrics.confusion.iter().sum();
    let mut out = String::new();
    open_svg(
        &mut out,
        id,
        "heatmap",
        width,
        height,
        &format!(
            "confusion matrix, epoch {}: {class_count} classes, {total} test objects (rows: true class, columns: predicted; log colour scale)",
            metrics.epoch
        ),
    );
    let _ = write!(
        out,
        r##"<text class="axis-title" x="{:.1}" y="12" text-anchor="middle" fill="#333">predicted class</text><text class="axis-title" transform="translate(10,{:.1}) rotate(-90)" text-anchor="middle" fill="#333">true class</text>"##,
        grid_left + grid_size / 2.0,
        grid_top + grid_size / 2.0
    );
    out.push_str(r##"<g class="cells" stroke="#ffffff" stroke-width="0.5">"##);
    let show_counts = cell >= 24.0;
    for true_index in 0..class_count {
        for predicted_index in 0..class_count {
            let count = metrics.confusion[true_index * class_count + predicted_index];
            let fraction = heat_fraction(count, max_count);
            let x = grid_left + predicted_index as f64 * cell;
            let y = grid_top + true_index as f64 * cell;
            let diagonal = if true_index == predicted_index {
                " diagonal"
            } else {
                ""
            };
            let _ = write!(
                out,
                r##"<rect class="cell{diagonal}" data-true="{true_index}" data-predicted="{predicted_index}" data-count="{count}" x="{x:.1}" y="{y:.1}" width="{cell}" height="{cell}" fill="{}"><title>true: {}, predicted: {}, {count}</title></rect>"##,
                heat_color(fraction),
                escape(&names[true_index]),
                escape(&names[predicted_index]),
            );
            if show_counts && count > 0 {
                let text_color = if fraction > 0.55 {
                    "#ffffff"
                } else {
                    "#222222"
                };
                let _ = write!(
                    out,
                    r#"<text class="count" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{:.1}" fill="{text_color}" stroke="none" pointer-events="none">{count}</text>"#,
                    x + cell / 2.0,
                    y + cell / 2.0 + cell * 0.14,
                    (cell * 0.38).min(12.0)
                );
            }
        }
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        r##"<rect class="frame" x="{grid_left:.1}" y="{grid_top:.1}" width="{grid_size:.1}" height="{grid_size:.1}" fill="none" stroke="#999"/>"##
    );
    out.push_str(r#"<g class="labels">"#);
    for (index, label) in labels.iter().enumerate() {
        let row_y = grid_top + index as f64 * cell + cell / 2.0 + font_size * 0.35;
        let _ = write!(
            out,
            r##"<text class="row-label" data-class="{index}" x="{:.1}" y="{row_y:.1}" text-anchor="end" font-size="{font_size:.1}" fill="#333">{}<title>{}</title></text>"##,
            grid_left - 4.0,
            escape(label),
            escape(&names[index])
        );
        let column_x = grid_left + index as f64 * cell + cell / 2.0 + font_size * 0.3;
        let _ = write!(
            out,
            r##"<text class="column-label" data-class="{index}" transform="translate({column_x:.1},{:.1}) rotate(-60)" text-anchor="start" font-size="{font_size:.1}" fill="#333">{}<title>{}</title></text>"##,
            grid_top - 4.0,
            escape(label),
            escape(&names[index])
        );
    }
    out.push_str("</g>");
    // The colour legend: swatches at log-spaced counts from 0 to the largest.
    let legend_top = grid_top + grid_size + 12.0;
    let _ = write!(
        out,
        r##"<g class="heat-legend"><text x="{grid_left:.1}" y="{:.1}" fill="#555" font-size="10">count (log scale):</text>"##,
        legend_top + 11.0
    );
    for (position, count) in swatch_counts.iter().enumerate() {
        let x = grid_left + 100.0 + position as f64 * 44.0;
        let _ = write!(
            out,
            r##"<rect class="legend-swatch" data-count="{count}" x="{x:.1}" y="{legend_top:.1}" width="14" height="14" fill="{}" stroke="#bbb" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" fill="#555" font-size="10">{count}</text>"##,
            heat_color(heat_fraction(*count, max_count)),
            x + 17.0,
            legend_top + 11.0
        );
    }
    out.push_str("</g></svg>");
    Some(out)
}

/// The classes of a well-formed matrix: `num_classes` when `confusion` has `num_classes²` entries, else the
/// square root of its length when that is whole; None for an empty or ragged matrix.
fn matrix_size(metrics: &EvalMetrics) -> Option<usize> {
    let declared = metrics.num_classes as usize;
    let length = metrics.confusion.len();
    if length == 0 {
        return None;
    }
    if declared > 0 && declared.checked_mul(declared) == Some(length) {
        return Some(declared);
    }
    let root = (length as f64).sqrt().round() as usize;
    (root * root == length).then_some(root)
}

/// Counts the heatmap's legend shows: 0, powers of ten below the maximum, and the maximum.
fn legend_counts(max_count: u64) -> Vec<u64> {
    let mut counts = vec![0];
    let mut power = 1u64;
    while power < max_count && counts.len() < 6 {
        counts.push(power);
        power = power.saturating_mul(10);
    }
    if max_count > 0 {
        counts.push(max_count);
    }
    counts
}
