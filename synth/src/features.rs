//! Native features measured on a rendered image, in the order of `NATIVE_FEATURE_COLUMNS`.
//!
//! Definitions (plausible ZooProcess-like, not bit-exact ImageJ):
//! - Object mask: pixels at or below the Otsu threshold of the image histogram. The *filled* object
//!   also includes holes (mask-free pixels not 4-connected to the image border).
//! - `area`: filled pixels; `area_exc`: mask pixels (holes excluded); `%area`: percentage of the
//!   filled area that is holes. Grey statistics (`mean`, `stddev`, `min`, `median`, `skew`, excess
//!   `kurt`, `intden` = sum, `range` = max - min) are over the filled object; `meanimagegrey` over the image.
//! - `perim.`: crack length of the filled object (pixel edges facing outside) times pi/4, so a disc
//!   measures close to its circumference. `width`, `height`: bounding box of the filled object.
//! - `major`, `minor`, `angle`: ellipse with the same second central moments (angle in degrees,
//!   counter-clockwise from the x axis, in [0, 180)). `circ.` = 4 pi area / perim^2 (at most 1);
//!   `circex` the same with `area_exc`.
//! - `convarea`, `convperim`: convex hull of the pixel squares; `feret`: largest hull vertex distance.
//! - `skelarea`: pixels on the ridge of the chessboard distance transform (a medial-axis skeleton);
//!   `thickr`: largest over mean distance on that skeleton.
//! - `fractal`: box-counting dimension of the object boundary (1 when too small to count).
//! - `histcum1..3`: grey at 25/50/75 % of the cumulative object histogram; `slope` = 50 / (histcum3 -
//!   histcum1); `nb1..3`: 8-connected components of object pixels at or below histcum1..3.
//! - `symetrieh`/`symetriev`: share of the object that overlaps its mirror image about the centroid
//!   (horizontal / vertical flip); `symetriehc`/`symetrievc` the same for the dark core (<= histcum1).
//! - `fcons`: background mean minus object mean; `centroids`: distance between the geometric and the
//!   darkness-weighted centroid; `thickr`, `esd` = 2 sqrt(area / pi), `elongation` = major / minor,
//!   `meanpos` = (max - mean) / range, `cv` = 100 stddev / mean, `sr` = 100 stddev / range,
//!   `cdexc` = centroids^2 / area_exc, and the remaining columns are the ratios their names spell.
//! - A ratio whose denominator is zero is written as 0, so a value is missing only where the
//!   generator blanks a whole missing-value group.

use std::f32::consts::PI;

use plankton_dataset::layout::NATIVE_FEATURE_COLUMNS;

use crate::GreyImage;

/// Measures the 64 native features of `image` (see the module documentation for definitions).
pub fn measure_features(image: &GreyImage) -> [Option<f32>; 64] {
    let measured = Measurements::of(image);
    NATIVE_FEATURE_COLUMNS.map(|column| measured.value(column))
}

/// Everything measured once, from which each column is read.
#[derive(Debug, Default)]
struct Measurements {
    area: f64,
    area_exc: f64,
    mean_image_grey: f64,
    mean: f64,
    stddev: f64,
    min: f64,
    max: f64,
    median: f64,
    skew: f64,
    kurt: f64,
    intden: f64,
    perimeter: f64,
    width: f64,
    height: f64,
    major: f64,
    minor: f64,
    angle: f64,
    feret: f64,
    convex_area: f64,
    convex_perimeter: f64,
    fractal: f64,
    skeleton_pixels: f64,
    thickness_ratio: f64,
    histcum: [f64; 3],
    components: [f64; 3],
    symmetry_horizontal: f64,
    symmetry_vertical: f64,
    core_symmetry_horizontal: f64,
    core_symmetry_vertical: f64,
    contrast: f64,
    centroid_distance: f64,
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator.abs() < 1e-12 {
        0.0
    } else {
        numerator / denominator
    }
}

