//! The training loop of one ring generation: from the trainer's progress, step through the global
//! batches of the rank's virtual shards, end epochs (batch-norm sync, per-shard evaluation),
//! hand rank 0's checkpoints to the observer, and stop when any rank asks for a re-formation.
use std::ops::ControlFlow;
use std::time::Instant;

use tracing::{debug, info};

use crate::batch::{AssembledBatch, EpochBatches, ShardData};
use crate::config::TrainConfig;
use crate::data_parallel::{DataParallelTrainer, Mistake, StepTimings, TrainingProgress};
use crate::error::TrainError;
use crate::inference::TrainedModel;
use plankton_collective::Collective;

/// Progress after one optimizer step (epochs and steps numbered from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    pub epoch: u32,
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Optimizer steps applied since the job began (this one included).
    pub global_step: u64,
    /// Class-weighted mean cross-entropy of the step's GLOBAL batch (all ranks).
    pub loss: f64,
    /// Images this rank trained on per second since the epoch (or the generation) began.
    pub images_per_second: f64,
    /// The learning rate the step was taken with.
    pub learning_rate: f64,
    /// Steps this rank skipped for non-finite loss or gradients (policy skip-step).
    pub skipped_steps: u64,
    /// Where the step's time went on this rank.
    pub timings: StepTimings,
}

/// One virtual shard's evaluation at the end of an epoch (epochs numbered from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochEvaluation {
    pub epoch: u32,
    /// The virtual shard whose test split was evaluated.
    pub virtual_shard: u32,
    /// Mean of the epoch's step losses (global, class-weighted).
    pub train_loss: f64,
    /// `num_classes * num_classes` counts, row-major `[true][predicted]`, over the shard's test split.
    pub confusion: Vec<u64>,
    /// Sum of the unweighted cross-entropy over the shard's test split.
    pub test_loss_sum: f64,
    /// Images in the shard's test split.
    pub test_count: u64,
    /// The shard's most confident mistakes, a few per true class (indices into its test split).
    pub mistakes: Vec<Mistake>,
}

/// Receives progress; returning `ControlFlow::Break` cancels the training.
pub trait TrainingObserver {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()>;
    /// Called once per owned virtual shard at each epoch end (and again by a rank that resumes at
    /// an epoch boundary: receivers treat reports per (epoch, shard) idempotently).
    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()>;
    /// Asked before every step: `true` makes every rank end the generation after that step.
    fn reform_requested(&mut self) -> bool {
        false
    }
    /// On rank 0, the whole training state after each epoch end and every
    /// `checkpoint_every_steps` steps.
    fn on_checkpoint(&mut self, _state: &[u8], _progress: TrainingProgress) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
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
            virtual_shard = evaluation.virtual_shard,
            train_loss = evaluation.train_loss,
            "epoch evaluated"
        );
        ControlFlow::Continue(())
    }
}

/// The train and test splits of one virtual shard.
#[derive(Debug, Clone, Default)]
pub struct VirtualShardData {
    pub index: u32,
    pub train: ShardData,
    pub test: ShardData,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationOutcome {
    /// Every step of every epoch is done.
    Finished,
    /// A rank asked for a re-formation; the state is at a step boundary on every rank.
    Reformed,
}

/// A virtual shard this rank trains, borrowed.
struct OwnedShard<'data> {
    index: u32,
    train: &'data ShardData,
    test: &'data ShardData,
}

/// Runs one ring generation from `trainer.progress()` until the job is finished or a rank asks for
/// a re-formation. Every rank of the generation calls it with the same config, a trainer in the
/// same state (see [`DataParallelTrainer::synchronize_from`]) and its own virtual shards (any order).
pub fn run_generation(
    trainer: &mut DataParallelTrainer,
    config: &TrainConfig,
    shards: &[VirtualShardData],
    collective: &mut dyn Collective,
    observer: &mut dyn TrainingObserver,
) -> Result<GenerationOutcome, TrainError> {
    let owned: Vec<OwnedShard<'_>> = shards
        .iter()
        .map(|shard| OwnedShard {
            index: shard.index,
            train: &shard.train,
            test: &shard.test,
        })
        .collect();
    run_owned_generation(trainer, config, owned, collective, observer)
}

