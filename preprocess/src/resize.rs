//! OpenCV-exact bicubic resize of 8-bit grey images, and padding to a square.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::GreyImage;

/// OpenCV's `INTER_RESIZE_COEF_BITS`: interpolation taps are 11-bit fixed point.
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;
/// OpenCV vectorises the vertical pass 8 outputs at a time (128-bit `v_int16`); columns past the last
/// full group of 8 take its scalar integer path, which rounds slightly differently.
const VERTICAL_VECTOR_LANES: usize = 8;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to the nearest integer,
/// ties to even (the default rounding mode), without a libm `rintf` call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Rounds half to even and saturates to u8, as OpenCV's `saturate_cast<uchar>(cvRound(v))`.
///
/// Clamping to [0, 255] before rounding gives the same result as after (both bounds are integers).
/// `clamped + ROUND_MAGIC` is then exactly `ROUND_MAGIC + n` with n the rounded value, whose f32 bit
/// pattern is `0x4B40_0000 + n`: the low byte is n, read without a float-to-int conversion (which
/// vectorises). The inputs are sums of products of finite weights and pixels, never NaN.
#[inline]
fn round_to_u8(value: f32) -> u8 {
    let clamped = value.clamp(0.0, 255.0);
    ((clamped + ROUND_MAGIC).to_bits() & 0xFF) as u8
}

/// Both source sides at least this long: opencv-python's `cv2.resize` hands `INTER_CUBIC` on uint8 to
/// Intel IPP (float arithmetic); smaller sources take OpenCV's own fixed-point `resizeGeneric_`.
const IPP_MIN_SOURCE_SIDE: usize = 4;

/// The four taps of one output coordinate in OpenCV's fixed-point code: clamped source indices and
/// 11-bit weights.
#[derive(Clone, Copy, Debug, Default)]
struct FixedPointTap {
    source_indices: [u32; 4],
    weights: [i16; 4],
}

/// The four taps of one output coordinate in IPP's float code: clamped source indices and f32 weights.
#[derive(Clone, Copy, Debug, Default)]
struct FloatTap {
    source_indices: [u32; 4],
    weights: [f32; 4],
}

/// Float taps along one axis with what the passes derive from them.
#[derive(Debug)]
struct FloatAxis {
    taps: Vec<FloatTap>,
    /// Weight k of every tap, one plane per k (for the vectorised horizontal arithmetic).
    weight_planes: [Vec<f32>; 4],
    /// The taps reading four consecutive unclamped source pixels (see [`consecutive_tap_columns`]).
    consecutive: std::ops::Range<usize>,
}

impl FloatAxis {
    fn new(source_len: usize, destination_len: usize) -> FloatAxis {
        let mut taps = Vec::with_capacity(destination_len);
        fill_float_taps(source_len, destination_len, &mut taps);
        let weight_planes =
            std::array::from_fn(|k| taps.iter().map(|tap| tap.weights[k]).collect());
        let consecutive = consecutive_tap_columns(&taps);
        FloatAxis {
            taps,
            weight_planes,
            consecutive,
        }
    }
}

/// Most taps kept in a thread's [`ResizeScratch::float_axis_cache`], all axes together (48 bytes each
/// with their weight planes: 3 MiB, or 1024 axes of 64 outputs); the cache is emptied when full.
const FLOAT_AXIS_CACHE_TAPS: usize = 64 * 1024;

/// Reusable buffers, one set per thread, so that resizing allocates nothing in steady state.
#[derive(Default)]
struct ResizeScratch {
    fixed_column_taps: Vec<FixedPointTap>,
    fixed_row_taps: Vec<FixedPointTap>,
    /// Float-path taps by (source length, destination length): the same for rows and columns, and
    /// FlowCam images repeat their sides, so most images find both axes here.
    float_axis_cache: HashMap<(usize, usize), FloatAxis>,
    /// Taps held by `float_axis_cache`, all axes together.
    float_axis_cache_taps: usize,
    /// For each source row: its slot in the horizontal-pass buffer, or `u32::MAX` if not yet computed.
    row_slot: Vec<u32>,
    /// Horizontally resized source rows, `out_width` values each (fixed-point path).
    fixed_rows: Vec<i32>,
    /// Horizontally resized source rows, `out_width` values each (float path).
    float_rows: Vec<f32>,
    /// The four source pixels of every output column, packed, `out_width` words per needed row
    /// (float path).
    gathered_pixels: Vec<u32>,
    /// The source rows read by some output row, in slot order (float path).
    needed_rows: Vec<u32>,
}

