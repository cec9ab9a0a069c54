//! Job commands: submit, watch, list, get, cancel, resume, workers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use plankton_security::AuthChannel;
use serde::Deserialize;

use crate::connection::Server;

use plankton_proto::v1::job_service_client::JobServiceClient;
use plankton_proto::v1::{
    Augmentation, CancelJobRequest, ClassWeighting, GetJobReportRequest, GetJobRequest,
    GradientCompression, Job, JobPhase, JobSpec, ListJobsRequest, ListWorkersRequest, LossFunction,
    LossNormalization, LrSchedule, NonFinitePolicy, OptimizerKind, Precision, ResizeMode,
    ResumeJobRequest, SubmitJobRequest, WatchJobRequest, job_event,
};

use crate::OutputFormat;
use crate::render;

pub async fn connect(coordinator: &Server) -> anyhow::Result<JobServiceClient<AuthChannel>> {
    let channel = coordinator.coordinator_channel().await?;
    Ok(JobServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

/// Turns a gRPC status into an error that says which call failed.
pub fn call_error(call: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call}: {} ({:?})", status.message(), status.code())
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightingArg {
    Balanced,
    None,
    Sqrt,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleArg {
    Constant,
    Cosine,
    Step,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentationArg {
    None,
    All,
    Rare,
}

/// What a step with a NaN or infinite loss or gradient on some rank does.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFiniteArg {
    /// The job fails, naming the rank(s) and the step.
    Fail,
    /// The step is skipped on every rank and counted.
    SkipStep,
}

/// What a step's summed class-weighted loss is divided by.
/// The number format of the gradient all-reduce.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientCompressionArg {
    /// f32 on the wire (exact sums).
    None,
    /// bf16 on the wire, f32 accumulation: half the bytes.
    Bf16,
}

/// The number format of the training forward and backward passes.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionArg {
    /// f32 everywhere (the CPU default).
    Fp32,
    /// bf16 convolutions and linear layers, f32 master weights and optimizer state.
    Bf16,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossNormalizationArg {
    /// The global batch's weight sum (a weighted mean).
    WeightSum,
    /// The global batch's sample count (Keras' class_weight).
    Samples,
    /// Each virtual shard's weighted mean, averaged over the shards (PyTorch DDP; the default).
    ShardMean,
}

/// The networks' training loss.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossArg {
    /// The class-weighted cross-entropy.
    CrossEntropy,
    /// Cross-entropy of logits + tau * log(train class prior) (Menon et al. 2021); predictions use the plain
    /// logits. Class weights still apply: usually pair it with --class-weighting none.
    LogitAdjusted,
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeArg {
    Stretch,
    Pad,
}

/// Job fields, from flags or a JSON job file (flags win).
#[derive(Args, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobFields {
    /// Dataset root URL (path, file://, s3://, gs://, az://, memory://).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Number of workers training together.
    #[arg(long)]
    pub world_size: Option<u32>,
    /// resnet (default); lenet (the reference notebook's small CNN: 2x2 convolutions of 6/16/16 filters);
    /// wide_lenet (that layout with 3x3 convolutions of 32/64/128 filters); gbdt (gradient-boosted trees on
    /// the native features, trained on one worker: --world-size 1).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Per-worker batch size.
    #[arg(long)]
    pub batch_size: Option<u32>,
    #[arg(long = "lr")]
    #[serde(alias = "lr")]
    pub learning_rate: Option<f32>,
    #[arg(long, value_enum)]
    pub class_weighting: Option<WeightingArg>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Learning-rate schedule over the epochs (default cosine).
    #[arg(long, value_enum)]
    pub lr_schedule: Option<ScheduleArg>,
    #[arg(long, value_enum)]
    pub augmentation: Option<AugmentationArg>,
    #[arg(long, value_enum)]
    pub resize: Option<ResizeArg>,
    /// Where the model is written (default: <dataset>/models/<job id>).
    #[arg(long = "output-url")]
    pub output_url: Option<String>,
    /// Train on a stratified subsample of at most this many objects.
    #[arg(long)]
    pub max_objects: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub name: Option<String>,
    /// libtorch threads per worker (default: the worker's own setting).
    #[arg(long)]
    pub threads_per_worker: Option<u32>,
    /// Fewest workers the job goes on with after losing some (0 = 1). Their virtual shards move to the
    /// survivors, so the global batch stays the same.
    #[arg(long)]
    pub min_workers: Option<u32>,
    /// Ring re-formations after faults allowed before the job fails (0 = 10).
    #[arg(long)]
    pub max_recoveries: Option<u32>,
    /// Also checkpoint every N optimizer steps (0 = only at epoch ends).
    #[arg(long)]
    pub checkpoint_every_steps: Option<u32>,
    /// Complete checkpoints kept under <output>/checkpoints/ (0 = 2).
    #[arg(long)]
    pub keep_checkpoints: Option<u32>,
    /// Initialise the model from the weights of this checkpoint folder URL (fine-tuning); training starts at
    /// step 0 with a fresh optimizer.
    #[arg(long = "init-from", value_name = "URL")]
    pub init_from: Option<String>,
    /// A step whose loss or gradients are not finite on some rank: fail the job (default) or skip the step.
    #[arg(long, value_enum)]
    pub non_finite: Option<NonFiniteArg>,
    /// What the step's summed class-weighted loss is divided by (default: the cluster's, see the README).
    #[arg(long, value_enum)]
    pub loss_normalization: Option<LossNormalizationArg>,
    /// The number format gradients travel in during the all-reduce (default none: f32).
    #[arg(long, value_enum)]
    pub gradient_compression: Option<GradientCompressionArg>,
    /// The number format of training forward/backward passes (default fp32).
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Training loss (default cross-entropy).
    #[arg(long, value_enum)]
    pub loss: Option<LossArg>,
    /// tau of --loss logit-adjusted (default 1.0; finite and > 0).
    #[arg(long)]
    pub logit_tau: Option<f32>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// JSON job file; its fields are the long flag names with underscores.
    #[arg(long, short = 'f')]
    pub job_file: Option<PathBuf>,
    #[command(flatten)]
    pub fields: JobFields,
    /// Follow the job after submitting it.
    #[arg(long)]
    pub watch: bool,
}

impl JobFields {
    fn overlay(self, file: JobFields) -> JobFields {
        JobFields {
            dataset: self.dataset.or(file.dataset),
            world_size: self.world_size.or(file.world_size),
            model: self.model.or(file.model),
            epochs: self.epochs.or(file.epochs),
            batch_size: self.batch_size.or(file.batch_size),
            learning_rate: self.learning_rate.or(file.learning_rate),
            class_weighting: self.class_weighting.or(file.class_weighting),
            optimizer: self.optimizer.or(file.optimizer),
            lr_schedule: self.lr_schedule.or(file.lr_schedule),
            augmentation: self.augmentation.or(file.augmentation),
            resize: self.resize.or(file.resize),
            output_url: self.output_url.or(file.output_url),
            max_objects: self.max_objects.or(file.max_objects),
            seed: self.seed.or(file.seed),
            name: self.name.or(file.name),
            threads_per_worker: self.threads_per_worker.or(file.threads_per_worker),
            min_workers: self.min_workers.or(file.min_workers),
            max_recoveries: self.max_recoveries.or(file.max_recoveries),
            checkpoint_every_steps: self.checkpoint_every_steps.or(file.checkpoint_every_steps),
            keep_checkpoints: self.keep_checkpoints.or(file.keep_checkpoints),
            init_from: self.init_from.or(file.init_from),
            non_finite: self.non_finite.or(file.non_finite),
            loss_normalization: self.loss_normalization.or(file.loss_normalization),
            gradient_compression: self.gradient_compression.or(file.gradient_compression),
            precision: self.precision.or(file.precision),
            loss: self.loss.or(file.loss),
            logit_tau: self.logit_tau.or(file.logit_tau),
        }
    }

    pub fn into_spec(self) -> anyhow::Result<JobSpec> {
        let dataset_url = self
            .dataset
            .context("a dataset URL is required (--dataset or \"dataset\" in the job file)")?;
        Ok(JobSpec {
            name: self.name.unwrap_or_default(),
            dataset_url,
            world_size: self.world_size.unwrap_or(1),
            model: self.model.unwrap_or_default(),
            epochs: self.epochs.unwrap_or(0),
            batch_size: self.batch_size.unwrap_or(0),
            learning_rate: self.learning_rate.unwrap_or(0.0),
            class_weighting: match self.class_weighting.unwrap_or(WeightingArg::Balanced) {
                WeightingArg::Balanced => ClassWeighting::Balanced,
                WeightingArg::None => ClassWeighting::None,
                WeightingArg::Sqrt => ClassWeighting::Sqrt,
            } as i32,
            optimizer: match self.optimizer.unwrap_or(OptimizerArg::Adam) {
                OptimizerArg::Adam => OptimizerKind::OptimizerAdam,
                OptimizerArg::Sgd => OptimizerKind::OptimizerSgdMomentum,
            } as i32,
            lr_schedule: match self.lr_schedule.unwrap_or(ScheduleArg::Cosine) {
                ScheduleArg::Constant => LrSchedule::Constant,
                ScheduleArg::Cosine => LrSchedule::Cosine,
                ScheduleArg::Step => LrSchedule::Step,
            } as i32,
            augmentation: match self.augmentation.unwrap_or(AugmentationArg::None) {
                AugmentationArg::None => Augmentation::None,
                AugmentationArg::All => Augmentation::All,
                AugmentationArg::Rare => Augmentation::RareClasses,
            } as i32,
            resize_mode: match self.resize.unwrap_or(ResizeArg::Stretch) {
                ResizeArg::Stretch => ResizeMode::ResizeStretch,
                ResizeArg::Pad => ResizeMode::ResizePadToSquare,
            } as i32,
            output_url: self.output_url.unwrap_or_default(),
            seed: self.seed.unwrap_or(0),
            max_objects: self.max_objects.unwrap_or(0),
            test_fraction: 0.0,
            threads_per_worker: self.threads_per_worker.unwrap_or(0),
            min_workers: self.min_workers.unwrap_or(0),
            max_recoveries: self.max_recoveries.unwrap_or(0),
            checkpoint_every_steps: self.checkpoint_every_steps.unwrap_or(0),
            keep_checkpoints: self.keep_checkpoints.unwrap_or(0),
            init_from: self.init_from.unwrap_or_default(),
            non_finite_policy: match self.non_finite.unwrap_or(NonFiniteArg::Fail) {
                NonFiniteArg::Fail => NonFinitePolicy::Fail,
                NonFiniteArg::SkipStep => NonFinitePolicy::SkipStep,
            } as i32,
            loss_normalization: match self.loss_normalization {
                None => LossNormalization::Default,
                Some(LossNormalizationArg::WeightSum) => LossNormalization::WeightSum,
                Some(LossNormalizationArg::Samples) => LossNormalization::Samples,
                Some(LossNormalizationArg::ShardMean) => LossNormalization::ShardMean,
            } as i32,
            gradient_compression: match self
                .gradient_compression
                .unwrap_or(GradientCompressionArg::None)
            {
                GradientCompressionArg::None => GradientCompression::None,
                GradientCompressionArg::Bf16 => GradientCompression::Bf16,
            } as i32,
            precision: match self.precision.unwrap_or(PrecisionArg::Fp32) {
                PrecisionArg::Fp32 => Precision::Fp32,
                PrecisionArg::Bf16 => Precision::Bf16,
            } as i32,
            loss: match self.loss.unwrap_or(LossArg::CrossEntropy) {
                LossArg::CrossEntropy => LossFunction::CrossEntropy,
                LossArg::LogitAdjusted => LossFunction::LogitAdjusted,
            } as i32,
            logit_tau: self.logit_tau.unwrap_or(0.0),
        })
    }
}

pub async fn submit(
    coordinator: &Server,
    args: SubmitArgs,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let file_fields = match &args.job_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading job file {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("job file {}", path.display()))?
        }
        None => JobFields::default(),
    };
    let spec = args.fields.overlay(file_fields).into_spec()?;
    let job = submit_spec(coordinator, spec).await?;
    if args.watch {
        return watch_to_success(coordinator, &job.id, "submitted", output).await;
    }
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&render::job_json(&job))?)
        }
        OutputFormat::Table => println!(
            "submitted {} ({} train / {} test objects, {} classes)",
            job.id,
            job.train_objects,
            job.test_objects,
            job.class_names.len()
        ),
    }
    Ok(())
}

