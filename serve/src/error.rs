//! Inference service errors and their one mapping to gRPC status codes.

use thiserror::Error;

pub type ServeResult<T> = Result<T, ServeError>;

#[derive(Debug, Error)]
pub enum ServeError {
    /// The request cannot be answered as sent (no images, malformed model reference, no valid image).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The registry knows no such model, version or alias.
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// The server's default model is not loaded yet (health is NOT_SERVING meanwhile).
    #[error("no model loaded yet: {0}")]
    NotReady(String),
    /// The registry could not be reached or answered with an unexpected error.
    #[error("model registry at {endpoint}: {message}")]
    Registry { endpoint: String, message: String },
    /// The weights or the model card could not be read or do not fit the registry entry.
    #[error("loading model {model}: {reason}")]
    ModelLoad { model: String, reason: String },
    /// The server is full (queued images, a model's queue); the client should retry after `retry_after`
    /// (or the deployment scale out).
    #[error("overloaded: {reason}; retry in {}ms", retry_after.as_millis())]
    Overloaded {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// The client's deadline passed (or it went away) before the request was computed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A version failed to load recently; it is not retried before its backoff ends.
    #[error("loading model {model} failed: {reason}; next attempt in {}s", retry_in.as_secs_f64().ceil())]
    LoadBackoff {
        model: String,
        reason: String,
        retry_in: std::time::Duration,
    },
    /// A forward pass failed.
    #[error("inference with model {model} failed: {reason}")]
    Inference { model: String, reason: String },
    /// The server is shutting down or an internal task ended early.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// The gRPC code clients see for this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidRequest(_) => tonic::Code::InvalidArgument,
            ServeError::ModelNotFound(_) => tonic::Code::NotFound,
            ServeError::NotReady(_) | ServeError::Registry { .. } => tonic::Code::Unavailable,
            ServeError::Overloaded { .. } => tonic::Code::ResourceExhausted,
            ServeError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ServeError::ModelLoad { .. } | ServeError::LoadBackoff { .. } => {
                tonic::Code::FailedPrecondition
            }
            ServeError::Inference { .. } | ServeError::Internal(_) => tonic::Code::Internal,
        }
    }
}

/// Response metadata of a RESOURCE_EXHAUSTED answer: how long to wait before retrying, in milliseconds (gRPC's
/// retry pushback; clients with a retry policy honour it).
pub const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

impl From<&ServeError> for tonic::Status {
    fn from(error: &ServeError) -> Self {
        let mut status = tonic::Status::new(error.code(), error.to_string());
        if let ServeError::Overloaded { retry_after, .. } = error
            && let Ok(value) = retry_after.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_PUSHBACK_METADATA, value);
        }
        status
    }
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> Self {
        tonic::Status::from(&error)
    }
}
