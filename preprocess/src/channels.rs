//! The threshold and opening channels computed from the resized grey image.

/// Structuring element side of the opening (a square of ones).
const OPENING_SIZE: usize = 4;
/// OpenCV's default anchor for an even kernel: its centre, rounded down (2 for a 4x4 kernel).
const OPENING_ANCHOR: usize = OPENING_SIZE / 2;

/// Writes 255 where `grey < mean(grey)` and 0 elsewhere (a dark object becomes white).
///
/// The comparison is exact: `pixel * len < sum`, with no floating-point mean.
pub fn threshold_below_mean(grey: &[u8], out: &mut [u8]) {
    debug_assert_eq!(grey.len(), out.len());
    // In u32 (which vectorises well) neither the sum nor pixel * len can overflow up to this length.
    const U32_SAFE_LEN: usize = (u32::MAX / 255) as usize;
    if grey.len() <= U32_SAFE_LEN {
        let sum: u32 = grey.iter().map(|&pixel| u32::from(pixel)).sum();
        let len = grey.len() as u32;
        for (target, &pixel) in out.iter_mut().zip(grey.iter()) {
            *target = if u32::from(pixel) * len < sum { 255 } else { 0 };
        }
    } else {
        let sum: u64 = grey.iter().map(|&pixel| u64::from(pixel)).sum();
        let len = grey.len() as u64;
        for (target, &pixel) in out.iter_mut().zip(grey.iter()) {
            *target = if u64::from(pixel) * len < sum { 255 } else { 0 };
        }
    }
}

/// Opening by the 4x4 square of a binary (0/255) image exactly 64 pixels wide, one `u64` bit mask per row.
///
/// Same result as [`morphological_open_4x4`] on 0/255 input, without per-pixel window loops: bit `x` of a
/// row mask is column `x`, so the offsets -2..=+1 are shifts, and bits shifted in from outside the image
/// are the neutral element (ones for erosion, zeros for dilation). Rows are packed to masks and unpacked
/// back to bytes eight pixels at a time with word arithmetic; nothing is allocated.
pub(crate) fn open_binary_64_wide(binary: &[u8], out: &mut [u8]) {
    const WIDTH: usize = 64;
    const MAX_HEIGHT: usize = 256;
    debug_assert_eq!(binary.len() % WIDTH, 0);
    debug_assert_eq!(binary.len(), out.len());
    let height = binary.len() / WIDTH;
    if height == 0 || height > MAX_HEIGHT || out.len() != binary.len() {
        morphological_open_4x4(binary, WIDTH, height, out);
        return;
    }
    let mut masks = [0u64; MAX_HEIGHT];
    for (mask, line) in masks.iter_mut().zip(binary.chunks_exact(WIDTH)) {
        *mask = line
            .chunks_exact(8)
            .enumerate()
            .fold(0u64, |bits, (group, pixels)| {
                bits | (nonzero_byte_bits(eight_bytes(pixels)) << (8 * group))
            });
    }
    // Horizontal erosion: bit x survives if bits x-2, x-1, x, x+1 are all set.
    let mut row_pass = [0u64; MAX_HEIGHT];
    for (target, &row) in row_pass.iter_mut().zip(masks[..height].iter()) {
        *target = row & ((row << 1) | 0b1) & ((row << 2) | 0b11) & ((row >> 1) | (1 << 63));
    }
    let mut eroded = [0u64; MAX_HEIGHT];
    for (y, target) in eroded[..height].iter_mut().enumerate() {
        *target = window_rows(y, height).fold(u64::MAX, |bits, row| bits & row_pass[row]);
    }
    // Horizontal dilation: bit x is set if any of bits x-2, x-1, x, x+1 is set.
    for (target, &row) in row_pass.iter_mut().zip(eroded[..height].iter()) {
        *target = row | (row << 1) | (row << 2) | (row >> 1);
    }
    for (y, line) in out.chunks_exact_mut(WIDTH).enumerate() {
        let bits = window_rows(y, height).fold(0u64, |bits, row| bits | row_pass[row]);
        for (group, pixels) in line.chunks_exact_mut(8).enumerate() {
            let group_bits = (bits >> (8 * group)) as u8;
            pixels.copy_from_slice(&bits_to_bytes(group_bits).to_le_bytes());
        }
    }
}

const LOW_SEVEN_BITS: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Eight bytes as a little-endian word (byte i is bits 8i..8i+8); `pixels` has exactly 8 bytes.
fn eight_bytes(pixels: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(pixels);
    u64::from_le_bytes(bytes)
}

