//! Fault tolerance: the trajectory does not depend on how virtual shards are spread over ranks, a
//! job that loses a rank and later gains a fresh one ends where an undisturbed job ends, and a
//! training state restored from bytes continues exactly.
mod common;

use std::ops::ControlFlow;

use common::{max_abs_difference, random_shard, ring_members};
use plankton_collective::SingleProcess;
use plankton_trainer::{
    Architecture, AugmentationMode, DataParallelTrainer, EpochEvaluation, GenerationOutcome,
    LrSchedule, OptimizerChoice, StepProgress, TrainConfig, TrainError, TrainingObserver,
    TrainingProgress, VirtualShardData, run_generation,
};

const NUM_CLASSES: usize = 3;
const VIRTUAL_SHARDS: u32 = 3;

/// LeNet, Adam, 3 epochs of 3 steps, every image augmented, cosine rate (changes per epoch).
fn job_config() -> TrainConfig {
    let mut config = TrainConfig::new(NUM_CLASSES, vec![0.5, 1.0, 2.5]);
    config.architecture = Architecture::LeNet;
    config.optimizer = OptimizerChoice::Adam;
    config.learning_rate = 1e-3;
    config.weight_decay = 1e-4;
    config.lr_schedule = LrSchedule::Cosine;
    config.augmentation = AugmentationMode::All;
    config.epochs = 3;
    config.steps_per_epoch = 3;
    config.batch_size = 2;
    config.seed = 5;
    config.threads = 1;
    config
}

/// Virtual shard `index`: 5 train images (batches wrap around) and 2 test images.
fn virtual_shard(index: u32) -> VirtualShardData {
    VirtualShardData {
        index,
        train: random_shard(5, NUM_CLASSES, 100 + index as u64),
        test: random_shard(2, NUM_CLASSES, 200 + index as u64),
    }
}

fn shards(indices: &[u32]) -> Vec<VirtualShardData> {
    indices.iter().map(|index| virtual_shard(*index)).collect()
}

/// Records everything; asks for a re-formation in step `reform_at_step` (a global step number).
#[derive(Default)]
struct Recorder {
    last_step: u64,
    reform_at_step: Option<u64>,
    steps: Vec<StepProgress>,
    epochs: Vec<EpochEvaluation>,
    checkpoints: Vec<(TrainingProgress, Vec<u8>)>,
    digest_after_sync: Option<String>,
}

impl Recorder {
    fn starting_at(last_step: u64) -> Self {
        Recorder {
            last_step,
            ..Default::default()
        }
    }

    fn reforming_at(last_step: u64, reform_at_step: u64) -> Self {
        Recorder {
            last_step,
            reform_at_step: Some(reform_at_step),
            ..Default::default()
        }
    }

    fn epoch_reports(&self) -> Vec<(u32, u32)> {
        self.epochs
            .iter()
            .map(|evaluation| (evaluation.epoch, evaluation.virtual_shard))
            .collect()
    }
}

impl TrainingObserver for Recorder {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()> {
        self.last_step = progress.global_step;
        self.steps.push(progress.clone());
        ControlFlow::Continue(())
    }
    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        self.epochs.push(evaluation.clone());
        ControlFlow::Continue(())
    }
    fn reform_requested(&mut self) -> bool {
        self.reform_at_step == Some(self.last_step + 1)
    }
    fn on_checkpoint(&mut self, state: &[u8], progress: TrainingProgress) -> ControlFlow<()> {
        self.checkpoints.push((progress, state.to_vec()));
        ControlFlow::Continue(())
    }
}

/// (epoch, step, global step, loss) of each step: everything but the timing.
fn step_records(steps: &[StepProgress]) -> Vec<(u32, usize, u64, f64)> {
    steps
        .iter()
        .map(|step| (step.epoch, step.step, step.global_step, step.loss))
        .collect()
}

/// What one rank brings to a generation.
struct Rank {
    trainer: DataParallelTrainer,
    shards: Vec<VirtualShardData>,
    observer: Recorder,
}

impl Rank {
    fn fresh(config: &TrainConfig, shard_indices: &[u32], observer: Recorder) -> Self {
        Rank {
            trainer: DataParallelTrainer::new(config).unwrap(),
            shards: shards(shard_indices),
            observer,
        }
    }
}

