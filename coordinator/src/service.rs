//! gRPC front of the coordinator: `JobService` for operators and `WorkerControl` for workers.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use plankton_proto::v1::job_service_server::JobService;
use plankton_proto::v1::model_registry_server::ModelRegistry as ModelRegistryService;
use plankton_proto::v1::worker_control_server::WorkerControl;
use plankton_proto::v1::{
    Ack, CancelJobRequest, CheckpointReport, DoneReport, EpochReport, GenerationEndReport,
    GetJobRequest, HeartbeatRequest, HeartbeatResponse, Job, JobEvent, JobPhase, ListJobsRequest,
    ListJobsResponse, ListWorkersRequest, ListWorkersResponse, NextAssignmentRequest,
    NextAssignmentResponse, ProgressReport, RegisterRequest, RegisterResponse, ResumeJobRequest,
    SubmitJobRequest, WatchJobRequest, job_event,
};
use plankton_proto::v1::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, ModelVersion, PromoteModelRequest,
};

use crate::driver::spawn_job_driver;
use crate::error::CoordinatorError;
use crate::planner::{normalize_spec, plan_job};
use crate::state::{ClusterState, unix_ms_now};

/// How long a `NextAssignment` long poll waits before answering empty.
const ASSIGNMENT_POLL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct CoordinatorService {
    state: ClusterState,
    /// Ends the job drivers with the coordinator.
    shutdown: CancellationToken,
}

impl CoordinatorService {
    /// The service over `state`; starts a driver for every job that has not ended (a restart resumes them).
    pub fn new(state: ClusterState, shutdown: CancellationToken) -> Self {
        for job_id in state.unfinished_jobs() {
            spawn_job_driver(state.clone(), job_id, shutdown.clone());
        }
        Self { state, shutdown }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl JobService for CoordinatorService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| CoordinatorError::InvalidSpec("missing spec".into()))?;
        let spec = normalize_spec(spec)?;
        let plan = plan_job(&spec).await?;
        let job = self.state.create_job(spec, plan)?;
        info!(job_id = job.id, "job submitted");
        spawn_job_driver(self.state.clone(), job.id.clone(), self.shutdown.clone());
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.state.get_job(&request.into_inner().job_id)?,
        ))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse {
            jobs: self.state.list_jobs(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.state.cancel_job(&request.into_inner().job_id)?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<ResumeJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let job_id = request.into_inner().job_id;
        let job = self.state.resume_job(&job_id)?;
        info!(job_id, "job resumed by the operator");
        spawn_job_driver(self.state.clone(), job_id, self.shutdown.clone());
        Ok(Response::new(job))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let job_id = request.into_inner().job_id;
        let (replay, receiver, job) = self.state.subscribe(&job_id)?;
        let replay_has_end = replay
            .iter()
            .any(|event| matches!(event.event, Some(job_event::Event::Finished(_))));
        let stream = async_stream_events(job_id, replay, receiver, job, replay_has_end);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.state.list_workers(),
        }))
    }
}