thread_local! {
    static RESIZE_SCRATCH: RefCell<ResizeScratch> = RefCell::new(ResizeScratch::default());
}

/// OpenCV's `interpolateCubic`, operation for operation in f32 (A = -0.75).
fn cubic_coefficients_f32(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    let c3 = 1.0 - c0 - c1 - c2;
    [c0, c1, c2, c3]
}

/// The same Keys kernel (A = -0.75) in f64, as used for the IPP-compatible float taps.
fn cubic_coefficients_f64(x: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    let c3 = 1.0 - c0 - c1 - c2;
    [c0, c1, c2, c3]
}

/// `saturate_cast<short>(float)`: round half to even, then clamp.
fn saturate_i16(value: f32) -> i16 {
    value
        .round_ties_even()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// Source-to-destination scale exactly as OpenCV derives it: `cv::resize` passes
/// `inv_scale = dst / src` and `hal::resize` inverts it, so keep both roundings.
fn opencv_scale(source_len: usize, destination_len: usize) -> f64 {
    let inverse_scale = destination_len as f64 / source_len as f64;
    1.0 / inverse_scale
}

fn clamped_indices(first_source: i64, source_len: usize) -> [u32; 4] {
    let last_source_index = source_len as i64 - 1;
    std::array::from_fn(|k| (first_source + k as i64).clamp(0, last_source_index) as u32)
}

/// Fixed-point taps along one axis, as `cv::hal::resize` builds `xofs`/`ialpha` (or `yofs`/`ibeta`).
fn fill_fixed_point_taps(source_len: usize, destination_len: usize, taps: &mut Vec<FixedPointTap>) {
    taps.clear();
    let scale = opencv_scale(source_len, destination_len);
    for destination_index in 0..destination_len {
        let position = ((destination_index as f64 + 0.5) * scale - 0.5) as f32;
        let floor_position = position.floor();
        let coefficients = cubic_coefficients_f32(position - floor_position);
        taps.push(FixedPointTap {
            source_indices: clamped_indices(floor_position as i64 - 1, source_len),
            weights: coefficients.map(|coefficient| saturate_i16(coefficient * COEF_SCALE)),
        });
    }
}

/// `value.floor()` for |value| < 2^63, inline (baseline x86-64 has no rounding instruction, so
/// `f64::floor` is a libm call). Gives +0.0 where `floor` gives -0.0, which no caller distinguishes:
/// positions are never -0.0 (`a - 0.5` is never negative zero) and the sign of a zero fraction does not
/// change the cubic weights.
#[inline]
fn floor_f64(value: f64) -> f64 {
    let truncated = value as i64 as f64;
    if truncated > value {
        truncated - 1.0
    } else {
        truncated
    }
}

/// Float taps along one axis (position and weights in f64, weights stored as f32).
fn fill_float_taps(source_len: usize, destination_len: usize, taps: &mut Vec<FloatTap>) {
    taps.clear();
    let scale = opencv_scale(source_len, destination_len);
    for destination_index in 0..destination_len {
        let position = (destination_index as f64 + 0.5) * scale - 0.5;
        let floor_position = floor_f64(position);
        let coefficients = cubic_coefficients_f64(position - floor_position);
        taps.push(FloatTap {
            source_indices: clamped_indices(floor_position as i64 - 1, source_len),
            weights: coefficients.map(|coefficient| coefficient as f32),
        });
    }
}

/// Resizes with bicubic interpolation exactly as opencv-python's `cv2.resize(src, (out_width, out_height),
/// interpolation=cv2.INTER_CUBIC)` does on uint8 (Keys kernel A = -0.75, `src = (dst + 0.5) * scale - 0.5`,
/// replicated borders, no antialiasing when downscaling).
///
/// Like OpenCV, two code paths:
/// - both source sides >= 4: OpenCV delegates to Intel IPP, whose result we reproduce with f32 taps
///   and f32 sums taken from the last tap to the first, horizontal pass then vertical, rounded half to
///   even and saturated (measured: 99.9997% of ~1M pixels bit-exact, the rest off by one);
/// - otherwise OpenCV's `resizeGeneric_`: 11-bit fixed-point taps, integer horizontal pass, and the
///   vertical pass of its SIMD path in f32 (`S0*b0 + (S1*b1 + (S2*b2 + S3*b3))`, `b = beta / 2^22`),
///   with columns past the last multiple of 8 on its scalar `(sum + 2^21) >> 22` (bit-exact).
///
/// A zero output size gives an empty image of that size.
pub fn resize_bicubic(src: &GreyImage, out_width: usize, out_height: usize) -> GreyImage {
    let mut pixels = vec![0u8; out_width * out_height];
    resize_bicubic_into(
        src.width,
        src.height,
        &src.pixels,
        out_width,
        out_height,
        &mut pixels,
    );
    GreyImage {
        width: out_width,
        height: out_height,
        pixels,
    }
}

/// Resizes `source` (row-major, `source_width * source_height`) into `output`.
pub(crate) fn resize_bicubic_into(
    source_width: usize,
    source_height: usize,
    source: &[u8],
    out_width: usize,
    out_height: usize,
    output: &mut [u8],
) {
    debug_assert_eq!(source.len(), source_width * source_height);
    debug_assert_eq!(output.len(), out_width * out_height);
    if out_width == 0 || out_height == 0 || output.len() != out_width * out_height {
        return;
    }
    if source_width == 0 || source_height == 0 || source.len() != source_width * source_height {
        output.fill(0);
        return;
    }
    if source_width == out_width && source_height == out_height {
        output.copy_from_slice(source);
        return;
    }
    RESIZE_SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if source_width.min(source_height) >= IPP_MIN_SOURCE_SIDE {
            resize_float(
                &mut scratch,
                source_width,
                source_height,
                source,
                out_width,
                output,
            );
        } else {
            resize_fixed_point(
                &mut scratch,
                source_width,
                source_height,
                source,
                out_width,
                output,
            );
        }
    });
}

