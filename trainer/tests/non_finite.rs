//! A rank whose loss turns NaN: the step fails naming that rank (or is skipped on every rank, by policy), and no
//! rank's weights change or become non-finite.
mod common;

use common::{random_batch, ring_members};
use plankton_collective::SingleProcess;
use plankton_trainer::{
    Architecture, DataParallelTrainer, IMAGE_LEN, NonFinitePolicy, TrainConfig, TrainError,
};

fn config(policy: NonFinitePolicy) -> TrainConfig {
    let mut config = TrainConfig::new(3, vec![0.5, 1.0, 2.5]);
    config.architecture = Architecture::LeNet;
    config.batch_size = 4;
    config.non_finite_policy = policy;
    config
}

/// Per rank: each step's ranks at fault (or the error), the weights before step 1, the weights at the end.
type RankRun = (Vec<Result<Vec<usize>, String>>, Vec<f32>, Vec<f32>);

/// Two ranks take three steps; rank 1's loss is NaN at step 1. Returns each rank's step results and its
/// weights before step 1 and at the end.
fn two_ranks_with_nan_at_step_one(policy: NonFinitePolicy) -> Vec<RankRun> {
    let handles: Vec<_> = ring_members(2, 0)
        .into_iter()
        .map(|member| {
            let mut rank_config = config(policy);
            if member.rank == 1 {
                rank_config.inject_non_finite_at_step = Some(1);
            }
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&rank_config).unwrap();
                trainer.synchronize_from(&mut collective, 0).unwrap();
                let mut results = Vec::new();
                let mut before = Vec::new();
                for step in 0..3u64 {
                    if step == 1 {
                        before = trainer.flat_weights().unwrap();
                    }
                    let (images, labels) = random_batch(4, 3, 100 + step * 2 + member.rank as u64);
                    match trainer.train_step(&mut collective, &images, &labels, false) {
                        Ok(outcome) => results.push(Ok(outcome.skipped_for_ranks)),
                        Err(error @ TrainError::NonFinite { .. }) => {
                            results.push(Err(error.to_string()));
                            break;
                        }
                        Err(other) => panic!("rank {}: {other}", member.rank),
                    }
                }
                (results, before, trainer.flat_weights().unwrap())
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}

#[test]
fn a_nan_loss_fails_the_step_on_every_rank_naming_the_rank_and_keeps_the_weights() {
    for (rank, (results, before, after)) in two_ranks_with_nan_at_step_one(NonFinitePolicy::Fail)
        .into_iter()
        .enumerate()
    {
        assert_eq!(results.len(), 2, "rank {rank}: {results:?}");
        let message = results[1].clone().unwrap_err();
        assert!(
            message.contains("step 1") && message.contains("rank(s) [1]"),
            "{message}"
        );
        if rank == 1 {
            assert!(message.contains("this rank's loss NaN"), "{message}");
        }
        assert!(after.iter().all(|value| value.is_finite()));
        assert_eq!(
            before, after,
            "rank {rank}: a refused step changed the weights"
        );
    }
}

#[test]
fn a_nan_loss_skips_the_step_on_every_rank_by_policy_and_training_goes_on() {
    let ranks = two_ranks_with_nan_at_step_one(NonFinitePolicy::SkipStep);
    for (rank, (results, _, after)) in ranks.iter().enumerate() {
        assert_eq!(
            results,
            &vec![Ok(vec![]), Ok(vec![1]), Ok(vec![])],
            "rank {rank}"
        );
        assert!(after.iter().all(|value| value.is_finite()));
    }
    assert_eq!(
        ranks[0].2, ranks[1].2,
        "ranks diverged after a skipped step"
    );
}

#[test]
fn one_rank_refuses_its_own_non_finite_step() {
    let mut config = config(NonFinitePolicy::Fail);
    config.inject_non_finite_at_step = Some(0);
    let mut trainer = DataParallelTrainer::new(&config).unwrap();
    let before = trainer.flat_weights().unwrap();
    let (images, labels) = random_batch(4, 3, 7);
    assert_eq!(images.len(), 4 * IMAGE_LEN);
    let error = trainer
        .train_step(&mut SingleProcess, &images, &labels, false)
        .unwrap_err();
    assert!(
        matches!(error, TrainError::NonFinite { ref ranks, .. } if ranks == &[0]),
        "{error}"
    );
    assert_eq!(trainer.flat_weights().unwrap(), before);
    assert_eq!(trainer.progress().global_step, 0);
}

#[test]
fn a_skipped_first_step_of_an_epoch_still_starts_the_epochs_loss_mean() {
    let mut config = config(NonFinitePolicy::SkipStep);
    config.steps_per_epoch = 2;
    // Step 2 opens epoch 2 and is skipped; step 3 is epoch 2's only applied step.
    config.inject_non_finite_at_step = Some(2);
    let mut trainer = DataParallelTrainer::new(&config).unwrap();
    for step in 0..4u64 {
        let (images, labels) = random_batch(4, 3, 50 + step);
        let outcome = trainer
            .train_step(&mut SingleProcess, &images, &labels, false)
            .unwrap();
        assert_eq!(
            outcome.skipped_for_ranks.is_empty(),
            step != 2,
            "step {step}"
        );
    }
    let progress = trainer.progress();
    assert_eq!(progress.global_step, 4);
    assert_eq!(
        progress.epoch_loss_steps, 1,
        "epoch 2's mean holds its applied step only, not epoch 1's"
    );
}
