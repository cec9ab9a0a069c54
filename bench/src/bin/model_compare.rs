//! Trains the models (default `lenet`, `wide_lenet`, `resnet`, `fusion`, `gbdt`) on the same split of one dataset
//! with the same settings and prints accuracy, macro-F1, biological macro-F1 (non-living and unlabeled classes
//! left out) and balanced accuracy per epoch, side by side: how much better the default model is at equal epochs,
//! and what the native features add to the resnet (`fusion`: its transform fitted on the training split, as the
//! cluster). `gbdt` (trees on the native features under that transform, balanced sample weights) has one row.
//! A network name followed by `+logit_adjusted` (e.g. `resnet+logit_adjusted`) trains that network with the
//! logit-adjusted loss (tau 1, the training split's prior) and uniform class weights instead of the balanced
//! weighted cross-entropy.
//!
//! `cargo run --release -p plankton-bench --bin model_compare -- --dataset demo-data/dataset --epochs 4`

use std::ops::ControlFlow;
use std::time::Instant;

use clap::Parser;
use futures::StreamExt;

use plankton_coordinator::metrics::ConfusionMatrix;
use plankton_coordinator::planner::{normalize_spec, plan_job};
use plankton_preprocess::{IMAGE_LEN, PreprocessConfig, preprocess_many};
use plankton_proto::v1::{EvalMetrics, JobSpec, ShardObject};
use plankton_trainer::{
    Architecture, EpochEvaluation, LossFunction, LrSchedule, ShardData, SingleProcess,
    StepProgress, TrainConfig, TrainingObserver, run_training,
};

#[derive(Parser, Debug)]
struct Options {
    /// Dataset root URL (e.g. the demo's `demo-data/dataset`).
    #[arg(long, default_value = "demo-data/dataset")]
    dataset: String,
    #[arg(long, default_value_t = 4)]
    epochs: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// constant, cosine or step.
    #[arg(long, default_value = "constant")]
    lr_schedule: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Models to compare, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lenet,wide_lenet,resnet,fusion,gbdt"
    )]
    models: Vec<String>,
}

struct EpochLog {
    class_names: Vec<String>,
    rows: Vec<EvalMetrics>,
}

impl TrainingObserver for EpochLog {
    fn on_step(&mut self, _progress: &StepProgress) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        let mut matrix = ConfusionMatrix::zeros(self.class_names.len());
        matrix.add(&evaluation.confusion);
        self.rows
            .push(matrix.metrics(evaluation.epoch, &self.class_names, 0.0));
        ControlFlow::Continue(())
    }
}

/// The images of `objects` that could be read, with their objids (in the data's order).
async fn load(dataset: &str, objects: &[ShardObject]) -> anyhow::Result<(ShardData, Vec<i64>)> {
    let location = plankton_dataset::open_location(dataset)?;
    let source = plankton_dataset::open_image_source(&location).await?;
    let objids: Vec<i64> = objects.iter().map(|object| object.objid).collect();
    let fetched: Vec<(i64, bytes::Bytes)> =
        plankton_dataset::fetch_images(&location, &source, objids, 32)
            .filter_map(|(objid, result)| async move { result.ok().map(|bytes| (objid, bytes)) })
            .collect()
            .await;
    let labels: std::collections::HashMap<i64, u32> = objects
        .iter()
        .map(|object| (object.objid, object.label))
        .collect();
    let jpegs: Vec<&[u8]> = fetched.iter().map(|(_, bytes)| bytes.as_ref()).collect();
    let processed = preprocess_many(&jpegs, &PreprocessConfig::default());
    let mut data = ShardData {
        images: Vec::with_capacity(fetched.len() * IMAGE_LEN),
        labels: Vec::new(),
        ..ShardData::default()
    };
    let mut kept_objids = Vec::with_capacity(fetched.len());
    for ((objid, _), channels) in fetched.iter().zip(processed) {
        if let Ok(channels) = channels {
            data.images.extend_from_slice(&channels);
            data.labels.push(labels[objid]);
            kept_objids.push(*objid);
        }
    }
    Ok((data, kept_objids))
}

/// The train and test data with each image's native features, transformed as the cluster does for `fusion`:
/// the transform fitted on the training split only.
async fn with_native_features(
    dataset: &str,
    train: (&ShardData, &[i64]),
    test: (&ShardData, &[i64]),
) -> anyhow::Result<(ShardData, ShardData)> {
    let location = plankton_dataset::open_location(dataset)?;
    let table = plankton_dataset::read_features(&location).await?;
    let (transform, _) = plankton_dataset::FeatureTransform::fit_on_split(&table, train.1);
    let attach = |(data, objids): (&ShardData, &[i64])| {
        let (features, counts) = transform.transform_objects(&table, objids);
        println!(
            "fusion features: {} values per object ({} kept of {} columns, {} indicators), {} values imputed, \
             {} objects without a row",
            transform.output_width(),
            transform.kept_columns.len(),
            transform.input_columns.len(),
            transform.indicator_columns.len(),
            counts.imputed_values(),
            counts.objects_without_row
        );
        ShardData {
            features,
            feature_width: transform.output_width(),
            ..data.clone()
        }
    };
    Ok((attach(train), attach(test)))
}

