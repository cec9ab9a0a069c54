//! All-reduce throughput: plankton-collective's TCP ring vs torch.distributed gloo, 2 processes on 127.0.0.1,
//! and the ring's security modes against each other.
//!
//! `cargo run --release -p plankton-bench --bin allreduce_bench` spawns itself twice (`--rank 0/1`) per ring
//! mode (plaintext: no secret, no TLS; authenticated: HMAC-proof handshake with a ring secret; tls: the same
//! inside TLS 1.3), runs the gloo script of `bench/python/gloo_allreduce.py` the same way, and prints the
//! plaintext ring vs gloo, then the modes side by side: steady-state bandwidth with its ratio to plaintext,
//! and the time to form the ring, measured apart. Every ring size is also timed with bf16 gradient compression
//! (`all_reduce_sum_compressed`, half the bytes on the wire); its bandwidth counts the f32 buffer reduced, so
//! the `bf16/f32` column is the speed-up a training step's all-reduce sees. gloo's bf16 figure is DDP's
//! `bf16_compress_hook` on the same buffer (cast to bf16, all_reduce in bf16, copy back).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use plankton_collective::{
    Collective, GradientCompression, RingAbort, RingAllReduce, RingConfig, RingListener,
    RingSecurity,
};

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
    /// Ring modes to compare (the first table's ring is plaintext when it is among them, else the first).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "plaintext,authenticated,tls"
    )]
    modes: Vec<RingMode>,
    /// Ring formations timed per mode (after one untimed formation that absorbs the processes' start).
    #[arg(long, default_value_t = 5)]
    formations: usize,
    /// Internal: the ring mode of this rank (set by the parent process).
    #[arg(long, hide = true, value_enum, default_value = "plaintext")]
    mode: RingMode,
    /// Internal: run as this rank of the ring (set by the parent process).
    #[arg(long, hide = true)]
    rank: Option<usize>,
    /// Internal: listen addresses of every rank.
    #[arg(long, hide = true, value_delimiter = ',')]
    peers: Vec<String>,
}

const WORLD_SIZE: usize = 2;

/// The ring secret of the authenticated modes. A benchmark's secret guards nothing; a job's is random.
const BENCH_RING_SECRET: [u8; 32] = *b"plankton-allreduce-bench-secret!";

/// How the ring's connections are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RingMode {
    /// No ring secret, no TLS (`RingAllReduce::establish`).
    Plaintext,
    /// HMAC proofs of the ring secret in the handshake, data over plain TCP.
    Authenticated,
    /// HMAC proofs bound to a TLS 1.3 session, data inside TLS.
    Tls,
}

impl RingMode {
    fn name(self) -> &'static str {
        match self {
            RingMode::Plaintext => "plaintext",
            RingMode::Authenticated => "authenticated",
            RingMode::Tls => "tls",
        }
    }

    fn security(self) -> RingSecurity {
        match self {
            RingMode::Plaintext => RingSecurity::unauthenticated(),
            RingMode::Authenticated => RingSecurity::new(BENCH_RING_SECRET, false),
            RingMode::Tls => RingSecurity::new(BENCH_RING_SECRET, true),
        }
    }
}

/// What rank 0 of one ring mode measured.
#[derive(Debug, Clone)]
struct ModeResult {
    mode: RingMode,
    /// Median time to establish the ring (both ranks ready, so no waiting for a late peer).
    formation_seconds: f64,
    measurements: Vec<Measurement>,
}

