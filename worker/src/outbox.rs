//! Reports that must reach the coordinator (epoch evaluations, generation ends, checkpoints, the final done)
//! go through an outbox: sent in order, each with a deadline, retried with backoff while the coordinator is
//! unreachable or restarting, so a coordinator restart loses none of them.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use tracing::warn;

use plankton_proto::v1::{CheckpointReport, DoneReport, EpochReport, GenerationEndReport};

use crate::credentials::CoordinatorClient;

/// Deadline of every call to the coordinator.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Backoff between attempts to deliver a report while the coordinator is away.
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One report to deliver.
#[derive(Debug, Clone)]
pub enum Report {
    Epoch(EpochReport),
    GenerationEnd(GenerationEndReport),
    Checkpoint(CheckpointReport),
    Done(DoneReport),
}

impl Report {
    fn name(&self) -> &'static str {
        match self {
            Report::Epoch(_) => "epoch report",
            Report::GenerationEnd(_) => "generation end",
            Report::Checkpoint(_) => "checkpoint report",
            Report::Done(_) => "done report",
        }
    }
}

/// An ordered, retrying queue of reports for one job.
pub struct Outbox {
    sender: mpsc::UnboundedSender<Report>,
    task: JoinHandle<()>,
}

impl Outbox {
    /// Starts delivering through `client`; gives up on undelivered reports only when `stop` is cancelled.
    pub fn spawn(client: CoordinatorClient, stop: CancellationToken) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(deliver(client, receiver, stop));
        Outbox { sender, task }
    }

    /// A sender that queues reports into this outbox from other tasks.
    pub fn sender(&self) -> mpsc::UnboundedSender<Report> {
        self.sender.clone()
    }

    pub fn send(&self, report: Report) {
        // The task only ends after the sender is dropped (or when stopped): nothing to do if it is gone.
        let _ = self.sender.send(report);
    }

    /// Waits until every queued report was delivered (or the outbox was stopped).
    pub async fn flush(self) {
        drop(self.sender);
        let _ = self.task.await;
    }

    /// Drops undelivered reports (a crashed worker reports nothing).
    pub fn abandon(self) {
        self.task.abort();
    }
}

async fn deliver(
    mut client: CoordinatorClient,
    mut receiver: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    while let Some(report) = receiver.recv().await {
        let mut delay = RETRY_START;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let result = send_once(&mut client, &report).await;
            match result {
                Ok(()) => break,
                Err(status) if is_retryable(&status) => {
                    if attempts == 1 || attempts.is_multiple_of(20) {
                        warn!(report = report.name(), attempts, %status, "coordinator unreachable; will retry the report");
                    }
                }
                Err(status) => {
                    warn!(report = report.name(), %status, "coordinator refused a report; dropped");
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// Transport trouble and a restarting coordinator (which may not know the job's worker yet) are retried.
fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            // An unknown session: the coordinator restarted and this worker is registering again.
            | Code::NotFound
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
    )
}

async fn send_once(client: &mut CoordinatorClient, report: &Report) -> Result<(), tonic::Status> {
    fn with_deadline<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(CALL_DEADLINE);
        request
    }
    match report {
        Report::Epoch(epoch) => client.report_epoch(with_deadline(epoch.clone())).await?,
        Report::GenerationEnd(end) => {
            client
                .report_generation_end(with_deadline(end.clone()))
                .await?
        }
        Report::Checkpoint(checkpoint) => {
            client
                .report_checkpoint(with_deadline(checkpoint.clone()))
                .await?
        }
        Report::Done(done) => client.report_done(with_deadline(done.clone())).await?,
    };
    Ok(())
}
