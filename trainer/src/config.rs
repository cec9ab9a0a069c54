//! Training configuration: architecture, optimizer, learning-rate schedule, augmentation.
use std::fmt;
use std::str::FromStr;

use plankton_collective::GradientCompression;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Bytes of one preprocessed image: u8 CHW `[3, 64, 64]` (grey, threshold, opening).
pub const IMAGE_LEN: usize = IMAGE_CHANNELS * IMAGE_SIZE * IMAGE_SIZE;
/// Side of the square input images in pixels.
pub const IMAGE_SIZE: usize = 64;
/// Input channels: grey, threshold, opening.
pub const IMAGE_CHANNELS: usize = 3;

/// The network trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// The reference notebook's CNN: 2x2 convolutions of 6/16/16 filters ('valid'), each + ReLU + 2x2
    /// max-pool, dense 250 -> 100 -> classes.
    LeNet,
    /// The same layout with 3x3 'same' convolutions of 32/64/128 filters (about 50x the multiply-adds).
    #[serde(rename = "wide_lenet")]
    WideLeNet,
    /// A small ResNet with batch norm sized for CPU training at 64x64 (the default).
    #[default]
    ResNet,
    /// The resnet trunk (up to its global pooling) and an MLP over the transformed native features
    /// (F -> 64 -> 64, ReLU), concatenated before the classifier.
    Fusion,
    /// Not a network: gradient-boosted trees (plankton-gbdt) on the transformed native features only, trained
    /// on one worker.
    Gbdt,
}

impl Architecture {
    /// The lowercase name used in configs, CLIs and model cards.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::LeNet => "lenet",
            Architecture::WideLeNet => "wide_lenet",
            Architecture::ResNet => "resnet",
            Architecture::Fusion => "fusion",
            Architecture::Gbdt => "gbdt",
        }
    }

    /// Whether the model takes the transformed native features (next to the image, for a network).
    pub fn uses_features(self) -> bool {
        matches!(self, Architecture::Fusion | Architecture::Gbdt)
    }

    /// Whether the model is a libtorch network (every architecture but `gbdt`).
    pub fn is_network(self) -> bool {
        !matches!(self, Architecture::Gbdt)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = TrainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lenet" => Ok(Architecture::LeNet),
            "wide_lenet" | "wide-lenet" => Ok(Architecture::WideLeNet),
            "resnet" => Ok(Architecture::ResNet),
            "fusion" => Ok(Architecture::Fusion),
            "gbdt" => Ok(Architecture::Gbdt),
            _ => Err(TrainError::UnknownArchitecture(text.to_string())),
        }
    }
}

/// The optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerChoice {
    /// Adam (beta 0.9/0.999, eps 1e-8), weight decay as L2 like `torch.optim.Adam`.
    #[default]
    Adam,
    /// SGD with momentum 0.9, weight decay as L2 like `torch.optim.SGD`.
    SgdMomentum,
}

impl FromStr for OptimizerChoice {
    type Err = TrainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "adam" => Ok(OptimizerChoice::Adam),
            "sgd" | "sgd_momentum" | "sgd-momentum" => Ok(OptimizerChoice::SgdMomentum),
            _ => Err(TrainError::InvalidConfig(format!(
                "unknown optimizer {text:?} (expected adam or sgd)"
            ))),
        }
    }
}

/// How the learning rate changes from epoch to epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The same learning rate every epoch.
    #[default]
    Constant,
    /// Cosine annealing from the base rate towards zero over all epochs.
    Cosine,
    /// Divided by 10 at 50 % and again at 75 % of the epochs.
    Step,
}

impl FromStr for LrSchedule {
    type Err = TrainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            "step" => Ok(LrSchedule::Step),
            _ => Err(TrainError::InvalidConfig(format!(
                "unknown learning-rate schedule {text:?} (expected constant, cosine or step)"
            ))),
        }
    }
}

impl LrSchedule {
    /// The learning rate of `epoch_index` (0-based) out of `epochs`.
    pub fn learning_rate(self, base_learning_rate: f64, epoch_index: u32, epochs: u32) -> f64 {
        let epochs = epochs.max(1) as f64;
        let epoch = epoch_index as f64;
        match self {
            LrSchedule::Constant => base_learning_rate,
            LrSchedule::Cosine => {
                base_learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * epoch / epochs).cos())
            }
            LrSchedule::Step => {
                let mut rate = base_learning_rate;
                if epoch >= (epochs * 0.5).floor() && epochs >= 2.0 {
                    rate *= 0.1;
                }
                if epoch >= (epochs * 0.75).floor() && epochs >= 4.0 {
                    rate *= 0.1;
                }
                rate
            }
        }
    }
}