/// Replays past events, then follows live ones until the job's final event.
fn async_stream_events(
    job_id: String,
    replay: Vec<JobEvent>,
    receiver: Option<tokio::sync::broadcast::Receiver<JobEvent>>,
    job: Job,
    replay_has_end: bool,
) -> impl Stream<Item = Result<JobEvent, Status>> + Send + 'static {
    let (sender, output) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        for event in replay {
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        match receiver {
            None => {
                if !replay_has_end {
                    let finished = JobEvent {
                        job_id,
                        unix_ms: unix_ms_now(),
                        event: Some(job_event::Event::Finished(job)),
                    };
                    let _ = sender.send(Ok(finished)).await;
                }
            }
            Some(mut receiver) => loop {
                match receiver.recv().await {
                    Ok(event) => {
                        let is_end = matches!(event.event, Some(job_event::Event::Finished(_)));
                        if sender.send(Ok(event)).await.is_err() || is_end {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        warn!(job_id, skipped, "watcher lagged; events skipped")
                    }
                    Err(RecvError::Closed) => return,
                }
            },
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(output)
}

#[tonic::async_trait]
impl WorkerControl for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.peer_address.is_empty() {
            return Err(Status::invalid_argument("register: peer_address is empty"));
        }
        let worker_id = self.state.register_worker(&request);
        Ok(Response::new(RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.state.timeouts.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let answer = self
            .state
            .heartbeat(&request.worker_id, &request.job_id, request.generation);
        Ok(Response::new(match answer {
            Ok(answer) => HeartbeatResponse {
                cancel_current_job: answer.cancel_current_job,
                unknown_worker: false,
                abort_generation: answer.abort_generation,
                reform_at_step: answer.reform_at_step,
            },
            // A worker the coordinator does not know (it restarted) registers again and keeps its job.
            Err(CoordinatorError::UnknownWorker(_)) => HeartbeatResponse {
                unknown_worker: true,
                ..Default::default()
            },
            Err(other) => return Err(other.into()),
        }))
    }

    async fn next_assignment(
        &self,
        request: Request<NextAssignmentRequest>,
    ) -> Result<Response<NextAssignmentResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        let deadline = tokio::time::Instant::now() + ASSIGNMENT_POLL;
        loop {
            match self.state.take_assignment(&worker_id)? {
                Ok(assignment) => {
                    return Ok(Response::new(NextAssignmentResponse {
                        assignment: Some(assignment),
                    }));
                }
                Err(notify) => {
                    let woken = tokio::time::timeout_at(deadline, notify.notified()).await;
                    if woken.is_err() {
                        return Ok(Response::new(NextAssignmentResponse { assignment: None }));
                    }
                }
            }
        }
    }

    async fn report_progress(
        &self,
        request: Request<ProgressReport>,
    ) -> Result<Response<Ack>, Status> {
        let report = request.into_inner();
        let progress = report.progress.unwrap_or_default();
        let phase = JobPhase::try_from(report.phase).unwrap_or(JobPhase::Unspecified);
        self.state
            .record_progress(&report.job_id, progress, phase)?;
        Ok(Response::new(Ack {}))
    }

    async fn report_epoch(&self, request: Request<EpochReport>) -> Result<Response<Ack>, Status> {
        self.state.record_epoch(request.into_inner())?;
        Ok(Response::new(Ack {}))
    }

    async fn report_generation_end(
        &self,
        request: Request<GenerationEndReport>,
    ) -> Result<Response<Ack>, Status> {
        self.state.record_generation_end(request.into_inner())?;
        Ok(Response::new(Ack {}))
    }

    async fn report_checkpoint(
        &self,
        request: Request<CheckpointReport>,
    ) -> Result<Response<Ack>, Status> {
        let report = request.into_inner();
        if let Some(checkpoint) = report.checkpoint {
            self.state
                .record_checkpoint(&report.job_id, report.generation, checkpoint)?;
        }
        Ok(Response::new(Ack {}))
    }

    async fn report_done(&self, request: Request<DoneReport>) -> Result<Response<Ack>, Status> {
        let job_id = request.get_ref().job_id.clone();
        if let Some(summary) = self.state.record_done(request.into_inner())? {
            let job = self.state.get_job(&job_id)?;
            if let Err(error) = complete_model_card(&job).await {
                warn!(job_id, %error, "could not add the final metrics to the model card");
            }
            self.state
                .finish_job(&job_id, JobPhase::Succeeded, summary)
                .or_else(crate::state::ignore_finished)?;
        }
        Ok(Response::new(Ack {}))
    }
}

#[tonic::async_trait]
impl ModelRegistryService for CoordinatorService {
    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: self.state.registry.list(&request.into_inner().name),
        }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.state.registry.get(
            &request.name,
            request.version,
            &request.alias,
        )?))
    }

    async fn promote_model(
        &self,
        request: Request<PromoteModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.state.registry.promote(
            &request.name,
            request.version,
            &request.alias,
        )?))
    }
}

/// Writes the job's final metrics into `model-card.json` next to the weights (rank 0 wrote it without them).
async fn complete_model_card(job: &Job) -> anyhow::Result<()> {
    let Some((folder, _weights_file)) = job.model_url.rsplit_once('/') else {
        return Ok(());
    };
    let Some(last) = job.epochs.last() else {
        return Ok(());
    };
    let location = plankton_dataset::open_location(folder)?;
    let mut card: serde_json::Value =
        serde_json::from_slice(&location.get_bytes("model-card.json").await?)?;
    card["metrics"] = serde_json::json!({
        "epoch": last.epoch,
        "accuracy": last.accuracy,
        "macro_f1": last.macro_f1,
        "weighted_f1": last.weighted_f1,
        "balanced_accuracy": last.balanced_accuracy,
        "test_loss": last.test_loss,
        "per_class": last.per_class.iter().map(|class| serde_json::json!({
            "class": class.class_name, "precision": class.precision, "recall": class.recall, "f1": class.f1, "support": class.support,
        })).collect::<Vec<_>>(),
        "test_objects": job.test_objects,
        "train_objects": job.train_objects,
    });
    location
        .put_bytes("model-card.json", serde_json::to_vec_pretty(&card)?.into())
        .await?;
    Ok(())
}
