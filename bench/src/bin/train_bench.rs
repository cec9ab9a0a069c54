//! Training throughput of plankton-trainer vs PyTorch eager (1 process x 1 thread) and vs DDP/gloo
//! (2 processes x 1 thread), same models, initial weights, batch and data.
//!
//! With `--bf16`, also bf16 rows: our `precision: bf16` against PyTorch `torch.autocast("cpu", bfloat16)`
//! channels-last (its strongest bf16 CPU configuration), and with 2 workers our bf16 gradient compression
//! against DDP's `bf16_compress_hook`; each bf16 row also prints its speed against our own fp32.
//!
//! `cargo run --release -p plankton-bench --bin train_bench` (PyTorch from `scripts/setup-bench.sh`).
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use plankton_bench::roofline;
use plankton_collective::{RingAbort, RingAllReduce, RingConfig, RingListener};
use plankton_trainer::{
    Architecture, DataParallelTrainer, GradientCompression, IMAGE_LEN, OptimizerChoice, Precision,
    TrainConfig,
};

const NUM_CLASSES: usize = 40;
/// Every benchmark process runs with these glibc settings, ours and PyTorch's alike: huge pages for malloc, and
/// freed tensor memory kept for reuse (what `plankton-worker` sets itself, [`plankton_common::malloc`]).
fn glibc_tunables() -> String {
    format!(
        "glibc.malloc.hugetlb=1:{}",
        plankton_common::malloc::GLIBC_TUNABLES_ENTRIES
    )
}

#[derive(Parser, Debug)]
#[command(about = "plankton-trainer vs PyTorch training throughput")]
struct Options {
    #[command(subcommand)]
    role: Option<Role>,
    /// Images per step and per worker.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Measurements of each configuration, alternating ours and PyTorch; the best is reported
    /// (the machine is shared, so the best run is the one least disturbed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Python with torch 2.11.
    #[arg(long, default_value = ".venv-bench/bin/python")]
    python: PathBuf,
    /// Also run PyTorch in its default NCHW layout. The headline ratio is always against PyTorch with
    /// channels-last model and inputs, its faster CPU configuration (our trainer always uses channels-last).
    #[arg(long)]
    pytorch_nchw: bool,
    /// Architectures to measure (`lenet`, the notebook's small CNN, is also available).
    #[arg(long, value_delimiter = ',', default_value = "wide_lenet,resnet")]
    architectures: Vec<String>,
    /// Also measure bf16: our precision bf16 (+ bf16 gradients with 2 workers) vs PyTorch autocast bf16
    /// channels-last (+ DDP bf16_compress_hook).
    #[arg(long)]
    bf16: bool,
    /// With 2 workers, also measure ours with the all-reduce after the whole backward (not overlapped).
    #[arg(long)]
    sequential_all_reduce: bool,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// One of our training processes (spawned by the benchmark itself).
    Worker {
        #[arg(long)]
        architecture: String,
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world_size: usize,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        steps: usize,
        #[arg(long)]
        warmup: usize,
        /// bf16 forward/backward and bf16 gradients on the ring.
        #[arg(long)]
        bf16: bool,
        /// The all-reduce after the whole backward instead of overlapped with its early segment.
        #[arg(long)]
        sequential: bool,
    },
}

/// The shared input files, written once, read by both sides.
struct BenchData {
    directory: tempfile::TempDir,
}

impl BenchData {
    fn images(&self) -> PathBuf {
        self.directory.path().join("images.u8")
    }
    fn labels(&self) -> PathBuf {
        self.directory.path().join("labels.u32")
    }
    fn class_weights(&self) -> PathBuf {
        self.directory.path().join("class_weights.f32")
    }
    fn initial_weights(&self, architecture: Architecture) -> PathBuf {
        self.directory
            .path()
            .join(format!("init_{architecture}.safetensors"))
    }
}

fn bench_config(architecture: Architecture, batch: usize) -> TrainConfig {
    let class_weights = (0..NUM_CLASSES)
        .map(|class_index| 0.5 + class_index as f32 / NUM_CLASSES as f32)
        .collect();
    let mut config = TrainConfig::new(NUM_CLASSES, class_weights);
    config.architecture = architecture;
    config.batch_size = batch;
    config.optimizer = OptimizerChoice::Adam;
    config.learning_rate = 1e-3;
    config.threads = 1;
    config.seed = 7;
    config
}

