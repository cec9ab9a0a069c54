//! One assignment from start to end: load the shard, join the ring, train, report, write the model.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{error, info, warn};

use plankton_collective::{Collective, RingAllReduce, RingListener, SingleProcess};
use plankton_dataset::{StoreLocation, open_image_source, open_location};
use plankton_preprocess::{PreprocessConfig, ResizeMode, ShardCache};
use plankton_proto::v1::worker_control_client::WorkerControlClient;
use plankton_proto::v1::{
    Augmentation, DoneReport, EpochReport, JobPhase, JobSpec, LrSchedule as ProtoLrSchedule,
    OptimizerKind, ProgressReport, ResizeMode as ProtoResizeMode, ShardAssignment, WorkerProgress,
};
use plankton_trainer::{
    Architecture, AugmentationMode, EpochEvaluation, LrSchedule, ModelCard, ModelInput,
    OptimizerChoice, StepProgress, TrainConfig, TrainingObserver, run_training,
};

use crate::loader::load_shard;
use crate::{CurrentJob, WorkerConfig};

/// Progress reports sent to the coordinator at most this often (epoch ends always go out).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Runs an assignment and always ends with a `ReportDone`, success or not.
pub(crate) async fn run_assignment(
    config: &WorkerConfig,
    client: &mut WorkerControlClient<Channel>,
    worker_id: &str,
    assignment: ShardAssignment,
    listener: Arc<RingListener>,
    current_job: &CurrentJob,
    session: &CancellationToken,
) {
    let job_id = assignment.job_id.clone();
    let rank = assignment.rank;
    let cancel = session.child_token();
    current_job.set(&job_id, cancel.clone());
    info!(
        job_id,
        rank,
        world_size = assignment.world_size,
        train = assignment.train.len(),
        test = assignment.test.len(),
        "assignment received"
    );
    let reporter = Reporter {
        client: client.clone(),
        job_id: job_id.clone(),
        rank,
        worker_id: worker_id.to_string(),
    };
    let outcome = execute(
        config,
        reporter.clone(),
        assignment,
        listener,
        cancel.clone(),
    )
    .await;
    let done = match outcome {
        Ok(finished) => DoneReport {
            job_id: job_id.clone(),
            rank,
            ok: true,
            error: String::new(),
            model_url: finished.model_url,
            skipped_objects: finished.skipped_objects,
        },
        Err(failure) => {
            let message = if cancel.is_cancelled() {
                format!("stopped: {failure:#}")
            } else {
                format!("{failure:#}")
            };
            error!(job_id, rank, error = message, "assignment failed");
            DoneReport {
                job_id: job_id.clone(),
                rank,
                ok: false,
                error: message,
                model_url: String::new(),
                skipped_objects: 0,
            }
        }
    };
    if let Err(status) = client.report_done(done).await {
        warn!(job_id, %status, "could not report the end of the assignment");
    }
    current_job.clear();
}

struct Finished {
    model_url: String,
    skipped_objects: u64,
}

#[derive(Clone)]
struct Reporter {
    client: WorkerControlClient<Channel>,
    job_id: String,
    rank: u32,
    worker_id: String,
}

impl Reporter {
    async fn progress(&mut self, phase: JobPhase, progress: WorkerProgress) {
        let report = ProgressReport {
            job_id: self.job_id.clone(),
            progress: Some(progress),
            phase: phase as i32,
        };
        if let Err(status) = self.client.report_progress(report).await {
            warn!(job_id = self.job_id, %status, "progress report failed");
        }
    }

    fn base_progress(&self) -> WorkerProgress {
        WorkerProgress {
            rank: self.rank,
            worker_id: self.worker_id.clone(),
            ..Default::default()
        }
    }
}

