//! Coordinator errors and their one mapping to gRPC status codes.

use thiserror::Error;

pub type CoordinatorResult<T> = Result<T, CoordinatorError>;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    /// One field of a request is refused; the message starts with the field's path (`spec.output_url: ...`).
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("dataset {url}: {message}")]
    Dataset { url: String, message: String },
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("worker {0} is not registered (register again)")]
    UnknownWorker(String),
    #[error("job {job_id} is already {phase}")]
    JobFinished { job_id: String, phase: String },
    #[error("state store: {0}")]
    Store(String),
    #[error("state store {0} is held by another coordinator")]
    StoreLocked(String),
    #[error("{0}")]
    Internal(String),
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        match error {
            CoordinatorError::InvalidSpec(_)
            | CoordinatorError::InvalidField { .. }
            | CoordinatorError::Dataset { .. } => tonic::Status::invalid_argument(message),
            CoordinatorError::JobNotFound(_)
            | CoordinatorError::ModelNotFound(_)
            | CoordinatorError::UnknownWorker(_) => tonic::Status::not_found(message),
            CoordinatorError::JobFinished { .. } => tonic::Status::failed_precondition(message),
            CoordinatorError::Store(_)
            | CoordinatorError::StoreLocked(_)
            | CoordinatorError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

impl From<redb::Error> for CoordinatorError {
    fn from(error: redb::Error) -> Self {
        CoordinatorError::Store(error.to_string())
    }
}

macro_rules! store_error_from {
    ($($source:ty),*) => {$(
        impl From<$source> for CoordinatorError {
            fn from(error: $source) -> Self {
                CoordinatorError::Store(error.to_string())
            }
        }
    )*};
}
store_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