impl Measurements {
    fn value(&self, column: &str) -> Option<f32> {
        let range = self.max - self.min;
        let value = match column {
            "area" => self.area,
            "meanimagegrey" => self.mean_image_grey,
            "mean" => self.mean,
            "stddev" => self.stddev,
            "min" => self.min,
            "perim." => self.perimeter,
            "width" => self.width,
            "height" => self.height,
            "major" => self.major,
            "minor" => self.minor,
            "angle" => self.angle,
            "circ." => ratio(
                4.0 * std::f64::consts::PI * self.area,
                self.perimeter * self.perimeter,
            )
            .min(1.0),
            "feret" => self.feret,
            "intden" => self.intden,
            "median" => self.median,
            "skew" => self.skew,
            "kurt" => self.kurt,
            "%area" => 100.0 * ratio(self.area - self.area_exc, self.area),
            "area_exc" => self.area_exc,
            "fractal" => self.fractal,
            "skelarea" => self.skeleton_pixels,
            "slope" => 50.0 / (self.histcum[2] - self.histcum[0]).max(1.0),
            "histcum1" => self.histcum[0],
            "histcum2" => self.histcum[1],
            "histcum3" => self.histcum[2],
            "nb1" => self.components[0],
            "nb2" => self.components[1],
            "nb3" => self.components[2],
            "symetrieh" => self.symmetry_horizontal,
            "symetriev" => self.symmetry_vertical,
            "symetriehc" => self.core_symmetry_horizontal,
            "symetrievc" => self.core_symmetry_vertical,
            "convperim" => self.convex_perimeter,
            "convarea" => self.convex_area,
            "fcons" => self.contrast,
            "thickr" => self.thickness_ratio,
            "esd" => 2.0 * (self.area / std::f64::consts::PI).sqrt(),
            "elongation" => ratio(self.major, self.minor),
            "range" => range,
            "meanpos" => ratio(self.max - self.mean, range),
            "centroids" => self.centroid_distance,
            "cv" => 100.0 * ratio(self.stddev, self.mean),
            "sr" => 100.0 * ratio(self.stddev, range),
            "perimareaexc" => ratio(self.perimeter, self.area_exc.sqrt()),
            "feretareaexc" => ratio(self.feret, self.area_exc.sqrt()),
            "perimferet" => ratio(self.perimeter, self.feret),
            "perimmajor" => ratio(self.perimeter, self.major),
            "circex" => ratio(
                4.0 * std::f64::consts::PI * self.area_exc,
                self.perimeter * self.perimeter,
            )
            .min(1.0),
            "cdexc" => ratio(
                self.centroid_distance * self.centroid_distance,
                self.area_exc,
            ),
            "kurt_mean" => ratio(self.kurt, self.mean),
            "skew_mean" => ratio(self.skew, self.mean),
            "convperim_perim" => ratio(self.convex_perimeter, self.perimeter),
            "convarea_area" => ratio(self.convex_area, self.area),
            "symetrieh_area" => ratio(self.symmetry_horizontal, self.area),
            "symetriev_area" => ratio(self.symmetry_vertical, self.area),
            "nb1_area" => ratio(self.components[0], self.area),
            "nb2_area" => ratio(self.components[1], self.area),
            "nb3_area" => ratio(self.components[2], self.area),
            "nb1_range" => ratio(self.components[0], range),
            "nb2_range" => ratio(self.components[1], range),
            "nb3_range" => ratio(self.components[2], range),
            "median_mean" => ratio(self.median, self.mean),
            "median_mean_range" => ratio(self.median - self.mean, range),
            "skeleton_area" => ratio(self.skeleton_pixels, self.area),
            _ => return None,
        };
        value.is_finite().then_some(value as f32)
    }

