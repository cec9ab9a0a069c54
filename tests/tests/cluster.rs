//! End-to-end: an in-process cluster trains on a generated dataset; bad specs are refused at submit.

use std::time::Duration;

use plankton_proto::v1::{JobPhase, JobSpec, job_event};
use plankton_tests::{TestCluster, synth_dataset};

fn spec(dataset_url: &str) -> JobSpec {
    JobSpec {
        dataset_url: dataset_url.into(),
        world_size: 2,
        // The notebook's small `lenet` stays near chance in two epochs of 2,400 objects; `wide_lenet` learns.
        model: "wide_lenet".into(),
        epochs: 2,
        batch_size: 16,
        learning_rate: 1e-3,
        class_weighting: plankton_proto::v1::ClassWeighting::Sqrt as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_train_two_epochs_and_report_metrics() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-train";
    synth_dataset(dataset_url, 2400, 7, false).await?;
    let cluster = TestCluster::start(2).await?;

    let job = cluster.submit(spec(dataset_url)).await?;
    assert_eq!(
        job.class_names.len(),
        40,
        "every class of the generated dataset is encoded"
    );
    let mut client = cluster.client().await?;
    let mut events = client
        .watch_job(plankton_proto::v1::WatchJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    let mut saw_progress = false;
    let mut epoch_events = 0;
    let watched = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(event) = events.message().await? {
            match event.event {
                Some(job_event::Event::Progress(_)) => saw_progress = true,
                Some(job_event::Event::EpochMetrics(_)) => epoch_events += 1,
                Some(job_event::Event::Finished(job)) => return Ok::<_, anyhow::Error>(Some(job)),
                _ => {}
            }
        }
        Ok(None)
    })
    .await??;
    let finished = watched.expect("the watch stream ends with the finished job");
    assert_eq!(
        finished.phase(),
        JobPhase::Succeeded,
        "{}",
        finished.message
    );
    assert!(saw_progress, "progress events streamed");
    assert_eq!(epoch_events, 2);
    assert_eq!(finished.epochs.len(), 2);
    let last = finished.epochs.last().unwrap();
    let confusion_total: u64 = last.confusion.iter().sum();
    assert_eq!(
        confusion_total, finished.test_objects,
        "both ranks' confusion matrices were summed"
    );
    assert_eq!(last.per_class.len(), 40);
    // Chance macro-F1 over 40 imbalanced classes is ~0.01 (predicting detritus everywhere).
    assert!(
        last.macro_f1 > 0.05,
        "macro-F1 {} not above chance",
        last.macro_f1
    );
    assert!(last.accuracy > 0.3, "accuracy {}", last.accuracy);
    assert!(
        finished.model_url.ends_with("model.safetensors"),
        "{}",
        finished.model_url
    );

    // The model and its card are in the object store.
    let output =
        plankton_dataset::open_location(finished.model_url.trim_end_matches("/model.safetensors"))?;
    let weights = output.get_bytes("model.safetensors").await?;
    assert!(weights.len() > 10_000);
    let card: serde_json::Value =
        serde_json::from_slice(&output.get_bytes("model-card.json").await?)?;
    assert_eq!(card["classes"].as_array().map(Vec::len), Some(40));
    assert_eq!(card["training"]["precision"], "fp32", "{card}");
    assert_eq!(card["training"]["gradient_compression"], "none", "{card}");
    assert_eq!(card["training"]["world_size"], 2, "{card}");

    cluster.shutdown().await
}

