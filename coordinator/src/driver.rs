//! One task per unfinished job: ticks its state machine, and does the slow work a tick asks for (re-planning
//! after a restart, looking up the latest checkpoint) outside the state lock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use plankton_proto::v1::{Checkpoint, JobPhase};

use crate::error::CoordinatorError;
use crate::planner::plan_job;
use crate::state::{ClusterState, Tick};

/// How often a job's state machine is ticked when nothing wakes it earlier.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Drives `job_id` until it ends or the coordinator shuts down.
pub fn spawn_job_driver(state: ClusterState, job_id: String, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            match state.tick_job(&job_id) {
                Ok(Tick::Finished) | Err(CoordinatorError::JobNotFound(_)) => return,
                Ok(Tick::Wait) => {}
                Ok(Tick::NeedsPlan(spec)) => match plan_job(&spec).await {
                    Ok(plan) => state.set_plan(&job_id, plan),
                    Err(error) => {
                        let _ = state.finish_job(
                            &job_id,
                            JobPhase::Failed,
                            format!("planning the job's shards again: {error}"),
                        );
                    }
                },
                Ok(Tick::NeedsCheckpoint(output_url)) => {
                    match plankton_checkpoint::latest_checkpoint(&output_url).await {
                        Ok(found) => state.set_checkpoint_lookup(
                            &job_id,
                            found.map(|checkpoint| Checkpoint {
                                url: checkpoint.url.clone(),
                                global_step: checkpoint.manifest.global_step,
                                epoch: checkpoint.manifest.epoch,
                                unix_ms: checkpoint.manifest.created_unix_ms,
                            }),
                        ),
                        Err(error) => {
                            warn!(job_id, output_url, %error, "listing checkpoints failed; retrying")
                        }
                    }
                }
                Err(error) => warn!(job_id, %error, "job state machine tick failed"),
            }
            let changed = state.changed.notified();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed => {}
                _ = tokio::time::sleep(TICK_INTERVAL) => {}
            }
        }
    });
}