    fn of(image: &GreyImage) -> Self {
        let width = image.width as usize;
        let height = image.height as usize;
        let pixels = &image.pixels;
        let mut measured = Measurements::default();
        if pixels.is_empty() || pixels.len() != width * height {
            return measured;
        }
        let mut image_histogram = [0u64; 256];
        for grey in pixels {
            image_histogram[*grey as usize] += 1;
        }
        measured.mean_image_grey =
            pixels.iter().map(|grey| f64::from(*grey)).sum::<f64>() / pixels.len() as f64;
        let threshold = otsu_threshold(&image_histogram);
        let mask: Vec<bool> = pixels.iter().map(|grey| *grey <= threshold).collect();
        let filled = fill_holes(&mask, width, height);
        measured.area_exc = mask.iter().filter(|inside| **inside).count() as f64;

        // Grey statistics over the filled object.
        let mut object_histogram = [0u64; 256];
        let mut background_sum = 0f64;
        let mut background_count = 0u64;
        let (mut sum_x, mut sum_y, mut weighted_x, mut weighted_y, mut darkness_sum) =
            (0f64, 0f64, 0f64, 0f64, 0f64);
        let (mut min_x, mut min_y, mut max_x, mut max_y) = (usize::MAX, usize::MAX, 0usize, 0usize);
        for y in 0..height {
            for x in 0..width {
                let index = y * width + x;
                let grey = pixels[index];
                if !filled[index] {
                    background_sum += f64::from(grey);
                    background_count += 1;
                    continue;
                }
                object_histogram[grey as usize] += 1;
                let center_x = x as f64 + 0.5;
                let center_y = y as f64 + 0.5;
                sum_x += center_x;
                sum_y += center_y;
                let darkness = 255.0 - f64::from(grey);
                weighted_x += darkness * center_x;
                weighted_y += darkness * center_y;
                darkness_sum += darkness;
                min_x = min_x.min(x);
                min_y = min_y.min(y);
                max_x = max_x.max(x);
                max_y = max_y.max(y);
            }
        }
        let area = object_histogram.iter().sum::<u64>() as f64;
        measured.area = area;
        if area == 0.0 {
            return measured;
        }
        measured.width = (max_x - min_x + 1) as f64;
        measured.height = (max_y - min_y + 1) as f64;
        let grey_stats = histogram_statistics(&object_histogram);
        measured.mean = grey_stats.mean;
        measured.stddev = grey_stats.stddev;
        measured.min = grey_stats.min;
        measured.max = grey_stats.max;
        measured.median = grey_stats.quantiles[1];
        measured.histcum = grey_stats.quantiles;
        measured.skew = grey_stats.skew;
        measured.kurt = grey_stats.kurt;
        measured.intden = grey_stats.mean * area;
        let background_mean = if background_count > 0 {
            background_sum / background_count as f64
        } else {
            measured.mean_image_grey
        };
        measured.contrast = background_mean - measured.mean;

        let centroid_x = sum_x / area;
        let centroid_y = sum_y / area;
        if darkness_sum > 0.0 {
            let offset_x = weighted_x / darkness_sum - centroid_x;
            let offset_y = weighted_y / darkness_sum - centroid_y;
            measured.centroid_distance = (offset_x * offset_x + offset_y * offset_y).sqrt();
        }
        let (major, minor, angle) =
            ellipse_fit(&filled, width, height, centroid_x, centroid_y, area);
        measured.major = major;
        measured.minor = minor;
        measured.angle = angle;
        measured.perimeter = crack_length(&filled, width, height) * f64::from(PI) / 4.0;
        let hull = convex_hull(&filled, width, height);
        measured.convex_area = polygon_area(&hull);
        measured.convex_perimeter = polygon_perimeter(&hull);
        measured.feret = max_vertex_distance(&hull);
        measured.fractal = box_counting_dimension(&filled, width, height);
        let (skeleton_pixels, thickness_ratio) = skeleton(&filled, width, height);
        measured.skeleton_pixels = skeleton_pixels;
        measured.thickness_ratio = thickness_ratio;
        for (level, quantile) in grey_stats.quantiles.iter().enumerate() {
            let dark_enough: Vec<bool> = pixels
                .iter()
                .zip(&filled)
                .map(|(grey, inside)| *inside && f64::from(*grey) <= *quantile)
                .collect();
            measured.components[level] = count_components(&dark_enough, width, height) as f64;
            if level == 0 {
                let core_area = dark_enough.iter().filter(|inside| **inside).count() as f64;
                let (core_x, core_y) = mask_centroid(&dark_enough, width, height);
                measured.core_symmetry_horizontal =
                    mirror_overlap(&dark_enough, width, height, core_x, core_y, true)
                        / core_area.max(1.0);
                measured.core_symmetry_vertical =
                    mirror_overlap(&dark_enough, width, height, core_x, core_y, false)
                        / core_area.max(1.0);
            }
        }
        measured.symmetry_horizontal =
            mirror_overlap(&filled, width, height, centroid_x, centroid_y, true) / area;
        measured.symmetry_vertical =
            mirror_overlap(&filled, width, height, centroid_x, centroid_y, false) / area;
        measured
    }
}

