//! The error type of checkpoints; every variant names the URL or object it concerns.

use plankton_dataset::DatasetError;

pub type CheckpointResult<T> = Result<T, CheckpointError>;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Opening, reading, writing, listing or deleting in the object store (the inner error names the object).
    #[error("checkpoint storage: {0}")]
    Storage(#[from] DatasetError),
    /// The checkpoint folder has no `manifest.json`: it was never completed (or is being written).
    #[error("checkpoint {url} is incomplete: {object} not found")]
    Incomplete { url: String, object: String },
    #[error("bad checkpoint manifest {object}: {reason}")]
    BadManifest { object: String, reason: String },
    #[error("checkpoint state {object} is {actual} bytes, its manifest records {expected}")]
    SizeMismatch {
        object: String,
        expected: u64,
        actual: u64,
    },
    #[error("checkpoint state {object} has sha256 {actual}, its manifest records {expected}")]
    DigestMismatch {
        object: String,
        expected: String,
        actual: String,
    },
    #[error("hashing checkpoint state {object} failed: {reason}")]
    Hashing { object: String, reason: String },
}

impl CheckpointError {
    /// True when the error says an object of the checkpoint does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            CheckpointError::Incomplete { .. } => true,
            CheckpointError::Storage(storage) => storage.is_not_found(),
            _ => false,
        }
    }
}
