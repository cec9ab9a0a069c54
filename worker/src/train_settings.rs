//! What a job spec and its shard assignment ask of the trainer: the proto's enums and fields turned into the
//! trainer's `TrainConfig`, the preprocessing's resize and the training settings a model card records.

use plankton_preprocess::ResizeMode;
use plankton_proto::v1::{
    Augmentation, GradientCompression as ProtoGradientCompression, JobSpec,
    LossFunction as ProtoLossFunction, LossNormalization as ProtoLossNormalization,
    LrSchedule as ProtoLrSchedule, NonFinitePolicy as ProtoNonFinitePolicy, OptimizerKind,
    Precision as ProtoPrecision, ResizeMode as ProtoResizeMode, ShardAssignment,
};
use plankton_trainer::{
    Architecture, AugmentationMode, GradientCompression, LossFunction, LossNormalization,
    LrSchedule, NonFinitePolicy, OptimizerChoice, Precision, TrainConfig, TrainingRecord,
};

/// The resize the spec asks for.
pub(crate) fn resize_mode(spec: &JobSpec) -> ResizeMode {
    match ProtoResizeMode::try_from(spec.resize_mode).unwrap_or_default() {
        ProtoResizeMode::ResizeStretch => ResizeMode::Stretch,
        ProtoResizeMode::ResizePadToSquare => ResizeMode::PadToSquare,
    }
}

/// The trainer's settings for `spec` on this `assignment`; `threads` when the spec leaves them to the worker.
pub(crate) fn train_config(
    spec: &JobSpec,
    assignment: &ShardAssignment,
    threads: usize,
) -> anyhow::Result<TrainConfig> {
    let architecture: Architecture = spec
        .model
        .parse()
        .map_err(|error| anyhow::anyhow!("model {:?}: {error}", spec.model))?;
    let threads = if spec.threads_per_worker > 0 {
        spec.threads_per_worker as usize
    } else {
        threads
    };
    let feature_width = match crate::features::assignment_transform(assignment)? {
        Some(transform) => transform.output_width(),
        None if architecture.uses_features() => anyhow::bail!(
            "model {} takes native features, but the assignment carries no feature transform",
            architecture
        ),
        None => 0,
    };
    Ok(TrainConfig {
        architecture,
        num_classes: assignment.class_names.len(),
        feature_width,
        class_weights: assignment.class_weights.clone(),
        epochs: spec.epochs,
        batch_size: spec.batch_size as usize,
        steps_per_epoch: assignment.steps_per_epoch.max(1) as usize,
        learning_rate: f64::from(spec.learning_rate),
        optimizer: match OptimizerKind::try_from(spec.optimizer).unwrap_or_default() {
            OptimizerKind::OptimizerAdam => OptimizerChoice::Adam,
            OptimizerKind::OptimizerSgdMomentum => OptimizerChoice::SgdMomentum,
        },
        lr_schedule: match ProtoLrSchedule::try_from(spec.lr_schedule).unwrap_or_default() {
            ProtoLrSchedule::Constant => LrSchedule::Constant,
            ProtoLrSchedule::Cosine => LrSchedule::Cosine,
            ProtoLrSchedule::Step => LrSchedule::Step,
        },
        augmentation: match Augmentation::try_from(spec.augmentation).unwrap_or_default() {
            Augmentation::None => AugmentationMode::None,
            Augmentation::All => AugmentationMode::All,
            Augmentation::RareClasses => AugmentationMode::RareClasses,
        },
        weight_decay: 0.0,
        seed: spec.seed,
        threads: threads.max(1),
        device: tch::Device::cuda_if_available(),
        checkpoint_every_steps: u64::from(spec.checkpoint_every_steps),
        non_finite_policy: match ProtoNonFinitePolicy::try_from(spec.non_finite_policy)
            .unwrap_or_default()
        {
            ProtoNonFinitePolicy::Fail => NonFinitePolicy::Fail,
            ProtoNonFinitePolicy::SkipStep => NonFinitePolicy::SkipStep,
        },
        loss_normalization: match ProtoLossNormalization::try_from(spec.loss_normalization)
            .unwrap_or_default()
        {
            ProtoLossNormalization::Default => LossNormalization::default(),
            ProtoLossNormalization::WeightSum => LossNormalization::WeightSum,
            ProtoLossNormalization::Samples => LossNormalization::Samples,
            ProtoLossNormalization::ShardMean => LossNormalization::ShardMean,
        },
        loss: training_loss(spec, assignment)?,
        inject_non_finite_at_step: None,
        gradient_compression: match ProtoGradientCompression::try_from(spec.gradient_compression)
            .unwrap_or_default()
        {
            ProtoGradientCompression::None => GradientCompression::None,
            ProtoGradientCompression::Bf16 => GradientCompression::Bf16,
        },
        precision: match ProtoPrecision::try_from(spec.precision).unwrap_or_default() {
            ProtoPrecision::Fp32 => Precision::Fp32,
            ProtoPrecision::Bf16 => Precision::Bf16,
        },
        overlap_communication: true,
    })
}

/// The spec's loss; the logit-adjusted one takes its priors from the assignment's train class counts.
pub(crate) fn training_loss(
    spec: &JobSpec,
    assignment: &ShardAssignment,
) -> anyhow::Result<LossFunction> {
    match ProtoLossFunction::try_from(spec.loss).unwrap_or_default() {
        ProtoLossFunction::CrossEntropy => Ok(LossFunction::CrossEntropy),
        ProtoLossFunction::LogitAdjusted => {
            if assignment.train_class_counts.len() != assignment.class_names.len() {
                anyhow::bail!(
                    "logit-adjusted loss: the assignment holds {} train class counts for {} classes",
                    assignment.train_class_counts.len(),
                    assignment.class_names.len()
                );
            }
            let tau = if spec.logit_tau == 0.0 {
                LossFunction::DEFAULT_TAU
            } else {
                f64::from(spec.logit_tau)
            };
            Ok(LossFunction::logit_adjusted(
                tau,
                &assignment.train_class_counts,
            ))
        }
    }
}

/// The settings the card records of a network trained with `config`.
pub(crate) fn training_record(config: &TrainConfig, spec: &JobSpec) -> TrainingRecord {
    TrainingRecord {
        precision: config.precision.name().to_string(),
        gradient_compression: config.gradient_compression.name().to_string(),
        loss_normalization: config.loss_normalization.name().to_string(),
        world_size: spec.world_size,
        epochs: config.epochs,
        batch_size: config.batch_size as u32,
        learning_rate: config.learning_rate,
        seed: config.seed,
        completed: serde_json::Map::new(),
    }
}