/// Seconds per iteration of one buffer size, as rank 0 measured it.
#[derive(Debug, Clone)]
struct Measurement {
    size_mib: usize,
    seconds_per_iteration: f64,
    /// The same buffer all-reduced with bf16 on the wire (rings only).
    bf16_seconds_per_iteration: Option<f64>,
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

/// One rank: joins the ring (re-forming it `--formations` times, timed), times all-reduces; rank 0 prints a
/// `formation seconds` line, then one `size_mib seconds` line per size.
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
    let security = options.mode.security();
    let establish = |generation: u32| {
        RingAllReduce::establish_secured(
            &listener,
            "allreduce-bench",
            generation,
            rank,
            &options.peers,
            &config,
            &security,
            &RingAbort::new(),
        )
    };
    // Generation 0 waits for the other process to start; the timed generations after it find it ready.
    let mut ring = establish(0)?;
    ring.barrier()?;
    let mut formation_seconds = Vec::with_capacity(options.formations);
    for generation in 1..=options.formations as u32 {
        drop(ring);
        let started = Instant::now();
        ring = establish(generation)?;
        formation_seconds.push(started.elapsed().as_secs_f64());
        ring.barrier()?;
    }
    if rank == 0 {
        formation_seconds.sort_by(f64::total_cmp);
        let median = formation_seconds
            .get(formation_seconds.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!("formation {median}");
    }
    for &size_mib in &options.sizes_mib {
        let element_count = size_mib * 1024 * 1024 / std::mem::size_of::<f32>();
        let iterations = iterations_for(size_mib, options.iterations);
        let mut seconds = Vec::with_capacity(2);
        for compression in [GradientCompression::None, GradientCompression::Bf16] {
            let mut buffer = vec![1.0f32; element_count];
            for _ in 0..options.warmup {
                ring.all_reduce_sum_compressed(&mut buffer, compression)?;
            }
            ring.barrier()?;
            let started = Instant::now();
            for _ in 0..iterations {
                ring.all_reduce_sum_compressed(&mut buffer, compression)?;
            }
            seconds.push(started.elapsed().as_secs_f64() / iterations as f64);
            // The sum grows by a power of two per call: exact in f32 and in bf16, so the result checks the
            // transport.
            let expected = (WORLD_SIZE as f32).powi((options.warmup + iterations) as i32);
            ensure!(
                buffer.iter().all(|&value| value == expected),
                "wrong all-reduce result ({})",
                compression.name()
            );
        }
        if rank == 0 {
            println!("{size_mib} {} {}", seconds[0], seconds[1]);
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
            let bf16_seconds_per_iteration = fields.next().map(str::parse).transpose()?;
            Ok(Measurement {
                size_mib,
                seconds_per_iteration,
                bf16_seconds_per_iteration,
            })
        })
        .collect()
}

/// Spawns the 2 ranks of this program in `mode` and collects rank 0's measurements.
fn run_ring_processes(options: &Options, mode: RingMode) -> anyhow::Result<ModeResult> {
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
                .args(["--formations", &options.formations.to_string()])
                .args(["--mode", mode.name()])
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
            "ring rank {rank} ({}) failed: {}",
            mode.name(),
            output.status
        );
        if rank == 0 {
            rank_zero_stdout = String::from_utf8(output.stdout)?;
        }
    }
    let (formation_line, size_lines) = rank_zero_stdout
        .split_once('\n')
        .context("rank 0 printed nothing")?;
    let formation_seconds = formation_line
        .strip_prefix("formation ")
        .context("rank 0's first line is not the formation time")?
        .trim()
        .parse()?;
    Ok(ModeResult {
        mode,
        formation_seconds,
        measurements: parse_measurements(size_lines)?,
    })
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
    bandwidths_of(measurement.size_mib, measurement.seconds_per_iteration)
}

/// (algorithm bandwidth, bus bandwidth) in GB/s of an f32 buffer of `size_mib` reduced in `seconds`.
fn bandwidths_of(size_mib: usize, seconds: f64) -> (f64, f64) {
    let bytes = (size_mib * 1024 * 1024) as f64;
    let algorithm_gbps = bytes / seconds / 1e9;
    let bus_factor = 2.0 * (WORLD_SIZE - 1) as f64 / WORLD_SIZE as f64;
    (algorithm_gbps, algorithm_gbps * bus_factor)
}

