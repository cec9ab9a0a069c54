//! The native-features transform fitted on a training split: median imputation, missing-value indicators,
//! z-scoring, and the reference notebook's drop of one column of each pair correlated above |0.95|.
//!
//! Fitted once (coordinator), serialised (assignment, model card) and applied identically by workers and serving.
//! Output row: the kept columns z-scored (input column order), then one 0/1 indicator per indicator column.
//! A column that is constant on the training split (std 0, e.g. never measured) is dropped: it carries no
//! information and has no z-score.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::features::FeatureTable;

/// Columns correlated above this (absolute Pearson r on the training split) lose their later member.
pub const CORRELATION_DROP_THRESHOLD: f64 = 0.95;

/// A column left out of the transform's output, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedFeature {
    pub column: String,
    pub reason: String,
}

/// The fitted transform. Everything is indexed by input column (`input_columns` order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTransform {
    /// The raw columns `apply` reads, in order (the feature file's columns, `objid` excluded).
    pub input_columns: Vec<String>,
    /// The training median of each input column (0 when a column has no value at all); imputes missing values.
    pub medians: Vec<f32>,
    /// Input columns z-scored into the output, ascending.
    pub kept_columns: Vec<usize>,
    /// Training mean of each kept column (after imputation), `kept_columns` order.
    pub means: Vec<f32>,
    /// Training standard deviation (population) of each kept column, `kept_columns` order; never 0.
    pub stds: Vec<f32>,
    /// Input columns with a missing value somewhere in the training split: each adds a 0/1 output after the
    /// z-scored ones (1 = the value was missing and imputed).
    pub indicator_columns: Vec<usize>,
    /// Columns left out (constant, or correlated with an earlier kept column).
    pub dropped: Vec<DroppedFeature>,
    /// Training rows the transform was fitted on.
    pub fitted_rows: u64,
}

/// What applying the transform had to impute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImputationCounts {
    /// Missing, NaN, infinite or unparsable values imputed, per input column.
    pub per_column: Vec<u64>,
    /// Objects that had no feature row at all (every value imputed; not counted in `per_column`).
    pub objects_without_row: u64,
    /// Rows transformed, with or without a row.
    pub objects: u64,
}

impl ImputationCounts {
    /// Counts for a transform of `columns` input columns.
    pub fn new(columns: usize) -> Self {
        ImputationCounts {
            per_column: vec![0; columns],
            ..ImputationCounts::default()
        }
    }

    /// Values imputed in rows that exist (objects without a row excluded).
    pub fn imputed_values(&self) -> u64 {
        self.per_column.iter().sum()
    }

    /// Adds `other`'s counts (same transform).
    pub fn merge(&mut self, other: &ImputationCounts) {
        if self.per_column.len() < other.per_column.len() {
            self.per_column.resize(other.per_column.len(), 0);
        }
        for (total, count) in self.per_column.iter_mut().zip(&other.per_column) {
            *total += count;
        }
        self.objects_without_row += other.objects_without_row;
        self.objects += other.objects;
    }

    /// The columns with an imputed value, most imputed first: `(column name, count)`.
    pub fn imputed_columns<'names>(&self, names: &'names [String]) -> Vec<(&'names str, u64)> {
        let mut columns: Vec<(&str, u64)> = names
            .iter()
            .zip(&self.per_column)
            .filter(|(_, count)| **count > 0)
            .map(|(name, count)| (name.as_str(), *count))
            .collect();
        columns.sort_by(|left, right| right.1.cmp(&left.1).then(left.0.cmp(right.0)));
        columns
    }
}

fn usable(value: Option<f32>) -> Option<f32> {
    value.filter(|value| value.is_finite())
}

fn median(values: &mut [f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f32::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        ((values[middle - 1] as f64 + values[middle] as f64) / 2.0) as f32
    }
}