/// The logit-adjusted loss trains through the ring: the workers get the train class counts (the prior), the
/// job stores tau's default, and the epoch losses are finite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logit_adjusted_job_trains_with_the_train_split_prior() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-logit-adjusted";
    synth_dataset(dataset_url, 600, 11, false).await?;
    let cluster = TestCluster::start(2).await?;
    let finished = cluster
        .run_job(JobSpec {
            model: "lenet".into(),
            epochs: 1,
            loss: plankton_proto::v1::LossFunction::LogitAdjusted as i32,
            class_weighting: plankton_proto::v1::ClassWeighting::None as i32,
            ..spec(dataset_url)
        })
        .await?;
    let spec = finished.spec.clone().expect("spec");
    assert_eq!(spec.logit_tau, 1.0, "tau's default is stored");
    let last = finished.epochs.last().expect("one epoch");
    assert!(
        last.train_loss.is_finite() && last.train_loss > 0.0,
        "{}",
        last.train_loss
    );
    assert!(last.test_loss.is_finite());
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_specs_are_refused_at_submit_with_reasons() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-bad-specs";
    synth_dataset(dataset_url, 200, 3, false).await?;
    let one_class_url = "memory://tests/cluster-one-class";
    keep_one_class(one_class_url).await?;
    let cluster = TestCluster::start(0).await?;
    let outside =
        std::path::PathBuf::from(format!("/var/tmp/plankton-outside-{}", std::process::id()));
    let outside_dataset = outside.with_extension("dataset");

    let cases: Vec<(JobSpec, &str)> = vec![
        (
            JobSpec {
                world_size: 0,
                ..spec(dataset_url)
            },
            "world_size",
        ),
        (
            JobSpec {
                model: "alexnet-9000".into(),
                ..spec(dataset_url)
            },
            "unknown model",
        ),
        (
            JobSpec {
                loss: plankton_proto::v1::LossFunction::LogitAdjusted as i32,
                logit_tau: -0.5,
                ..spec(dataset_url)
            },
            "spec.logit_tau: -0.5 is not a finite positive number",
        ),
        (
            JobSpec {
                dataset_url: "memory://tests/no-such-dataset".into(),
                ..spec(dataset_url)
            },
            "meta.csv",
        ),
        (
            JobSpec {
                dataset_url: format!("file://{}", outside_dataset.display()),
                ..spec(dataset_url)
            },
            "is outside the allowed dataset locations",
        ),
        (
            JobSpec {
                output_url: outside.display().to_string(),
                ..spec(dataset_url)
            },
            "spec.output_url",
        ),
        (
            JobSpec {
                dataset_url: format!("{dataset_url}/../../../nonexistent"),
                ..spec(dataset_url)
            },
            "spec.dataset_url",
        ),
        (
            JobSpec {
                output_url: format!("{dataset_url}/models/%2e%2e/%2e%2e/escape"),
                ..spec(dataset_url)
            },
            "spec.output_url",
        ),
        (
            JobSpec {
                world_size: 4_000_000_000,
                ..spec(dataset_url)
            },
            "spec.world_size: 4000000000",
        ),
        (
            JobSpec {
                dataset_url: one_class_url.into(),
                ..spec(dataset_url)
            },
            "only 1 class",
        ),
        (
            JobSpec {
                batch_size: 5000,
                ..spec(dataset_url)
            },
            "spec.batch_size: 5000 is larger",
        ),
    ];
    for (bad_spec, expected) in cases {
        let status = cluster.submit(bad_spec.clone()).await.expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad_spec:?}: {status}"
        );
        assert!(
            status.message().contains(expected),
            "expected {expected:?} in {:?}",
            status.message()
        );
    }
    assert!(
        !outside_dataset.exists() && !outside.exists(),
        "a refused job created nothing on disk"
    );
    cluster.shutdown().await
}

