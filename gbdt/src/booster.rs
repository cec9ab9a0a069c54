//! The one-vs-rest booster set: training on weighted rows, class probabilities, bytes.
use forust_ml::objective::ObjectiveType;
use forust_ml::{GradientBooster, Matrix};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::GbdtError;

/// The format tag written into a model's bytes.
const MODEL_FORMAT: &str = "plankton-gbdt-one-vs-rest-v1";

/// Hyper-parameters, named as XGBoost names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GbdtParams {
    /// Boosting rounds: trees per class.
    pub rounds: usize,
    /// Shrinkage of every leaf value (`eta`).
    pub learning_rate: f32,
    pub max_depth: usize,
    /// Histogram bins per feature (`max_bin`).
    pub max_bins: u16,
    /// L2 penalty on leaf values (`lambda`).
    pub l2: f32,
    /// Smallest hessian sum of a leaf (`min_child_weight`).
    pub min_leaf_weight: f32,
    /// Threads training boosters side by side; 0 leaves rayon's default (one per core).
    pub threads: usize,
}

impl Default for GbdtParams {
    /// 100 rounds of depth-6 trees at rate 0.1, 256 bins, lambda 1, min_child_weight 1.
    fn default() -> Self {
        GbdtParams {
            rounds: 100,
            learning_rate: 0.1,
            max_depth: 6,
            max_bins: 256,
            l2: 1.0,
            min_leaf_weight: 1.0,
            threads: 0,
        }
    }
}

impl GbdtParams {
    fn validate(&self) -> Result<(), GbdtError> {
        if self.rounds == 0 || self.max_depth == 0 || self.max_bins < 2 {
            return Err(GbdtError::InvalidParams(format!(
                "rounds {}, max_depth {} and max_bins {} must be at least 1, 1 and 2",
                self.rounds, self.max_depth, self.max_bins
            )));
        }
        let positive = |value: f32| value.is_finite() && value > 0.0;
        let non_negative = |value: f32| value.is_finite() && value >= 0.0;
        if !positive(self.learning_rate)
            || !non_negative(self.l2)
            || !non_negative(self.min_leaf_weight)
        {
            return Err(GbdtError::InvalidParams(format!(
                "learning_rate {} must be positive, l2 {} and min_leaf_weight {} non-negative",
                self.learning_rate, self.l2, self.min_leaf_weight
            )));
        }
        Ok(())
    }
}

/// A dense row-major `f32` matrix of features; NaN marks a missing value, infinities are refused.
#[derive(Clone, Copy, Debug)]
pub struct FeatureMatrix<'a> {
    values: &'a [f32],
    rows: usize,
    features: usize,
}

