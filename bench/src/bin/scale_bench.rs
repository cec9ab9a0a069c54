//! The full-scale run: the 243,610-object synthetic set (generated once into a folder), trained by a cluster of
//! OS processes (coordinator + 2 workers whose shards are record files on disk read image by image) and by
//! the PyTorch DDP + DataLoader + OpenCV script on the same folder, split and network, side by side. Prints
//! generation, ingest, each epoch's training and evaluation times, images/s, and the peak resident set of every
//! process (the kernel's `VmHWM`; for PyTorch the largest rank or DataLoader process).
//!
//! `make bench-scale` (`cargo build --release --bins`, `scripts/setup-bench.sh`, then
//! `cargo run --release -p plankton-bench --bin scale_bench`); `-- --max-objects 20000` for a short run.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use plankton_bench::ddp_script::{DdpSettings, plan_files, run_ddp_script};
use plankton_bench::{FullSizeDataset, bench_python};
use plankton_proto::v1::{
    ClassWeighting, GetJobRequest, Job, JobPhase, JobSpec, LrSchedule, SubmitJobRequest,
};
use plankton_tests::ProcessCluster;

/// Longest a run may take before the benchmark calls it hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// GetJob polling period (workers report progress every 500 ms).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Parser, Debug)]
#[command(
    about = "Full-scale epoch: cluster processes vs PyTorch DDP + DataLoader, times and peak RSS"
)]
struct Options {
    #[command(flatten)]
    data: FullSizeDataset,
    /// Objects trained and tested on (0: all of them).
    #[arg(long, default_value_t = 0)]
    max_objects: u32,
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Images per step and per worker (rank).
    #[arg(long, default_value_t = 128)]
    batch: u32,
    #[arg(long, default_value_t = 2)]
    workers: u32,
    #[arg(long, default_value = "wide_lenet")]
    model: String,
    /// Page-cache cap of each worker's shard record files, MiB (`plankton-worker --max-resident-mb`).
    #[arg(long, default_value_t = 256)]
    max_resident_mb: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Only the cluster.
    #[arg(long)]
    skip_pytorch: bool,
    /// Workers stream their training shards (`plankton-worker --stream-shards`: training starts after the
    /// first batch; the streamed images go to spill files under the same cap) instead of loading them whole.
    #[arg(long)]
    stream_shards: bool,
}

fn main() -> Result<()> {
    let options = Options::parse();
    for name in ["plankton-coordinator", "plankton-worker"] {
        plankton_tests::binary(name).context("build them: cargo build --release --bins")?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(options))
}

/// A process's peak resident set (`VmHWM`) in MiB, while it runs.
fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// When each stage of the cluster's job was first seen.
#[derive(Default)]
struct Timeline {
    /// Every worker trains (epoch 1 began): the shards are fetched and preprocessed.
    ingested: Option<Instant>,
    /// Per epoch: every worker finished its last step, then the epoch's metrics arrived.
    trained: Vec<Option<Instant>>,
    evaluated: Vec<Option<Instant>>,
}

impl Timeline {
    fn observe(&mut self, job: &Job, now: Instant) {
        let steps = job.steps_per_epoch;
        let training =
            !job.workers.is_empty() && job.workers.iter().all(|worker| worker.epoch >= 1);
        if training && self.ingested.is_none() {
            self.ingested = Some(now);
        }
        for (index, trained) in self.trained.iter_mut().enumerate() {
            let epoch = index as u32 + 1;
            let done = !job.workers.is_empty()
                && job.workers.iter().all(|worker| {
                    worker.epoch > epoch
                        || (worker.epoch == epoch && worker.step >= steps && steps > 0)
                });
            if trained.is_none() && (done || job.epochs.len() >= epoch as usize) {
                *trained = Some(now);
            }
        }
        for (index, evaluated) in self.evaluated.iter_mut().enumerate() {
            if evaluated.is_none() && job.epochs.len() > index {
                *evaluated = Some(now);
            }
        }
    }
}

/// What the cluster's run measured.
struct ClusterRun {
    job: Job,
    submitted: Instant,
    finished: Instant,
    timeline: Timeline,
    coordinator_peak_mb: f64,
    worker_peaks_mb: Vec<f64>,
    /// Each worker's peak resident set when training began (fetch and preprocess behind it).
    worker_ingest_peaks_mb: Vec<f64>,
    train_objects: u64,
}