impl FeatureTransform {
    /// Fits on the training split's rows (`columns` names the values of each row; a short row's absent values
    /// count as missing). Objects of the split without a row are not passed: they do not move the statistics.
    /// CPU-heavy on large splits (a 64 x 64 correlation over every row): run it off the async runtime.
    pub fn fit(columns: &[String], training_rows: &[&[Option<f32>]]) -> FeatureTransform {
        let column_count = columns.len();
        let value = |row: &[Option<f32>], column: usize| usable(row.get(column).copied().flatten());
        let mut medians = Vec::with_capacity(column_count);
        let mut has_missing = vec![false; column_count];
        for (column, missing) in has_missing.iter_mut().enumerate() {
            let mut present: Vec<f32> = training_rows
                .iter()
                .filter_map(|row| value(row, column))
                .collect();
            *missing = present.len() < training_rows.len();
            medians.push(median(&mut present));
        }
        // Imputed training values, column-major, in f64 for the statistics.
        let imputed: Vec<Vec<f64>> = (0..column_count)
            .map(|column| {
                training_rows
                    .iter()
                    .map(|row| value(row, column).unwrap_or(medians[column]) as f64)
                    .collect()
            })
            .collect();
        let count = training_rows.len().max(1) as f64;
        let means: Vec<f64> = imputed
            .iter()
            .map(|values| values.iter().sum::<f64>() / count)
            .collect();
        let stds: Vec<f64> = imputed
            .iter()
            .zip(&means)
            .map(|(values, mean)| {
                (values
                    .iter()
                    .map(|value| (value - mean).powi(2))
                    .sum::<f64>()
                    / count)
                    .sqrt()
            })
            .collect();
        let mut dropped = Vec::new();
        let mut kept_columns: Vec<usize> = Vec::with_capacity(column_count);
        // Relative to the magnitude, so float noise on a constant column does not count as spread; a NaN
        // spread counts as constant too.
        let constant: Vec<bool> = (0..column_count)
            .map(|column| {
                let floor = 1e-9 * means[column].abs().max(1.0);
                stds[column].partial_cmp(&floor) != Some(std::cmp::Ordering::Greater)
            })
            .collect();
        for column in 0..column_count {
            if constant[column] {
                dropped.push(DroppedFeature {
                    column: columns[column].clone(),
                    reason: "constant on the training split".to_string(),
                });
                continue;
            }
            // As the reference notebook: scanning columns in order, a column correlated above the threshold
            // with any earlier column (dropped or not) is dropped.
            let correlated_with =
                (0..column)
                    .filter(|earlier| !constant[*earlier])
                    .find(|earlier| {
                        let covariance = imputed[column]
                            .iter()
                            .zip(&imputed[*earlier])
                            .map(|(left, right)| (left - means[column]) * (right - means[*earlier]))
                            .sum::<f64>()
                            / count;
                        let correlation = covariance / (stds[column] * stds[*earlier]);
                        correlation.abs() > CORRELATION_DROP_THRESHOLD
                    });
            match correlated_with {
                Some(earlier) => dropped.push(DroppedFeature {
                    column: columns[column].clone(),
                    reason: format!(
                        "correlated above |{CORRELATION_DROP_THRESHOLD}| with '{}'",
                        columns[earlier]
                    ),
                }),
                None => kept_columns.push(column),
            }
        }
        FeatureTransform {
            input_columns: columns.to_vec(),
            medians,
            means: kept_columns
                .iter()
                .map(|column| means[*column] as f32)
                .collect(),
            stds: kept_columns
                .iter()
                .map(|column| stds[*column] as f32)
                .collect(),
            kept_columns,
            indicator_columns: (0..column_count)
                .filter(|column| has_missing[*column])
                .collect(),
            dropped,
            fitted_rows: training_rows.len() as u64,
        }
    }

    /// Fits on the rows of `table` whose objid is in `training_objids`; also says how many of those had no row.
    pub fn fit_on_split(table: &FeatureTable, training_objids: &[i64]) -> (FeatureTransform, u64) {
        let positions = table.positions_by_objid();
        let mut rows: Vec<&[Option<f32>]> = Vec::with_capacity(training_objids.len());
        let mut without_row = 0u64;
        for objid in training_objids {
            match positions.get(objid) {
                Some(position) => rows.push(&table.rows[*position].1),
                None => without_row += 1,
            }
        }
        (FeatureTransform::fit(&table.columns, &rows), without_row)
    }

    /// Length of every output row.
    pub fn output_width(&self) -> usize {
        self.kept_columns.len() + self.indicator_columns.len()
    }

    /// Names of the output values: kept column names, then `<column>_missing`.
    pub fn output_names(&self) -> Vec<String> {
        self.kept_columns
            .iter()
            .map(|column| self.input_columns[*column].clone())
            .chain(
                self.indicator_columns
                    .iter()
                    .map(|column| format!("{}_missing", self.input_columns[*column])),
            )
            .collect()
    }

