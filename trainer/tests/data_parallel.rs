//! Data-parallel semantics: state sync from rank 0, and 2 ranks on half batches == 1 rank on the whole batch.
mod common;

use common::{max_abs_difference, random_batch, ring_members};
use plankton_collective::SingleProcess;
use std::time::Duration;

use plankton_trainer::{
    Architecture, DataParallelTrainer, GradientCompression, IMAGE_LEN, LossNormalization,
    OptimizerChoice, StepTimings, TrainConfig,
};

fn config(
    architecture: Architecture,
    optimizer: OptimizerChoice,
    learning_rate: f64,
) -> TrainConfig {
    let mut config = TrainConfig::new(3, vec![0.5, 1.0, 2.5]);
    config.architecture = architecture;
    config.optimizer = optimizer;
    config.learning_rate = learning_rate;
    config.weight_decay = 1e-4;
    config.batch_size = 4;
    // The global batch's weighted mean on every rank count: what "2 ranks on halves == 1 rank on the whole"
    // compares (shard-mean averages per-rank means; trainer/tests/loss_normalization.rs covers it).
    config.loss_normalization = LossNormalization::WeightSum;
    config
}

/// Weights after one step on the whole batch with one rank.
fn weights_after_one_rank(config: &TrainConfig, images: &[u8], labels: &[u32]) -> Vec<f32> {
    let mut trainer = DataParallelTrainer::new(config).unwrap();
    trainer
        .train_step(&mut SingleProcess, images, labels, false)
        .unwrap();
    trainer.flat_weights().unwrap()
}

