//! Preprocessing throughput per core: our pipeline against opencv-python on the same JPEGs.
//!
//! `cargo run --release -p plankton-bench --bin preprocess_bench -- [--images DIR] [--limit N]`
//! Without `--images`, generates a synthetic FlowCam dataset with `plankton_synth::generate` (realistic
//! objects, the real size distribution) into a temporary folder first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use plankton_preprocess::{IMAGE_LEN, PreprocessConfig, preprocess_batch_into, preprocess_many};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark plankton-preprocess against the opencv-python pipeline, one core each"
)]
struct Options {
    /// Folder of *.jpg files (searched recursively); generated when absent.
    #[arg(long, env = "PREPROCESS_BENCH_IMAGES")]
    images: Option<PathBuf>,
    /// Generate the synthetic set into this folder (kept afterwards) instead of a temporary one;
    /// ignored with `--images`.
    #[arg(long)]
    generate_into: Option<PathBuf>,
    /// Use at most this many images (also the number generated).
    #[arg(long, env = "PREPROCESS_BENCH_LIMIT")]
    limit: Option<usize>,
    /// Minimum timed duration of each side, in seconds.
    #[arg(long, default_value_t = 3.0, env = "PREPROCESS_BENCH_MIN_SECONDS")]
    min_seconds: f64,
    /// Python interpreter with opencv-python-headless and numpy.
    #[arg(long, env = "PREPROCESS_BENCH_PYTHON")]
    python: Option<PathBuf>,
}

