//! The data-parallel training loop: batch, weighted loss, one flat all-reduced gradient, optimizer step.
use std::ops::ControlFlow;
use std::time::Instant;

use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};
use tracing::{debug, info};

use crate::batch::{AssembledBatch, EpochBatches, ShardData};
use crate::config::{IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE, OptimizerChoice, TrainConfig};
use crate::error::TrainError;
use crate::inference::TrainedModel;
use crate::model::{Network, channels_last, sorted_variables};
use plankton_collective::Collective;

/// Images per forward pass during evaluation and inference.
pub const EVALUATION_BATCH_SIZE: usize = 256;

/// Progress after one optimizer step (epochs and steps numbered from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    pub epoch: u32,
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Class-weighted mean cross-entropy of the step's GLOBAL batch (all ranks).
    pub loss: f64,
    /// Images this rank trained on per second since the epoch began.
    pub images_per_second: f64,
}

/// This rank's evaluation at the end of an epoch (epochs numbered from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochEvaluation {
    pub epoch: u32,
    /// Mean of the epoch's step losses (global, class-weighted).
    pub train_loss: f64,
    /// `num_classes * num_classes` counts, row-major `[true][predicted]`, over this rank's test shard.
    pub confusion: Vec<u64>,
    /// Sum of the unweighted cross-entropy over this rank's test shard.
    pub test_loss_sum: f64,
    /// Images in this rank's test shard.
    pub test_count: u64,
}

/// Receives progress; returning `ControlFlow::Break` cancels the training.
pub trait TrainingObserver {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()>;
    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()>;
}

/// An observer that only logs.
#[derive(Debug, Default)]
pub struct LoggingObserver;

impl TrainingObserver for LoggingObserver {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()> {
        debug!(
            epoch = progress.epoch,
            step = progress.step,
            loss = progress.loss,
            "training step"
        );
        ControlFlow::Continue(())
    }
    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        info!(
            epoch = evaluation.epoch,
            train_loss = evaluation.train_loss,
            "epoch evaluated"
        );
        ControlFlow::Continue(())
    }
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Class-weighted mean cross-entropy over the global batch.
    pub loss: f64,
    /// Sum of the class weights of the global batch (the loss denominator).
    pub global_weight_sum: f64,
}

/// One rank's model, optimizer and collective: identical weights on every rank after `new`, and
/// every `train_step` applies the gradient of the global batch.
pub struct DataParallelTrainer<'collective> {
    config: TrainConfig,
    var_store: nn::VarStore,
    network: Network,
    optimizer: nn::Optimizer,
    collective: &'collective mut dyn Collective,
    /// Trainable parameters sorted by name: the layout of the flat gradient buffer.
    parameters: Vec<Tensor>,
    /// Non-trainable buffers (batch-norm running statistics) sorted by name.
    buffers: Vec<Tensor>,
    parameter_count: usize,
    class_weights: Tensor,
    /// Flat gradients + [local weight sum, local loss sum], reused every step.
    gradient_buffer: Vec<f32>,
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