pub async fn submit_spec(coordinator: &Server, spec: JobSpec) -> anyhow::Result<Job> {
    let mut client = connect(coordinator).await?;
    let job = client
        .submit_job(SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|status| call_error("submit", status))?;
    Ok(job.into_inner())
}

/// Follows a job to its end, drawing progress; returns the final job.
/// Prints `"<verb> <job>"`, watches the job to its end, and fails unless it succeeded.
async fn watch_to_success(
    coordinator: &Server,
    job_id: &str,
    verb: &str,
    output: OutputFormat,
) -> anyhow::Result<()> {
    if output == OutputFormat::Table {
        println!("{verb} {job_id}");
    }
    let finished = watch(coordinator, job_id, output).await?;
    if finished.phase() != JobPhase::Succeeded {
        anyhow::bail!(
            "job {} ended {}: {}",
            finished.id,
            render::phase_name(finished.phase()),
            finished.message
        );
    }
    Ok(())
}

pub async fn watch(
    coordinator: &Server,
    job_id: &str,
    output: OutputFormat,
) -> anyhow::Result<Job> {
    let mut client = connect(coordinator).await?;
    let mut events = client
        .watch_job(WatchJobRequest {
            job_id: job_id.into(),
        })
        .await
        .map_err(|status| call_error("watch", status))?
        .into_inner();
    let mut display = WatchDisplay::new(output == OutputFormat::Table);
    if let Ok(job) = client
        .get_job(GetJobRequest {
            job_id: job_id.into(),
        })
        .await
    {
        display.epochs = job.into_inner().spec.map_or(0, |spec| spec.epochs);
    }
    let mut finished = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|status| call_error("watch stream", status))?;
        match event.event {
            Some(job_event::Event::Phase(phase)) => {
                display.phase(JobPhase::try_from(phase).unwrap_or_default())
            }
            Some(job_event::Event::Progress(progress)) => display.progress(&progress),
            Some(job_event::Event::EpochMetrics(metrics)) => display.epoch(&metrics),
            Some(job_event::Event::Log(line)) => display.line(&line),
            Some(job_event::Event::Recovery(recovery)) => display.recovery(&recovery),
            Some(job_event::Event::Checkpoint(checkpoint)) => {
                display.line(&render::checkpoint_line(&checkpoint))
            }
            Some(job_event::Event::Finished(ended)) => {
                // A resumed job's replay still holds the end of its earlier run: an end is the end only when
                // the job is still finished now, at that same time (else a later end follows in the stream).
                let current = client
                    .get_job(GetJobRequest {
                        job_id: job_id.into(),
                    })
                    .await
                    .map_err(|status| call_error("get", status))?
                    .into_inner();
                if is_terminal(current.phase())
                    && current.finished_unix_ms == ended.finished_unix_ms
                {
                    finished = Some(current);
                    break;
                }
            }
            None => {}
        }
    }
    display.clear();
    let job = match finished {
        Some(job) => job,
        None => client
            .get_job(GetJobRequest {
                job_id: job_id.into(),
            })
            .await
            .map_err(|status| call_error("get", status))?
            .into_inner(),
    };
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&render::job_json(&job))?)
        }
        OutputFormat::Table => print!("{}", render::job_report(&job, true)),
    }
    Ok(job)
}

