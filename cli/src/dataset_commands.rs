//! Dataset commands: `dataset synth` and `dataset stats`.

use anyhow::Context;

use plankton_dataset::{compute_stats, open_location, write_plots};
use plankton_synth::{SynthConfig, generate};

use crate::{OutputFormat, StatsArgs, SynthArgs};

pub async fn synth(args: SynthArgs, output: OutputFormat) -> anyhow::Result<()> {
    let location = open_location(&args.out).with_context(|| format!("opening {}", args.out))?;
    // One request first, so that missing credentials or a missing bucket are named before the generator's
    // writes fail on them.
    location.exists("meta.csv").await?;
    let config = SynthConfig {
        count: args.count,
        seed: args.seed,
        images_as_zip: args.zip,
        gzip_features: args.gzip_features,
        concurrency: args.concurrency,
    };
    let summary = generate(location.store.clone(), location.prefix.clone(), &config).await?;
    let seconds = summary.elapsed.as_secs_f64();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "out": args.out, "objects": summary.objects, "bytes_written": summary.bytes_written,
                "seconds": seconds, "class_counts": summary.class_counts,
            })
        ),
        OutputFormat::Table => println!(
            "wrote {} objects ({} classes, {:.1} MB) to {} in {:.1}s ({:.0} objects/s)",
            summary.objects,
            summary.class_counts.len(),
            summary.bytes_written as f64 / 1e6,
            args.out,
            seconds,
            summary.objects as f64 / seconds.max(1e-9)
        ),
    }
    Ok(())
}

pub async fn stats(args: StatsArgs, output: OutputFormat) -> anyhow::Result<()> {
    let location =
        open_location(&args.dataset).with_context(|| format!("opening {}", args.dataset))?;
    let stats = compute_stats(&location, args.concurrency).await?;
    let plots = write_plots(&stats, &args.plots)?;
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stats": stats, "plots": plots,
            }))?
        ),
        OutputFormat::Table => {
            print!("{stats}");
            for plot in plots {
                println!("plot: {}", plot.display());
            }
        }
    }
    Ok(())
}
