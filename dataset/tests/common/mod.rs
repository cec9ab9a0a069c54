//! Helpers shared by the dataset tests: tiny JPEGs, hand-written meta.csv and datasets in a store.
#![allow(dead_code)]

use bytes::Bytes;
use plankton_dataset::layout::{META_COLUMNS, META_FILE};
use plankton_dataset::{StoreLocation, image_path};

/// A grayscale JPEG of `width` x `height` with a gradient (not all one value).
pub fn tiny_jpeg(width: u16, height: u16) -> Vec<u8> {
    let pixels: Vec<u8> = (0..usize::from(width) * usize::from(height))
        .map(|index| ((index * 37 + index / usize::from(width) * 11) % 256) as u8)
        .collect();
    let mut encoded = Vec::new();
    jpeg_encoder::Encoder::new(&mut encoded, 90)
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Luma)
        .expect("encode test jpeg");
    encoded
}

/// A JPEG whose frame header claims `width` x `height` (pixels data of an 8x8 image): a decompression bomb.
pub fn jpeg_claiming_size(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = tiny_jpeg(8, 8);
    let frame_marker = bytes
        .windows(2)
        .position(|pair| pair == [0xFF, 0xC0])
        .expect("baseline frame header present");
    // marker(2) length(2) precision(1) height(2) width(2)
    bytes[frame_marker + 5..frame_marker + 7].copy_from_slice(&height.to_be_bytes());
    bytes[frame_marker + 7..frame_marker + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// One `meta.csv` data line for `objid` with `level2` (empty string = unlabeled).
pub fn meta_line(objid: i64, level2: &str) -> String {
    let quoted_level2 = if level2.contains(',') || level2.contains('"') {
        format!("\"{}\"", level2.replace('"', "\"\""))
    } else {
        level2.to_string()
    };
    format!(
        "{objid},4,{objid}_id,validated,43.68,7.31,2013-01-01,10:00:00,0,10,name_{objid},living>thing,level1_{objid},{quoted_level2}"
    )
}

/// `meta.csv` text with the reference header and `lines`.
pub fn meta_csv(lines: &[String]) -> String {
    let mut text = META_COLUMNS.join(",");
    text.push('\n');
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Writes `meta.csv` and one image per `(objid, jpeg)` into the `imgs/` directory layout.
pub async fn write_directory_dataset(
    location: &StoreLocation,
    meta_text: &str,
    images: &[(i64, Vec<u8>)],
) {
    location
        .put_bytes(META_FILE, Bytes::from(meta_text.to_string()))
        .await
        .expect("put meta.csv");
    for (objid, jpeg) in images {
        location
            .put_bytes(&image_path(*objid), Bytes::from(jpeg.clone()))
            .await
            .expect("put image");
    }
}

/// A zip archive of `members` (name, bytes), deflated unless `stored`; `large_file` forces ZIP64 local headers.
pub fn zip_archive(members: &[(String, Vec<u8>)], stored: bool, large_file: bool) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if stored {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    let options = zip::write::FileOptions::default()
        .compression_method(method)
        .large_file(large_file);
    for (name, bytes) in members {
        writer
            .start_file(name.as_str(), options)
            .expect("start zip member");
        writer.write_all(bytes).expect("write zip member");
    }
    writer.finish().expect("finish zip").into_inner()
}