fn is_terminal(phase: JobPhase) -> bool {
    matches!(
        phase,
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
    )
}

/// Live bars: one per rank plus a line per evaluated epoch.
struct WatchDisplay {
    enabled: bool,
    bars: MultiProgress,
    rank_bars: BTreeMap<u32, ProgressBar>,
    epochs: u32,
}

impl WatchDisplay {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            bars: MultiProgress::new(),
            rank_bars: BTreeMap::new(),
            epochs: 0,
        }
    }

    fn bar(&mut self, rank: u32) -> &ProgressBar {
        let bars = &self.bars;
        self.rank_bars.entry(rank).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "rank {prefix:>2} {msg:<28} [{bar:30.cyan/blue}] {pos}/{len}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(rank.to_string());
            bar
        })
    }

    /// A line above the bars; plain stdout when it is not a terminal (bars are hidden there).
    fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let _ = self.bars.println(text);
        } else {
            println!("{text}");
        }
    }

    fn phase(&mut self, phase: JobPhase) {
        self.line(&format!("phase: {}", render::phase_name(phase)));
    }

    /// A generation formed or resumed: a line, and the bars of ranks it no longer has go away.
    fn recovery(&mut self, recovery: &plankton_proto::v1::Recovery) {
        self.line(&render::recovery_line(recovery));
        let gone: Vec<u32> = self
            .rank_bars
            .range(recovery.world_size..)
            .map(|(rank, _)| *rank)
            .collect();
        for rank in gone {
            if let Some(bar) = self.rank_bars.remove(&rank) {
                bar.finish_and_clear();
                self.bars.remove(&bar);
            }
        }
    }

    fn progress(&mut self, progress: &plankton_proto::v1::WorkerProgress) {
        if !self.enabled {
            return;
        }
        let epochs = self.epochs;
        let bar = self.bar(progress.rank);
        if progress.steps_per_epoch == 0 {
            bar.set_message(format!("loading {} objects", progress.loaded_objects));
            bar.set_length(1);
            bar.set_position(0);
        } else {
            bar.set_length(progress.steps_per_epoch);
            bar.set_position(progress.step);
            let epoch_text = if epochs > 0 {
                format!("{}/{epochs}", progress.epoch)
            } else {
                progress.epoch.to_string()
            };
            let generation_text = if progress.generation > 0 {
                format!("gen {} ", progress.generation)
            } else {
                String::new()
            };
            bar.set_message(format!(
                "{generation_text}epoch {epoch_text} loss {:.3} {:.0} img/s",
                progress.loss, progress.images_per_second
            ));
        }
    }

    fn epoch(&mut self, metrics: &plankton_proto::v1::EvalMetrics) {
        self.line(&format!(
            "epoch {:>2}: accuracy {:.3}  macro-F1 {:.3}  weighted-F1 {:.3}  balanced accuracy {:.3}  test loss {:.3}",
            metrics.epoch,
            metrics.accuracy,
            metrics.macro_f1,
            metrics.weighted_f1,
            metrics.balanced_accuracy,
            metrics.test_loss
        ));
    }

    fn clear(&mut self) {
        for bar in self.rank_bars.values() {
            bar.finish_and_clear();
        }
    }
}

