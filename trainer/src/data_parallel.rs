//! One rank's model and optimizer: a step applies the gradient of the global batch (one flat
//! all-reduce), and the whole training state can be copied from a live rank (broadcast) or to and
//! from a checkpoint file.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tch::nn;
use tch::{Kind, Reduction, Tensor};
use tracing::info;

use crate::batch::ShardData;
use crate::config::{
    Architecture, IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE, NonFinitePolicy, OptimizerChoice,
    Precision, TrainConfig,
};
use crate::error::TrainError;
use crate::inference::{TrainedModel, load_weights_into};
use crate::model::{ComputeKind, Network, SplitForward, channels_last, sorted_variables};
use crate::optimizer::{Optimizer, STATE_TENSOR_PREFIX};
use crate::safetensors_io::{self, TensorFile};
use plankton_collective::{Collective, GradientCompression};

/// Images per forward pass during evaluation and inference.
pub const EVALUATION_BATCH_SIZE: usize = 256;

/// Metadata `format` of a training-state file.
pub const TRAINING_STATE_FORMAT: &str = "plankton-training-state/1";

/// Where a trainer is in the job; identical on every rank of a generation.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct TrainingProgress {
    /// Optimizer steps applied since the job began.
    pub global_step: u64,
    /// Epochs whose end (batch-norm sync + evaluation) is done.
    pub evaluated_epochs: u32,
    /// Sum of the step losses of the epoch of the last applied step (kept after the epoch's end,
    /// so a rank resuming at an epoch boundary can still report its mean; reset by the first step
    /// of the next epoch).
    pub epoch_loss_sum: f64,
    /// Steps summed in `epoch_loss_sum`.
    pub epoch_loss_steps: u64,
}

impl TrainingProgress {
    /// Mean step loss of the current (or just finished) epoch, 0 before its first step.
    pub fn epoch_mean_loss(&self) -> f64 {
        if self.epoch_loss_steps == 0 {
            0.0
        } else {
            self.epoch_loss_sum / self.epoch_loss_steps as f64
        }
    }
}

/// Where one step's time went on a rank, and what its all-reduce moved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Assembling the batch (filled in by the training loop).
    pub data: Duration,
    pub forward_backward: Duration,
    /// Communication this rank waited for (with overlap, what the early backward did not hide).
    pub all_reduce: Duration,
    /// Communication that ran alongside the early segment's backward: not part of the step's time.
    pub all_reduce_hidden: Duration,
    pub optimizer: Duration,
    /// Bytes of the all-reduced buffer (0 on one rank).
    pub all_reduce_bytes: u64,
}

/// What a rank brings to a step's all-reduce.
struct LocalStep {
    /// The late segment's gradients travel while the early segment's backward runs.
    overlap: bool,
    /// The forward pass whose early backward is still to run (overlap, non-empty batch).
    split: Option<SplitForward>,
    /// When the step began.
    started: Instant,
    loss_value: f64,
    denominator: f64,
    request_reform: bool,
}

/// What one optimizer step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// Class-weighted cross-entropy over the global batch, normalised as configured ([`crate::LossNormalization`]).
    pub loss: f64,
    /// What the summed weighted loss was divided by: the global batch's weight sum, sample count, or number
    /// of virtual shards (each shard's loss being its weighted mean).
    pub global_denominator: f64,
    /// Whether any rank asked to end the generation after this step.
    pub reform_requested: bool,
    /// Ranks whose loss or gradients were not finite: the step was skipped (policy
    /// [`NonFinitePolicy::SkipStep`]); empty when it was applied.
    pub skipped_for_ranks: Vec<usize>,
    pub timings: StepTimings,
}

/// One rank's model and optimizer. Ranks agree after [`DataParallelTrainer::synchronize_from`],
/// and every [`DataParallelTrainer::train_step`] applies the gradient of the global batch.
pub struct DataParallelTrainer {
    config: TrainConfig,
    var_store: nn::VarStore,
    network: Network,
    optimizer: Optimizer,
    /// Every variable sorted by name: the layout of broadcasts, digests and files.
    variables: Vec<(String, Tensor)>,
    /// Trainable parameters sorted by name (the optimizer's order).
    parameters: Vec<Tensor>,
    /// The parameters in the flat gradient buffer's layout: the network's late segment first (its gradients
    /// are ready first and travel while the early segment's backward runs), then the early one, each sorted
    /// by name.
    reduce_order: Vec<Tensor>,
    /// How many of `reduce_order`'s tensors, and how many values, belong to the late segment.
    late_tensors: usize,
    late_values: usize,
    /// Non-trainable buffers (batch-norm running statistics) sorted by name.
    buffers: Vec<Tensor>,
    parameter_count: usize,
    class_weights: Tensor,
    /// `tau * ln(prior)` per class, added to the logits of training steps (logit-adjusted loss only).
    logit_offsets: Option<Tensor>,
    /// Flat gradients in `reduce_order` + [local loss denominator, local loss sum, re-formation request, per-rank non-finite
    /// flags], reused every step.
    gradient_buffer: Vec<f32>,
    /// Steps skipped for non-finite values (policy [`NonFinitePolicy::SkipStep`]) by this trainer.
    skipped_steps: u64,
    /// The buffers before the current step's forward pass (to undo a failed step), reused every step.
    saved_buffers: Vec<f32>,
    progress: TrainingProgress,
}

/// Slots after the flat gradient in the all-reduced buffer.
const DENOMINATOR_SLOT: usize = 0;
const LOSS_SUM_SLOT: usize = 1;
const REFORM_SLOT: usize = 2;
const EXTRA_SLOTS: usize = 3;
// After the extra slots, one per rank: 1 when that rank's loss or gradients are not finite.

/// f32 slots carrying one u64 exactly: four 16-bit pieces, each an integer-valued f32.
const SLOTS_PER_U64: usize = 4;