/// Which training samples get random flips, 90-degree rotations and shifts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentationMode {
    /// No augmentation.
    #[default]
    None,
    /// Every training sample.
    All,
    /// Only samples whose class weight is above the median class weight (the rare classes).
    RareClasses,
}

impl FromStr for AugmentationMode {
    type Err = TrainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(AugmentationMode::None),
            "all" => Ok(AugmentationMode::All),
            "rare" | "rare_classes" | "rare-classes" => Ok(AugmentationMode::RareClasses),
            _ => Err(TrainError::InvalidConfig(format!(
                "unknown augmentation mode {text:?} (expected none, all or rare-classes)"
            ))),
        }
    }
}

/// The number format of the training forward and backward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere (the CPU default: bf16 is slower than f32 on many CPUs).
    #[default]
    Fp32,
    /// Convolutions and linear layers in bf16 on a bf16 copy of their f32 weights made in the graph (as
    /// `torch.autocast` does), so gradients flow back into the f32 master weights; batch norm, the loss, the
    /// all-reduce and the optimizer state stay f32. Evaluation runs in f32.
    Bf16,
}

impl Precision {
    /// The lowercase name used in configs, CLIs and model cards.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl FromStr for Precision {
    type Err = TrainError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(TrainError::InvalidConfig(format!(
                "unknown precision {text:?} (expected fp32 or bf16)"
            ))),
        }
    }
}

/// The training loss of the networks. Evaluation and prediction always use the plain logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LossFunction {
    /// The class-weighted cross-entropy of the logits.
    #[default]
    CrossEntropy,
    /// Train-time logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): the
    /// class-weighted cross-entropy of `logits + tau * ln(prior)`, `prior` each class's share of the training
    /// split. Rare classes get a larger margin. Class weights still apply; the usual choice is uniform weights
    /// with this loss, or class weights with the plain cross-entropy.
    LogitAdjusted {
        tau: f64,
        /// One per class, each > 0, summing to 1.
        class_priors: Vec<f64>,
    },
}

impl LossFunction {
    /// The default `tau`.
    pub const DEFAULT_TAU: f64 = 1.0;

    /// Logit adjustment with the priors of `train_class_counts`. A class without training objects counts as
    /// one, so that every offset is finite (the network never sees its label in training anyway).
    pub fn logit_adjusted(tau: f64, train_class_counts: &[u64]) -> Self {
        let counts: Vec<f64> = train_class_counts
            .iter()
            .map(|count| (*count).max(1) as f64)
            .collect();
        let total: f64 = counts.iter().sum();
        LossFunction::LogitAdjusted {
            tau,
            class_priors: counts.iter().map(|count| count / total).collect(),
        }
    }

    /// What is added to each class's logit before the training loss: `tau * ln(prior)`; `None` for the plain
    /// cross-entropy.
    pub fn logit_offsets(&self) -> Option<Vec<f32>> {
        match self {
            LossFunction::CrossEntropy => None,
            LossFunction::LogitAdjusted { tau, class_priors } => Some(
                class_priors
                    .iter()
                    .map(|prior| (tau * prior.ln()) as f32)
                    .collect(),
            ),
        }
    }

    /// The name used in model cards and logs.
    pub fn name(&self) -> &'static str {
        match self {
            LossFunction::CrossEntropy => "cross_entropy",
            LossFunction::LogitAdjusted { .. } => "logit_adjusted",
        }
    }
}

/// Everything a rank needs to train its part of a data-parallel job.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub architecture: Architecture,
    pub num_classes: usize,
    /// Transformed feature values per sample ([`plankton_dataset::FeatureTransform::output_width`]) for a
    /// network that takes features ([`Architecture::uses_features`]); 0 otherwise.
    pub feature_width: usize,
    /// One weight per class for the weighted cross-entropy (e.g. sklearn "balanced").
    pub class_weights: Vec<f32>,
    pub epochs: u32,
    /// Images per step of ONE virtual shard; the global batch is `batch_size * virtual shards`.
    pub batch_size: usize,
    /// Identical on every rank; given by the coordinator.
    pub steps_per_epoch: usize,
    pub learning_rate: f64,
    pub optimizer: OptimizerChoice,
    /// L2 weight decay (0 disables it).
    pub weight_decay: f64,
    pub lr_schedule: LrSchedule,
    pub augmentation: AugmentationMode,
    /// Seeds the initial weights and each virtual shard's batch order and augmentation.
    pub seed: u64,
    /// libtorch intra-op threads (`tch::set_num_threads`), 0 leaves libtorch's default.
    pub threads: usize,
    pub device: tch::Device,
    /// Rank 0 hands the observer a training state every this many optimizer steps (0: only at epoch ends).
    pub checkpoint_every_steps: u64,
    /// What a step whose loss or gradients are not finite on some rank does.
    pub non_finite_policy: NonFinitePolicy,
    /// What a step's summed class-weighted loss is divided by.
    pub loss_normalization: LossNormalization,
    /// Cross-entropy of the plain or the prior-adjusted logits.
    pub loss: LossFunction,
    /// Fault injection (tests): this rank's loss becomes NaN at this global step.
    pub inject_non_finite_at_step: Option<u64>,
    /// The number format of the gradient all-reduce (identical on every rank of a job).
    pub gradient_compression: GradientCompression,
    /// The number format of the training forward and backward passes.
    pub precision: Precision,
    /// With several ranks, all-reduce the network's late segment (most of its parameters) while the early
    /// segment's backward runs, instead of everything after the backward. Identical on every rank of a job.
    pub overlap_communication: bool,
}

