//! Object images: `imgs/<objid>.jpg` files or members of `imgs.zip`, fetched concurrently (transient store
//! errors retried by the [`StoreLocation`]); the identity of a set of images, for caches; JPEG header checks.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::{DatasetError, ImageHeaderError};
use crate::layout::{IMAGES_DIR, IMAGES_ZIP};
use crate::storage::StoreLocation;
use crate::zip_index::{ZipIndex, objid_of_image_name};

/// Largest accepted image side, in pixels (the real data's largest is 972).
pub const MAX_IMAGE_SIDE: u32 = 10_000;
/// Largest accepted image area, in pixels.
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// Where the images of a dataset are.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// `imgs/<objid>.jpg` objects.
    Directory,
    /// Members of `imgs.zip`, indexed once.
    Zip(Arc<ZipIndex>),
}

impl ImageSource {
    /// `directory` or `zip`, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Directory => "directory",
            ImageSource::Zip(_) => "zip",
        }
    }
}

/// The relative path of the image of `objid` in the directory layout.
pub fn image_path(objid: i64) -> String {
    format!("{IMAGES_DIR}/{objid}.jpg")
}

/// Uses `imgs.zip` when it exists (indexing its central directory), else the `imgs/` directory.
pub async fn open_image_source(location: &StoreLocation) -> Result<ImageSource, DatasetError> {
    if location.exists(IMAGES_ZIP).await? {
        let index = ZipIndex::open(location, IMAGES_ZIP).await?;
        return Ok(ImageSource::Zip(Arc::new(index)));
    }
    Ok(ImageSource::Directory)
}

/// Fetches the JPEG bytes of `objid`; a missing image is [`DatasetError::ImageNotFound`]. Transient store
/// errors are retried as `location.retry` says; see [`is_bad_image`] for which errors condemn the image.
pub async fn fetch_image(
    location: &StoreLocation,
    source: &ImageSource,
    objid: i64,
) -> Result<Bytes, DatasetError> {
    match source {
        ImageSource::Directory => {
            let relative = image_path(objid);
            match location.get_bytes(&relative).await {
                Err(DatasetError::NotFound { object }) => {
                    Err(DatasetError::ImageNotFound { objid, object })
                }
                other => other,
            }
        }
        ImageSource::Zip(index) => index.fetch(location, objid).await,
    }
}

/// Fetches many images with up to `concurrency` requests in flight; yields in completion order. Each fetch
/// retries transient store errors as `location.retry` says.
pub fn fetch_images(
    location: &StoreLocation,
    source: &ImageSource,
    objids: Vec<i64>,
    concurrency: usize,
) -> impl Stream<Item = (i64, Result<Bytes, DatasetError>)> + Send + 'static {
    let location = location.clone();
    let source = source.clone();
    futures::stream::iter(objids)
        .map(move |objid| {
            let location = location.clone();
            let source = source.clone();
            async move { (objid, fetch_image(&location, &source, objid).await) }
        })
        .buffer_unordered(concurrency.max(1))
}

/// True when `error`, from [`fetch_image`], means the image itself is bad: missing from the store
/// ([`DatasetError::ImageNotFound`]), or a zip member that is corrupt, encrypted or too large
/// ([`DatasetError::Zip`]); [`DatasetError::BadImage`] too, for callers that check headers. Such an image may
/// be skipped and counted. Any other error says nothing about the image (the store still unavailable after
/// retries, permissions, `imgs.zip` itself gone, ...) and must fail the read instead of skipping the image.
pub fn is_bad_image(error: &DatasetError) -> bool {
    matches!(
        error,
        DatasetError::ImageNotFound { .. }
            | DatasetError::BadImage { .. }
            | DatasetError::Zip { .. }
    )
}

/// A digest of the identity of the images of `objids` as they are in the store now, for cache keys: it
/// changes when any of them is rewritten, added or removed. For `imgs.zip` it is the archive's size and
/// e-tag / last-modified time (one HEAD), and an error if the archive is no longer the one `source` indexed
/// (its size changed). For `imgs/` it digests the size and e-tag / last-modified time of each image (one
/// listing of `imgs/`, paginated by the store; no request per image). Several shards' digests from one read of
/// the store: [`ImageVersions`].
pub async fn image_source_version(
    location: &StoreLocation,
    source: &ImageSource,
    objids: &[i64],
) -> Result<String, DatasetError> {
    Ok(ImageVersions::read(location, source, objids)
        .await?
        .digest(objids))
}

/// The store's identity (size and e-tag / last-modified time) of a set of images, read once: one HEAD of
/// `imgs.zip`, or one listing of `imgs/` keeping the entries of the images asked for. A rank digests its
/// training and test shards from one listing instead of listing a large `imgs/` (243,610 objects: ~244 LIST
/// pages on S3) for each.
#[derive(Debug)]
pub enum ImageVersions {
    /// `imgs.zip`'s metadata.
    Zip(object_store::ObjectMeta),
    /// Each image's metadata found in `imgs/`, by objid.
    Directory(HashMap<i64, object_store::ObjectMeta>),
}