    /// Transforms one object's raw values (`input_columns` order; `None`, NaN, infinity, or a value absent
    /// from a short row = missing) into an output row appended to `output`. `None` (no row for the object)
    /// imputes every value. Imputations are added to `counts` (sized for `input_columns`).
    pub fn apply_into(
        &self,
        row: Option<&[Option<f32>]>,
        counts: &mut ImputationCounts,
        output: &mut Vec<f32>,
    ) {
        if counts.per_column.len() < self.input_columns.len() {
            counts.per_column.resize(self.input_columns.len(), 0);
        }
        counts.objects += 1;
        if row.is_none() {
            counts.objects_without_row += 1;
        }
        let raw = |column: usize| -> Option<f32> {
            row.and_then(|row| usable(row.get(column).copied().flatten()))
        };
        let mut missing = vec![false; self.input_columns.len()];
        for (column, is_missing) in missing.iter_mut().enumerate() {
            *is_missing = raw(column).is_none();
            if *is_missing && row.is_some() {
                counts.per_column[column] += 1;
            }
        }
        for ((column, mean), std) in self.kept_columns.iter().zip(&self.means).zip(&self.stds) {
            let value = raw(*column).unwrap_or(self.medians[*column]);
            output.push((value - mean) / std);
        }
        for column in &self.indicator_columns {
            output.push(if missing[*column] { 1.0 } else { 0.0 });
        }
    }

    /// [`FeatureTransform::apply_into`] into a new row of [`FeatureTransform::output_width`] values.
    pub fn apply(&self, row: Option<&[Option<f32>]>, counts: &mut ImputationCounts) -> Vec<f32> {
        let mut output = Vec::with_capacity(self.output_width());
        self.apply_into(row, counts, &mut output);
        output
    }

    /// Transforms raw f32 values (`input_columns` order, NaN = missing).
    pub fn apply_raw(&self, values: &[f32], counts: &mut ImputationCounts) -> Vec<f32> {
        let row: Vec<Option<f32>> = values.iter().map(|value| Some(*value)).collect();
        self.apply(Some(&row), counts)
    }

    /// The transformed rows of `objids` from `table`, row-major (`objids.len() * output_width()` values), with
    /// what had to be imputed (objects without a row included).
    pub fn transform_objects(
        &self,
        table: &FeatureTable,
        objids: &[i64],
    ) -> (Vec<f32>, ImputationCounts) {
        let positions = table.positions_by_objid();
        let reorder = self.column_order_of(&table.columns);
        let mut counts = ImputationCounts::new(self.input_columns.len());
        let mut values = Vec::with_capacity(objids.len() * self.output_width());
        let mut reordered: Vec<Option<f32>> = vec![None; self.input_columns.len()];
        for objid in objids {
            match positions.get(objid) {
                Some(position) => {
                    let row = &table.rows[*position].1;
                    let row: &[Option<f32>] = match &reorder {
                        None => row,
                        Some(order) => {
                            for (target, source) in reordered.iter_mut().zip(order) {
                                *target =
                                    source.and_then(|source| row.get(source).copied().flatten());
                            }
                            &reordered
                        }
                    };
                    self.apply_into(Some(row), &mut counts, &mut values);
                }
                None => self.apply_into(None, &mut counts, &mut values),
            }
        }
        (values, counts)
    }

    /// What [`FeatureTransform::transform_objects`] would impute for `objids`, without building the rows.
    pub fn count_imputations(&self, table: &FeatureTable, objids: &[i64]) -> ImputationCounts {
        let positions = table.positions_by_objid();
        let reorder = self.column_order_of(&table.columns);
        let mut counts = ImputationCounts::new(self.input_columns.len());
        for objid in objids {
            counts.objects += 1;
            let Some(position) = positions.get(objid) else {
                counts.objects_without_row += 1;
                continue;
            };
            let row = &table.rows[*position].1;
            for (column, count) in counts.per_column.iter_mut().enumerate() {
                let source = match &reorder {
                    None => Some(column),
                    Some(order) => order[column],
                };
                let value = source.and_then(|source| row.get(source).copied().flatten());
                if usable(value).is_none() {
                    *count += 1;
                }
            }
        }
        counts
    }

