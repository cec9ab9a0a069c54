//! Times `generate` into an in-memory store: objects per second with all cores, both layouts.
//!
//! `cargo run --release -p plankton-synth --example generate_throughput -- [count] [seed] [local-dir]`
//! With `local-dir`, the loose-image layout is also written there for inspection.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use plankton_synth::{SynthConfig, generate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    let count: u64 = arguments.get(1).map_or(Ok(5_000), |value| value.parse())?;
    let seed: u64 = arguments.get(2).map_or(Ok(1), |value| value.parse())?;
    for (images_as_zip, gzip_features) in [(false, false), (true, true)] {
        let config = SynthConfig {
            count,
            seed,
            images_as_zip,
            gzip_features,
            concurrency: 16,
        };
        let summary = generate(Arc::new(InMemory::new()), Path::from("synthetic"), &config).await?;
        let seconds = summary.elapsed.as_secs_f64();
        println!(
            "zip={images_as_zip} gzip={gzip_features}: {} objects, {:.1} MB in {seconds:.2}s = {:.0} objects/s on {} threads",
            summary.objects,
            summary.bytes_written as f64 / 1e6,
            summary.objects as f64 / seconds,
            rayon::current_num_threads(),
        );
    }
    if let Some(local_dir) = arguments.get(3) {
        std::fs::create_dir_all(local_dir)?;
        let local_store = object_store::local::LocalFileSystem::new_with_prefix(local_dir)?;
        let config = SynthConfig {
            count,
            seed,
            images_as_zip: false,
            gzip_features: false,
            concurrency: 16,
        };
        generate(Arc::new(local_store), Path::from(""), &config).await?;
        println!("written to {local_dir}");
    }
    Ok(())
}