const DEFAULT_GENERATED_COUNT: usize = 2_000;
/// Seed of the generated image set, fixed so that runs compare the same images.
const SYNTH_SEED: u64 = 42;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has a parent")?;
    let python = options
        .python
        .clone()
        .unwrap_or_else(|| workspace_root.join(".venv-tools/bin/python"));
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh first",
            python.display()
        );
    }
    let _temporary_dir_guard;
    let image_dir = match &options.images {
        Some(dir) => dir.clone(),
        None => {
            let target_dir = match &options.generate_into {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    dir.clone()
                }
                None => {
                    let temporary =
                        tempfile::tempdir().context("creating a temporary image folder")?;
                    let path = temporary.path().to_path_buf();
                    _temporary_dir_guard = temporary;
                    path
                }
            };
            let count = options.limit.unwrap_or(DEFAULT_GENERATED_COUNT);
            let summary = generate_flowcam_jpegs(&target_dir, count)?;
            println!(
                "generated {count} synthetic FlowCam JPEGs (plankton-synth) in {}",
                target_dir.display()
            );
            println!(
                "synthetic generator: {:>9.0} objects/s ({} objects in {:.2} s, plankton_synth::generate, all cores)",
                summary.objects as f64 / summary.elapsed.as_secs_f64().max(1e-9),
                summary.objects,
                summary.elapsed.as_secs_f64()
            );
            target_dir
        }
    };

    let mut paths = Vec::new();
    collect_jpegs(&image_dir, &mut paths)?;
    paths.sort_by_key(|path| path.to_string_lossy().to_string());
    if let Some(limit) = options.limit {
        paths.truncate(limit);
    }
    if paths.is_empty() {
        bail!("no *.jpg files under {}", image_dir.display());
    }
    let jpegs: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .collect::<Result<_, _>>()?;
    let total_bytes: usize = jpegs.iter().map(Vec::len).sum();
    println!(
        "{} images, {:.1} MiB of JPEG",
        jpegs.len(),
        total_bytes as f64 / (1024.0 * 1024.0)
    );

    // Ours: a rayon pool of one thread, so the figure is per core.
    let config = PreprocessConfig::default();
    let single_thread_pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (ours_per_second, our_outputs, our_failures) = single_thread_pool.install(|| {
        let first_pass = preprocess_many(&jpegs, &config);
        let failures = first_pass.iter().filter(|result| result.is_err()).count();
        // Timed passes write into one reused batch buffer, as the worker's loader does.
        let mut batch = vec![0u8; jpegs.len() * IMAGE_LEN];
        let started = Instant::now();
        let mut processed = 0usize;
        while started.elapsed() < Duration::from_secs_f64(options.min_seconds) {
            let results = preprocess_batch_into(&jpegs, &config, &mut batch);
            processed += results.len();
        }
        (
            processed as f64 / started.elapsed().as_secs_f64(),
            first_pass,
            failures,
        )
    });

    // Where our time goes: the JPEG decode alone, same pool.
    let decode_per_second = single_thread_pool.install(|| {
        let started = Instant::now();
        let mut processed = 0usize;
        while started.elapsed() < Duration::from_secs_f64(options.min_seconds / 2.0) {
            for jpeg in &jpegs {
                let _ = std::hint::black_box(plankton_preprocess::decode_grey(jpeg, &config));
            }
            processed += jpegs.len();
        }
        processed as f64 / started.elapsed().as_secs_f64()
    });

    // OpenCV: same files, bytes in memory, cv2.setNumThreads(1).
    let dump_dir = tempfile::tempdir()?;
    let dump_path = dump_dir.path().join("opencv_outputs.u8");
    let decoded_path = dump_dir.path().join("opencv_decoded.bin");
    let script = workspace_root.join("bench/python/opencv_preprocess.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .arg(&image_dir)
        .arg("--min-seconds")
        .arg(options.min_seconds.to_string())
        .arg("--dump")
        .arg(&dump_path)
        .arg("--dump-decoded")
        .arg(&decoded_path);
    if let Some(limit) = options.limit {
        command.arg("--limit").arg(limit.to_string());
    }
    let output = command
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "opencv benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(
        output
            .stdout
            .split(|&byte| byte == b'\n')
            .rfind(|line| !line.is_empty())
            .unwrap_or_default(),
    )
    .context("parsing the opencv benchmark report")?;
    let opencv_per_second = report["img_per_s"]
        .as_f64()
        .context("report has img_per_s")?;

    // Parity over the whole set: identical output bytes, and grey plane within one level.
    let opencv_outputs = std::fs::read(&dump_path)?;
    // Identical bytes per plane (grey, threshold, opening), grey pixels within one level, and images with any
    // byte different.
    let plane = IMAGE_LEN / 3;
    let (mut plane_identical, mut grey_close) = ([0usize; 3], 0usize);
    let (mut images_differing, mut images_compared) = (0usize, 0usize);
    for (index, result) in our_outputs.iter().enumerate() {
        let Ok(ours) = result else { continue };
        let Some(reference) = opencv_outputs.get(index * IMAGE_LEN..(index + 1) * IMAGE_LEN) else {
            continue;
        };
        images_compared += 1;
        images_differing += usize::from(ours[..] != reference[..]);
        for (plane_index, count) in plane_identical.iter_mut().enumerate() {
            let range = plane_index * plane..(plane_index + 1) * plane;
            *count += ours[range.clone()]
                .iter()
                .zip(&reference[range])
                .filter(|(a, b)| a == b)
                .count();
        }
        grey_close += ours[..plane]
            .iter()
            .zip(&reference[..plane])
            .filter(|(a, b)| a.abs_diff(**b) <= 1)
            .count();
    }
    let plane_pixels = (images_compared * plane).max(1) as f64;
    let identical: usize = plane_identical.iter().sum();

    println!(
        "ours   (rust, 1 thread): {ours_per_second:>9.0} img/s per core ({our_failures} failed)"
    );
    println!("  of which decode alone: {decode_per_second:>9.0} img/s per core");
    println!(
        "opencv (python, 1 thread): {opencv_per_second:>7.0} img/s per core ({} failed)",
        report["failed"].as_u64().unwrap_or(0)
    );
    println!("speed-up: {:.2}x", ours_per_second / opencv_per_second);
    println!(
        "output parity: {:.4}% of bytes identical, {:.4}% of grey pixels within 1 level",
        100.0 * identical as f64 / (3.0 * plane_pixels),
        100.0 * grey_close as f64 / plane_pixels
    );
    println!(
        "  identical per plane: grey {:.4}%, threshold {:.4}%, opening {:.4}%; {images_differing} of \
         {images_compared} images differ somewhere",
        100.0 * plane_identical[0] as f64 / plane_pixels,
        100.0 * plane_identical[1] as f64 / plane_pixels,
        100.0 * plane_identical[2] as f64 / plane_pixels
    );
    let (decode_parity, resize_parity) = stage_parity(
        &jpegs,
        &std::fs::read(&decoded_path)?,
        &reference_resized_grey(&opencv_outputs),
    )?;
    println!(
        "  where grey differs: decode {:.4}% of pixels identical to cv2.imdecode; our bicubic resize of \
         cv2.imdecode's pixels {:.4}% identical to cv2.resize",
        decode_parity * 100.0,
        resize_parity * 100.0
    );
    Ok(())
}

