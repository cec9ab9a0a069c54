//! Benchmark programs against OpenCV, PyTorch and gloo; [`ddp_script`] runs the PyTorch DDP script the cluster
//! replaces (shared by `quality_compare` and `scale_bench`); [`roofline`] measures the CPU's arithmetic peak the
//! training and inference figures are set against.

use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod ddp_script;
pub mod roofline;

/// The full-size synthetic dataset the quality and scale benchmarks share (`--dataset`, `--count`,
/// `--dataset-seed`).
#[derive(clap::Args, Debug, Clone)]
pub struct FullSizeDataset {
    /// Folder of the synthetic dataset (generated when it has no meta.csv).
    #[arg(long, default_value = "target/quality-data")]
    pub dataset: PathBuf,
    /// Objects generated (the real dataset's 243,610) and the generator's seed.
    #[arg(long, default_value_t = 243_610)]
    pub count: u64,
    #[arg(long, default_value_t = 42)]
    pub dataset_seed: u64,
}

impl FullSizeDataset {
    /// The dataset's absolute folder, generated first when it has no `meta.csv`.
    pub async fn ensure(&self) -> anyhow::Result<PathBuf> {
        let dataset = std::path::absolute(&self.dataset)?;
        ensure_synthetic_dataset(&dataset, self.count, self.dataset_seed).await?;
        Ok(dataset)
    }
}

/// Generates `count` synthetic objects (generator seed `seed`) into the folder `dataset` unless it already holds
/// a `meta.csv`; says which, and how long the generation took.
pub async fn ensure_synthetic_dataset(dataset: &Path, count: u64, seed: u64) -> anyhow::Result<()> {
    if dataset.join("meta.csv").exists() {
        println!(
            "dataset: {} (reused; delete it to time the generation)",
            dataset.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dataset)?;
    let started = Instant::now();
    plankton_tests::synth_dataset(&format!("file://{}", dataset.display()), count, seed, false)
        .await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "generated {count} objects into {} in {took:.0} s ({:.0} objects/s)",
        dataset.display(),
        count as f64 / took
    );
    Ok(())
}

/// The Python of the benchmark references (PyTorch, OpenCV, XGBoost), or an error naming the set-up command when
/// `needed` and it is missing; `make_target` is the make target that installs it with the benchmark.
pub fn bench_python(needed: bool, make_target: &str) -> anyhow::Result<PathBuf> {
    let python = plankton_tests::workspace_root().join(".venv-bench/bin/python");
    if needed && !python.exists() {
        anyhow::bail!(
            "{} is missing: run scripts/setup-bench.sh (make {make_target} does)",
            python.display()
        );
    }
    Ok(python)
}
