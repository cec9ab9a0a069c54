//! Stratified split, subsample, class weights and shards.

use std::collections::HashSet;

use plankton_dataset::{
    ClassWeighting, class_weights, indices_by_label, stratified_shards, stratified_split,
    stratified_subsample,
};

/// Labels with class sizes 100, 10, 2, 1 and one out-of-range label.
fn imbalanced_labels() -> Vec<u32> {
    let mut labels = Vec::new();
    for (class, size) in [(0u32, 100usize), (1, 10), (2, 2), (3, 1)] {
        labels.extend(std::iter::repeat_n(class, size));
    }
    labels.push(9);
    // Interleave so classes are not contiguous.
    let mut interleaved: Vec<u32> = Vec::with_capacity(labels.len());
    for offset in 0..7 {
        interleaved.extend(labels.iter().skip(offset).step_by(7));
    }
    interleaved
}

#[test]
fn split_is_stratified_deterministic_and_disjoint() {
    let labels = imbalanced_labels();
    let (train, test) = stratified_split(&labels, 4, 0.2, 42);
    let count = |indices: &[usize], class: u32| {
        indices
            .iter()
            .filter(|index| labels[**index] == class)
            .count()
    };
    assert_eq!(
        [
            count(&test, 0),
            count(&test, 1),
            count(&test, 2),
            count(&test, 3)
        ],
        [20, 2, 1, 0]
    );
    assert_eq!(
        [
            count(&train, 0),
            count(&train, 1),
            count(&train, 2),
            count(&train, 3)
        ],
        [80, 8, 1, 1]
    );
    let train_set: HashSet<usize> = train.iter().copied().collect();
    assert!(test.iter().all(|index| !train_set.contains(index)));
    assert_eq!(
        train.len() + test.len(),
        labels.len() - 1,
        "the out-of-range label is left out"
    );
    assert!(train.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(
        stratified_split(&labels, 4, 0.2, 42),
        (train.clone(), test.clone())
    );
    assert_ne!(
        stratified_split(&labels, 4, 0.2, 43).1,
        test,
        "another seed picks other objects"
    );
    let (all_train, no_test) = stratified_split(&labels, 4, 0.0, 1);
    assert!(no_test.is_empty());
    assert_eq!(all_train.len(), labels.len() - 1);
}

#[test]
fn subsample_keeps_every_class_and_the_budget() {
    let labels = imbalanced_labels();
    let chosen = stratified_subsample(&labels, 4, 20, 7);
    assert_eq!(chosen.len(), 20);
    let classes: HashSet<u32> = chosen.iter().map(|index| labels[*index]).collect();
    assert_eq!(classes, HashSet::from([0, 1, 2, 3]));
    let largest = chosen.iter().filter(|index| labels[**index] == 0).count();
    assert!(
        largest >= 14,
        "the largest class keeps most of the budget: {largest}"
    );
    assert_eq!(stratified_subsample(&labels, 4, 20, 7), chosen);
    let tiny = stratified_subsample(&labels, 4, 2, 7);
    let tiny_classes: HashSet<u32> = tiny.iter().map(|index| labels[*index]).collect();
    assert_eq!(
        tiny_classes,
        HashSet::from([3, 2]),
        "the rarest classes come first when the budget is tiny"
    );
    assert_eq!(
        stratified_subsample(&labels, 4, 1_000, 7).len(),
        labels.len() - 1
    );
}

#[test]
fn class_weights_follow_sklearn_balanced() {
    let counts = [80u64, 8, 2, 0, 10];
    let balanced = class_weights(&counts, ClassWeighting::Balanced);
    // n = 100, classes present = 4: w = 100 / (4 * n_c).
    let expected = [0.3125f32, 3.125, 12.5, 0.0, 2.5];
    for (weight, expected_weight) in balanced.iter().zip(expected) {
        assert!((weight - expected_weight).abs() < 1e-6, "{balanced:?}");
    }
    let sqrt = class_weights(&counts, ClassWeighting::Sqrt);
    assert!((sqrt[2] - 12.5f32.sqrt()).abs() < 1e-6);
    assert_eq!(sqrt[3], 0.0);
    assert_eq!(class_weights(&counts, ClassWeighting::None), vec![1.0; 5]);
    assert_eq!("SQRT".parse::<ClassWeighting>(), Ok(ClassWeighting::Sqrt));
    assert!("heavy".parse::<ClassWeighting>().is_err());
}

#[test]
fn shards_deal_classes_round_robin() {
    let labels = imbalanced_labels();
    let groups = indices_by_label(&labels, 4);
    let shards = stratified_shards(&groups, 3);
    assert_eq!(shards.len(), 3);
    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    for class in 0..4u32 {
        let per_rank: Vec<usize> = shards
            .iter()
            .map(|shard| {
                shard
                    .iter()
                    .filter(|index| labels[**index] == class)
                    .count()
            })
            .collect();
        assert!(
            per_rank.iter().max().unwrap() - per_rank.iter().min().unwrap() <= 1,
            "class {class}: {per_rank:?}"
        );
    }
    let mut all: Vec<usize> = shards.into_iter().flatten().collect();
    all.sort_unstable();
    let mut expected: Vec<usize> = groups.into_iter().flatten().collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
    assert!(stratified_shards(&indices_by_label(&labels, 4), 0).is_empty());
}
