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
    /// The inference queue is full; the client should retry later (or the deployment scale out).
    #[error("inference queue of model {model} is full ({capacity} requests waiting)")]
    Overloaded { model: String, capacity: usize },
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
            ServeError::ModelLoad { .. } => tonic::Code::FailedPrecondition,
            ServeError::Inference { .. } | ServeError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<&ServeError> for tonic::Status {
    fn from(error: &ServeError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> Self {
        tonic::Status::from(&error)
    }
}