fn write_bench_data(batch: usize, architectures: &[Architecture]) -> Result<BenchData> {
    let data = BenchData {
        directory: tempfile::tempdir()?,
    };
    let image_count = 2 * batch;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let images: Vec<u8> = (0..image_count * IMAGE_LEN).map(|_| next() as u8).collect();
    let labels: Vec<u8> = (0..image_count)
        .flat_map(|_| ((next() % NUM_CLASSES as u64) as u32).to_le_bytes())
        .collect();
    let config = bench_config(Architecture::LeNet, batch);
    let class_weights: Vec<u8> = config
        .class_weights
        .iter()
        .flat_map(|weight| weight.to_le_bytes())
        .collect();
    std::fs::write(data.images(), images)?;
    std::fs::write(data.labels(), labels)?;
    std::fs::write(data.class_weights(), class_weights)?;
    for architecture in architectures {
        let config = bench_config(*architecture, batch);
        let weights = DataParallelTrainer::new(&config)?
            .into_trained_model()
            .to_safetensors()?;
        std::fs::write(data.initial_weights(*architecture), weights)?;
    }
    Ok(data)
}

/// Worker side: train `steps` timed steps on this rank's batch, print `{"seconds": ..}`.
#[allow(clippy::too_many_arguments)]
fn run_worker(
    architecture: Architecture,
    rank: usize,
    world_size: usize,
    data_dir: &Path,
    batch: usize,
    steps: usize,
    warmup: usize,
    bf16: bool,
    sequential: bool,
) -> Result<()> {
    // As plankton-worker does (here GLIBC_TUNABLES already carries the same thresholds).
    plankton_common::malloc::keep_freed_memory_for_reuse();
    let images = std::fs::read(data_dir.join("images.u8"))?;
    let labels: Vec<u32> = std::fs::read(data_dir.join("labels.u32"))?
        .chunks_exact(4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .collect();
    let batch_images = &images[rank * batch * IMAGE_LEN..(rank + 1) * batch * IMAGE_LEN];
    let batch_labels = &labels[rank * batch..(rank + 1) * batch];
    let mut config = bench_config(architecture, batch);
    if bf16 {
        config.precision = Precision::Bf16;
        config.gradient_compression = GradientCompression::Bf16;
    }
    config.overlap_communication = !sequential;
    let listener = RingListener::bind("127.0.0.1:0")?;
    println!("listen {}", listener.local_addr());
    std::io::stdout().flush()?;
    let mut peers_line = String::new();
    std::io::stdin().read_line(&mut peers_line)?;
    let peer_addresses: Vec<String> = peers_line.trim().split(',').map(str::to_string).collect();
    if peer_addresses.len() != world_size {
        bail!("expected {world_size} peer addresses, got {peers_line:?}");
    }
    let ring_config = RingConfig {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let mut ring = RingAllReduce::establish(
        &listener,
        "train-bench",
        0,
        rank,
        &peer_addresses,
        &ring_config,
        &RingAbort::new(),
    )?;
    let mut trainer = DataParallelTrainer::new(&config)?;
    trainer.synchronize_from(&mut ring, 0)?;
    for _ in 0..warmup {
        trainer.train_step(&mut ring, batch_images, batch_labels, false)?;
    }
    // Same start on every rank: an all-reduce is a barrier.
    trainer.synchronize_batch_norm_statistics(&mut ring)?;
    let start = Instant::now();
    for _ in 0..steps {
        trainer.train_step(&mut ring, batch_images, batch_labels, false)?;
    }
    println!(
        "{}",
        serde_json::json!({ "seconds": start.elapsed().as_secs_f64() })
    );
    Ok(())
}

/// Our side: `world_size` worker processes; images/s of the whole group.
fn measure_ours(
    options: &Options,
    data: &BenchData,
    architecture: Architecture,
    world_size: usize,
    bf16: bool,
    sequential: bool,
) -> Result<f64> {
    let executable = std::env::current_exe()?;
    let mut children = Vec::new();
    for rank in 0..world_size {
        let child = Command::new(&executable)
            .args(["worker", "--architecture", architecture.name()])
            .args([
                "--rank",
                &rank.to_string(),
                "--world-size",
                &world_size.to_string(),
            ])
            .arg("--data-dir")
            .arg(data.directory.path())
            .args([
                "--batch",
                &options.batch.to_string(),
                "--steps",
                &options.steps.to_string(),
            ])
            .args(["--warmup", &options.warmup.to_string()])
            .args(bf16.then_some("--bf16"))
            .args(sequential.then_some("--sequential"))
            .env("GLIBC_TUNABLES", glibc_tunables())
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a worker")?;
        children.push(child);
    }
    let mut readers = Vec::new();
    let mut addresses = Vec::new();
    for child in &mut children {
        let mut reader = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listen ")
            .with_context(|| format!("worker said {line:?}"))?;
        addresses.push(address.to_string());
        readers.push(reader);
    }
    let peers_line = format!("{}\n", addresses.join(","));
    for child in &mut children {
        child
            .stdin
            .take()
            .context("worker stdin")?
            .write_all(peers_line.as_bytes())?;
    }
    let mut slowest_seconds: f64 = 0.0;
    for (child, mut reader) in children.iter_mut().zip(readers) {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("worker exited with {status}");
        }
        let report: serde_json::Value =
            serde_json::from_str(line.trim()).with_context(|| format!("worker said {line:?}"))?;
        slowest_seconds = slowest_seconds.max(report["seconds"].as_f64().context("seconds")?);
    }
    Ok((world_size * options.batch * options.steps) as f64 / slowest_seconds)
}

fn measure_pytorch(
    options: &Options,
    data: &BenchData,
    architecture: Architecture,
    world_size: usize,
    channels_last: bool,
    bf16: bool,
) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/torch_train.py");
    let output = Command::new(&options.python)
        .arg(script)
        .args(channels_last.then_some("--channels-last"))
        .args(bf16.then_some("--bf16"))
        .args((bf16 && world_size > 1).then_some("--bf16-gradients"))
        .args(["--arch", architecture.name()])
        .arg("--images")
        .arg(data.images())
        .arg("--labels")
        .arg(data.labels())
        .arg("--class-weights")
        .arg(data.class_weights())
        .arg("--weights")
        .arg(data.initial_weights(architecture))
        .args([
            "--num-classes",
            &NUM_CLASSES.to_string(),
            "--batch",
            &options.batch.to_string(),
        ])
        .args([
            "--steps",
            &options.steps.to_string(),
            "--warmup",
            &options.warmup.to_string(),
        ])
        .args(["--world", &world_size.to_string()])
        .env("GLIBC_TUNABLES", glibc_tunables())
        .env("OMP_NUM_THREADS", "1")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", options.python.display()))?;
    if !output.status.success() {
        bail!("pytorch benchmark exited with {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last_line = stdout.lines().last().context("pytorch printed nothing")?;
    let report: serde_json::Value = serde_json::from_str(last_line)?;
    report["images_per_second"]
        .as_f64()
        .context("images_per_second")
}

fn main() -> Result<()> {
    let options = Options::parse();
    if let Some(Role::Worker {
        architecture,
        rank,
        world_size,
        data_dir,
        batch,
        steps,
        warmup,
        bf16,
        sequential,
    }) = &options.role
    {
        let architecture: Architecture = architecture.parse()?;
        return run_worker(
            architecture,
            *rank,
            *world_size,
            data_dir,
            *batch,
            *steps,
            *warmup,
            *bf16,
            *sequential,
        );
    }
    let architectures = options
        .architectures
        .iter()
        .map(|name| name.parse())
        .collect::<Result<Vec<Architecture>, _>>()?;
    let data = write_bench_data(options.batch, &architectures)?;
    // One core's arithmetic peak (each worker runs one thread on its own core).
    tch::set_num_threads(1);
    let measured_f32 = roofline::peak(tch::Kind::Float)?;
    let measured_bf16 = options
        .bf16
        .then(|| roofline::peak(tch::Kind::BFloat16))
        .transpose()?;
    let core_peak_f32 = measured_f32.flops();
    let core_peak_bf16 = measured_bf16.map(|peak| peak.flops());
    println!(
        "training throughput, batch {} per worker, {} timed steps after {} warm-up, best of {}, GLIBC_TUNABLES={}",
        options.batch,
        options.steps,
        options.warmup,
        options.repeats,
        glibc_tunables()
    );
    println!(
        "{:<8} {:<22} {:>12} {:>14} {:>7}",
        "model", "setting", "ours img/s", "pytorch img/s", "ratio"
    );
    println!(
        "roofline: libtorch's kernels reach {} in f32{} on one core here at best (the peak, times the workers)",
        measured_f32.describe(),
        measured_bf16
            .map(|peak| format!(", {} in bf16", peak.describe()))
            .unwrap_or_default()
    );
    for architecture in architectures {
        let cost = plankton_trainer::pass_cost(architecture, NUM_CLASSES, 0)?;
        // Each side's rate as training arithmetic against the workers' peak.
        let roofline_line = |ours: f64, pytorch: f64, core_peak: f64, world_size: usize| {
            let peak = core_peak * world_size as f64;
            println!(
                "{:<8} {:<22} ours {}, pytorch {} ({:.1}M multiply-adds per image trained)",
                "",
                "  roofline",
                roofline::describe(cost.training_flops(ours), peak),
                roofline::describe(cost.training_flops(pytorch), peak),
                cost.training as f64 / 1e6
            );
        };
        for (world_size, setting) in [(1, "1 worker x 1 thread"), (2, "2 workers x 1 thread")] {
            let mut ours: f64 = 0.0;
            // PyTorch channels-last (its strongest CPU configuration) is the headline; NCHW on request.
            let mut pytorch: f64 = 0.0;
            let mut pytorch_nchw: f64 = 0.0;
            let sequential_wanted = options.sequential_all_reduce && world_size > 1;
            let mut ours_sequential: f64 = 0.0;
            for _ in 0..options.repeats.max(1) {
                ours = ours.max(measure_ours(
                    &options,
                    &data,
                    architecture,
                    world_size,
                    false,
                    false,
                )?);
                if sequential_wanted {
                    ours_sequential = ours_sequential.max(measure_ours(
                        &options,
                        &data,
                        architecture,
                        world_size,
                        false,
                        true,
                    )?);
                }
                pytorch = pytorch.max(measure_pytorch(
                    &options,
                    &data,
                    architecture,
                    world_size,
                    true,
                    false,
                )?);
                if options.pytorch_nchw {
                    pytorch_nchw = pytorch_nchw.max(measure_pytorch(
                        &options,
                        &data,
                        architecture,
                        world_size,
                        false,
                        false,
                    )?);
                }
            }
            let pytorch_setting = if world_size == 1 { "eager" } else { "DDP gloo" };
            println!(
                "{:<8} {:<22} {:>12.1} {:>14.1} {:>6.2}x  (pytorch {pytorch_setting}, channels-last)",
                architecture.name(),
                setting,
                ours,
                pytorch,
                ours / pytorch
            );
            roofline_line(ours, pytorch, core_peak_f32, world_size);
            if options.pytorch_nchw {
                println!(
                    "{:<8} {:<22} {:>12} {:>14.1} {:>6.2}x  (pytorch {pytorch_setting}, NCHW default layout)",
                    "",
                    "",
                    "",
                    pytorch_nchw,
                    ours / pytorch_nchw
                );
            }
            if sequential_wanted {
                println!(
                    "{:<8} {:<22} {:>12.1} {:>14} {:>6.2}x  (ours overlapped all-reduce vs ours sequential)",
                    "",
                    "  sequential all-reduce",
                    ours_sequential,
                    "",
                    ours / ours_sequential
                );
            }
            if options.bf16 {
                let mut ours_bf16: f64 = 0.0;
                let mut pytorch_bf16: f64 = 0.0;
                for _ in 0..options.repeats.max(1) {
                    ours_bf16 = ours_bf16.max(measure_ours(
                        &options,
                        &data,
                        architecture,
                        world_size,
                        true,
                        false,
                    )?);
                    pytorch_bf16 = pytorch_bf16.max(measure_pytorch(
                        &options,
                        &data,
                        architecture,
                        world_size,
                        true,
                        true,
                    )?);
                }
                let pytorch_bf16_setting = if world_size == 1 {
                    "autocast bf16, channels-last"
                } else {
                    "DDP autocast bf16 + bf16_compress_hook, channels-last"
                };
                println!(
                    "{:<8} {:<22} {:>12.1} {:>14.1} {:>6.2}x  (bf16; pytorch {pytorch_bf16_setting}; ours bf16/fp32 {:.2}x)",
                    "",
                    "  bf16",
                    ours_bf16,
                    pytorch_bf16,
                    ours_bf16 / pytorch_bf16,
                    ours_bf16 / ours
                );
                if let Some(core_peak) = core_peak_bf16 {
                    roofline_line(ours_bf16, pytorch_bf16, core_peak, world_size);
                }
            }
        }
    }
    Ok(())
}
