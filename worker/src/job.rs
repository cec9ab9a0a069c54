//! One job on this worker, across ring generations: load the virtual shards of the generation, join its ring,
//! start from the generation's state source, train until the job ends or the generation breaks, report, and
//! wait for the next generation with the training state kept in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tracing::{error, info, warn};

use plankton_collective::{Collective, RingAbort, RingAllReduce, RingListener, SingleProcess};
use plankton_dataset::{
    DatasetError, ImageVersions, StoreLocation, open_image_source, open_location,
};
use plankton_preprocess::{PreprocessConfig, ShardCache};
use plankton_proto::v1::{
    DoneReport, EpochReport, GenerationEndReport, JobPhase, JobSpec, Misclassification,
    NextAssignmentRequest, ShardAssignment, ShardObject, WorkerProgress, state_source,
};
use plankton_trainer::{
    Architecture, DataParallelTrainer, GenerationOutcome, Mistake, ModelCard, ModelInput,
    ShardData, TrainConfig, TrainError, TrainingRecord, VirtualShardData, run_generation,
};

use crate::checkpointing::{CheckpointTarget, CheckpointWriter};
use crate::credentials::CoordinatorClient;
use crate::fault_injection::FaultInjectingCollective;
use crate::features::FeatureSource;
use crate::loader::{ShardResidence, load_shard};
use crate::outbox::{Outbox, Report};
use crate::streaming::{StreamedImages, first_epoch_order, spawn_stream};
use crate::tensorboard_log::StepLog;
use crate::train_settings::{resize_mode, train_config, training_record};
use crate::training_events::{
    ChannelObserver, PROGRESS_INTERVAL, Reporter, StepTimeSplit, TrainingEvent,
};
use crate::{CurrentJob, JobHandle, WorkerConfig};

/// Deadline of a `NextAssignment` long poll (the coordinator answers empty after 10 s).
pub(crate) const ASSIGNMENT_POLL_DEADLINE: Duration = Duration::from_secs(30);

/// How an assignment ended for this worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AssignmentEnd {
    /// Reported (success, failure, or leaving the job); the worker is idle again.
    Reported,
    /// An injected crash: the worker must vanish without reporting.
    Crashed,
}

/// The training state and data this worker keeps between generations of one job.
#[derive(Default)]
struct JobMemory {
    trainer: Option<DataParallelTrainer>,
    shards: HashMap<u32, VirtualShardData>,
    /// The objid of each test image of each virtual shard, in the shard's order (names mistakes in reports).
    test_objids: HashMap<u32, Vec<i64>>,
    skipped_objects: u64,
    /// Owned training shards still streaming in, or streamed (their unreadable images count as skipped).
    streams: Vec<ShardStream>,
    /// The TensorBoard step scalars, once this worker has been rank 0 of a generation.
    step_log: Option<StepLog>,
}

/// The stream filling one virtual shard's training images.
struct ShardStream {
    shard_index: u32,
    records: Arc<StreamedImages>,
    /// Stops the stream when the shard leaves this worker.
    cancel: CancellationToken,
}

impl JobMemory {
    /// Images left out so far: by whole loads, and by streams as their images arrive.
    fn skipped_total(&self) -> u64 {
        self.skipped_objects
            + self
                .streams
                .iter()
                .map(|stream| stream.records.skipped_count() as u64)
                .sum::<u64>()
    }

    /// Slots of streamed shards not holding a readable image yet: still to arrive, or unreadable.
    fn streamed_not_loaded(&self) -> u64 {
        self.streams
            .iter()
            .map(|stream| {
                let records = &stream.records;
                (records.len() + records.skipped_count()).saturating_sub(records.settled()) as u64
            })
            .sum()
    }

    /// Keeps the shards in `owned`: the others' data is dropped and their streams stopped (the images they
    /// skipped stay counted).
    fn keep_only(&mut self, owned: &[u32]) {
        self.shards.retain(|index, _| owned.contains(index));
        self.test_objids.retain(|index, _| owned.contains(index));
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.streams)
            .into_iter()
            .partition(|stream| owned.contains(&stream.shard_index));
        for stream in dropped {
            stream.cancel.cancel();
            self.skipped_objects += stream.records.skipped_count() as u64;
        }
        self.streams = kept;
    }
}

/// How one generation ended on this worker.
enum GenerationEnd {
    /// The job is done: report it (rank 0 wrote the model).
    Finished {
        model_url: String,
        weights_digest: String,
    },
    /// This generation is over; the worker waits for the next one.
    Left(GenerationEndReport),
    /// The job was stopped here (cancelled, or this worker was dropped from it).
    Stopped(String),
    /// A failure that ends the job (writing the model failed, ...).
    Failed(String),
    Crashed,
}

