//! All-reduce throughput: plankton-collective's TCP ring vs torch.distributed gloo, 2 processes on 127.0.0.1.
//!
//! `cargo run --release -p plankton-bench --bin allreduce_bench` spawns itself twice (`--rank 0/1`), runs
//! the gloo script of `bench/python/gloo_allreduce.py` the same way, and prints both side by side.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use plankton_collective::{Collective, RingAbort, RingAllReduce, RingConfig, RingListener};

#[derive(Debug, Parser)]
#[command(about = "Ring all-reduce vs gloo, 2 processes on 127.0.0.1")]
struct Options {
    /// Buffer sizes in MiB of f32.
    #[arg(long, value_delimiter = ',', default_value = "4,64")]
    sizes_mib: Vec<usize>,
    /// Timed iterations per size (a 64 MiB or larger buffer runs a quarter of them, at least 3).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Untimed iterations before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Pipelined chunk size of the ring.
    #[arg(long, default_value_t = RingConfig::default().chunk_bytes)]
    chunk_bytes: usize,
    /// Python of the benchmark venv (scripts/setup-bench.sh).
    #[arg(long, default_value = ".venv-bench/bin/python")]
    python: PathBuf,
    /// Skip the gloo comparison.
    #[arg(long)]
    skip_gloo: bool,
    /// Internal: run as this rank of the ring (set by the parent process).
    #[arg(long, hide = true)]
    rank: Option<usize>,
    /// Internal: listen addresses of every rank.
    #[arg(long, hide = true, value_delimiter = ',')]
    peers: Vec<String>,
}

const WORLD_SIZE: usize = 2;

/// Seconds per iteration of one buffer size, as rank 0 measured it.
#[derive(Debug, Clone)]
struct Measurement {
    size_mib: usize,
    seconds_per_iteration: f64,
}

fn iterations_for(size_mib: usize, iterations: usize) -> usize {
    if size_mib >= 64 {
        (iterations / 4).max(3)
    } else {
        iterations
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    match options.rank {
        Some(rank) => run_rank(&options, rank),
        None => run_parent(&options),
    }
}

/// One rank: joins the ring, times all-reduces, rank 0 prints one `size_mib seconds` line per size.
fn run_rank(options: &Options, rank: usize) -> anyhow::Result<()> {
    ensure!(
        options.peers.len() == WORLD_SIZE,
        "--peers needs {WORLD_SIZE} addresses"
    );
    let listener = RingListener::bind(&options.peers[rank])?;
    let config = RingConfig {
        chunk_bytes: options.chunk_bytes,
        ..RingConfig::default()
    };
    let mut ring = RingAllReduce::establish(
        &listener,
        "allreduce-bench",
        0,
        rank,
        &options.peers,
        &config,
        &RingAbort::new(),
    )?;
    for &size_mib in &options.sizes_mib {
        let element_count = size_mib * 1024 * 1024 / std::mem::size_of::<f32>();
        let mut buffer = vec![1.0f32; element_count];
        for _ in 0..options.warmup {
            ring.all_reduce_sum(&mut buffer)?;
        }
        let iterations = iterations_for(size_mib, options.iterations);
        ring.barrier()?;
        let started = Instant::now();
        for _ in 0..iterations {
            ring.all_reduce_sum(&mut buffer)?;
        }
        let seconds_per_iteration = started.elapsed().as_secs_f64() / iterations as f64;
        // The sum grows by a power of two per call: still exact, so the result checks the transport.
        let expected = (WORLD_SIZE as f32).powi((options.warmup + iterations) as i32);
        ensure!(
            buffer.iter().all(|&value| value == expected),
            "wrong all-reduce result"
        );
        if rank == 0 {
            println!("{size_mib} {seconds_per_iteration}");
        }
    }
    Ok(())
}

fn free_local_address() -> anyhow::Result<String> {
    let probe = TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.to_string())
}

fn parse_measurements(stdout: &str) -> anyhow::Result<Vec<Measurement>> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            let size_mib = fields.next().context("size field")?.parse()?;
            let seconds_per_iteration = fields.next().context("seconds field")?.parse()?;
            Ok(Measurement {
                size_mib,
                seconds_per_iteration,
            })
        })
        .collect()
}

