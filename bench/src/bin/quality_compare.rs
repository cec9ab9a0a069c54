//! Model quality side by side: the cluster (in-process coordinator + workers, each loss normalisation asked
//! for) and the PyTorch script it replaces (DDP over gloo, a DataLoader with OpenCV preprocessing,
//! `bench/python/ddp_quality.py`), on the same objects, split, class weights, network, optimizer, batch and
//! epochs, for several seeds (each seed draws its own subsample, split and initial weights). Prints each run,
//! then each side's mean and spread of macro-F1 and accuracy.
//!
//! `make bench-quality` (`scripts/setup-bench.sh`, then
//! `cargo run --release -p plankton-bench --bin quality_compare`); the defaults are the README's setting.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use plankton_bench::ddp_script::{DdpSettings, plan_files, run_ddp_script};
use plankton_bench::{FullSizeDataset, bench_python};
use plankton_coordinator::planner::JobPlan;
use plankton_proto::v1::{ClassWeighting, JobPhase, JobSpec, LossNormalization, LrSchedule};
use plankton_tests::TestCluster;
use plankton_trainer::{AugmentationMode, DataParallelTrainer, EpochBatches, TrainConfig};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Normalization {
    Default,
    WeightSum,
    Samples,
    ShardMean,
}

impl Normalization {
    fn proto(self) -> LossNormalization {
        match self {
            Normalization::Default => LossNormalization::Default,
            Normalization::WeightSum => LossNormalization::WeightSum,
            Normalization::Samples => LossNormalization::Samples,
            Normalization::ShardMean => LossNormalization::ShardMean,
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Cluster vs PyTorch DDP + DataLoader: macro-F1 and accuracy over seeds")]
struct Options {
    #[command(flatten)]
    data: FullSizeDataset,
    /// Stratified subsample each run trains and tests on.
    #[arg(long, default_value_t = 48_000)]
    max_objects: u32,
    /// Split, subsample and initialisation seeds, one run per side each.
    #[arg(long, value_delimiter = ',', default_value = "42,7,3")]
    seeds: Vec<u64>,
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    /// Images per step and per worker (rank).
    #[arg(long, default_value_t = 128)]
    batch: u32,
    #[arg(long, default_value_t = 2)]
    workers: u32,
    #[arg(long, default_value = "wide_lenet")]
    model: String,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// The cluster's loss normalisations to run (each on every seed).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "default")]
    normalizations: Vec<Normalization>,
    /// Only the cluster (no PyTorch runs).
    #[arg(long)]
    skip_pytorch: bool,
    /// Only the PyTorch script (no cluster runs).
    #[arg(long)]
    skip_cluster: bool,
    /// Diagnostic: the PyTorch script trains each rank on the cluster's shard of that rank only (reshuffled
    /// within it each epoch) instead of a DistributedSampler over the whole training split.
    #[arg(long)]
    pytorch_fixed_shards: bool,
    /// Diagnostic: the PyTorch script reads the images as the cluster's own preprocessing makes them
    /// (plankton-preprocess) instead of running OpenCV.
    #[arg(long)]
    pytorch_preprocessed: bool,
    /// Diagnostic: the PyTorch script starts from the cluster's initial weights for the seed instead of its own
    /// (and says whether they equal its own: the cluster draws PyTorch's for the seed).
    #[arg(long)]
    pytorch_cluster_init: bool,
    /// Diagnostic: each PyTorch rank trains on the cluster's shard of that rank in the cluster's batch order
    /// (the images of every step as a worker assembles them). With `--pytorch-cluster-init` and
    /// `--pytorch-preprocessed` the script replays the cluster's run.
    #[arg(long)]
    pytorch_cluster_order: bool,
    /// The PyTorch script's runs per seed, one for each offset: its sampler (the batch order) seeded `seed +
    /// offset`, its initial weights from `seed` in each. The first is the reference the cluster is compared
    /// with; each further run is compared with it too, which measures how far the script lands from itself
    /// when only its batch order changes (the noise floor of the comparison).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pytorch_sampler_offsets: Vec<u64>,
}

/// The cluster's initial weights for `spec` (what every worker of the job starts from), as safetensors.
fn cluster_initial_weights(spec: &JobSpec, plan: &JobPlan) -> Result<Vec<u8>> {
    let mut config = TrainConfig::new(plan.class_names.len(), plan.class_weights.clone());
    config.architecture = spec
        .model
        .parse()
        .map_err(|error| anyhow::anyhow!("model {:?}: {error}", spec.model))?;
    config.seed = spec.seed;
    Ok(DataParallelTrainer::new(&config)?
        .into_trained_model()
        .to_safetensors()?)
}

/// The cluster's batch order as CSV `epoch,rank,objid`: every step's objids in order, each rank on its shard
/// (objects in ascending objid, as a worker holds them) as [`EpochBatches`] visits it.
fn cluster_batch_order(spec: &JobSpec, plan: &JobPlan, epochs: u32) -> String {
    let mut csv = String::from("epoch,rank,objid\n");
    for epoch in 0..epochs {
        for (rank, shard) in plan.shards.iter().enumerate() {
            let mut objids: Vec<i64> = shard.train.iter().map(|object| object.objid).collect();
            objids.sort_unstable();
            let batches = EpochBatches::new(
                objids.len(),
                spec.batch_size as usize,
                spec.seed,
                rank,
                epoch,
                AugmentationMode::None,
                &plan.class_weights,
            );
            for step in 0..plan.steps_per_epoch as usize {
                for index in batches.step_indices(step) {
                    csv.push_str(&format!("{epoch},{rank},{}\n", objids[index]));
                }
            }
        }
    }
    csv
}

/// Writes `PREFIX.objids` (i64 little-endian) and `PREFIX.u8` (`[N, 3, 64, 64]`) of `objids`' images preprocessed by
/// plankton-preprocess, for `ddp_quality.py --preprocessed`.
fn dump_preprocessed(images_dir: &Path, objids: &[i64], prefix: &Path) -> Result<()> {
    let mut images = vec![0u8; objids.len() * plankton_preprocess::IMAGE_LEN];
    let config = plankton_preprocess::PreprocessConfig::default();
    for (chunk_objids, chunk_images) in objids
        .chunks(4096)
        .zip(images.chunks_mut(4096 * plankton_preprocess::IMAGE_LEN))
    {
        let jpegs = chunk_objids
            .iter()
            .map(|objid| std::fs::read(images_dir.join(format!("{objid}.jpg"))))
            .collect::<std::io::Result<Vec<_>>>()?;
        for (objid, result) in chunk_objids
            .iter()
            .zip(plankton_preprocess::preprocess_batch_into(
                &jpegs,
                &config,
                chunk_images,
            ))
        {
            result.with_context(|| format!("preprocessing imgs/{objid}.jpg"))?;
        }
    }
    let mut objid_bytes = Vec::with_capacity(objids.len() * 8);
    for objid in objids {
        objid_bytes.extend_from_slice(&objid.to_le_bytes());
    }
    std::fs::write(prefix.with_extension("objids"), objid_bytes)?;
    std::fs::write(prefix.with_extension("u8"), images)?;
    Ok(())
}

/// One run's final test metrics.
#[derive(Clone, Debug)]
struct Quality {
    macro_f1: f64,
    accuracy: f64,
    seconds: f64,
    /// Each epoch's mean class-weighted training loss.
    train_losses: Vec<f64>,
    /// The last evaluation's mean (unweighted) cross-entropy on the test split.
    test_loss: f64,
}

impl Quality {
    fn losses(&self) -> String {
        let train: Vec<String> = self
            .train_losses
            .iter()
            .map(|loss| format!("{loss:.3}"))
            .collect();
        format!(
            "train loss {}  test loss {:.3}",
            train.join(" "),
            self.test_loss
        )
    }
}

/// How long one training run may take before the benchmark calls it hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);

fn main() -> Result<()> {
    let options = Options::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?
        .block_on(run(options))
}

async fn run(options: Options) -> Result<()> {
    let python = bench_python(!options.skip_pytorch, "bench-quality")?;
    let dataset = options.data.ensure().await?;
    let dataset_url = format!("file://{}", dataset.display());
    let work = tempfile::tempdir()?;
    let allowed = dataset_url.clone();
    let cluster = TestCluster::start_configured(
        options.workers as usize,
        None,
        move |config| config.job_policy.dataset_prefixes.push(allowed),
        |_, _| {},
    )
    .await?;
    let mut cluster_results: Vec<(Normalization, Vec<Quality>)> = options
        .normalizations
        .iter()
        .map(|normalization| (*normalization, Vec::new()))
        .collect();
    let mut pytorch_results: Vec<(u64, Vec<Quality>)> = options
        .pytorch_sampler_offsets
        .iter()
        .map(|offset| (*offset, Vec::new()))
        .collect();
    for &seed in &options.seeds {
        let spec = JobSpec {
            name: format!("quality-seed-{seed}"),
            dataset_url: dataset_url.clone(),
            world_size: options.workers,
            model: options.model.clone(),
            epochs: options.epochs,
            batch_size: options.batch,
            learning_rate: options.lr,
            class_weighting: ClassWeighting::Balanced as i32,
            lr_schedule: LrSchedule::Constant as i32,
            seed,
            max_objects: options.max_objects,
            threads_per_worker: 1,
            ..Default::default()
        };
        for (normalization, results) in cluster_results.iter_mut().filter(|_| !options.skip_cluster)
        {
            let spec = JobSpec {
                loss_normalization: normalization.proto() as i32,
                ..spec.clone()
            };
            let started = Instant::now();
            let submitted = cluster.submit(spec).await?;
            let job = cluster.wait_finished(&submitted.id, RUN_TIMEOUT).await?;
            if job.phase() != JobPhase::Succeeded {
                bail!(
                    "cluster job {} ended {:?}: {}",
                    job.id,
                    job.phase(),
                    job.message
                );
            }
            let last = job.epochs.last().context("the job evaluated no epoch")?;
            let quality = Quality {
                macro_f1: last.macro_f1,
                accuracy: last.accuracy,
                seconds: started.elapsed().as_secs_f64(),
                train_losses: job.epochs.iter().map(|epoch| epoch.train_loss).collect(),
                test_loss: last.test_loss,
            };
            println!(
                "seed {seed:>4}  cluster {:<10}  macro-F1 {:.3}  accuracy {:.3}  ({:.0} s, ingest included)  {}",
                format!("{normalization:?}"),
                quality.macro_f1,
                quality.accuracy,
                quality.seconds,
                quality.losses()
            );
            results.push(quality);
        }
        for (offset, results) in pytorch_results.iter_mut().filter(|_| !options.skip_pytorch) {
            let quality =
                pytorch_run(&python, &options, &spec, *offset, &dataset, work.path()).await?;
            println!(
                "seed {seed:>4}  {:<18}  macro-F1 {:.3}  accuracy {:.3}  ({:.0} s training)  {}",
                pytorch_label(*offset),
                quality.macro_f1,
                quality.accuracy,
                quality.seconds,
                quality.losses()
            );
            results.push(quality);
        }
    }
    cluster.shutdown().await?;

    println!();
    println!(
        "{} objects (of {} generated, seed {}), {} x {} {} epochs, Adam {} constant, balanced weights, {} seeds",
        options.max_objects,
        options.data.count,
        options.data.dataset_seed,
        options.workers,
        options.batch,
        options.epochs,
        options.lr,
        options.seeds.len()
    );
    let reference_results = pytorch_results
        .first()
        .map(|(_, results)| results.as_slice())
        .unwrap_or_default();
    let reference = summary(reference_results).map(|means| {
        (
            pytorch_label(options.pytorch_sampler_offsets[0]),
            means,
            reference_results,
        )
    });
    for (normalization, results) in &cluster_results {
        print_side(
            &format!("cluster ({normalization:?})"),
            results,
            reference.as_ref(),
            "",
        );
    }
    for (index, (offset, results)) in pytorch_results.iter().enumerate() {
        let against = reference.as_ref().filter(|_| index > 0);
        print_side(
            &pytorch_label(*offset),
            results,
            against,
            " (the script against itself)",
        );
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// A reference side for [`print_side`]: its name, its [`summary`] and its runs.
type Reference<'a> = (String, (f64, f64, f64, f64), &'a [Quality]);

/// Prints one side's mean and spread of macro-F1 and accuracy and, given a `reference`, the differences of the
/// means against the goals and the per-seed paired differences, `note` after the goals.
fn print_side(label: &str, results: &[Quality], reference: Option<&Reference>, note: &str) {
    let Some(means) = summary(results) else {
        return;
    };
    println!(
        "{label}:  macro-F1 {:.3} ± {:.3}  accuracy {:.3} ± {:.3}",
        means.0, means.1, means.2, means.3
    );
    let Some((reference_label, reference_means, reference_results)) = reference else {
        return;
    };
    println!(
        "   vs {reference_label}:   macro-F1 {:+.3} (goal >= -0.010), accuracy {:+.3} (goal within ±0.020){note}",
        means.0 - reference_means.0,
        means.2 - reference_means.2
    );
    if let Some(paired) = paired_differences(results, reference_results) {
        println!("   {paired}");
    }
}

/// How a PyTorch run is named: its sampler seed's offset from the job seed, when not 0.
fn pytorch_label(sampler_offset: u64) -> String {
    if sampler_offset == 0 {
        "PyTorch DDP".to_string()
    } else {
        format!("PyTorch DDP, sampler seed + {sampler_offset}")
    }
}

/// The per-seed differences run - reference (same seed, same split): their mean and standard error for
/// macro-F1, accuracy and the first epoch's training loss, and in how many seeds the run was lower.
/// `None` unless both sides ran the same two or more seeds.
fn paired_differences(runs: &[Quality], reference: &[Quality]) -> Option<String> {
    if runs.len() != reference.len() || runs.len() < 2 {
        return None;
    }
    let describe = |name: &str, value: fn(&Quality) -> f64| {
        let differences: Vec<f64> = runs
            .iter()
            .zip(reference)
            .map(|(ours, theirs)| value(ours) - value(theirs))
            .collect();
        let count = differences.len() as f64;
        let mean = differences.iter().sum::<f64>() / count;
        let variance = differences
            .iter()
            .map(|difference| (difference - mean).powi(2))
            .sum::<f64>()
            / (count - 1.0);
        let lower = differences
            .iter()
            .filter(|difference| **difference < 0.0)
            .count();
        format!(
            "{name} {mean:+.3} ± {:.3} (lower in {lower} of {})",
            (variance / count).sqrt(),
            differences.len()
        )
    };
    Some(format!(
        "paired by seed (mean ± standard error): {}, {}, {}",
        describe("macro-F1", |quality| quality.macro_f1),
        describe("accuracy", |quality| quality.accuracy),
        describe("epoch-1 training loss", |quality| {
            quality.train_losses.first().copied().unwrap_or(f64::NAN)
        })
    ))
}

/// (mean macro-F1, its standard deviation, mean accuracy, its standard deviation); None for no runs.
fn summary(results: &[Quality]) -> Option<(f64, f64, f64, f64)> {
    if results.is_empty() {
        return None;
    }
    let mean_and_spread = |values: Vec<f64>| {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values
            .iter()
            .map(|value| (value - mean).powi(2))
            .sum::<f64>()
            / values.len().max(2).saturating_sub(1) as f64;
        (mean, variance.sqrt())
    };
    let (f1, f1_spread) = mean_and_spread(results.iter().map(|quality| quality.macro_f1).collect());
    let (accuracy, accuracy_spread) =
        mean_and_spread(results.iter().map(|quality| quality.accuracy).collect());
    Some((f1, f1_spread, accuracy, accuracy_spread))
}

/// The PyTorch script on the split and class weights the cluster's planner makes of `spec`.
async fn pytorch_run(
    python: &Path,
    options: &Options,
    spec: &JobSpec,
    sampler_offset: u64,
    dataset: &Path,
    work: &Path,
) -> Result<Quality> {
    let files = plan_files(spec, work).await?;
    let mut extra_args = vec![
        "--sampler-seed".to_string(),
        spec.seed.wrapping_add(sampler_offset).to_string(),
    ];
    if options.pytorch_fixed_shards {
        extra_args.push("--fixed-shards".to_string());
    }
    if options.pytorch_cluster_init {
        let path = work.join(format!("initial-{}.safetensors", spec.seed));
        std::fs::write(&path, cluster_initial_weights(spec, &files.plan)?)?;
        extra_args.push("--initial-weights".to_string());
        extra_args.push(path.display().to_string());
    }
    if options.pytorch_cluster_order {
        let path = work.join(format!("order-{}.csv", spec.seed));
        std::fs::write(
            &path,
            cluster_batch_order(spec, &files.plan, options.epochs),
        )?;
        extra_args.push("--order".to_string());
        extra_args.push(path.display().to_string());
    }
    if options.pytorch_preprocessed {
        let objids: Vec<i64> = files
            .plan
            .shards
            .iter()
            .flat_map(|shard| shard.train.iter().chain(&shard.test))
            .map(|object| object.objid)
            .collect();
        let prefix = work.join(format!("preprocessed-{}", spec.seed));
        let images_dir = dataset.join("imgs");
        let dump_prefix = prefix.clone();
        tokio::task::spawn_blocking(move || dump_preprocessed(&images_dir, &objids, &dump_prefix))
            .await??;
        extra_args.push("--preprocessed".to_string());
        extra_args.push(prefix.display().to_string());
    }
    let result_path = work.join(format!("pytorch-{}-{sampler_offset}.json", spec.seed));
    let settings = DdpSettings {
        python: python.to_path_buf(),
        dataset: dataset.to_path_buf(),
        model: options.model.clone(),
        epochs: options.epochs,
        batch: options.batch,
        learning_rate: options.lr,
        seed: spec.seed,
        world: options.workers,
        extra_args,
    };
    let result = run_ddp_script(settings, files, result_path).await?;
    if let Some(equal) = result.initial_weights_equal_own {
        println!(
            "seed {:>4}  the cluster's initial weights {} the script's own (torch.manual_seed({}))",
            spec.seed,
            if equal { "equal" } else { "differ from" },
            spec.seed
        );
    }
    Ok(Quality {
        macro_f1: result.macro_f1,
        accuracy: result.accuracy,
        seconds: result.seconds,
        train_losses: result.train_losses,
        test_loss: result.test_loss,
    })
}
