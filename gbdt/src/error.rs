//! The error type of training, prediction and (de)serialisation.

/// Everything that can go wrong with a gradient-boosted model.
#[derive(Debug, thiserror::Error)]
pub enum GbdtError {
    #[error("invalid training data: {0}")]
    InvalidData(String),
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("row {row}, feature {feature}: {value} is infinite (missing values are NaN)")]
    InfiniteValue {
        row: usize,
        feature: usize,
        value: f32,
    },
    #[error("{values} feature values for {rows} rows of {features} features")]
    ShapeMismatch {
        values: usize,
        rows: usize,
        features: usize,
    },
    #[error("boosting class {class}: {reason}")]
    Boosting { class: usize, reason: String },
    #[error("model bytes: {0}")]
    Serialization(String),
}
