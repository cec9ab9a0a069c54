//! Each loss normalisation's loss and gradient on a batch computed by hand from its samples' own losses and
//! gradients, on one rank owning both virtual shards and on two ranks owning one each (the same global batch).
//!
//! A sample's loss `l_i` and gradient `g_i` come from a one-sample step of the same starting weights (weight-sum
//! normalisation of one sample is its plain cross-entropy); SGD's first step moves the weights by `-lr * g`, so a
//! step's gradient is read off the weights. Then for weights `w_i`, virtual shards `s` with weight sums `W_s`,
//! `N` samples and `S` shards:
//! - weight_sum: loss `sum w_i l_i / sum w_i`, gradient `sum w_i g_i / sum w_i`;
//! - samples:    loss `sum w_i l_i / N`, gradient `sum w_i g_i / N`;
//! - shard_mean: loss `(1/S) sum_s sum_{i in s} w_i l_i / W_s`, gradient likewise.
mod common;

use common::{max_abs_difference, random_batch, ring_members};
use plankton_collective::SingleProcess;
use plankton_trainer::{
    Architecture, DataParallelTrainer, IMAGE_LEN, LossNormalization, OptimizerChoice, TrainConfig,
};

const LEARNING_RATE: f64 = 0.05;
const WEIGHTS: [f32; 3] = [0.5, 1.0, 6.0];
/// The global batch: virtual shard 0 holds the first 3 samples, shard 1 the last 2.
const SHARD_SIZES: [usize; 2] = [3, 2];

fn config(normalization: LossNormalization) -> TrainConfig {
    let mut config = TrainConfig::new(3, WEIGHTS.to_vec());
    config.architecture = Architecture::LeNet;
    config.optimizer = OptimizerChoice::SgdMomentum;
    config.learning_rate = LEARNING_RATE;
    config.batch_size = 3;
    config.loss_normalization = normalization;
    config
}

/// The loss and gradient of one step on one rank from fresh (seeded) weights.
fn one_rank_step(
    normalization: LossNormalization,
    images: &[u8],
    labels: &[u32],
    groups: &[usize],
) -> (f64, Vec<f32>) {
    let mut trainer = DataParallelTrainer::new(&config(normalization)).unwrap();
    let before = trainer.flat_weights().unwrap();
    let outcome = trainer
        .train_step_grouped(&mut SingleProcess, images, labels, &[], groups, false)
        .unwrap();
    (
        outcome.loss,
        gradient(&before, &trainer.flat_weights().unwrap()),
    )
}

fn gradient(before: &[f32], after: &[f32]) -> Vec<f32> {
    before
        .iter()
        .zip(after)
        .map(|(before, after)| ((before - after) as f64 / LEARNING_RATE) as f32)
        .collect()
}

/// The same step on two ranks, rank `r` holding virtual shard `r`: rank 0's loss and gradient.
fn two_rank_step(
    normalization: LossNormalization,
    images: &[u8],
    labels: &[u32],
) -> (f64, Vec<f32>) {
    let split = SHARD_SIZES[0];
    let parts = [
        (
            images[..split * IMAGE_LEN].to_vec(),
            labels[..split].to_vec(),
        ),
        (
            images[split * IMAGE_LEN..].to_vec(),
            labels[split..].to_vec(),
        ),
    ];
    let handles: Vec<_> = ring_members(2, 0)
        .into_iter()
        .zip(parts)
        .map(|(member, (images, labels))| {
            std::thread::spawn(move || {
                let mut collective = member.establish();
                let mut trainer = DataParallelTrainer::new(&config(normalization)).unwrap();
                trainer.synchronize_from(&mut collective, 0).unwrap();
                let before = trainer.flat_weights().unwrap();
                let outcome = trainer
                    .train_step_grouped(
                        &mut collective,
                        &images,
                        &labels,
                        &[],
                        &[labels.len()],
                        false,
                    )
                    .unwrap();
                (
                    outcome.loss,
                    gradient(&before, &trainer.flat_weights().unwrap()),
                )
            })
        })
        .collect();
    let mut results: Vec<(f64, Vec<f32>)> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let rank_one = results.pop().unwrap();
    let rank_zero = results.pop().unwrap();
    assert_eq!(rank_zero.0, rank_one.0, "both ranks report the same loss");
    assert_eq!(
        rank_zero.1, rank_one.1,
        "both ranks apply the same gradient"
    );
    rank_zero
}

