//! `dataset stats`: class counts, image sizes from JPEG headers, missing/unlisted/bad images, SVG plots.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::error::DatasetError;
use crate::images::{
    check_image_header, fetch_images, image_path, list_image_objids, open_image_source,
};
use crate::layout::{UNLABELED_CLASS, is_biological_class};
use crate::meta::read_meta;
use crate::storage::StoreLocation;
use crate::summary::{ReadSummary, SkippedItem};

/// Objects of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub name: String,
    pub count: u64,
    /// Whether the class names organisms (not one of [`crate::layout::NON_LIVING_CLASSES`], not unlabeled):
    /// the classes biological macro-F1 averages over.
    #[serde(default)]
    pub biological: bool,
}

/// Min, median (lower) and max of image widths and heights, and the number of distinct sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSizeSummary {
    pub min_width: u32,
    pub median_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub median_height: u32,
    pub max_height: u32,
    pub distinct_sizes: usize,
}

/// Everything `dataset stats` reports about one dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetStats {
    pub url: String,
    /// Objects kept from `meta.csv`.
    pub objects: u64,
    /// Per class, largest first; the unlabeled class appears as [`UNLABELED_CLASS`].
    pub class_counts: Vec<ClassCount>,
    pub unlabeled: u64,
    /// `directory` or `zip`.
    pub image_source: String,
    /// Images present in the store (listed in `meta.csv` or not).
    pub images_present: u64,
    /// `(width, height)` of every listed image whose header checked out.
    pub image_sizes: Vec<(u32, u32)>,
    pub size_summary: Option<ImageSizeSummary>,
    /// Objids listed in `meta.csv` with no image.
    pub missing_images: Vec<i64>,
    /// Objids with an image but no (good) row in `meta.csv`.
    pub unlisted_images: Vec<i64>,
    /// Images that failed to fetch or failed the header check.
    pub bad_images: Vec<SkippedItem>,
    pub meta_summary: ReadSummary,
}

/// Reads `meta.csv`, lists and header-checks every listed image (`concurrency` fetches in flight).
pub async fn compute_stats(
    location: &StoreLocation,
    concurrency: usize,
) -> Result<DatasetStats, DatasetError> {
    let meta = read_meta(location).await?;
    let source = open_image_source(location).await?;
    let present_objids = list_image_objids(location, &source).await?;
    let present_set: HashSet<i64> = present_objids.iter().copied().collect();
    let listed_set: HashSet<i64> = meta.records.iter().map(|record| record.objid).collect();

    let mut image_summary = ReadSummary::default();
    let mut missing_images = Vec::new();
    let mut objids_to_check = Vec::with_capacity(meta.records.len());
    for record in &meta.records {
        if present_set.contains(&record.objid) {
            objids_to_check.push(record.objid);
        } else {
            image_summary.skip(
                image_path(record.objid),
                "listed in meta.csv but no image found",
            );
            missing_images.push(record.objid);
        }
    }
    let unlisted_images: Vec<i64> = present_objids
        .iter()
        .copied()
        .filter(|objid| !listed_set.contains(objid))
        .collect();
    for objid in &unlisted_images {
        image_summary.skip(
            image_path(*objid),
            "image present but not listed in meta.csv",
        );
    }

    let mut sizes_by_objid = BTreeMap::new();
    let mut bad_images = Vec::new();
    let mut fetched = fetch_images(location, &source, objids_to_check, concurrency);
    while let Some((objid, result)) = fetched.next().await {
        let outcome = result.and_then(|bytes| {
            check_image_header(&bytes).map_err(|source| DatasetError::BadImage {
                object: image_path(objid),
                source,
            })
        });
        match outcome {
            Ok(size) => {
                sizes_by_objid.insert(objid, size);
            }
            Err(error) => {
                image_summary.skip(image_path(objid), error.to_string());
                bad_images.push(SkippedItem {
                    location: image_path(objid),
                    reason: error.to_string(),
                });
            }
        }
    }
    bad_images.sort_by(|left, right| left.location.cmp(&right.location));
    image_summary.rows_read = meta.records.len() as u64 + unlisted_images.len() as u64;
    image_summary.rows_kept = sizes_by_objid.len() as u64;
    image_summary.log(&location.url);

    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &meta.records {
        *counts
            .entry(record.level2.as_deref().unwrap_or(UNLABELED_CLASS))
            .or_insert(0) += 1;
    }
    let mut class_counts: Vec<ClassCount> = counts
        .into_iter()
        .map(|(name, count)| ClassCount {
            name: name.to_string(),
            count,
            biological: is_biological_class(name),
        })
        .collect();
    class_counts.sort_by(|left, right| {
        right
            .count
            .cmp(&left.count)
            .then_with(|| left.name.cmp(&right.name))
    });

    let image_sizes: Vec<(u32, u32)> = sizes_by_objid.into_values().collect();
    Ok(DatasetStats {
        url: location.url.clone(),
        objects: meta.records.len() as u64,
        class_counts,
        unlabeled: meta.unlabeled,
        image_source: source.kind().to_string(),
        images_present: present_objids.len() as u64,
        size_summary: summarize_sizes(&image_sizes),
        image_sizes,
        missing_images,
        unlisted_images,
        bad_images,
        meta_summary: meta.summary,
    })
}

