//! The model card stored next to the weights.
use serde::{Deserialize, Serialize};

use crate::config::{Architecture, IMAGE_SIZE};

/// What the network expects as input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInput {
    /// Side of the square input in pixels (64).
    pub size: u32,
    /// Channel names in order: `["grey", "threshold", "opening"]`.
    pub channels: Vec<String>,
    /// How images were resized (e.g. "opencv_bicubic").
    pub resize_mode: String,
}

impl ModelInput {
    /// The project's preprocessing: 64x64, grey/threshold/opening, with the given resize mode.
    pub fn standard(resize_mode: impl Into<String>) -> Self {
        ModelInput {
            size: IMAGE_SIZE as u32,
            channels: ["grey", "threshold", "opening"]
                .iter()
                .map(|channel| channel.to_string())
                .collect(),
            resize_mode: resize_mode.into(),
        }
    }
}

/// Describes a trained model: architecture, classes (index order), input, metrics, provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub architecture: Architecture,
    /// Class names; position = class index of the network's output.
    pub classes: Vec<String>,
    pub input: ModelInput,
    pub metrics: serde_json::Value,
    pub job_id: String,
    pub created_unix_ms: u64,
    /// File name of the safetensors weights next to the card.
    pub weights_file: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_round_trips_through_json() {
        let card = ModelCard {
            architecture: Architecture::ResNet,
            classes: vec!["detritus".to_string(), "nauplii (Crustacea)".to_string()],
            input: ModelInput::standard("opencv_bicubic"),
            metrics: serde_json::json!({"macro_f1": 0.5}),
            job_id: "job-1".to_string(),
            created_unix_ms: 1_700_000_000_000,
            weights_file: "model.safetensors".to_string(),
        };
        let json = serde_json::to_string(&card).unwrap();
        assert!(json.contains("\"architecture\":\"resnet\""), "{json}");
        assert_eq!(serde_json::from_str::<ModelCard>(&json).unwrap(), card);
    }
}