/// The IPP-compatible float path (see [`resize_bicubic`]).
///
/// The horizontal pass first packs each output's four source pixels into a `u32` (scalar loads), then
/// does the arithmetic over whole rows, which the compiler vectorises; the vertical pass is plain row
/// arithmetic too. The operations and their order per output are those of the scalar formula (Rust
/// never fuses a multiply and an add), so the results are bit-identical to it. Taps are cached per
/// thread by (source length, destination length).
fn resize_float(
    scratch: &mut ResizeScratch,
    source_width: usize,
    source_height: usize,
    source: &[u8],
    out_width: usize,
    output: &mut [u8],
) {
    let out_height = output.len() / out_width;
    let ResizeScratch {
        float_axis_cache,
        float_axis_cache_taps,
        row_slot,
        needed_rows,
        float_rows,
        gathered_pixels,
        ..
    } = scratch;
    let column_key = (source_width, out_width);
    let row_key = (source_height, out_height);
    let missing_taps: usize = [column_key, row_key]
        .iter()
        .filter(|key| !float_axis_cache.contains_key(key))
        .map(|&(_, destination_len)| destination_len)
        .sum();
    if *float_axis_cache_taps + missing_taps > FLOAT_AXIS_CACHE_TAPS {
        float_axis_cache.clear();
        *float_axis_cache_taps = 0;
    }
    for (source_len, destination_len) in [column_key, row_key] {
        float_axis_cache
            .entry((source_len, destination_len))
            .or_insert_with(|| {
                *float_axis_cache_taps += destination_len;
                FloatAxis::new(source_len, destination_len)
            });
    }
    let (Some(columns), Some(rows)) = (
        float_axis_cache.get(&column_key),
        float_axis_cache.get(&row_key),
    ) else {
        return;
    };
    let float_row_taps = &rows.taps;
    // The source rows some output row reads, each given a slot in the horizontal-pass buffers.
    row_slot.clear();
    row_slot.resize(source_height, u32::MAX);
    needed_rows.clear();
    for row_tap in float_row_taps.iter() {
        for &source_row in &row_tap.source_indices {
            let slot = &mut row_slot[source_row as usize];
            if *slot == u32::MAX {
                *slot = needed_rows.len() as u32;
                needed_rows.push(source_row);
            }
        }
    }
    // Horizontal pass in two sweeps over all needed rows: gather every row's tap pixels, then the
    // arithmetic. (Reading the gathered words right after writing them, row by row, stalls on store
    // forwarding.)
    gathered_pixels.clear();
    gathered_pixels.resize(needed_rows.len() * out_width, 0);
    for (gathered, &source_row) in gathered_pixels
        .chunks_exact_mut(out_width)
        .zip(needed_rows.iter())
    {
        let source_row = source_row as usize;
        let line = &source[source_row * source_width..(source_row + 1) * source_width];
        gather_line_taps(line, &columns.taps, columns.consecutive.clone(), gathered);
    }
    float_rows.clear();
    float_rows.resize(needed_rows.len() * out_width, 0.0);
    for (resized, gathered) in float_rows
        .chunks_exact_mut(out_width)
        .zip(gathered_pixels.chunks_exact(out_width))
    {
        weigh_gathered_line(gathered, &columns.weight_planes, resized);
    }
    for (out_row, row_tap) in output
        .chunks_exact_mut(out_width)
        .zip(float_row_taps.iter())
    {
        let [r0, r1, r2, r3] = row_tap.source_indices.map(|source_row| {
            let start = row_slot[source_row as usize] as usize * out_width;
            &float_rows[start..start + out_width]
        });
        let [w0, w1, w2, w3] = row_tap.weights;
        let columns = r0.iter().zip(r1).zip(r2).zip(r3);
        for (target, (((&v0, &v1), &v2), &v3)) in out_row.iter_mut().zip(columns) {
            *target = round_to_u8(((v3 * w3 + v2 * w2) + v1 * w1) + v0 * w0);
        }
    }
}

