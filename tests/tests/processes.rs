//! Coordinator and workers as separate OS processes over gRPC on 127.0.0.1: a job trains; `kill -9` of a worker
//! mid-epoch is survived (with a replacement joining, or on the survivors); `kill -9` of the coordinator does
//! not stop training; after every process dies the job resumes from its latest complete checkpoint.

use std::time::{Duration, Instant};

use plankton_proto::v1::{
    GetJobRequest, Job, JobPhase, JobSpec, ListModelsRequest, SubmitJobRequest,
};
use plankton_tests::{ProcessCluster, synth_dataset, wait_finished};

fn spec(dataset_url: &str, epochs: u32) -> JobSpec {
    JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 2,
        model: "wide_lenet".into(),
        epochs,
        batch_size: 16,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_train_a_job() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 600, 11, true).await?;
    let cluster = ProcessCluster::start(2, &[]).await?;
    let mut client = cluster.access.jobs().await?;
    let job = client
        .submit_job(plankton_proto::v1::SubmitJobRequest {
            spec: Some(spec(&dataset_url, 1)),
        })
        .await?
        .into_inner();
    let finished = wait_succeeded(&cluster, &job.id).await?;
    assert_eq!(finished.epochs.len(), 1);
    assert!(
        data.path()
            .join("models")
            .join(&job.id)
            .join("model.safetensors")
            .exists()
    );
    cluster.shutdown().await
}

