//! Inference service load test: throughput and latency with 1 and 64 concurrent clients, batching on vs off.
//!
//! `cargo run --release -p plankton-bench --bin serve_bench -- [--seconds 5] [--clients 1,64]`
//! Starts an in-memory model registry and a plankton-serve server in this process with a default-architecture
//! (resnet, 40 classes) model trained for one step on random images, then runs closed-loop clients (each sends
//! one 1-image Predict request, waits for the answer, repeats) against the server with dynamic batching on
//! (`--max-batch-size`, `--max-queue-delay`) and off (max batch size 1). First it times the model alone against
//! PyTorch eager on the same weights and threads, in trials that alternate the two sides (`--forward-trials`,
//! `--forward-threads`, `--python`; `--forward-only` stops there).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use plankton_bench::roofline;
use plankton_collective::SingleProcess;
use plankton_dataset::open_location;
use plankton_proto::v1::inference_client::InferenceClient;
use plankton_proto::v1::{GetModelInfoRequest, ImageInput, ModelVersion, PredictRequest};
use plankton_serve::{BatchingConfig, InMemoryRegistry, ServeConfig, serve_with_metrics_listener};
use plankton_trainer::{
    Architecture, IMAGE_LEN, LoggingObserver, ModelCard, ModelInput, ShardData, TrainConfig,
    run_training,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Load test of plankton-serve: throughput and p50/p99 latency, dynamic batching on vs off"
)]
struct Options {
    /// Timed seconds per measurement (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Concurrent client counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Batching limit of the "batching on" server.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// Queue delay of the "batching on" server.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    max_queue_delay: Duration,
    /// libtorch threads of the forward-pass comparison (ours and PyTorch's alike).
    #[arg(long, default_value_t = 1)]
    forward_threads: usize,
    /// Python with torch 2.11 for the PyTorch eager reference (scripts/setup-bench.sh).
    #[arg(long, default_value = ".venv-bench/bin/python")]
    python: std::path::PathBuf,
    /// Trials of the forward-pass comparison, each our rounds then a PyTorch run.
    #[arg(long, default_value_t = 3)]
    forward_trials: usize,
    /// Only the forward-pass comparison, no load test.
    #[arg(long)]
    forward_only: bool,
}

const CLASS_COUNT: usize = 40;

/// Safetensors weights of a resnet trained one step on random images.
fn briefly_trained_resnet() -> anyhow::Result<Vec<u8>> {
    let mut shard = ShardData::default();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for index in 0..16 {
        for _ in 0..IMAGE_LEN {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shard.images.push((state >> 56) as u8);
        }
        shard.labels.push((index % CLASS_COUNT) as u32);
    }
    let mut config = TrainConfig::new(CLASS_COUNT, vec![1.0; CLASS_COUNT]);
    config.architecture = Architecture::ResNet;
    config.epochs = 1;
    config.batch_size = 16;
    config.steps_per_epoch = 1;
    let trained = run_training(
        &config,
        &shard,
        &shard,
        &mut SingleProcess,
        &mut LoggingObserver,
    )?;
    Ok(trained.to_safetensors()?)
}

async fn publish(weights: Vec<u8>) -> anyhow::Result<ModelVersion> {
    let location = open_location("memory://serve-bench/models/plankton/1")?;
    let class_names: Vec<String> = (0..CLASS_COUNT)
        .map(|index| format!("class {index}"))
        .collect();
    let card = ModelCard {
        architecture: Architecture::ResNet,
        classes: class_names.clone(),
        input: ModelInput::standard("stretch"),
        metrics: serde_json::json!({}),
        job_id: "bench".to_string(),
        created_unix_ms: 0,
        weights_file: "model.safetensors".to_string(),
        feature_transform: None,
        training: None,
    };
    location
        .put_bytes("model.safetensors", Bytes::from(weights))
        .await?;
    location
        .put_bytes("model-card.json", Bytes::from(serde_json::to_vec(&card)?))
        .await?;
    Ok(ModelVersion {
        name: "plankton".to_string(),
        version: 1,
        architecture: "resnet".to_string(),
        class_names,
        resize_mode: "stretch".to_string(),
        weights_url: location.object_url("model.safetensors"),
        card_url: location.object_url("model-card.json"),
        ..Default::default()
    })
}

/// FlowCam-like JPEGs of several classes and sizes.
fn request_images() -> anyhow::Result<Vec<Vec<u8>>> {
    (0..32)
        .map(|index| {
            plankton_synth::render_object(index % CLASS_COUNT, index as u64, 3)
                .encode_jpeg(90)
                .map_err(|error| anyhow::anyhow!("encoding a synthetic image: {error}"))
        })
        .collect()
}