/// Runs an assignment through as many generations as the job needs; always ends with a report.
pub(crate) async fn run_assignment(
    config: &WorkerConfig,
    client: &mut CoordinatorClient,
    worker_id: &str,
    first_assignment: ShardAssignment,
    listener: Arc<RingListener>,
    current_job: &CurrentJob,
    session: &CancellationToken,
) -> AssignmentEnd {
    let job_id = first_assignment.job_id.clone();
    let handle = Arc::new(JobHandle::new(&job_id, session.child_token()));
    current_job.set(handle.clone());
    let outbox = Outbox::spawn(client.clone(), session.clone());
    let mut memory = JobMemory::default();
    let mut assignment = first_assignment;
    let end = loop {
        let abort = handle.begin_generation(assignment.generation, assignment.rank);
        info!(
            job_id,
            generation = assignment.generation,
            rank = assignment.rank,
            world_size = assignment.world_size,
            virtual_shards = ?assignment.virtual_shards.iter().map(|shard| shard.index).collect::<Vec<_>>(),
            "generation assigned"
        );
        let end = run_one_generation(
            config,
            client,
            worker_id,
            &assignment,
            &listener,
            &handle,
            abort,
            &outbox,
            &mut memory,
        )
        .await;
        match end {
            GenerationEnd::Left(report) => {
                let holds_state = report.holds_state;
                handle.set_pending_end(Some(report.clone()));
                outbox.send(Report::GenerationEnd(report));
                if !holds_state {
                    break GenerationEnd::Stopped("this worker cannot continue the job".into());
                }
                match wait_for_next_generation(client, worker_id, &handle, assignment.generation)
                    .await
                {
                    Some(next) => assignment = next,
                    None => {
                        break GenerationEnd::Stopped(
                            "the job ended while waiting for the next generation".into(),
                        );
                    }
                }
            }
            other => break other,
        }
    };
    let generation = handle.generation.load(Ordering::SeqCst);
    let rank = handle.rank.load(Ordering::SeqCst);
    let skipped_objects = memory.skipped_total();
    let done = |ok: bool, error: String, model_url: String, weights_digest: String| DoneReport {
        job_id: job_id.clone(),
        rank,
        ok,
        error,
        model_url,
        skipped_objects,
        generation,
        worker_id: worker_id.to_string(),
        weights_digest,
    };
    match end {
        GenerationEnd::Crashed => {
            outbox.abandon();
            current_job.clear();
            return AssignmentEnd::Crashed;
        }
        GenerationEnd::Finished {
            model_url,
            weights_digest,
        } => {
            outbox.send(Report::Done(done(
                true,
                String::new(),
                model_url,
                weights_digest,
            )));
        }
        GenerationEnd::Failed(message) => {
            error!(job_id, rank, error = message, "assignment failed");
            outbox.send(Report::Done(done(
                false,
                message,
                String::new(),
                String::new(),
            )));
        }
        GenerationEnd::Stopped(message) => {
            info!(job_id, rank, message, "left the job");
        }
        GenerationEnd::Left(_) => unreachable!("handled in the loop"),
    }
    outbox.flush().await;
    current_job.clear();
    AssignmentEnd::Reported
}

