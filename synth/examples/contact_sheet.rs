//! Renders a few objects of every class to PGM files and prints size statistics and render speed.
//!
//! `cargo run --release -p plankton-synth --example contact_sheet -- <out-dir> [per-class] [seed]`

use std::time::Instant;

use plankton_synth::{CLASS_COUNT, class_counts, class_name, measure_features, render_object};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    let out_dir =
        std::path::PathBuf::from(arguments.get(1).map_or("contact-sheet", String::as_str));
    let per_class: u64 = arguments.get(2).map_or(Ok(6), |value| value.parse())?;
    let seed: u64 = arguments.get(3).map_or(Ok(1), |value| value.parse())?;
    std::fs::create_dir_all(&out_dir)?;
    for class_index in 0..CLASS_COUNT {
        for sample in 0..per_class {
            let image = render_object(class_index, 30_000_000 + sample, seed);
            let mut pgm = format!("P5\n{} {}\n255\n", image.width, image.height).into_bytes();
            pgm.extend_from_slice(&image.pixels);
            std::fs::write(
                out_dir.join(format!("{class_index:02}_{sample:02}.pgm")),
                pgm,
            )?;
        }
        println!(
            "{class_index:02} {}",
            class_name(class_index).unwrap_or("?")
        );
    }
    // Dataset-weighted size distribution and throughput (render + encode + measure).
    let counts = class_counts(4_000)?;
    let mut widths = Vec::new();
    let mut heights = Vec::new();
    let started = Instant::now();
    let mut stage_seconds = [0f64; 3];
    let mut objid = 40_000_000u64;
    for (class_index, (_, count)) in counts.iter().enumerate() {
        for _ in 0..*count {
            objid += 1;
            let stage_started = Instant::now();
            let image = render_object(class_index, objid, seed);
            stage_seconds[0] += stage_started.elapsed().as_secs_f64();
            let stage_started = Instant::now();
            let jpeg = image.encode_jpeg(90)?;
            stage_seconds[1] += stage_started.elapsed().as_secs_f64();
            let stage_started = Instant::now();
            let features = measure_features(&image);
            stage_seconds[2] += stage_started.elapsed().as_secs_f64();
            assert!(!jpeg.is_empty() && features[0].is_some());
            widths.push(image.width);
            heights.push(image.height);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    widths.sort_unstable();
    heights.sort_unstable();
    let median = |values: &[u32]| values[values.len() / 2];
    println!(
        "render {:.2}s, jpeg {:.2}s, features {:.2}s",
        stage_seconds[0], stage_seconds[1], stage_seconds[2]
    );
    println!(
        "{} objects in {seconds:.2}s on one thread: {:.0} objects/s; median {}x{}, max {}x{}, min {}x{}",
        widths.len(),
        widths.len() as f64 / seconds,
        median(&widths),
        median(&heights),
        widths.last().unwrap_or(&0),
        heights.last().unwrap_or(&0),
        widths.first().unwrap_or(&0),
        heights.first().unwrap_or(&0),
    );
    Ok(())
}