async fn execute(
    config: &WorkerConfig,
    mut reporter: Reporter,
    assignment: ShardAssignment,
    listener: Arc<RingListener>,
    cancel: CancellationToken,
) -> anyhow::Result<Finished> {
    let spec = assignment.spec.clone().unwrap_or_default();
    let location = open_location(&spec.dataset_url)?;
    let image_source = Arc::new(open_image_source(&location).await?);
    let preprocess_config = PreprocessConfig {
        resize_mode: match ProtoResizeMode::try_from(spec.resize_mode).unwrap_or_default() {
            ProtoResizeMode::ResizeStretch => ResizeMode::Stretch,
            ProtoResizeMode::ResizePadToSquare => ResizeMode::PadToSquare,
        },
        ..PreprocessConfig::default()
    };
    let cache = match &config.cache_dir {
        Some(dir) => Some(ShardCache::open(dir.clone())?),
        None => None,
    };

    // Load train and test shards, reporting progress as objects arrive.
    let total = assignment.train.len() + assignment.test.len();
    let (progress_sender, mut progress_receiver) = mpsc::unbounded_channel::<usize>();
    let mut loading_reporter = reporter.clone();
    let progress_forwarder = tokio::spawn(async move {
        let mut last_sent = Instant::now() - PROGRESS_INTERVAL;
        while let Some(loaded) = progress_receiver.recv().await {
            if last_sent.elapsed() >= PROGRESS_INTERVAL || loaded == total {
                last_sent = Instant::now();
                let progress = WorkerProgress {
                    loaded_objects: loaded as u64,
                    ..loading_reporter.base_progress()
                };
                loading_reporter.progress(JobPhase::Loading, progress).await;
            }
        }
    });
    let train_count = assignment.train.len();
    let mut report_train = |done: usize, _total: usize| {
        let _ = progress_sender.send(done);
    };
    let train = load_shard(
        &location,
        &image_source,
        &assignment.train,
        &preprocess_config,
        cache.as_ref(),
        config.fetch_concurrency,
        &cancel,
        &mut report_train,
    )
    .await?;
    let mut report_test = |done: usize, _total: usize| {
        let _ = progress_sender.send(train_count + done);
    };
    let test = load_shard(
        &location,
        &image_source,
        &assignment.test,
        &preprocess_config,
        cache.as_ref(),
        config.fetch_concurrency,
        &cancel,
        &mut report_test,
    )
    .await?;
    drop(progress_sender);
    let _ = progress_forwarder.await;
    let skipped_objects = (train.skipped.len() + test.skipped.len()) as u64;
    if train.data.labels.is_empty() {
        anyhow::bail!(
            "no readable training image in this rank's shard ({} skipped)",
            train.skipped.len()
        );
    }
    if skipped_objects > 0 {
        warn!(
            job_id = reporter.job_id,
            skipped_objects, "training on the readable rest of the shard"
        );
    }

    // Train on the blocking pool; the observer forwards events to this task.
    let train_config = train_config(&spec, &assignment, config.threads)?;
    let (event_sender, mut event_receiver) = mpsc::channel::<TrainingEvent>(64);
    let ring_config = config.ring.clone();
    let training_cancel = cancel.clone();
    let job_id = assignment.job_id.clone();
    let rank = assignment.rank as usize;
    let peers = assignment.ring_peer_addresses.clone();
    let nccl_unique_id = assignment.nccl_unique_id.clone();
    let device = train_config.device;
    let loaded_objects = (train.data.labels.len() + test.data.labels.len()) as u64;
    let training = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let mut collective = join_collective(
            &listener,
            &job_id,
            rank,
            &peers,
            &ring_config,
            &nccl_unique_id,
            device,
        )?;
        let mut observer = ChannelObserver {
            sender: event_sender,
            cancel: training_cancel,
            last_progress: None,
        };
        let model = run_training(
            &train_config,
            &train.data,
            &test.data,
            collective.as_mut(),
            &mut observer,
        )?;
        Ok(if rank == 0 {
            model.to_safetensors()?
        } else {
            Vec::new()
        })
    });

    let steps_per_epoch = assignment.steps_per_epoch;
    while let Some(event) = event_receiver.recv().await {
        match event {
            TrainingEvent::Step(step) => {
                let progress = WorkerProgress {
                    epoch: step.epoch,
                    step: step.step as u64,
                    steps_per_epoch,
                    loss: step.loss,
                    images_per_second: step.images_per_second,
                    loaded_objects,
                    skipped_objects,
                    ..reporter.base_progress()
                };
                reporter.progress(JobPhase::Training, progress).await;
            }
            TrainingEvent::Epoch(evaluation) => {
                let report = EpochReport {
                    job_id: reporter.job_id.clone(),
                    rank: reporter.rank,
                    epoch: evaluation.epoch,
                    num_classes: assignment.class_names.len() as u32,
                    confusion: evaluation.confusion,
                    test_loss_sum: evaluation.test_loss_sum,
                    test_count: evaluation.test_count,
                    train_loss: evaluation.train_loss,
                };
                if let Err(status) = reporter.client.report_epoch(report).await {
                    warn!(job_id = reporter.job_id, %status, "epoch report failed");
                }
            }
        }
    }
    let weights = training.await??;
    let model_url = if assignment.rank == 0 {
        write_model(&assignment, &spec, weights).await?
    } else {
        String::new()
    };
    Ok(Finished {
        model_url,
        skipped_objects,
    })
}

/// NCCL when the coordinator handed out a unique id and this rank trains on a GPU, else the TCP ring.
fn join_collective(
    listener: &RingListener,
    job_id: &str,
    rank: usize,
    peers: &[String],
    ring_config: &plankton_collective::RingConfig,
    nccl_unique_id: &[u8],
    device: tch::Device,
) -> anyhow::Result<Box<dyn Collective>> {
    if peers.len() <= 1 {
        return Ok(Box::new(SingleProcess));
    }
    #[cfg(feature = "nccl")]
    if let (false, tch::Device::Cuda(ordinal)) = (nccl_unique_id.is_empty(), device) {
        info!(job_id, rank, "joining the NCCL communicator");
        return Ok(Box::new(plankton_collective::nccl::NcclAllReduce::new(
            nccl_unique_id,
            rank,
            peers.len(),
            ordinal,
        )?));
    }
    let _ = (nccl_unique_id, device);
    Ok(Box::new(RingAllReduce::establish(
        listener,
        job_id,
        rank,
        peers,
        ring_config,
    )?))
}

