//! The whole pipeline for one image and for a batch (rayon, in the caller's current pool).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::channels::{open_binary_64_wide, threshold_below_mean};
use crate::decode::decode_grey_into;
use crate::resize::{pad_to_square, resize_bicubic_into};
use crate::{GreyImage, IMAGE_LEN, INPUT_SIZE, PreprocessConfig, PreprocessError, ResizeMode};

const PLANE_LEN: usize = INPUT_SIZE * INPUT_SIZE;

thread_local! {
    /// Decoded grey pixels, reused across images on the same thread.
    static DECODE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes and preprocesses one JPEG into `IMAGE_LEN` bytes: CHW u8 grey, threshold, opening.
pub fn preprocess_image(jpeg: &[u8], cfg: &PreprocessConfig) -> Result<Vec<u8>, PreprocessError> {
    let mut channels = vec![0u8; IMAGE_LEN];
    preprocess_image_into(jpeg, cfg, &mut channels)?;
    Ok(channels)
}

/// Like [`preprocess_image`], writing into `out`, which must hold exactly `IMAGE_LEN` bytes
/// (a slot of a batch buffer). On error `out` is left in an unspecified state.
pub fn preprocess_image_into(
    jpeg: &[u8],
    cfg: &PreprocessConfig,
    out: &mut [u8],
) -> Result<(), PreprocessError> {
    if out.len() != IMAGE_LEN {
        return Err(PreprocessError::Corrupt(format!(
            "output slot holds {} bytes, expected {IMAGE_LEN}",
            out.len()
        )));
    }
    DECODE_BUFFER.with(|cell| {
        let mut decoded = cell.borrow_mut();
        let (width, height) = decode_grey_into(jpeg, cfg, &mut decoded)?;
        let (grey_plane, derived_planes) = out.split_at_mut(PLANE_LEN);
        match cfg.resize_mode {
            ResizeMode::Stretch => {
                resize_bicubic_into(width, height, &decoded, INPUT_SIZE, INPUT_SIZE, grey_plane);
            }
            ResizeMode::PadToSquare => {
                let image = GreyImage {
                    width,
                    height,
                    pixels: std::mem::take(&mut *decoded),
                };
                let square = pad_to_square(&image);
                *decoded = image.pixels;
                resize_bicubic_into(
                    square.width,
                    square.height,
                    &square.pixels,
                    INPUT_SIZE,
                    INPUT_SIZE,
                    grey_plane,
                );
            }
        }
        let (threshold_plane, opening_plane) = derived_planes.split_at_mut(PLANE_LEN);
        threshold_below_mean(grey_plane, threshold_plane);
        open_binary_64_wide(threshold_plane, opening_plane);
        Ok(())
    })
}

/// Preprocesses a batch in parallel on the current rayon pool; results keep the input order.
pub fn preprocess_many<Jpeg: AsRef<[u8]> + Sync>(
    jpegs: &[Jpeg],
    cfg: &PreprocessConfig,
) -> Vec<Result<Vec<u8>, PreprocessError>> {
    jpegs
        .par_iter()
        .map(|jpeg| preprocess_image(jpeg.as_ref(), cfg))
        .collect()
}

/// Preprocesses a batch in parallel straight into `out`, one `IMAGE_LEN` slot per JPEG (in order), without a
/// per-image allocation. `out` must hold `jpegs.len() * IMAGE_LEN` bytes; a failed image's slot is unspecified.
pub fn preprocess_batch_into<Jpeg: AsRef<[u8]> + Sync>(
    jpegs: &[Jpeg],
    cfg: &PreprocessConfig,
    out: &mut [u8],
) -> Vec<Result<(), PreprocessError>> {
    assert_eq!(
        out.len(),
        jpegs.len() * IMAGE_LEN,
        "preprocess_batch_into: output buffer of the wrong size"
    );
    jpegs
        .par_iter()
        .zip(out.par_chunks_mut(IMAGE_LEN))
        .map(|(jpeg, slot)| preprocess_image_into(jpeg.as_ref(), cfg, slot))
        .collect()
}

/// Scales u8 channels to [0, 1] floats (`value / 255`), element by element over the common length.
pub fn to_unit_f32(channels: &[u8], out: &mut [f32]) {
    debug_assert_eq!(channels.len(), out.len());
    for (target, &value) in out.iter_mut().zip(channels.iter()) {
        *target = f32::from(value) / 255.0;
    }
}
