//! Turns a job spec into a plan: label encoding, stratified split, class weights and one shard per rank.

use plankton_dataset::layout::IMAGES_ZIP;
use plankton_dataset::{
    ClassWeighting as DatasetClassWeighting, ImageSource, LabelEncoding, class_weights,
    indices_by_label, open_image_source, open_location, read_meta, stratified_shards,
    stratified_split, stratified_subsample,
};
use plankton_proto::v1::{ClassWeighting, JobSpec, ShardObject};

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::features::{JobFeatures, fit_job_features, model_uses_features};
use crate::validation::WORLD_SIZE_HARD_LIMIT;

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
/// tau of the logit-adjusted loss when the spec leaves it 0.
pub const DEFAULT_LOGIT_TAU: f32 = 1.0;
pub const KNOWN_MODELS: [&str; 5] = ["resnet", "lenet", "wide_lenet", "fusion", "gbdt"];
/// The model that is gradient-boosted trees on the native features rather than a network.
pub const GBDT_MODEL: &str = "gbdt";
/// What a `gbdt` job's `Job.training_summary` says.
pub const GBDT_TRAINING_SUMMARY: &str =
    "gradient-boosted trees (plankton-gbdt) on the native features, trained on one worker";

/// The train and test objects one rank works on.
#[derive(Clone, Debug, Default)]
pub struct RankShard {
    pub train: Vec<ShardObject>,
    pub test: Vec<ShardObject>,
}

/// How many skipped `meta.csv` rows a plan names (the rest are only counted).
pub const SKIPPED_META_ROW_EXAMPLES: usize = 5;

/// Everything the coordinator decides before handing out work.
#[derive(Clone, Debug, Default)]
pub struct JobPlan {
    pub class_names: Vec<String>,
    pub class_weights: Vec<f32>,
    pub shards: Vec<RankShard>,
    pub steps_per_epoch: u64,
    pub train_objects: u64,
    pub test_objects: u64,
    pub image_source: String,
    /// `meta.csv` rows left out (unreadable, wrong width, bad or duplicate objid).
    pub skipped_meta_rows: u64,
    /// The first [`SKIPPED_META_ROW_EXAMPLES`] of them, as `meta.csv:17: <reason>`.
    pub skipped_meta_row_examples: Vec<String>,
    /// For a model that takes native features: the transform fitted on the training split and its imputations.
    pub features: Option<JobFeatures>,
}