    /// Where each input column sits in `columns`, or `None` when `columns` is already the input order.
    fn column_order_of(&self, columns: &[String]) -> Option<Vec<Option<usize>>> {
        if columns == self.input_columns.as_slice() {
            return None;
        }
        let position: HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_str(), index))
            .collect();
        Some(
            self.input_columns
                .iter()
                .map(|name| position.get(name.as_str()).copied())
                .collect(),
        )
    }

    /// Checks the invariants a deserialised transform must hold (lengths and indices), naming the first broken.
    pub fn validate(&self) -> Result<(), String> {
        let columns = self.input_columns.len();
        if self.medians.len() != columns {
            return Err(format!(
                "{} medians for {columns} input columns",
                self.medians.len()
            ));
        }
        if self.means.len() != self.kept_columns.len() || self.stds.len() != self.kept_columns.len()
        {
            return Err(format!(
                "{} means and {} stds for {} kept columns",
                self.means.len(),
                self.stds.len(),
                self.kept_columns.len()
            ));
        }
        if let Some(column) = self
            .kept_columns
            .iter()
            .chain(&self.indicator_columns)
            .find(|column| **column >= columns)
        {
            return Err(format!(
                "column index {column} is not below {columns} input columns"
            ));
        }
        if let Some(std) = self
            .stds
            .iter()
            .find(|std| !(std.is_finite() && **std > 0.0))
        {
            return Err(format!("standard deviation {std} is not positive"));
        }
        Ok(())
    }
}

