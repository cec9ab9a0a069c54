//! Worker-side image preprocessing: any FlowCam JPEG becomes the model's 3x64x64 u8 input.
//!
//! # Pipeline
//!
//! 1. [`decode_grey`]: the JPEG header is read first and images wider or taller than
//!    [`PreprocessConfig::max_side`] or with more than [`PreprocessConfig::max_pixels`] pixels are refused
//!    before any pixel buffer is allocated (decompression bombs). The image is then decoded to 8-bit grey
//!    by libjpeg-turbo's decoder (vendored by `mozjpeg-sys`), the library OpenCV decodes with, so the grey
//!    pixels are `cv2.imdecode(..., cv2.IMREAD_GRAYSCALE)`'s bytes; for a colour (YCbCr) JPEG that is the
//!    Y plane. EXIF orientation is ignored (FlowCam images carry none). A truncated stream is an error:
//!    libjpeg pads a short entropy-coded stream with grey, so we require the end-of-image marker after the
//!    first start-of-scan marker (see [`PreprocessError::Truncated`]).
//! 2. Optional [`pad_to_square`] ([`ResizeMode::PadToSquare`]): centre the image on a square canvas filled
//!    with the median of its border pixels, so the aspect ratio survives the resize.
//! 3. [`resize_bicubic`] to 64x64, reproducing opencv-python's `cv2.resize(img, (64, 64),
//!    interpolation=cv2.INTER_CUBIC)` on uint8: Keys kernel with A = -0.75, `src = (dst + 0.5) * scale - 0.5`,
//!    replicated borders, no antialiasing when downscaling. opencv-python hands this to Intel IPP (float
//!    arithmetic) when both source sides are >= 4 px and runs its own fixed-point `resizeGeneric_`
//!    (11-bit taps) otherwise; both are reproduced (the parity test measures exact agreement).
//! 4. Channels, CHW order, all u8: channel 0 is the grey 64x64 image; channel 1 is 255 where
//!    grey < mean(grey) (dark object on light background becomes white), else 0; channel 2 is the
//!    morphological opening of channel 1 by a 4x4 square, as `cv2.morphologyEx(t, cv2.MORPH_OPEN,
//!    np.ones((4, 4), np.uint8))` computes it (anchor (2, 2), pixels outside the image ignored).
//!
//! The trainer divides by 255 ([`to_unit_f32`]). [`ShardCache`] keeps preprocessed shards on local disk.
//! All work here is synchronous CPU work: async callers put it in `spawn_blocking`.
#![deny(unsafe_code)]

mod cache;
mod channels;
mod decode;
mod page_cache;
mod pipeline;
mod record_file;
mod resize;

pub use cache::{CacheError, CachedShard, ShardCache};
pub use channels::{morphological_open_4x4, threshold_below_mean};
pub use decode::decode_grey;
pub use page_cache::CappedFile;
pub use pipeline::{
    preprocess_batch_into, preprocess_image, preprocess_image_into, preprocess_many, to_unit_f32,
};
pub use record_file::{RECORD_LEN, RecordShard, ShardRecordWriter};
pub use resize::{pad_to_square, resize_bicubic};

use serde::{Deserialize, Serialize};

/// Side of the square model input, in pixels.
pub const INPUT_SIZE: usize = 64;
/// Number of input channels: grey, threshold, opening.
pub const CHANNELS: usize = 3;
/// Bytes of one preprocessed image (CHW, u8).
pub const IMAGE_LEN: usize = CHANNELS * INPUT_SIZE * INPUT_SIZE;

/// How a non-square image becomes a 64x64 square.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResizeMode {
    /// Resize straight to 64x64, distorting the aspect ratio (the reference notebook's choice).
    Stretch,
    /// Centre on a square canvas padded with the median border grey, then resize.
    PadToSquare,
}

impl ResizeMode {
    /// The name model cards and the registry write (`stretch`, `pad_to_square`).
    pub fn name(self) -> &'static str {
        match self {
            ResizeMode::Stretch => "stretch",
            ResizeMode::PadToSquare => "pad_to_square",
        }
    }

    /// The mode [`ResizeMode::name`] gives `name` (surrounding whitespace ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        [ResizeMode::Stretch, ResizeMode::PadToSquare]
            .into_iter()
            .find(|mode| mode.name() == name.trim())
    }
}

/// Limits and choices of the preprocessing pipeline.
#[derive(Clone, Debug)]
pub struct PreprocessConfig {
    pub resize_mode: ResizeMode,
    /// Largest accepted width or height, checked from the JPEG header before decoding.
    pub max_side: u32,
    /// Largest accepted width * height, checked from the JPEG header before decoding.
    pub max_pixels: u64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            resize_mode: ResizeMode::Stretch,
            max_side: 10_000,
            max_pixels: 40_000_000,
        }
    }
}

/// An 8-bit single-channel image, row-major, `pixels.len() == width * height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl GreyImage {
    /// Wraps row-major pixels; `None` if the length does not match or a side is zero.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Option<GreyImage> {
        if width == 0 || height == 0 || width.checked_mul(height)? != pixels.len() {
            return None;
        }
        Some(GreyImage {
            width,
            height,
            pixels,
        })
    }

    /// The pixel at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }
}

/// Why one image could not be preprocessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("not a JPEG: the data starts with {first_bytes:02x?}, not the SOI marker ff d8")]
    NotJpeg { first_bytes: Vec<u8> },
    #[error("corrupt JPEG: {0}")]
    Corrupt(String),
    #[error("truncated JPEG: no end-of-image marker after the image data ({len} bytes)")]
    Truncated { len: usize },
    #[error(
        "image too large: {width}x{height} exceeds the limit of {max_side} px per side or {max_pixels} pixels"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("image has a zero dimension: {width}x{height}")]
    ZeroSized { width: u32, height: u32 },
}