/// Spawns the 2 ranks of this program and collects rank 0's measurements.
fn run_ring_processes(options: &Options) -> anyhow::Result<Vec<Measurement>> {
    let executable = std::env::current_exe()?;
    let peers: Vec<String> = (0..WORLD_SIZE)
        .map(|_| free_local_address())
        .collect::<Result<_, _>>()?;
    let sizes: Vec<String> = options.sizes_mib.iter().map(ToString::to_string).collect();
    let children: Vec<_> = (0..WORLD_SIZE)
        .map(|rank| {
            Command::new(&executable)
                .args(["--rank", &rank.to_string(), "--peers", &peers.join(",")])
                .args(["--sizes-mib", &sizes.join(",")])
                .args(["--iterations", &options.iterations.to_string()])
                .args(["--warmup", &options.warmup.to_string()])
                .args(["--chunk-bytes", &options.chunk_bytes.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawning rank {rank}"))
        })
        .collect::<Result<_, _>>()?;
    let mut rank_zero_stdout = String::new();
    for (rank, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "ring rank {rank} failed: {}",
            output.status
        );
        if rank == 0 {
            rank_zero_stdout = String::from_utf8(output.stdout)?;
        }
    }
    parse_measurements(&rank_zero_stdout)
}

fn run_gloo(options: &Options) -> anyhow::Result<Vec<Measurement>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/gloo_allreduce.py");
    if !options.python.exists() {
        bail!(
            "{} not found: run scripts/setup-bench.sh",
            options.python.display()
        );
    }
    let sizes: Vec<String> = options.sizes_mib.iter().map(ToString::to_string).collect();
    let output = Command::new(&options.python)
        .arg(&script)
        .args(["--sizes-mib", &sizes.join(",")])
        .args(["--iterations", &options.iterations.to_string()])
        .args(["--warmup", &options.warmup.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        output.status.success(),
        "gloo benchmark failed: {}",
        output.status
    );
    parse_measurements(&String::from_utf8(output.stdout)?)
}

/// (algorithm bandwidth, bus bandwidth) in GB/s.
fn bandwidths(measurement: &Measurement) -> (f64, f64) {
    let bytes = (measurement.size_mib * 1024 * 1024) as f64;
    let algorithm_gbps = bytes / measurement.seconds_per_iteration / 1e9;
    let bus_factor = 2.0 * (WORLD_SIZE - 1) as f64 / WORLD_SIZE as f64;
    (algorithm_gbps, algorithm_gbps * bus_factor)
}

fn run_parent(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let ring = run_ring_processes(options)?;
    let gloo = if options.skip_gloo {
        Vec::new()
    } else {
        match run_gloo(options) {
            Ok(measurements) => measurements,
            Err(gloo_error) => {
                eprintln!("gloo comparison skipped: {gloo_error:#}");
                Vec::new()
            }
        }
    };
    println!(
        "all-reduce, {WORLD_SIZE} processes on 127.0.0.1, f32, ring chunk {} KiB, {} warmup + {} timed iterations (64 MiB+: a quarter)",
        options.chunk_bytes / 1024,
        options.warmup,
        options.iterations
    );
    println!(
        "{:>8} | {:>12} {:>12} {:>9} | {:>12} {:>12} {:>9} | {:>9}",
        "size",
        "ring algbw",
        "ring busbw",
        "ring ms",
        "gloo algbw",
        "gloo busbw",
        "gloo ms",
        "ring/gloo"
    );
    for ring_measurement in &ring {
        let (ring_algorithm, ring_bus) = bandwidths(ring_measurement);
        let gloo_measurement = gloo
            .iter()
            .find(|m| m.size_mib == ring_measurement.size_mib);
        let gloo_columns = match gloo_measurement {
            Some(gloo_measurement) => {
                let (gloo_algorithm, gloo_bus) = bandwidths(gloo_measurement);
                format!(
                    "{:>8.2}GB/s {:>8.2}GB/s {:>9.2} | {:>8.2}x",
                    gloo_algorithm,
                    gloo_bus,
                    gloo_measurement.seconds_per_iteration * 1e3,
                    ring_algorithm / gloo_algorithm
                )
            }
            None => format!("{:>12} {:>12} {:>9} | {:>9}", "-", "-", "-", "-"),
        };
        println!(
            "{:>5}MiB | {:>8.2}GB/s {:>8.2}GB/s {:>9.2} | {gloo_columns}",
            ring_measurement.size_mib,
            ring_algorithm,
            ring_bus,
            ring_measurement.seconds_per_iteration * 1e3,
        );
    }
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