impl ImageVersions {
    /// Reads the identity of the images of `objids` (see [`image_source_version`] for the errors).
    pub async fn read(
        location: &StoreLocation,
        source: &ImageSource,
        objids: &[i64],
    ) -> Result<Self, DatasetError> {
        match source {
            ImageSource::Zip(index) => {
                let archive = location.head(&index.relative_path).await?;
                if archive.size != index.archive_size {
                    return Err(DatasetError::Zip {
                        object: index.archive_url.clone(),
                        reason: format!(
                            "archive changed since it was indexed ({} bytes then, {} now); open the image source again",
                            index.archive_size, archive.size
                        ),
                    });
                }
                Ok(ImageVersions::Zip(archive))
            }
            ImageSource::Directory => {
                let wanted: HashMap<object_store::path::Path, i64> = objids
                    .iter()
                    .map(|&objid| (location.child(&image_path(objid)), objid))
                    .collect();
                let mut found = HashMap::with_capacity(wanted.len());
                location
                    .for_each_object(IMAGES_DIR, |object| {
                        if let Some(&objid) = wanted.get(&object.location) {
                            found.insert(objid, object);
                        }
                    })
                    .await?;
                Ok(ImageVersions::Directory(found))
            }
        }
    }

    /// The digest of the images of `objids` (a subset of those read, or they count as missing), equal to what
    /// [`image_source_version`] gives for them.
    pub fn digest(&self, objids: &[i64]) -> String {
        match self {
            ImageVersions::Zip(archive) => {
                let mut digest = Fnv1a::new();
                digest.update_object(archive);
                format!("zip-{:016x}-{}", digest.finish(), archive.size)
            }
            ImageVersions::Directory(found) => {
                let mut digest = Fnv1a::new();
                let mut missing = 0usize;
                for objid in objids {
                    digest.update(&objid.to_le_bytes());
                    match found.get(objid) {
                        Some(object) => digest.update_object(object),
                        None => {
                            missing += 1;
                            digest.update(b"missing");
                        }
                    }
                }
                format!("dir-{:016x}-{}-{missing}", digest.finish(), objids.len())
            }
        }
    }
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `DefaultHasher`).
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Size, e-tag (or none) and last-modified time of an object, each length- or tag-prefixed.
    fn update_object(&mut self, object: &object_store::ObjectMeta) {
        self.update(&object.size.to_le_bytes());
        match &object.e_tag {
            Some(e_tag) => {
                self.update(&(e_tag.len() as u64).to_le_bytes());
                self.update(e_tag.as_bytes());
            }
            None => self.update(&u64::MAX.to_le_bytes()),
        }
        self.update(&object.last_modified.timestamp().to_le_bytes());
        self.update(&object.last_modified.timestamp_subsec_nanos().to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Objids of every image present (sorted), to find images present but not listed in `meta.csv`.
pub async fn list_image_objids(
    location: &StoreLocation,
    source: &ImageSource,
) -> Result<Vec<i64>, DatasetError> {
    match source {
        ImageSource::Zip(index) => Ok(index.objids()),
        ImageSource::Directory => {
            let mut objids = Vec::new();
            location
                .for_each_object(IMAGES_DIR, |object| {
                    match object.location.filename().and_then(objid_of_image_name) {
                        Some(objid) => objids.push(objid),
                        None => {
                            tracing::debug!(object = %object.location, "ignoring non-image object in imgs/")
                        }
                    }
                })
                .await?;
            objids.sort_unstable();
            objids.dedup();
            Ok(objids)
        }
    }
}

/// Checks a JPEG cheaply, without decoding pixels: non-empty, SOI marker, headers readable up to the
/// scan, an EOI marker at the end (catches truncation), and a size within [`MAX_IMAGE_SIDE`] and
/// [`MAX_IMAGE_PIXELS`] (refuses decompression bombs). Returns `(width, height)`.
pub fn check_image_header(bytes: &[u8]) -> Result<(u32, u32), ImageHeaderError> {
    if bytes.is_empty() {
        return Err(ImageHeaderError::Empty);
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(ImageHeaderError::NotJpeg);
    }
    // Let the decoder report any size the format allows; the limits are applied below.
    let options = zune_core::options::DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(bytes, options);
    decoder
        .decode_headers()
        .map_err(|error| ImageHeaderError::CorruptHeader(format!("{error:?}")))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| ImageHeaderError::CorruptHeader("no frame header".to_string()))?;
    let width = u32::try_from(width).unwrap_or(u32::MAX);
    let height = u32::try_from(height).unwrap_or(u32::MAX);
    if width == 0 || height == 0 {
        return Err(ImageHeaderError::CorruptHeader(format!(
            "zero dimension {width}x{height}"
        )));
    }
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(ImageHeaderError::TooLarge {
            width,
            height,
            max_side: MAX_IMAGE_SIDE,
            max_pixels: MAX_IMAGE_PIXELS,
        });
    }
    if !ends_with_end_of_image(bytes) {
        return Err(ImageHeaderError::Truncated {
            length: bytes.len(),
        });
    }
    Ok((width, height))
}

/// True when an EOI marker (FF D9) ends the data, allowing a little zero or whitespace padding.
fn ends_with_end_of_image(bytes: &[u8]) -> bool {
    let padding_allowed = 64;
    let trimmed_length = bytes
        .iter()
        .rposition(|byte| !matches!(byte, 0x00 | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(0, |position| position + 1);
    if bytes.len() - trimmed_length > padding_allowed {
        return false;
    }
    bytes[..trimmed_length].ends_with(&[0xFF, 0xD9])
}