/// OpenCV's 64x64 grey planes out of its `[N, 3, 64, 64]` outputs.
fn reference_resized_grey(opencv_outputs: &[u8]) -> Vec<&[u8]> {
    opencv_outputs
        .chunks(IMAGE_LEN)
        .map(|image| &image[..IMAGE_LEN / 3])
        .collect()
}

/// The share of identical pixels of (our decode vs cv2.imdecode) and of (our bicubic resize of cv2.imdecode's
/// pixels vs cv2.resize), from `opencv_preprocess.py --dump-decoded` (u32 width, u32 height, pixels).
fn stage_parity(
    jpegs: &[Vec<u8>],
    decoded: &[u8],
    resized: &[&[u8]],
) -> anyhow::Result<(f64, f64)> {
    let config = PreprocessConfig::default();
    let (mut decode_same, mut decode_total, mut resize_same, mut resize_total) =
        (0u64, 0u64, 0u64, 0u64);
    let mut offset = 0usize;
    for (index, jpeg) in jpegs.iter().enumerate() {
        let header = decoded
            .get(offset..offset + 8)
            .context("the decoded dump ends early")?;
        let width = u32::from_le_bytes(header[..4].try_into()?) as usize;
        let height = u32::from_le_bytes(header[4..].try_into()?) as usize;
        let pixels = decoded
            .get(offset + 8..offset + 8 + width * height)
            .context("the decoded dump ends early")?;
        offset += 8 + width * height;
        let (Ok(ours), Some(reference)) = (
            plankton_preprocess::decode_grey(jpeg, &config),
            plankton_preprocess::GreyImage::new(width, height, pixels.to_vec()),
        ) else {
            continue;
        };
        if ours.width == width && ours.height == height {
            decode_same += ours
                .pixels
                .iter()
                .zip(pixels)
                .filter(|(a, b)| a == b)
                .count() as u64;
            decode_total += pixels.len() as u64;
        }
        let ours_resized = plankton_preprocess::resize_bicubic(&reference, 64, 64);
        if let Some(reference_resized) = resized.get(index) {
            resize_same += ours_resized
                .pixels
                .iter()
                .zip(reference_resized.iter())
                .filter(|(a, b)| a == b)
                .count() as u64;
            resize_total += reference_resized.len() as u64;
        }
    }
    Ok((
        decode_same as f64 / decode_total.max(1) as f64,
        resize_same as f64 / resize_total.max(1) as f64,
    ))
}

fn collect_jpegs(dir: &Path, paths: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_jpegs(&path, paths)?;
        } else if path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("jpg"))
        {
            paths.push(path);
        }
    }
    Ok(())
}

/// Writes `count` (at least 80) synthetic FlowCam objects with `plankton_synth::generate` under `dir`
/// (`dir/imgs/<objid>.jpg`, plus the dataset CSVs, which the benchmark ignores): realistic grey
/// images with the real size distribution and class mix. Returns the generator's own summary (timing).
fn generate_flowcam_jpegs(
    dir: &Path,
    count: usize,
) -> anyhow::Result<plankton_synth::SynthSummary> {
    let location = plankton_dataset::open_location(&dir.to_string_lossy())
        .with_context(|| format!("opening {} as a dataset location", dir.display()))?;
    let config = plankton_synth::SynthConfig {
        count: (count as u64).max(plankton_synth::MINIMUM_OBJECTS),
        seed: SYNTH_SEED,
        images_as_zip: false,
        gzip_features: false,
        concurrency: 16,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime for the generator")?;
    runtime
        .block_on(plankton_synth::generate(
            location.store,
            location.prefix,
            &config,
        ))
        .with_context(|| format!("generating {count} synthetic images in {}", dir.display()))
}
