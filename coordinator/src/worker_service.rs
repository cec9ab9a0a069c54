//! `WorkerControl`, the coordinator's gRPC front for workers. Every call but `Register` carries the session
//! token its registration returned (metadata `plankton-worker-session`), which names the calling worker; a
//! report is accepted only for a (job, generation, rank) the coordinator gave that worker, and a model or
//! checkpoint location only where the coordinator told the job to write.

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use plankton_proto::v1::worker_control_server::WorkerControl;
use plankton_proto::v1::{
    Ack, CheckpointReport, DoneReport, EpochReport, GenerationEndReport, HeartbeatRequest,
    HeartbeatResponse, JobPhase, NextAssignmentRequest, NextAssignmentResponse, ProgressReport,
    RegisterRequest, RegisterResponse,
};

use plankton_proto::WORKER_SESSION_METADATA;

use crate::error::CoordinatorError;
use crate::service::{CoordinatorService, complete_model_card};

/// How long a `NextAssignment` long poll waits before answering empty.
const ASSIGNMENT_POLL: Duration = Duration::from_secs(10);

impl CoordinatorService {
    /// The registered worker making a call, named by its session token. An unknown session (the coordinator
    /// restarted, or the worker was dropped) is NOT_FOUND, which tells a worker to register again.
    fn calling_worker<T>(&self, request: &Request<T>, method: &str) -> Result<String, Status> {
        let token = request
            .metadata()
            .get(WORKER_SESSION_METADATA)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if token.is_empty() {
            warn!(target: "audit", method, "worker call without a session token refused");
            return Err(Status::failed_precondition(format!(
                "{method}: no {WORKER_SESSION_METADATA} metadata: register first"
            )));
        }
        self.state.worker_of_session(token).ok_or_else(|| {
            Status::not_found(format!(
                "{method}: unknown worker session (the coordinator restarted or dropped this worker): register again"
            ))
        })
    }

    /// Refuses a call naming a worker other than the caller, or a place in a job the caller was not given.
    fn check_place(
        &self,
        caller: &str,
        method: &str,
        claimed_worker: &str,
        place: Option<(&str, u32, u32)>,
    ) -> Result<(), Status> {
        if !claimed_worker.is_empty() && claimed_worker != caller {
            return Err(refused(
                caller,
                method,
                format!("the call names worker {claimed_worker}, not the caller"),
            ));
        }
        if let Some((job_id, generation, rank)) = place
            && !self.state.worker_holds(caller, job_id, generation, rank)
        {
            return Err(refused(
                caller,
                method,
                format!(
                    "the caller holds no rank {rank} of generation {generation} of job {job_id}"
                ),
            ));
        }
        Ok(())
    }

    /// The job's output location, as the coordinator derived it at submit.
    /// The file the job's model is written to ([`plankton_proto::model_file_of`] its model).
    fn model_file_of(&self, job_id: &str) -> Result<&'static str, Status> {
        let job = self.state.get_job(job_id)?;
        Ok(plankton_proto::model_file_of(
            &job.spec.map(|spec| spec.model).unwrap_or_default(),
        ))
    }

    fn output_url_of(&self, job_id: &str) -> Result<String, Status> {
        let job = self.state.get_job(job_id)?;
        Ok(job
            .spec
            .map(|spec| spec.output_url.trim_end_matches('/').to_string())
            .unwrap_or_default())
    }
}