/// Otsu's threshold: the grey level maximising between-class variance (object = at or below it).
fn otsu_threshold(histogram: &[u64; 256]) -> u8 {
    let total: u64 = histogram.iter().sum();
    let total_weighted: f64 = histogram
        .iter()
        .enumerate()
        .map(|(grey, count)| grey as f64 * *count as f64)
        .sum();
    let mut below_count = 0u64;
    let mut below_weighted = 0f64;
    let mut best_threshold = 0u8;
    let mut best_variance = -1f64;
    for (grey, count) in histogram.iter().enumerate() {
        below_count += count;
        below_weighted += grey as f64 * *count as f64;
        if below_count == 0 {
            continue;
        }
        let above_count = total - below_count;
        if above_count == 0 {
            if best_variance < 0.0 {
                best_threshold = grey as u8;
            }
            break;
        }
        let below_mean = below_weighted / below_count as f64;
        let above_mean = (total_weighted - below_weighted) / above_count as f64;
        let variance = below_count as f64 * above_count as f64 * (below_mean - above_mean).powi(2);
        if variance > best_variance {
            best_variance = variance;
            best_threshold = grey as u8;
        }
    }
    best_threshold
}

/// Marks holes (outside pixels not 4-connected to the border) as inside.
fn fill_holes(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut reached_from_border = vec![false; mask.len()];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let visit = |x: usize, y: usize, reached: &mut Vec<bool>, stack: &mut Vec<(usize, usize)>| {
        let index = y * width + x;
        if !mask[index] && !reached[index] {
            reached[index] = true;
            stack.push((x, y));
        }
    };
    for x in 0..width {
        visit(x, 0, &mut reached_from_border, &mut stack);
        visit(x, height - 1, &mut reached_from_border, &mut stack);
    }
    for y in 0..height {
        visit(0, y, &mut reached_from_border, &mut stack);
        visit(width - 1, y, &mut reached_from_border, &mut stack);
    }
    while let Some((x, y)) = stack.pop() {
        if x > 0 {
            visit(x - 1, y, &mut reached_from_border, &mut stack);
        }
        if x + 1 < width {
            visit(x + 1, y, &mut reached_from_border, &mut stack);
        }
        if y > 0 {
            visit(x, y - 1, &mut reached_from_border, &mut stack);
        }
        if y + 1 < height {
            visit(x, y + 1, &mut reached_from_border, &mut stack);
        }
    }
    reached_from_border.iter().map(|outside| !outside).collect()
}

struct GreyStatistics {
    mean: f64,
    stddev: f64,
    min: f64,
    max: f64,
    skew: f64,
    kurt: f64,
    quantiles: [f64; 3],
}

fn histogram_statistics(histogram: &[u64; 256]) -> GreyStatistics {
    let count = histogram.iter().sum::<u64>() as f64;
    let mean = histogram
        .iter()
        .enumerate()
        .map(|(grey, n)| grey as f64 * *n as f64)
        .sum::<f64>()
        / count;
    let central_moment = |power: i32| {
        histogram
            .iter()
            .enumerate()
            .map(|(grey, n)| (grey as f64 - mean).powi(power) * *n as f64)
            .sum::<f64>()
            / count
    };
    let variance = central_moment(2);
    let stddev = variance.sqrt();
    let (skew, kurt) = if variance > 1e-12 {
        (
            central_moment(3) / variance.powf(1.5),
            central_moment(4) / (variance * variance) - 3.0,
        )
    } else {
        (0.0, 0.0)
    };
    let min = histogram.iter().position(|n| *n > 0).unwrap_or(0) as f64;
    let max = histogram.iter().rposition(|n| *n > 0).unwrap_or(0) as f64;
    let mut quantiles = [0f64; 3];
    for (slot, fraction) in [0.25f64, 0.5, 0.75].iter().enumerate() {
        let target = fraction * count;
        let mut cumulative = 0f64;
        for (grey, n) in histogram.iter().enumerate() {
            cumulative += *n as f64;
            if cumulative >= target {
                quantiles[slot] = grey as f64;
                break;
            }
        }
    }
    GreyStatistics {
        mean,
        stddev,
        min,
        max,
        skew,
        kurt,
        quantiles,
    }
}

