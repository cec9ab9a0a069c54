//! Errors of the synthetic dataset generator.

/// Everything that can stop [`crate::generate`] or [`crate::class_counts`].
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Fewer objects than two per class were requested.
    #[error("cannot generate {requested} objects: at least {minimum} are needed (2 per class)")]
    TooFewObjects { requested: u64, minimum: u64 },
    /// A configuration value is out of range.
    #[error("invalid synth configuration: {0}")]
    InvalidConfig(String),
    /// The object store refused a write.
    #[error("object store write to `{path}` failed: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    /// Streaming a file (CSV, gzip or zip) failed.
    #[error("streaming `{path}` failed: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A rendered image could not be encoded as JPEG.
    #[error("jpeg encoding of object {objid} ({width}x{height}) failed: {message}")]
    JpegEncode {
        objid: u64,
        width: u32,
        height: u32,
        message: String,
    },
    /// A zip member or archive exceeds what the zip format can describe.
    #[error("zip archive `{path}`: {message}")]
    Zip { path: String, message: String },
    /// A blocking render task died.
    #[error("render task failed: {0}")]
    RenderTask(String),
}
