//! Data-parallel semantics: init broadcast, and 2 ranks on half batches == 1 rank on the whole batch.
use std::time::Duration;

use plankton_collective::{RingAllReduce, RingConfig, RingListener, SingleProcess};
use plankton_trainer::{
    Architecture, DataParallelTrainer, IMAGE_LEN, OptimizerChoice, TrainConfig,
};

/// One ring of `world_size` ranks over 127.0.0.1 (each rank establishes inside its own thread).
fn ring_collectives(world_size: usize) -> Vec<RingMember> {
    let listeners: Vec<RingListener> = (0..world_size)
        .map(|_| RingListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.local_addr().to_string())
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| RingMember {
            rank,
            listener,
            addresses: addresses.clone(),
        })
        .collect()
}

struct RingMember {
    rank: usize,
    listener: RingListener,
    addresses: Vec<String>,
}

impl RingMember {
    fn establish(&self) -> RingAllReduce {
        let config = RingConfig {
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(60),
            chunk_bytes: 64 * 1024,
        };
        RingAllReduce::establish(
            &self.listener,
            "trainer-test",
            self.rank,
            &self.addresses,
            &config,
        )
        .unwrap()
    }
}

fn random_batch(count: usize, num_classes: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let images = (0..count * IMAGE_LEN).map(|_| next() as u8).collect();
    let labels = (0..count).map(|_| next() % num_classes as u32).collect();
    (images, labels)
}

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
    config
}

fn max_abs_difference(left: &[f32], right: &[f32]) -> f32 {
    assert_eq!(left.len(), right.len());
    left.iter()
        .zip(right)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Weights after one step on the whole batch with one rank.
fn weights_after_one_rank(config: &TrainConfig, images: &[u8], labels: &[u32]) -> Vec<f32> {
    let mut single = SingleProcess;
    let mut trainer = DataParallelTrainer::new(config, &mut single).unwrap();
    trainer.train_step(images, labels).unwrap();
    trainer.flat_weights().unwrap()
}

/// Weights of each rank after one step, rank r training on `splits[r]`.
fn weights_after_ranks(config: &TrainConfig, splits: Vec<(Vec<u8>, Vec<u32>)>) -> Vec<Vec<f32>> {
    let handles: Vec<_> = ring_collectives(splits.len())
        .into_iter()
        .zip(splits)
        .map(|(member, (images, labels))| {
            let mut rank_config = config.clone();
            // A different seed on rank 1: the broadcast from rank 0 must make the weights identical anyway.
            rank_config.seed += member.rank as u64;
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&rank_config, &mut collective).unwrap();
                trainer.train_step(&images, &labels).unwrap();
                // Batch-norm running statistics are per rank until synchronized (before each evaluation).
                trainer.synchronize_batch_norm_statistics().unwrap();
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
    let initial = {
        let mut single = SingleProcess;
        DataParallelTrainer::new(config, &mut single)
            .unwrap()
            .flat_weights()
            .unwrap()
    };
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
fn init_broadcast_gives_every_rank_rank_zeros_weights() {
    let base = config(Architecture::ResNet, OptimizerChoice::Adam, 1e-3);
    let handles: Vec<_> = ring_collectives(2)
        .into_iter()
        .map(|member| {
            let mut rank_config = base.clone();
            rank_config.seed = 100 + member.rank as u64;
            std::thread::spawn(move || {
                let mut collective = member.establish();
                DataParallelTrainer::new(&rank_config, &mut collective)
                    .unwrap()
                    .flat_weights()
                    .unwrap()
            })
        })
        .collect();
    let weights: Vec<Vec<f32>> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let mut rank_one_alone_config = base.clone();
    rank_one_alone_config.seed = 101;
    let mut single = SingleProcess;
    let rank_one_alone = DataParallelTrainer::new(&rank_one_alone_config, &mut single)
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