/// One generation on an in-process TCP ring: rank r is `ranks[r]`; every rank takes the state of
/// `source_rank`, then runs the generation. Returns the ranks and their outcomes in rank order.
fn run_ring_generation(
    generation: u32,
    config: &TrainConfig,
    ranks: Vec<Rank>,
    source_rank: usize,
) -> Vec<(Rank, GenerationOutcome)> {
    let handles: Vec<_> = ring_members(ranks.len(), generation)
        .into_iter()
        .zip(ranks)
        .map(|(member, mut rank)| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut collective = member.establish();
                rank.trainer
                    .synchronize_from(&mut collective, source_rank)
                    .unwrap();
                rank.observer.digest_after_sync = Some(rank.trainer.weights_digest().unwrap());
                let outcome = run_generation(
                    &mut rank.trainer,
                    &config,
                    &rank.shards,
                    &mut collective,
                    &mut rank.observer,
                )
                .unwrap();
                (rank, outcome)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}

fn assert_all_equal(ranks: &[(Rank, GenerationOutcome)], expected: GenerationOutcome, step: u64) {
    let digest = ranks[0].0.trainer.weights_digest().unwrap();
    for (rank, outcome) in ranks {
        assert_eq!(*outcome, expected);
        assert_eq!(rank.trainer.progress().global_step, step);
        assert_eq!(rank.trainer.progress(), ranks[0].0.trainer.progress());
        assert_eq!(rank.trainer.weights_digest().unwrap(), digest);
    }
}

/// Undisturbed: 3 ranks, one virtual shard each, from start to finish.
fn undisturbed_three_ranks(config: &TrainConfig) -> Vec<(Rank, GenerationOutcome)> {
    let ranks = (0..VIRTUAL_SHARDS)
        .map(|index| Rank::fresh(config, &[index], Recorder::default()))
        .collect();
    let finished = run_ring_generation(0, config, ranks, 0);
    assert_all_equal(&finished, GenerationOutcome::Finished, 9);
    finished
}

#[test]
fn one_rank_owning_every_shard_follows_the_three_rank_trajectory() {
    let config = job_config();
    let three_ranks = undisturbed_three_ranks(&config);
    let mut alone = Rank::fresh(&config, &[2, 0, 1], Recorder::default());
    let outcome = run_generation(
        &mut alone.trainer,
        &config,
        &alone.shards,
        &mut SingleProcess,
        &mut alone.observer,
    )
    .unwrap();
    assert_eq!(outcome, GenerationOutcome::Finished);
    let (ours, theirs) = (
        alone.trainer.progress(),
        three_ranks[0].0.trainer.progress(),
    );
    assert_eq!(
        (
            ours.global_step,
            ours.evaluated_epochs,
            ours.epoch_loss_steps
        ),
        (
            theirs.global_step,
            theirs.evaluated_epochs,
            theirs.epoch_loss_steps
        )
    );
    assert!((ours.epoch_loss_sum - theirs.epoch_loss_sum).abs() < 1e-4);

    let reference = three_ranks[0].0.trainer.flat_weights().unwrap();
    let initial = DataParallelTrainer::new(&config)
        .unwrap()
        .flat_weights()
        .unwrap();
    let difference = max_abs_difference(&alone.trainer.flat_weights().unwrap(), &reference);
    println!("1 rank vs 3 ranks after 9 steps: max |difference| {difference:e}");
    assert!(
        difference < 1e-4,
        "1 rank differs from 3 ranks by {difference}"
    );
    assert!(
        max_abs_difference(&initial, &reference) > 1e-3,
        "training moved nothing"
    );
    for (ours, theirs) in alone
        .observer
        .steps
        .iter()
        .zip(&three_ranks[0].0.observer.steps)
    {
        assert_eq!(
            (ours.epoch, ours.step, ours.global_step),
            (theirs.epoch, theirs.step, theirs.global_step)
        );
        assert!(
            (ours.loss - theirs.loss).abs() < 1e-4,
            "{ours:?} vs {theirs:?}"
        );
    }
    // Every (epoch, shard) is reported once: by its owner, in ascending shard order.
    let expected_reports: Vec<(u32, u32)> = (1..=3)
        .flat_map(|epoch| (0..VIRTUAL_SHARDS).map(move |shard| (epoch, shard)))
        .collect();
    assert_eq!(alone.observer.epoch_reports(), expected_reports);
    for (rank_index, (rank, _)) in three_ranks.iter().enumerate() {
        let owned = rank_index as u32;
        assert_eq!(
            rank.observer.epoch_reports(),
            vec![(1, owned), (2, owned), (3, owned)]
        );
        for report in &rank.observer.epochs {
            let same = alone
                .observer
                .epochs
                .iter()
                .find(|ours| {
                    (ours.epoch, ours.virtual_shard) == (report.epoch, report.virtual_shard)
                })
                .unwrap();
            assert_eq!(same.test_count, 2);
            assert!((same.train_loss - report.train_loss).abs() < 1e-4);
            assert!((same.test_loss_sum - report.test_loss_sum).abs() < 1e-3);
        }
    }
    // Checkpoints come from rank 0 only, at each epoch end (checkpoint_every_steps is 0).
    let checkpoint_steps: Vec<u64> = three_ranks[0]
        .0
        .observer
        .checkpoints
        .iter()
        .map(|(progress, _)| progress.global_step)
        .collect();
    assert_eq!(checkpoint_steps, vec![3, 6, 9]);
    assert!(
        three_ranks[1..]
            .iter()
            .all(|(rank, _)| rank.observer.checkpoints.is_empty())
    );
}

/// 3 ranks -> (rank 2 lost after step 4, mid-epoch 2) 2 ranks, rank 0 owning shards 0 and 2 ->
/// (re-formation after step 6, an epoch end) 3 ranks with a fresh replacement, to the end.
#[test]
fn a_job_that_loses_a_rank_and_gains_a_fresh_one_ends_like_an_undisturbed_job() {
    let config = job_config();
    let reference = undisturbed_three_ranks(&config)[0]
        .0
        .trainer
        .flat_weights()
        .unwrap();

    let first_ranks = vec![
        Rank::fresh(&config, &[0], Recorder::default()),
        Rank::fresh(&config, &[1], Recorder::default()),
        Rank::fresh(&config, &[2], Recorder::reforming_at(0, 4)),
    ];
    let mut first = run_ring_generation(0, &config, first_ranks, 0);
    assert_all_equal(&first, GenerationOutcome::Reformed, 4);
    let _lost = first.pop();
    let (survivor_one, _) = first.pop().unwrap();
    let (survivor_zero, _) = first.pop().unwrap();

    // Survivors keep their state; old rank 1 is the state source of the new ring.
    let second_ranks = vec![
        Rank {
            trainer: survivor_zero.trainer,
            shards: shards(&[0, 2]),
            observer: Recorder::starting_at(4),
        },
        Rank {
            trainer: survivor_one.trainer,
            shards: shards(&[1]),
            observer: Recorder::reforming_at(4, 6),
        },
    ];
    let mut second = run_ring_generation(1, &config, second_ranks, 1);
    assert_all_equal(&second, GenerationOutcome::Reformed, 6);
    assert_eq!(second[0].0.observer.epoch_reports(), vec![(2, 0), (2, 2)]);
    assert_eq!(second[1].0.observer.epoch_reports(), vec![(2, 1)]);
    let (keeper_one, _) = second.pop().unwrap();
    let (keeper_zero, _) = second.pop().unwrap();
    let state_digest = keeper_zero.trainer.weights_digest().unwrap();

    // A fresh worker (another seed: its own weights mean nothing) takes over shard 2.
    let mut replacement_config = config.clone();
    replacement_config.seed = 999;
    let replacement = Rank::fresh(&replacement_config, &[2], Recorder::starting_at(6));
    assert_ne!(replacement.trainer.weights_digest().unwrap(), state_digest);
    let third_ranks = vec![
        Rank {
            trainer: keeper_zero.trainer,
            shards: shards(&[0]),
            observer: Recorder::starting_at(6),
        },
        Rank {
            trainer: keeper_one.trainer,
            shards: shards(&[1]),
            observer: Recorder::starting_at(6),
        },
        replacement,
    ];
    let third = run_ring_generation(2, &config, third_ranks, 0);
    for (rank, _) in &third {
        assert_eq!(
            rank.observer.digest_after_sync.as_deref(),
            Some(state_digest.as_str())
        );
        // Resuming at the end of epoch 2, each owner (the replacement too) re-reports it.
        let shard = rank.shards[0].index;
        assert_eq!(rank.observer.epoch_reports(), vec![(2, shard), (3, shard)]);
        assert_eq!(
            rank.observer
                .steps
                .iter()
                .map(|step| step.global_step)
                .collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
    }
    assert_all_equal(&third, GenerationOutcome::Finished, 9);

    let recovered = third[0].0.trainer.flat_weights().unwrap();
    let difference = max_abs_difference(&recovered, &reference);
    println!("3 -> 2 -> 3 ranks vs undisturbed after 9 steps: max |difference| {difference:e}");
    assert!(difference < 1e-4, "recovered job differs by {difference}");
}

#[test]
fn a_restored_training_state_continues_exactly() {
    let mut config = job_config();
    config.checkpoint_every_steps = 2;
    let all_shards = shards(&[0, 1, 2]);
    let mut trainer = DataParallelTrainer::new(&config).unwrap();
    let mut observer = Recorder::default();
    let outcome = run_generation(
        &mut trainer,
        &config,
        &all_shards,
        &mut SingleProcess,
        &mut observer,
    )
    .unwrap();
    assert_eq!(outcome, GenerationOutcome::Finished);
    let checkpoint_steps: Vec<u64> = observer
        .checkpoints
        .iter()
        .map(|(progress, _)| progress.global_step)
        .collect();
    assert_eq!(checkpoint_steps, vec![2, 3, 4, 6, 8, 9]);
    let final_digest = trainer.weights_digest().unwrap();

    for resume_index in [2usize, 1] {
        let (saved_progress, state) = &observer.checkpoints[resume_index];
        let mut other_seed = config.clone();
        other_seed.seed = 77;
        let mut restored = DataParallelTrainer::new(&other_seed).unwrap();
        restored.load_state_bytes(state).unwrap();
        assert_eq!(restored.progress(), *saved_progress);
        assert_eq!(restored.optimizer_step_count(), saved_progress.global_step);
        let mut resumed_observer = Recorder::starting_at(saved_progress.global_step);
        let outcome = run_generation(
            &mut restored,
            &config,
            &all_shards,
            &mut SingleProcess,
            &mut resumed_observer,
        )
        .unwrap();
        assert_eq!(outcome, GenerationOutcome::Finished);
        assert_eq!(restored.weights_digest().unwrap(), final_digest);
        assert_eq!(
            restored.flat_weights().unwrap(),
            trainer.flat_weights().unwrap()
        );
        assert_eq!(restored.progress(), trainer.progress());
        let skipped = saved_progress.global_step as usize;
        assert_eq!(
            step_records(&resumed_observer.steps),
            step_records(&observer.steps[skipped..])
        );
        // Resumed at the end of epoch 1 (step 3), epoch 1 is reported again with its training loss.
        let first_report = if skipped == 3 { 0 } else { 3 };
        assert_eq!(resumed_observer.epochs, observer.epochs[first_report..]);
    }

    // Loading only the weights (fine-tuning) keeps the fresh progress and optimizer.
    let (_, state_at_four) = &observer.checkpoints[2];
    let mut fine_tuned = DataParallelTrainer::new(&config).unwrap();
    fine_tuned.load_weights(state_at_four).unwrap();
    let mut from_state = DataParallelTrainer::new(&config).unwrap();
    from_state.load_state_bytes(state_at_four).unwrap();
    assert_eq!(
        fine_tuned.weights_digest().unwrap(),
        from_state.weights_digest().unwrap()
    );
    assert_eq!(fine_tuned.progress(), TrainingProgress::default());
    assert_eq!(fine_tuned.optimizer_step_count(), 0);
    let model_file = from_state.into_trained_model().to_safetensors().unwrap();
    let mut from_model_file = DataParallelTrainer::new(&config).unwrap();
    from_model_file.load_weights(&model_file).unwrap();
    assert_eq!(
        from_model_file.weights_digest().unwrap(),
        fine_tuned.weights_digest().unwrap()
    );

    let mismatch_reason = |config: &TrainConfig, bytes: &[u8]| -> String {
        match DataParallelTrainer::new(config)
            .unwrap()
            .load_state_bytes(bytes)
        {
            Err(TrainError::WeightsMismatch { reason, .. }) => reason,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    };
    let mut resnet = config.clone();
    resnet.architecture = Architecture::ResNet;
    let reason = mismatch_reason(&resnet, state_at_four);
    assert!(reason.contains("architecture \"lenet\""), "{reason}");
    let mut sgd = config.clone();
    sgd.optimizer = OptimizerChoice::SgdMomentum;
    let reason = mismatch_reason(&sgd, state_at_four);
    assert!(reason.contains("optimizer"), "{reason}");
    let mut four_classes = config.clone();
    four_classes.num_classes = 4;
    four_classes.class_weights = vec![1.0; 4];
    let reason = mismatch_reason(&four_classes, state_at_four);
    assert!(reason.contains("fc3.bias"), "{reason}");
    let reason = mismatch_reason(&config, &model_file);
    assert!(reason.contains("not a training state"), "{reason}");
    let reason = mismatch_reason(&config, b"garbage");
    assert!(reason.contains("not a safetensors file"), "{reason}");
}