/// What the summed class-weighted cross-entropy `sum_i w_i * l_i` of a step's global batch is divided by. Every
/// choice depends only on the global batch (its virtual shards), never on how many workers share it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossNormalization {
    /// By the global batch's weight sum `sum_i w_i` (a weighted mean): a batch holding one rare sample of weight
    /// ~600 gives that sample most of the step.
    WeightSum,
    /// By the global batch's sample count (Keras' `class_weight`): the step's size grows with its weights.
    Samples,
    /// Each virtual shard's weighted mean `sum w l / sum w`, averaged over the virtual shards (PyTorch DDP
    /// with a weighted `CrossEntropyLoss` per rank, one rank per virtual shard). The default: it trains to a
    /// higher macro-F1 than `WeightSum` on imbalanced data (README, "Model quality against the PyTorch script").
    #[default]
    ShardMean,
}

impl LossNormalization {
    /// The lowercase name used in configs and model cards.
    pub fn name(self) -> &'static str {
        match self {
            LossNormalization::WeightSum => "weight_sum",
            LossNormalization::Samples => "samples",
            LossNormalization::ShardMean => "shard_mean",
        }
    }

    /// The multiplier of each sample's `w_i * l_i` in a group (a virtual shard's part of the batch) whose weight
    /// sum is `group_weight_sum`, and what the group adds to the global denominator, for a group of `samples`.
    pub fn group_terms(self, samples: usize, group_weight_sum: f64) -> (f64, f64) {
        match self {
            LossNormalization::WeightSum => (1.0, group_weight_sum),
            LossNormalization::Samples => (1.0, samples as f64),
            LossNormalization::ShardMean if samples == 0 || group_weight_sum <= 0.0 => (0.0, 0.0),
            LossNormalization::ShardMean => (1.0 / group_weight_sum, 1.0),
        }
    }
}

/// What a step whose loss or gradients are NaN or infinite on some rank does. Ranks check their own before the
/// all-reduce, so every rank knows which ranks were at fault and all of them decide alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Fail with [`crate::TrainError::NonFinite`]; no weight changes.
    #[default]
    Fail,
    /// Skip the step on every rank (the batch is consumed, the weights and optimizer do not change).
    SkipStep,
}

impl TrainConfig {
    /// A configuration with the project defaults (resnet, Adam 1e-3, constant rate, no augmentation).
    pub fn new(num_classes: usize, class_weights: Vec<f32>) -> Self {
        TrainConfig {
            architecture: Architecture::ResNet,
            num_classes,
            feature_width: 0,
            class_weights,
            epochs: 10,
            batch_size: 64,
            steps_per_epoch: 1,
            learning_rate: 1e-3,
            optimizer: OptimizerChoice::Adam,
            weight_decay: 0.0,
            lr_schedule: LrSchedule::Constant,
            augmentation: AugmentationMode::None,
            seed: 42,
            threads: 1,
            device: tch::Device::Cpu,
            checkpoint_every_steps: 0,
            non_finite_policy: NonFinitePolicy::Fail,
            loss_normalization: LossNormalization::default(),
            loss: LossFunction::CrossEntropy,
            inject_non_finite_at_step: None,
            gradient_compression: GradientCompression::None,
            precision: Precision::Fp32,
            overlap_communication: true,
        }
    }