/// Output columns whose four taps are the consecutive, unclamped source pixels `first..first + 4`.
///
/// Tap positions grow with the column, so these columns form one range; the columns before and after it
/// touch the replicated border.
fn consecutive_tap_columns(column_taps: &[FloatTap]) -> std::ops::Range<usize> {
    let is_consecutive = |tap: &FloatTap| {
        let [i0, i1, i2, i3] = tap.source_indices;
        i1 == i0 + 1 && i2 == i0 + 2 && i3 == i0 + 3
    };
    let start = column_taps
        .iter()
        .position(is_consecutive)
        .unwrap_or(column_taps.len());
    let len = column_taps[start..]
        .iter()
        .take_while(|&tap| is_consecutive(tap))
        .count();
    start..start + len
}

/// Packs the four source pixels of every output column of one line into a little-endian `u32`: one
/// 4-byte load for the `consecutive` columns, four loads for the border columns.
fn gather_line_taps(
    line: &[u8],
    column_taps: &[FloatTap],
    consecutive: std::ops::Range<usize>,
    gathered: &mut [u32],
) {
    let border_columns = (0..consecutive.start).chain(consecutive.end..column_taps.len());
    for x in border_columns {
        let [i0, i1, i2, i3] = column_taps[x].source_indices.map(|index| index as usize);
        gathered[x] = u32::from_le_bytes([line[i0], line[i1], line[i2], line[i3]]);
    }
    let interior_taps = &column_taps[consecutive.clone()];
    for (word, tap) in gathered[consecutive].iter_mut().zip(interior_taps) {
        let first = tap.source_indices[0] as usize;
        let window = &line[first..first + 4];
        *word = u32::from_le_bytes([window[0], window[1], window[2], window[3]]);
    }
}

/// Horizontal arithmetic of one line: `out[x] = ((p3 * w3 + p2 * w2) + p1 * w1) + p0 * w0` over the
/// pixels packed by [`gather_line_taps`] and the column weights (vectorised by the compiler).
fn weigh_gathered_line(gathered: &[u32], weight_planes: &[Vec<f32>; 4], out: &mut [f32]) {
    let [w0, w1, w2, w3] = weight_planes;
    let weights = w0.iter().zip(w1.iter()).zip(w2.iter()).zip(w3.iter());
    for (target, (&word, (((&w0, &w1), &w2), &w3))) in
        out.iter_mut().zip(gathered.iter().zip(weights))
    {
        let pixel = |k: u32| ((word >> (8 * k)) & 0xFF) as i32 as f32;
        let (p0, p1, p2, p3) = (pixel(0), pixel(1), pixel(2), pixel(3));
        *target = ((p3 * w3 + p2 * w2) + p1 * w1) + p0 * w0;
    }
}