/// Major and minor axes and angle (degrees) of the ellipse with the mask's second moments.
fn ellipse_fit(
    mask: &[bool],
    width: usize,
    height: usize,
    centroid_x: f64,
    centroid_y: f64,
    area: f64,
) -> (f64, f64, f64) {
    let (mut moment_xx, mut moment_yy, mut moment_xy) = (0f64, 0f64, 0f64);
    for y in 0..height {
        let delta_y = y as f64 + 0.5 - centroid_y;
        for x in 0..width {
            if mask[y * width + x] {
                let delta_x = x as f64 + 0.5 - centroid_x;
                moment_xx += delta_x * delta_x;
                moment_yy += delta_y * delta_y;
                moment_xy += delta_x * delta_y;
            }
        }
    }
    // Each pixel is a unit square: add its own second moment.
    let variance_x = moment_xx / area + 1.0 / 12.0;
    let variance_y = moment_yy / area + 1.0 / 12.0;
    let covariance = moment_xy / area;
    let half_sum = (variance_x + variance_y) / 2.0;
    let spread = (((variance_x - variance_y) / 2.0).powi(2) + covariance * covariance).sqrt();
    let major = 4.0 * (half_sum + spread).max(0.0).sqrt();
    let minor = 4.0 * (half_sum - spread).max(0.0).sqrt();
    // y grows downwards in images; report the angle counter-clockwise as ImageJ does.
    let angle = 0.5 * (-2.0 * covariance).atan2(variance_x - variance_y);
    (major, minor, angle.to_degrees().rem_euclid(180.0))
}

/// Number of pixel edges between the mask and the outside (the image border counts as outside).
fn crack_length(mask: &[bool], width: usize, height: usize) -> f64 {
    let mut edges = 0u64;
    for y in 0..height {
        for x in 0..width {
            if !mask[y * width + x] {
                continue;
            }
            edges += u64::from(x == 0 || !mask[y * width + x - 1]);
            edges += u64::from(x + 1 == width || !mask[y * width + x + 1]);
            edges += u64::from(y == 0 || !mask[(y - 1) * width + x]);
            edges += u64::from(y + 1 == height || !mask[(y + 1) * width + x]);
        }
    }
    edges as f64
}

/// Convex hull (counter-clockwise) of the union of the mask's pixel squares.
fn convex_hull(mask: &[bool], width: usize, height: usize) -> Vec<(f64, f64)> {
    let mut corners = Vec::new();
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let (Some(first), Some(last)) = (
            row.iter().position(|inside| *inside),
            row.iter().rposition(|inside| *inside),
        ) else {
            continue;
        };
        for corner_y in [y as f64, y as f64 + 1.0] {
            corners.push((first as f64, corner_y));
            corners.push((last as f64 + 1.0, corner_y));
        }
    }
    corners.sort_by(|left, right| left.partial_cmp(right).unwrap_or(std::cmp::Ordering::Equal));
    corners.dedup();
    if corners.len() < 3 {
        return corners;
    }
    let cross = |origin: (f64, f64), first: (f64, f64), second: (f64, f64)| {
        (first.0 - origin.0) * (second.1 - origin.1) - (first.1 - origin.1) * (second.0 - origin.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(corners.len() * 2);
    for corner in corners.iter().chain(corners.iter().rev().skip(1)) {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], *corner) <= 0.0 {
            hull.pop();
        }
        hull.push(*corner);
    }
    hull.pop();
    hull
}

fn polygon_area(polygon: &[(f64, f64)]) -> f64 {
    if polygon.len() < 3 {
        return 0.0;
    }
    let twice_area: f64 = (0..polygon.len())
        .map(|index| {
            let (x0, y0) = polygon[index];
            let (x1, y1) = polygon[(index + 1) % polygon.len()];
            x0 * y1 - x1 * y0
        })
        .sum();
    twice_area.abs() / 2.0
}

fn polygon_perimeter(polygon: &[(f64, f64)]) -> f64 {
    if polygon.len() < 2 {
        return 0.0;
    }
    (0..polygon.len())
        .map(|index| {
            let (x0, y0) = polygon[index];
            let (x1, y1) = polygon[(index + 1) % polygon.len()];
            ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt()
        })
        .sum()
}