/// A dataset of one class: a synthetic one whose meta.csv keeps only the rows of its first labelled class.
async fn keep_one_class(url: &str) -> anyhow::Result<()> {
    synth_dataset(url, 200, 5, false).await?;
    let location = plankton_dataset::open_location(url)?;
    let meta = String::from_utf8(location.get_bytes("meta.csv").await?.to_vec())?;
    let mut lines = meta.lines();
    let header = lines.next().unwrap_or_default();
    let rows: Vec<&str> = lines.collect();
    let label_of = |row: &str| row.rsplit(',').next().unwrap_or_default().to_string();
    let first_label = rows
        .iter()
        .map(|row| label_of(row))
        .find(|label| !label.is_empty())
        .unwrap_or_default();
    let kept: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|row| label_of(row) == first_label)
        .collect();
    location
        .put_bytes(
            "meta.csv",
            format!("{header}\n{}\n", kept.join("\n")).into(),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_without_enough_workers_fails_after_the_registration_timeout() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-no-workers";
    synth_dataset(dataset_url, 200, 5, false).await?;
    let cluster = TestCluster::start(1).await?;
    let job = cluster
        .submit(JobSpec {
            world_size: 3,
            ..spec(dataset_url)
        })
        .await?;
    let finished = cluster
        .wait_finished(&job.id, Duration::from_secs(60))
        .await?;
    assert_eq!(finished.phase(), JobPhase::Failed);
    assert!(
        finished.message.contains("waiting for 3 free workers"),
        "{}",
        finished.message
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_jobs_survive_a_coordinator_restart() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-restart";
    synth_dataset(dataset_url, 300, 9, false).await?;
    let state = tempfile::tempdir()?;
    let cluster = TestCluster::start_with_state(1, Some(state.path().to_path_buf())).await?;
    let finished = cluster
        .run_job(JobSpec {
            world_size: 1,
            epochs: 1,
            ..spec(dataset_url)
        })
        .await?;
    let job = &finished;
    cluster.shutdown().await?;

    let restarted = TestCluster::start_with_state(0, Some(state.path().to_path_buf())).await?;
    let mut client = restarted.client().await?;
    let reread = client
        .get_job(plankton_proto::v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(reread.phase(), JobPhase::Succeeded);
    assert_eq!(
        reread.epochs, finished.epochs,
        "metrics are read back unchanged"
    );
    assert_eq!(reread.model_url, finished.model_url);
    let listed = client
        .list_jobs(plankton_proto::v1::ListJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    assert!(listed.iter().any(|listed_job| listed_job.id == job.id));
    // Watching a job finished before the restart ends at once with the final job.
    let mut events = client
        .watch_job(plankton_proto::v1::WatchJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    let last = events.message().await?.expect("one event");
    assert!(matches!(last.event, Some(job_event::Event::Finished(_))));
    restarted.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranks_train_on_the_readable_rest_and_report_unreadable_images() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-unreadable";
    synth_dataset(dataset_url, 300, 29, false).await?;
    let location = plankton_dataset::open_location(dataset_url)?;
    let meta = plankton_dataset::read_meta(&location).await?;
    // Corrupt three images, empty one, and delete one.
    let victims: Vec<i64> = meta
        .records
        .iter()
        .step_by(50)
        .take(5)
        .map(|record| record.objid)
        .collect();
    for (index, objid) in victims.iter().enumerate() {
        let path = plankton_dataset::image_path(*objid);
        match index {
            0..=2 => {
                location
                    .put_bytes(
                        &path,
                        bytes::Bytes::from_static(b"\xff\xd8 not really a jpeg"),
                    )
                    .await?
            }
            3 => location.put_bytes(&path, bytes::Bytes::new()).await?,
            _ => location.store.delete(&location.child(&path)).await?,
        }
    }
    let cluster = TestCluster::start(2).await?;
    let finished = cluster
        .run_job(JobSpec {
            epochs: 1,
            ..spec(dataset_url)
        })
        .await?;
    assert_eq!(
        finished.skipped_objects,
        victims.len() as u64,
        "every unreadable image is counted once"
    );
    let loaded: u64 = finished
        .workers
        .iter()
        .map(|worker| worker.loaded_objects)
        .sum();
    assert_eq!(
        loaded + finished.skipped_objects,
        finished.train_objects + finished.test_objects,
        "the training ranks report every readable object as loaded"
    );
    let evaluated: u64 = finished.epochs[0].confusion.iter().sum();
    assert!(
        evaluated <= finished.test_objects
            && evaluated + victims.len() as u64 >= finished.test_objects,
        "test images evaluated {evaluated} of {}: only the unreadable ones are left out",
        finished.test_objects
    );
    cluster.shutdown().await
}

/// The lighter-communication and larger-than-memory options together: bf16 gradients on the ring wire, bf16
/// forward/backward, and shards read from record files under a 1 MiB page-cache cap. The job
/// succeeds with identical weights on both ranks (the coordinator checks their digests), the record files are
/// in each worker's cache, and the progress reports split the step time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bf16_gradients_and_precision_over_record_file_shards_train_to_identical_weights()
-> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-bf16-records";
    synth_dataset(dataset_url, 400, 13, false).await?;
    let cache_dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let cache_paths: Vec<_> = cache_dirs
        .iter()
        .map(|dir| dir.path().to_path_buf())
        .collect();
    let cluster = TestCluster::start_configured(
        2,
        None,
        |_| {},
        |index, config| {
            config.cache_dir = Some(cache_paths[index].clone());
            config.max_resident_bytes = Some(1 << 20);
        },
    )
    .await?;
    let finished = cluster
        .run_job(JobSpec {
            epochs: 1,
            gradient_compression: plankton_proto::v1::GradientCompression::Bf16 as i32,
            precision: plankton_proto::v1::Precision::Bf16 as i32,
            ..spec(dataset_url)
        })
        .await?;
    assert_eq!(
        finished.phase(),
        JobPhase::Succeeded,
        "{}",
        finished.message
    );
    assert!(!finished.weights_digest.is_empty());
    assert!(finished.epochs[0].macro_f1.is_finite());
    // The model card says how the weights were trained.
    let output =
        plankton_dataset::open_location(finished.model_url.trim_end_matches("/model.safetensors"))?;
    let card: serde_json::Value =
        serde_json::from_slice(&output.get_bytes("model-card.json").await?)?;
    assert_eq!(card["training"]["precision"], "bf16", "{card}");
    assert_eq!(card["training"]["gradient_compression"], "bf16", "{card}");
    for (index, path) in cache_paths.iter().enumerate() {
        let record_files = std::fs::read_dir(path)?
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "records"))
            .count();
        assert_eq!(
            record_files, 2,
            "worker {index}: a train and a test record file"
        );
    }
    for worker in &finished.workers {
        assert!(
            worker.compute_seconds_per_step > 0.0
                && worker.communication_seconds_per_step > 0.0
                && worker.hidden_communication_seconds_per_step > 0.0,
            "rank {}: {worker:?}",
            worker.rank
        );
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_workers_train_to_the_weights_of_whole_loads() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/cluster-streaming";
    synth_dataset(dataset_url, 400, 17, false).await?;
    let job = JobSpec {
        epochs: 1,
        ..spec(dataset_url)
    };
    let cache_dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut digests = Vec::new();
    // Whole loads in memory; streamed into memory; streamed into spill files under a page-cache cap.
    for (stream_shards, spilled) in [(false, false), (true, false), (true, true)] {
        let cluster = TestCluster::start_with(2, None, |index, config| {
            config.stream_shards = stream_shards;
            if spilled {
                config.cache_dir = Some(cache_dirs[index].path().to_path_buf());
                config.max_resident_bytes = Some(1 << 20);
            }
        })
        .await?;
        let finished = cluster.run_job(job.clone()).await?;
        assert_eq!(
            finished.phase(),
            JobPhase::Succeeded,
            "stream_shards {stream_shards}, spilled {spilled}: {}",
            finished.message
        );
        assert!(!finished.weights_digest.is_empty());
        digests.push(finished.weights_digest.clone());
        cluster.shutdown().await?;
    }
    assert_eq!(
        digests[0], digests[1],
        "streamed shards train to other weights than whole loads"
    );
    assert_eq!(
        digests[0], digests[2],
        "spilled streamed shards train to other weights than whole loads"
    );
    Ok(())
}
