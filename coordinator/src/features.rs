//! The native features of a job whose model takes them: reads `features_native.csv`, fits the
//! [`FeatureTransform`] on the training split only, and counts what the job's objects need imputed.

use plankton_dataset::{FeatureTransform, StoreLocation, read_features};
use plankton_proto::v1::{FeatureImputation, ShardObject};
use tracing::info;

use crate::error::{CoordinatorError, CoordinatorResult};

/// Models that take the transformed native features (the transform travels in their assignments).
pub const MODELS_WITH_FEATURES: [&str; 2] = ["fusion", "gbdt"];

/// Whether `model` (a normalised spec's model name) takes native features.
pub fn model_uses_features(model: &str) -> bool {
    MODELS_WITH_FEATURES.contains(&model)
}

/// The fitted transform, serialised as the assignment carries it, and what it imputes over the job.
#[derive(Clone, Debug, Default)]
pub struct JobFeatures {
    pub transform_json: String,
    pub imputation: FeatureImputation,
}

/// Reads the feature table of `location`, fits the transform on `train` (test objects never move it) and counts
/// the imputations over `train` and `test`. The fit and the counting run on the blocking pool.
pub async fn fit_job_features(
    location: &StoreLocation,
    dataset_url: &str,
    train: &[ShardObject],
    test: &[ShardObject],
) -> CoordinatorResult<JobFeatures> {
    let dataset_error = |message: String| CoordinatorError::Dataset {
        url: dataset_url.to_string(),
        message,
    };
    let table = read_features(location)
        .await
        .map_err(|error| dataset_error(format!("the model takes native features: {error}")))?;
    if table.columns.is_empty() {
        return Err(dataset_error(
            "features_native.csv has no feature column".to_string(),
        ));
    }
    let train_objids: Vec<i64> = train.iter().map(|object| object.objid).collect();
    let all_objids: Vec<i64> = train
        .iter()
        .chain(test)
        .map(|object| object.objid)
        .collect();
    let fitted = tokio::task::spawn_blocking(move || {
        let (transform, _) = FeatureTransform::fit_on_split(&table, &train_objids);
        let counts = transform.count_imputations(&table, &all_objids);
        let skipped_rows = table.summary.skipped.len() as u64;
        (transform, counts, skipped_rows)
    })
    .await;
    let (transform, counts, skipped_feature_rows) =
        fitted.map_err(|error| dataset_error(format!("fitting the feature transform: {error}")))?;
    let imputation = FeatureImputation {
        objects: counts.objects,
        objects_without_row: counts.objects_without_row,
        imputed_values: counts.imputed_values(),
        imputed_by_column: counts
            .imputed_columns(&transform.input_columns)
            .into_iter()
            .map(|(column, count)| (column.to_string(), count))
            .collect(),
        input_columns: transform.input_columns.len() as u32,
        transformed_width: transform.output_width() as u32,
        dropped_columns: transform
            .dropped
            .iter()
            .map(|dropped| format!("{}: {}", dropped.column, dropped.reason))
            .collect(),
        skipped_feature_rows,
    };
    info!(
        dataset_url,
        fitted_rows = transform.fitted_rows,
        width = imputation.transformed_width,
        objects_without_row = imputation.objects_without_row,
        imputed_values = imputation.imputed_values,
        "feature transform fitted on the training split"
    );
    let transform_json = serde_json::to_string(&transform)
        .map_err(|error| dataset_error(format!("serialising the feature transform: {error}")))?;
    Ok(JobFeatures {
        transform_json,
        imputation,
    })
}