fn max_vertex_distance(polygon: &[(f64, f64)]) -> f64 {
    let mut longest = 0f64;
    for (index, first) in polygon.iter().enumerate() {
        for second in &polygon[index + 1..] {
            longest =
                longest.max(((first.0 - second.0).powi(2) + (first.1 - second.1).powi(2)).sqrt());
        }
    }
    longest
}

/// Box-counting dimension of the boundary pixels over box sizes 1, 2, 4, ...
fn box_counting_dimension(mask: &[bool], width: usize, height: usize) -> f64 {
    let inside = |x: usize, y: usize| mask[y * width + x];
    let boundary: Vec<(usize, usize)> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            inside(x, y)
                && (x == 0
                    || y == 0
                    || x + 1 == width
                    || y + 1 == height
                    || !inside(x - 1, y)
                    || !inside(x + 1, y)
                    || !inside(x, y - 1)
                    || !inside(x, y + 1))
        })
        .collect();
    let largest_box = width.max(height) / 2;
    let mut points = Vec::new();
    let mut box_size = 1usize;
    while box_size <= largest_box.max(1) {
        let boxes_across = width.div_ceil(box_size);
        let boxes_down = height.div_ceil(box_size);
        let mut occupied = vec![false; boxes_across * boxes_down];
        let mut count = 0u64;
        for (x, y) in &boundary {
            let slot = (y / box_size) * boxes_across + x / box_size;
            if !occupied[slot] {
                occupied[slot] = true;
                count += 1;
            }
        }
        if count > 0 {
            points.push(((1.0 / box_size as f64).ln(), (count as f64).ln()));
        }
        box_size *= 2;
    }
    if points.len() < 2 {
        return 1.0;
    }
    let count = points.len() as f64;
    let mean_x = points.iter().map(|point| point.0).sum::<f64>() / count;
    let mean_y = points.iter().map(|point| point.1).sum::<f64>() / count;
    let covariance: f64 = points
        .iter()
        .map(|point| (point.0 - mean_x) * (point.1 - mean_y))
        .sum();
    let variance: f64 = points.iter().map(|point| (point.0 - mean_x).powi(2)).sum();
    ratio(covariance, variance)
}

/// Skeleton pixel count (ridge of the chessboard distance transform) and max/mean ridge distance.
fn skeleton(mask: &[bool], width: usize, height: usize) -> (f64, f64) {
    const FAR: u32 = u32::MAX / 4;
    let mut distance: Vec<u32> = mask
        .iter()
        .map(|inside| if *inside { FAR } else { 0 })
        .collect();
    let at = |distance: &Vec<u32>, x: isize, y: isize| -> u32 {
        if x < 0 || y < 0 || x >= width as isize || y >= height as isize {
            0
        } else {
            distance[y as usize * width + x as usize]
        }
    };
    for y in 0..height as isize {
        for x in 0..width as isize {
            let index = y as usize * width + x as usize;
            if distance[index] == 0 {
                continue;
            }
            let nearest = [
                at(&distance, x - 1, y),
                at(&distance, x - 1, y - 1),
                at(&distance, x, y - 1),
                at(&distance, x + 1, y - 1),
            ]
            .into_iter()
            .min()
            .unwrap_or(0);
            distance[index] = distance[index].min(nearest + 1);
        }
    }
    for y in (0..height as isize).rev() {
        for x in (0..width as isize).rev() {
            let index = y as usize * width + x as usize;
            if distance[index] == 0 {
                continue;
            }
            let nearest = [
                at(&distance, x + 1, y),
                at(&distance, x + 1, y + 1),
                at(&distance, x, y + 1),
                at(&distance, x - 1, y + 1),
            ]
            .into_iter()
            .min()
            .unwrap_or(0);
            distance[index] = distance[index].min(nearest + 1);
        }
    }
    let mut ridge_pixels = 0u64;
    let mut ridge_distance_sum = 0u64;
    let mut ridge_distance_max = 0u32;
    for y in 0..height as isize {
        for x in 0..width as isize {
            let here = distance[y as usize * width + x as usize];
            if here == 0 {
                continue;
            }
            let on_ridge = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
                .iter()
                .all(|&(neighbour_x, neighbour_y)| at(&distance, neighbour_x, neighbour_y) <= here);
            if on_ridge {
                ridge_pixels += 1;
                ridge_distance_sum += u64::from(here);
                ridge_distance_max = ridge_distance_max.max(here);
            }
        }
    }
    let mean_ridge_distance = ratio(ridge_distance_sum as f64, ridge_pixels as f64);
    (
        ridge_pixels as f64,
        ratio(f64::from(ridge_distance_max), mean_ridge_distance),
    )
}