fn run_parent(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!(!options.modes.is_empty(), "--modes names no ring mode");
    let mode_results: Vec<ModeResult> = options
        .modes
        .iter()
        .map(|&mode| run_ring_processes(options, mode))
        .collect::<Result<_, _>>()?;
    let reference = mode_results
        .iter()
        .find(|result| result.mode == RingMode::Plaintext)
        .unwrap_or(&mode_results[0]);
    let ring = &reference.measurements;
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
        "all-reduce, {WORLD_SIZE} processes on 127.0.0.1, f32, ring chunk {} KiB, {} warmup + {} timed iterations (64 MiB+: a quarter); ring = {}",
        options.chunk_bytes / 1024,
        options.warmup,
        options.iterations,
        reference.mode.name()
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
    for ring_measurement in ring {
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
    print_modes(reference, &mode_results);
    print_compression(reference, &gloo);
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The f32 ring against the same ring with bf16 on the wire (bandwidth of the f32 buffer reduced), and the
/// bf16 ring against gloo's bf16 (DDP's bf16_compress_hook) when measured.
fn print_compression(reference: &ModeResult, gloo: &[Measurement]) {
    println!();
    println!(
        "gradient compression, {} ring (algbw of the f32 buffer reduced):",
        reference.mode.name()
    );
    println!(
        "{:>8} | {:>12} {:>9} | {:>12} {:>9} | {:>9} | {:>14} {:>14}",
        "size",
        "f32 algbw",
        "f32 ms",
        "bf16 algbw",
        "bf16 ms",
        "bf16/f32",
        "gloo bf16 ms",
        "bf16 ring/gloo"
    );
    for measurement in &reference.measurements {
        let Some(bf16_seconds) = measurement.bf16_seconds_per_iteration else {
            continue;
        };
        let (f32_gbps, _) = bandwidths(measurement);
        let (bf16_gbps, _) = bandwidths_of(measurement.size_mib, bf16_seconds);
        let gloo_bf16_seconds = gloo
            .iter()
            .find(|gloo_measurement| gloo_measurement.size_mib == measurement.size_mib)
            .and_then(|gloo_measurement| gloo_measurement.bf16_seconds_per_iteration);
        let gloo_columns = match gloo_bf16_seconds {
            Some(gloo_seconds) => format!(
                "{:>14.2} {:>13.2}x",
                gloo_seconds * 1e3,
                gloo_seconds / bf16_seconds
            ),
            None => format!("{:>14} {:>14}", "-", "-"),
        };
        println!(
            "{:>5}MiB | {:>8.2}GB/s {:>9.2} | {:>8.2}GB/s {:>9.2} | {:>8.2}x | {gloo_columns}",
            measurement.size_mib,
            f32_gbps,
            measurement.seconds_per_iteration * 1e3,
            bf16_gbps,
            bf16_seconds * 1e3,
            bf16_gbps / f32_gbps
        );
    }
}

/// The ring modes side by side: steady-state algorithm bandwidth per size with its ratio to `reference`,
/// then the median formation time of each mode.
fn print_modes(reference: &ModeResult, mode_results: &[ModeResult]) {
    println!();
    println!(
        "ring modes, steady state (algbw; x = vs {}):",
        reference.mode.name()
    );
    let mut header = format!("{:>8}", "size");
    for result in mode_results {
        header.push_str(&format!(" | {:>22}", result.mode.name()));
    }
    println!("{header}");
    for reference_measurement in &reference.measurements {
        let size_mib = reference_measurement.size_mib;
        let (reference_gbps, _) = bandwidths(reference_measurement);
        let mut row = format!("{size_mib:>5}MiB");
        for result in mode_results {
            let cell = match result.measurements.iter().find(|m| m.size_mib == size_mib) {
                Some(measurement) => {
                    let (gbps, _) = bandwidths(measurement);
                    format!("{gbps:>8.2}GB/s {:>8.2}x", gbps / reference_gbps)
                }
                None => "-".to_string(),
            };
            row.push_str(&format!(" | {cell:>22}"));
        }
        println!("{row}");
    }
    let mut formation = format!("{:>8}", "formed");
    for result in mode_results {
        let cell = format!(
            "{:>8.2}ms {:>8.2}x",
            result.formation_seconds * 1e3,
            result.formation_seconds / reference.formation_seconds
        );
        formation.push_str(&format!(" | {cell:>22}"));
    }
    println!("{formation}");
    println!(
        "(formed: median time to establish the {WORLD_SIZE}-rank ring with both ranks ready, handshake included)"
    );
}
