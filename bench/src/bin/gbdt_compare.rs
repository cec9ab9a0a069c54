//! Gradient-boosted trees on the native features: plankton-gbdt against XGBoost (`hist`, `multi:softprob`,
//! `bench/python/xgb_train.py`) on the same synthetic dataset, stratified split (the cluster's planner), feature
//! rows and balanced sample weights, with the same rounds, depth, rate, bins and threads. Prints macro-F1,
//! biological macro-F1, accuracy, balanced accuracy and train time side by side, with ours / XGBoost ratios.
//!
//! `make bench-gbdt` (`scripts/setup-bench.sh`, then `cargo run --release -p plankton-bench --bin gbdt_compare`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use plankton_bench::{bench_python, ensure_synthetic_dataset};
use plankton_coordinator::metrics::ConfusionMatrix;
use plankton_coordinator::planner::{normalize_spec, plan_job};
use plankton_dataset::{FeatureTable, FeatureTransform};
use plankton_gbdt::{FeatureMatrix, GbdtModel, GbdtParams};
use plankton_proto::v1::{EvalMetrics, JobSpec};
use plankton_tests::workspace_root;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum FeatureRows {
    /// The 64 raw values, NaN where missing (both libraries learn where missing values go).
    Raw,
    /// The cluster's fitted transform (median imputation + missing indicators, z-score, |r| > 0.95 dropped).
    Transformed,
}

#[derive(Parser, Debug)]
#[command(
    about = "plankton-gbdt vs XGBoost on the native features: macro-F1, accuracy, train time"
)]
struct Options {
    /// Folder of the synthetic dataset (generated when it has no meta.csv).
    #[arg(long, default_value = "target/gbdt-data")]
    dataset: PathBuf,
    /// Objects generated and the generator's seed.
    #[arg(long, default_value_t = 12_000)]
    count: u64,
    #[arg(long, default_value_t = 42)]
    dataset_seed: u64,
    /// Split seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum, default_value = "raw")]
    features: FeatureRows,
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    #[arg(long, default_value_t = 6)]
    max_depth: usize,
    #[arg(long, default_value_t = 0.1)]
    eta: f32,
    #[arg(long, default_value_t = 256)]
    max_bins: u16,
    /// Threads of each side.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Best of this many runs of each side (train time; the models are deterministic).
    #[arg(long, default_value_t = 1)]
    repeats: usize,
}

/// One side's result.
struct Outcome {
    metrics: EvalMetrics,
    train_seconds: f64,
}

fn main() -> Result<()> {
    let options = Options::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(options))
}

/// Row-major rows of `objids` and the number of values per row.
fn feature_rows(
    table: &FeatureTable,
    transform: Option<&FeatureTransform>,
    objids: &[i64],
) -> (Vec<f32>, usize) {
    match transform {
        Some(transform) => (
            transform.transform_objects(table, objids).0,
            transform.output_width(),
        ),
        None => {
            let width = table.columns.len();
            let positions = table.positions_by_objid();
            let mut values = Vec::with_capacity(objids.len() * width);
            for objid in objids {
                match positions.get(objid) {
                    Some(&position) => {
                        let row = &table.rows[position].1;
                        values.extend((0..width).map(|column| {
                            row.get(column)
                                .copied()
                                .flatten()
                                .filter(|value| value.is_finite())
                                .unwrap_or(f32::NAN)
                        }))
                    }
                    None => values.extend(std::iter::repeat_n(f32::NAN, width)),
                }
            }
            (values, width)
        }
    }
}

fn metrics_of(predictions: &[u32], labels: &[u32], class_names: &[String]) -> EvalMetrics {
    let classes = class_names.len();
    let mut counts = vec![0u64; classes * classes];
    for (label, prediction) in labels.iter().zip(predictions) {
        counts[*label as usize * classes + *prediction as usize] += 1;
    }
    let mut matrix = ConfusionMatrix::zeros(classes);
    matrix.add(&counts).expect("square");
    matrix.metrics(1, class_names, 0.0)
}

fn write_f32(path: PathBuf, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    Ok(std::fs::write(path, bytes)?)
}

