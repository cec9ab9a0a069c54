//! The inference server end to end: exact predictions, bad input, batching, alias switch under load, health.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{
    CLASS_NAMES, MODEL_NAME, Sandbox, flowcam_jpeg, publish_model, train_weights, unique_store,
    with_frame_size,
};
use plankton_preprocess::{PreprocessConfig, ResizeMode, preprocess_image};
use plankton_proto::v1::{GetModelInfoRequest, ImageInput, PredictRequest};
use plankton_serve::BatchingConfig;
use plankton_trainer::{Architecture, InferenceModel};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn image(data: Vec<u8>, id: &str) -> ImageInput {
    ImageInput {
        data,
        id: id.to_string(),
        ..Default::default()
    }
}

fn batching(max_batch_size: usize, max_queue_delay: Duration) -> BatchingConfig {
    BatchingConfig {
        max_batch_size,
        max_queue_delay,
        ..BatchingConfig::default()
    }
}

/// Sandbox serving `plankton@production` -> version 1 (resize mode `resize_mode`), ready.
async fn sandbox_with_one_version(
    resize_mode: &str,
    batching: BatchingConfig,
) -> anyhow::Result<(Sandbox, Vec<u8>)> {
    let weights = train_weights(11)?;
    let entry = publish_model(
        &format!("{}/models/plankton/1", unique_store("serve")),
        1,
        resize_mode,
        &weights,
    )
    .await?;
    let sandbox = Sandbox::start("plankton@production", batching).await?;
    sandbox.registry.register(entry);
    sandbox.registry.promote(MODEL_NAME, 1, "production")?;
    sandbox.wait_until_ready().await?;
    Ok((sandbox, weights))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_probabilities_equal_the_model_computed_directly() -> anyhow::Result<()> {
    let (sandbox, weights) =
        sandbox_with_one_version("pad_to_square", BatchingConfig::default()).await?;
    let jpegs: Vec<Vec<u8>> = (0..6)
        .map(|index| flowcam_jpeg(index * 5, 100 + index as u64))
        .collect();
    let mut client = sandbox.client().await?;
    let response = client
        .predict(PredictRequest {
            model: String::new(),
            images: jpegs
                .iter()
                .enumerate()
                .map(|(index, jpeg)| image(jpeg.clone(), &format!("obj-{index}")))
                .collect(),
            top_k: CLASS_NAMES.len() as u32,
        })
        .await?
        .into_inner();
    assert_eq!(
        (response.model_name.as_str(), response.model_version),
        (MODEL_NAME, 1)
    );

    let model = InferenceModel::from_safetensors(
        Architecture::ResNet,
        CLASS_NAMES.len(),
        &weights,
        tch::Device::Cpu,
    )?;
    let pad_config = PreprocessConfig {
        resize_mode: ResizeMode::PadToSquare,
        ..PreprocessConfig::default()
    };
    let stretch_config = PreprocessConfig {
        resize_mode: ResizeMode::Stretch,
        ..PreprocessConfig::default()
    };
    let mut padded = Vec::new();
    let mut stretched = Vec::new();
    for jpeg in &jpegs {
        padded.extend(preprocess_image(jpeg, &pad_config)?);
        stretched.extend(preprocess_image(jpeg, &stretch_config)?);
    }
    let expected = model.predict_probabilities(&padded, jpegs.len())?;
    let with_wrong_preprocessing = model.predict_probabilities(&stretched, jpegs.len())?;
    assert_ne!(
        expected, with_wrong_preprocessing,
        "the resize mode must matter for this check to mean anything"
    );

    assert_eq!(response.predictions.len(), jpegs.len());
    for (index, prediction) in response.predictions.iter().enumerate() {
        assert_eq!(prediction.id, format!("obj-{index}"));
        assert!(prediction.error.is_empty(), "{}", prediction.error);
        assert_eq!(prediction.top.len(), CLASS_NAMES.len());
        let expected_row = &expected[index * CLASS_NAMES.len()..(index + 1) * CLASS_NAMES.len()];
        for pair in prediction.top.windows(2) {
            assert!(
                pair[0].probability >= pair[1].probability,
                "top classes are sorted"
            );
        }
        for score in &prediction.top {
            let class_index = score.class_index as usize;
            assert_eq!(score.class_name, CLASS_NAMES[class_index]);
            assert!(
                (score.probability - expected_row[class_index]).abs() < 1e-5,
                "image {index} class {class_index}: served {} direct {}",
                score.probability,
                expected_row[class_index]
            );
        }
    }

    // top_k 0 means 5, capped at the class count; explicit 1 gives the argmax only.
    let top_one = client
        .predict(PredictRequest {
            model: "plankton:1".into(),
            images: vec![image(jpegs[0].clone(), "a")],
            top_k: 1,
        })
        .await?
        .into_inner();
    assert_eq!(top_one.predictions[0].top.len(), 1);
    assert_eq!(
        top_one.predictions[0].top[0].class_index,
        response.predictions[0].top[0].class_index
    );

    let info = client
        .get_model_info(GetModelInfoRequest {
            model: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (info.name.as_str(), info.version, info.architecture.as_str()),
        (MODEL_NAME, 1, "resnet")
    );
    assert_eq!(info.resize_mode, "pad_to_square");
    assert_eq!(info.class_names, CLASS_NAMES);
    assert!(info.is_default);
    assert_eq!(info.aliases, vec!["production".to_string()]);
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_images_get_their_own_error_and_bad_requests_an_error_status() -> anyhow::Result<()> {
    let (sandbox, _) = sandbox_with_one_version("stretch", BatchingConfig::default()).await?;
    let mut client = sandbox.client().await?;
    let good = flowcam_jpeg(2, 9);
    let cases: Vec<(ImageInput, Option<&str>)> = vec![
        (image(good.clone(), "good-1"), None),
        (
            image(b"this is not an image at all".to_vec(), "text"),
            Some("not a JPEG"),
        ),
        (
            image(good[..good.len() / 2].to_vec(), "truncated"),
            Some("truncated JPEG"),
        ),
        (image(Vec::new(), "empty"), Some("empty")),
        (image(with_frame_size(&good, 0, 40), "zero-width"), Some("")),
        (
            image(with_frame_size(&good, 20000, 20000), "bomb"),
            Some("too large: 20000x20000"),
        ),
        (image(good.clone(), "good-2"), None),
    ];
    let request = PredictRequest {
        model: String::new(),
        images: cases.iter().map(|(input, _)| input.clone()).collect(),
        top_k: 2,
    };
    let response = client.predict(request).await?.into_inner();
    assert_eq!(response.predictions.len(), cases.len());
    for (prediction, (input, expected_error)) in response.predictions.iter().zip(&cases) {
        assert_eq!(prediction.id, input.id);
        match expected_error {
            None => {
                assert!(
                    prediction.error.is_empty(),
                    "{}: {}",
                    input.id,
                    prediction.error
                );
                assert_eq!(prediction.top.len(), 2);
            }
            Some(expected) => {
                assert!(!prediction.error.is_empty(), "{} must be refused", input.id);
                assert!(
                    prediction.error.contains(expected),
                    "{}: {}",
                    input.id,
                    prediction.error
                );
                assert!(prediction.top.is_empty());
            }
        }
    }
    for (first, second) in response.predictions[0]
        .top
        .iter()
        .zip(&response.predictions[6].top)
    {
        assert_eq!(
            first.class_index, second.class_index,
            "same image, same classes"
        );
        assert!(
            (first.probability - second.probability).abs() < 1e-5,
            "same image, same probabilities"
        );
    }

    let all_bad = client
        .predict(PredictRequest {
            images: vec![image(b"GIF89a".to_vec(), "gif")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(all_bad.code(), tonic::Code::InvalidArgument);
    assert!(
        all_bad.message().contains("\"gif\"") && all_bad.message().contains("not a JPEG"),
        "{}",
        all_bad.message()
    );

    let empty = client.predict(PredictRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("no images"), "{}", empty.message());

    for (model, code, needle) in [
        ("kelp", tonic::Code::NotFound, "kelp"),
        ("plankton:7", tonic::Code::NotFound, "plankton:7"),
        (
            "plankton@staging",
            tonic::Code::NotFound,
            "plankton@staging",
        ),
        (
            "plankton:seven",
            tonic::Code::InvalidArgument,
            "not a positive integer",
        ),
    ] {
        let status = client
            .predict(PredictRequest {
                model: model.into(),
                images: vec![image(good.clone(), "x")],
                top_k: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{model}: {status}");
        assert!(
            status.message().contains(needle),
            "{model}: {}",
            status.message()
        );
    }

    // A stream: per-image errors do not end it; an unknown model does, with NOT_FOUND.
    let requests = vec![
        PredictRequest {
            images: vec![image(good.clone(), "s1")],
            ..Default::default()
        },
        PredictRequest {
            images: vec![image(Vec::new(), "s2")],
            ..Default::default()
        },
        PredictRequest {
            model: "kelp".into(),
            images: vec![image(good.clone(), "s3")],
            ..Default::default()
        },
        PredictRequest {
            images: vec![image(good.clone(), "s4")],
            ..Default::default()
        },
    ];
    let mut responses = client
        .predict_stream(futures::stream::iter(requests))
        .await?
        .into_inner();
    let first = responses.message().await?.expect("first answer");
    assert!(first.predictions[0].error.is_empty());
    let second = responses.message().await?.expect("second answer");
    assert!(
        second.predictions[0].error.contains("empty"),
        "{}",
        second.predictions[0].error
    );
    let third = responses.message().await.unwrap_err();
    assert_eq!(third.code(), tonic::Code::NotFound);

    let metrics = sandbox.metrics_text().await?;
    assert!(
        metrics.contains("plankton_serve_errors_total{method=\"Predict\",code=\"NotFound\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plankton_serve_image_errors_total"),
        "{metrics}"
    );
    sandbox.shutdown().await
}

/// Sum and count of the batch-size histogram on the metrics page.
fn batch_size_sum_and_count(metrics: &str) -> (f64, u64) {
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
    };
    (
        value("plankton_serve_batch_size_sum "),
        value("plankton_serve_batch_size_count ") as u64,
    )
}

async fn forward_passes_for_concurrent_requests(
    batching: BatchingConfig,
    requests: usize,
) -> anyhow::Result<(f64, u64)> {
    let (sandbox, _) = sandbox_with_one_version("stretch", batching).await?;
    let channel = sandbox.channel().await?;
    let jpeg = flowcam_jpeg(1, 5);
    let calls = (0..requests).map(|index| {
        let mut client =
            plankton_proto::v1::inference_client::InferenceClient::new(channel.clone());
        let request = PredictRequest {
            images: vec![image(jpeg.clone(), &index.to_string())],
            ..Default::default()
        };
        async move { client.predict(request).await }
    });
    for outcome in futures::future::join_all(calls).await {
        outcome?;
    }
    let counts = batch_size_sum_and_count(&sandbox.metrics_text().await?);
    sandbox.shutdown().await?;
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_forward_passes_unless_batching_is_off() -> anyhow::Result<()> {
    let (images, forward_passes) =
        forward_passes_for_concurrent_requests(batching(64, Duration::from_millis(200)), 12)
            .await?;
    assert_eq!(images, 12.0);
    assert!(
        forward_passes <= 4,
        "12 concurrent requests within 200 ms took {forward_passes} forward passes"
    );

    let (images, forward_passes) =
        forward_passes_for_concurrent_requests(batching(1, Duration::from_millis(200)), 12).await?;
    assert_eq!(
        (images, forward_passes),
        (12.0, 12),
        "batching off: one forward pass per request"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_request_does_not_wait_for_the_queue_delay() -> anyhow::Result<()> {
    let (sandbox, _) =
        sandbox_with_one_version("stretch", batching(64, Duration::from_secs(2))).await?;
    let mut client = sandbox.client().await?;
    let request = PredictRequest {
        images: vec![image(flowcam_jpeg(3, 8), "alone")],
        ..Default::default()
    };
    client.predict(request.clone()).await?;
    let started = std::time::Instant::now();
    client.predict(request).await?;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "nobody else was coming, yet the request took {elapsed:?}"
    );
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alias_moves_to_version_two_under_load_without_failed_requests() -> anyhow::Result<()> {
    let (sandbox, _) = sandbox_with_one_version("stretch", BatchingConfig::default()).await?;
    let store = unique_store("serve-v2");
    let version_two = publish_model(
        &format!("{store}/models/plankton/2"),
        2,
        "stretch",
        &train_weights(22)?,
    )
    .await?;
    sandbox.registry.register(version_two);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let channel = sandbox.channel().await?;
    let mut clients = Vec::new();
    for client_index in 0..4 {
        let mut client =
            plankton_proto::v1::inference_client::InferenceClient::new(channel.clone());
        let stop = stop.clone();
        let answered = answered.clone();
        let jpeg = flowcam_jpeg(client_index * 3, client_index as u64);
        clients.push(tokio::spawn(async move {
            let mut versions_seen = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = PredictRequest {
                    images: vec![image(jpeg.clone(), "load")],
                    ..Default::default()
                };
                match client.predict(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        if versions_seen.last() != Some(&response.model_version) {
                            versions_seen.push(response.model_version);
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => failures.push(status.to_string()),
                }
            }
            (versions_seen, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sandbox.registry.promote(MODEL_NAME, 2, "production")?;
    let mut info_client = sandbox.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while info_client
        .get_model_info(GetModelInfoRequest::default())
        .await?
        .into_inner()
        .version
        != 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 2 was never swapped in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered_at_switch = answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (versions_seen, failures) = client.await?;
        assert!(
            failures.is_empty(),
            "failed requests during the switch: {failures:?}"
        );
        assert_eq!(
            versions_seen,
            vec![1, 2],
            "each client answers from version 1, then only from version 2"
        );
    }
    let answered_total = answered.load(Ordering::Relaxed);
    assert!(
        answered_at_switch > 8 && answered_total > answered_at_switch + 8,
        "requests kept flowing: {answered_at_switch} then {answered_total}"
    );
    let metrics = sandbox.metrics_text().await?;
    assert!(
        metrics.contains("plankton_serve_loaded_model_version{model=\"plankton\"} 2"),
        "{metrics}"
    );
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_not_serving_until_the_default_model_is_loaded() -> anyhow::Result<()> {
    let sandbox = Sandbox::start("plankton@production", BatchingConfig::default()).await?;
    let mut health = HealthClient::new(sandbox.channel().await?);
    for service in ["", plankton_serve::INFERENCE_SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::NotServing as i32,
            "service {service:?} before any model is registered"
        );
    }
    let mut client = sandbox.client().await?;
    let not_ready = client
        .predict(PredictRequest {
            images: vec![image(flowcam_jpeg(0, 1), "early")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(not_ready.code(), tonic::Code::Unavailable, "{not_ready}");

    let entry = publish_model(
        &format!("{}/m", unique_store("serve-health")),
        1,
        "stretch",
        &train_weights(3)?,
    )
    .await?;
    sandbox.registry.register(entry);
    sandbox.registry.promote(MODEL_NAME, 1, "production")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never turned SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = client
        .predict(PredictRequest {
            images: vec![image(flowcam_jpeg(0, 1), "late")],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(served.model_version, 1);
    sandbox.shutdown().await
}