fn push_u64(buffer: &mut Vec<f32>, value: u64) {
    for piece in 0..SLOTS_PER_U64 {
        buffer.push(((value >> (16 * piece)) & 0xFFFF) as f32);
    }
}

fn read_u64(slots: &[f32]) -> u64 {
    slots
        .iter()
        .enumerate()
        .map(|(piece, value)| (*value as u64 & 0xFFFF) << (16 * piece))
        .sum()
}

/// u8 CHW bytes of `count` images to a float tensor in [0, 1] on `device`, with channels-last strides
/// (the layout the convolutions are fastest on; the shape stays NCHW).
pub(crate) fn images_to_tensor(
    images: &[u8],
    count: usize,
    device: tch::Device,
) -> Result<Tensor, TrainError> {
    if images.len() != count * IMAGE_LEN {
        return Err(TrainError::InvalidInput(format!(
            "{} bytes for {count} images (expected {} bytes per image)",
            images.len(),
            IMAGE_LEN
        )));
    }
    let shape = [
        count as i64,
        IMAGE_CHANNELS as i64,
        IMAGE_SIZE as i64,
        IMAGE_SIZE as i64,
    ];
    let images_u8 = Tensor::f_from_slice(images)?
        .f_view(shape)?
        .f_to_device(device)?;
    // The u8 -> f32 conversion preserves the channels-last strides.
    Ok(channels_last(&images_u8)?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?)
}

/// Row-major transformed features of `count` samples (`width` each) as a `[count, width]` tensor on `device`;
/// `None` for a network without features (`width` 0).
pub(crate) fn features_to_tensor(
    features: &[f32],
    count: usize,
    width: usize,
    device: tch::Device,
) -> Result<Option<Tensor>, TrainError> {
    if features.len() != count * width {
        return Err(TrainError::InvalidInput(format!(
            "{} feature values for {count} samples (the model takes {width} per sample)",
            features.len()
        )));
    }
    if width == 0 {
        return Ok(None);
    }
    Ok(Some(
        Tensor::f_from_slice(features)?
            .f_view([count as i64, width as i64])?
            .f_to_device(device)?,
    ))
}

fn flatten_into(tensors: &[Tensor], buffer: &mut [f32]) -> Result<(), TrainError> {
    let mut offset = 0;
    for tensor in tensors {
        let numel = tensor.numel();
        tensor
            .f_detach()?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?
            .f_copy_data(&mut buffer[offset..offset + numel], numel)?;
        offset += numel;
    }
    debug_assert_eq!(offset, buffer.len());
    Ok(())
}

fn unflatten_from(buffer: &[f32], tensors: &[Tensor], scale: f64) -> Result<(), TrainError> {
    let flat = Tensor::f_from_slice(buffer)?;
    let mut offset = 0i64;
    tch::no_grad(|| -> Result<(), TrainError> {
        for tensor in tensors {
            let numel = tensor.numel() as i64;
            let values = flat
                .f_narrow(0, offset, numel)?
                .f_view(tensor.size().as_slice())?;
            let mut target = tensor.shallow_clone();
            target.f_copy_(&values)?;
            if scale != 1.0 {
                let _ = target.f_mul_scalar_(scale)?;
            }
            offset += numel;
        }
        Ok(())
    })
}

fn element_count(tensors: &[Tensor]) -> usize {
    tensors.iter().map(Tensor::numel).sum()
}

/// 64-bit FNV-1a.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ *byte as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

impl DataParallelTrainer {
    /// Builds the model from `config.seed` (step 0, fresh optimizer). Ranks of one job start from
    /// one rank's state with [`DataParallelTrainer::synchronize_from`].
    pub fn new(config: &TrainConfig) -> Result<Self, TrainError> {
        config.validate()?;
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        let var_store = nn::VarStore::new(config.device);
        let network = Network::new(
            &var_store,
            config.architecture,
            config.num_classes,
            config.feature_width,
            config.seed,
        )?;
        let variables = sorted_variables(&var_store);
        let (named_parameters, named_buffers): (Vec<_>, Vec<_>) = variables
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
            .partition(|(_, tensor)| tensor.requires_grad());
        let parameters: Vec<Tensor> = named_parameters
            .iter()
            .map(|(_, tensor)| tensor.shallow_clone())
            .collect();
        let buffers: Vec<Tensor> = named_buffers
            .into_iter()
            .map(|(_, tensor)| tensor)
            .collect();
        let parameter_count = element_count(&parameters);
        let (late, early): (Vec<_>, Vec<_>) = named_parameters
            .iter()
            .partition(|(name, _)| network.is_late_parameter(name));
        let late_tensors = late.len();
        let reduce_order: Vec<Tensor> = late
            .into_iter()
            .chain(early)
            .map(|(_, tensor)| tensor.shallow_clone())
            .collect();
        let late_values = element_count(&reduce_order[..late_tensors]);
        let optimizer = Optimizer::new(
            config.optimizer,
            named_parameters,
            config.learning_rate,
            config.weight_decay,
        )?;
        let class_weights =
            Tensor::f_from_slice(&config.class_weights)?.f_to_device(config.device)?;
        let logit_offsets = config
            .loss
            .logit_offsets()
            .map(|offsets| Tensor::f_from_slice(&offsets)?.f_to_device(config.device))
            .transpose()?;
        info!(
            architecture = %config.architecture,
            parameters = parameter_count,
            "model ready"
        );
        let saved_buffers = vec![0.0; element_count(&buffers)];
        Ok(DataParallelTrainer {
            config: config.clone(),
            var_store,
            network,
            optimizer,
            variables,
            parameters,
            reduce_order,
            late_tensors,
            late_values,
            buffers,
            parameter_count,
            class_weights,
            logit_offsets,
            gradient_buffer: vec![0.0; parameter_count + EXTRA_SLOTS],
            skipped_steps: 0,
            saved_buffers,
            progress: TrainingProgress::default(),
        })
    }

