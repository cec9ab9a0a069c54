//! Turns a job spec into a plan: label encoding, stratified split, class weights and one shard per rank.

use plankton_dataset::layout::IMAGES_ZIP;
use plankton_dataset::{
    ClassWeighting as DatasetClassWeighting, ImageSource, LabelEncoding, class_weights,
    indices_by_label, open_image_source, open_location, read_meta, stratified_shards,
    stratified_split, stratified_subsample,
};
use plankton_proto::v1::{ClassWeighting, JobSpec, ShardObject};

use crate::error::{CoordinatorError, CoordinatorResult};

/// Defaults applied to zero-valued fields of a submitted spec.
pub const DEFAULT_MODEL: &str = "resnet";
pub const DEFAULT_EPOCHS: u32 = 5;
pub const DEFAULT_BATCH_SIZE: u32 = 64;
pub const DEFAULT_LEARNING_RATE: f32 = 1e-3;
pub const DEFAULT_TEST_FRACTION: f32 = 0.2;
pub const DEFAULT_SEED: u64 = 42;
pub const DEFAULT_MIN_WORKERS: u32 = 1;
pub const DEFAULT_MAX_RECOVERIES: u32 = 10;
pub const DEFAULT_KEEP_CHECKPOINTS: u32 = 2;
pub const KNOWN_MODELS: [&str; 2] = ["resnet", "lenet"];

/// The train and test objects one rank works on.
#[derive(Clone, Debug, Default)]
pub struct RankShard {
    pub train: Vec<ShardObject>,
    pub test: Vec<ShardObject>,
}

/// Everything the coordinator decides before handing out work.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub class_names: Vec<String>,
    pub class_weights: Vec<f32>,
    pub shards: Vec<RankShard>,
    pub steps_per_epoch: u64,
    pub train_objects: u64,
    pub test_objects: u64,
    pub image_source: String,
    pub skipped_meta_rows: u64,
}

/// Fills defaults and refuses values that cannot work, before any data is read.
pub fn normalize_spec(mut spec: JobSpec) -> CoordinatorResult<JobSpec> {
    if spec.dataset_url.trim().is_empty() {
        return Err(CoordinatorError::InvalidSpec("dataset_url is empty".into()));
    }
    if spec.world_size == 0 {
        return Err(CoordinatorError::InvalidSpec(
            "world_size must be at least 1".into(),
        ));
    }
    if spec.model.is_empty() {
        spec.model = DEFAULT_MODEL.into();
    }
    spec.model = spec.model.to_ascii_lowercase();
    if !KNOWN_MODELS.contains(&spec.model.as_str()) {
        return Err(CoordinatorError::InvalidSpec(format!(
            "unknown model {:?}; known models: {}",
            spec.model,
            KNOWN_MODELS.join(", ")
        )));
    }
    if spec.epochs == 0 {
        spec.epochs = DEFAULT_EPOCHS;
    }
    if spec.batch_size == 0 {
        spec.batch_size = DEFAULT_BATCH_SIZE;
    }
    if spec.learning_rate == 0.0 {
        spec.learning_rate = DEFAULT_LEARNING_RATE;
    }
    if !(spec.learning_rate.is_finite() && spec.learning_rate > 0.0) {
        return Err(CoordinatorError::InvalidSpec(format!(
            "learning_rate {} must be positive",
            spec.learning_rate
        )));
    }
    if spec.test_fraction == 0.0 {
        spec.test_fraction = DEFAULT_TEST_FRACTION;
    }
    if !(spec.test_fraction > 0.0 && spec.test_fraction < 1.0) {
        return Err(CoordinatorError::InvalidSpec(format!(
            "test_fraction {} must be in (0, 1)",
            spec.test_fraction
        )));
    }
    if spec.seed == 0 {
        spec.seed = DEFAULT_SEED;
    }
    fill_fault_tolerance_defaults(&mut spec);
    Ok(spec)
}

/// Gives the fault-tolerance fields left at 0 their defaults (also applied to jobs read back from the store),
/// so every consumer reads the spec as it is.
pub fn fill_fault_tolerance_defaults(spec: &mut JobSpec) {
    if spec.min_workers == 0 {
        spec.min_workers = DEFAULT_MIN_WORKERS;
    }
    if spec.max_recoveries == 0 {
        spec.max_recoveries = DEFAULT_MAX_RECOVERIES;
    }
    if spec.keep_checkpoints == 0 {
        spec.keep_checkpoints = DEFAULT_KEEP_CHECKPOINTS;
    }
}