/// Polls the job until `ready` holds (bounded); returns the job as seen then.
async fn wait_until(
    cluster: &ProcessCluster,
    job_id: &str,
    what: &str,
    ready: impl Fn(&Job) -> bool,
) -> anyhow::Result<Job> {
    let mut client = cluster.access.jobs().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(response) = client
            .get_job(GetJobRequest {
                job_id: job_id.into(),
            })
            .await
        {
            let job = response.into_inner();
            if ready(&job) {
                return Ok(job);
            }
            anyhow::ensure!(
                !plankton_coordinator::state::is_terminal(job.phase()),
                "job ended {:?} while waiting until {what}: {}\n{}",
                job.phase(),
                job.message,
                cluster.logs()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the job's end and fails (with every process's log) unless it succeeded.
async fn wait_succeeded(cluster: &ProcessCluster, job_id: &str) -> anyhow::Result<Job> {
    let finished = wait_finished(&cluster.access, job_id, Duration::from_secs(600)).await?;
    anyhow::ensure!(
        finished.phase() == JobPhase::Succeeded,
        "job {job_id} ended {:?}: {}\n{}",
        finished.phase(),
        finished.message,
        cluster.logs()
    );
    Ok(finished)
}

fn mid_epoch(job: &Job, epoch: u64) -> bool {
    let steps = job.steps_per_epoch.max(1);
    job.phase() == JobPhase::Training && job.global_step > (epoch - 1) * steps + steps / 3
}

/// The process of the worker holding `rank` in the job (processes are named proc-worker-<index>).
fn process_of_rank(job: &Job, rank: usize) -> usize {
    let worker_id = &job.workers[rank].worker_id;
    worker_id
        .strip_prefix("proc-worker-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("unexpected worker id {worker_id}"))
}

fn long_spec(dataset_url: &str) -> JobSpec {
    JobSpec {
        world_size: 3,
        epochs: 4,
        batch_size: 32,
        threads_per_worker: 1,
        ..spec(dataset_url, 4)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_are_survived_with_or_without_a_replacement() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 1500, 17, true).await?;
    let mut cluster = ProcessCluster::start(3, &[]).await?;
    let client = cluster.access.jobs().await?;
    let submit = |spec: JobSpec| {
        let mut client = client.clone();
        async move {
            anyhow::Ok(
                client
                    .submit_job(SubmitJobRequest { spec: Some(spec) })
                    .await?
                    .into_inner(),
            )
        }
    };

    // Undisturbed reference.
    let reference = submit(long_spec(&dataset_url)).await?;
    let reference = wait_succeeded(&cluster, &reference.id).await?;
    let reference_f1 = reference.epochs.last().expect("epochs").macro_f1;

    // kill -9 a worker mid-epoch 2 and start a replacement at once: it joins, the job ends on 3 workers.
    let job = submit(long_spec(&dataset_url)).await?;
    let running = wait_until(&cluster, &job.id, "mid-epoch 2", |job| mid_epoch(job, 2)).await?;
    let victim = process_of_rank(&running, 1);
    cluster.kill_worker(victim).await?;
    cluster.add_worker()?;
    let replaced = wait_succeeded(&cluster, &job.id).await?;
    assert_eq!(
        replaced.workers.len(),
        3,
        "the replacement joined: {:?}",
        replaced.recoveries
    );
    let first = &replaced.recoveries[0];
    assert!(first.fault && first.steps_lost <= 1, "{first:?}");
    assert_eq!(
        first.lost_workers,
        vec![running.workers[1].worker_id.clone()]
    );
    let macro_f1 = replaced.epochs.last().expect("epochs").macro_f1;
    assert!(
        (macro_f1 - reference_f1).abs() <= 0.02,
        "macro-F1 {macro_f1} vs undisturbed {reference_f1}"
    );

    // kill -9 another worker mid-epoch 2 with no replacement: the job ends on the 2 survivors.
    let job = submit(long_spec(&dataset_url)).await?;
    let running = wait_until(&cluster, &job.id, "mid-epoch 2", |job| mid_epoch(job, 2)).await?;
    let victim = process_of_rank(&running, 2);
    cluster.kill_worker(victim).await?;
    let shrunk = wait_succeeded(&cluster, &job.id).await?;
    assert_eq!(shrunk.workers.len(), 2, "{:?}", shrunk.recoveries);
    let recovery = &shrunk.recoveries[0];
    assert!(
        recovery.steps_lost <= 1 && recovery.world_size == 2,
        "{recovery:?}"
    );
    assert_eq!(shrunk.epochs.len(), 4);
    let macro_f1 = shrunk.epochs.last().expect("epochs").macro_f1;
    assert!(
        (macro_f1 - reference_f1).abs() <= 0.02,
        "macro-F1 {macro_f1} vs undisturbed {reference_f1}"
    );
    cluster.shutdown().await
}

/// Two worker processes on a 2,000-object dataset, training a 4-epoch job (checkpointing every
/// `checkpoint_every_steps` too, when not 0); returns the dataset folder (kept alive), the cluster and the job.
async fn two_workers_on_a_long_job(
    seed: u64,
    checkpoint_every_steps: u32,
) -> anyhow::Result<(tempfile::TempDir, ProcessCluster, Job)> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 2000, seed, false).await?;
    let cluster = ProcessCluster::start(2, &[]).await?;
    let mut client = cluster.access.jobs().await?;
    let job = client
        .submit_job(SubmitJobRequest {
            spec: Some(JobSpec {
                world_size: 2,
                epochs: 4,
                batch_size: 32,
                threads_per_worker: 1,
                checkpoint_every_steps,
                ..spec(&dataset_url, 4)
            }),
        })
        .await?
        .into_inner();
    Ok((data, cluster, job))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_goes_on_while_the_coordinator_is_killed_and_restarted() -> anyhow::Result<()> {
    let (_data, mut cluster, job) = two_workers_on_a_long_job(19, 0).await?;
    let before = wait_until(&cluster, &job.id, "mid-epoch 2", |job| mid_epoch(job, 2)).await?;
    cluster.kill_coordinator().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_coordinator()?;
    let finished = wait_succeeded(&cluster, &job.id).await?;
    assert!(
        finished.recoveries.is_empty(),
        "the ring never stopped: {:?}",
        finished.recoveries
    );
    assert_eq!(finished.generation, 0);
    assert_eq!(finished.epochs.len(), 4, "the metrics history is complete");
    assert!(finished.global_step > before.global_step);
    let mut registry = cluster.access.registry().await?;
    let models = registry
        .list_models(ListModelsRequest::default())
        .await?
        .into_inner()
        .models;
    assert!(
        models.iter().any(|model| model.job_id == job.id),
        "the model is registered: {models:?}"
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cluster_resumes_from_its_latest_complete_checkpoint() -> anyhow::Result<()> {
    let (_data, mut cluster, job) = two_workers_on_a_long_job(27, 5).await?;
    let checkpointed = wait_until(&cluster, &job.id, "a checkpoint in epoch 2", |job| {
        mid_epoch(job, 2) && !job.checkpoints.is_empty()
    })
    .await?;
    // Every process dies.
    cluster.kill_coordinator().await?;
    for index in 0..cluster.workers.len() {
        cluster.kill_worker(index).await?;
    }
    // A checkpoint interrupted mid-write (state, no manifest) at a later step must never be used.
    let output = checkpointed.spec.as_ref().expect("spec").output_url.clone();
    let output_dir = std::path::PathBuf::from(output.trim_start_matches("file://"));
    let torn = output_dir.join("checkpoints").join("step-0000009999");
    std::fs::create_dir_all(&torn)?;
    std::fs::write(torn.join("state.safetensors"), b"half a state")?;

    cluster.restart_coordinator()?;
    cluster.add_worker()?;
    cluster.add_worker()?;
    let resumed = wait_succeeded(&cluster, &job.id).await?;
    let recovery = resumed.recoveries.last().expect("a recovery");
    assert!(
        recovery.state_source.starts_with("checkpoint"),
        "{recovery:?}"
    );
    assert!(
        !recovery.state_source.contains("9999"),
        "the torn checkpoint was used: {recovery:?}"
    );
    assert!(recovery.resumed_from_step >= checkpointed.checkpoints.last().unwrap().global_step);
    assert_eq!(resumed.epochs.len(), 4);
    cluster.shutdown().await
}