impl FeatureTable {
    /// The position in `rows` of each objid.
    pub fn positions_by_objid(&self) -> HashMap<i64, usize> {
        self.rows
            .iter()
            .enumerate()
            .map(|(position, (objid, _))| (*objid, position))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::parse_features_csv;

    fn names(columns: &[&str]) -> Vec<String> {
        columns.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn fitted_on_the_training_split_only() {
        let csv = "objid,a,b\n1,1,10\n2,2,30\n3,3,20\n4,4,50\n5,1000,-7\n6,-1000,99\n";
        let table = parse_features_csv("features_native.csv", csv.as_bytes()).unwrap();
        let (fitted, without_row) = FeatureTransform::fit_on_split(&table, &[1, 2, 3, 4]);
        assert_eq!(without_row, 0);
        // Test rows 5 and 6 changed wildly: the transform does not move.
        let changed = "objid,a,b\n1,1,10\n2,2,30\n3,3,20\n4,4,50\n5,-3,1e9\n6,,nan\n";
        let changed_table = parse_features_csv("features_native.csv", changed.as_bytes()).unwrap();
        let (refitted, _) = FeatureTransform::fit_on_split(&changed_table, &[1, 2, 3, 4]);
        assert_eq!(fitted, refitted);
        assert_eq!(fitted.medians, vec![2.5, 25.0]);
        assert!((fitted.means[0] - 2.5).abs() < 1e-6);
        assert!(fitted.indicator_columns.is_empty());
        // Fitting on all rows does change it.
        let (all_rows, _) = FeatureTransform::fit_on_split(&table, &[1, 2, 3, 4, 5, 6]);
        assert_ne!(fitted, all_rows);
    }

    #[test]
    fn missing_nan_and_non_numeric_values_are_imputed_and_counted() {
        let csv = "objid,a,b\n1,1,10\n2,,30\n3,3,abc\n4,5,20\n";
        let table = parse_features_csv("features_native.csv", csv.as_bytes()).unwrap();
        let (transform, _) = FeatureTransform::fit_on_split(&table, &[1, 2, 3, 4]);
        assert_eq!(transform.medians, vec![3.0, 20.0]);
        // Both columns had a missing value in training: one indicator each.
        assert_eq!(transform.indicator_columns, vec![0, 1]);
        assert_eq!(transform.output_width(), 4);
        let (values, counts) = transform.transform_objects(&table, &[1, 2, 3, 4]);
        assert_eq!(values.len(), 16);
        assert_eq!(transform.count_imputations(&table, &[1, 2, 3, 4]), counts);
        assert_eq!(counts.per_column, vec![1, 1]);
        assert_eq!(counts.objects_without_row, 0);
        // Object 2's 'a' is the median 3 -> z-score of 3, indicator 1.
        let row_2 = &values[4..8];
        assert!((row_2[0] - (3.0 - transform.means[0]) / transform.stds[0]).abs() < 1e-6);
        assert_eq!(&row_2[2..], &[1.0, 0.0]);
        // Raw f32 input: NaN and infinity are missing too.
        let mut counts = ImputationCounts::new(2);
        let row = transform.apply_raw(&[f32::NAN, f32::INFINITY], &mut counts);
        assert_eq!(counts.per_column, vec![1, 1]);
        assert_eq!(&row[2..], &[1.0, 1.0]);
        assert!(row.iter().all(|value| value.is_finite()));
    }

    #[test]
    fn an_object_without_a_feature_row_is_imputed_and_counted() {
        let csv = "objid,a,b\n1,1,10\n2,2,30\n3,4,20\n";
        let table = parse_features_csv("features_native.csv", csv.as_bytes()).unwrap();
        let (transform, without_row) = FeatureTransform::fit_on_split(&table, &[1, 2, 3, 99]);
        assert_eq!(without_row, 1);
        let (values, counts) = transform.transform_objects(&table, &[2, 77]);
        assert_eq!(transform.count_imputations(&table, &[2, 77]), counts);
        assert_eq!(counts.objects_without_row, 1);
        assert_eq!(counts.objects, 2);
        assert_eq!(counts.imputed_values(), 0);
        let row_77 = &values[transform.output_width()..];
        for (position, column) in transform.kept_columns.iter().enumerate() {
            let expected =
                (transform.medians[*column] - transform.means[position]) / transform.stds[position];
            assert!((row_77[position] - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn one_of_each_highly_correlated_pair_and_constant_columns_are_dropped() {
        let columns = names(&["a", "twice_a", "noise", "constant", "minus_a"]);
        let rows: Vec<Vec<Option<f32>>> = (0..20)
            .map(|index| {
                let a = index as f32;
                let noise = ((index * 7919) % 13) as f32;
                vec![
                    Some(a),
                    Some(2.0 * a + 1.0),
                    Some(noise),
                    Some(5.0),
                    Some(-a),
                ]
            })
            .collect();
        let borrowed: Vec<&[Option<f32>]> = rows.iter().map(Vec::as_slice).collect();
        let transform = FeatureTransform::fit(&columns, &borrowed);
        assert_eq!(transform.kept_columns, vec![0, 2]);
        let dropped: Vec<&str> = transform
            .dropped
            .iter()
            .map(|drop| drop.column.as_str())
            .collect();
        assert_eq!(dropped, vec!["twice_a", "constant", "minus_a"]);
        assert!(
            transform.dropped[0].reason.contains("'a'"),
            "{:?}",
            transform.dropped
        );
        assert_eq!(transform.output_names(), vec!["a", "noise"]);
        transform.validate().unwrap();
        // Every output value of the training rows is z-scored: mean ~0, std ~1.
        let mut counts = ImputationCounts::new(5);
        let outputs: Vec<Vec<f32>> = borrowed
            .iter()
            .map(|row| transform.apply(Some(row), &mut counts))
            .collect();
        let mean: f32 = outputs.iter().map(|row| row[0]).sum::<f32>() / 20.0;
        let variance: f32 = outputs.iter().map(|row| row[0] * row[0]).sum::<f32>() / 20.0;
        assert!(mean.abs() < 1e-5 && (variance - 1.0).abs() < 1e-4);
    }

    #[test]
    fn round_trips_through_json_and_reorders_columns_by_name() {
        let csv = "objid,a,b\n1,1,10\n2,2,30\n3,4,20\n";
        let table = parse_features_csv("features_native.csv", csv.as_bytes()).unwrap();
        let (transform, _) = FeatureTransform::fit_on_split(&table, &[1, 2, 3]);
        let json = serde_json::to_string(&transform).unwrap();
        assert_eq!(
            serde_json::from_str::<FeatureTransform>(&json).unwrap(),
            transform
        );
        let swapped = "objid,b,a\n1,10,1\n2,30,2\n3,20,4\n";
        let swapped_table = parse_features_csv("features_native.csv", swapped.as_bytes()).unwrap();
        assert_eq!(
            transform.transform_objects(&table, &[1, 2, 3]).0,
            transform.transform_objects(&swapped_table, &[1, 2, 3]).0
        );
    }
}