/// Reads `meta.csv`, encodes labels, splits, weights and shards. Fails when the dataset is unreadable or a
/// rank's shard would be smaller than one batch.
pub async fn plan_job(spec: &JobSpec) -> CoordinatorResult<JobPlan> {
    let dataset_error = |message: String| CoordinatorError::Dataset {
        url: spec.dataset_url.clone(),
        message,
    };
    let location =
        open_location(&spec.dataset_url).map_err(|error| dataset_error(error.to_string()))?;
    let meta = read_meta(&location)
        .await
        .map_err(|error| dataset_error(error.to_string()))?;
    if meta.records.is_empty() {
        return Err(dataset_error("meta.csv has no readable rows".into()));
    }
    let image_source = match open_image_source(&location)
        .await
        .map_err(|error| dataset_error(error.to_string()))?
    {
        ImageSource::Zip(_) => IMAGES_ZIP.to_string(),
        ImageSource::Directory => "imgs/".to_string(),
    };
    let encoding = LabelEncoding::from_records(&meta.records);
    let num_classes = encoding.classes.len();
    let mut objids = Vec::with_capacity(meta.records.len());
    let mut labels = Vec::with_capacity(meta.records.len());
    for record in &meta.records {
        if let Some(label) = encoding.encode(record.level2.as_deref()) {
            objids.push(record.objid);
            labels.push(label);
        }
    }
    let selected: Vec<usize> = if spec.max_objects > 0 && (spec.max_objects as usize) < labels.len()
    {
        stratified_subsample(&labels, num_classes, spec.max_objects as usize, spec.seed)
    } else {
        (0..labels.len()).collect()
    };
    let selected_labels: Vec<u32> = selected.iter().map(|&index| labels[index]).collect();
    let (train_positions, test_positions) = stratified_split(
        &selected_labels,
        num_classes,
        f64::from(spec.test_fraction),
        spec.seed,
    );

    let to_objects = |positions: &[usize]| -> Vec<ShardObject> {
        positions
            .iter()
            .map(|&position| {
                let index = selected[position];
                ShardObject {
                    objid: objids[index],
                    label: labels[index],
                }
            })
            .collect()
    };
    let train = to_objects(&train_positions);
    let test = to_objects(&test_positions);

    let mut train_counts = vec![0u64; num_classes];
    for object in &train {
        train_counts[object.label as usize] += 1;
    }
    let weighting = match ClassWeighting::try_from(spec.class_weighting).unwrap_or_default() {
        ClassWeighting::Balanced => DatasetClassWeighting::Balanced,
        ClassWeighting::None => DatasetClassWeighting::None,
        ClassWeighting::Sqrt => DatasetClassWeighting::Sqrt,
    };
    let weights = class_weights(&train_counts, weighting);

    let world_size = spec.world_size as usize;
    let train_shards = deal_stratified(&train, num_classes, world_size);
    let test_shards = deal_stratified(&test, num_classes, world_size);
    let smallest_train_shard = train_shards.iter().map(Vec::len).min().unwrap_or(0);
    if smallest_train_shard < spec.batch_size as usize {
        return Err(CoordinatorError::InvalidSpec(format!(
            "batch_size {} is larger than the smallest rank's train shard ({} objects of {} train objects over {} ranks)",
            spec.batch_size,
            smallest_train_shard,
            train.len(),
            world_size
        )));
    }
    let shards = train_shards
        .into_iter()
        .zip(test_shards)
        .map(|(train, test)| RankShard { train, test })
        .collect();
    Ok(JobPlan {
        class_names: encoding.classes.clone(),
        class_weights: weights,
        shards,
        steps_per_epoch: (smallest_train_shard / spec.batch_size as usize) as u64,
        train_objects: train.len() as u64,
        test_objects: test.len() as u64,
        image_source,
        skipped_meta_rows: meta.summary.skipped.len() as u64,
    })
}

/// Deals each class's objects round-robin over the ranks, continuing where the previous class stopped, so every
/// rank sees every class in proportion and shard sizes differ by at most one.
pub fn deal_stratified(
    objects: &[ShardObject],
    num_classes: usize,
    world_size: usize,
) -> Vec<Vec<ShardObject>> {
    let labels: Vec<u32> = objects.iter().map(|object| object.label).collect();
    stratified_shards(&indices_by_label(&labels, num_classes), world_size)
        .into_iter()
        .map(|shard| shard.into_iter().map(|index| objects[index]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dealing_is_balanced_and_stratified() {
        let objects: Vec<ShardObject> = (0..103)
            .map(|i| ShardObject {
                objid: i,
                label: if i < 90 { 0 } else { 1 },
            })
            .collect();
        let shards = deal_stratified(&objects, 2, 4);
        let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        for shard in &shards {
            let rare = shard.iter().filter(|object| object.label == 1).count();
            assert!(
                (3..=4).contains(&rare),
                "rare class spread unevenly: {rare}"
            );
        }
        let mut all: Vec<i64> = shards.iter().flatten().map(|object| object.objid).collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
    }

    #[test]
    fn bad_specs_are_refused_with_reasons() {
        let spec = JobSpec {
            dataset_url: "memory://x".into(),
            world_size: 0,
            ..Default::default()
        };
        assert!(
            normalize_spec(spec)
                .unwrap_err()
                .to_string()
                .contains("world_size")
        );
        let spec = JobSpec {
            dataset_url: "memory://x".into(),
            world_size: 1,
            model: "vgg99".into(),
            ..Default::default()
        };
        assert!(
            normalize_spec(spec)
                .unwrap_err()
                .to_string()
                .contains("unknown model")
        );
        let spec = JobSpec {
            dataset_url: "memory://x".into(),
            world_size: 2,
            ..Default::default()
        };
        let normalized = normalize_spec(spec).unwrap();
        assert_eq!(
            (
                normalized.model.as_str(),
                normalized.epochs,
                normalized.seed
            ),
            ("resnet", DEFAULT_EPOCHS, 42)
        );
    }
}