/// OpenCV's own fixed-point `resizeGeneric_` path (see [`resize_bicubic`]).
fn resize_fixed_point(
    scratch: &mut ResizeScratch,
    source_width: usize,
    source_height: usize,
    source: &[u8],
    out_width: usize,
    output: &mut [u8],
) {
    let out_height = output.len() / out_width;
    let ResizeScratch {
        fixed_column_taps,
        fixed_row_taps,
        row_slot,
        fixed_rows,
        ..
    } = scratch;
    fill_fixed_point_taps(source_width, out_width, fixed_column_taps);
    fill_fixed_point_taps(source_height, out_height, fixed_row_taps);
    row_slot.clear();
    row_slot.resize(source_height, u32::MAX);
    fixed_rows.clear();

    let scale = 1.0f32 / (COEF_SCALE * COEF_SCALE);
    let vector_columns = out_width - out_width % VERTICAL_VECTOR_LANES;
    for (out_row, row_tap) in output
        .chunks_exact_mut(out_width)
        .zip(fixed_row_taps.iter())
    {
        let mut starts = [0usize; 4];
        for (start, &source_row) in starts.iter_mut().zip(row_tap.source_indices.iter()) {
            let source_row = source_row as usize;
            if row_slot[source_row] == u32::MAX {
                row_slot[source_row] = (fixed_rows.len() / out_width) as u32;
                let line = &source[source_row * source_width..(source_row + 1) * source_width];
                fixed_rows.extend(fixed_column_taps.iter().map(|tap| {
                    tap.source_indices
                        .iter()
                        .zip(tap.weights.iter())
                        .map(|(&index, &weight)| {
                            i32::from(line[index as usize]) * i32::from(weight)
                        })
                        .sum::<i32>()
                }));
            }
            *start = row_slot[source_row] as usize * out_width;
        }
        let rows: [&[i32]; 4] = starts.map(|start| &fixed_rows[start..start + out_width]);
        let [b0, b1, b2, b3] = row_tap.weights.map(|weight| f32::from(weight) * scale);
        for x in 0..vector_columns {
            let value = (rows[0][x] as f32) * b0
                + ((rows[1][x] as f32) * b1
                    + ((rows[2][x] as f32) * b2 + (rows[3][x] as f32) * b3));
            out_row[x] = round_to_u8(value);
        }
        let [w0, w1, w2, w3] = row_tap.weights.map(i32::from);
        for x in vector_columns..out_width {
            let sum = rows[0][x] * w0 + rows[1][x] * w1 + rows[2][x] * w2 + rows[3][x] * w3;
            out_row[x] =
                ((sum + (1 << (2 * COEF_BITS - 1))) >> (2 * COEF_BITS)).clamp(0, 255) as u8;
        }
    }
}

/// Centres the image on a square canvas of side max(width, height), filled with the median of the
/// image's border pixels (the lower median when their count is even). A square image is returned as is.
pub fn pad_to_square(src: &GreyImage) -> GreyImage {
    let side = src.width.max(src.height);
    if src.width == src.height || src.pixels.len() != src.width * src.height {
        return src.clone();
    }
    let fill = border_median(src);
    let mut pixels = vec![fill; side * side];
    let left = (side - src.width) / 2;
    let top = (side - src.height) / 2;
    for (row_index, source_line) in src.pixels.chunks_exact(src.width).enumerate() {
        let start = (top + row_index) * side + left;
        pixels[start..start + src.width].copy_from_slice(source_line);
    }
    GreyImage {
        width: side,
        height: side,
        pixels,
    }
}

