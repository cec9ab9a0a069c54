//! The model card stored next to the weights.
use plankton_dataset::FeatureTransform;
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
    /// For a model that takes native features: the transform fitted on its training split, which inference
    /// applies to raw feature values (absent from cards of image-only models, and from older cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_transform: Option<FeatureTransform>,
    /// How a network's weights were trained (absent from gbdt cards and from older cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRecord>,
}

/// The training settings a network's weights came from, as configs and the CLI name them. The worker writes the
/// settings below; the coordinator adds the loss and class weighting when the job completes (kept in
/// `completed`), and a gbdt card holds only those.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingRecord {
    /// Number format of the forward and backward passes: `fp32` or `bf16`.
    pub precision: String,
    /// Number format of the gradient all-reduce: `none` (f32) or `bf16`.
    pub gradient_compression: String,
    /// What a step's class-weighted loss was divided by: `weight_sum`, `samples` or `shard_mean`.
    pub loss_normalization: String,
    pub world_size: u32,
    pub epochs: u32,
    /// Images per step of one rank.
    pub batch_size: u32,
    pub learning_rate: f64,
    pub seed: u64,
    /// What the coordinator adds when the job completes (`loss`, `class_weighting`, ...), as written.
    #[serde(flatten)]
    pub completed: serde_json::Map<String, serde_json::Value>,
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
            feature_transform: None,
            training: Some(TrainingRecord {
                precision: "bf16".to_string(),
                gradient_compression: "bf16".to_string(),
                loss_normalization: "weight_sum".to_string(),
                world_size: 2,
                epochs: 3,
                batch_size: 128,
                learning_rate: 1e-3,
                seed: 42,
                completed: serde_json::Map::new(),
            }),
        };
        let json = serde_json::to_string(&card).unwrap();
        assert!(json.contains("\"architecture\":\"resnet\""), "{json}");
        assert!(json.contains("\"precision\":\"bf16\""), "{json}");
        assert!(!json.contains("feature_transform"), "{json}");
        assert_eq!(serde_json::from_str::<ModelCard>(&json).unwrap(), card);
    }

    #[test]
    fn card_round_trips_with_its_feature_transform() {
        let columns: Vec<String> = ["area", "width"]
            .iter()
            .map(|name| name.to_string())
            .collect();
        let rows: Vec<Vec<Option<f32>>> = (0..10)
            .map(|index| {
                vec![
                    Some(index as f32),
                    (index % 3 != 0).then_some((index * index) as f32),
                ]
            })
            .collect();
        let borrowed: Vec<&[Option<f32>]> = rows.iter().map(Vec::as_slice).collect();
        let transform = FeatureTransform::fit(&columns, &borrowed);
        let card = ModelCard {
            architecture: Architecture::Fusion,
            classes: vec!["a".to_string(), "b".to_string()],
            input: ModelInput::standard("opencv_bicubic"),
            metrics: serde_json::json!({}),
            job_id: "job-2".to_string(),
            created_unix_ms: 1,
            weights_file: "model.safetensors".to_string(),
            feature_transform: Some(transform),
            training: None,
        };
        let json = serde_json::to_string_pretty(&card).unwrap();
        assert!(json.contains("\"architecture\": \"fusion\""), "{json}");
        let read: ModelCard = serde_json::from_str(&json).unwrap();
        assert_eq!(read, card);
        assert_eq!(read.feature_transform.unwrap().indicator_columns, vec![1]);
    }

    #[test]
    fn a_card_written_before_features_still_loads() {
        let old = r#"{"architecture":"resnet","classes":["a","b"],
            "input":{"size":64,"channels":["grey","threshold","opening"],"resize_mode":"opencv_bicubic"},
            "metrics":{},"job_id":"j","created_unix_ms":1,"weights_file":"model.safetensors"}"#;
        let card: ModelCard = serde_json::from_str(old).unwrap();
        assert!(card.feature_transform.is_none());
        assert!(card.training.is_none());
    }

    #[test]
    fn a_card_completed_by_the_coordinator_keeps_both_parts_of_its_training_record() {
        let completed = r#"{"architecture":"gbdt","classes":["a","b"],
            "input":{"size":64,"channels":["grey","threshold","opening"],"resize_mode":"stretch"},
            "metrics":{},"job_id":"j","created_unix_ms":1,"weights_file":"model.safetensors",
            "training":{"precision":"bf16","world_size":2,"loss":"LOSS_FUNCTION_CROSS_ENTROPY","logit_tau":null}}"#;
        let card: ModelCard = serde_json::from_str(completed).unwrap();
        let training = card.training.clone().unwrap();
        assert_eq!(training.precision, "bf16");
        assert_eq!(training.world_size, 2);
        assert_eq!(training.gradient_compression, "");
        assert_eq!(training.completed["loss"], "LOSS_FUNCTION_CROSS_ENTROPY");
        let written = serde_json::to_value(&card).unwrap();
        assert_eq!(written["training"]["loss"], "LOSS_FUNCTION_CROSS_ENTROPY");
        assert_eq!(written["training"]["precision"], "bf16");
    }
}
