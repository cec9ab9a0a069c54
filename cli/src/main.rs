//! `planktonctl`: the operator CLI of plankton-cluster.
#![forbid(unsafe_code)]

mod connection;
mod dataset_commands;
mod demo;
mod job_commands;
mod model_commands;
mod predict_command;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use plankton_security::{ClientSecurityFlags, InsecureFlags};

use connection::Server;

#[derive(Parser, Debug)]
#[command(
    name = "planktonctl",
    version,
    about = "Operate a plankton-cluster: datasets, training jobs, workers"
)]
struct Cli {
    /// Coordinator gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "PLANKTON_COORDINATOR",
        default_value = "https://127.0.0.1:7070"
    )]
    coordinator: String,
    /// The CA of the servers' certificates, a bearer token (role operator to submit, viewer to look) and an
    /// optional client certificate.
    #[command(flatten)]
    security: ClientSecurityFlags,
    #[command(flatten)]
    insecure: InsecureFlags,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a training job (flags, or a JSON job file with the same field names).
    Submit(job_commands::SubmitArgs),
    /// Follow a job live: progress per worker and epoch, then final metrics and the confusion matrix.
    Watch { job_id: String },
    /// List jobs.
    List,
    /// Show one job with its metrics.
    Get { job_id: String },
    /// Cancel a pending or running job.
    Cancel { job_id: String },
    /// Write a job's report: one self-contained HTML file (spec, data, curves, per-class table, confusion
    /// heatmap, misclassified test images).
    Report {
        job_id: String,
        /// The HTML file to write.
        #[arg(long, default_value = "report.html")]
        out: std::path::PathBuf,
    },
    /// Restart a failed or cancelled job from its latest complete checkpoint.
    Resume {
        job_id: String,
        /// Follow the job after resuming it.
        #[arg(long)]
        watch: bool,
    },
    /// List registered workers.
    Workers,
    /// The model registry: trained models, versions and aliases.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Classify images with a served model (plankton-serve).
    Predict {
        /// JPEG files.
        images: Vec<PathBuf>,
        /// NAME, NAME:VERSION or NAME@ALIAS; empty = the server's default model.
        #[arg(long, default_value = "")]
        model: String,
        /// Classes shown per image.
        #[arg(long, default_value_t = 5)]
        top_k: u32,
        /// Inference server endpoint.
        #[arg(
            long,
            env = "PLANKTON_SERVER",
            default_value = "https://127.0.0.1:7080"
        )]
        server: String,
    },
    /// Generate or inspect datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Generate a synthetic dataset, start a coordinator and workers on 127.0.0.1, train, and show the results.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// List registered model versions (optionally of one name).
    List { name: Option<String> },
    /// Show one model: NAME (latest), NAME:VERSION or NAME@ALIAS.
    Get {
        model: model_commands::ModelReference,
    },
    /// Point an alias of a model at a version.
    Promote {
        name: String,
        version: u32,
        #[arg(long, default_value = "production")]
        alias: String,
    },
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Write a synthetic FlowCam dataset (real layout, class counts, sizes, features).
    Synth(SynthArgs),
    /// Class counts, image sizes and plots of a dataset.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Dataset root URL: path, file://, s3://, gs://, az://, memory://.
    #[arg(long)]
    out: String,
    /// Number of objects (243610 reproduces the real class counts).
    #[arg(long, default_value_t = 243_610)]
    count: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Ship images as one imgs.zip instead of imgs/<objid>.jpg.
    #[arg(long)]
    zip: bool,
    /// Write features_native.csv.gz instead of features_native.csv.
    #[arg(long)]
    gzip_features: bool,
    /// Concurrent object writes.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Dataset root URL.
    dataset: String,
    /// Folder the SVG plots are written to.
    #[arg(long, default_value = "dataset-stats")]
    plots: PathBuf,
    /// Concurrent image header reads.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    plankton_common::init_tracing_with_default("warn");
    let cli = Cli::parse();
    let result = run(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<connection::Unreachable>() {
                Some(_) => ExitCode::from(3),
                None => ExitCode::from(1),
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server_at = |url: &str| -> anyhow::Result<Server> {
        Ok(Server {
            url: url.to_string(),
            security: cli.security.resolve(url, &cli.insecure)?,
        })
    };
    // Commands that do not call the coordinator (dataset, demo) need no credentials for it.
    let coordinator = || server_at(&cli.coordinator);
    match cli.command {
        Command::Submit(args) => job_commands::submit(&coordinator()?, args, cli.output).await,
        Command::Watch { job_id } => job_commands::watch(&coordinator()?, &job_id, cli.output)
            .await
            .map(|_| ()),
        Command::List => job_commands::list(&coordinator()?, cli.output).await,
        Command::Get { job_id } => job_commands::get(&coordinator()?, &job_id, cli.output).await,
        Command::Report { job_id, out } => {
            job_commands::report(&coordinator()?, &job_id, &out).await
        }
        Command::Cancel { job_id } => {
            job_commands::cancel(&coordinator()?, &job_id, cli.output).await
        }
        Command::Resume { job_id, watch } => {
            job_commands::resume(&coordinator()?, &job_id, watch, cli.output).await
        }
        Command::Workers => job_commands::workers(&coordinator()?, cli.output).await,
        Command::Models(ModelsCommand::List { name }) => {
            model_commands::list(&coordinator()?, name, cli.output).await
        }
        Command::Models(ModelsCommand::Get { model }) => {
            model_commands::get(&coordinator()?, model, cli.output).await
        }
        Command::Models(ModelsCommand::Promote {
            name,
            version,
            alias,
        }) => model_commands::promote(&coordinator()?, name, version, alias, cli.output).await,
        Command::Predict {
            images,
            model,
            top_k,
            server,
        } => predict_command::predict(&server_at(&server)?, images, model, top_k, cli.output).await,
        Command::Dataset(DatasetCommand::Synth(args)) => {
            dataset_commands::synth(args, cli.output).await
        }
        Command::Dataset(DatasetCommand::Stats(args)) => {
            dataset_commands::stats(args, cli.output).await
        }
        Command::Demo(args) => demo::run(args).await,
    }
}
