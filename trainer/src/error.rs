//! The error type of training and inference.
use plankton_collective::CollectiveError;

/// Everything that can go wrong while training, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("libtorch operation failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("collective operation failed: {0}")]
    Collective(#[from] CollectiveError),
    #[error("the gradient all-reduce thread failed: {0}")]
    CommunicationThread(String),
    #[error("training cancelled by the observer")]
    Cancelled,
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid {shard} shard: {reason}")]
    InvalidShard { shard: &'static str, reason: String },
    #[error("training images unavailable: {0}")]
    ImagesUnavailable(String),
    #[error("invalid input images: {0}")]
    InvalidInput(String),
    #[error("weights do not match the {architecture} model: {reason}")]
    WeightsMismatch {
        architecture: String,
        reason: String,
    },
    #[error("temporary weights file {path}: {source}")]
    TempFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "unknown architecture {0:?} (expected \"lenet\", \"wide_lenet\", \"resnet\", \"fusion\" or \"gbdt\")"
    )]
    UnknownArchitecture(String),
    #[error(
        "step {global_step}: the loss or gradients of rank(s) {ranks:?} are not finite (NaN or infinite){}; the step was not applied",
        local_loss.map(|loss| format!(", this rank's loss {loss}")).unwrap_or_default()
    )]
    NonFinite {
        global_step: u64,
        ranks: Vec<usize>,
        /// This rank's loss, when it is one of the ranks at fault.
        local_loss: Option<f64>,
    },
}

impl TrainError {
    /// Whether the ring failed (a peer died, timed out or fell out of step) rather than this rank:
    /// the survivors can form a new generation and carry on.
    pub fn is_collective_failure(&self) -> bool {
        matches!(self, TrainError::Collective(_))
    }
}
