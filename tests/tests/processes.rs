//! Coordinator and workers as separate OS processes over gRPC on 127.0.0.1: a job trains, a killed worker
//! fails its job within the timeout with the worker named, the survivors stop cleanly, and a restarted
//! coordinator still serves finished jobs.

use std::time::{Duration, Instant};

use plankton_proto::v1::{GetJobRequest, JobPhase, JobSpec, ListWorkersRequest};
use plankton_tests::{ProcessCluster, synth_dataset, wait_finished};

fn spec(dataset_url: &str, epochs: u32) -> JobSpec {
    JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 2,
        model: "lenet".into(),
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
    let mut client = plankton_proto::v1::job_service_client::JobServiceClient::connect(
        cluster.coordinator_url.clone(),
    )
    .await?;
    let job = client
        .submit_job(plankton_proto::v1::SubmitJobRequest {
            spec: Some(spec(&dataset_url, 1)),
        })
        .await?
        .into_inner();
    let finished =
        wait_finished(&cluster.coordinator_url, &job.id, Duration::from_secs(600)).await?;
    assert_eq!(
        finished.phase(),
        JobPhase::Succeeded,
        "{}\n{}",
        finished.message,
        cluster.logs()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_fails_the_job_naming_it_and_nothing_hangs() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 800, 13, false).await?;
    let mut cluster = ProcessCluster::start(2, &[]).await?;
    let mut client = plankton_proto::v1::job_service_client::JobServiceClient::connect(
        cluster.coordinator_url.clone(),
    )
    .await?;
    let job = client
        .submit_job(plankton_proto::v1::SubmitJobRequest {
            spec: Some(spec(&dataset_url, 50)),
        })
        .await?
        .into_inner();

    // Wait until training runs, then kill one worker outright.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let current = client
            .get_job(GetJobRequest {
                job_id: job.id.clone(),
            })
            .await?
            .into_inner();
        if current.phase() == JobPhase::Training
            && current
                .workers
                .iter()
                .all(|worker| worker.step > 0 || worker.epoch > 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job never started training: {}\n{}",
            current.message,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Worker ids embed the process's --name; the victim is process 1 ("proc-worker-1").
    let victim_worker_id = client
        .get_job(GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner()
        .workers
        .iter()
        .map(|worker| worker.worker_id.clone())
        .find(|worker_id| worker_id.ends_with("proc-worker-1"))
        .expect("process 1 holds a rank");
    let killed_at = Instant::now();
    cluster.workers[1].start_kill()?;
    cluster.workers[1].wait().await?;

    let finished =
        wait_finished(&cluster.coordinator_url, &job.id, Duration::from_secs(30)).await?;
    let took = killed_at.elapsed();
    assert_eq!(finished.phase(), JobPhase::Failed, "{}", finished.message);
    assert!(
        finished.message.contains(&victim_worker_id),
        "message should name {victim_worker_id}: {}",
        finished.message
    );
    assert!(took < Duration::from_secs(25), "failure took {took:?}");

    // The surviving worker stops its part and goes back to idle; it is still registered and alive.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = client
            .list_workers(ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        let survivor_idle = workers.iter().any(|worker| {
            worker.worker_id.ends_with("proc-worker-0") && worker.current_job.is_empty()
        });
        if survivor_idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "surviving worker did not stop its job: {workers:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.workers[0].try_wait()?.is_none(),
        "the surviving worker process must still be running"
    );
    cluster.workers.remove(1);
    cluster.shutdown().await
}