/// Milliseconds per forward pass (and per image) of the model alone, by batch size: what batching can gain; and
/// images/s of ours (batch norms folded, and as trained) vs PyTorch eager (`torch.inference_mode`, NCHW and
/// channels-last) on the same weights, images and thread count, side by side.
fn print_forward_pass_costs(weights: &[u8], options: &Options) -> anyhow::Result<()> {
    let previous_threads = tch::get_num_threads();
    tch::set_num_threads(options.forward_threads as i32);
    let outcome = compare_forward_passes(weights, options);
    tch::set_num_threads(previous_threads);
    outcome
}

/// Timed rounds per measurement of the forward-pass comparison; each side reports its best round.
const FORWARD_ROUNDS: usize = 7;

fn compare_forward_passes(weights: &[u8], options: &Options) -> anyhow::Result<()> {
    const BATCH_SIZES: [usize; 3] = [1, 8, 64];
    let load = || {
        plankton_trainer::InferenceModel::from_safetensors(
            Architecture::ResNet,
            CLASS_COUNT,
            weights,
            tch::Device::Cpu,
        )
    };
    let folded = load()?;
    let as_trained = load()?.without_folding();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let pixels: Vec<u8> = (0..64 * IMAGE_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    // Both models' rounds alternate, so neither gains from running second (allocator pages already faulted
    // in, caches warm) or loses to a burst of load on this shared machine; each reports its best round.
    let folded_and_as_trained_rates = |batch_size: usize| -> anyhow::Result<(f64, f64)> {
        let images = &pixels[..batch_size * IMAGE_LEN];
        for model in [&folded, &as_trained] {
            for _ in 0..3 {
                model.predict_probabilities(images, batch_size)?;
            }
        }
        let repetitions = (128 / batch_size).max(4);
        let mut best = [0.0f64; 2];
        for _ in 0..FORWARD_ROUNDS {
            for (index, model) in [&folded, &as_trained].into_iter().enumerate() {
                let started = Instant::now();
                for _ in 0..repetitions {
                    model.predict_probabilities(images, batch_size)?;
                }
                let rate = (batch_size * repetitions) as f64 / started.elapsed().as_secs_f64();
                best[index] = best[index].max(rate);
            }
        }
        Ok((best[0], best[1]))
    };
    let measure_ours = || -> anyhow::Result<Vec<(usize, f64, f64)>> {
        BATCH_SIZES
            .into_iter()
            .map(|batch_size| {
                let (folded_rate, as_trained_rate) = folded_and_as_trained_rates(batch_size)?;
                Ok((batch_size, folded_rate, as_trained_rate))
            })
            .collect()
    };

    let python_ready = options.python.exists();
    if !python_ready {
        println!(
            "PyTorch reference skipped: {} is missing (scripts/setup-bench.sh installs it)",
            options.python.display()
        );
    }
    let folder = tempfile::tempdir()?;
    let weights_path = folder.path().join("model.safetensors");
    let images_path = folder.path().join("images.u8");
    std::fs::write(&weights_path, weights)?;
    std::fs::write(&images_path, &pixels)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/torch_infer.py");
    let batch_sizes: Vec<String> = BATCH_SIZES.iter().map(ToString::to_string).collect();
    let run_reference = || -> anyhow::Result<serde_json::Value> {
        let output = std::process::Command::new(&options.python)
            .arg(&script)
            .arg("--weights")
            .arg(&weights_path)
            .arg("--images")
            .arg(&images_path)
            .args(["--num-classes", &CLASS_COUNT.to_string()])
            .args(["--threads", &options.forward_threads.to_string()])
            .args(["--batch-sizes", &batch_sizes.join(",")])
            .args(["--rounds", &FORWARD_ROUNDS.to_string()])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    // PyTorch's best layout at one batch size in one reference run.
    let best_reference = |reference: &serde_json::Value, batch_size: usize| -> (f64, f64) {
        let key = batch_size.to_string();
        let rate = |layout: &str| reference[layout][&key].as_f64().unwrap_or(f64::NAN);
        (rate("nchw"), rate("channels_last"))
    };

    // Trials alternate our rounds with a PyTorch run, so a swing of this shared machine's load lands on both
    // sides of a trial rather than on one side of the whole comparison.
    let mut our_trials = Vec::new();
    let mut reference_trials = Vec::new();
    for trial in 1..=options.forward_trials {
        let ours = measure_ours()?;
        for (batch_size, folded_rate, as_trained_rate) in &ours {
            println!(
                "trial {trial}: forward pass alone, batch {batch_size:>3}: {:8.2} ms per pass, {:6.3} ms per image (as trained: {:6.3})",
                *batch_size as f64 * 1e3 / folded_rate,
                1e3 / folded_rate,
                1e3 / as_trained_rate
            );
        }
        if python_ready {
            let reference = run_reference()?;
            let ratios: Vec<String> = ours
                .iter()
                .map(|(batch_size, folded_rate, _)| {
                    let (nchw, channels_last) = best_reference(&reference, *batch_size);
                    format!(
                        "batch {batch_size} {:.2}x",
                        folded_rate / nchw.max(channels_last)
                    )
                })
                .collect();
            println!(
                "trial {trial}: ours / PyTorch's best layout: {}",
                ratios.join(", ")
            );
            reference_trials.push(reference);
        }
        our_trials.push(ours);
    }
    let Some(last_reference) = reference_trials.last() else {
        return Ok(());
    };
    let ours_probabilities = folded.predict_probabilities(&pixels[..4 * IMAGE_LEN], 4)?;
    let largest_difference = last_reference["probabilities"]
        .as_array()
        .context("probabilities from the PyTorch reference")?
        .iter()
        .flat_map(|row| row.as_array().cloned().unwrap_or_default())
        .zip(&ours_probabilities)
        .map(|(theirs, ours)| (theirs.as_f64().unwrap_or(f64::NAN) - f64::from(*ours)).abs())
        .fold(0.0f64, f64::max);
    println!(
        "inference images/s, resnet, {} thread(s), softmax included, each side's best round over {} trials of {FORWARD_ROUNDS} rounds (same weights and images; largest probability difference {largest_difference:.1e}):",
        options.forward_threads,
        our_trials.len()
    );
    println!(
        "{:>6} {:>12} {:>12} {:>14} {:>20} {:>9} {:>22}",
        "batch",
        "ours",
        "as trained",
        "PyTorch NCHW",
        "PyTorch channels-last",
        "ratio",
        "per-trial ratio median"
    );
    let mut best_rates = Vec::new();
    for (index, batch_size) in BATCH_SIZES.into_iter().enumerate() {
        let best = |values: &mut dyn Iterator<Item = f64>| values.fold(0.0f64, f64::max);
        let folded_rate = best(&mut our_trials.iter().map(|trial| trial[index].1));
        let as_trained_rate = best(&mut our_trials.iter().map(|trial| trial[index].2));
        let nchw = best(
            &mut reference_trials
                .iter()
                .map(|r| best_reference(r, batch_size).0),
        );
        let channels_last = best(
            &mut reference_trials
                .iter()
                .map(|r| best_reference(r, batch_size).1),
        );
        let mut trial_ratios: Vec<f64> = our_trials
            .iter()
            .zip(&reference_trials)
            .map(|(ours, reference)| {
                let (nchw, channels_last) = best_reference(reference, batch_size);
                ours[index].1 / nchw.max(channels_last)
            })
            .collect();
        trial_ratios.sort_by(f64::total_cmp);
        let median = trial_ratios[trial_ratios.len() / 2];
        println!(
            "{batch_size:>6} {folded_rate:>12.0} {as_trained_rate:>12.0} {nchw:>14.0} {channels_last:>20.0} {:>8.2}x {median:>21.2}x",
            folded_rate / nchw.max(channels_last)
        );
        best_rates.push((batch_size, folded_rate, nchw.max(channels_last)));
    }
    print_roofline(&best_rates, options.forward_threads)
}

/// Each side's best rate at each batch size against the CPU's f32 arithmetic peak, and what the 1.2x goal
/// would ask of it.
fn print_roofline(best_rates: &[(usize, f64, f64)], threads: usize) -> anyhow::Result<()> {
    let cost = plankton_trainer::pass_cost(Architecture::ResNet, CLASS_COUNT, 0)?;
    let measured = roofline::peak(tch::Kind::Float)?;
    let peak = measured.flops();
    println!(
        "roofline: a resnet forward pass is {:.1}M multiply-adds per image; libtorch's kernels reach {} in f32 on {threads} thread(s) here at best (the peak)",
        cost.forward as f64 / 1e6,
        measured.describe()
    );
    for (batch_size, ours, pytorch) in best_rates {
        println!(
            "  batch {batch_size:>3}: ours {}, PyTorch {}; 1.2x PyTorch would be {}",
            roofline::describe(cost.forward_flops(*ours), peak),
            roofline::describe(cost.forward_flops(*pytorch), peak),
            roofline::describe(cost.forward_flops(1.2 * pytorch), peak)
        );
    }
    Ok(())
}

struct Measurement {
    requests: usize,
    failures: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measurement {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index]
    }
}

/// Closed-loop clients for warm-up + timed seconds; latencies of the timed part only.
async fn measure(
    channel: Channel,
    images: Arc<Vec<Vec<u8>>>,
    client_count: usize,
    warmup: Duration,
    timed: Duration,
) -> anyhow::Result<Measurement> {
    let start = Instant::now();
    let timed_start = start + warmup;
    let end = timed_start + timed;
    let mut tasks = Vec::with_capacity(client_count);
    for client_index in 0..client_count {
        let mut client = InferenceClient::new(channel.clone());
        let images = images.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            let mut sent = client_index;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let image = images[sent % images.len()].clone();
                sent += 1;
                let request = PredictRequest {
                    images: vec![ImageInput {
                        data: image,
                        id: sent.to_string(),
                        ..Default::default()
                    }],
                    top_k: 1,
                    ..Default::default()
                };
                let outcome = client.predict(request).await;
                let finished = Instant::now();
                if now >= timed_start && finished <= end {
                    match outcome {
                        Ok(_) => latencies.push(finished - now),
                        Err(_) => failures += 1,
                    }
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (client_latencies, client_failures) = task.await?;
        latencies.extend(client_latencies);
        failures += client_failures;
    }
    latencies.sort();
    Ok(Measurement {
        requests: latencies.len(),
        failures,
        elapsed: timed,
        latencies,
    })
}

async fn start_server(
    registry_url: &str,
    batching: BatchingConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(Channel, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = ServeConfig {
        listen_address: address,
        coordinator_url: registry_url.to_string(),
        model: "plankton@production".to_string(),
        batching,
        ..ServeConfig::default()
    };
    let task = tokio::spawn(serve_with_metrics_listener(
        config, listener, None, shutdown,
    ));
    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let mut client = InferenceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get_model_info(GetModelInfoRequest::default())
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server never loaded its model"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((channel, task))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As plankton-serve does (the PyTorch reference gets the same thresholds through GLIBC_TUNABLES).
    plankton_common::malloc::keep_freed_memory_for_reuse();
    plankton_common::init_tracing_with_default("warn");
    let options = Options::parse();
    let weights = tokio::task::spawn_blocking(briefly_trained_resnet).await??;
    let forward_weights = weights.clone();
    let forward_options = options.clone();
    tokio::task::spawn_blocking(move || {
        print_forward_pass_costs(&forward_weights, &forward_options)
    })
    .await??;
    if options.forward_only {
        return Ok(());
    }
    let registry = InMemoryRegistry::new();
    registry.register(publish(weights).await?);
    registry
        .promote("plankton", 1, "production")
        .map_err(|status| anyhow::anyhow!("{status}"))?;
    let registry_listener = TcpListener::bind("127.0.0.1:0").await?;
    let registry_url = format!("http://{}", registry_listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let registry_task = tokio::spawn(registry.serve(registry_listener, shutdown.clone()));
    let images = Arc::new(request_images()?);
    let warmup = Duration::from_secs_f64(options.warmup_seconds);
    let timed = Duration::from_secs_f64(options.seconds);

    println!(
        "plankton-serve load test: resnet, {CLASS_COUNT} classes, 1 image per request, {:.0} s per point, {} cores",
        options.seconds,
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    );
    println!(
        "{:<34} {:>8} {:>12} {:>10} {:>10} {:>9}",
        "server", "clients", "requests/s", "p50 ms", "p99 ms", "failures"
    );
    let modes = [
        (
            format!(
                "batching on (max {}, {:?})",
                options.max_batch_size, options.max_queue_delay
            ),
            BatchingConfig {
                max_batch_size: options.max_batch_size,
                max_queue_delay: options.max_queue_delay,
                ..BatchingConfig::default()
            },
        ),
        (
            "batching off (max batch size 1)".to_string(),
            BatchingConfig {
                max_batch_size: 1,
                ..BatchingConfig::default()
            },
        ),
    ];
    let mut throughputs: Vec<(String, usize, f64)> = Vec::new();
    for (mode_name, batching) in modes {
        let server_shutdown = shutdown.child_token();
        let (channel, server_task) =
            start_server(&registry_url, batching, server_shutdown.clone()).await?;
        for &client_count in &options.clients {
            let measurement =
                measure(channel.clone(), images.clone(), client_count, warmup, timed).await?;
            println!(
                "{:<34} {:>8} {:>12.1} {:>10.2} {:>10.2} {:>9}",
                mode_name,
                client_count,
                measurement.throughput(),
                measurement.percentile(0.50).as_secs_f64() * 1e3,
                measurement.percentile(0.99).as_secs_f64() * 1e3,
                measurement.failures
            );
            throughputs.push((mode_name.clone(), client_count, measurement.throughput()));
        }
        server_shutdown.cancel();
        server_task.await?.context("server")?;
    }
    for &client_count in &options.clients {
        let at = |on: bool| {
            throughputs
                .iter()
                .find(|(mode, clients, _)| {
                    *clients == client_count && mode.starts_with("batching on") == on
                })
                .map(|(_, _, throughput)| *throughput)
                .unwrap_or(0.0)
        };
        let (on, off) = (at(true), at(false));
        println!(
            "{client_count} clients: batching on / off throughput = {:.2}x",
            if off > 0.0 { on / off } else { 0.0 }
        );
    }
    shutdown.cancel();
    registry_task.await??;
    Ok(())
}