/// Per sample: its weight, plain cross-entropy and gradient.
fn per_sample(images: &[u8], labels: &[u32]) -> Vec<(f64, f64, Vec<f32>)> {
    labels
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let image = &images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN];
            let (loss, gradient) =
                one_rank_step(LossNormalization::WeightSum, image, &[*label], &[1]);
            (WEIGHTS[*label as usize] as f64, loss, gradient)
        })
        .collect()
}

/// `sum_i coefficient_i * w_i * (l_i, g_i)`.
fn combine(samples: &[(f64, f64, Vec<f32>)], coefficients: &[f64]) -> (f64, Vec<f32>) {
    let mut loss = 0.0;
    let mut gradient = vec![0.0f64; samples[0].2.len()];
    for ((weight, sample_loss, sample_gradient), coefficient) in samples.iter().zip(coefficients) {
        loss += coefficient * weight * sample_loss;
        for (total, value) in gradient.iter_mut().zip(sample_gradient) {
            *total += coefficient * weight * *value as f64;
        }
    }
    (
        loss,
        gradient.into_iter().map(|value| value as f32).collect(),
    )
}

/// Each sample's coefficient under `normalization`, by hand.
fn hand_coefficients(normalization: LossNormalization, weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let shard_sums = [
        weights[..SHARD_SIZES[0]].iter().sum::<f64>(),
        weights[SHARD_SIZES[0]..].iter().sum::<f64>(),
    ];
    (0..weights.len())
        .map(|index| match normalization {
            LossNormalization::WeightSum => 1.0 / total,
            LossNormalization::Samples => 1.0 / weights.len() as f64,
            LossNormalization::ShardMean => {
                let shard = usize::from(index >= SHARD_SIZES[0]);
                1.0 / (2.0 * shard_sums[shard])
            }
        })
        .collect()
}

#[test]
fn each_normalisation_matches_its_hand_computed_loss_and_gradient_on_one_and_two_ranks() {
    // Labels chosen so shard 0 holds the heavy class (6.0) and the shards' weight sums differ.
    let (images, _) = random_batch(5, 3, 11);
    let labels = vec![2, 0, 1, 1, 0];
    let samples = per_sample(&images, &labels);
    let weights: Vec<f64> = samples.iter().map(|sample| sample.0).collect();
    assert_eq!(weights, vec![6.0, 0.5, 1.0, 1.0, 0.5]);
    let mut losses = Vec::new();
    for normalization in [
        LossNormalization::WeightSum,
        LossNormalization::Samples,
        LossNormalization::ShardMean,
    ] {
        let (expected_loss, expected_gradient) =
            combine(&samples, &hand_coefficients(normalization, &weights));
        let scale = expected_gradient
            .iter()
            .fold(0.0f32, |max, value| max.max(value.abs()));
        let runs = [
            (
                "1 rank",
                one_rank_step(normalization, &images, &labels, &SHARD_SIZES),
            ),
            ("2 ranks", two_rank_step(normalization, &images, &labels)),
        ];
        for (ranks, (loss, gradient)) in runs {
            assert!(
                (loss - expected_loss).abs() < 1e-5 * expected_loss.abs().max(1.0),
                "{normalization:?} on {ranks}: loss {loss} vs {expected_loss} by hand"
            );
            let difference = max_abs_difference(&gradient, &expected_gradient);
            assert!(
                difference < 2e-3 * scale,
                "{normalization:?} on {ranks}: gradient differs by {difference} (largest component {scale})"
            );
        }
        losses.push(expected_loss);
    }
    // The three are different normalisations of the same batch.
    assert!(
        losses[0] != losses[1] && losses[1] != losses[2] && losses[0] != losses[2],
        "{losses:?}"
    );
}