async fn cluster_run(options: &Options, dataset: &Path, spec: JobSpec) -> Result<ClusterRun> {
    let cache = tempfile::tempdir()?;
    let cache_dir = cache.path().display().to_string();
    let max_resident = options.max_resident_mb.to_string();
    let allowed = dataset.display().to_string();
    let mut worker_args: Vec<&str> = vec![
        "--cache-dir",
        &cache_dir,
        "--max-resident-mb",
        &max_resident,
    ];
    if options.stream_shards {
        worker_args.push("--stream-shards");
    }
    let mut cluster = ProcessCluster::start_with_args(
        options.workers as usize,
        &["--allow-dataset", &allowed],
        &worker_args,
    )
    .await?;
    let result = drive_job(options, &mut cluster, spec).await;
    if result.is_err() {
        eprintln!("{}", cluster.logs());
    }
    cluster.shutdown().await?;
    result
}

async fn drive_job(
    options: &Options,
    cluster: &mut ProcessCluster,
    spec: JobSpec,
) -> Result<ClusterRun> {
    let mut client = cluster.access.jobs().await?;
    let submitted = Instant::now();
    let job = client
        .submit_job(SubmitJobRequest { spec: Some(spec) })
        .await?
        .into_inner();
    let mut timeline = Timeline {
        trained: vec![None; options.epochs as usize],
        evaluated: vec![None; options.epochs as usize],
        ..Timeline::default()
    };
    let pids: Vec<Option<u32>> = cluster.workers.iter().map(|worker| worker.id()).collect();
    let coordinator_pid = cluster.coordinator.id();
    let (mut coordinator_peak_mb, mut worker_peaks_mb) = (0.0f64, vec![0.0f64; pids.len()]);
    let mut worker_ingest_peaks_mb = Vec::new();
    let mut last_loaded = 0;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = Instant::now();
        if now.duration_since(submitted) > RUN_TIMEOUT {
            bail!("job {} not finished after {RUN_TIMEOUT:?}", job.id);
        }
        // VmHWM only grows; sampled while the processes live.
        coordinator_peak_mb = coordinator_peak_mb.max(peak_rss_mb(coordinator_pid).unwrap_or(0.0));
        for (peak, pid) in worker_peaks_mb.iter_mut().zip(&pids) {
            *peak = peak.max(peak_rss_mb(*pid).unwrap_or(0.0));
        }
        let current = client
            .get_job(GetJobRequest {
                job_id: job.id.clone(),
            })
            .await?
            .into_inner();
        timeline.observe(&current, now);
        if timeline.ingested.is_some() && worker_ingest_peaks_mb.is_empty() {
            worker_ingest_peaks_mb = worker_peaks_mb.clone();
        }
        let loaded: u64 = current
            .workers
            .iter()
            .map(|worker| worker.loaded_objects)
            .sum();
        if loaded >= last_loaded + 50_000 {
            last_loaded = loaded;
            println!(
                "  {:>5.0} s  {loaded} objects fetched and preprocessed",
                now.duration_since(submitted).as_secs_f64()
            );
        }
        match current.phase() {
            JobPhase::Succeeded => {
                let train_objects = current
                    .workers
                    .iter()
                    .map(|worker| worker.steps_per_epoch * u64::from(options.batch))
                    .sum();
                return Ok(ClusterRun {
                    job: current,
                    submitted,
                    finished: now,
                    timeline,
                    coordinator_peak_mb,
                    worker_peaks_mb,
                    worker_ingest_peaks_mb,
                    train_objects,
                });
            }
            JobPhase::Failed | JobPhase::Cancelled => {
                bail!(
                    "job {} ended {:?}: {}",
                    current.id,
                    current.phase(),
                    current.message
                )
            }
            _ => {}
        }
    }
}

fn seconds_between(from: Option<Instant>, to: Option<Instant>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => {
            format!("{:.0} s", to.saturating_duration_since(from).as_secs_f64())
        }
        _ => "?".to_string(),
    }
}