/// Number of 8-connected components of `mask` (one raster pass with union-find over labels).
fn count_components(mask: &[bool], width: usize, height: usize) -> u64 {
    fn root(parents: &mut [u32], mut label: u32) -> u32 {
        while parents[label as usize] != label {
            let grandparent = parents[parents[label as usize] as usize];
            parents[label as usize] = grandparent;
            label = grandparent;
        }
        label
    }
    const NO_LABEL: u32 = u32::MAX;
    let mut labels = vec![NO_LABEL; mask.len()];
    let mut parents: Vec<u32> = Vec::new();
    let mut components = 0u64;
    for y in 0..height {
        for x in 0..width {
            let index = y * width + x;
            if !mask[index] {
                continue;
            }
            // Already-labelled 8-neighbours: west, north-west, north, north-east.
            let mut neighbour_labels = [NO_LABEL; 4];
            if x > 0 {
                neighbour_labels[0] = labels[index - 1];
            }
            if y > 0 {
                let above = index - width;
                if x > 0 {
                    neighbour_labels[1] = labels[above - 1];
                }
                neighbour_labels[2] = labels[above];
                if x + 1 < width {
                    neighbour_labels[3] = labels[above + 1];
                }
            }
            let mut own_root = NO_LABEL;
            for neighbour_label in neighbour_labels
                .into_iter()
                .filter(|label| *label != NO_LABEL)
            {
                let neighbour_root = root(&mut parents, neighbour_label);
                if own_root == NO_LABEL {
                    own_root = neighbour_root;
                } else if neighbour_root != own_root {
                    // Two components meet: merge them.
                    let (keep, merge) =
                        (own_root.min(neighbour_root), own_root.max(neighbour_root));
                    parents[merge as usize] = keep;
                    own_root = keep;
                    components -= 1;
                }
            }
            if own_root == NO_LABEL {
                own_root = parents.len() as u32;
                parents.push(own_root);
                components += 1;
            }
            labels[index] = own_root;
        }
    }
    components
}

fn mask_centroid(mask: &[bool], width: usize, height: usize) -> (f64, f64) {
    let (mut sum_x, mut sum_y, mut count) = (0f64, 0f64, 0f64);
    for y in 0..height {
        for x in 0..width {
            if mask[y * width + x] {
                sum_x += x as f64 + 0.5;
                sum_y += y as f64 + 0.5;
                count += 1.0;
            }
        }
    }
    (ratio(sum_x, count), ratio(sum_y, count))
}