/// Min/median/max of widths and heights and the number of distinct sizes; `None` for no images.
pub fn summarize_sizes(sizes: &[(u32, u32)]) -> Option<ImageSizeSummary> {
    if sizes.is_empty() {
        return None;
    }
    let mut widths: Vec<u32> = sizes.iter().map(|size| size.0).collect();
    let mut heights: Vec<u32> = sizes.iter().map(|size| size.1).collect();
    widths.sort_unstable();
    heights.sort_unstable();
    let lower_median = (sizes.len() - 1) / 2;
    let distinct_sizes = sizes.iter().collect::<HashSet<_>>().len();
    Some(ImageSizeSummary {
        min_width: widths[0],
        median_width: widths[lower_median],
        max_width: widths[widths.len() - 1],
        min_height: heights[0],
        median_height: heights[lower_median],
        max_height: heights[heights.len() - 1],
        distinct_sizes,
    })
}

impl DatasetStats {
    /// Largest class count over smallest (present) class count.
    pub fn imbalance_ratio(&self) -> Option<f64> {
        let largest = self.class_counts.iter().map(|class| class.count).max()?;
        let smallest = self
            .class_counts
            .iter()
            .map(|class| class.count)
            .filter(|count| *count > 0)
            .min()?;
        Some(largest as f64 / smallest as f64)
    }
}

/// How many skipped items the text report lists before summarizing.
const REPORT_ITEM_LIMIT: usize = 20;

impl std::fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "dataset {}", self.url)?;
        writeln!(
            f,
            "objects in meta.csv: {} ({} unlabeled), classes: {}",
            self.objects,
            self.unlabeled,
            self.class_counts.len()
        )?;
        if let Some(ratio) = self.imbalance_ratio() {
            writeln!(f, "imbalance (largest/smallest class): {ratio:.0}:1")?;
        }
        let name_width = self
            .class_counts
            .iter()
            .map(|class| class.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<name_width$}  {:>9}  {:>7}  kind",
            "class", "objects", "share"
        )?;
        for class in &self.class_counts {
            let share = if self.objects == 0 {
                0.0
            } else {
                100.0 * class.count as f64 / self.objects as f64
            };
            writeln!(
                f,
                "{:<name_width$}  {:>9}  {:>6.2}%  {}",
                class.name,
                class.count,
                share,
                if class.biological {
                    "biological"
                } else {
                    "non-living"
                }
            )?;
        }
        writeln!(
            f,
            "images ({}): {} present, {} with a good header",
            self.image_source,
            self.images_present,
            self.image_sizes.len()
        )?;
        if let Some(sizes) = &self.size_summary {
            writeln!(
                f,
                "width  min {} / median {} / max {} px\nheight min {} / median {} / max {} px\ndistinct sizes: {}",
                sizes.min_width,
                sizes.median_width,
                sizes.max_width,
                sizes.min_height,
                sizes.median_height,
                sizes.max_height,
                sizes.distinct_sizes
            )?;
        }
        writeln!(
            f,
            "skipped meta.csv rows: {}, images listed but missing: {}, images present but not listed: {}, bad images: {}",
            self.meta_summary.skipped.len(),
            self.missing_images.len(),
            self.unlisted_images.len(),
            self.bad_images.len()
        )?;
        let problems = self.meta_summary.skipped.iter().chain(&self.bad_images);
        for item in problems.clone().take(REPORT_ITEM_LIMIT) {
            writeln!(f, "  {item}")?;
        }
        let problem_count = problems.count();
        if problem_count > REPORT_ITEM_LIMIT {
            writeln!(f, "  ... and {} more", problem_count - REPORT_ITEM_LIMIT)?;
        }
        Ok(())
    }
}

/// File names of the plots [`write_plots`] writes.
pub const CLASS_PLOT_FILE: &str = "class_distribution.svg";
pub const SIZE_PLOT_FILE: &str = "image_sizes.svg";

/// Symmetric-log transform with linear threshold 1: `y` for `y <= 1`, else `1 + log10(y)`.
fn symlog(value: f64) -> f64 {
    if value <= 1.0 {
        value
    } else {
        1.0 + value.log10()
    }
}

