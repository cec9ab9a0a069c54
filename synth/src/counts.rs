//! Class counts: the reference imbalance, scaled to any dataset size by largest remainder.

use plankton_dataset::layout::{REFERENCE_CLASS_COUNTS, REFERENCE_UNLABELED, UNLABELED_CLASS};

use crate::SynthError;

/// Classes generated: the 39 named `level2` classes plus [`UNLABELED_CLASS`].
pub const CLASS_COUNT: usize = REFERENCE_CLASS_COUNTS.len() + 1;
/// Every class gets at least this many objects, so it can appear in both train and test.
const MINIMUM_PER_CLASS: u64 = 2;
/// The smallest dataset [`class_counts`] accepts.
pub const MINIMUM_OBJECTS: u64 = MINIMUM_PER_CLASS * CLASS_COUNT as u64;

/// The name of class `class_index` (reference order, [`UNLABELED_CLASS`] last), if it exists.
pub fn class_name(class_index: usize) -> Option<&'static str> {
    match REFERENCE_CLASS_COUNTS.get(class_index) {
        Some((name, _)) => Some(name),
        None if class_index == REFERENCE_CLASS_COUNTS.len() => Some(UNLABELED_CLASS),
        None => None,
    }
}

fn reference_count(class_index: usize) -> u64 {
    REFERENCE_CLASS_COUNTS
        .get(class_index)
        .map_or(REFERENCE_UNLABELED, |(_, count)| *count)
}

/// Objects per class for a dataset of `total` objects, in reference order with [`UNLABELED_CLASS`] last.
///
/// At the reference size (243,610) these are exactly the reference counts. Otherwise each class gets
/// its proportional share (largest-remainder rounding) and at least 2 objects; classes whose share
/// falls below 2 are pinned at 2 and the rest share what remains. The counts always sum to `total`.
pub fn class_counts(total: u64) -> Result<Vec<(String, u64)>, SynthError> {
    if total < MINIMUM_OBJECTS {
        return Err(SynthError::TooFewObjects {
            requested: total,
            minimum: MINIMUM_OBJECTS,
        });
    }
    let mut pinned = [false; CLASS_COUNT];
    loop {
        let pinned_classes = pinned.iter().filter(|is_pinned| **is_pinned).count() as u64;
        let remaining_objects = u128::from(total - pinned_classes * MINIMUM_PER_CLASS);
        let free_weight: u128 = (0..CLASS_COUNT)
            .filter(|class_index| !pinned[*class_index])
            .map(|class_index| u128::from(reference_count(class_index)))
            .sum();
        let mut newly_pinned = false;
        for (class_index, is_pinned) in pinned.iter_mut().enumerate() {
            let share_below_minimum = remaining_objects * u128::from(reference_count(class_index))
                < u128::from(MINIMUM_PER_CLASS) * free_weight;
            if !*is_pinned && share_below_minimum {
                *is_pinned = true;
                newly_pinned = true;
            }
        }
        if newly_pinned {
            continue;
        }
        let mut counts = [0u64; CLASS_COUNT];
        let mut remainders = Vec::with_capacity(CLASS_COUNT);
        let mut assigned: u128 = 0;
        for class_index in 0..CLASS_COUNT {
            if pinned[class_index] {
                counts[class_index] = MINIMUM_PER_CLASS;
                continue;
            }
            let scaled = remaining_objects * u128::from(reference_count(class_index));
            let floor_share = scaled / free_weight;
            counts[class_index] = floor_share as u64;
            assigned += floor_share;
            remainders.push((scaled % free_weight, class_index));
        }
        // Largest remainder first; ties go to the earlier (larger reference) class.
        remainders.sort_by(|left, right| right.0.cmp(&left.0).then(left.1.cmp(&right.1)));
        let leftover = (remaining_objects - assigned) as usize;
        debug_assert!(leftover <= remainders.len());
        for (_, class_index) in remainders.iter().take(leftover) {
            counts[*class_index] += 1;
        }
        let named_and_counted = counts
            .iter()
            .enumerate()
            .map(|(class_index, count)| {
                let name = class_name(class_index).unwrap_or(UNLABELED_CLASS);
                (name.to_string(), *count)
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(
            named_and_counted
                .iter()
                .map(|(_, count)| count)
                .sum::<u64>(),
            total
        );
        return Ok(named_and_counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_dataset::layout::REFERENCE_TOTAL;

    #[test]
    fn full_scale_matches_the_reference_exactly() {
        let counts = class_counts(REFERENCE_TOTAL).unwrap();
        assert_eq!(counts.len(), 40);
        for ((name, count), (reference_name, reference)) in
            counts.iter().zip(REFERENCE_CLASS_COUNTS)
        {
            assert_eq!(name, reference_name);
            assert_eq!(*count, reference);
        }
        assert_eq!(counts[39], (UNLABELED_CLASS.to_string(), 1_003));
    }

    #[test]
    fn small_scale_is_proportional_with_two_per_class() {
        for total in [80u64, 81, 117, 200, 1_000, 5_000, 24_361, 100_000, 500_000] {
            let counts = class_counts(total).unwrap();
            assert_eq!(
                counts.iter().map(|(_, count)| count).sum::<u64>(),
                total,
                "total {total}"
            );
            assert!(
                counts.iter().all(|(_, count)| *count >= 2),
                "total {total}: {counts:?}"
            );
            // Never increasing down the reference order (the reference is sorted, unlabeled aside).
            for window in counts[..39].windows(2) {
                assert!(window[0].1 >= window[1].1, "total {total}: {counts:?}");
            }
        }
        let tenth = class_counts(24_361).unwrap();
        // Bacteriastrum (share 1.2) is pinned at 2; the rest share 24,359 in proportion.
        assert_eq!(tenth[38], ("Bacteriastrum".to_string(), 2));
        assert_eq!(tenth[0], ("detritus".to_string(), 13_843));
        for (class_index, (name, count)) in tenth.iter().enumerate().take(38) {
            let share =
                24_359.0 * reference_count(class_index) as f64 / (REFERENCE_TOTAL - 12) as f64;
            assert!(
                (*count as f64 - share).abs() < 1.0,
                "{name}: {count} vs share {share}"
            );
        }
        let doubled = class_counts(2 * REFERENCE_TOTAL).unwrap();
        assert_eq!(doubled[0].1, 2 * 138_439);
        assert_eq!(doubled[39].1, 2 * 1_003);
        let minimal = class_counts(80).unwrap();
        assert!(minimal.iter().all(|(_, count)| *count == 2));
    }

    #[test]
    fn too_few_objects_is_an_error() {
        assert!(matches!(
            class_counts(79),
            Err(SynthError::TooFewObjects {
                requested: 79,
                minimum: 80
            })
        ));
        assert!(class_counts(0).is_err());
    }

    #[test]
    fn class_names_cover_forty_classes() {
        assert_eq!(class_name(0), Some("detritus"));
        assert_eq!(class_name(39), Some(UNLABELED_CLASS));
        assert_eq!(class_name(40), None);
    }
}
