//! Fault tolerance in one process (faults injected like torchft's EventInjector): a rank dies before, during
//! or after a step's all-reduce and the survivors finish the job with the weights an undisturbed run reaches;
//! a stalled rank is aborted and its worker takes the next job; a cancelled job resumes from its latest
//! checkpoint, and a checkpoint seeds a fine-tuning job.

use std::collections::BTreeMap;
use std::time::Duration;

use plankton_proto::v1::{Job, JobPhase, JobSpec, ListWorkersRequest, ResumeJobRequest};
use plankton_tests::{TestCluster, synth_dataset, test_ring_config};
use plankton_worker::{FaultPoint, InjectedFault};

/// Small enough to run four jobs in a test, long enough (3 epochs x 8 steps of `wide_lenet`) to fail mid-way.
fn spec(dataset_url: &str) -> JobSpec {
    JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 3,
        model: "wide_lenet".into(),
        epochs: 3,
        batch_size: 16,
        threads_per_worker: 1,
        ..Default::default()
    }
}

/// Every tensor of a safetensors file, as f32 values.
async fn model_weights(job: &Job) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    let folder = job.model_url.trim_end_matches("/model.safetensors");
    let bytes = plankton_dataset::open_location(folder)?
        .get_bytes("model.safetensors")
        .await?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    Ok(tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
                .collect();
            (name, values)
        })
        .collect())
}

/// Every weight's absolute difference between two models with the same tensors, sorted ascending.
fn sorted_differences(
    left: &BTreeMap<String, Vec<f32>>,
    right: &BTreeMap<String, Vec<f32>>,
) -> Vec<f32> {
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        right.keys().collect::<Vec<_>>()
    );
    let mut differences: Vec<f32> = left
        .iter()
        .flat_map(|(name, values)| values.iter().zip(&right[name]).map(|(a, b)| (a - b).abs()))
        .collect();
    differences.sort_by(f32::total_cmp);
    differences
}

