//! The PyTorch DDP + DataLoader + OpenCV script (`bench/python/ddp_quality.py`) on the split and class weights
//! the cluster's planner makes of a job spec, so both sides train and test on the same objects.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use plankton_coordinator::planner::{JobPlan, normalize_spec, plan_job};
use plankton_proto::v1::JobSpec;
use plankton_tests::workspace_root;

/// The planner's split (CSV `objid,label,part,shard`) and class weights (JSON) of one spec, written for the script.
pub struct PlannedFiles {
    pub plan: JobPlan,
    pub split: PathBuf,
    pub weights: PathBuf,
}

/// Plans `spec` as the coordinator would and writes its split and class weights into `work`.
pub async fn plan_files(spec: &JobSpec, work: &Path) -> Result<PlannedFiles> {
    let plan = plan_job(&normalize_spec(spec.clone())?).await?;
    let split_path = work.join(format!("split-{}.csv", spec.seed));
    let mut split = String::from("objid,label,part,shard\n");
    for (index, shard) in plan.shards.iter().enumerate() {
        for (part, objects) in [("train", &shard.train), ("test", &shard.test)] {
            for object in objects {
                split.push_str(&format!(
                    "{},{},{part},{index}\n",
                    object.objid, object.label
                ));
            }
        }
    }
    std::fs::write(&split_path, split)
        .with_context(|| format!("writing {}", split_path.display()))?;
    let weights = work.join(format!("weights-{}.json", spec.seed));
    std::fs::write(
        &weights,
        serde_json::to_vec(&serde_json::json!({ "class_weights": plan.class_weights }))?,
    )?;
    Ok(PlannedFiles {
        plan,
        split: split_path,
        weights,
    })
}

/// The script's settings: the spec's network, epochs, batch per rank, rate, seed and ranks.
#[derive(Clone, Debug)]
pub struct DdpSettings {
    pub python: PathBuf,
    /// Folder holding `imgs/<objid>.jpg`.
    pub dataset: PathBuf,
    pub model: String,
    pub epochs: u32,
    pub batch: u32,
    pub learning_rate: f32,
    pub seed: u64,
    pub world: u32,
    /// Further script flags (`--channels-last`, `--fixed-shards`, `--preprocessed PREFIX`, ...).
    pub extra_args: Vec<String>,
}

/// What one run of the script reported.
#[derive(Clone, Debug)]
pub struct DdpResult {
    pub macro_f1: f64,
    pub accuracy: f64,
    /// Training time (every epoch, data loading included, evaluation excluded).
    pub seconds: f64,
    /// Rank 0's pass over the test split.
    pub eval_seconds: f64,
    /// The largest peak resident set of a rank or its DataLoader processes, MiB.
    pub peak_rank_rss_mb: f64,
    /// Each epoch's mean class-weighted training loss.
    pub train_losses: Vec<f64>,
    /// The mean (unweighted) cross-entropy on the test split.
    pub test_loss: f64,
    /// With `--initial-weights`: whether the given weights equal the script's own `torch.manual_seed(seed)`
    /// initialisation, tensor for tensor.
    pub initial_weights_equal_own: Option<bool>,
}

/// Runs the script on a blocking thread and reads its result file.
pub async fn run_ddp_script(
    settings: DdpSettings,
    files: PlannedFiles,
    result_path: PathBuf,
) -> Result<DdpResult> {
    tokio::task::spawn_blocking(move || run_blocking(&settings, &files, &result_path)).await?
}

fn run_blocking(
    settings: &DdpSettings,
    files: &PlannedFiles,
    result_path: &Path,
) -> Result<DdpResult> {
    let script = workspace_root().join("bench/python/ddp_quality.py");
    let output = Command::new(&settings.python)
        .arg(&script)
        .arg("--dataset")
        .arg(&settings.dataset)
        .arg("--split")
        .arg(&files.split)
        .arg("--weights")
        .arg(&files.weights)
        .args(["--arch", settings.model.as_str()])
        .args(["--epochs", &settings.epochs.to_string()])
        .args(["--batch", &settings.batch.to_string()])
        .args(["--lr", &settings.learning_rate.to_string()])
        .args(["--seed", &settings.seed.to_string()])
        .args(["--world", &settings.world.to_string()])
        .args(&settings.extra_args)
        .arg("--result")
        .arg(result_path)
        .current_dir(workspace_root().join("bench/python"))
        .output()
        .with_context(|| format!("starting {}", settings.python.display()))?;
    if !output.status.success() {
        bail!(
            "the PyTorch run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result: serde_json::Value = std::fs::read(result_path)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
        .with_context(|| format!("the script's result {}", result_path.display()))?;
    let number = |key: &str| {
        result[key]
            .as_f64()
            .with_context(|| format!("no {key} in {result}"))
    };
    Ok(DdpResult {
        macro_f1: number("macro_f1")?,
        accuracy: number("accuracy")?,
        seconds: number("seconds")?,
        eval_seconds: number("eval_seconds")?,
        peak_rank_rss_mb: number("peak_rank_rss_mb")?,
        train_losses: result["train_losses"]
            .as_array()
            .map(|losses| {
                losses
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            })
            .unwrap_or_default(),
        test_loss: number("test_loss")?,
        initial_weights_equal_own: result["initial_weights_equal_own"].as_bool(),
    })
}