async fn run(options: Options) -> Result<()> {
    let python = bench_python(true, "bench-gbdt")?;
    let dataset = std::path::absolute(&options.dataset)?;
    ensure_synthetic_dataset(&dataset, options.count, options.dataset_seed).await?;
    let dataset_url = format!("file://{}", dataset.display());
    let spec = normalize_spec(JobSpec {
        dataset_url: dataset_url.clone(),
        world_size: 1,
        batch_size: 1,
        seed: options.seed,
        ..Default::default()
    })?;
    let plan = plan_job(&spec).await?;
    let (train, test): (Vec<_>, Vec<_>) = (
        plan.shards
            .iter()
            .flat_map(|shard| shard.train.clone())
            .collect(),
        plan.shards
            .iter()
            .flat_map(|shard| shard.test.clone())
            .collect(),
    );
    let location = plankton_dataset::open_location(&dataset_url)?;
    let table = plankton_dataset::read_features(&location).await?;
    let train_objids: Vec<i64> = train.iter().map(|object| object.objid).collect();
    let test_objids: Vec<i64> = test.iter().map(|object| object.objid).collect();
    let transform = (options.features == FeatureRows::Transformed)
        .then(|| FeatureTransform::fit_on_split(&table, &train_objids).0);
    let (train_values, width) = feature_rows(&table, transform.as_ref(), &train_objids);
    let (test_values, _) = feature_rows(&table, transform.as_ref(), &test_objids);
    let train_labels: Vec<u32> = train.iter().map(|object| object.label).collect();
    let test_labels: Vec<u32> = test.iter().map(|object| object.label).collect();
    let weights: Vec<f32> = train_labels
        .iter()
        .map(|label| plan.class_weights[*label as usize])
        .collect();
    let classes = plan.class_names.len();
    println!(
        "dataset {}: {} train / {} test objects, {classes} classes, {width} {:?} features; {} rounds, depth {}, \
         eta {}, {} bins, {} threads, balanced sample weights",
        dataset.display(),
        train.len(),
        test.len(),
        options.features,
        options.rounds,
        options.max_depth,
        options.eta,
        options.max_bins,
        options.threads
    );

    let params = GbdtParams {
        rounds: options.rounds,
        learning_rate: options.eta,
        max_depth: options.max_depth,
        max_bins: options.max_bins,
        threads: options.threads,
        ..Default::default()
    };
    let train_matrix = FeatureMatrix::new(&train_values, train.len(), width)?;
    let test_matrix = FeatureMatrix::new(&test_values, test.len(), width)?;
    let mut ours: Option<Outcome> = None;
    for _ in 0..options.repeats.max(1) {
        let started = Instant::now();
        let model = GbdtModel::train(&train_matrix, &train_labels, &weights, classes, &params)?;
        let train_seconds = started.elapsed().as_secs_f64();
        let predictions = model.predict_classes(&test_matrix)?;
        let metrics = metrics_of(&predictions, &test_labels, &plan.class_names);
        if ours
            .as_ref()
            .is_none_or(|best| train_seconds < best.train_seconds)
        {
            ours = Some(Outcome {
                metrics,
                train_seconds,
            });
        }
    }
    let ours = ours.expect("at least one run");

    let scratch = tempfile::tempdir()?;
    write_f32(scratch.path().join("train.f32"), &train_values)?;
    write_f32(scratch.path().join("test.f32"), &test_values)?;
    write_f32(scratch.path().join("train_weights.f32"), &weights)?;
    let label_bytes: Vec<u8> = train_labels
        .iter()
        .flat_map(|label| label.to_le_bytes())
        .collect();
    std::fs::write(scratch.path().join("train_labels.u32"), label_bytes)?;
    let mut reference: Option<Outcome> = None;
    for _ in 0..options.repeats.max(1) {
        let output = Command::new(&python)
            .arg(workspace_root().join("bench/python/xgb_train.py"))
            .arg(scratch.path())
            .args(["--features", &width.to_string()])
            .args(["--classes", &classes.to_string()])
            .args(["--rounds", &options.rounds.to_string()])
            .args(["--max-depth", &options.max_depth.to_string()])
            .args(["--eta", &options.eta.to_string()])
            .args(["--max-bin", &options.max_bins.to_string()])
            .args(["--threads", &options.threads.to_string()])
            .output()
            .context("running bench/python/xgb_train.py")?;
        if !output.status.success() {
            bail!(
                "xgb_train.py failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| String::from_utf8_lossy(&output.stdout).to_string())?;
        let train_seconds = line["train_seconds"].as_f64().context("train_seconds")?;
        let predictions: Vec<u32> = std::fs::read(scratch.path().join("predictions.u32"))?
            .chunks_exact(4)
            .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            .collect();
        let metrics = metrics_of(&predictions, &test_labels, &plan.class_names);
        if reference
            .as_ref()
            .is_none_or(|best| train_seconds < best.train_seconds)
        {
            reference = Some(Outcome {
                metrics,
                train_seconds,
            });
        }
    }
    let reference = reference.expect("at least one run");

    println!(
        "\n{:<22} {:>14} {:>10} {:>14}",
        "", "plankton-gbdt", "XGBoost", "ours/XGBoost"
    );
    type Figure = fn(&Outcome) -> f64;
    let rows: [(&str, Figure); 5] = [
        ("macro-F1", |outcome| outcome.metrics.macro_f1),
        ("biological macro-F1", |outcome| {
            outcome.metrics.biological_macro_f1
        }),
        ("accuracy", |outcome| outcome.metrics.accuracy),
        ("balanced accuracy", |outcome| {
            outcome.metrics.balanced_accuracy
        }),
        ("train seconds", |outcome| outcome.train_seconds),
    ];
    for (name, value) in rows {
        let (ours_value, reference_value) = (value(&ours), value(&reference));
        println!(
            "{name:<22} {ours_value:>14.4} {reference_value:>10.4} {:>14.3}",
            ours_value / reference_value
        );
    }
    println!(
        "\nmacro-F1 difference {:+.4} (goal: within 0.02); train time x{:.2} of XGBoost's (goal: <= 1)",
        ours.metrics.macro_f1 - reference.metrics.macro_f1,
        ours.train_seconds / reference.train_seconds
    );
    Ok(())
}