/// Fills defaults and refuses values that cannot work, before any data is read.
pub fn normalize_spec(mut spec: JobSpec) -> CoordinatorResult<JobSpec> {
    spec.dataset_url = spec.dataset_url.trim().to_string();
    spec.output_url = spec.output_url.trim().to_string();
    spec.init_from = spec.init_from.trim().to_string();
    if spec.dataset_url.is_empty() {
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
    if spec.model == GBDT_MODEL {
        check_gbdt_spec(&mut spec)?;
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
    if spec.loss == plankton_proto::v1::LossFunction::LogitAdjusted as i32 && spec.logit_tau == 0.0
    {
        spec.logit_tau = DEFAULT_LOGIT_TAU;
    }
    fill_fault_tolerance_defaults(&mut spec);
    Ok(spec)
}

/// Trees train on one worker in one pass: world size 1 (refused otherwise), one evaluation (`epochs` 1), and
/// class imbalance through the class weighting's sample weights (the logit-adjusted loss is for networks).
fn check_gbdt_spec(spec: &mut JobSpec) -> CoordinatorResult<()> {
    if spec.world_size != 1 {
        return Err(invalid_field(
            "spec.world_size",
            format!(
                "{}: model gbdt trains on one worker, set world_size to 1",
                spec.world_size
            ),
        ));
    }
    if spec.loss == plankton_proto::v1::LossFunction::LogitAdjusted as i32 {
        return Err(invalid_field(
            "spec.loss",
            "logit_adjusted is a network loss; model gbdt weights its samples by the class weighting".into(),
        ));
    }
    spec.epochs = 1;
    Ok(())
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

/// Reads `meta.csv`, encodes labels, splits, weights and shards. Refuses a dataset that is unreadable or has
/// fewer than two classes or a class of fewer than two objects, a `max_objects` that leaves a class without a
/// train or a test sample, and a rank's shard smaller than one batch. World and batch sizes are checked before
/// anything is read and shard sizes before they are dealt, so a refused spec allocates nothing in proportion to
/// its world size (whether or not [`crate::validation::validate_spec`] ran first).
pub async fn plan_job(spec: &JobSpec) -> CoordinatorResult<JobPlan> {
    if !(1..=WORLD_SIZE_HARD_LIMIT).contains(&spec.world_size) {
        return Err(invalid_field(
            "spec.world_size",
            format!("{} is outside 1..={WORLD_SIZE_HARD_LIMIT}", spec.world_size),
        ));
    }
    if spec.batch_size == 0 {
        return Err(invalid_field(
            "spec.batch_size",
            "must be at least 1".into(),
        ));
    }
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
    let encoding = LabelEncoding::from_records(&meta.records);
    let num_classes = encoding.classes.len();
    if num_classes < 2 {
        return Err(invalid_field(
            "spec.dataset_url",
            format!(
                "meta.csv has only 1 class ({}); training needs at least 2",
                encoding.classes.join(", ")
            ),
        ));
    }
    let image_source = match open_image_source(&location)
        .await
        .map_err(|error| dataset_error(error.to_string()))?
    {
        ImageSource::Zip(_) => IMAGES_ZIP.to_string(),
        ImageSource::Directory => "imgs/".to_string(),
    };
    let mut objids = Vec::with_capacity(meta.records.len());
    let mut labels = Vec::with_capacity(meta.records.len());
    for record in &meta.records {
        if let Some(label) = encoding.encode(record.level2.as_deref()) {
            objids.push(record.objid);
            labels.push(label);
        }
    }
    let class_sizes = count_by_label(labels.iter().copied(), num_classes);
    refuse_classes_below_two_objects(&encoding, &class_sizes)?;

    let subsampled = spec.max_objects > 0 && (spec.max_objects as usize) < labels.len();
    let selected: Vec<usize> = if subsampled {
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

    let train_counts = count_by_label(train.iter().map(|object| object.label), num_classes);
    let test_counts = count_by_label(test.iter().map(|object| object.label), num_classes);
    if let Some(missing) = classes_missing_a_sample(&encoding, &train_counts, &test_counts) {
        return Err(if subsampled {
            invalid_field(
                "spec.max_objects",
                format!(
                    "{} leaves {missing}; use at least {} (0 takes every object)",
                    spec.max_objects,
                    max_objects_giving_every_class_two(&class_sizes)
                ),
            )
        } else {
            invalid_field(
                "spec.test_fraction",
                format!("{} leaves {missing}", spec.test_fraction),
            )
        });
    }
    let weighting = match ClassWeighting::try_from(spec.class_weighting).unwrap_or_default() {
        ClassWeighting::Balanced => DatasetClassWeighting::Balanced,
        ClassWeighting::None => DatasetClassWeighting::None,
        ClassWeighting::Sqrt => DatasetClassWeighting::Sqrt,
    };
    let weights = class_weights(&train_counts, weighting);

    // Dealing round-robin makes shard sizes differ by at most one: the smallest is known before dealing.
    let world_size = spec.world_size as usize;
    let smallest_train_shard = train.len() / world_size;
    if smallest_train_shard < spec.batch_size as usize {
        return Err(invalid_field(
            "spec.batch_size",
            format!(
                "{} is larger than the smallest rank's train shard ({} objects of {} train objects over {} ranks)",
                spec.batch_size,
                smallest_train_shard,
                train.len(),
                world_size
            ),
        ));
    }
    let features = if model_uses_features(&spec.model) {
        Some(fit_job_features(&location, &spec.dataset_url, &train, &test).await?)
    } else {
        None
    };
    let train_shards = deal_stratified(&train, num_classes, world_size);
    let test_shards = deal_stratified(&test, num_classes, world_size);
    debug_assert_eq!(
        train_shards.iter().map(Vec::len).min(),
        Some(smallest_train_shard)
    );
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
        skipped_meta_row_examples: meta
            .summary
            .skipped
            .iter()
            .take(SKIPPED_META_ROW_EXAMPLES)
            .map(|skipped| truncate_chars(&skipped.to_string(), SKIPPED_META_ROW_EXAMPLE_CHARS))
            .collect(),
        features,
    })
}

/// Longest skipped-row example kept in a plan (a reason can quote a whole malformed cell).
const SKIPPED_META_ROW_EXAMPLE_CHARS: usize = 200;

/// Most class names one refusal lists.
const LISTED_CLASSES: usize = 10;

fn invalid_field(field: &str, message: String) -> CoordinatorError {
    CoordinatorError::InvalidField {
        field: field.to_string(),
        message,
    }
}

fn truncate_chars(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn count_by_label(labels: impl Iterator<Item = u32>, num_classes: usize) -> Vec<u64> {
    let mut counts = vec![0u64; num_classes];
    for label in labels {
        counts[label as usize] += 1;
    }
    counts
}

/// "class a" or "classes a, b, c" (the first [`LISTED_CLASSES`], then how many more).
fn class_list(names: &[String]) -> String {
    let listed = names
        .iter()
        .take(LISTED_CLASSES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = match names.len().saturating_sub(LISTED_CLASSES) {
        0 => String::new(),
        hidden => format!(" and {hidden} more"),
    };
    match names.len() {
        1 => format!("class {listed}"),
        _ => format!("classes {listed}{more}"),
    }
}

/// A class with a single object can never be both trained on and tested: refused, naming the classes.
fn refuse_classes_below_two_objects(
    encoding: &LabelEncoding,
    class_sizes: &[u64],
) -> CoordinatorResult<()> {
    let small: Vec<String> = class_sizes
        .iter()
        .zip(&encoding.classes)
        .filter(|(size, _)| **size < 2)
        .map(|(size, name)| format!("{name} ({size})"))
        .collect();
    if small.is_empty() {
        return Ok(());
    }
    Err(invalid_field(
        "spec.dataset_url",
        format!(
            "meta.csv has fewer than 2 objects in {}; every class needs one train and one test sample \
             (remove or merge such classes)",
            class_list(&small)
        ),
    ))
}

/// "classes a, b without a test sample and class c without a train sample", or `None` when every class has both.
fn classes_missing_a_sample(
    encoding: &LabelEncoding,
    train_counts: &[u64],
    test_counts: &[u64],
) -> Option<String> {
    let names_where = |missing: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..encoding.classes.len())
            .filter(|&class| missing(class))
            .map(|class| encoding.classes[class].clone())
            .collect()
    };
    let without_test = names_where(&|class| test_counts[class] == 0);
    let without_train = names_where(&|class| test_counts[class] > 0 && train_counts[class] == 0);
    let mut parts = Vec::new();
    if !without_test.is_empty() {
        parts.push(format!(
            "{} without a test sample",
            class_list(&without_test)
        ));
    }
    if !without_train.is_empty() {
        parts.push(format!(
            "{} without a train sample",
            class_list(&without_train)
        ));
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// A `max_objects` from which on `stratified_subsample` gives every class at least 2 objects (so the split
/// gives each a train and a test sample), for classes of `class_sizes` objects, each at least 2.
///
/// The subsample gives every class 1 object plus its share of the remaining `max - C` objects in proportion to
/// `size - 1`, rounded down (then largest remainders). The smallest class's share reaches 1 once
/// `max - C >= sum(size - 1) / (smallest - 1)`, and every larger class's share with it. Not always the least such
/// value (rounding can favour a smaller one), never more than the dataset.
pub fn max_objects_giving_every_class_two(class_sizes: &[u64]) -> u64 {
    let classes = class_sizes.len() as u64;
    let total: u64 = class_sizes.iter().sum();
    let smallest = class_sizes.iter().copied().min().unwrap_or(0);
    if smallest < 2 {
        return total;
    }
    let spare: u64 = class_sizes.iter().map(|size| size - 1).sum();
    let needed_beyond_one_each = spare.div_ceil(smallest - 1);
    (classes + needed_beyond_one_each).min(total)
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

    /// A dataset in the process-wide memory store `name` whose `meta.csv` is `meta_csv` (no images: planning
    /// reads none).
    async fn memory_dataset(name: &str, meta_csv: &str) -> String {
        let url = format!("memory://{name}/dataset");
        let location = open_location(&url).unwrap();
        location
            .put_bytes("meta.csv", prost::bytes::Bytes::from(meta_csv.to_string()))
            .await
            .unwrap();
        url
    }

    /// `meta.csv` text with `count` objects of each `(class, count)`, objids from 1.
    fn meta_csv(classes: &[(&str, usize)]) -> String {
        let mut text = String::from("objid,level2\n");
        let mut objid = 1;
        for (class, count) in classes {
            for _ in 0..*count {
                text.push_str(&format!("{objid},{class}\n"));
                objid += 1;
            }
        }
        text
    }

    fn plan_spec(dataset_url: String) -> JobSpec {
        normalize_spec(JobSpec {
            dataset_url,
            world_size: 1,
            batch_size: 1,
            ..Default::default()
        })
        .unwrap()
    }

    fn refusal(result: CoordinatorResult<JobPlan>) -> String {
        match result {
            Err(CoordinatorError::InvalidField { field, message }) => format!("{field}: {message}"),
            Err(other) => panic!("not an InvalidField error: {other}"),
            Ok(_) => panic!("planned"),
        }
    }

    #[tokio::test]
    async fn a_one_class_dataset_is_refused() {
        let url = memory_dataset("planner-one-class", &meta_csv(&[("detritus", 30)])).await;
        assert_eq!(
            refusal(plan_job(&plan_spec(url)).await),
            "spec.dataset_url: meta.csv has only 1 class (detritus); training needs at least 2"
        );
    }

    #[tokio::test]
    async fn a_class_of_one_object_is_refused() {
        let url = memory_dataset(
            "planner-singleton-class",
            &meta_csv(&[("detritus", 30), ("feces", 1), ("nauplii", 5)]),
        )
        .await;
        assert_eq!(
            refusal(plan_job(&plan_spec(url)).await),
            "spec.dataset_url: meta.csv has fewer than 2 objects in class feces (1); every class needs one \
             train and one test sample (remove or merge such classes)"
        );
    }

    #[tokio::test]
    async fn a_max_objects_leaving_a_class_without_a_test_sample_is_refused_with_a_value_that_works()
     {
        let classes = [("a", 200), ("b", 100), ("c", 3), ("d", 2)];
        let url = memory_dataset("planner-small-max-objects", &meta_csv(&classes)).await;
        let with_max = |max_objects: u32| JobSpec {
            max_objects,
            ..plan_spec(url.clone())
        };
        // 20 objects: 1 each plus 16 shared by size - 1 (199, 99, 2, 1): c and d keep 1 object, so no test sample.
        assert_eq!(
            refusal(plan_job(&with_max(20)).await),
            "spec.max_objects: 20 leaves classes c, d without a test sample; use at least 305 (0 takes every object)"
        );
        // Fewer objects than classes: the rarest classes get one each, the others none.
        assert_eq!(
            refusal(plan_job(&with_max(2)).await),
            "spec.max_objects: 2 leaves classes a, b, c, d without a test sample; use at least 305 (0 takes every \
             object)"
        );
        let sizes: Vec<u64> = classes.iter().map(|(_, count)| *count as u64).collect();
        let enough = max_objects_giving_every_class_two(&sizes) as u32;
        let plan = plan_job(&with_max(enough)).await.unwrap();
        assert_eq!(plan.test_objects + plan.train_objects, u64::from(enough));
        assert_eq!(plan.class_names, ["a", "b", "c", "d"]);
        assert!(plan.class_weights.iter().all(|weight| *weight > 0.0));
    }

    #[test]
    fn the_suggested_max_objects_gives_every_class_two_objects() {
        let cases: [&[u64]; 5] = [
            &[200, 100, 3, 2],
            &[2, 2],
            &[1000, 2],
            &[5, 7, 11, 13, 2, 3],
            &[138_439, 26_936, 14_014, 40, 12, 2],
        ];
        for sizes in cases {
            let labels: Vec<u32> = sizes
                .iter()
                .enumerate()
                .flat_map(|(class, size)| std::iter::repeat_n(class as u32, *size as usize))
                .collect();
            let suggested = max_objects_giving_every_class_two(sizes);
            assert!(suggested <= labels.len() as u64, "{sizes:?}");
            for max in suggested..(suggested + 25).min(labels.len() as u64 + 1) {
                let chosen = stratified_subsample(&labels, sizes.len(), max as usize, 7);
                let picked: Vec<u32> = chosen.iter().map(|&index| labels[index]).collect();
                let counts = count_by_label(picked.into_iter(), sizes.len());
                assert!(
                    counts.iter().all(|count| *count >= 2),
                    "{sizes:?} max {max}: {counts:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn skipped_meta_rows_are_counted_and_the_first_five_named() {
        let mut text = meta_csv(&[("a", 10), ("b", 10)]);
        text.push_str("x1,a\n21,b,extra\n5,a\n");
        for bad in 0..5 {
            text.push_str(&format!("bad{bad},b\n"));
        }
        let url = memory_dataset("planner-skipped-rows", &text).await;
        let plan = plan_job(&plan_spec(url)).await.unwrap();
        assert_eq!(plan.skipped_meta_rows, 8);
        assert_eq!(
            plan.skipped_meta_row_examples,
            [
                "meta.csv:22: objid 'x1' is not an integer",
                "meta.csv:23: expected 2 fields, found 3",
                "meta.csv:24: duplicate objid 5",
                "meta.csv:25: objid 'bad0' is not an integer",
                "meta.csv:26: objid 'bad1' is not an integer",
            ]
        );
        assert_eq!(plan.train_objects + plan.test_objects, 20);
    }

    #[tokio::test]
    async fn world_and_batch_sizes_are_refused_before_dealing_shards() {
        let spec = JobSpec {
            world_size: 4_000_000_000,
            ..plan_spec("memory://planner-never-read/dataset".into())
        };
        assert_eq!(
            refusal(plan_job(&spec).await),
            "spec.world_size: 4000000000 is outside 1..=65536"
        );
        let url = memory_dataset("planner-wide-world", &meta_csv(&[("a", 50), ("b", 50)])).await;
        let spec = JobSpec {
            world_size: 65_536,
            ..plan_spec(url)
        };
        assert_eq!(
            refusal(plan_job(&spec).await),
            "spec.batch_size: 1 is larger than the smallest rank's train shard (0 objects of 80 train objects \
             over 65536 ranks)"
        );
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
