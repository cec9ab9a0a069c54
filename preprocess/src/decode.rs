//! JPEG to 8-bit grey with libjpeg-turbo's decoder (the one OpenCV links), refusing oversized images from
//! the header and truncated streams.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{GreyImage, PreprocessConfig, PreprocessError};

const START_OF_IMAGE: [u8; 2] = [0xFF, 0xD8];
const START_OF_SCAN_MARKER: u8 = 0xDA;
const END_OF_IMAGE_MARKER: u8 = 0xD9;

/// Decodes a JPEG to grey, as `cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)` does: the same decoder
/// (libjpeg-turbo's, vendored by `mozjpeg-sys`: accurate integer IDCT, libjpeg's own conversion of a
/// colour image's Y plane to grey), so the pixels are the same bytes.
///
/// The header is checked against `cfg.max_side` / `cfg.max_pixels` before any pixel buffer exists.
pub fn decode_grey(jpeg: &[u8], cfg: &PreprocessConfig) -> Result<GreyImage, PreprocessError> {
    let mut pixels = Vec::new();
    let (width, height) = decode_grey_into(jpeg, cfg, &mut pixels)?;
    Ok(GreyImage {
        width,
        height,
        pixels,
    })
}

/// Decodes into `pixels` (resized to width * height, capacity reused); returns (width, height).
pub(crate) fn decode_grey_into(
    jpeg: &[u8],
    cfg: &PreprocessConfig,
    pixels: &mut Vec<u8>,
) -> Result<(usize, usize), PreprocessError> {
    if jpeg.is_empty() {
        return Err(PreprocessError::Empty);
    }
    if !jpeg.starts_with(&START_OF_IMAGE) {
        return Err(PreprocessError::NotJpeg {
            first_bytes: jpeg.iter().take(4).copied().collect(),
        });
    }
    if !has_end_of_image_after_scan(jpeg)? {
        return Err(PreprocessError::Truncated { len: jpeg.len() });
    }
    // libjpeg reports a fatal error by unwinding out of the C decoder (mozjpeg's error manager, built with
    // unwinding support); it is caught here and becomes this image's error. Only the decoding runs inside.
    catch_unwind(AssertUnwindSafe(|| decode_with_libjpeg(jpeg, cfg, pixels))).unwrap_or_else(
        |payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "the JPEG decoder failed".to_string());
            Err(PreprocessError::Corrupt(message))
        },
    )
}

fn decode_with_libjpeg(
    jpeg: &[u8],
    cfg: &PreprocessConfig,
    pixels: &mut Vec<u8>,
) -> Result<(usize, usize), PreprocessError> {
    let corrupt = |error: std::io::Error| PreprocessError::Corrupt(error.to_string());
    // Reads the header only (markers and tables; no pixel memory yet).
    let header = mozjpeg::Decompress::new_mem(jpeg).map_err(corrupt)?;
    let (width, height) = header.size();
    // JPEG sides are u16, so these conversions cannot fail for a header libjpeg accepted.
    let width = u32::try_from(width).unwrap_or(u32::MAX);
    let height = u32::try_from(height).unwrap_or(u32::MAX);
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSized { width, height });
    }
    let pixel_count = u64::from(width) * u64::from(height);
    if width > cfg.max_side || height > cfg.max_side || pixel_count > cfg.max_pixels {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            max_side: cfg.max_side,
            max_pixels: cfg.max_pixels,
        });
    }
    let mut decoding = header.grayscale().map_err(corrupt)?;
    let (out_width, out_height) = (decoding.width(), decoding.height());
    let expected_len = width as usize * height as usize;
    if out_width * out_height != expected_len {
        return Err(PreprocessError::Corrupt(format!(
            "the decoder gives {out_width}x{out_height} grey pixels for a {width}x{height} image"
        )));
    }
    pixels.clear();
    pixels.resize(expected_len, 0);
    decoding
        .read_scanlines_into::<u8>(pixels)
        .map_err(corrupt)?;
    decoding.finish().map_err(corrupt)?;
    Ok((width as usize, height as usize))
}

/// Walks the marker segments to the first start-of-scan, then looks for the end-of-image marker.
///
/// Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an
/// `FF D9` pair after the first scan header is the real end of image. libjpeg (like OpenCV over it) pads a
/// short stream with grey and returns a partly grey image; this check turns that case into an error.
fn has_end_of_image_after_scan(jpeg: &[u8]) -> Result<bool, PreprocessError> {
    let mut position = START_OF_IMAGE.len();
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while position < jpeg.len()
            && jpeg[position] == 0xFF
            && jpeg.get(position + 1) == Some(&0xFF)
        {
            position += 1;
        }
        let (Some(&marker_prefix), Some(&marker)) = (jpeg.get(position), jpeg.get(position + 1))
        else {
            return Ok(false);
        };
        if marker_prefix != 0xFF {
            return Err(PreprocessError::Corrupt(format!(
                "expected a marker at byte {position}, found {marker_prefix:02x}"
            )));
        }
        let is_standalone = (0xD0..=0xD7).contains(&marker) || marker == 0x01;
        if marker == END_OF_IMAGE_MARKER {
            return Ok(false);
        }
        if is_standalone {
            position += 2;
            continue;
        }
        let Some(length_bytes) = jpeg.get(position + 2..position + 4) else {
            return Ok(false);
        };
        let segment_length = usize::from(u16::from_be_bytes([length_bytes[0], length_bytes[1]]));
        if segment_length < 2 {
            return Err(PreprocessError::Corrupt(format!(
                "segment of marker ff {marker:02x} at byte {position} has length {segment_length}"
            )));
        }
        let segment_end = position + 2 + segment_length;
        if marker == START_OF_SCAN_MARKER {
            let scan_data = jpeg.get(segment_end..).unwrap_or(&[]);
            // Searched from the end, where the marker normally is.
            return Ok(scan_data
                .windows(2)
                .rev()
                .any(|pair| pair == [0xFF, END_OF_IMAGE_MARKER]));
        }
        position = segment_end;
    }
}