/// Bit i of the result is set iff byte i of `word` is nonzero.
fn nonzero_byte_bits(word: u64) -> u64 {
    // The high bit of each byte becomes "byte is nonzero" (no carry crosses a byte: 0x7F + 0x7F < 0x100).
    let nonzero = (((word & LOW_SEVEN_BITS) + LOW_SEVEN_BITS) | word) & HIGH_BITS;
    // Moves bit 8i to bit 56 + i: the shifted copies land on distinct bits, so no carries interfere.
    (nonzero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Byte i of the result is 255 if bit i of `bits` is set, else 0.
fn bits_to_bytes(bits: u8) -> u64 {
    // Byte i keeps bit i of a copy of `bits`, then nonzero bytes become 0x01, then 0xFF.
    let spread = (u64::from(bits) * 0x0101_0101_0101_0101) & 0x8040_2010_0804_0201;
    let nonzero = (((spread & LOW_SEVEN_BITS) + LOW_SEVEN_BITS) | spread) & HIGH_BITS;
    (nonzero >> 7) * 0xFF
}

/// Rows y-2..=y+1 clipped to the image.
fn window_rows(y: usize, height: usize) -> std::ops::Range<usize> {
    y.saturating_sub(OPENING_ANCHOR)..(y + OPENING_SIZE - OPENING_ANCHOR).min(height)
}

/// Morphological opening (erosion then dilation) by a 4x4 square, as
/// `cv2.morphologyEx(image, cv2.MORPH_OPEN, np.ones((4, 4), np.uint8))` computes it: both passes look at
/// offsets -2..=+1 around each pixel (anchor (2, 2)) and pixels outside the image are ignored
/// (OpenCV's default border value for morphology is neutral). Each pass is separable (rows, then columns).
pub fn morphological_open_4x4(image: &[u8], width: usize, height: usize, out: &mut [u8]) {
    debug_assert_eq!(image.len(), width * height);
    debug_assert_eq!(out.len(), width * height);
    if width == 0 || height == 0 || image.len() != width * height || out.len() != image.len() {
        return;
    }
    let mut scratch = vec![0u8; width * height];
    let mut eroded = vec![0u8; width * height];
    window_filter(image, width, height, &mut scratch, &mut eroded, u8::min);
    window_filter(&eroded, width, height, &mut scratch, out, u8::max);
}

/// Applies `combine` over the 4x4 window at offsets -2..=+1 (clipped to the image), rows then columns.
fn window_filter(
    image: &[u8],
    width: usize,
    height: usize,
    row_pass: &mut [u8],
    out: &mut [u8],
    combine: fn(u8, u8) -> u8,
) {
    let window_bounds = |center: usize, len: usize| {
        let start = center.saturating_sub(OPENING_ANCHOR);
        let end = (center + OPENING_SIZE - OPENING_ANCHOR).min(len);
        start..end
    };
    for y in 0..height {
        let line = &image[y * width..(y + 1) * width];
        for x in 0..width {
            let window = &line[window_bounds(x, width)];
            row_pass[y * width + x] = window.iter().copied().reduce(combine).unwrap_or(0);
        }
    }
    for y in 0..height {
        let rows = window_bounds(y, height);
        for x in 0..width {
            out[y * width + x] = rows
                .clone()
                .map(|row| row_pass[row * width + x])
                .reduce(combine)
                .unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_mask_opening_matches_the_general_one() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for density in [2u64, 3, 5, 8] {
            // random 0/255 noise plus random white rectangles, so that some structure survives the opening
            let mut binary: Vec<u8> = (0..64 * 64)
                .map(|_| if next() % 10 < density { 255 } else { 0 })
                .collect();
            for _ in 0..12 {
                let (left, top) = ((next() % 64) as usize, (next() % 64) as usize);
                let (width, height) = (1 + (next() % 9) as usize, 1 + (next() % 9) as usize);
                for y in top..(top + height).min(64) {
                    for x in left..(left + width).min(64) {
                        binary[y * 64 + x] = 255;
                    }
                }
            }
            let mut general = vec![0u8; binary.len()];
            morphological_open_4x4(&binary, 64, 64, &mut general);
            let mut bit_masks = vec![0u8; binary.len()];
            open_binary_64_wide(&binary, &mut bit_masks);
            assert_eq!(general, bit_masks, "density {density}");
            assert!(
                general.contains(&255) && general.contains(&0),
                "test image too uniform"
            );
        }
    }

    #[test]
    fn word_packing_round_trips_every_byte_pattern() {
        for bits in 0..=255u8 {
            let bytes = bits_to_bytes(bits).to_le_bytes();
            for (index, &byte) in bytes.iter().enumerate() {
                assert_eq!(
                    byte,
                    if bits >> index & 1 == 1 { 255 } else { 0 },
                    "{bits:08b}"
                );
            }
            assert_eq!(nonzero_byte_bits(bits_to_bytes(bits)), u64::from(bits));
        }
        // any nonzero byte counts as set, not only 255
        let word = u64::from_le_bytes([0, 1, 0x80, 0x7F, 0, 0xFF, 0x40, 0]);
        assert_eq!(nonzero_byte_bits(word), 0b0110_1110);
    }

    #[test]
    fn threshold_marks_dark_pixels_only() {
        let grey = [10, 200, 200, 200];
        let mut out = [0u8; 4];
        threshold_below_mean(&grey, &mut out);
        assert_eq!(out, [255, 0, 0, 0]);
        // A uniform image has no pixel strictly below its mean.
        threshold_below_mean(&[7; 4], &mut out);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn opening_removes_small_blobs_and_keeps_big_ones() {
        let (width, height) = (12, 12);
        let mut image = vec![0u8; width * height];
        // a 3x3 blob (smaller than the element) disappears
        for y in 1..4 {
            for x in 1..4 {
                image[y * width + x] = 255;
            }
        }
        // a 5x5 blob (rows/cols 6..=10) survives, moved by +1: with the even kernel's anchor (2, 2),
        // erosion keeps 8..=9 and dilation over offsets -2..=+1 grows that back to 7..=11, as OpenCV does
        for y in 6..11 {
            for x in 6..11 {
                image[y * width + x] = 255;
            }
        }
        let mut opened = vec![0u8; width * height];
        morphological_open_4x4(&image, width, height, &mut opened);
        let mut expected = vec![0u8; width * height];
        for y in 7..12 {
            for x in 7..12 {
                expected[y * width + x] = 255;
            }
        }
        assert_eq!(opened, expected);
    }
}