    /// The configuration the trainer was built with.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Where the trainer is in the job.
    pub fn progress(&self) -> TrainingProgress {
        self.progress
    }

    /// Records that the end of `epoch` (1-based) is done.
    pub(crate) fn mark_epoch_evaluated(&mut self, epoch: u32) {
        self.progress.evaluated_epochs = epoch;
    }

    /// Optimizer steps applied by this trainer's optimizer (differs from `global_step` after
    /// [`DataParallelTrainer::load_weights`]).
    pub fn optimizer_step_count(&self) -> u64 {
        self.optimizer.step_count()
    }

    fn variable_tensors(&self) -> Vec<Tensor> {
        self.variables
            .iter()
            .map(|(_, tensor)| tensor.shallow_clone())
            .collect()
    }

    /// Every parameter and buffer, sorted by name, flattened (to compare ranks).
    pub fn flat_weights(&self) -> Result<Vec<f32>, TrainError> {
        let tensors = self.variable_tensors();
        let mut weights = vec![0.0; element_count(&tensors)];
        flatten_into(&tensors, &mut weights)?;
        Ok(weights)
    }

    /// Hex 64-bit FNV-1a of every variable's little-endian f32 values in sorted-name order:
    /// ranks with identical weights report identical digests.
    pub fn weights_digest(&self) -> Result<String, TrainError> {
        let mut hash = 0xCBF2_9CE4_8422_2325u64;
        for (_, tensor) in &self.variables {
            hash = fnv1a(hash, &safetensors_io::f32_le_bytes(tensor)?);
        }
        Ok(format!("{hash:016x}"))
    }

    /// Makes every rank's weights, buffers, optimizer state (with its step counter) and progress
    /// exactly those of `source_rank` (one broadcast). All ranks must call it; world size 1 is a no-op.
    pub fn synchronize_from(
        &mut self,
        collective: &mut dyn Collective,
        source_rank: usize,
    ) -> Result<(), TrainError> {
        let world_size = collective.world_size();
        if source_rank >= world_size {
            return Err(TrainError::InvalidConfig(format!(
                "state source rank {source_rank} is not below world size {world_size}"
            )));
        }
        if world_size == 1 {
            return Ok(());
        }
        let variables = self.variable_tensors();
        let optimizer_state: Vec<Tensor> = self
            .optimizer
            .state_tensors()
            .iter()
            .map(Tensor::shallow_clone)
            .collect();
        let variable_len = element_count(&variables);
        let state_len = element_count(&optimizer_state);
        let mut buffer = vec![0.0f32; variable_len + state_len];
        flatten_into(&variables, &mut buffer[..variable_len])?;
        flatten_into(&optimizer_state, &mut buffer[variable_len..])?;
        push_u64(&mut buffer, self.progress.global_step);
        push_u64(&mut buffer, self.progress.evaluated_epochs as u64);
        push_u64(&mut buffer, self.progress.epoch_loss_sum.to_bits());
        push_u64(&mut buffer, self.progress.epoch_loss_steps);
        push_u64(&mut buffer, self.optimizer.step_count());
        collective.broadcast(&mut buffer, source_rank)?;
        if collective.rank() == source_rank {
            return Ok(());
        }
        unflatten_from(&buffer[..variable_len], &variables, 1.0)?;
        unflatten_from(
            &buffer[variable_len..variable_len + state_len],
            &optimizer_state,
            1.0,
        )?;
        let mut scalars = buffer[variable_len + state_len..].chunks_exact(SLOTS_PER_U64);
        let mut next_u64 = || scalars.next().map(read_u64).unwrap_or_default();
        self.progress = TrainingProgress {
            global_step: next_u64(),
            evaluated_epochs: next_u64() as u32,
            epoch_loss_sum: f64::from_bits(next_u64()),
            epoch_loss_steps: next_u64(),
        };
        self.optimizer.set_step_count(next_u64());
        info!(
            source_rank,
            global_step = self.progress.global_step,
            "training state received"
        );
        Ok(())
    }

