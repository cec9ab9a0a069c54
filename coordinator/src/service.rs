//! gRPC front of the coordinator for operators: `JobService` and `ModelRegistry` (`WorkerControl`, for workers,
//! is in [`crate::worker_service`]).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use plankton_proto::v1::job_service_server::JobService;
use plankton_proto::v1::model_registry_server::ModelRegistry as ModelRegistryService;
use plankton_proto::v1::{
    CancelJobRequest, GetJobReportRequest, GetJobRequest, Job, JobEvent, JobReport,
    ListJobsRequest, ListJobsResponse, ListWorkersRequest, ListWorkersResponse, ResumeJobRequest,
    SubmitJobRequest, WatchJobRequest, job_event,
};
use plankton_proto::v1::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, ModelVersion, PromoteModelRequest,
};

use crate::driver::spawn_job_driver;
use crate::error::CoordinatorError;
use crate::planner::{normalize_spec, plan_job};
use crate::state::{ClusterState, unix_ms_now};
use crate::telemetry::CoordinatorMetrics;
use crate::validation::{JobPolicy, validate_spec};

#[derive(Clone)]
pub struct CoordinatorService {
    pub(crate) state: ClusterState,
    /// Where jobs may read and write, and how large they may be.
    policy: Arc<JobPolicy>,
    metrics: CoordinatorMetrics,
    /// Ends the job drivers with the coordinator.
    shutdown: CancellationToken,
}

impl CoordinatorService {
    /// The service over `state`; starts a driver for every job that has not ended (a restart resumes them).
    pub fn new(
        state: ClusterState,
        policy: JobPolicy,
        metrics: CoordinatorMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        for job_id in state.unfinished_jobs() {
            spawn_job_driver(state.clone(), job_id, shutdown.clone());
        }
        Self {
            state,
            policy: Arc::new(policy),
            metrics,
            shutdown,
        }
    }
}

/// Who made a call, for the audit log: the authenticated principal, or "anonymous" on an unauthenticated
/// (explicitly insecure) server.
fn caller<T>(request: &Request<T>) -> String {
    plankton_security::principal(request)
        .map(|principal| format!("{} ({})", principal.name, principal.role.as_str()))
        .unwrap_or_else(|| "anonymous".into())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl JobService for CoordinatorService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller(&request);
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| CoordinatorError::InvalidSpec("missing spec".into()))?;
        if let Err(error) = validate_spec(&spec, &self.policy) {
            info!(target: "audit", caller, %error, "job refused");
            self.metrics.jobs_refused.inc();
            return Err(error.into());
        }
        let planned = match normalize_spec(spec) {
            Ok(spec) => plan_job(&spec).await.map(|plan| (spec, plan)),
            Err(error) => Err(error),
        };
        let (spec, plan) = planned.inspect_err(|_| {
            self.metrics.jobs_refused.inc();
        })?;
        self.metrics.jobs_submitted.inc();
        let job = self.state.create_job(spec, plan)?;
        info!(target: "audit", caller, job_id = job.id, dataset_url = job.spec.as_ref().map(|spec| spec.dataset_url.as_str()), "job submitted");
        spawn_job_driver(self.state.clone(), job.id.clone(), self.shutdown.clone());
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(
            self.state.get_job(&request.into_inner().job_id)?,
        ))
    }

    async fn get_job_report(
        &self,
        request: Request<GetJobReportRequest>,
    ) -> Result<Response<JobReport>, Status> {
        let job = self.state.get_job(&request.into_inner().job_id)?;
        let html = crate::report::render_job_report(&job).await;
        Ok(Response::new(JobReport {
            job_id: job.id,
            html,
        }))
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
        let caller = caller(&request);
        let job_id = request.into_inner().job_id;
        let job = self.state.cancel_job(&job_id)?;
        info!(target: "audit", caller, job_id, "job cancelled");
        Ok(Response::new(job))
    }

    async fn resume_job(
        &self,
        request: Request<ResumeJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let caller = caller(&request);
        let job_id = request.into_inner().job_id;
        let job = self.state.resume_job(&job_id)?;
        info!(target: "audit", caller, job_id, "job resumed");
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
        let caller = caller(&request);
        let request = request.into_inner();
        let promoted =
            self.state
                .registry
                .promote(&request.name, request.version, &request.alias)?;
        info!(target: "audit", caller, name = promoted.name, version = promoted.version, alias = request.alias, "model promoted");
        Ok(Response::new(promoted))
    }
}

/// Writes the job's final metrics into `model-card.json` next to the weights (rank 0 wrote it without them).
pub(crate) async fn complete_model_card(job: &Job) -> anyhow::Result<()> {
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
        "biological_macro_f1": last.biological_macro_f1,
        "weighted_f1": last.weighted_f1,
        "balanced_accuracy": last.balanced_accuracy,
        "test_loss": last.test_loss,
        "per_class": last.per_class.iter().map(|class| serde_json::json!({
            "class": class.class_name, "precision": class.precision, "recall": class.recall, "f1": class.f1, "support": class.support,
        })).collect::<Vec<_>>(),
        "test_objects": job.test_objects,
        "train_objects": job.train_objects,
    });
    let spec = job.spec.clone().unwrap_or_default();
    // Added to what the worker recorded (precision, gradient compression, ...), not in its place.
    if !card["training"].is_object() {
        card["training"] = serde_json::json!({});
    }
    let training = &mut card["training"];
    training["loss"] = spec.loss().as_str_name().into();
    training["logit_tau"] = serde_json::json!(
        (spec.loss() == plankton_proto::v1::LossFunction::LogitAdjusted).then_some(spec.logit_tau)
    );
    training["class_weighting"] = spec.class_weighting().as_str_name().into();
    training["summary"] = job.training_summary.clone().into();
    location
        .put_bytes("model-card.json", serde_json::to_vec_pretty(&card)?.into())
        .await?;
    Ok(())
}