/// Weights of each rank after one step, rank r training on `splits[r]`.
fn weights_after_ranks(config: &TrainConfig, splits: Vec<(Vec<u8>, Vec<u32>)>) -> Vec<Vec<f32>> {
    let handles: Vec<_> = ring_members(splits.len(), 0)
        .into_iter()
        .zip(splits)
        .map(|(member, (images, labels))| {
            let mut rank_config = config.clone();
            // A different seed on rank 1: synchronizing from rank 0 must make the weights identical anyway.
            rank_config.seed += member.rank as u64;
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&rank_config).unwrap();
                trainer.synchronize_from(&mut collective, 0).unwrap();
                trainer
                    .train_step(&mut collective, &images, &labels, false)
                    .unwrap();
                // Batch-norm running statistics are per rank until synchronized (before each evaluation).
                trainer
                    .synchronize_batch_norm_statistics(&mut collective)
                    .unwrap();
                trainer.flat_weights().unwrap()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}

fn assert_two_halves_equal_whole(config: &TrainConfig) {
    let (images, labels) = random_batch(8, config.num_classes, 11);
    let whole = weights_after_one_rank(config, &images, &labels);
    let halves = vec![
        (images[..4 * IMAGE_LEN].to_vec(), labels[..4].to_vec()),
        (images[4 * IMAGE_LEN..].to_vec(), labels[4..].to_vec()),
    ];
    let ranks = weights_after_ranks(config, halves);
    assert!(
        ranks[0] == ranks[1],
        "ranks diverged by {}",
        max_abs_difference(&ranks[0], &ranks[1])
    );
    let difference = max_abs_difference(&ranks[0], &whole);
    assert!(
        difference < 1e-5,
        "2 ranks differ from 1 rank by {difference}"
    );
    let initial = DataParallelTrainer::new(config)
        .unwrap()
        .flat_weights()
        .unwrap();
    assert!(
        max_abs_difference(&initial, &whole) > 1e-6,
        "the step changed nothing"
    );
}

#[test]
fn lenet_sgd_two_ranks_on_halves_equal_one_rank_on_whole_batch() {
    assert_two_halves_equal_whole(&config(
        Architecture::LeNet,
        OptimizerChoice::SgdMomentum,
        0.05,
    ));
}

#[test]
fn lenet_adam_two_ranks_on_halves_equal_one_rank_on_whole_batch() {
    assert_two_halves_equal_whole(&config(Architecture::LeNet, OptimizerChoice::Adam, 1e-4));
}

/// bf16 on the wire: the ranks stay bit-identical, and one SGD step moves the weights by the learning rate
/// times a gradient within bf16 rounding (2 roundings of relative 2^-8 per value for 2 ranks) of the exact one.
#[test]
fn bf16_compressed_gradients_keep_ranks_identical_and_close_to_exact() {
    let exact_config = config(Architecture::LeNet, OptimizerChoice::SgdMomentum, 0.05);
    let mut compressed_config = exact_config.clone();
    compressed_config.gradient_compression = GradientCompression::Bf16;
    let (images, labels) = random_batch(8, exact_config.num_classes, 11);
    let halves = || {
        vec![
            (images[..4 * IMAGE_LEN].to_vec(), labels[..4].to_vec()),
            (images[4 * IMAGE_LEN..].to_vec(), labels[4..].to_vec()),
        ]
    };
    let exact = weights_after_ranks(&exact_config, halves());
    let compressed = weights_after_ranks(&compressed_config, halves());
    assert!(compressed[0] == compressed[1], "compressed ranks diverged");
    let initial = DataParallelTrainer::new(&exact_config)
        .unwrap()
        .flat_weights()
        .unwrap();
    let exact_update: Vec<f32> = exact[0]
        .iter()
        .zip(&initial)
        .map(|(w, w0)| w - w0)
        .collect();
    let compressed_update: Vec<f32> = compressed[0]
        .iter()
        .zip(&initial)
        .map(|(w, w0)| w - w0)
        .collect();
    let largest_update = exact_update.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let update_error = max_abs_difference(&exact_update, &compressed_update);
    assert!(largest_update > 1e-6, "the step changed nothing");
    assert!(update_error > 0.0, "the gradients did not travel in bf16");
    // Per value |error| <= 2 * 2^-8 * (|g_0| + |g_1|); bounded here by the largest update, with slack
    // for the f32 weight subtraction.
    assert!(
        update_error <= 2.0 * 2f32.powi(-8) * 2.0 * largest_update + 1e-6,
        "bf16 update error {update_error} for updates up to {largest_update}"
    );
}

#[test]
fn a_rank_with_an_empty_batch_still_takes_part() {
    let config = config(Architecture::LeNet, OptimizerChoice::SgdMomentum, 0.05);
    let (images, labels) = random_batch(6, config.num_classes, 5);
    let whole = weights_after_one_rank(&config, &images, &labels);
    let ranks = weights_after_ranks(&config, vec![(images, labels), (Vec::new(), Vec::new())]);
    assert!(max_abs_difference(&ranks[1], &whole) < 1e-5);
}

/// Train-mode batch norm normalizes with each rank's local batch statistics, so a resnet step on two
/// half batches is NOT bit-equal to one step on the whole batch (like PyTorch DDP without SyncBatchNorm);
/// what must hold is that all ranks stay identical and close to the single-rank result.
#[test]
fn resnet_ranks_start_identical_and_stay_identical() {
    let config = config(Architecture::ResNet, OptimizerChoice::SgdMomentum, 0.05);
    let (images, labels) = random_batch(8, config.num_classes, 3);
    let whole = weights_after_one_rank(&config, &images, &labels);
    let halves = vec![
        (images[..4 * IMAGE_LEN].to_vec(), labels[..4].to_vec()),
        (images[4 * IMAGE_LEN..].to_vec(), labels[4..].to_vec()),
    ];
    let ranks = weights_after_ranks(&config, halves);
    assert!(
        ranks[0] == ranks[1],
        "ranks diverged by {}",
        max_abs_difference(&ranks[0], &ranks[1])
    );
    assert!(max_abs_difference(&ranks[0], &whole) < 0.05);
}

#[test]
fn synchronize_from_gives_every_rank_rank_zeros_weights() {
    let base = config(Architecture::ResNet, OptimizerChoice::Adam, 1e-3);
    let handles: Vec<_> = ring_members(2, 0)
        .into_iter()
        .map(|member| {
            let mut rank_config = base.clone();
            rank_config.seed = 100 + member.rank as u64;
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&rank_config).unwrap();
                trainer.synchronize_from(&mut collective, 0).unwrap();
                trainer.flat_weights().unwrap()
            })
        })
        .collect();
    let weights: Vec<Vec<f32>> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let mut rank_one_alone_config = base.clone();
    rank_one_alone_config.seed = 101;
    let rank_one_alone = DataParallelTrainer::new(&rank_one_alone_config)
        .unwrap()
        .flat_weights()
        .unwrap();
    assert!(
        weights[0] == weights[1],
        "ranks differ by {}",
        max_abs_difference(&weights[0], &weights[1])
    );
    assert!(
        weights[1] != rank_one_alone,
        "seeds 100 and 101 should draw different weights"
    );
}