    /// Sets the optimizer's learning rate.
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.optimizer.set_learning_rate(learning_rate);
    }

    /// One optimizer step on this rank's part of the global batch. Every rank must call it the
    /// same number of times (an empty local batch still takes part in the all-reduce).
    /// `request_reform` asks every rank to end the generation after this step. If the all-reduce
    /// fails, the weights, buffers, optimizer and progress stay at the previous step.
    pub fn train_step(
        &mut self,
        collective: &mut dyn Collective,
        images: &[u8],
        labels: &[u32],
        request_reform: bool,
    ) -> Result<StepOutcome, TrainError> {
        self.train_step_grouped(
            collective,
            images,
            labels,
            &[],
            &[labels.len()],
            request_reform,
        )
    }

    /// [`Self::train_step`] for a network that takes features: `features` holds each sample's transformed
    /// features, row-major (`labels.len() * feature_width` values).
    pub fn train_step_with_features(
        &mut self,
        collective: &mut dyn Collective,
        images: &[u8],
        labels: &[u32],
        features: &[f32],
        request_reform: bool,
    ) -> Result<StepOutcome, TrainError> {
        self.train_step_grouped(
            collective,
            images,
            labels,
            features,
            &[labels.len()],
            request_reform,
        )
    }

    /// [`Self::train_step`] on a local batch made of groups, one per virtual shard this rank owns, of
    /// `group_sizes` consecutive samples each ([`crate::LossNormalization::ShardMean`] normalises each group alone).
    /// `features` is empty for a network without features.
    pub fn train_step_grouped(
        &mut self,
        collective: &mut dyn Collective,
        images: &[u8],
        labels: &[u32],
        features: &[f32],
        group_sizes: &[usize],
        request_reform: bool,
    ) -> Result<StepOutcome, TrainError> {
        let count = labels.len();
        if group_sizes.iter().sum::<usize>() != count {
            return Err(TrainError::InvalidInput(format!(
                "group sizes {group_sizes:?} do not add up to the batch's {count} labels"
            )));
        }
        if let Some(label) = labels
            .iter()
            .find(|label| **label as usize >= self.config.num_classes)
        {
            return Err(TrainError::InvalidInput(format!(
                "label {label} is not below num_classes {}",
                self.config.num_classes
            )));
        }
        let feature_width = self.network.feature_width();
        if features.len() != count * feature_width {
            return Err(TrainError::InvalidInput(format!(
                "{} feature values for {count} samples (model {} takes {feature_width} per sample)",
                features.len(),
                self.config.architecture
            )));
        }
        let started = Instant::now();
        let mut timings = StepTimings::default();
        self.optimizer.zero_grad()?;
        let (multipliers, local_denominator) = self.loss_multipliers(labels, group_sizes);
        let world_size = collective.world_size();
        // A train-mode forward updates the running statistics: kept to undo a failed step.
        let buffers_saved = world_size > 1 && !self.buffers.is_empty();
        if buffers_saved {
            flatten_into(&self.buffers, &mut self.saved_buffers)?;
        }
        // Several ranks overlap the late segment's all-reduce with the early segment's backward.
        let overlap = world_size > 1 && self.config.overlap_communication && self.late_tensors > 0;
        let mut split = None;
        let local_loss_sum = if count == 0 {
            // Defined zero gradients so the all-reduce and the optimizer see every parameter.
            let zero = self
                .parameters
                .iter()
                .map(|parameter| {
                    parameter
                        .f_sum(Kind::Float)
                        .and_then(|sum| sum.f_mul_scalar(0.0))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_stack(&zero, 0)?.f_sum(Kind::Float)?
        } else {
            let input = images_to_tensor(images, count, self.config.device)?;
            let targets = Tensor::f_from_slice(
                &labels.iter().map(|label| *label as i64).collect::<Vec<_>>(),
            )?
            .f_to_device(self.config.device)?;
            let compute = match self.config.precision {
                Precision::Fp32 => ComputeKind::Stored,
                Precision::Bf16 => ComputeKind::BFloat16,
            };
            let feature_input =
                features_to_tensor(features, count, feature_width, self.config.device)?;
            let logits = if overlap {
                let forward =
                    self.network
                        .forward_train_split(&input, feature_input.as_ref(), compute)?;
                let logits = forward.logits.shallow_clone();
                split = Some(forward);
                logits
            } else {
                self.network
                    .forward_train(&input, feature_input.as_ref(), compute)?
            };
            let multipliers = multipliers
                .as_deref()
                .map(|multipliers| {
                    Tensor::f_from_slice(multipliers)?.f_to_device(self.config.device)
                })
                .transpose()?;
            training_loss_sum(
                &logits,
                &targets,
                &self.class_weights,
                self.logit_offsets.as_ref(),
                multipliers.as_ref(),
            )?
        };
        let local_loss_sum =
            if self.config.inject_non_finite_at_step == Some(self.progress.global_step) {
                local_loss_sum.f_mul_scalar(f64::NAN)?
            } else {
                local_loss_sum
            };
        // With a split forward this stops at the late segment's input.
        local_loss_sum.f_backward()?;
        let local_loss_value = local_loss_sum.f_double_value(&[])?;
        let rank = collective.rank();

        let (global_denominator, global_loss_sum, reform_requested, non_finite_ranks) =
            if world_size == 1 {
                timings.forward_backward = started.elapsed();
                let finite =
                    local_loss_value.is_finite() && gradients_are_finite(&self.parameters)?;
                let non_finite_ranks = if finite { Vec::new() } else { vec![rank] };
                let scale = if local_denominator > 0.0 {
                    1.0 / local_denominator
                } else {
                    1.0
                };
                tch::no_grad(|| -> Result<(), TrainError> {
                    for parameter in &self.parameters {
                        let _ = parameter.grad().f_mul_scalar_(scale)?;
                    }
                    Ok(())
                })?;
                (
                    local_denominator,
                    local_loss_value,
                    request_reform,
                    non_finite_ranks,
                )
            } else {
                let reduced = self.all_reduce_gradients(
                    collective,
                    LocalStep {
                        overlap,
                        split,
                        started,
                        loss_value: local_loss_value,
                        denominator: local_denominator,
                        request_reform,
                    },
                    &mut timings,
                );
                match reduced {
                    Ok(reduced) => reduced,
                    Err(error) => {
                        if buffers_saved {
                            unflatten_from(&self.saved_buffers, &self.buffers, 1.0)?;
                        }
                        return Err(error);
                    }
                }
            };
        if !non_finite_ranks.is_empty() && buffers_saved {
            unflatten_from(&self.saved_buffers, &self.buffers, 1.0)?;
        }
        if !non_finite_ranks.is_empty() {
            self.optimizer.zero_grad()?;
            let local_loss = non_finite_ranks.contains(&rank).then_some(local_loss_value);
            match self.config.non_finite_policy {
                NonFinitePolicy::Fail => {
                    return Err(TrainError::NonFinite {
                        global_step: self.progress.global_step,
                        ranks: non_finite_ranks,
                        local_loss,
                    });
                }
                NonFinitePolicy::SkipStep => {
                    tracing::warn!(
                        global_step = self.progress.global_step,
                        ranks = ?non_finite_ranks,
                        ?local_loss,
                        "non-finite loss or gradients: step skipped on every rank"
                    );
                    self.skipped_steps += 1;
                    // The batch is consumed (the next step trains the next batch); the weights and optimizer
                    // do not change, and the epoch's mean loss leaves the step out.
                    self.reset_epoch_loss_at_an_epochs_start();
                    self.progress.global_step += 1;
                    return Ok(StepOutcome {
                        loss: f64::NAN,
                        global_denominator,
                        reform_requested,
                        skipped_for_ranks: non_finite_ranks,
                        timings,
                    });
                }
            }
        }
        let optimizer_started = Instant::now();
        self.optimizer.step()?;
        timings.optimizer = optimizer_started.elapsed();
        let loss = if global_denominator > 0.0 {
            global_loss_sum / global_denominator
        } else {
            0.0
        };
        self.reset_epoch_loss_at_an_epochs_start();
        self.progress.epoch_loss_sum += loss;
        self.progress.epoch_loss_steps += 1;
        self.progress.global_step += 1;
        Ok(StepOutcome {
            loss,
            global_denominator,
            reform_requested,
            skipped_for_ranks: Vec::new(),
            timings,
        })
    }

    /// Sums the ranks' gradients and control values (denominator, loss sum, re-formation request, non-finite
    /// flags) and, when every rank was finite, leaves each parameter's gradient divided by the global
    /// denominator. Returns (global denominator, global loss sum, re-formation requested, non-finite ranks).
    ///
    /// Sequential: one all-reduce of the whole buffer after the backward. Overlapped: the late segment's
    /// gradients (most of the values) are all-reduced on a communication thread while this thread runs the
    /// early segment's backward; then the early gradients and the control values. Every rank runs the same
    /// operations in the same order, whatever its batch held.
    fn all_reduce_gradients(
        &mut self,
        collective: &mut dyn Collective,
        step: LocalStep,
        timings: &mut StepTimings,
    ) -> Result<(f64, f64, bool, Vec<usize>), TrainError> {
        let world_size = collective.world_size();
        let rank = collective.rank();
        let compression = self.config.gradient_compression;
        let parameter_count = self.parameter_count;
        self.gradient_buffer
            .resize(parameter_count + EXTRA_SLOTS + world_size, 0.0);
        let (late_tensors, late_values) = if step.overlap {
            (self.late_tensors, self.late_values)
        } else {
            (0, 0)
        };
        let late_gradients: Vec<Tensor> = self.reduce_order[..late_tensors]
            .iter()
            .map(Tensor::grad)
            .collect();
        flatten_into(&late_gradients, &mut self.gradient_buffer[..late_values])?;
        let late_finite = self.gradient_buffer[..late_values]
            .iter()
            .all(|value| value.is_finite());
        let mut hidden = Duration::ZERO;
        let mut communication = Duration::ZERO;
        if step.overlap {
            let (late_buffer, _) = self.gradient_buffer.split_at_mut(late_values);
            let split = step.split;
            let collective_for_thread: &mut dyn Collective = &mut *collective;
            let (late_reduced, early_backward, waited, late_took) = std::thread::scope(|scope| {
                let communication_thread = std::thread::Builder::new()
                    .name("gradient-all-reduce".to_string())
                    .spawn_scoped(scope, move || {
                        let started = Instant::now();
                        // Gradient values only, always through the compressed entry point (exact for `None`),
                        // so the step's control all-reduce stays its one plain `all_reduce_sum`: the one
                        // wrappers such as the fault injector count steps by.
                        let reduced = collective_for_thread
                            .all_reduce_sum_compressed(late_buffer, compression);
                        (reduced, started.elapsed())
                    });
                let early_backward = split.map_or(Ok(()), SplitForward::backward_early);
                let backward_done = Instant::now();
                let (late_reduced, late_took) = match communication_thread {
                    Ok(thread) => match thread.join() {
                        Ok((reduced, took)) => (reduced.map_err(TrainError::from), took),
                        Err(_) => (
                            Err(TrainError::CommunicationThread("it panicked".to_string())),
                            Duration::ZERO,
                        ),
                    },
                    Err(spawn_error) => (
                        Err(TrainError::CommunicationThread(format!(
                            "it could not start: {spawn_error}"
                        ))),
                        Duration::ZERO,
                    ),
                };
                (
                    late_reduced,
                    early_backward,
                    backward_done.elapsed(),
                    late_took,
                )
            });
            timings.forward_backward = step.started.elapsed().saturating_sub(waited);
            early_backward?;
            late_reduced?;
            communication += waited;
            hidden = late_took.saturating_sub(waited);
        } else {
            timings.forward_backward = step.started.elapsed();
        }
        let early_gradients: Vec<Tensor> = self.reduce_order[late_tensors..]
            .iter()
            .map(Tensor::grad)
            .collect();
        flatten_into(
            &early_gradients,
            &mut self.gradient_buffer[late_values..parameter_count],
        )?;
        let finite = step.loss_value.is_finite()
            && late_finite
            && self.gradient_buffer[late_values..parameter_count]
                .iter()
                .all(|value| value.is_finite());
        let extra = &mut self.gradient_buffer[parameter_count..];
        extra[DENOMINATOR_SLOT] = step.denominator as f32;
        extra[LOSS_SUM_SLOT] = if finite { step.loss_value as f32 } else { 0.0 };
        extra[REFORM_SLOT] = if step.request_reform { 1.0 } else { 0.0 };
        let flags = &mut extra[EXTRA_SLOTS..];
        flags.fill(0.0);
        flags[rank] = if finite { 0.0 } else { 1.0 };
        let all_reduce_started = Instant::now();
        let reduced = match compression {
            GradientCompression::None => {
                collective.all_reduce_sum(&mut self.gradient_buffer[late_values..])
            }
            // The control slots (denominator, loss sum, flags) must add up exactly: a small f32 all-reduce of
            // their own, then the gradients in bf16.
            GradientCompression::Bf16 => {
                let (gradient_values, control_values) =
                    self.gradient_buffer.split_at_mut(parameter_count);
                collective.all_reduce_sum(control_values).and_then(|()| {
                    collective
                        .all_reduce_sum_compressed(&mut gradient_values[late_values..], compression)
                })
            }
        };
        communication += all_reduce_started.elapsed();
        timings.all_reduce = communication;
        timings.all_reduce_hidden = hidden;
        let extra_count = self.gradient_buffer.len() - parameter_count;
        timings.all_reduce_bytes = (parameter_count * compression.wire_bytes_per_value()
            + extra_count * std::mem::size_of::<f32>()) as u64;
        reduced?;
        let extra = &self.gradient_buffer[parameter_count..];
        let global_denominator = extra[DENOMINATOR_SLOT] as f64;
        let global_loss_sum = extra[LOSS_SUM_SLOT] as f64;
        let reform_requested = extra[REFORM_SLOT] > 0.0;
        let non_finite_ranks: Vec<usize> = extra[EXTRA_SLOTS..]
            .iter()
            .enumerate()
            .filter(|(_, flag)| **flag > 0.0)
            .map(|(flagged_rank, _)| flagged_rank)
            .collect();
        if non_finite_ranks.is_empty() {
            let scale = if global_denominator > 0.0 {
                1.0 / global_denominator
            } else {
                1.0
            };
            // The gradient tensors in the buffer's layout (`reduce_order`).
            let gradients: Vec<Tensor> =
                late_gradients.into_iter().chain(early_gradients).collect();
            unflatten_from(&self.gradient_buffer[..parameter_count], &gradients, scale)?;
        }
        Ok((
            global_denominator,
            global_loss_sum,
            reform_requested,
            non_finite_ranks,
        ))
    }

    /// Per-sample multipliers of `w_i * l_i` (None: all 1) and this rank's part of the global denominator, as
    /// the configured [`crate::LossNormalization`] has them for a batch of `group_sizes` consecutive groups.
    fn loss_multipliers(&self, labels: &[u32], group_sizes: &[usize]) -> (Option<Vec<f32>>, f64) {
        let normalization = self.config.loss_normalization;
        let mut multipliers = Vec::with_capacity(labels.len());
        let mut denominator = 0.0;
        let mut start = 0;
        for &size in group_sizes {
            let group = &labels[start..start + size];
            start += size;
            let weight_sum: f64 = group
                .iter()
                .map(|label| self.config.class_weights[*label as usize] as f64)
                .sum();
            let (multiplier, group_denominator) = normalization.group_terms(size, weight_sum);
            denominator += group_denominator;
            multipliers.extend(std::iter::repeat_n(multiplier as f32, size));
        }
        let all_one = multipliers.iter().all(|multiplier| *multiplier == 1.0);
        ((!all_one).then_some(multipliers), denominator)
    }

    /// Starts the epoch's loss mean afresh when the step about to be counted is an epoch's first.
    fn reset_epoch_loss_at_an_epochs_start(&mut self) {
        let starts_epoch = self
            .progress
            .global_step
            .is_multiple_of(self.config.steps_per_epoch as u64);
        if starts_epoch {
            self.progress.epoch_loss_sum = 0.0;
            self.progress.epoch_loss_steps = 0;
        }
    }

    /// Steps this trainer skipped for non-finite loss or gradients.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Replaces every rank's batch-norm running statistics by their mean over the ranks.
    pub fn synchronize_batch_norm_statistics(
        &mut self,
        collective: &mut dyn Collective,
    ) -> Result<(), TrainError> {
        let world_size = collective.world_size();
        if world_size == 1 || self.buffers.is_empty() {
            return Ok(());
        }
        let mut statistics = vec![0.0f32; element_count(&self.buffers)];
        flatten_into(&self.buffers, &mut statistics)?;
        collective.all_reduce_sum(&mut statistics)?;
        unflatten_from(&statistics, &self.buffers, 1.0 / world_size as f64)
    }

    /// Evaluates (eval mode, no grad) on `test`: confusion matrix, summed unweighted loss, most confident mistakes.
    pub fn evaluate(&self, test: &ShardData) -> Result<ShardEvaluation, TrainError> {
        evaluate_network(
            &self.network,
            self.config.num_classes,
            self.config.device,
            test,
        )
    }

    /// Builds the error naming what in a file does not match this trainer's model.
    fn weights_mismatch(&self) -> impl Fn(String) -> TrainError + use<> {
        let architecture = self.config.architecture.to_string();
        move |reason| TrainError::WeightsMismatch {
            architecture: architecture.clone(),
            reason,
        }
    }

    /// Every model variable, then every optimizer tensor, with their training-state file names.
    fn named_state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .variables
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
            .collect();
        tensors.extend(self.optimizer.named_state());
        tensors
    }

    /// The whole training state as safetensors: every model variable (the model file's names),
    /// every optimizer tensor (`optimizer.<kind>.<parameter>`), and metadata (format, architecture,
    /// optimizer, progress, optimizer step count).
    pub fn state_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let tensors = self.named_state_tensors();
        let progress = self.progress;
        let metadata: HashMap<String, String> = [
            ("format", TRAINING_STATE_FORMAT.to_string()),
            ("architecture", self.config.architecture.name().to_string()),
            (
                "optimizer",
                optimizer_name(self.config.optimizer).to_string(),
            ),
            ("global_step", progress.global_step.to_string()),
            ("evaluated_epochs", progress.evaluated_epochs.to_string()),
            // Bits, so the running loss comes back exactly.
            (
                "epoch_loss_sum_bits",
                progress.epoch_loss_sum.to_bits().to_string(),
            ),
            ("epoch_loss_steps", progress.epoch_loss_steps.to_string()),
            ("optimizer_step", self.optimizer.step_count().to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        safetensors_io::serialize(&tensors, Some(metadata))
    }

    /// Restores a [`DataParallelTrainer::state_bytes`] file: refused (nothing changed) unless its
    /// architecture, optimizer, tensor names and shapes are this trainer's.
    pub fn load_state_bytes(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        let mismatch = self.weights_mismatch();
        let file = TensorFile::parse(bytes, &mismatch)?;
        let metadata_value = |key: &str| -> Result<&str, TrainError> {
            file.metadata
                .get(key)
                .map(String::as_str)
                .ok_or_else(|| mismatch(format!("the training state has no {key:?} metadata")))
        };
        let format = file.metadata.get("format").map(String::as_str);
        if format != Some(TRAINING_STATE_FORMAT) {
            return Err(mismatch(format!(
                "not a training state (format {format:?}, expected {TRAINING_STATE_FORMAT:?}); \
                 load_weights reads model files"
            )));
        }
        let architecture = metadata_value("architecture")?;
        if architecture.parse::<Architecture>().ok() != Some(self.config.architecture) {
            return Err(mismatch(format!(
                "the training state is of architecture {architecture:?}"
            )));
        }
        let optimizer = metadata_value("optimizer")?;
        if optimizer != optimizer_name(self.config.optimizer) {
            return Err(mismatch(format!(
                "the training state's optimizer is {optimizer:?}, expected {:?}",
                optimizer_name(self.config.optimizer)
            )));
        }
        let number = |key: &str| -> Result<u64, TrainError> {
            let text = metadata_value(key)?;
            text.parse::<u64>()
                .map_err(|_| mismatch(format!("metadata {key:?} is {text:?}, not a count")))
        };
        let progress = TrainingProgress {
            global_step: number("global_step")?,
            evaluated_epochs: u32::try_from(number("evaluated_epochs")?)
                .map_err(|_| mismatch("metadata \"evaluated_epochs\" is too large".to_string()))?,
            epoch_loss_sum: f64::from_bits(number("epoch_loss_sum_bits")?),
            epoch_loss_steps: number("epoch_loss_steps")?,
        };
        let optimizer_step = number("optimizer_step")?;
        let targets = self.named_state_tensors();
        if let Some(unknown) = file.unexpected_name(&targets, |_| false) {
            return Err(mismatch(format!("unexpected tensor {unknown:?}")));
        }
        file.copy_into(&targets, &mismatch)?;
        self.progress = progress;
        self.optimizer.set_step_count(optimizer_step);
        Ok(())
    }

    /// Loads only the model variables from a model file or a training-state file (fine-tuning:
    /// progress and optimizer stay as they are).
    pub fn load_weights(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        load_weights_into(&self.variables, self.config.architecture, bytes, |name| {
            name.starts_with(STATE_TENSOR_PREFIX)
        })
    }

    /// The trained model (ends the trainer).
    pub fn into_trained_model(self) -> TrainedModel {
        TrainedModel::new(
            self.config.architecture,
            self.config.num_classes,
            self.config.device,
            self.var_store,
            self.network,
        )
    }
}

/// The optimizer's name in training-state files.
fn optimizer_name(choice: OptimizerChoice) -> &'static str {
    match choice {
        OptimizerChoice::Adam => "adam",
        OptimizerChoice::SgdMomentum => "sgd_momentum",
    }
}