/// Lower median of the pixels on the outermost rows and columns, via a histogram.
fn border_median(src: &GreyImage) -> u8 {
    let mut histogram = [0u32; 256];
    let (width, height) = (src.width, src.height);
    for y in 0..height {
        let line = &src.pixels[y * width..(y + 1) * width];
        if y == 0 || y == height - 1 {
            line.iter()
                .for_each(|&pixel| histogram[usize::from(pixel)] += 1);
        } else {
            histogram[usize::from(line[0])] += 1;
            if width > 1 {
                histogram[usize::from(line[width - 1])] += 1;
            }
        }
    }
    let border_count: u32 = histogram.iter().sum();
    let rank = border_count.div_ceil(2);
    let mut cumulative = 0u32;
    for (value, &count) in histogram.iter().enumerate() {
        cumulative += count;
        if cumulative >= rank {
            return value as u8;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_is_round_half_even_with_saturation() {
        for value in [
            -3.0f32, -0.5, 0.49, 0.5, 1.5, 2.5, 2.5000002, 127.5, 128.5, 254.5, 255.4, 255.5, 300.0,
        ] {
            let expected = value.round_ties_even().clamp(0.0, 255.0) as u8;
            assert_eq!(round_to_u8(value), expected, "{value}");
        }
    }

    #[test]
    fn inline_floor_matches_floor() {
        for value in [
            -2.5f64, -1.0, -0.999, -0.5, -1e-12, 0.0, 1e-12, 0.5, 1.0, 1.5, 63.999, 64.0, 9_999.25,
        ] {
            assert_eq!(floor_f64(value), value.floor(), "{value}");
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let pixels: Vec<u8> = (0..35u8).map(|value| value.wrapping_mul(37)).collect();
        let image = GreyImage::new(7, 5, pixels).unwrap();
        assert_eq!(resize_bicubic(&image, 7, 5), image);
    }

    #[test]
    fn uniform_image_stays_uniform() {
        let image = GreyImage::new(13, 9, vec![200; 117]).unwrap();
        let resized = resize_bicubic(&image, 64, 64);
        assert!(
            resized.pixels.iter().all(|&pixel| pixel == 200),
            "{:?}",
            &resized.pixels[..16]
        );
    }

    #[test]
    fn fixed_point_taps_sum_close_to_one_and_clamp() {
        let mut taps = Vec::new();
        fill_fixed_point_taps(3, 64, &mut taps);
        for tap in &taps {
            let total: i32 = tap.weights.iter().map(|&weight| i32::from(weight)).sum();
            assert!((total - 2048).abs() <= 2, "{tap:?}");
            assert!(tap.source_indices.iter().all(|&index| index < 3));
        }
    }

    #[test]
    fn pad_to_square_centres_and_fills_with_border_median() {
        // 4 wide, 2 tall: every pixel is on the border; values 10,10,10,50 / 10,90,10,10 -> median 10.
        let image = GreyImage::new(4, 2, vec![10, 10, 10, 50, 10, 90, 10, 10]).unwrap();
        let padded = pad_to_square(&image);
        assert_eq!((padded.width, padded.height), (4, 4));
        assert_eq!(&padded.pixels[0..4], &[10, 10, 10, 10]);
        assert_eq!(&padded.pixels[4..8], &[10, 10, 10, 50]);
        assert_eq!(&padded.pixels[8..12], &[10, 90, 10, 10]);
        assert_eq!(&padded.pixels[12..16], &[10, 10, 10, 10]);

        // 1 wide, 3 tall, border median of {0, 255, 255} is 255; column centred at x = 1.
        let tall = GreyImage::new(1, 3, vec![0, 255, 255]).unwrap();
        let padded_tall = pad_to_square(&tall);
        assert_eq!(
            padded_tall.pixels,
            vec![255, 0, 255, 255, 255, 255, 255, 255, 255]
        );
    }

    #[test]
    fn border_median_ignores_interior() {
        // 3x3 with a dark centre: the border is all 240.
        let mut pixels = vec![240; 9];
        pixels[4] = 0;
        let image = GreyImage::new(3, 3, pixels).unwrap();
        assert_eq!(border_median(&image), 240);
        let wide = GreyImage::new(5, 3, vec![7, 7, 7, 7, 7, 9, 0, 0, 0, 9, 7, 7, 7, 7, 7]).unwrap();
        assert_eq!(pad_to_square(&wide).pixels[0], 7);
    }
}