/// Pixels of `mask` whose mirror image about the centroid (flipping x, or y) is also in the mask.
fn mirror_overlap(
    mask: &[bool],
    width: usize,
    height: usize,
    centroid_x: f64,
    centroid_y: f64,
    flip_x: bool,
) -> f64 {
    let mirror_table = |length: usize, centroid: f64| -> Vec<Option<usize>> {
        (0..length)
            .map(|position| {
                let mirrored = (2.0 * centroid - (position as f64 + 0.5)).floor();
                (mirrored >= 0.0 && (mirrored as usize) < length).then_some(mirrored as usize)
            })
            .collect()
    };
    let mut overlap = 0u64;
    if flip_x {
        let mirror_x = mirror_table(width, centroid_x);
        for y in 0..height {
            let row = &mask[y * width..(y + 1) * width];
            for (x, inside) in row.iter().enumerate() {
                if let (true, Some(mirrored)) = (*inside, mirror_x[x]) {
                    overlap += u64::from(row[mirrored]);
                }
            }
        }
    } else {
        let mirror_y = mirror_table(height, centroid_y);
        for y in 0..height {
            let Some(mirrored) = mirror_y[y] else {
                continue;
            };
            let row = &mask[y * width..(y + 1) * width];
            let mirrored_row = &mask[mirrored * width..(mirrored + 1) * width];
            overlap += row
                .iter()
                .zip(mirrored_row)
                .filter(|(here, there)| **here && **there)
                .count() as u64;
        }
    }
    overlap as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(features: &[Option<f32>; 64], name: &str) -> f32 {
        let index = NATIVE_FEATURE_COLUMNS
            .iter()
            .position(|column| *column == name)
            .unwrap();
        features[index].unwrap()
    }

    /// A dark disc of radius `radius` on a 220 background, optionally with a light hole.
    fn disc_image(size: u32, radius: f32, hole_radius: f32) -> GreyImage {
        let center = size as f32 / 2.0;
        let pixels = (0..size * size)
            .map(|index| {
                let x = (index % size) as f32 + 0.5 - center;
                let y = (index / size) as f32 + 0.5 - center;
                let distance = (x * x + y * y).sqrt();
                if distance <= radius && distance > hole_radius {
                    40 + (index % 7) as u8
                } else {
                    220
                }
            })
            .collect();
        GreyImage::new(size, size, pixels).unwrap()
    }

    #[test]
    fn disc_measures_like_a_disc() {
        let features = measure_features(&disc_image(64, 20.0, 0.0));
        assert!(features.iter().all(Option::is_some));
        let area = column(&features, "area");
        assert!((area - PI * 400.0).abs() < 40.0, "area {area}");
        let perimeter = column(&features, "perim.");
        assert!(
            (perimeter - 2.0 * PI * 20.0).abs() < 8.0,
            "perimeter {perimeter}"
        );
        assert!(column(&features, "circ.") > 0.85);
        assert!((column(&features, "major") - 40.0).abs() < 2.0);
        assert!((column(&features, "elongation") - 1.0).abs() < 0.05);
        assert!((column(&features, "feret") - 41.0).abs() < 2.5);
        assert!(column(&features, "convarea") >= area);
        assert!(column(&features, "symetrieh") > 0.95);
        assert_eq!(column(&features, "nb3"), 1.0);
        assert!(column(&features, "nb1") >= 1.0);
        assert_eq!(column(&features, "%area"), 0.0);
        assert_eq!(column(&features, "width"), 40.0);
        assert!((column(&features, "fractal") - 1.0).abs() < 0.3);
        assert!(column(&features, "mean") < 50.0 && column(&features, "meanimagegrey") > 100.0);
    }

    #[test]
    fn ring_has_holes_and_elongated_bar_has_an_angle() {
        let ring = measure_features(&disc_image(64, 20.0, 12.0));
        assert!(column(&ring, "%area") > 25.0);
        assert!(column(&ring, "area_exc") < column(&ring, "area"));
        let (width, height) = (60u32, 40u32);
        let bar: Vec<u8> = (0..width * height)
            .map(|index| {
                let x = (index % width) as i32;
                let y = (index / width) as i32;
                if (y - x / 2 - 5).abs() <= 2 && (5..55).contains(&x) {
                    30
                } else {
                    210
                }
            })
            .collect();
        let bar_features = measure_features(&GreyImage::new(width, height, bar).unwrap());
        assert!(column(&bar_features, "elongation") > 5.0);
        let angle = column(&bar_features, "angle");
        // The bar goes down-right in image coordinates: about -26.6 degrees, i.e. 153.4.
        assert!((angle - 153.4).abs() < 4.0, "angle {angle}");
    }

    #[test]
    fn components_follow_eight_connectivity() {
        // Two diagonal touches (one component), a U shape joined late, and an isolated pixel.
        let rows = [
            "X.....X.", ".X...XX.", "......X.", "X.X.....", "X.X....X", "XXX.....",
        ];
        let mask: Vec<bool> = rows
            .iter()
            .flat_map(|row| row.chars().map(|cell| cell == 'X'))
            .collect();
        assert_eq!(count_components(&mask, 8, rows.len()), 4);
        assert_eq!(count_components(&[false; 6], 3, 2), 0);
    }

    #[test]
    fn tiny_and_uniform_images_measure_without_panicking() {
        for image in [
            GreyImage::new(2, 2, vec![10, 200, 200, 200]).unwrap(),
            GreyImage::new(3, 2, vec![128; 6]).unwrap(),
            GreyImage::new(1, 1, vec![0]).unwrap(),
        ] {
            let features = measure_features(&image);
            assert!(
                features
                    .iter()
                    .all(|value| value.is_some_and(f32::is_finite)),
                "{features:?}"
            );
        }
    }
}
