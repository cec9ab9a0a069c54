//! The error type of the dataset layer; every variant names the object, URL or file it concerns.

use std::path::PathBuf;

/// Why an image's bytes were refused by [`crate::check_image_header`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageHeaderError {
    #[error("empty image (zero bytes)")]
    Empty,
    #[error("not a JPEG (missing SOI marker)")]
    NotJpeg,
    #[error("corrupt JPEG header: {0}")]
    CorruptHeader(String),
    #[error("truncated JPEG (no EOI marker at the end of {length} bytes)")]
    Truncated { length: usize },
    #[error(
        "image of {width}x{height} px exceeds the limit of {max_side} px a side or {max_pixels} pixels"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
}

/// Errors of the dataset layer.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("invalid dataset location '{url}': {reason}")]
    InvalidLocation { url: String, reason: String },
    #[error("cannot open object store for '{url}': {source}")]
    OpenStore {
        url: String,
        source: object_store::Error,
    },
    #[error("object not found: {object}")]
    NotFound { object: String },
    /// A cloud store has no credentials: none is set, and the instance metadata service gave none.
    #[error("no credentials for {store} at {url}: set {settings} ({detail})")]
    MissingCredentials {
        url: String,
        store: &'static str,
        /// The settings that would give credentials, as the store's users set them.
        settings: &'static str,
        /// Why the last source tried gave none.
        detail: String,
    },
    /// The bucket (container, on Azure) of a cloud URL does not exist.
    #[error(
        "{store} {bucket_word} '{bucket}' does not exist (needed for {object}): create it, or correct the URL"
    )]
    BucketNotFound {
        store: &'static str,
        bucket_word: &'static str,
        bucket: String,
        object: String,
    },
    /// The store refused a request: the credentials in use lack the right for it (or are wrong).
    #[error(
        "permission denied: cannot {operation} {object}: the credentials in use are refused; grant them that right or use others ({reason})"
    )]
    PermissionDenied {
        operation: crate::cloud::StoreOperation,
        object: String,
        reason: String,
    },
    #[error("object store error on {object}: {source}")]
    Store {
        object: String,
        source: object_store::Error,
    },
    #[error("cannot read CSV {object}: {reason}")]
    Csv { object: String, reason: String },
    #[error("{object} has no column '{column}'")]
    MissingColumn { object: String, column: String },
    #[error("cannot decompress {object}: {source}")]
    Decompress {
        object: String,
        source: std::io::Error,
    },
    #[error("bad zip archive {object}: {reason}")]
    Zip { object: String, reason: String },
    #[error("image for objid {objid} not found: {object}")]
    ImageNotFound { objid: i64, object: String },
    #[error("bad image {object}: {source}")]
    BadImage {
        object: String,
        source: ImageHeaderError,
    },
    #[error("bad label encoding: {reason}")]
    LabelEncoding { reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("background task failed while reading {object}: {reason}")]
    Task { object: String, reason: String },
}

impl DatasetError {
    /// Maps an object store error on `object`, turning "not found" into [`DatasetError::NotFound`].
    pub fn from_store(object: impl Into<String>, source: object_store::Error) -> Self {
        let object = object.into();
        match source {
            object_store::Error::NotFound { .. } => DatasetError::NotFound { object },
            other => DatasetError::Store {
                object,
                source: other,
            },
        }
    }

    /// True when the error says an object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DatasetError::NotFound { .. } | DatasetError::ImageNotFound { .. }
        )
    }
}