async fn run_with_fault(dataset_url: &str, fault: Option<InjectedFault>) -> anyhow::Result<Job> {
    let cluster = TestCluster::start_with(3, None, |_, config| config.fault = fault).await?;
    let job = cluster.run_job(spec(dataset_url)).await?;
    cluster.shutdown().await?;
    Ok(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rank_dying_before_during_or_after_the_all_reduce_costs_at_most_one_step()
-> anyhow::Result<()> {
    let dataset_url = "memory://tests/fault-points";
    synth_dataset(dataset_url, 500, 21, false).await?;
    let undisturbed = run_with_fault(dataset_url, None).await?;
    assert!(undisturbed.recoveries.is_empty());
    let reference = model_weights(&undisturbed).await?;
    let reference_f1 = undisturbed.epochs.last().expect("epochs").macro_f1;
    let steps_per_epoch = undisturbed.steps_per_epoch;
    assert!(steps_per_epoch >= 4, "{steps_per_epoch} steps per epoch");

    for point in [
        FaultPoint::BeforeAllReduce,
        FaultPoint::DuringAllReduce,
        FaultPoint::AfterAllReduce,
    ] {
        // Rank 1 dies in the middle of epoch 2.
        let fault = InjectedFault {
            rank: 1,
            global_step: steps_per_epoch + steps_per_epoch / 2,
            point,
        };
        let job = run_with_fault(dataset_url, Some(fault)).await?;
        assert_eq!(job.recoveries.len(), 1, "{point:?}: {:?}", job.recoveries);
        let recovery = &job.recoveries[0];
        assert!(
            recovery.fault && recovery.lost_workers.len() == 1,
            "{point:?}: {recovery:?}"
        );
        assert_eq!(
            recovery.world_size, 2,
            "{point:?}: the survivors go on alone"
        );
        assert!(recovery.steps_lost <= 1, "{point:?}: {recovery:?}");
        let expected_resume = if point == FaultPoint::AfterAllReduce {
            fault.global_step + 1
        } else {
            fault.global_step
        };
        assert_eq!(
            recovery.resumed_from_step, expected_resume,
            "{point:?}: {recovery:?}"
        );
        assert!(
            recovery.resumed_unix_ms >= recovery.formed_unix_ms,
            "{point:?}: {recovery:?}"
        );
        assert_eq!(job.epochs.len(), 3, "{point:?}: every epoch was evaluated");
        // The coordinator only lets a job succeed when every rank's weights digest matches.
        assert!(!job.weights_digest.is_empty());
        // Summing the virtual shards' gradients over 2 ranks instead of 3 only reorders float additions. Adam
        // turns that rounding into visible differences only where a weight's gradient is near zero (update =
        // m / sqrt(v), both tiny): a handful of weights. A lost or repeated step would move most weights by up
        // to the learning rate (1e-3), so the bulk must agree tightly and no weight may differ by a step.
        let differences = sorted_differences(&reference, &model_weights(&job).await?);
        let count = differences.len();
        let mean = differences
            .iter()
            .map(|value| f64::from(*value))
            .sum::<f64>()
            / count as f64;
        let (per_mille, largest) = (differences[count * 999 / 1000], differences[count - 1]);
        assert!(
            mean <= 1e-7 && per_mille <= 1e-5 && largest < 1e-3,
            "{point:?}: weights differ from the undisturbed run: mean {mean:e}, 99.9th percentile \
             {per_mille:e}, largest {largest:e} over {count} weights"
        );
        let macro_f1 = job.epochs.last().expect("epochs").macro_f1;
        assert!(
            (macro_f1 - reference_f1).abs() <= 0.02,
            "{point:?}: macro-F1 {macro_f1} vs {reference_f1}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_rank_is_aborted_and_its_worker_takes_the_next_job() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/fault-stall";
    synth_dataset(dataset_url, 500, 22, false).await?;
    let fault = InjectedFault {
        rank: 1,
        global_step: 5,
        point: FaultPoint::Stall,
    };
    let cluster = TestCluster::start_with(3, None, |_, config| {
        config.fault = Some(fault);
        config.ring = plankton_collective::RingConfig {
            io_timeout: Duration::from_secs(2),
            ..test_ring_config()
        };
    })
    .await?;
    let started = std::time::Instant::now();
    let job = cluster.run_job(spec(dataset_url)).await?;
    assert_eq!(job.recoveries.len(), 1, "{:?}", job.recoveries);
    let recovery = &job.recoveries[0];
    // The peers' ring timeout names the stalled rank; the coordinator's abort frees the stalled worker, which
    // is healthy again and may rejoin.
    assert!(
        recovery.reason.contains("rank 1"),
        "the reason names the stalled rank: {}",
        recovery.reason
    );
    assert!(recovery.steps_lost <= 1, "{recovery:?}");
    assert!(started.elapsed() < Duration::from_secs(120));

    // The stalled worker was aborted and is idle again: a job for all three workers runs.
    let mut client = cluster.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = client
            .list_workers(ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        if workers.len() == 3 && workers.iter().all(|worker| worker.current_job.is_empty()) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "workers not idle: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let next = cluster
        .run_job(JobSpec {
            epochs: 1,
            ..spec(dataset_url)
        })
        .await?;
    assert_eq!(next.workers.len(), 3);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_resumes_from_its_latest_checkpoint_and_seeds_a_fine_tuning_job()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset_url = format!("file://{}", data.path().display());
    synth_dataset(&dataset_url, 500, 23, false).await?;
    let cluster = TestCluster::start(2).await?;
    let job_spec = JobSpec {
        world_size: 2,
        epochs: 4,
        checkpoint_every_steps: 4,
        ..spec(&dataset_url)
    };
    let job = cluster.submit(job_spec).await?;
    let mut client = cluster.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let checkpointed = loop {
        let current = cluster.get(&job.id).await?;
        if current.checkpoints.len() >= 2 {
            break current;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .cancel_job(plankton_proto::v1::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    let cancelled = cluster
        .wait_finished(&job.id, Duration::from_secs(30))
        .await?;
    assert_eq!(cancelled.phase(), JobPhase::Cancelled);
    let latest = cancelled.checkpoints.last().expect("checkpoints").clone();
    assert!(latest.global_step >= checkpointed.checkpoints.last().unwrap().global_step);
    assert!(
        cancelled.checkpoints.len() <= 2,
        "keep_checkpoints defaults to 2"
    );

    client
        .resume_job(ResumeJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    let resumed = cluster
        .wait_finished(&job.id, Duration::from_secs(300))
        .await?;
    assert_eq!(resumed.phase(), JobPhase::Succeeded, "{}", resumed.message);
    let recovery = resumed.recoveries.last().expect("the resume is recorded");
    assert!(
        recovery.state_source.starts_with("checkpoint"),
        "{recovery:?}"
    );
    assert!(
        recovery.resumed_from_step >= latest.global_step,
        "{recovery:?} vs {latest:?}"
    );
    assert_eq!(resumed.epochs.len(), 4, "the metrics history is complete");

    // Fine-tuning: a new job starts from the last checkpoint's weights.
    let tuned = cluster
        .run_job(JobSpec {
            world_size: 2,
            epochs: 1,
            init_from: resumed.checkpoints.last().expect("checkpoints").url.clone(),
            ..spec(&dataset_url)
        })
        .await?;
    let first_epoch_loss = tuned.epochs[0].test_loss;
    assert!(
        first_epoch_loss <= resumed.epochs[0].test_loss,
        "fine-tuned from trained weights, its first epoch ({first_epoch_loss}) beats a fresh first epoch ({})",
        resumed.epochs[0].test_loss
    );
    cluster.shutdown().await
}
