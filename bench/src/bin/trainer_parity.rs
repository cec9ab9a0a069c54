//! Our trainer against PyTorch step by step: the same initial weights (our safetensors file, read by
//! `bench/python/torch_steps.py`), the same batches, class weights spanning the real dataset's range, Adam at a
//! constant rate, one process each. Prints both sides' loss per step and the largest relative difference:
//! training itself must not be where the two differ.
//!
//! `cargo run --release -p plankton-bench --bin trainer_parity [-- --steps 30 --architecture wide_lenet]`
#![forbid(unsafe_code)]

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use plankton_collective::SingleProcess;
use plankton_tests::workspace_root;
use plankton_trainer::{
    Architecture, DataParallelTrainer, IMAGE_LEN, OptimizerChoice, TrainConfig,
};

#[derive(Parser, Debug)]
struct Options {
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value = "wide_lenet")]
    architecture: String,
    #[arg(long, default_value_t = 40)]
    classes: usize,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let architecture: Architecture = options
        .architecture
        .parse()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let directory = tempfile::tempdir()?;
    let count = options.steps * options.batch;
    // Smooth images (a gradient per image with noise) rather than white noise, labels skewed like the dataset.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut images = Vec::with_capacity(count * IMAGE_LEN);
    let mut labels = Vec::with_capacity(count);
    for _ in 0..count {
        let label = ((next() % 1000) as f64 / 1000.0).powi(3) * options.classes as f64;
        let label = (label as usize).min(options.classes - 1) as u32;
        labels.push(label);
        for index in 0..IMAGE_LEN {
            let base = (label as usize * 37 + index / 64) % 256;
            images.push(((base + (next() % 40) as usize) % 256) as u8);
        }
    }
    let class_weights: Vec<f32> = (0..options.classes)
        .map(|class| 0.3 * 1.2f32.powi(class as i32))
        .collect();
    let mut config = TrainConfig::new(options.classes, class_weights.clone());
    config.architecture = architecture;
    config.optimizer = OptimizerChoice::Adam;
    config.learning_rate = 1e-3;
    config.batch_size = options.batch;
    config.threads = 1;
    config.seed = 3;
    let mut trainer = DataParallelTrainer::new(&config)?;
    let weights_path = directory.path().join("initial.safetensors");
    std::fs::write(
        &weights_path,
        DataParallelTrainer::new(&config)?
            .into_trained_model()
            .to_safetensors()?,
    )?;
    std::fs::write(directory.path().join("images.u8"), &images)?;
    std::fs::write(
        directory.path().join("labels.u32"),
        labels
            .iter()
            .flat_map(|label| label.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    std::fs::write(
        directory.path().join("weights.f32"),
        class_weights
            .iter()
            .flat_map(|weight| weight.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    let mut ours = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        let range = step * options.batch..(step + 1) * options.batch;
        let outcome = trainer.train_step(
            &mut SingleProcess,
            &images[range.start * IMAGE_LEN..range.end * IMAGE_LEN],
            &labels[range],
            false,
        )?;
        ours.push(outcome.loss);
    }
    let python = workspace_root().join(".venv-bench/bin/python");
    let output = Command::new(&python)
        .arg(workspace_root().join("bench/python/torch_steps.py"))
        .arg(directory.path())
        .args(["--arch", &options.architecture])
        .args(["--batch", &options.batch.to_string()])
        .args(["--steps", &options.steps.to_string()])
        .args(["--num-classes", &options.classes.to_string()])
        .current_dir(workspace_root().join("bench/python"))
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "torch_steps.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let theirs: Vec<f64> = serde_json::from_slice(&output.stdout)?;
    let mut largest = 0.0f64;
    println!("step  ours        PyTorch     relative difference");
    for (step, (our, their)) in ours.iter().zip(&theirs).enumerate() {
        let relative = (our - their).abs() / their.abs().max(1e-12);
        largest = largest.max(relative);
        println!(
            "{:>4}  {our:<10.6}  {their:<10.6}  {relative:.2e}",
            step + 1
        );
    }
    println!(
        "largest relative difference over {} steps: {largest:.2e}",
        options.steps
    );
    Ok(())
}
