//! Stratified train/test split, subsampling, class weights and per-rank shards; all seeded and deterministic.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Indices of `labels` grouped by label; labels `>= num_classes` are left out.
pub fn indices_by_label(labels: &[u32], num_classes: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); num_classes];
    for (index, label) in labels.iter().enumerate() {
        if let Some(group) = groups.get_mut(*label as usize) {
            group.push(index);
        }
    }
    groups
}

/// Splits indices of `labels` into (train, test), class by class: shuffle (ChaCha8 from `seed`) and take
/// `round(n * test_fraction)` for test, keeping at least one test and one train object in every class of
/// two or more when `0 < test_fraction < 1`. Both lists are sorted. Labels `>= num_classes` are left out.
pub fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let test_fraction = if test_fraction.is_finite() {
        test_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::with_capacity(labels.len());
    let mut test = Vec::with_capacity((labels.len() as f64 * test_fraction).ceil() as usize);
    for mut class_indices in indices_by_label(labels, num_classes) {
        let class_size = class_indices.len();
        class_indices.shuffle(&mut rng);
        let mut test_count = (class_size as f64 * test_fraction).round() as usize;
        if class_size >= 2 && test_fraction > 0.0 && test_fraction < 1.0 {
            test_count = test_count.clamp(1, class_size - 1);
        }
        let test_count = test_count.min(class_size);
        test.extend_from_slice(&class_indices[..test_count]);
        train.extend_from_slice(&class_indices[test_count..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// At most `max` indices of `labels`, proportionally per class but keeping every class (at least one
/// each; when `max` is below the number of classes, the rarest classes get one). Sorted.
pub fn stratified_subsample(
    labels: &[u32],
    num_classes: usize,
    max: usize,
    seed: u64,
) -> Vec<usize> {
    let groups = indices_by_label(labels, num_classes);
    let total: usize = groups.iter().map(Vec::len).sum();
    if max >= total {
        let mut all: Vec<usize> = groups.into_iter().flatten().collect();
        all.sort_unstable();
        return all;
    }
    let mut quotas = vec![0usize; groups.len()];
    let mut present: Vec<usize> = (0..groups.len())
        .filter(|class| !groups[*class].is_empty())
        .collect();
    if max < present.len() {
        present.sort_by_key(|class| (groups[*class].len(), *class));
        for class in present.iter().take(max) {
            quotas[*class] = 1;
        }
    } else {
        for class in &present {
            quotas[*class] = 1;
        }
        let remaining_budget = max - present.len();
        let capacities: Vec<usize> = groups
            .iter()
            .map(|group| group.len().saturating_sub(1))
            .collect();
        let total_capacity: usize = capacities.iter().sum();
        if total_capacity > 0 {
            let mut remainders = Vec::with_capacity(groups.len());
            let mut allotted = 0usize;
            for (class, capacity) in capacities.iter().enumerate() {
                let ideal = remaining_budget as u128 * *capacity as u128;
                let whole = (ideal / total_capacity as u128) as usize;
                quotas[class] += whole;
                allotted += whole;
                remainders.push((ideal % total_capacity as u128, class));
            }
            remainders.sort_by(|left, right| right.0.cmp(&left.0).then(left.1.cmp(&right.1)));
            for (remainder, class) in remainders.into_iter().take(remaining_budget - allotted) {
                if remainder > 0 {
                    quotas[class] += 1;
                }
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::with_capacity(max);
    for (mut class_indices, quota) in groups.into_iter().zip(quotas) {
        class_indices.shuffle(&mut rng);
        chosen.extend_from_slice(&class_indices[..quota.min(class_indices.len())]);
    }
    chosen.sort_unstable();
    chosen
}

/// How the loss weighs classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeighting {
    /// sklearn's `balanced`: `n / (C * n_c)` over the `C` classes present.
    #[default]
    Balanced,
    /// Every class weighs 1.
    None,
    /// Square root of the balanced weight: a milder correction.
    Sqrt,
}

impl std::fmt::Display for ClassWeighting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClassWeighting::Balanced => "balanced",
            ClassWeighting::None => "none",
            ClassWeighting::Sqrt => "sqrt",
        })
    }
}

impl std::str::FromStr for ClassWeighting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "balanced" => Ok(ClassWeighting::Balanced),
            "none" => Ok(ClassWeighting::None),
            "sqrt" => Ok(ClassWeighting::Sqrt),
            other => Err(format!(
                "unknown class weighting '{other}' (balanced, none, sqrt)"
            )),
        }
    }
}

/// One weight per class from the training counts; a class with no training object weighs 0
/// (except with [`ClassWeighting::None`], where every class weighs 1).
pub fn class_weights(train_counts: &[u64], mode: ClassWeighting) -> Vec<f32> {
    if mode == ClassWeighting::None {
        return vec![1.0; train_counts.len()];
    }
    let total: u64 = train_counts.iter().sum();
    let classes_present = train_counts.iter().filter(|count| **count > 0).count();
    train_counts
        .iter()
        .map(|count| {
            if *count == 0 {
                return 0.0;
            }
            let balanced = total as f64 / (classes_present as f64 * *count as f64);
            match mode {
                ClassWeighting::Sqrt => balanced.sqrt() as f32,
                _ => balanced as f32,
            }
        })
        .collect()
}

/// Deals the indices of every class round-robin across `world_size` ranks, continuing the deal from
/// one class to the next so that ranks differ by at most one index overall and at most one per class.
pub fn stratified_shards(indices_by_label: &[Vec<usize>], world_size: usize) -> Vec<Vec<usize>> {
    let mut shards = vec![Vec::new(); world_size];
    if world_size == 0 {
        return shards;
    }
    let mut next_rank = 0usize;
    for class_indices in indices_by_label {
        for index in class_indices {
            shards[next_rank].push(*index);
            next_rank = (next_rank + 1) % world_size;
        }
    }
    shards
}