    /// Checks the values a rank cannot train with.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.num_classes < 2 {
            return Err(TrainError::InvalidConfig(format!(
                "num_classes is {}, need at least 2",
                self.num_classes
            )));
        }
        if self.class_weights.len() != self.num_classes {
            return Err(TrainError::InvalidConfig(format!(
                "{} class weights for {} classes",
                self.class_weights.len(),
                self.num_classes
            )));
        }
        if let Some((class_index, weight)) = self
            .class_weights
            .iter()
            .enumerate()
            .find(|(_, weight)| !weight.is_finite() || **weight < 0.0)
        {
            return Err(TrainError::InvalidConfig(format!(
                "class weight {weight} of class {class_index} is not a finite non-negative number"
            )));
        }
        if self.architecture.uses_features() && self.feature_width == 0 {
            return Err(TrainError::InvalidConfig(format!(
                "model {} needs native features, but the feature width is 0",
                self.architecture
            )));
        }
        if self.batch_size == 0 {
            return Err(TrainError::InvalidConfig("batch_size is 0".to_string()));
        }
        if self.steps_per_epoch == 0 {
            return Err(TrainError::InvalidConfig(
                "steps_per_epoch is 0".to_string(),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "learning_rate {} is not positive",
                self.learning_rate
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::InvalidConfig(format!(
                "weight_decay {} is negative",
                self.weight_decay
            )));
        }
        if let LossFunction::LogitAdjusted { tau, class_priors } = &self.loss {
            if !(tau.is_finite() && *tau > 0.0) {
                return Err(TrainError::InvalidConfig(format!(
                    "logit adjustment tau {tau} is not a finite positive number"
                )));
            }
            if class_priors.len() != self.num_classes {
                return Err(TrainError::InvalidConfig(format!(
                    "{} class priors for {} classes",
                    class_priors.len(),
                    self.num_classes
                )));
            }
            if let Some((class_index, prior)) = class_priors
                .iter()
                .enumerate()
                .find(|(_, prior)| !(prior.is_finite() && **prior > 0.0))
            {
                return Err(TrainError::InvalidConfig(format!(
                    "class prior {prior} of class {class_index} is not a finite positive number"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_adjustment_priors_count_an_empty_class_as_one() {
        let loss = LossFunction::logit_adjusted(2.0, &[6, 0, 3]);
        let offsets = loss.logit_offsets().unwrap();
        let expected = [0.6f64, 0.1, 0.3].map(|prior| (2.0 * prior.ln()) as f32);
        for (offset, expected) in offsets.iter().zip(expected) {
            assert!((offset - expected).abs() < 1e-6, "{offsets:?}");
        }
        assert_eq!(LossFunction::CrossEntropy.logit_offsets(), None);
        let mut config = TrainConfig::new(3, vec![1.0; 3]);
        config.loss = loss;
        config.validate().unwrap();
        for bad_tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            config.loss = LossFunction::logit_adjusted(bad_tau, &[6, 0, 3]);
            assert!(config.validate().is_err(), "tau {bad_tau}");
        }
        config.loss = LossFunction::logit_adjusted(1.0, &[6, 3]);
        assert!(config.validate().is_err(), "two priors for three classes");
    }

    /// The case: two virtual shards of 128, one rare sample of weight 600 among weight-1 samples in
    /// shard 0. Its share of the step's gradient direction, and the step's scale (sum of coefficients x weights).
    #[test]
    fn a_rare_samples_share_of_a_step_under_each_normalisation() {
        let shard_sums = [127.0 + 600.0, 128.0];
        let share_and_scale = |normalization: LossNormalization| {
            let (multiplier_0, denominator_0) = normalization.group_terms(128, shard_sums[0]);
            let (multiplier_1, denominator_1) = normalization.group_terms(128, shard_sums[1]);
            let denominator = denominator_0 + denominator_1;
            let rare = multiplier_0 * 600.0 / denominator;
            let total = (multiplier_0 * shard_sums[0] + multiplier_1 * shard_sums[1]) / denominator;
            (rare / total, total)
        };
        let (share, scale) = share_and_scale(LossNormalization::WeightSum);
        assert!((share - 600.0 / 855.0).abs() < 1e-12 && (scale - 1.0).abs() < 1e-12);
        let (share, scale) = share_and_scale(LossNormalization::Samples);
        assert!((share - 600.0 / 855.0).abs() < 1e-12 && (scale - 855.0 / 256.0).abs() < 1e-12);
        let (share, scale) = share_and_scale(LossNormalization::ShardMean);
        assert!((share - (600.0 / 727.0) / 2.0).abs() < 1e-12 && (scale - 1.0).abs() < 1e-12);
        // An empty shard counts for nothing.
        assert_eq!(LossNormalization::ShardMean.group_terms(0, 0.0), (0.0, 0.0));
    }
}