fn symlog_label(position: &f64) -> String {
    let value = if *position <= 1.0 {
        *position
    } else {
        10f64.powf(*position - 1.0)
    };
    let rounded = value.round();
    if (value - rounded).abs() < 1e-6 * value.max(1.0) {
        format!("{rounded:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Writes the class-distribution bar chart (symlog count axis) and the width/height histograms as
/// SVG files under `out_dir` (created if missing); returns their paths.
pub fn write_plots(stats: &DatasetStats, out_dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    std::fs::create_dir_all(out_dir).map_err(|source| DatasetError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let class_plot = out_dir.join(CLASS_PLOT_FILE);
    guard_plot(&class_plot, || draw_class_distribution(stats, &class_plot))?;
    let size_plot = out_dir.join(SIZE_PLOT_FILE);
    guard_plot(&size_plot, || {
        draw_size_histograms(&stats.image_sizes, &size_plot)
    })?;
    Ok(vec![class_plot, size_plot])
}

/// Runs one plot, turning a drawing error or a panic inside plotters (it asserts on odd ranges)
/// into [`DatasetError::Plot`] naming the file.
fn guard_plot(path: &Path, draw: impl FnOnce() -> Result<(), String>) -> Result<(), DatasetError> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(draw));
    let reason = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(reason)) => reason,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|message| message.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("plotting library panicked: {message}")
        }
    };
    Err(DatasetError::Plot {
        path: path.to_path_buf(),
        reason,
    })
}

fn draw_class_distribution(stats: &DatasetStats, path: &Path) -> Result<(), String> {
    let class_total = stats.class_counts.len().max(1);
    let width = (200 + 28 * class_total as u32).max(640);
    let root = SVGBackend::new(path, (width, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let largest = stats
        .class_counts
        .iter()
        .map(|class| class.count)
        .max()
        .unwrap_or(1);
    let y_top = symlog(largest as f64).ceil().max(1.0);
    let names: Vec<String> = stats
        .class_counts
        .iter()
        .map(|class| class.name.clone())
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "objects per level2 class (symlog scale)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(200)
        .y_label_area_size(70)
        .build_cartesian_2d((0..class_total).into_segmented(), 0f64..y_top)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(1)
        .x_label_formatter(&|_| String::new())
        .y_labels(y_top as usize + 1)
        .y_label_formatter(&symlog_label)
        .y_desc("objects")
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(stats.class_counts.iter().enumerate().map(|(index, class)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(index), 0.0),
                    (SegmentValue::Exact(index + 1), symlog(class.count as f64)),
                ],
                BLUE.mix(0.7).filled(),
            );
            bar.set_margin(0, 0, 2, 2);
            bar
        }))
        .map_err(|error| error.to_string())?;
    // Class names hang below their bars, rotated, starting at the axis (the mesh would center them on it).
    let name_style = ("sans-serif", 11)
        .into_font()
        .transform(FontTransform::Rotate90)
        .into_text_style(&root)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (index, name) in names.iter().enumerate() {
        let (bar_center_x, axis_y) = chart.backend_coord(&(SegmentValue::CenterOf(index), 0.0));
        root.draw(&Text::new(
            name.clone(),
            (bar_center_x, axis_y + 6),
            name_style.clone(),
        ))
        .map_err(|error| error.to_string())?;
    }
    root.present().map_err(|error| error.to_string())
}

fn draw_size_histograms(sizes: &[(u32, u32)], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let panels = root.split_evenly((1, 2));
    let widths: Vec<u32> = sizes.iter().map(|size| size.0).collect();
    let heights: Vec<u32> = sizes.iter().map(|size| size.1).collect();
    for (panel, (values, axis_name, color)) in panels
        .iter()
        .zip([(&widths, "width", BLUE), (&heights, "height", RED)])
    {
        draw_histogram(panel, values, axis_name, color)?;
    }
    root.present().map_err(|error| error.to_string())
}

fn draw_histogram(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    values: &[u32],
    axis_name: &str,
    color: RGBColor,
) -> Result<(), String> {
    let largest_value = values.iter().copied().max().unwrap_or(1).max(1);
    let bin_width = (largest_value / 50).max(1);
    let bin_count = (largest_value / bin_width + 1) as usize;
    let mut bins = vec![0u64; bin_count];
    for value in values {
        bins[((value / bin_width) as usize).min(bin_count - 1)] += 1;
    }
    let largest_bin = bins.iter().copied().max().unwrap_or(1);
    let y_top = symlog(largest_bin as f64).ceil().max(1.0);
    let x_end = bin_count as u32 * bin_width;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("image {axis_name} (px), {} images", values.len()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..x_end, 0f64..y_top)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!("{axis_name} (px)"))
        .y_desc("images (symlog)")
        .y_labels(y_top as usize + 1)
        .y_label_formatter(&symlog_label)
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(
            bins.iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(bin, count)| {
                    let bin_start = bin as u32 * bin_width;
                    Rectangle::new(
                        [
                            (bin_start, 0.0),
                            (bin_start + bin_width, symlog(*count as f64)),
                        ],
                        color.mix(0.7).filled(),
                    )
                }),
        )
        .map_err(|error| error.to_string())?;
    Ok(())
}
