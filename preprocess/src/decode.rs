//! JPEG to 8-bit grey, refusing oversized images from the header and truncated streams.

use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::{GreyImage, PreprocessConfig, PreprocessError};

const START_OF_IMAGE: [u8; 2] = [0xFF, 0xD8];
const START_OF_SCAN_MARKER: u8 = 0xDA;
const END_OF_IMAGE_MARKER: u8 = 0xD9;

/// Decodes a JPEG to grey, as `cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)` does.
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
    // JPEG sides are u16: let zune accept any of them so that our own limit decides (with a clear error).
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::Luma)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = JpegDecoder::new_with_options(jpeg, options);
    decoder
        .decode_headers()
        .map_err(|error| PreprocessError::Corrupt(error.to_string()))?;
    let info = decoder.info().ok_or_else(|| {
        PreprocessError::Corrupt("decoder returned no header information".to_string())
    })?;
    let width = u32::from(info.width);
    let height = u32::from(info.height);
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
    if !has_end_of_image_after_scan(jpeg)? {
        return Err(PreprocessError::Truncated { len: jpeg.len() });
    }
    let output_len = decoder
        .output_buffer_size()
        .ok_or_else(|| PreprocessError::Corrupt("output size overflows".to_string()))?;
    let expected_len = width as usize * height as usize;
    if output_len != expected_len {
        return Err(PreprocessError::Corrupt(format!(
            "decoder wants {output_len} output bytes for a {width}x{height} grey image"
        )));
    }
    pixels.clear();
    pixels.resize(expected_len, 0);
    decoder
        .decode_into(pixels)
        .map_err(|error| PreprocessError::Corrupt(error.to_string()))?;
    Ok((width as usize, height as usize))
}

/// Walks the marker segments to the first start-of-scan, then looks for the end-of-image marker.
///
/// Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an
/// `FF D9` pair after the first scan header is the real end of image. zune-jpeg pads a short stream
/// with zeros and returns a partly grey image; this check turns that case into an error.
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