fn validate_generation(
    trainer: &DataParallelTrainer,
    config: &TrainConfig,
    owned: &mut [OwnedShard<'_>],
) -> Result<(), TrainError> {
    config.validate()?;
    let built = trainer.config();
    if built.architecture != config.architecture
        || built.num_classes != config.num_classes
        || built.steps_per_epoch != config.steps_per_epoch
        || built.optimizer != config.optimizer
    {
        return Err(TrainError::InvalidConfig(format!(
            "the trainer was built for {} / {} classes / {} steps per epoch / {:?}, the generation \
             runs {} / {} / {} / {:?}",
            built.architecture,
            built.num_classes,
            built.steps_per_epoch,
            built.optimizer,
            config.architecture,
            config.num_classes,
            config.steps_per_epoch,
            config.optimizer
        )));
    }
    owned.sort_by_key(|shard| shard.index);
    if let Some(pair) = owned.windows(2).find(|pair| pair[0].index == pair[1].index) {
        return Err(TrainError::InvalidConfig(format!(
            "virtual shard {} is given twice",
            pair[0].index
        )));
    }
    for shard in owned.iter() {
        // Names the virtual shard: a rank may be given several.
        let naming_shard = |error| match error {
            TrainError::InvalidShard {
                shard: split,
                reason,
            } => TrainError::InvalidShard {
                shard: split,
                reason: format!("virtual shard {}: {reason}", shard.index),
            },
            other => other,
        };
        for (split, data) in [("train", shard.train), ("test", shard.test)] {
            if data.feature_width != config.feature_width {
                return Err(TrainError::InvalidShard {
                    shard: split,
                    reason: format!(
                        "virtual shard {}: {} features per image, model {} takes {}",
                        shard.index, data.feature_width, config.architecture, config.feature_width
                    ),
                });
            }
        }
        shard
            .train
            .validate("train", config.num_classes)
            .map_err(naming_shard)?;
        shard
            .test
            .validate("test", config.num_classes)
            .map_err(naming_shard)?;
    }
    let total_steps = config.epochs as u64 * config.steps_per_epoch as u64;
    let global_step = trainer.progress().global_step;
    if global_step > total_steps {
        return Err(TrainError::InvalidConfig(format!(
            "the trainer is at step {global_step}, past the job's {total_steps} steps"
        )));
    }
    Ok(())
}

fn run_owned_generation(
    trainer: &mut DataParallelTrainer,
    config: &TrainConfig,
    mut owned: Vec<OwnedShard<'_>>,
    collective: &mut dyn Collective,
    observer: &mut dyn TrainingObserver,
) -> Result<GenerationOutcome, TrainError> {
    validate_generation(trainer, config, &mut owned)?;
    let steps_per_epoch = config.steps_per_epoch as u64;
    let total_steps = config.epochs as u64 * steps_per_epoch;
    let start = trainer.progress();
    info!(
        rank = collective.rank(),
        world_size = collective.world_size(),
        global_step = start.global_step,
        shards = ?owned.iter().map(|shard| shard.index).collect::<Vec<_>>(),
        "generation starts"
    );
    if start.global_step > 0 && start.global_step.is_multiple_of(steps_per_epoch) {
        let finished_epoch = (start.global_step / steps_per_epoch) as u32;
        if start.evaluated_epochs < finished_epoch {
            end_epoch(trainer, finished_epoch, &owned, collective, observer)?;
        } else if start.evaluated_epochs == finished_epoch {
            report_epoch(trainer, finished_epoch, &owned, observer)?;
        }
    }

    let mut batch = AssembledBatch::default();
    // Samples of each owned virtual shard in `batch`, in order (the loss may normalise each alone).
    let mut group_sizes: Vec<usize> = Vec::with_capacity(owned.len());
    let mut step_images: Vec<usize> = Vec::with_capacity(config.batch_size);
    // The batch order of `batches_epoch`, per owned shard (rebuilt when the epoch changes).
    let mut batches_epoch: Option<u32> = None;
    let mut batches: Vec<EpochBatches> = Vec::new();
    let mut epoch_clock = (Instant::now(), 0usize);
    loop {
        let global_step = trainer.progress().global_step;
        if global_step >= total_steps {
            info!(global_step, "training finished");
            return Ok(GenerationOutcome::Finished);
        }
        let epoch_index = (global_step / steps_per_epoch) as u32;
        let step_index = (global_step % steps_per_epoch) as usize;
        if batches_epoch != Some(epoch_index) {
            trainer.set_learning_rate(config.lr_schedule.learning_rate(
                config.learning_rate,
                epoch_index,
                config.epochs,
            ));
            epoch_clock = (Instant::now(), 0);
            batches = owned
                .iter()
                .map(|shard| {
                    EpochBatches::new(
                        shard.train.len(),
                        config.batch_size,
                        config.seed,
                        shard.index as usize,
                        epoch_index,
                        config.augmentation,
                        &config.class_weights,
                    )
                })
                .collect();
            batches_epoch = Some(epoch_index);
        }
        let data_started = Instant::now();
        batch.clear();
        group_sizes.clear();
        for (shard, shard_batches) in owned.iter().zip(&batches) {
            // Streamed records may still be arriving: wait (bounded) for this step's images.
            step_images.clear();
            step_images.extend(shard_batches.step_indices(step_index));
            shard.train.wait_for(&step_images)?;
            let before = batch.labels.len();
            shard_batches.append(shard.train, step_index, &mut batch)?;
            group_sizes.push(batch.labels.len() - before);
        }
        let data_time = data_started.elapsed();
        let request_reform = observer.reform_requested();
        let outcome = trainer.train_step_grouped(
            collective,
            &batch.images,
            &batch.labels,
            &batch.features,
            &group_sizes,
            request_reform,
        )?;
        epoch_clock.1 += batch.labels.len();
        let progress = StepProgress {
            epoch: epoch_index + 1,
            step: step_index + 1,
            steps_per_epoch: config.steps_per_epoch,
            global_step: trainer.progress().global_step,
            loss: outcome.loss,
            images_per_second: epoch_clock.1 as f64
                / epoch_clock.0.elapsed().as_secs_f64().max(1e-9),
            learning_rate: config.lr_schedule.learning_rate(
                config.learning_rate,
                epoch_index,
                config.epochs,
            ),
            skipped_steps: trainer.skipped_steps(),
            timings: StepTimings {
                data: data_time,
                ..outcome.timings
            },
        };
        if observer.on_step(&progress).is_break() {
            info!(global_step = progress.global_step, "training cancelled");
            return Err(TrainError::Cancelled);
        }
        let applied_step = progress.global_step;
        if step_index + 1 == config.steps_per_epoch {
            end_epoch(trainer, epoch_index + 1, &owned, collective, observer)?;
        } else if config.checkpoint_every_steps > 0
            && applied_step.is_multiple_of(config.checkpoint_every_steps)
        {
            checkpoint(trainer, collective, observer)?;
        }
        if outcome.reform_requested {
            info!(global_step = applied_step, "re-formation requested");
            return Ok(GenerationOutcome::Reformed);
        }
    }
}

/// The end of `epoch`: batch-norm statistics averaged over the ring, every owned shard evaluated
/// and reported, then rank 0's checkpoint.
fn end_epoch(
    trainer: &mut DataParallelTrainer,
    epoch: u32,
    owned: &[OwnedShard<'_>],
    collective: &mut dyn Collective,
    observer: &mut dyn TrainingObserver,
) -> Result<(), TrainError> {
    trainer.synchronize_batch_norm_statistics(collective)?;
    trainer.mark_epoch_evaluated(epoch);
    report_epoch(trainer, epoch, owned, observer)?;
    checkpoint(trainer, collective, observer)
}

/// Evaluates every owned shard and hands each evaluation to the observer.
fn report_epoch(
    trainer: &DataParallelTrainer,
    epoch: u32,
    owned: &[OwnedShard<'_>],
    observer: &mut dyn TrainingObserver,
) -> Result<(), TrainError> {
    let train_loss = trainer.progress().epoch_mean_loss();
    for shard in owned {
        let shard_evaluation = trainer.evaluate(shard.test)?;
        let evaluation = EpochEvaluation {
            epoch,
            virtual_shard: shard.index,
            train_loss,
            confusion: shard_evaluation.confusion,
            test_loss_sum: shard_evaluation.loss_sum,
            test_count: shard.test.len() as u64,
            mistakes: shard_evaluation.mistakes,
        };
        info!(epoch, virtual_shard = shard.index, train_loss, "epoch done");
        if observer.on_epoch(&evaluation).is_break() {
            info!(epoch, "training cancelled");
            return Err(TrainError::Cancelled);
        }
    }
    Ok(())
}

/// On rank 0, hands the training state to the observer.
fn checkpoint(
    trainer: &DataParallelTrainer,
    collective: &dyn Collective,
    observer: &mut dyn TrainingObserver,
) -> Result<(), TrainError> {
    if collective.rank() != 0 {
        return Ok(());
    }
    let progress = trainer.progress();
    let state = trainer.state_bytes()?;
    debug!(
        global_step = progress.global_step,
        bytes = state.len(),
        "checkpoint"
    );
    if observer.on_checkpoint(&state, progress).is_break() {
        info!(global_step = progress.global_step, "training cancelled");
        return Err(TrainError::Cancelled);
    }
    Ok(())
}

/// Trains a whole job on a fixed ring: a fresh trainer takes rank 0's state, then this rank trains
/// its `train` shard as virtual shard `rank`, evaluating on `test` after each epoch. Every rank of
/// the job calls it with the same config. A re-formation request only ends a generation: on a
/// fixed ring the next one continues at once.
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
    let mut trainer = DataParallelTrainer::new(config)?;
    trainer.synchronize_from(collective, 0)?;
    let virtual_shard = u32::try_from(collective.rank()).map_err(|_| {
        TrainError::InvalidConfig(format!("rank {} is too large", collective.rank()))
    })?;
    loop {
        let owned = vec![OwnedShard {
            index: virtual_shard,
            train,
            test,
        }];
        match run_owned_generation(&mut trainer, config, owned, collective, observer)? {
            GenerationOutcome::Finished => return Ok(trainer.into_trained_model()),
            GenerationOutcome::Reformed => continue,
        }
    }
}