/// PERMISSION_DENIED for a worker's call, recorded in the audit log.
fn refused(caller: &str, method: &str, why: String) -> Status {
    warn!(target: "audit", worker_id = caller, method, reason = why, "worker call refused");
    Status::permission_denied(format!("{method}: {why}"))
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
        let (worker_id, session_token) = self.state.register_worker(&request);
        info!(target: "audit", worker_id, peer_address = request.peer_address, "worker registered");
        Ok(Response::new(RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.state.timeouts.heartbeat_interval.as_millis() as u64,
            session_token,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = match self.calling_worker(&request, "Heartbeat") {
            Ok(caller) => caller,
            // A worker the coordinator does not know (it restarted) registers again and keeps its job.
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Ok(Response::new(HeartbeatResponse {
                    unknown_worker: true,
                    ..Default::default()
                }));
            }
            Err(status) => return Err(status),
        };
        let request = request.into_inner();
        self.check_place(&caller, "Heartbeat", &request.worker_id, None)?;
        let answer = self
            .state
            .heartbeat(&caller, &request.job_id, request.generation);
        Ok(Response::new(match answer {
            Ok(answer) => HeartbeatResponse {
                cancel_current_job: answer.cancel_current_job,
                unknown_worker: false,
                abort_generation: answer.abort_generation,
                reform_at_step: answer.reform_at_step,
            },
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
        let caller = self.calling_worker(&request, "NextAssignment")?;
        self.check_place(
            &caller,
            "NextAssignment",
            &request.get_ref().worker_id,
            None,
        )?;
        let deadline = tokio::time::Instant::now() + ASSIGNMENT_POLL;
        loop {
            match self.state.take_assignment(&caller)? {
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
        let caller = self.calling_worker(&request, "ReportProgress")?;
        let report = request.into_inner();
        let progress = report.progress.unwrap_or_default();
        self.check_place(
            &caller,
            "ReportProgress",
            &progress.worker_id,
            Some((&report.job_id, progress.generation, progress.rank)),
        )?;
        let phase = JobPhase::try_from(report.phase).unwrap_or(JobPhase::Unspecified);
        self.state
            .record_progress(&report.job_id, progress, phase)?;
        Ok(Response::new(Ack {}))
    }

    async fn report_epoch(&self, request: Request<EpochReport>) -> Result<Response<Ack>, Status> {
        let caller = self.calling_worker(&request, "ReportEpoch")?;
        let report = request.into_inner();
        self.check_place(
            &caller,
            "ReportEpoch",
            &report.worker_id,
            Some((&report.job_id, report.generation, report.rank)),
        )?;
        self.state.record_epoch(report)?;
        Ok(Response::new(Ack {}))
    }

    async fn report_generation_end(
        &self,
        request: Request<GenerationEndReport>,
    ) -> Result<Response<Ack>, Status> {
        let caller = self.calling_worker(&request, "ReportGenerationEnd")?;
        let report = request.into_inner();
        self.check_place(
            &caller,
            "ReportGenerationEnd",
            &report.worker_id,
            Some((&report.job_id, report.generation, report.rank)),
        )?;
        self.state.record_generation_end(report)?;
        Ok(Response::new(Ack {}))
    }

    async fn report_checkpoint(
        &self,
        request: Request<CheckpointReport>,
    ) -> Result<Response<Ack>, Status> {
        let caller = self.calling_worker(&request, "ReportCheckpoint")?;
        let report = request.into_inner();
        // Rank 0 writes the checkpoints.
        self.check_place(
            &caller,
            "ReportCheckpoint",
            &report.worker_id,
            Some((&report.job_id, report.generation, 0)),
        )?;
        if let Some(checkpoint) = report.checkpoint {
            let output_url = self.output_url_of(&report.job_id)?;
            let under_output = same_location_forms(&output_url).iter().any(|output| {
                is_single_folder_under(&checkpoint.url, &format!("{output}/checkpoints/"))
            });
            if !under_output {
                return Err(refused(
                    &caller,
                    "ReportCheckpoint",
                    format!(
                        "checkpoint {} is not a folder under {output_url}/checkpoints/",
                        checkpoint.url
                    ),
                ));
            }
            self.state
                .record_checkpoint(&report.job_id, report.generation, checkpoint)?;
        }
        Ok(Response::new(Ack {}))
    }

    async fn report_done(&self, request: Request<DoneReport>) -> Result<Response<Ack>, Status> {
        let caller = self.calling_worker(&request, "ReportDone")?;
        let report = request.into_inner();
        self.check_place(
            &caller,
            "ReportDone",
            &report.worker_id,
            Some((&report.job_id, report.generation, report.rank)),
        )?;
        if !report.model_url.is_empty() {
            let output_url = self.output_url_of(&report.job_id)?;
            let model_file = self.model_file_of(&report.job_id)?;
            let expected = format!("{output_url}/{model_file}");
            let at_the_jobs_output = same_location_forms(&output_url)
                .iter()
                .any(|output| report.model_url == format!("{output}/{model_file}"));
            if report.rank != 0 || !at_the_jobs_output {
                return Err(refused(
                    &caller,
                    "ReportDone",
                    format!(
                        "model_url {} is not where the job writes its model ({expected}, by rank 0)",
                        report.model_url
                    ),
                ));
            }
        }
        let job_id = report.job_id.clone();
        if let Some(summary) = self.state.record_done(report)? {
            let job = self.state.get_job(&job_id)?;
            if let Err(error) = complete_model_card(&job).await {
                warn!(job_id, %error, "could not add the final metrics to the model card");
            }
            let mut finished = job;
            finished.set_phase(JobPhase::Succeeded);
            finished.message = summary.clone();
            finished.finished_unix_ms = crate::state::unix_ms_now();
            match tokio::time::timeout(
                crate::report::REPORT_WRITE_TIMEOUT,
                crate::report::write_job_report(&finished),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(job_id, %error, "could not write the job report next to the model")
                }
                Err(_) => warn!(
                    job_id,
                    timeout = ?crate::report::REPORT_WRITE_TIMEOUT,
                    "the job report was not written in time; `planktonctl report` renders it on demand"
                ),
            }
            self.state
                .finish_job(&job_id, JobPhase::Succeeded, summary)
                .or_else(crate::state::ignore_finished)?;
        }
        Ok(Response::new(Ack {}))
    }
}

/// The spellings of one output location: a plain local path is also written as the `file://` URL the object
/// store reports for it.
fn same_location_forms(output_url: &str) -> Vec<String> {
    let mut forms = vec![output_url.to_string()];
    if !output_url.contains("://")
        && let Ok(file_url) = url::Url::from_directory_path(output_url)
    {
        forms.push(file_url.to_string().trim_end_matches('/').to_string());
    }
    forms
}

/// Whether `url` is `parent` followed by one folder name (no `/`, no `.`/`..`), optionally with a final `/`.
fn is_single_folder_under(url: &str, parent: &str) -> bool {
    let Some(rest) = url.strip_prefix(parent) else {
        return false;
    };
    let name = rest.strip_suffix('/').unwrap_or(rest);
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '%'])
}

#[cfg(test)]
mod tests {
    use super::is_single_folder_under;

    #[test]
    fn checkpoint_locations_are_single_folders_under_the_jobs_checkpoints() {
        let parent = "file:///data/models/job-1/checkpoints/";
        assert!(is_single_folder_under(
            "file:///data/models/job-1/checkpoints/step-0000000040",
            parent
        ));
        assert!(is_single_folder_under(
            "file:///data/models/job-1/checkpoints/step-0000000040/",
            parent
        ));
        for refused in [
            "file:///data/models/job-1/checkpoints/",
            "file:///data/models/job-1/checkpoints/../../etc",
            "file:///data/models/job-1/checkpoints/a/b",
            "file:///data/models/job-1/checkpoints/%2e%2e",
            "file:///elsewhere/checkpoints/step-1",
        ] {
            assert!(!is_single_folder_under(refused, parent), "{refused}");
        }
    }
}