impl<'a> FeatureMatrix<'a> {
    /// `values` holds `rows` rows of `features` values each.
    pub fn new(values: &'a [f32], rows: usize, features: usize) -> Result<Self, GbdtError> {
        if rows.checked_mul(features) != Some(values.len()) || features == 0 {
            return Err(GbdtError::ShapeMismatch {
                values: values.len(),
                rows,
                features,
            });
        }
        if let Some(index) = values.iter().position(|value| value.is_infinite()) {
            return Err(GbdtError::InfiniteValue {
                row: index / features,
                feature: index % features,
                value: values[index],
            });
        }
        Ok(FeatureMatrix {
            values,
            rows,
            features,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// Column-major `f64` copy: the engine's layout.
    fn column_major(&self) -> Vec<f64> {
        let mut columns = Vec::with_capacity(self.values.len());
        for feature in 0..self.features {
            columns.extend(
                self.values[feature..]
                    .iter()
                    .step_by(self.features)
                    .map(|value| f64::from(*value)),
            );
        }
        columns
    }
}

/// A trained model: one booster per class, `None` for a class without training rows (probability 0).
#[derive(Serialize, Deserialize)]
pub struct GbdtModel {
    format: String,
    num_classes: usize,
    num_features: usize,
    params: GbdtParams,
    boosters: Vec<Option<GradientBooster>>,
}

impl std::fmt::Debug for GbdtModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GbdtModel")
            .field("num_classes", &self.num_classes)
            .field("num_features", &self.num_features)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl GbdtModel {
    /// Trains `num_classes` one-vs-rest boosters on `features` with `labels` (each below `num_classes`) and one
    /// non-negative finite weight per row.
    pub fn train(
        features: &FeatureMatrix<'_>,
        labels: &[u32],
        sample_weights: &[f32],
        num_classes: usize,
        params: &GbdtParams,
    ) -> Result<Self, GbdtError> {
        params.validate()?;
        if labels.len() != features.rows || sample_weights.len() != features.rows {
            return Err(GbdtError::InvalidData(format!(
                "{} labels and {} weights for {} rows",
                labels.len(),
                sample_weights.len(),
                features.rows
            )));
        }
        if num_classes < 2 {
            return Err(GbdtError::InvalidData(format!(
                "{num_classes} classes, need at least 2"
            )));
        }
        if let Some((row, label)) = labels
            .iter()
            .enumerate()
            .find(|(_, label)| **label as usize >= num_classes)
        {
            return Err(GbdtError::InvalidData(format!(
                "row {row}: label {label} is not below {num_classes} classes"
            )));
        }
        if let Some((row, weight)) = sample_weights
            .iter()
            .enumerate()
            .find(|(_, weight)| !(weight.is_finite() && **weight >= 0.0))
        {
            return Err(GbdtError::InvalidData(format!(
                "row {row}: sample weight {weight} is not a finite non-negative number"
            )));
        }
        let mut class_rows = vec![0usize; num_classes];
        for label in labels {
            class_rows[*label as usize] += 1;
        }
        let columns = features.column_major();
        let matrix = Matrix::new(&columns, features.rows, features.features);
        let weights: Vec<f64> = sample_weights
            .iter()
            .map(|weight| f64::from(*weight))
            .collect();
        let train_class = |class: usize| -> Result<Option<GradientBooster>, GbdtError> {
            if class_rows[class] == 0 {
                return Ok(None);
            }
            let targets: Vec<f64> = labels
                .iter()
                .map(|label| if *label as usize == class { 1.0 } else { 0.0 })
                .collect();
            let boosting_error = |reason: String| GbdtError::Boosting { class, reason };
            let mut booster = GradientBooster::default()
                .set_objective_type(ObjectiveType::LogLoss)
                .set_iterations(params.rounds)
                .set_learning_rate(params.learning_rate)
                .set_max_depth(params.max_depth)
                .set_nbins(params.max_bins)
                .set_l2(params.l2)
                .set_min_leaf_weight(params.min_leaf_weight)
                .set_parallel(false);
            booster
                .fit(&matrix, &targets, &weights, None)
                .map_err(|error| boosting_error(error.to_string()))?;
            Ok(Some(booster))
        };
        let train_all = || {
            (0..num_classes)
                .into_par_iter()
                .map(train_class)
                .collect::<Result<Vec<_>, _>>()
        };
        let boosters = if params.threads > 0 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(params.threads)
                .build()
                .map_err(|error| GbdtError::InvalidParams(format!("thread pool: {error}")))?
                .install(train_all)?
        } else {
            train_all()?
        };
        Ok(GbdtModel {
            format: MODEL_FORMAT.to_string(),
            num_classes,
            num_features: features.features,
            params: params.clone(),
            boosters,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn params(&self) -> &GbdtParams {
        &self.params
    }

    /// Row-major `rows x num_classes` probabilities: each booster's sigmoid, normalised over the classes.
    pub fn predict_probabilities(
        &self,
        features: &FeatureMatrix<'_>,
    ) -> Result<Vec<f32>, GbdtError> {
        if features.features != self.num_features {
            return Err(GbdtError::InvalidData(format!(
                "{} features per row, the model was trained on {}",
                features.features, self.num_features
            )));
        }
        let rows = features.rows;
        let columns = features.column_major();
        let matrix = Matrix::new(&columns, rows, features.features);
        let class_scores: Vec<Vec<f64>> = self
            .boosters
            .par_iter()
            .map(|booster| match booster {
                Some(booster) => booster
                    .predict(&matrix, false)
                    .into_iter()
                    .map(|margin| 1.0 / (1.0 + (-margin).exp()))
                    .collect(),
                None => vec![0.0; rows],
            })
            .collect();
        let mut probabilities = vec![0f32; rows * self.num_classes];
        for row in 0..rows {
            let total: f64 = class_scores.iter().map(|scores| scores[row]).sum();
            let output = &mut probabilities[row * self.num_classes..(row + 1) * self.num_classes];
            for (class, scores) in class_scores.iter().enumerate() {
                output[class] = if total > 0.0 {
                    (scores[row] / total) as f32
                } else {
                    1.0 / self.num_classes as f32
                };
            }
        }
        Ok(probabilities)
    }

    /// The most probable class of every row.
    pub fn predict_classes(&self, features: &FeatureMatrix<'_>) -> Result<Vec<u32>, GbdtError> {
        let probabilities = self.predict_probabilities(features)?;
        Ok(probabilities
            .chunks(self.num_classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |best, (class, probability)| {
                        if *probability > best.1 {
                            (class, *probability)
                        } else {
                            best
                        }
                    })
                    .0 as u32
            })
            .collect())
    }

    /// The model as bytes (JSON), for storage next to its model card.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GbdtError> {
        serde_json::to_vec(self).map_err(|error| GbdtError::Serialization(error.to_string()))
    }

    /// A model from [`GbdtModel::to_bytes`]; refuses another format or inconsistent shapes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GbdtError> {
        let model: GbdtModel = serde_json::from_slice(bytes)
            .map_err(|error| GbdtError::Serialization(error.to_string()))?;
        if model.format != MODEL_FORMAT {
            return Err(GbdtError::Serialization(format!(
                "format {:?}, expected {MODEL_FORMAT:?}",
                model.format
            )));
        }
        if model.boosters.len() != model.num_classes || model.num_features == 0 {
            return Err(GbdtError::Serialization(format!(
                "{} boosters for {} classes of {} features",
                model.boosters.len(),
                model.num_classes,
                model.num_features
            )));
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes by the sign of feature 0 and the size of feature 1; feature 1 is missing in some rows of
    /// class 2, feature 2 is noise.
    fn toy_data(rows: usize) -> (Vec<f32>, Vec<u32>) {
        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut state = 12345u64;
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for row in 0..rows {
            let class = (row % 3) as u32;
            let (first, second) = match class {
                0 => (-1.0 + noise() * 0.5, noise()),
                1 => (1.0 + noise() * 0.5, 2.0 + noise()),
                _ => (
                    1.0 + noise() * 0.5,
                    if row % 2 == 0 {
                        f32::NAN
                    } else {
                        -2.0 + noise()
                    },
                ),
            };
            values.extend([first, second, noise()]);
            labels.push(class);
        }
        (values, labels)
    }

    fn small_params() -> GbdtParams {
        GbdtParams {
            rounds: 20,
            max_depth: 3,
            threads: 2,
            ..Default::default()
        }
    }

    #[test]
    fn learns_separable_classes_with_missing_values_and_round_trips() {
        let (values, labels) = toy_data(300);
        let features = FeatureMatrix::new(&values, 300, 3).unwrap();
        let weights = vec![1.0; 300];
        let model = GbdtModel::train(&features, &labels, &weights, 4, &small_params()).unwrap();
        let predicted = model.predict_classes(&features).unwrap();
        let correct = predicted
            .iter()
            .zip(&labels)
            .filter(|(a, b)| a == b)
            .count();
        assert!(correct >= 290, "{correct}/300 right");
        let probabilities = model.predict_probabilities(&features).unwrap();
        for row in probabilities.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{row:?}");
            assert_eq!(row[3], 0.0, "class 3 has no training rows");
        }
        let reloaded = GbdtModel::from_bytes(&model.to_bytes().unwrap()).unwrap();
        assert_eq!(
            reloaded.predict_probabilities(&features).unwrap(),
            probabilities
        );
        assert_eq!(reloaded.num_features(), 3);
    }

    /// Weighting the rows of class 2 by 0 teaches the model nothing about it.
    #[test]
    fn sample_weights_steer_the_boosters() {
        let (values, labels) = toy_data(300);
        let features = FeatureMatrix::new(&values, 300, 3).unwrap();
        let weights: Vec<f32> = labels
            .iter()
            .map(|label| if *label == 2 { 0.0 } else { 1.0 })
            .collect();
        let model = GbdtModel::train(&features, &labels, &weights, 3, &small_params()).unwrap();
        let predicted = model.predict_classes(&features).unwrap();
        let class_two_right = predicted
            .iter()
            .zip(&labels)
            .filter(|(predicted, label)| **label == 2 && **predicted == 2)
            .count();
        assert!(
            class_two_right < 10,
            "{class_two_right} of 100 class-2 rows right"
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            FeatureMatrix::new(&[1.0, 2.0, 3.0], 2, 2),
            Err(GbdtError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            FeatureMatrix::new(&[1.0, f32::INFINITY], 1, 2),
            Err(GbdtError::InfiniteValue {
                row: 0,
                feature: 1,
                ..
            })
        ));
        let (values, labels) = toy_data(30);
        let features = FeatureMatrix::new(&values, 30, 3).unwrap();
        let weights = vec![1.0; 30];
        let error = GbdtModel::train(&features, &labels, &weights, 2, &small_params()).unwrap_err();
        assert!(
            error.to_string().contains("label 2 is not below 2"),
            "{error}"
        );
        let mut negative = weights.clone();
        negative[4] = -1.0;
        let error =
            GbdtModel::train(&features, &labels, &negative, 3, &small_params()).unwrap_err();
        assert!(error.to_string().contains("row 4"), "{error}");
        let zero_rounds = GbdtParams {
            rounds: 0,
            ..small_params()
        };
        assert!(matches!(
            GbdtModel::train(&features, &labels, &weights, 3, &zero_rounds),
            Err(GbdtError::InvalidParams(_))
        ));
        assert!(matches!(
            GbdtModel::from_bytes(b"{\"format\":\"other\"}"),
            Err(GbdtError::Serialization(_))
        ));
        let model = GbdtModel::train(&features, &labels, &weights, 3, &small_params()).unwrap();
        let two_features = FeatureMatrix::new(&values[..20], 10, 2).unwrap();
        assert!(model.predict_probabilities(&two_features).is_err());
    }
}