pub async fn list(coordinator: &Server, output: OutputFormat) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let jobs = client
        .list_jobs(ListJobsRequest {})
        .await
        .map_err(|status| call_error("list", status))?
        .into_inner()
        .jobs;
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&jobs.iter().map(render::job_json).collect::<Vec<_>>())?
        ),
        OutputFormat::Table => print!("{}", render::job_table(&jobs)),
    }
    Ok(())
}

pub async fn get(coordinator: &Server, job_id: &str, output: OutputFormat) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let job = client
        .get_job(GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .map_err(|status| call_error("get", status))?
        .into_inner();
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&render::job_json(&job))?)
        }
        OutputFormat::Table => print!("{}", render::job_report(&job, false)),
    }
    Ok(())
}

pub async fn report(
    coordinator: &Server,
    job_id: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let report = client
        .get_job_report(GetJobReportRequest {
            job_id: job_id.into(),
        })
        .await
        .map_err(|status| call_error("report", status))?
        .into_inner();
    std::fs::write(out, report.html.as_bytes())
        .map_err(|error| anyhow::anyhow!("writing {}: {error}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

pub async fn cancel(
    coordinator: &Server,
    job_id: &str,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let job = client
        .cancel_job(CancelJobRequest {
            job_id: job_id.into(),
        })
        .await
        .map_err(|status| call_error("cancel", status))?
        .into_inner();
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&render::job_json(&job))?)
        }
        OutputFormat::Table => println!("{} {}", job.id, render::phase_name(job.phase())),
    }
    Ok(())
}

/// Restarts a failed or cancelled job from its latest complete checkpoint; prints it as `get` does, or follows
/// it to its end with `watch` (then a job that does not succeed is an error).
pub async fn resume(
    coordinator: &Server,
    job_id: &str,
    watch_after: bool,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let job = client
        .resume_job(ResumeJobRequest {
            job_id: job_id.into(),
        })
        .await
        .map_err(|status| call_error("resume", status))?
        .into_inner();
    if watch_after {
        return watch_to_success(coordinator, &job.id, "resuming", output).await;
    }
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&render::job_json(&job))?)
        }
        OutputFormat::Table => print!("{}", render::job_report(&job, false)),
    }
    Ok(())
}

pub async fn workers(coordinator: &Server, output: OutputFormat) -> anyhow::Result<()> {
    let mut client = connect(coordinator).await?;
    let workers = client
        .list_workers(ListWorkersRequest {})
        .await
        .map_err(|status| call_error("workers", status))?
        .into_inner()
        .workers;
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &workers.iter().map(render::worker_json).collect::<Vec<_>>()
            )?
        ),
        OutputFormat::Table => print!("{}", render::worker_table(&workers)),
    }
    Ok(())
}