/// Long-polls the coordinator for this job's next generation; `None` when the job ended for this worker.
async fn wait_for_next_generation(
    client: &mut CoordinatorClient,
    worker_id: &str,
    handle: &JobHandle,
    generation: u32,
) -> Option<ShardAssignment> {
    loop {
        let mut request = Request::new(NextAssignmentRequest {
            worker_id: worker_id.to_string(),
        });
        request.set_timeout(ASSIGNMENT_POLL_DEADLINE);
        let response = tokio::select! {
            _ = handle.cancel.cancelled() => return None,
            response = client.next_assignment(request) => response,
        };
        match response {
            Ok(response) => match response.into_inner().assignment {
                Some(next) if next.job_id == handle.job_id && next.generation > generation => {
                    return Some(next);
                }
                Some(other) => {
                    warn!(
                        job_id = other.job_id,
                        generation = other.generation,
                        "ignored an assignment while waiting for the next generation"
                    );
                }
                None => {}
            },
            Err(status) => {
                // The coordinator may be restarting: the heartbeat loop registers again meanwhile.
                warn!(%status, "waiting for the next generation");
                tokio::select! {
                    _ = handle.cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_one_generation(
    config: &WorkerConfig,
    client: &mut CoordinatorClient,
    worker_id: &str,
    assignment: &ShardAssignment,
    listener: &Arc<RingListener>,
    handle: &Arc<JobHandle>,
    abort: RingAbort,
    outbox: &Outbox,
    memory: &mut JobMemory,
) -> GenerationEnd {
    let spec = assignment.spec.clone().unwrap_or_default();
    let leave = |memory: &JobMemory, holds_state: bool, reason: String| {
        let progress = memory
            .trainer
            .as_ref()
            .map(DataParallelTrainer::progress)
            .unwrap_or_default();
        GenerationEnd::Left(GenerationEndReport {
            job_id: assignment.job_id.clone(),
            worker_id: worker_id.to_string(),
            generation: assignment.generation,
            rank: assignment.rank,
            completed_steps: progress.global_step,
            evaluated_epochs: progress.evaluated_epochs,
            holds_state,
            reason,
            clean: false,
        })
    };

    // 1. Load the virtual shards of this generation (keeping those already in memory).
    let mut reporter = Reporter {
        client: client.clone(),
        job_id: assignment.job_id.clone(),
        rank: assignment.rank,
        generation: assignment.generation,
        worker_id: worker_id.to_string(),
    };
    if matches!(spec.model.parse::<Architecture>(), Ok(Architecture::Gbdt)) {
        return run_gbdt_generation(config, assignment, &spec, &mut reporter, handle, outbox).await;
    }
    if let Err(load_error) =
        load_virtual_shards(config, assignment, &spec, &reporter, handle, memory).await
    {
        if handle.cancel.is_cancelled() {
            return GenerationEnd::Stopped(format!("stopped while loading: {load_error:#}"));
        }
        warn!(
            job_id = assignment.job_id,
            error = format!("{load_error:#}"),
            "loading the shards failed"
        );
        return leave(
            memory,
            false,
            format!("loading its shards failed: {load_error:#}"),
        );
    }

    // 2. Fetch what the generation starts from, when it is not in a peer's memory.
    let source = assignment.state_source.clone().unwrap_or_default();
    let rank = assignment.rank as usize;
    let state_to_load = match (&source.source, rank) {
        (Some(state_source::Source::CheckpointUrl(url)), 0) => {
            match plankton_checkpoint::read_checkpoint(url).await {
                Ok((_, state)) => Some(StartState::Checkpoint(state)),
                Err(read_error) => {
                    return leave(
                        memory,
                        false,
                        format!("reading checkpoint {url}: {read_error}"),
                    );
                }
            }
        }
        (Some(state_source::Source::Fresh(_)), 0) if !source.init_weights_url.is_empty() => {
            match plankton_checkpoint::read_checkpoint(&source.init_weights_url).await {
                Ok((_, state)) => Some(StartState::Weights(state)),
                Err(read_error) => {
                    return GenerationEnd::Failed(format!(
                        "init_from {}: {read_error}",
                        source.init_weights_url
                    ));
                }
            }
        }
        _ => None,
    };
    let start = match &source.source {
        Some(state_source::Source::PeerRank(source_rank)) => Start::FromPeer(*source_rank as usize),
        Some(state_source::Source::CheckpointUrl(_))
        | Some(state_source::Source::Fresh(_))
        | None => {
            // Rank 0 builds (or loads) the state; everyone takes it from rank 0.
            memory.trainer = None;
            Start::FromRankZero(state_to_load)
        }
    };

    // 3. Train on the blocking pool; the observer forwards events to this task.
    let train_config = match train_config(&spec, assignment, config.threads) {
        Ok(train_config) => train_config,
        Err(config_error) => return GenerationEnd::Failed(format!("{config_error:#}")),
    };
    let checkpoints = (rank == 0).then(|| {
        CheckpointWriter::spawn(
            CheckpointTarget {
                job_id: assignment.job_id.clone(),
                worker_id: worker_id.to_string(),
                generation: assignment.generation,
                output_url: assignment.output_url.clone(),
                steps_per_epoch: assignment.steps_per_epoch,
                architecture: spec.model.clone(),
                class_names: assignment.class_names.clone(),
                // The coordinator fills the default; never prune to nothing.
                keep: spec.keep_checkpoints.max(1) as usize,
            },
            outbox.sender(),
        )
    });
    let step_log = (rank == 0).then(|| {
        memory
            .step_log
            .get_or_insert_with(|| StepLog::new(&assignment.output_url))
            .clone()
    });
    let (event_sender, mut event_receiver) = mpsc::channel::<TrainingEvent>(64);
    let mut owned_indices: Vec<u32> = assignment
        .virtual_shards
        .iter()
        .map(|shard| shard.index)
        .collect();
    owned_indices.sort_unstable();
    let shards: Vec<VirtualShardData> = owned_indices
        .iter()
        .filter_map(|index| memory.shards.remove(index))
        .collect();
    // Counted here: the shards leave `memory` for the training thread. Streamed shards count their slots;
    // each report subtracts those not loaded yet.
    let loaded_objects: u64 = shards
        .iter()
        .map(|shard| (shard.train.len() + shard.test.len()) as u64)
        .sum();
    let trainer = memory.trainer.take();
    let fault = config
        .fault
        .filter(|fault| assignment.generation == 0 && fault.rank == assignment.rank);
    let mut train_config = train_config;
    if let Some(fault) = fault.filter(|fault| fault.point == crate::FaultPoint::NonFiniteLoss) {
        train_config.inject_non_finite_at_step = Some(fault.global_step);
    }
    let session = TrainingSession {
        listener: listener.clone(),
        job_id: assignment.job_id.clone(),
        generation: assignment.generation,
        rank,
        peers: assignment.ring_peer_addresses.clone(),
        ring_config: config.ring.clone(),
        ring_security: plankton_collective::RingSecurity::new(
            assignment.ring_secret.clone(),
            assignment.ring_tls,
        ),
        nccl_unique_id: assignment.nccl_unique_id.clone(),
        abort: abort.clone(),
        generation_over: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        fault,
        crashed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        train_config,
        start,
        trainer,
        shards,
        observer: ChannelObserver {
            sender: event_sender,
            handle: handle.clone(),
            last_progress: None,
            time_split: StepTimeSplit::default(),
            checkpoints: checkpoints.as_ref().map(CheckpointWriter::sender),
            step_log: step_log.clone(),
        },
    };
    let training = tokio::task::spawn_blocking(move || session.run());

    let mut reporter = reporter;
    let mut flushed_epoch = 0;
    while let Some(event) = event_receiver.recv().await {
        match event {
            TrainingEvent::Step(step, time_split) => {
                let mut progress = WorkerProgress {
                    epoch: step.epoch,
                    step: step.step as u64,
                    steps_per_epoch: assignment.steps_per_epoch,
                    loss: step.loss,
                    images_per_second: step.images_per_second,
                    loaded_objects: loaded_objects.saturating_sub(memory.streamed_not_loaded()),
                    skipped_objects: memory.skipped_total(),
                    global_step: step.global_step,
                    virtual_shards: owned_indices.clone(),
                    skipped_steps: step.skipped_steps,
                    ..reporter.base_progress()
                };
                time_split.fill(&mut progress);
                reporter.progress(JobPhase::Training, progress).await;
            }
            TrainingEvent::Epoch(evaluation) => {
                if let Some(step_log) = &step_log
                    && evaluation.epoch > flushed_epoch
                {
                    flushed_epoch = evaluation.epoch;
                    step_log.flush();
                }
                outbox.send(Report::Epoch(EpochReport {
                    job_id: assignment.job_id.clone(),
                    rank: assignment.rank,
                    epoch: evaluation.epoch,
                    num_classes: assignment.class_names.len() as u32,
                    confusion: evaluation.confusion,
                    test_loss_sum: evaluation.test_loss_sum,
                    test_count: evaluation.test_count,
                    train_loss: evaluation.train_loss,
                    virtual_shard: evaluation.virtual_shard,
                    generation: assignment.generation,
                    worker_id: worker_id.to_string(),
                    misclassified: misclassified(
                        &evaluation.mistakes,
                        memory.test_objids.get(&evaluation.virtual_shard),
                    ),
                }));
            }
        }
    }
    let finished = match training.await {
        Ok(finished) => finished,
        Err(join_error) => {
            return GenerationEnd::Failed(format!("the training thread panicked: {join_error}"));
        }
    };
    if let Some(checkpoints) = checkpoints {
        checkpoints.finish().await;
    }
    if let Some(step_log) = &step_log {
        // The job's last steps are on the store before the job is reported done.
        if matches!(finished.result, Ok(GenerationOutcome::Finished)) {
            step_log.write().await;
        } else {
            step_log.flush();
        }
    }
    for shard in finished.shards {
        memory.shards.insert(shard.index, shard);
    }
    memory.trainer = finished.trainer;
    match finished.result {
        Ok(GenerationOutcome::Finished) => {
            let Some(trainer) = memory.trainer.take() else {
                return GenerationEnd::Failed("training finished without a model".into());
            };
            finish_job(assignment, &spec, trainer).await
        }
        Ok(GenerationOutcome::Reformed) => {
            let GenerationEnd::Left(mut report) =
                leave(memory, true, "re-forming to add workers".into())
            else {
                unreachable!("leave builds Left")
            };
            report.clean = true;
            GenerationEnd::Left(report)
        }
        Err(_) if finished.crashed => GenerationEnd::Crashed,
        Err(_) if handle.cancel.is_cancelled() => {
            GenerationEnd::Stopped("the job was stopped".into())
        }
        Err(TrainError::Cancelled) => GenerationEnd::Stopped("the job was stopped".into()),
        // Deterministic: the same state would produce the same values again, so the job ends here.
        Err(failure @ TrainError::NonFinite { .. }) => {
            error!(job_id = assignment.job_id, error = %failure, "non-finite loss or gradients");
            GenerationEnd::Failed(failure.to_string())
        }
        Err(failure) if failure.is_collective_failure() => {
            // A ring fault: this worker is healthy and keeps its state for the next generation. A worker with
            // no state yet is still fit to join, unless its first state had to come from init_from weights.
            let holds_state = memory.trainer.is_some() || source.init_weights_url.is_empty();
            warn!(job_id = assignment.job_id, generation = assignment.generation, error = %failure, "the ring broke; waiting for the next generation");
            leave(memory, holds_state, failure.to_string())
        }
        Err(failure) => {
            error!(job_id = assignment.job_id, error = %failure, "training failed on this worker");
            memory.trainer = None;
            leave(memory, false, failure.to_string())
        }
    }
}

/// A `gbdt` job: trees on the native features, trained, evaluated and written by this one worker.
async fn run_gbdt_generation(
    config: &WorkerConfig,
    assignment: &ShardAssignment,
    spec: &JobSpec,
    reporter: &mut Reporter,
    handle: &JobHandle,
    outbox: &Outbox,
) -> GenerationEnd {
    let progress = WorkerProgress {
        epoch: 1,
        loaded_objects: assignment
            .virtual_shards
            .iter()
            .map(|shard| (shard.train.len() + shard.test.len()) as u64)
            .sum(),
        virtual_shards: assignment
            .virtual_shards
            .iter()
            .map(|shard| shard.index)
            .collect(),
        ..reporter.base_progress()
    };
    reporter.progress(JobPhase::Training, progress).await;
    let cache = match config
        .cache_dir
        .as_ref()
        .map(|dir| ShardCache::open(dir.clone()))
    {
        Some(Ok(cache)) => Some(cache),
        Some(Err(error)) => {
            return GenerationEnd::Failed(format!("opening the shard cache: {error}"));
        }
        None => None,
    };
    let job = crate::gbdt_job::run_gbdt_job(
        assignment,
        spec,
        config.threads,
        cache,
        outbox,
        &reporter.worker_id,
    );
    let outcome = tokio::select! {
        outcome = job => outcome,
        () = handle.cancel.cancelled() => {
            return GenerationEnd::Stopped("the job was stopped".into());
        }
    };
    match outcome {
        Ok(outcome) => GenerationEnd::Finished {
            model_url: outcome.model_url,
            weights_digest: outcome.model_digest,
        },
        Err(failure) => {
            error!(
                job_id = assignment.job_id,
                error = format!("{failure:#}"),
                "gbdt training failed"
            );
            GenerationEnd::Failed(format!("gbdt: {failure:#}"))
        }
    }
}

/// Rank 0 writes the model; every rank reports its weights' digest.
async fn finish_job(
    assignment: &ShardAssignment,
    spec: &JobSpec,
    trainer: DataParallelTrainer,
) -> GenerationEnd {
    let rank = assignment.rank;
    // What the card records is the configuration the weights were trained with.
    let training = training_record(trainer.config(), spec);
    let exported = tokio::task::spawn_blocking(move || -> Result<(String, Vec<u8>), TrainError> {
        let digest = trainer.weights_digest()?;
        let weights = if rank == 0 {
            trainer.into_trained_model().to_safetensors()?
        } else {
            Vec::new()
        };
        Ok((digest, weights))
    })
    .await;
    let (weights_digest, weights) = match exported {
        Ok(Ok(exported)) => exported,
        Ok(Err(export_error)) => {
            return GenerationEnd::Failed(format!("exporting the model: {export_error}"));
        }
        Err(join_error) => {
            return GenerationEnd::Failed(format!("exporting the model panicked: {join_error}"));
        }
    };
    let model_url = if rank == 0 {
        match write_model(assignment, spec, weights, training).await {
            Ok(model_url) => model_url,
            Err(write_error) => {
                return GenerationEnd::Failed(format!("writing the model: {write_error:#}"));
            }
        }
    } else {
        String::new()
    };
    GenerationEnd::Finished {
        model_url,
        weights_digest,
    }
}

/// Loads the generation's virtual shards that are not in memory yet and drops those it no longer owns.
async fn load_virtual_shards(
    config: &WorkerConfig,
    assignment: &ShardAssignment,
    spec: &JobSpec,
    reporter: &Reporter,
    handle: &JobHandle,
    memory: &mut JobMemory,
) -> anyhow::Result<()> {
    let owned: Vec<u32> = assignment
        .virtual_shards
        .iter()
        .map(|shard| shard.index)
        .collect();
    memory.keep_only(&owned);
    let missing: Vec<_> = assignment
        .virtual_shards
        .iter()
        .filter(|shard| !memory.shards.contains_key(&shard.index))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let location = open_location(&spec.dataset_url)?;
    let image_source = Arc::new(open_image_source(&location).await?);
    let preprocess_config = PreprocessConfig {
        resize_mode: resize_mode(spec),
        ..PreprocessConfig::default()
    };
    let cache = match &config.cache_dir {
        Some(dir) => Some(ShardCache::open(dir.clone())?),
        None => None,
    };
    // The cap is the worker's: shared by the train and test record files of every owned virtual shard.
    let residence = match config.max_resident_bytes {
        None => ShardResidence::InMemory,
        Some(total_bytes) => ShardResidence::RecordFile {
            max_cached_bytes: total_bytes / (2 * owned.len()).max(1),
        },
    };
    let feature_source = crate::features::assignment_transform(assignment)?
        .map(|transform| FeatureSource::new(location.clone(), transform, cache.clone()))
        .transpose()?;
    // Streaming starts training on what has arrived: only for models without native features.
    let stream_train = config.stream_shards && feature_source.is_none();
    if config.stream_shards && !stream_train {
        warn!("streaming ingestion needs a model without native features; loading whole shards");
    }
    let total: usize = missing
        .iter()
        .map(|shard| shard.test.len() + if stream_train { 0 } else { shard.train.len() })
        .sum();
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
    // One read of the images' identity in the store (one listing of imgs/) for every shard this rank loads
    // whole, instead of one per shard. Without it the shards load without the cache (no key to trust), and no
    // load lists the store again.
    let versions = match &cache {
        Some(_) => {
            let mut objids: Vec<i64> = Vec::new();
            for shard in &missing {
                if !stream_train {
                    objids.extend(shard.train.iter().map(|object| object.objid));
                }
                objids.extend(shard.test.iter().map(|object| object.objid));
            }
            match ImageVersions::read(&location, &image_source, &objids).await {
                Ok(versions) => Some(versions),
                Err(error @ DatasetError::Zip { .. }) => return Err(error.into()),
                Err(error) => {
                    warn!(%error, "cannot read the identity of the shards' images; loading without the shard cache");
                    None
                }
            }
        }
        None => None,
    };
    let load_cache = versions.as_ref().and(cache.as_ref());
    let mut done_before = 0usize;
    for shard in missing {
        let mut parts = Vec::with_capacity(2);
        let whole_loads = if stream_train {
            vec![&shard.test]
        } else {
            vec![&shard.train, &shard.test]
        };
        for objects in whole_loads {
            let offset = done_before;
            let sender = progress_sender.clone();
            let mut report = move |done: usize, _total: usize| {
                let _ = sender.send(offset + done);
            };
            let loaded = load_shard(
                &location,
                &image_source,
                objects,
                &preprocess_config,
                load_cache,
                versions.as_ref(),
                residence,
                config.fetch_concurrency,
                &handle.cancel,
                &mut report,
            )
            .await?;
            done_before += objects.len();
            memory.skipped_objects += loaded.skipped.len() as u64;
            let mut loaded = loaded;
            if let Some(source) = &feature_source {
                let (features, _) = source.rows(&loaded.objids).await?;
                loaded.data.features = features;
                loaded.data.feature_width = source.transform().output_width();
            }
            parts.push(loaded);
        }
        let test = parts.pop().expect("a test part");
        let train = if stream_train {
            let mut objects: Vec<&ShardObject> = shard.train.iter().collect();
            objects.sort_by_key(|object| object.objid);
            let labels: Vec<u32> = objects.iter().map(|object| object.label).collect();
            // A rank waits for an image no longer than its ring peers wait for it.
            let objids = objects.iter().map(|object| object.objid).collect();
            let records = Arc::new(match (residence, &config.cache_dir) {
                (ShardResidence::RecordFile { max_cached_bytes }, Some(dir)) => {
                    StreamedImages::spilled(objids, config.ring.io_timeout, dir, max_cached_bytes)
                        .with_context(|| {
                        format!(
                            "creating a spill file for streamed images in {}",
                            dir.display()
                        )
                    })?
                }
                _ => StreamedImages::new(objids, config.ring.io_timeout),
            });
            let order = first_epoch_order(
                objects.len(),
                spec.batch_size as usize,
                spec.seed,
                shard.index as usize,
                assignment.steps_per_epoch.max(1) as usize,
            );
            let cancel = handle.cancel.child_token();
            spawn_stream(
                location.clone(),
                image_source.clone(),
                records.clone(),
                order,
                preprocess_config.clone(),
                config.fetch_concurrency,
                cancel.clone(),
            );
            memory.streams.push(ShardStream {
                shard_index: shard.index,
                records: records.clone(),
                cancel,
            });
            ShardData::from_records(records, labels)
        } else {
            parts.pop().expect("a train part").data
        };
        memory.test_objids.insert(shard.index, test.objids);
        let test = test.data;
        if train.labels.is_empty() {
            anyhow::bail!(
                "virtual shard {} has no readable training image",
                shard.index
            );
        }
        memory.shards.insert(
            shard.index,
            VirtualShardData {
                index: shard.index,
                train,
                test,
            },
        );
    }
    drop(progress_sender);
    let _ = progress_forwarder.await;
    Ok(())
}

/// `mistakes` (indices into a virtual shard's test split) named by objid; none when the objids are unknown.
fn misclassified(mistakes: &[Mistake], test_objids: Option<&Vec<i64>>) -> Vec<Misclassification> {
    let Some(test_objids) = test_objids else {
        return Vec::new();
    };
    mistakes
        .iter()
        .filter_map(|mistake| {
            Some(Misclassification {
                objid: *test_objids.get(mistake.index)?,
                true_class: mistake.true_class,
                predicted_class: mistake.predicted_class,
                confidence: mistake.confidence,
            })
        })
        .collect()
}

/// What rank 0 loads before broadcasting the generation's starting state.
enum StartState {
    Checkpoint(Bytes),
    Weights(Bytes),
}

enum Start {
    /// The state lives in this rank of the new generation (a survivor); it broadcasts it.
    FromPeer(usize),
    /// Rank 0 starts fresh (from the seed, optionally with loaded weights) or from a checkpoint.
    FromRankZero(Option<StartState>),
}

/// Everything the training thread needs for one generation, and gives back.
struct TrainingSession {
    listener: Arc<RingListener>,
    job_id: String,
    generation: u32,
    rank: usize,
    peers: Vec<String>,
    ring_config: plankton_collective::RingConfig,
    /// The generation's ring key and whether ring traffic is encrypted, from the assignment.
    ring_security: plankton_collective::RingSecurity,
    nccl_unique_id: Vec<u8>,
    abort: RingAbort,
    /// Set when the generation's training ends (stops the NCCL abort watchdog).
    generation_over: Arc<std::sync::atomic::AtomicBool>,
    fault: Option<crate::InjectedFault>,
    /// Set by the fault injector when its crash fires.
    crashed: Arc<std::sync::atomic::AtomicBool>,
    train_config: TrainConfig,
    start: Start,
    trainer: Option<DataParallelTrainer>,
    shards: Vec<VirtualShardData>,
    observer: ChannelObserver,
}

struct FinishedSession {
    trainer: Option<DataParallelTrainer>,
    shards: Vec<VirtualShardData>,
    result: Result<GenerationOutcome, TrainError>,
    /// An injected crash fired.
    crashed: bool,
}

impl TrainingSession {
    fn run(mut self) -> FinishedSession {
        let mut trainer = self.trainer.take();
        let result = self.train(&mut trainer);
        self.generation_over.store(true, Ordering::SeqCst);
        FinishedSession {
            trainer,
            shards: self.shards,
            result,
            crashed: self.crashed.load(Ordering::SeqCst),
        }
    }

    fn train(
        &mut self,
        slot: &mut Option<DataParallelTrainer>,
    ) -> Result<GenerationOutcome, TrainError> {
        let mut collective = join_collective(
            &self.listener,
            &self.job_id,
            self.generation,
            self.rank,
            &self.peers,
            &self.ring_config,
            &self.ring_security,
            &self.nccl_unique_id,
            self.train_config.device,
            &self.abort,
            &self.generation_over,
        )?;
        if let Some(fault) = self.fault {
            collective = Box::new(FaultInjectingCollective::new(
                collective,
                fault,
                self.abort.clone(),
                self.crashed.clone(),
            ));
        }
        let source_rank = match &mut self.start {
            Start::FromPeer(source_rank) => *source_rank,
            Start::FromRankZero(state) => {
                let mut fresh = DataParallelTrainer::new(&self.train_config)?;
                match state.take() {
                    Some(StartState::Checkpoint(bytes)) => fresh.load_state_bytes(&bytes)?,
                    Some(StartState::Weights(bytes)) => fresh.load_weights(&bytes)?,
                    None => {}
                }
                *slot = Some(fresh);
                0
            }
        };
        if slot.is_none() {
            // A joiner: any state will do, the source's broadcast replaces it.
            *slot = Some(DataParallelTrainer::new(&self.train_config)?);
        }
        let trainer = slot.as_mut().expect("set above");
        trainer.synchronize_from(collective.as_mut(), source_rank)?;
        info!(
            job_id = self.job_id,
            generation = self.generation,
            rank = self.rank,
            source_rank,
            global_step = trainer.progress().global_step,
            "generation state synchronized"
        );
        run_generation(
            trainer,
            &self.train_config,
            &self.shards,
            collective.as_mut(),
            &mut self.observer,
        )
    }
}

/// NCCL when the coordinator handed out a unique id and this rank trains on a GPU, else the TCP ring.
#[allow(clippy::too_many_arguments)]
fn join_collective(
    listener: &RingListener,
    job_id: &str,
    generation: u32,
    rank: usize,
    peers: &[String],
    ring_config: &plankton_collective::RingConfig,
    ring_security: &plankton_collective::RingSecurity,
    nccl_unique_id: &[u8],
    device: tch::Device,
    abort: &RingAbort,
    generation_over: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<Box<dyn Collective>, TrainError> {
    if peers.len() <= 1 {
        return Ok(Box::new(SingleProcess));
    }
    #[cfg(feature = "nccl")]
    if let (false, tch::Device::Cuda(ordinal)) = (nccl_unique_id.is_empty(), device) {
        info!(job_id, generation, rank, "joining the NCCL communicator");
        let communicator = plankton_collective::nccl::NcclAllReduce::new(
            nccl_unique_id,
            rank,
            peers.len(),
            ordinal,
        )?;
        watch_nccl_abort(
            communicator.abort_handle(),
            abort.clone(),
            generation_over.clone(),
        );
        return Ok(Box::new(communicator));
    }
    let _ = (nccl_unique_id, device, generation_over);
    Ok(Box::new(RingAllReduce::establish_secured(
        listener,
        job_id,
        generation,
        rank,
        peers,
        ring_config,
        ring_security,
        abort,
    )?))
}

/// NCCL has no timeout of its own: a watchdog thread turns the generation's abort into `ncclCommAbort`, which
/// frees a rank stuck in a collective. It ends with the generation.
#[cfg(feature = "nccl")]
fn watch_nccl_abort(
    handle: plankton_collective::nccl::NcclAbortHandle,
    abort: RingAbort,
    generation_over: Arc<std::sync::atomic::AtomicBool>,
) {
    std::thread::spawn(move || {
        while !handle.is_aborted() {
            if abort.is_aborted() {
                let reason = abort.reason().unwrap_or_default();
                if let Err(abort_error) = handle.abort(reason) {
                    warn!(%abort_error, "aborting the NCCL communicator failed");
                }
                return;
            }
            if generation_over.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// Writes `model.safetensors` and `model-card.json` under the job's output URL; returns the weights' URL.
async fn write_model(
    assignment: &ShardAssignment,
    spec: &JobSpec,
    weights: Vec<u8>,
    training: TrainingRecord,
) -> anyhow::Result<String> {
    let output: StoreLocation = open_location(&assignment.output_url)?;
    let weights_file = plankton_proto::MODEL_WEIGHTS_FILE;
    output.put_bytes(weights_file, Bytes::from(weights)).await?;
    // The coordinator adds the job's final metrics to the card once every rank has finished.
    let card = ModelCard {
        architecture: spec
            .model
            .parse()
            .map_err(|error| anyhow::anyhow!("model {:?}: {error}", spec.model))?,
        classes: assignment.class_names.clone(),
        input: ModelInput::standard(resize_mode(spec).name()),
        metrics: serde_json::Value::Null,
        job_id: assignment.job_id.clone(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0),
        weights_file: weights_file.to_string(),
        feature_transform: crate::features::assignment_transform(assignment)?
            .map(|transform| transform.as_ref().clone()),
        training: Some(training),
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

#[cfg(test)]
mod tests {
    use super::*;
    use plankton_preprocess::IMAGE_LEN;

    /// After a reform, a shard that left this worker stops streaming and no longer counts as not loaded; the
    /// images its stream skipped stay counted.
    #[test]
    fn dropping_a_streamed_shard_stops_its_stream_and_keeps_its_skipped_count() {
        let mut memory = JobMemory::default();
        for shard_index in [1u32, 2] {
            let records = Arc::new(StreamedImages::new(
                vec![10, 11, 12],
                Duration::from_millis(10),
            ));
            records
                .fill(
                    &[(0, Some(&[0u8; IMAGE_LEN][..])), (1, None)],
                    vec![(11, "imgs/11.jpg: not a JPEG".to_string())],
                )
                .expect("held in memory");
            memory.streams.push(ShardStream {
                shard_index,
                records,
                cancel: CancellationToken::new(),
            });
        }
        // Each shard: one image loaded, one skipped, one still to come.
        assert_eq!(memory.streamed_not_loaded(), 4);
        assert_eq!(memory.skipped_total(), 2);
        let dropped_cancel = memory.streams[1].cancel.clone();

        memory.keep_only(&[1]);
        assert!(dropped_cancel.is_cancelled());
        assert!(!memory.streams[0].cancel.is_cancelled());
        assert_eq!(memory.streams.len(), 1);
        assert_eq!(memory.streamed_not_loaded(), 2);
        assert_eq!(memory.skipped_total(), 2);
    }
}