enum TrainingEvent {
    Step(StepProgress),
    Epoch(EpochEvaluation),
}

/// Bridges the training thread to the async side; stops training when the job is cancelled.
struct ChannelObserver {
    sender: mpsc::Sender<TrainingEvent>,
    cancel: CancellationToken,
    last_progress: Option<Instant>,
}

impl TrainingObserver for ChannelObserver {
    fn on_step(&mut self, progress: &StepProgress) -> ControlFlow<()> {
        if self.cancel.is_cancelled() {
            return ControlFlow::Break(());
        }
        let due = self
            .last_progress
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL)
            || progress.step == progress.steps_per_epoch;
        if due {
            self.last_progress = Some(Instant::now());
            // A full channel only delays progress display; never block training on it.
            let _ = self.sender.try_send(TrainingEvent::Step(progress.clone()));
        }
        ControlFlow::Continue(())
    }

    fn on_epoch(&mut self, evaluation: &EpochEvaluation) -> ControlFlow<()> {
        if self.cancel.is_cancelled()
            || self
                .sender
                .blocking_send(TrainingEvent::Epoch(evaluation.clone()))
                .is_err()
        {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn train_config(
    spec: &JobSpec,
    assignment: &ShardAssignment,
    threads: usize,
) -> anyhow::Result<TrainConfig> {
    let architecture: Architecture = spec
        .model
        .parse()
        .map_err(|error| anyhow::anyhow!("model {:?}: {error}", spec.model))?;
    let threads = if spec.threads_per_worker > 0 {
        spec.threads_per_worker as usize
    } else {
        threads
    };
    Ok(TrainConfig {
        architecture,
        num_classes: assignment.class_names.len(),
        class_weights: assignment.class_weights.clone(),
        epochs: spec.epochs,
        batch_size: spec.batch_size as usize,
        steps_per_epoch: assignment.steps_per_epoch.max(1) as usize,
        learning_rate: f64::from(spec.learning_rate),
        optimizer: match OptimizerKind::try_from(spec.optimizer).unwrap_or_default() {
            OptimizerKind::OptimizerAdam => OptimizerChoice::Adam,
            OptimizerKind::OptimizerSgdMomentum => OptimizerChoice::SgdMomentum,
        },
        lr_schedule: match ProtoLrSchedule::try_from(spec.lr_schedule).unwrap_or_default() {
            ProtoLrSchedule::Constant => LrSchedule::Constant,
            ProtoLrSchedule::Cosine => LrSchedule::Cosine,
            ProtoLrSchedule::Step => LrSchedule::Step,
        },
        augmentation: match Augmentation::try_from(spec.augmentation).unwrap_or_default() {
            Augmentation::None => AugmentationMode::None,
            Augmentation::All => AugmentationMode::All,
            Augmentation::RareClasses => AugmentationMode::RareClasses,
        },
        weight_decay: 0.0,
        seed: spec.seed,
        threads: threads.max(1),
        device: tch::Device::cuda_if_available(),
    })
}

/// Writes `model.safetensors` and `model-card.json` under the job's output URL; returns the weights' URL.
async fn write_model(
    assignment: &ShardAssignment,
    spec: &JobSpec,
    weights: Vec<u8>,
) -> anyhow::Result<String> {
    let output: StoreLocation = open_location(&assignment.output_url)?;
    let weights_file = "model.safetensors";
    output.put_bytes(weights_file, Bytes::from(weights)).await?;
    // The coordinator adds the job's final metrics to the card once every rank has finished.
    let card = ModelCard {
        architecture: spec
            .model
            .parse()
            .map_err(|error| anyhow::anyhow!("model {:?}: {error}", spec.model))?,
        classes: assignment.class_names.clone(),
        input: ModelInput::standard(
            match ProtoResizeMode::try_from(spec.resize_mode).unwrap_or_default() {
                ProtoResizeMode::ResizeStretch => "stretch",
                ProtoResizeMode::ResizePadToSquare => "pad_to_square",
            },
        ),
        metrics: serde_json::Value::Null,
        job_id: assignment.job_id.clone(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0),
        weights_file: weights_file.to_string(),
    };
    output
        .put_bytes(
            "model-card.json",
            Bytes::from(serde_json::to_vec_pretty(&card)?),
        )
        .await?;
    let model_url = format!(
        "{}/{weights_file}",
        assignment.output_url.trim_end_matches('/')
    );
    info!(model_url, "model written");
    Ok(model_url)
}