fn flatten_into(tensors: &[Tensor], buffer: &mut [f32]) -> Result<(), TrainError> {
    let mut offset = 0;
    for tensor in tensors {
        let numel = tensor.numel();
        tensor
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

impl<'collective> DataParallelTrainer<'collective> {
    /// Builds the model from `config.seed` and broadcasts every parameter and buffer from rank 0.
    pub fn new(
        config: &TrainConfig,
        collective: &'collective mut dyn Collective,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        let var_store = nn::VarStore::new(config.device);
        let network = Network::new(
            &var_store,
            config.architecture,
            config.num_classes,
            config.seed,
        )?;
        let (parameters, buffers): (Vec<_>, Vec<_>) = sorted_variables(&var_store)
            .into_iter()
            .map(|(_, tensor)| tensor)
            .partition(Tensor::requires_grad);
        let parameter_count = parameters.iter().map(Tensor::numel).sum();
        let optimizer = match config.optimizer {
            OptimizerChoice::Adam => nn::Adam {
                wd: config.weight_decay,
                ..Default::default()
            }
            .build(&var_store, config.learning_rate)?,
            OptimizerChoice::SgdMomentum => nn::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                wd: config.weight_decay,
                nesterov: false,
            }
            .build(&var_store, config.learning_rate)?,
        };
        let class_weights =
            Tensor::f_from_slice(&config.class_weights)?.f_to_device(config.device)?;
        let mut trainer = DataParallelTrainer {
            config: config.clone(),
            var_store,
            network,
            optimizer,
            collective,
            parameters,
            buffers,
            parameter_count,
            class_weights,
            gradient_buffer: vec![0.0; parameter_count + 2],
        };
        trainer.broadcast_model_from_rank_zero()?;
        info!(
            rank = trainer.collective.rank(),
            world_size = trainer.collective.world_size(),
            architecture = %config.architecture,
            parameters = parameter_count,
            "model ready"
        );
        Ok(trainer)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Every parameter and buffer, sorted by name, flattened (to compare ranks).
    pub fn flat_weights(&self) -> Result<Vec<f32>, TrainError> {
        let tensors: Vec<Tensor> = sorted_variables(&self.var_store)
            .into_iter()
            .map(|(_, tensor)| tensor)
            .collect();
        let mut weights = vec![0.0; tensors.iter().map(Tensor::numel).sum()];
        flatten_into(&tensors, &mut weights)?;
        Ok(weights)
    }

    fn broadcast_model_from_rank_zero(&mut self) -> Result<(), TrainError> {
        if self.collective.world_size() == 1 {
            return Ok(());
        }
        let tensors: Vec<Tensor> = sorted_variables(&self.var_store)
            .into_iter()
            .map(|(_, tensor)| tensor)
            .collect();
        let mut weights = self.flat_weights()?;
        self.collective.broadcast(&mut weights, 0)?;
        unflatten_from(&weights, &tensors, 1.0)
    }

    /// Sets the optimizer's learning rate.
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.optimizer.set_lr(learning_rate);
    }

    /// One optimizer step on this rank's part of the global batch. Every rank must call it the
    /// same number of times (an empty local batch still takes part in the all-reduce).
    pub fn train_step(&mut self, images: &[u8], labels: &[u32]) -> Result<StepOutcome, TrainError> {
        let count = labels.len();
        if let Some(label) = labels
            .iter()
            .find(|label| **label as usize >= self.config.num_classes)
        {
            return Err(TrainError::InvalidInput(format!(
                "label {label} is not below num_classes {}",
                self.config.num_classes
            )));
        }
        self.optimizer.zero_grad();
        let local_weight_sum: f64 = labels
            .iter()
            .map(|label| self.config.class_weights[*label as usize] as f64)
            .sum();
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
            let logits = self.network.forward_t(&input, true);
            logits.f_cross_entropy_loss(
                &targets,
                Some(&self.class_weights),
                Reduction::Sum,
                -100,
                0.0,
            )?
        };
        local_loss_sum.f_backward()?;
        let local_loss_value = local_loss_sum.f_double_value(&[])?;

        let (global_weight_sum, global_loss_sum) = if self.collective.world_size() == 1 {
            let scale = if local_weight_sum > 0.0 {
                1.0 / local_weight_sum
            } else {
                1.0
            };
            tch::no_grad(|| -> Result<(), TrainError> {
                for parameter in &self.parameters {
                    let _ = parameter.grad().f_mul_scalar_(scale)?;
                }
                Ok(())
            })?;
            (local_weight_sum, local_loss_value)
        } else {
            let parameter_count = self.parameter_count;
            let gradients: Vec<Tensor> = self.parameters.iter().map(Tensor::grad).collect();
            flatten_into(&gradients, &mut self.gradient_buffer[..parameter_count])?;
            self.gradient_buffer[parameter_count] = local_weight_sum as f32;
            self.gradient_buffer[parameter_count + 1] = local_loss_value as f32;
            self.collective.all_reduce_sum(&mut self.gradient_buffer)?;
            let global_weight_sum = self.gradient_buffer[parameter_count] as f64;
            let global_loss_sum = self.gradient_buffer[parameter_count + 1] as f64;
            let scale = if global_weight_sum > 0.0 {
                1.0 / global_weight_sum
            } else {
                1.0
            };
            unflatten_from(&self.gradient_buffer[..parameter_count], &gradients, scale)?;
            (global_weight_sum, global_loss_sum)
        };
        self.optimizer.step();
        let loss = if global_weight_sum > 0.0 {
            global_loss_sum / global_weight_sum
        } else {
            0.0
        };
        Ok(StepOutcome {
            loss,
            global_weight_sum,
        })
    }

    /// Replaces every rank's batch-norm running statistics by their mean over the ranks.
    pub fn synchronize_batch_norm_statistics(&mut self) -> Result<(), TrainError> {
        let world_size = self.collective.world_size();
        if world_size == 1 || self.buffers.is_empty() {
            return Ok(());
        }
        let mut statistics = vec![0.0f32; self.buffers.iter().map(Tensor::numel).sum()];
        flatten_into(&self.buffers, &mut statistics)?;
        self.collective.all_reduce_sum(&mut statistics)?;
        unflatten_from(&statistics, &self.buffers, 1.0 / world_size as f64)
    }

    /// Evaluates (eval mode, no grad) on `test`: confusion matrix and summed unweighted loss.
    pub fn evaluate(&self, test: &ShardData) -> Result<(Vec<u64>, f64), TrainError> {
        evaluate_network(
            &self.network,
            self.config.num_classes,
            self.config.device,
            test,
        )
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

/// Confusion matrix (`[true][predicted]`) and summed unweighted cross-entropy of `network` over `test`.
pub(crate) fn evaluate_network(
    network: &Network,
    num_classes: usize,
    device: tch::Device,
    test: &ShardData,
) -> Result<(Vec<u64>, f64), TrainError> {
    let mut confusion = vec![0u64; num_classes * num_classes];
    let mut loss_sum = 0.0;
    tch::no_grad(|| -> Result<(), TrainError> {
        for (chunk_index, labels) in test.labels.chunks(EVALUATION_BATCH_SIZE).enumerate() {
            let first = chunk_index * EVALUATION_BATCH_SIZE;
            let images = &test.images[first * IMAGE_LEN..(first + labels.len()) * IMAGE_LEN];
            let input = images_to_tensor(images, labels.len(), device)?;
            let targets = Tensor::f_from_slice(
                &labels.iter().map(|label| *label as i64).collect::<Vec<_>>(),
            )?
            .f_to_device(device)?;
            let logits = network.forward_t(&input, false);
            loss_sum += logits
                .f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, -100, 0.0)?
                .f_double_value(&[])?;
            let predictions =
                Vec::<i64>::try_from(logits.f_argmax(1, false)?.f_to_device(tch::Device::Cpu)?)?;
            for (label, prediction) in labels.iter().zip(predictions) {
                confusion[*label as usize * num_classes + prediction as usize] += 1;
            }
        }
        Ok(())
    })?;
    Ok((confusion, loss_sum))
}

/// Trains `config.epochs` epochs of `config.steps_per_epoch` steps on this rank's `train` shard,
/// evaluating on its `test` shard after each epoch. Every rank of the job calls it with the same
/// config (but its own shards and collective rank).
pub fn run_training(
    config: &TrainConfig,
    train: &ShardData,
    test: &ShardData,
    collective: &mut dyn Collective,
    observer: &mut dyn TrainingObserver,
) -> Result<TrainedModel, TrainError> {
    config.validate()?;
    train.validate("train", config.num_classes)?;
    test.validate("test", config.num_classes)?;
    let rank = collective.rank();
    let mut trainer = DataParallelTrainer::new(config, collective)?;
    let mut batch = AssembledBatch::default();
    for epoch_index in 0..config.epochs {
        let epoch = epoch_index + 1;
        trainer.set_learning_rate(config.lr_schedule.learning_rate(
            config.learning_rate,
            epoch_index,
            config.epochs,
        ));
        let mut batches = EpochBatches::new(
            train.len(),
            config.batch_size,
            config.seed,
            rank,
            epoch_index,
            config.augmentation,
            &config.class_weights,
        );
        let epoch_start = Instant::now();
        let mut loss_total = 0.0;
        let mut images_trained = 0usize;
        for step_index in 0..config.steps_per_epoch {
            batches.assemble(train, step_index, &mut batch);
            let outcome = trainer.train_step(&batch.images, &batch.labels)?;
            loss_total += outcome.loss;
            images_trained += batch.labels.len();
            let elapsed_seconds = epoch_start.elapsed().as_secs_f64().max(1e-9);
            let progress = StepProgress {
                epoch,
                step: step_index + 1,
                steps_per_epoch: config.steps_per_epoch,
                loss: outcome.loss,
                images_per_second: images_trained as f64 / elapsed_seconds,
            };
            if observer.on_step(&progress).is_break() {
                info!(epoch, step = step_index + 1, "training cancelled");
                return Err(TrainError::Cancelled);
            }
        }
        trainer.synchronize_batch_norm_statistics()?;
        let (confusion, test_loss_sum) = trainer.evaluate(test)?;
        let evaluation = EpochEvaluation {
            epoch,
            train_loss: loss_total / config.steps_per_epoch as f64,
            confusion,
            test_loss_sum,
            test_count: test.len() as u64,
        };
        info!(
            rank,
            epoch,
            train_loss = evaluation.train_loss,
            "epoch done"
        );
        if observer.on_epoch(&evaluation).is_break() {
            info!(epoch, "training cancelled");
            return Err(TrainError::Cancelled);
        }
    }
    Ok(trainer.into_trained_model())
}