/// Most confident mistakes kept per true class by an evaluation (the report shows a grid of them).
pub const MISTAKES_PER_CLASS: usize = 6;

/// A test image the network got wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mistake {
    /// Position of the image in the evaluated shard.
    pub index: usize,
    pub true_class: u32,
    pub predicted_class: u32,
    /// Softmax probability of the predicted class.
    pub confidence: f32,
}

/// What evaluating a network on a test shard found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardEvaluation {
    /// `num_classes * num_classes` counts, row-major `[true][predicted]`.
    pub confusion: Vec<u64>,
    /// Sum of the unweighted cross-entropy over the shard.
    pub loss_sum: f64,
    /// Up to [`MISTAKES_PER_CLASS`] per true class, the most confident first; ties keep the earlier image.
    pub mistakes: Vec<Mistake>,
}

/// Evaluates `network` (eval mode, no grad) over `test`.
pub(crate) fn evaluate_network(
    network: &Network,
    num_classes: usize,
    device: tch::Device,
    test: &ShardData,
) -> Result<ShardEvaluation, TrainError> {
    let mut confusion = vec![0u64; num_classes * num_classes];
    let mut loss_sum = 0.0;
    let mut mistakes_by_class: Vec<Vec<Mistake>> = vec![Vec::new(); num_classes];
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut scratch = Vec::new();
        for (chunk_index, labels) in test.labels.chunks(EVALUATION_BATCH_SIZE).enumerate() {
            let first = chunk_index * EVALUATION_BATCH_SIZE;
            let images = test.images_in(first..first + labels.len(), &mut scratch)?;
            let input = images_to_tensor(images, labels.len(), device)?;
            let width = network.feature_width();
            let features = if width == 0 {
                None
            } else if test.feature_width != width {
                return Err(TrainError::InvalidShard {
                    shard: "test",
                    reason: format!(
                        "{} features per image, the model takes {width}",
                        test.feature_width
                    ),
                });
            } else {
                features_to_tensor(
                    &test.features[first * width..(first + labels.len()) * width],
                    labels.len(),
                    width,
                    device,
                )?
            };
            let targets = Tensor::f_from_slice(
                &labels.iter().map(|label| *label as i64).collect::<Vec<_>>(),
            )?
            .f_to_device(device)?;
            let logits = network.forward_t(&input, features.as_ref(), false)?;
            loss_sum += logits
                .f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, -100, 0.0)?
                .f_double_value(&[])?;
            let (confidences, predictions) =
                logits.f_softmax(1, tch::Kind::Float)?.f_max_dim(1, false)?;
            let predictions = Vec::<i64>::try_from(predictions.f_to_device(tch::Device::Cpu)?)?;
            let confidences = Vec::<f32>::try_from(confidences.f_to_device(tch::Device::Cpu)?)?;
            for (offset, (label, prediction)) in labels.iter().zip(predictions).enumerate() {
                confusion[*label as usize * num_classes + prediction as usize] += 1;
                if prediction as u32 != *label {
                    keep_mistake(
                        &mut mistakes_by_class[*label as usize],
                        Mistake {
                            index: first + offset,
                            true_class: *label,
                            predicted_class: prediction as u32,
                            confidence: confidences[offset],
                        },
                    );
                }
            }
        }
        Ok(())
    })?;
    Ok(ShardEvaluation {
        confusion,
        loss_sum,
        mistakes: mistakes_by_class.into_iter().flatten().collect(),
    })
}

