//! Evaluation metrics from a summed confusion matrix: accuracy, macro/weighted F1, biological macro-F1, balanced
//! accuracy, per class.

use plankton_dataset::layout::is_biological_class;
use plankton_proto::v1::{ClassMetrics, EvalMetrics};

/// A square confusion matrix, row-major `[true][predicted]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn zeros(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Adds another rank's matrix; `None` when its shape differs.
    pub fn add(&mut self, rank_counts: &[u64]) -> Option<()> {
        if rank_counts.len() != self.counts.len() {
            return None;
        }
        for (total, count) in self.counts.iter_mut().zip(rank_counts) {
            *total += count;
        }
        Some(())
    }

    pub fn count(&self, true_class: usize, predicted_class: usize) -> u64 {
        self.counts[true_class * self.num_classes + predicted_class]
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Metrics as scikit-learn computes them (`zero_division=0`); macro averages run over classes with support
    /// or predictions, as `f1_score(average='macro')` does over the labels present. The biological macro-F1
    /// averages the same per-class F1 over the present classes whose name [`is_biological_class`].
    pub fn metrics(&self, epoch: u32, class_names: &[String], test_loss: f64) -> EvalMetrics {
        let n = self.num_classes;
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..n).map(|class| self.count(class, class)).sum();
        let mut per_class = Vec::with_capacity(n);
        let (mut macro_f1_sum, mut weighted_f1_sum, mut recall_sum) = (0.0, 0.0, 0.0);
        let (mut labels_present, mut classes_with_support) = (0usize, 0usize);
        let (mut biological_f1_sum, mut biological_present) = (0.0, 0usize);
        for class in 0..n {
            let true_positive = self.count(class, class) as f64;
            let support: u64 = (0..n).map(|predicted| self.count(class, predicted)).sum();
            let predicted: u64 = (0..n).map(|truth| self.count(truth, class)).sum();
            let precision = ratio(true_positive, predicted as f64);
            let recall = ratio(true_positive, support as f64);
            let f1 = ratio(2.0 * precision * recall, precision + recall);
            let class_name = class_names
                .get(class)
                .cloned()
                .unwrap_or_else(|| format!("class {class}"));
            if support > 0 || predicted > 0 {
                labels_present += 1;
                macro_f1_sum += f1;
                if is_biological_class(&class_name) {
                    biological_present += 1;
                    biological_f1_sum += f1;
                }
            }
            if support > 0 {
                classes_with_support += 1;
                recall_sum += recall;
                weighted_f1_sum += f1 * support as f64;
            }
            per_class.push(ClassMetrics {
                class_name,
                precision,
                recall,
                f1,
                support,
            });
        }
        EvalMetrics {
            epoch,
            accuracy: ratio(correct as f64, total as f64),
            macro_f1: ratio(macro_f1_sum, labels_present as f64),
            weighted_f1: ratio(weighted_f1_sum, total as f64),
            balanced_accuracy: ratio(recall_sum, classes_with_support as f64),
            test_loss,
            per_class,
            num_classes: n as u32,
            confusion: self.counts.clone(),
            // The trainers' mean step loss, which the confusion matrix does not know: set by the caller.
            train_loss: 0.0,
            biological_macro_f1: ratio(biological_f1_sum, biological_present as f64),
            biological_classes: biological_present as u32,
        }
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn matches_sklearn_on_a_known_matrix() {
        // y_true = [0,0,0,1,1,2], y_pred = [0,0,1,1,2,2]
        // sklearn: accuracy 4/6, f1 per class [0.8, 0.5, 0.6667], macro 0.6556, weighted 0.6778, balanced 0.7222
        let mut matrix = ConfusionMatrix::zeros(3);
        matrix.add(&[2, 1, 0, 0, 1, 1, 0, 0, 1]).unwrap();
        let metrics = matrix.metrics(1, &names(3), 0.0);
        assert!((metrics.accuracy - 4.0 / 6.0).abs() < 1e-9);
        assert!((metrics.per_class[0].f1 - 0.8).abs() < 1e-9);
        assert!((metrics.per_class[1].f1 - 0.5).abs() < 1e-9);
        assert!((metrics.per_class[2].f1 - 2.0 / 3.0).abs() < 1e-9);
        assert!((metrics.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-9);
        assert!((metrics.weighted_f1 - (0.8 * 3.0 + 0.5 * 2.0 + 2.0 / 3.0) / 6.0).abs() < 1e-9);
        assert!((metrics.balanced_accuracy - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-9);
    }

    /// Classes 0 (detritus) and 3 (unlabeled) are left out of the biological average, not of the macro one.
    #[test]
    fn biological_macro_f1_leaves_out_non_living_and_unlabeled_classes() {
        let class_names: Vec<String> = ["detritus", "Copepoda", "Neoceratium", "(unlabeled)"]
            .map(str::to_string)
            .to_vec();
        let mut matrix = ConfusionMatrix::zeros(4);
        // detritus always right; Copepoda 1 of 2 right (the other taken for detritus); Neoceratium right;
        // the unlabeled object taken for Neoceratium.
        #[rustfmt::skip]
        matrix.add(&[
            3, 0, 0, 0,
            1, 1, 0, 0,
            0, 0, 1, 0,
            0, 0, 1, 0,
        ]).unwrap();
        let metrics = matrix.metrics(1, &class_names, 0.0);
        let f1 = |class: usize| metrics.per_class[class].f1;
        assert!((f1(1) - 2.0 / 3.0).abs() < 1e-9 && (f1(2) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(metrics.biological_classes, 2);
        assert!((metrics.biological_macro_f1 - 2.0 / 3.0).abs() < 1e-9);
        let all = (f1(0) + f1(1) + f1(2) + f1(3)) / 4.0;
        assert!((metrics.macro_f1 - all).abs() < 1e-9);
    }

    #[test]
    fn sums_ranks_and_rejects_wrong_shapes() {
        let mut matrix = ConfusionMatrix::zeros(2);
        matrix.add(&[1, 0, 0, 1]).unwrap();
        matrix.add(&[1, 1, 0, 0]).unwrap();
        assert_eq!(matrix.counts(), &[2, 1, 0, 1]);
        assert!(matrix.add(&[1, 2, 3]).is_none());
    }

    #[test]
    fn classes_absent_everywhere_do_not_drag_macro_f1() {
        let mut matrix = ConfusionMatrix::zeros(3);
        matrix.add(&[5, 0, 0, 0, 5, 0, 0, 0, 0]).unwrap();
        let metrics = matrix.metrics(0, &names(3), 0.0);
        assert!((metrics.macro_f1 - 1.0).abs() < 1e-9);
    }
}