/// Each sample's transformed features: `width` values from a linear congruential generator.
fn random_features(count: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..count * width)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// The fusion network (resnet trunk + feature MLP) on two ranks with half batches each: ranks stay identical
/// and match one rank on the whole batch within 0.02 (max abs weight difference; 0.0045 measured): like the
/// resnet, the trunk's train-mode batch norm normalises with each rank's local statistics (the feature MLP has
/// no batch norm), so the step is close to, not bit-equal with, the single-rank one.
#[test]
fn fusion_two_ranks_on_halves_match_one_rank_on_the_whole_batch() {
    const WIDTH: usize = 5;
    let mut config = config(Architecture::Fusion, OptimizerChoice::SgdMomentum, 0.05);
    config.feature_width = WIDTH;
    let (images, labels) = random_batch(8, config.num_classes, 13);
    let features = random_features(8, WIDTH, 17);
    let mut one_rank = DataParallelTrainer::new(&config).unwrap();
    let initial = one_rank.flat_weights().unwrap();
    one_rank
        .train_step_with_features(&mut SingleProcess, &images, &labels, &features, false)
        .unwrap();
    let whole = one_rank.flat_weights().unwrap();
    let halves = [
        (
            images[..4 * IMAGE_LEN].to_vec(),
            labels[..4].to_vec(),
            features[..4 * WIDTH].to_vec(),
        ),
        (
            images[4 * IMAGE_LEN..].to_vec(),
            labels[4..].to_vec(),
            features[4 * WIDTH..].to_vec(),
        ),
    ];
    let handles: Vec<_> = ring_members(2, 0)
        .into_iter()
        .zip(halves)
        .map(|(member, (images, labels, features))| {
            let mut rank_config = config.clone();
            rank_config.seed += member.rank as u64;
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&rank_config).unwrap();
                trainer.synchronize_from(&mut collective, 0).unwrap();
                trainer
                    .train_step_with_features(&mut collective, &images, &labels, &features, false)
                    .unwrap();
                trainer
                    .synchronize_batch_norm_statistics(&mut collective)
                    .unwrap();
                trainer.flat_weights().unwrap()
            })
        })
        .collect();
    let ranks: Vec<Vec<f32>> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    assert!(
        ranks[0] == ranks[1],
        "ranks diverged by {}",
        max_abs_difference(&ranks[0], &ranks[1])
    );
    let difference = max_abs_difference(&ranks[0], &whole);
    assert!(
        difference < 0.02,
        "2 ranks differ from 1 rank by {difference}"
    );
    assert!(
        max_abs_difference(&initial, &whole) > 1e-6,
        "the step changed nothing"
    );
    // Features are required, with the configured width.
    let mut trainer = DataParallelTrainer::new(&config).unwrap();
    assert!(
        trainer
            .train_step(&mut SingleProcess, &images, &labels, false)
            .is_err()
    );
    assert!(
        trainer
            .train_step_with_features(
                &mut SingleProcess,
                &images,
                &labels,
                &features[..7 * WIDTH],
                false
            )
            .is_err()
    );
}

/// Each rank's weights after `steps` steps on its own batch (the same batch every step), and its last step's
/// timings.
fn ranks_after_steps(
    config: &TrainConfig,
    batches: Vec<(Vec<u8>, Vec<u32>)>,
    steps: usize,
) -> Vec<(Vec<f32>, StepTimings)> {
    let handles: Vec<_> = ring_members(batches.len(), 0)
        .into_iter()
        .zip(batches)
        .map(|(member, (images, labels))| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&config).unwrap();
                let mut timings = StepTimings::default();
                for _ in 0..steps {
                    timings = trainer
                        .train_step(&mut collective, &images, &labels, false)
                        .unwrap()
                        .timings;
                }
                trainer
                    .synchronize_batch_norm_statistics(&mut collective)
                    .unwrap();
                (trainer.flat_weights().unwrap(), timings)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}

/// The late segment's all-reduce overlapped with the early backward gives the weights of the sequential
/// all-reduce: for every network, on 3 ranks (one of them with an empty batch), fp32 and bf16 on the wire.
/// 3 ranks add in an order that depends on the buffer's layout, so the two agree to rounding, not bits.
#[test]
fn overlapped_all_reduce_gives_the_sequential_weights() {
    for architecture in [Architecture::WideLeNet, Architecture::ResNet] {
        for compression in [GradientCompression::None, GradientCompression::Bf16] {
            let mut sequential = config(architecture, OptimizerChoice::SgdMomentum, 0.05);
            sequential.gradient_compression = compression;
            sequential.overlap_communication = false;
            let mut overlapped = sequential.clone();
            overlapped.overlap_communication = true;
            let (images, labels) = random_batch(6, sequential.num_classes, 17);
            let batches = || {
                vec![
                    (images[..3 * IMAGE_LEN].to_vec(), labels[..3].to_vec()),
                    (images[3 * IMAGE_LEN..].to_vec(), labels[3..].to_vec()),
                    (Vec::new(), Vec::new()),
                ]
            };
            let sequential_ranks = ranks_after_steps(&sequential, batches(), 3);
            let overlapped_ranks = ranks_after_steps(&overlapped, batches(), 3);
            for (rank, (weights, _)) in overlapped_ranks.iter().enumerate() {
                assert!(
                    *weights == overlapped_ranks[0].0,
                    "{architecture:?} {compression:?}: overlapped rank {rank} diverged from rank 0"
                );
            }
            let difference = max_abs_difference(&overlapped_ranks[0].0, &sequential_ranks[0].0);
            let tolerance = match compression {
                GradientCompression::None => 1e-5,
                GradientCompression::Bf16 => 1e-3,
            };
            assert!(
                difference < tolerance,
                "{architecture:?} {compression:?}: overlapped weights differ from sequential by {difference}"
            );
            let moved = max_abs_difference(
                &overlapped_ranks[0].0,
                &DataParallelTrainer::new(&overlapped)
                    .unwrap()
                    .flat_weights()
                    .unwrap(),
            );
            assert!(
                moved > 1e-4,
                "{architecture:?}: the steps moved the weights by only {moved}"
            );
            assert!(
                overlapped_ranks[0].1.all_reduce_hidden > Duration::ZERO,
                "{architecture:?}: no communication ran alongside the backward"
            );
            assert_eq!(sequential_ranks[0].1.all_reduce_hidden, Duration::ZERO);
        }
    }
}
