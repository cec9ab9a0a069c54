//! The native features of a rank's objects: the [`FeatureTransform`] the coordinator fitted on the training
//! split (from the assignment), applied to rows of `features_native.csv` read from the store by the worker
//! itself, with the shard cache's feature sidecar in front. Models other than the CNNs (e.g. tree ensembles)
//! get a virtual shard's train and test matrices from [`shard_feature_matrices`].

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::OnceCell;
use tracing::info;

use plankton_dataset::layout::{FEATURES_FILE, FEATURES_GZ_FILE};
use plankton_dataset::{
    FeatureTable, FeatureTransform, ImputationCounts, StoreLocation, read_features,
};
use plankton_preprocess::ShardCache;
use plankton_proto::v1::{ShardAssignment, ShardObject, VirtualShard};

use crate::feature_cache::{self, CachedFeatures};

/// The transform an assignment carries; `None` for a model without features. A malformed transform is an error
/// naming what is wrong.
pub fn assignment_transform(
    assignment: &ShardAssignment,
) -> anyhow::Result<Option<Arc<FeatureTransform>>> {
    if assignment.feature_transform_json.is_empty() {
        return Ok(None);
    }
    let transform: FeatureTransform = serde_json::from_str(&assignment.feature_transform_json)
        .context("the assignment's feature transform is not valid JSON")?;
    transform.validate().map_err(|reason| {
        anyhow::anyhow!("the assignment's feature transform is invalid: {reason}")
    })?;
    Ok(Some(Arc::new(transform)))
}

/// Transformed features of objects of one dataset: the feature table is read from the store at most once, and
/// only when the shard cache does not already hold the objects' features.
pub struct FeatureSource {
    location: StoreLocation,
    transform: Arc<FeatureTransform>,
    transform_json: String,
    cache: Option<ShardCache>,
    table: OnceCell<Arc<FeatureTable>>,
    /// The feature file's identity in the store (for sidecar keys); `None` when it cannot be read.
    file_version: OnceCell<Option<String>>,
}

/// One split of a virtual shard as a transformed feature matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMatrix {
    pub objids: Vec<i64>,
    /// Class index of each row.
    pub labels: Vec<u32>,
    /// `objids.len() * width` values, row-major.
    pub values: Vec<f32>,
    pub width: usize,
}

/// A virtual shard's train and test feature matrices, with what their transform imputed.
#[derive(Debug, Clone, Default)]
pub struct ShardFeatureMatrices {
    pub train: FeatureMatrix,
    pub test: FeatureMatrix,
    pub imputation: ImputationCounts,
}

impl FeatureSource {
    /// Features of objects of the dataset at `location` under `transform`; `cache` holds sidecar entries.
    pub fn new(
        location: StoreLocation,
        transform: Arc<FeatureTransform>,
        cache: Option<ShardCache>,
    ) -> anyhow::Result<Self> {
        let transform_json = serde_json::to_string(transform.as_ref())?;
        Ok(FeatureSource {
            location,
            transform,
            transform_json,
            cache,
            table: OnceCell::new(),
            file_version: OnceCell::new(),
        })
    }

    /// The transform applied.
    pub fn transform(&self) -> &FeatureTransform {
        &self.transform
    }

    async fn table(&self) -> anyhow::Result<Arc<FeatureTable>> {
        self.table
            .get_or_try_init(|| async {
                let table = read_features(&self.location)
                    .await
                    .context("reading the native features")?;
                anyhow::Ok(Arc::new(table))
            })
            .await
            .cloned()
    }

    async fn file_version(&self) -> Option<String> {
        self.file_version
            .get_or_init(|| async {
                for file in [FEATURES_FILE, FEATURES_GZ_FILE] {
                    if let Ok(meta) = self.location.head(file).await {
                        return Some(format!(
                            "{file}:{}:{}:{}",
                            meta.size,
                            meta.e_tag.unwrap_or_default(),
                            meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
                        ));
                    }
                }
                None
            })
            .await
            .clone()
    }

    /// The transformed rows of `objids` (row-major, [`FeatureTransform::output_width`] each) and what was
    /// imputed; an object without a feature row is imputed and counted, never an error.
    pub async fn rows(&self, objids: &[i64]) -> anyhow::Result<(Vec<f32>, ImputationCounts)> {
        let sidecar = match (&self.cache, self.file_version().await) {
            (Some(cache), Some(version)) => Some((
                cache.dir().to_path_buf(),
                feature_cache::sidecar_key(
                    &self.location.url,
                    &version,
                    &self.transform_json,
                    objids,
                ),
            )),
            _ => None,
        };
        let width = self.transform.output_width();
        if let Some((dir, key)) = &sidecar {
            let (dir, key) = (dir.clone(), key.clone());
            let cached =
                tokio::task::spawn_blocking(move || feature_cache::load(&dir, &key)).await?;
            if let Some(cached) = cached.filter(|cached| {
                cached.width == width && cached.values.len() == objids.len() * width
            }) {
                info!(
                    objects = objids.len(),
                    "shard features loaded from the local cache"
                );
                return Ok((cached.values, cached.counts));
            }
        }
        let table = self.table().await?;
        let transform = self.transform.clone();
        let owned_objids = objids.to_vec();
        let (values, counts) =
            tokio::task::spawn_blocking(move || transform.transform_objects(&table, &owned_objids))
                .await?;
        if let Some((dir, key)) = sidecar {
            let entry = CachedFeatures {
                width,
                values: values.clone(),
                counts: counts.clone(),
            };
            let stored =
                tokio::task::spawn_blocking(move || feature_cache::store(&dir, &key, &entry))
                    .await?;
            if let Err(error) = stored {
                tracing::warn!(%error, "could not write the feature sidecar of the shard cache");
            }
        }
        if counts.objects_without_row > 0 || counts.imputed_values() > 0 {
            info!(
                objects = counts.objects,
                objects_without_row = counts.objects_without_row,
                imputed_values = counts.imputed_values(),
                "shard features imputed"
            );
        }
        Ok((values, counts))
    }

    /// The matrix of `objects` (in their order).
    pub async fn matrix(
        &self,
        objects: &[ShardObject],
    ) -> anyhow::Result<(FeatureMatrix, ImputationCounts)> {
        let objids: Vec<i64> = objects.iter().map(|object| object.objid).collect();
        let (values, counts) = self.rows(&objids).await?;
        Ok((
            FeatureMatrix {
                labels: objects.iter().map(|object| object.label).collect(),
                objids,
                values,
                width: self.transform.output_width(),
            },
            counts,
        ))
    }
}

/// A virtual shard's transformed train and test feature matrices with their labels: what a model trained on
/// the features alone needs from an assignment.
pub async fn shard_feature_matrices(
    source: &FeatureSource,
    shard: &VirtualShard,
) -> anyhow::Result<ShardFeatureMatrices> {
    let (train, train_counts) = source.matrix(&shard.train).await?;
    let (test, test_counts) = source.matrix(&shard.test).await?;
    let mut imputation = train_counts;
    imputation.merge(&test_counts);
    Ok(ShardFeatureMatrices {
        train,
        test,
        imputation,
    })
}