/// Gradient-boosted trees on the shard's transformed native features, balanced sample weights; test metrics.
async fn train_gbdt(
    options: &Options,
    class_names: &[String],
    class_weights: &[f32],
    shard: &plankton_coordinator::planner::RankShard,
) -> anyhow::Result<EvalMetrics> {
    let location = plankton_dataset::open_location(&options.dataset)?;
    let table = plankton_dataset::read_features(&location).await?;
    let objids = |objects: &[ShardObject]| -> Vec<i64> {
        objects.iter().map(|object| object.objid).collect()
    };
    let (train_objids, test_objids) = (objids(&shard.train), objids(&shard.test));
    let (transform, _) = plankton_dataset::FeatureTransform::fit_on_split(&table, &train_objids);
    let width = transform.output_width();
    let (train_values, _) = transform.transform_objects(&table, &train_objids);
    let (test_values, _) = transform.transform_objects(&table, &test_objids);
    let labels: Vec<u32> = shard.train.iter().map(|object| object.label).collect();
    let weights: Vec<f32> = labels
        .iter()
        .map(|label| class_weights[*label as usize])
        .collect();
    let params = plankton_gbdt::GbdtParams {
        threads: options.threads,
        ..Default::default()
    };
    let train = plankton_gbdt::FeatureMatrix::new(&train_values, labels.len(), width)?;
    let model = tokio::task::block_in_place(|| {
        plankton_gbdt::GbdtModel::train(&train, &labels, &weights, class_names.len(), &params)
    })?;
    let test = plankton_gbdt::FeatureMatrix::new(&test_values, test_objids.len(), width)?;
    let predictions = model.predict_classes(&test)?;
    let classes = class_names.len();
    let mut counts = vec![0u64; classes * classes];
    for (object, predicted) in shard.test.iter().zip(predictions) {
        counts[object.label as usize * classes + predicted as usize] += 1;
    }
    let mut matrix = ConfusionMatrix::zeros(classes);
    matrix.add(&counts);
    Ok(matrix.metrics(1, class_names, 0.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let spec = normalize_spec(JobSpec {
        dataset_url: options.dataset.clone(),
        world_size: 1,
        batch_size: options.batch_size,
        ..Default::default()
    })?;
    let plan = plan_job(&spec).await?;
    let shard = &plan.shards[0];
    let (train, train_objids) = load(&options.dataset, &shard.train).await?;
    let (test, test_objids) = load(&options.dataset, &shard.test).await?;
    let fusion_data = if options
        .models
        .iter()
        .any(|model| model.starts_with("fusion"))
    {
        Some(
            with_native_features(
                &options.dataset,
                (&train, &train_objids),
                (&test, &test_objids),
            )
            .await?,
        )
    } else {
        None
    };
    println!(
        "dataset {}: {} train / {} test images, {} classes; {} epochs, batch {}, lr {}, schedule {}",
        options.dataset,
        train.labels.len(),
        test.labels.len(),
        plan.class_names.len(),
        options.epochs,
        options.batch_size,
        options.lr,
        options.lr_schedule
    );
    let mut results = Vec::new();
    for model in &options.models {
        if model == "gbdt" {
            let started = Instant::now();
            let metrics =
                train_gbdt(&options, &plan.class_names, &plan.class_weights, shard).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!("{model}: {seconds:.0}s");
            results.push((model.clone(), vec![metrics], seconds));
            continue;
        }
        let (network, logit_adjusted) = match model.strip_suffix("+logit_adjusted") {
            Some(network) => (network, true),
            None => (model.as_str(), false),
        };
        let architecture: Architecture = network
            .parse()
            .map_err(|error| anyhow::anyhow!("{model}: {error}"))?;
        let mut config = if logit_adjusted {
            let classes = plan.class_names.len();
            let mut train_counts = vec![0u64; classes];
            for label in &train.labels {
                train_counts[*label as usize] += 1;
            }
            let mut config = TrainConfig::new(classes, vec![1.0; classes]);
            config.loss = LossFunction::logit_adjusted(LossFunction::DEFAULT_TAU, &train_counts);
            config
        } else {
            TrainConfig::new(plan.class_names.len(), plan.class_weights.clone())
        };
        config.architecture = architecture;
        config.epochs = options.epochs;
        config.batch_size = options.batch_size as usize;
        config.steps_per_epoch = train.labels.len() / options.batch_size as usize;
        config.learning_rate = options.lr;
        config.lr_schedule = options
            .lr_schedule
            .parse::<LrSchedule>()
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        config.threads = options.threads;
        let mut log = EpochLog {
            class_names: plan.class_names.clone(),
            rows: Vec::new(),
        };
        let started = Instant::now();
        let (train_ref, test_ref) = match (&fusion_data, architecture.uses_features()) {
            (Some((fusion_train, fusion_test)), true) => {
                config.feature_width = fusion_train.feature_width;
                (fusion_train, fusion_test)
            }
            _ => (&train, &test),
        };
        tokio::task::block_in_place(|| {
            run_training(&config, train_ref, test_ref, &mut SingleProcess, &mut log)
        })?;
        let seconds = started.elapsed().as_secs_f64();
        println!("{model}: {seconds:.0}s");
        results.push((model.clone(), log.rows, seconds));
    }
    println!(
        "\n{:<22} {:>6} {:>9} {:>9} {:>14} {:>13} {:>12}",
        "model", "epoch", "accuracy", "macro-F1", "bio. macro-F1", "balanced acc.", "train time"
    );
    for (model, rows, seconds) in &results {
        for (index, metrics) in rows.iter().enumerate() {
            let time = if index + 1 == rows.len() {
                format!("{seconds:.0} s")
            } else {
                String::new()
            };
            println!(
                "{model:<22} {:>6} {:>9.4} {:>9.4} {:>14.4} {:>13.4} {time:>12}",
                metrics.epoch,
                metrics.accuracy,
                metrics.macro_f1,
                metrics.biological_macro_f1,
                metrics.balanced_accuracy
            );
        }
    }
    Ok(())
}