async fn run(options: Options) -> Result<()> {
    let python = bench_python(!options.skip_pytorch, "bench-scale")?;
    let dataset = options.data.ensure().await?;
    let spec = JobSpec {
        name: "scale".to_string(),
        dataset_url: format!("file://{}", dataset.display()),
        world_size: options.workers,
        model: options.model.clone(),
        epochs: options.epochs,
        batch_size: options.batch,
        class_weighting: ClassWeighting::Balanced as i32,
        lr_schedule: LrSchedule::Constant as i32,
        seed: options.seed,
        max_objects: options.max_objects,
        threads_per_worker: 1,
        ..Default::default()
    };
    let residence = format!(
        "shard {} read from disk, at most {} MiB of them cached per worker",
        if options.stream_shards {
            "images streamed into spill files and"
        } else {
            "records"
        },
        options.max_resident_mb
    );
    println!(
        "{} x {}, {} epoch(s), batch {} per worker, 1 thread per worker, {residence}",
        options.workers, options.model, options.epochs, options.batch
    );

    println!(
        "\n== cluster: coordinator + {} worker processes",
        options.workers
    );
    let cluster = cluster_run(&options, &dataset, spec.clone()).await?;
    let timeline = &cluster.timeline;
    let total = cluster
        .finished
        .duration_since(cluster.submitted)
        .as_secs_f64();
    println!(
        "  submit to first step (plan, fetch + preprocess the shards, or their first batches when streaming; ring): {}",
        seconds_between(Some(cluster.submitted), timeline.ingested)
    );
    let mut epoch_start = timeline.ingested;
    let mut train_seconds = 0.0;
    for (index, metrics) in cluster.job.epochs.iter().enumerate() {
        let trained = timeline.trained[index];
        if let (Some(start), Some(end)) = (epoch_start, trained) {
            train_seconds += end.saturating_duration_since(start).as_secs_f64();
        }
        println!(
            "  epoch {}: train {}, evaluate {}, macro-F1 {:.3}, accuracy {:.3}",
            index + 1,
            seconds_between(epoch_start, trained),
            seconds_between(trained, timeline.evaluated[index]),
            metrics.macro_f1,
            metrics.accuracy
        );
        epoch_start = timeline.evaluated[index];
    }
    let cluster_images_per_second =
        cluster.train_objects as f64 * f64::from(options.epochs) / train_seconds.max(1e-9);
    println!(
        "  {} training images per epoch, {cluster_images_per_second:.0} images/s while training; job {total:.0} s from submit to model",
        cluster.train_objects
    );
    println!(
        "  peak RSS: coordinator {:.0} MiB",
        cluster.coordinator_peak_mb
    );
    for (index, peak) in cluster.worker_peaks_mb.iter().enumerate() {
        let at_first_step = cluster
            .worker_ingest_peaks_mb
            .get(index)
            .map(|peak| format!("{peak:.0} MiB"))
            .unwrap_or_else(|| "?".to_string());
        println!("  peak RSS: worker {index} {peak:.0} MiB ({at_first_step} by its first step)");
    }
    for worker in &cluster.job.workers {
        println!(
            "  step time of rank {} (its last report): data {:.1} ms, compute {:.1} ms, communication {:.1} ms \
             (+{:.1} ms hidden behind the backward), optimizer {:.1} ms",
            worker.rank,
            worker.data_seconds_per_step * 1e3,
            worker.compute_seconds_per_step * 1e3,
            worker.communication_seconds_per_step * 1e3,
            worker.hidden_communication_seconds_per_step * 1e3,
            worker.optimizer_seconds_per_step * 1e3
        );
    }

    if options.skip_pytorch {
        return Ok(());
    }
    println!(
        "\n== PyTorch DDP (gloo) + DataLoader + OpenCV, {} ranks, channels-last, same split",
        options.workers
    );
    let work = tempfile::tempdir()?;
    let files = plan_files(&spec, work.path()).await?;
    let result_path = work.path().join("pytorch.json");
    let settings = DdpSettings {
        python,
        dataset,
        model: options.model.clone(),
        epochs: options.epochs,
        batch: options.batch,
        learning_rate: 1e-3,
        seed: options.seed,
        world: options.workers,
        extra_args: vec!["--channels-last".to_string()],
    };
    let started = Instant::now();
    let pytorch = run_ddp_script(settings, files, result_path).await?;
    let pytorch_total = started.elapsed().as_secs_f64();
    let pytorch_images_per_second =
        cluster.train_objects as f64 * f64::from(options.epochs) / pytorch.seconds.max(1e-9);
    println!(
        "  train {:.0} s (decoding every epoch), evaluate {:.0} s, macro-F1 {:.3}, accuracy {:.3}",
        pytorch.seconds, pytorch.eval_seconds, pytorch.macro_f1, pytorch.accuracy
    );
    println!(
        "  {pytorch_images_per_second:.0} images/s while training; {pytorch_total:.0} s from start to metrics (process start included)"
    );
    println!(
        "  peak RSS: largest rank {:.0} MiB",
        pytorch.peak_rank_rss_mb
    );

    println!("\n== side by side");
    println!(
        "  end to end (cluster: submit to registered model, ingest included; PyTorch: start to metrics): {total:.0} s vs {pytorch_total:.0} s = {:.2}x",
        pytorch_total / total
    );
    println!(
        "  training images/s: {cluster_images_per_second:.0} vs {pytorch_images_per_second:.0} = {:.2}x",
        cluster_images_per_second / pytorch_images_per_second
    );
    let worker_peak = cluster.worker_peaks_mb.iter().copied().fold(0.0, f64::max);
    println!(
        "  peak RSS per training process: {worker_peak:.0} MiB (worker) vs {:.0} MiB (rank) (goal <= 1,229 MiB for a worker)",
        pytorch.peak_rank_rss_mb
    );
    Ok(())
}