/// Adds `mistake` to a class's most confident mistakes (sorted, at most [`MISTAKES_PER_CLASS`]).
fn keep_mistake(kept: &mut Vec<Mistake>, mistake: Mistake) {
    let position = kept.partition_point(|existing| existing.confidence >= mistake.confidence);
    if position < MISTAKES_PER_CLASS {
        kept.insert(position, mistake);
        kept.truncate(MISTAKES_PER_CLASS);
    }
}

/// Whether every parameter's gradient is finite (no NaN, no infinity).
fn gradients_are_finite(parameters: &[Tensor]) -> Result<bool, TrainError> {
    for parameter in parameters {
        let gradient = parameter.grad();
        if gradient.defined() && gradient.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `sum_i m_i * w_{y_i} * CE(logits_i + offsets, y_i)`: the class-weighted cross-entropy of the (prior-adjusted,
/// when `logit_offsets` is given) logits, each sample's term scaled by its multiplier (all 1 when `None`).
pub(crate) fn training_loss_sum(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: &Tensor,
    logit_offsets: Option<&Tensor>,
    multipliers: Option<&Tensor>,
) -> Result<Tensor, TrainError> {
    let adjusted;
    let logits = match logit_offsets {
        Some(offsets) => {
            adjusted = logits.f_add(offsets)?;
            &adjusted
        }
        None => logits,
    };
    Ok(match multipliers {
        None => {
            logits.f_cross_entropy_loss(targets, Some(class_weights), Reduction::Sum, -100, 0.0)?
        }
        Some(multipliers) => logits
            .f_cross_entropy_loss(targets, Some(class_weights), Reduction::None, -100, 0.0)?
            .f_mul(multipliers)?
            .f_sum(Kind::Float)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes with priors 0.8 / 0.2 and tau 1: equal logits become ln 0.8 and ln 0.2, so a sample of
    /// class 0 costs -ln 0.8 and one of class 1 costs -ln 0.2; class weights 1 and 4, multipliers 1 and 0.5.
    #[test]
    fn the_logit_adjusted_loss_of_a_hand_computed_batch() {
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[0i64, 1]);
        let class_weights = Tensor::from_slice(&[1.0f32, 4.0]);
        let offsets_values = crate::config::LossFunction::logit_adjusted(1.0, &[8, 2])
            .logit_offsets()
            .unwrap();
        let offsets = Tensor::from_slice(&offsets_values);
        let value = |offsets: Option<&Tensor>, multipliers: Option<&Tensor>| {
            training_loss_sum(&logits, &targets, &class_weights, offsets, multipliers)
                .unwrap()
                .double_value(&[])
        };
        let plain = value(None, None);
        assert!((plain - 5.0 * 2f64.ln()).abs() < 1e-5, "{plain}");
        let adjusted = value(Some(&offsets), None);
        let expected = -(0.8f64.ln()) + 4.0 * -(0.2f64.ln());
        assert!(
            (adjusted - expected).abs() < 1e-5,
            "{adjusted} vs {expected}"
        );
        let multipliers = Tensor::from_slice(&[1.0f32, 0.5]);
        let scaled = value(Some(&offsets), Some(&multipliers));
        let expected = -(0.8f64.ln()) + 0.5 * 4.0 * -(0.2f64.ln());
        assert!((scaled - expected).abs() < 1e-5, "{scaled} vs {expected}");
        // tau 2 doubles the offsets: priors act as 0.8^2 : 0.2^2 = 16 : 1.
        let doubled = crate::config::LossFunction::logit_adjusted(2.0, &[8, 2])
            .logit_offsets()
            .unwrap();
        let adjusted = value(Some(&Tensor::from_slice(&doubled)), None);
        let expected = (1.0f64 + 1.0 / 16.0).ln() + 4.0 * (1.0f64 + 16.0).ln();
        assert!(
            (adjusted - expected).abs() < 1e-4,
            "{adjusted} vs {expected}"
        );
    }

    #[test]
    fn keeps_the_most_confident_mistakes_of_a_class() {
        let mut kept = Vec::new();
        for (index, confidence) in [0.5f32, 0.9, 0.1, 0.9, 0.7, 0.3, 0.95, 0.2, 0.6]
            .into_iter()
            .enumerate()
        {
            let mistake = Mistake {
                index,
                true_class: 0,
                predicted_class: 1,
                confidence,
            };
            keep_mistake(&mut kept, mistake);
        }
        let indices: Vec<usize> = kept.iter().map(|mistake| mistake.index).collect();
        assert_eq!(indices, vec![6, 1, 3, 4, 8, 0]);
    }

    #[test]
    fn u64_slots_round_trip_through_f32() {
        for value in [
            0,
            1,
            65_535,
            65_536,
            u64::MAX,
            0.1f64.to_bits(),
            f64::NAN.to_bits(),
        ] {
            let mut buffer = Vec::new();
            push_u64(&mut buffer, value);
            assert_eq!(buffer.len(), SLOTS_PER_U64);
            assert!(
                buffer
                    .iter()
                    .all(|slot| slot.fract() == 0.0 && *slot < 65_536.0)
            );
            assert_eq!(read_u64(&buffer), value);
        }
    }
}
