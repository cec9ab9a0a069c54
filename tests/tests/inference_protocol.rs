//! The inference server as existing clients see it, and under overload: tritonclient (Open Inference Protocol v2)
//! over TLS with a bearer token, grpcurl 1.8 and a v1-only client through reflection, a flood beyond the queue,
//! expired deadlines, and a promoted version whose weights are unreadable. One tiny trained model (one ResNet
//! step, the serve crate's test harness) behind an in-memory registry; the server is secure like a deployment.

#[path = "../../serve/tests/common/mod.rs"]
mod serve_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use plankton_preprocess::{PreprocessConfig, preprocess_image};
use plankton_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use plankton_proto::inference::model_infer_request::InferInputTensor;
use plankton_proto::inference::{InferTensorContents, ModelInferRequest, ModelReadyRequest};
use plankton_proto::v1::inference_client::InferenceClient;
use plankton_proto::v1::{ImageInput, PredictRequest};
use plankton_security::{AuthChannel, Role};
use plankton_serve::{
    AdmissionConfig, BatchingConfig, InMemoryRegistry, LoadBackoff, ServeConfig,
    serve_with_metrics_listener,
};
use plankton_tests::access::test_server_security;
use plankton_tests::{Access, project_tool, test_credentials, workspace_root};
use serve_common::{
    CLASS_NAMES, MODEL_NAME, flowcam_jpeg, publish_model, train_weights, unique_store,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const SERVED_MODEL: &str = "plankton@production";

/// A registry double and a secure inference server (TLS, tokens) serving `plankton@production`.
struct SecureServer {
    registry: InMemoryRegistry,
    address: SocketAddr,
    metrics_address: SocketAddr,
    shutdown: CancellationToken,
    registry_task: JoinHandle<()>,
    serve_task: JoinHandle<anyhow::Result<()>>,
}

impl SecureServer {
    /// Publishes version 1 (one training step), promotes it to production and waits until it is served.
    async fn start(adjust: impl FnOnce(&mut ServeConfig)) -> anyhow::Result<SecureServer> {
        plankton_common::init_tracing_with_default("warn");
        let shutdown = CancellationToken::new();
        let registry = InMemoryRegistry::new();
        let registry_listener = TcpListener::bind("127.0.0.1:0").await?;
        let registry_address = registry_listener.local_addr()?;
        let registry_task = tokio::spawn({
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            async move {
                if let Err(error) = registry.serve(registry_listener, shutdown).await {
                    tracing::error!(%error, "registry double failed");
                }
            }
        });
        let weights = tokio::task::spawn_blocking(|| train_weights(17)).await??;
        let entry = publish_model(
            &format!("{}/models/plankton/1", unique_store("oip")),
            1,
            "stretch",
            &weights,
        )
        .await?;
        registry.register(entry);
        registry.promote(MODEL_NAME, 1, "production")?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await?;
        let metrics_address = metrics_listener.local_addr()?;
        let mut config = ServeConfig {
            listen_address: address,
            security: test_server_security(),
            coordinator_url: format!("http://{registry_address}"),
            model: SERVED_MODEL.to_string(),
            refresh_interval: Duration::from_millis(200),
            torch_threads: 1,
            ..ServeConfig::default()
        };
        adjust(&mut config);
        let serve_task = tokio::spawn(serve_with_metrics_listener(
            config,
            listener,
            Some(metrics_listener),
            shutdown.clone(),
        ));
        let server = SecureServer {
            registry,
            address,
            metrics_address,
            shutdown,
            registry_task,
            serve_task,
        };
        server.wait_until_ready().await?;
        Ok(server)
    }

    fn access(&self) -> Access {
        Access::as_role(&format!("https://{}", self.address), Role::Client)
    }

    async fn predict_client(&self) -> anyhow::Result<InferenceClient<AuthChannel>> {
        Ok(InferenceClient::new(self.access().channel().await?))
    }

    async fn open_inference_client(
        &self,
    ) -> anyhow::Result<GrpcInferenceServiceClient<AuthChannel>> {
        Ok(GrpcInferenceServiceClient::new(
            self.access().channel().await?,
        ))
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = self.open_inference_client().await
                && let Ok(response) = client
                    .model_ready(ModelReadyRequest {
                        name: SERVED_MODEL.to_string(),
                        version: String::new(),
                    })
                    .await
                && response.into_inner().ready
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{SERVED_MODEL} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` page.
    async fn metrics_text(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_address).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    /// Calls dropped before their answer (every reason and stage).
    async fn dropped_calls(&self) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with("plankton_serve_requests_dropped_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits (at most 5 s) until `dropped_calls` reaches `expected`; what it reads last.
    async fn wait_for_dropped_calls(&self, expected: f64) -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dropped = self.dropped_calls().await?;
            if dropped >= expected || Instant::now() > deadline {
                return Ok(dropped);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of the series `series` (name and labels as printed), 0 when absent.
    async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|value| value.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.serve_task).await???;
        self.registry_task.await?;
        Ok(())
    }
}

fn jpegs(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|index| flowcam_jpeg(index * 3 % 40, 500 + index as u64))
        .collect()
}

fn predict_request(jpegs: &[Vec<u8>]) -> PredictRequest {
    PredictRequest {
        model: SERVED_MODEL.to_string(),
        images: jpegs
            .iter()
            .enumerate()
            .map(|(index, data)| ImageInput {
                data: data.clone(),
                id: index.to_string(),
                ..Default::default()
            })
            .collect(),
        top_k: CLASS_NAMES.len() as u32,
    }
}

/// Predict's probabilities, one row per image in class order.
async fn predict_rows(server: &SecureServer, jpegs: &[Vec<u8>]) -> anyhow::Result<Vec<Vec<f32>>> {
    let response = server
        .predict_client()
        .await?
        .predict(predict_request(jpegs))
        .await?
        .into_inner();
    Ok(response
        .predictions
        .iter()
        .map(|prediction| {
            assert!(prediction.error.is_empty(), "{}", prediction.error);
            let mut row = vec![f32::NAN; CLASS_NAMES.len()];
            for score in &prediction.top {
                row[score.class_index as usize] = score.probability;
            }
            row
        })
        .collect())
}

fn assert_rows_close(what: &str, served: &serde_json::Value, expected: &[Vec<f32>]) {
    let rows = served
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no rows in {served}"));
    assert_eq!(rows.len(), expected.len(), "{what}");
    for (index, (row, expected_row)) in rows.iter().zip(expected).enumerate() {
        let row = row.as_array().expect("a probability row");
        assert_eq!(row.len(), expected_row.len(), "{what} image {index}");
        for (class, (value, expected_value)) in row.iter().zip(expected_row).enumerate() {
            let value = value.as_f64().expect("a probability");
            assert!(
                (value - f64::from(*expected_value)).abs() < 1e-5,
                "{what} image {index} class {class}: {value} vs Predict's {expected_value}"
            );
        }
    }
}

fn most_probable(rows: &[Vec<f32>]) -> Vec<&'static str> {
    rows.iter()
        .map(|row| {
            let best = (0..row.len()).fold(
                0,
                |best, index| if row[index] > row[best] { index } else { best },
            );
            CLASS_NAMES[best]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tritonclient_gets_predict_s_probabilities_from_jpeg_and_fp32_inputs() -> anyhow::Result<()>
{
    let python = project_tool(".venv-oip", "python");
    let server = SecureServer::start(|_| {}).await?;
    let images = jpegs(5);
    let expected = predict_rows(&server, &images).await?;

    let folder = tempfile::tempdir()?;
    let mut image_paths = Vec::new();
    let mut scaled_bytes = Vec::new();
    for (index, jpeg) in images.iter().enumerate() {
        let path = folder.path().join(format!("{index}.jpg"));
        std::fs::write(&path, jpeg)?;
        image_paths.push(path);
        // The training preprocessing (the model was published with resize mode "stretch"), scaled to [0, 1].
        for pixel in preprocess_image(jpeg, &PreprocessConfig::default())? {
            scaled_bytes.extend_from_slice(&(f32::from(pixel) / 255.0).to_le_bytes());
        }
    }
    let scaled_path = folder.path().join("scaled.f32");
    std::fs::write(&scaled_path, &scaled_bytes)?;

    let credentials = test_credentials();
    let output = tokio::process::Command::new(&python)
        .arg(workspace_root().join("tests/python/oip_client.py"))
        .args(["--url", &format!("127.0.0.1:{}", server.address.port())])
        .arg("--ca")
        .arg(&credentials.ca_cert)
        .arg("--token-file")
        .arg(credentials.token_file(Role::Client))
        .args(["--model", SERVED_MODEL])
        .arg("--scaled")
        .arg(&scaled_path)
        .args(&image_paths)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tritonclient failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|error| {
        anyhow::anyhow!("no JSON from the client ({error}):\n{stdout}\n{stderr}")
    })?;

    assert_eq!(answer["server_live"], true);
    assert_eq!(answer["server_ready"], true);
    assert_eq!(answer["model_ready"], true);
    let metadata = &answer["metadata"];
    assert_eq!(metadata["name"], MODEL_NAME, "{metadata}");
    assert_eq!(metadata["versions"], serde_json::json!(["1"]), "{metadata}");
    assert_eq!(metadata["inputs"][0]["name"], "image", "{metadata}");
    assert_eq!(metadata["inputs"][0]["datatype"], "BYTES", "{metadata}");
    assert_eq!(metadata["inputs"][1]["name"], "input", "{metadata}");
    assert_eq!(
        metadata["inputs"][1]["shape"],
        serde_json::json!(["-1", "3", "64", "64"]),
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][0]["name"], "probabilities",
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][0]["shape"],
        serde_json::json!(["-1", "3"]),
        "{metadata}"
    );
    assert_eq!(metadata["outputs"][1]["name"], "class", "{metadata}");

    let jpeg = &answer["jpeg"];
    assert_eq!(jpeg["id"], "jpeg-request");
    assert_eq!(jpeg["model_name"], MODEL_NAME);
    assert_eq!(jpeg["model_version"], "1");
    assert_rows_close("JPEG input", &jpeg["probabilities"], &expected);
    assert_eq!(jpeg["class"], serde_json::json!(most_probable(&expected)));
    let stream = &answer["stream"];
    assert_eq!(stream["error"], serde_json::Value::Null, "{stream}");
    assert_eq!(stream["id"], "stream-jpeg", "{stream}");
    assert_rows_close("streamed JPEG input", &stream["probabilities"], &expected);
    assert!(
        stream["broken_error"]
            .as_str()
            .is_some_and(|error| error.contains("image 0")),
        "{stream}"
    );
    assert_rows_close("FP32 input", &answer["scaled"]["probabilities"], &expected);
    assert_eq!(
        answer["scaled"]["class"],
        serde_json::json!(most_probable(&expected))
    );

    assert_eq!(
        answer["model_config"], "StatusCode.UNIMPLEMENTED",
        "a Triton-only RPC"
    );
    assert_eq!(answer["without_token"], "StatusCode.UNAUTHENTICATED");
    server.shutdown().await
}

/// `grpcurl FLAGS... ADDRESS VERB...` with grpcurl 1.8.6 (reflection v1alpha only) against the TLS port, with
/// the test CA and the client token.
fn grpcurl(server: &SecureServer, flags: &[&str], verb: &[&str]) -> String {
    let credentials = test_credentials();
    let output = std::process::Command::new(project_tool(".venv-tools", "grpcurl"))
        .arg("-cacert")
        .arg(&credentials.ca_cert)
        .args([
            "-H",
            &format!("authorization: Bearer {}", credentials.token(Role::Client)),
        ])
        .args(flags)
        .arg(format!("127.0.0.1:{}", server.address.port()))
        .args(verb)
        .output()
        .expect("grpcurl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "grpcurl {flags:?} {verb:?} failed: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_and_a_v1_only_client_list_and_describe_the_services_by_reflection()
-> anyhow::Result<()> {
    let server = SecureServer::start(|_| {}).await?;
    let listed = grpcurl(&server, &[], &["list"]);
    for service in [
        "inference.GRPCInferenceService",
        "plankton.v1.Inference",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(service), "{service} not listed:\n{listed}");
    }
    let described = grpcurl(
        &server,
        &[],
        &["describe", "inference.GRPCInferenceService"],
    );
    for rpc in ["rpc ModelInfer", "rpc ModelMetadata", "rpc ServerLive"] {
        assert!(described.contains(rpc), "{rpc} not described:\n{described}");
    }
    let message = grpcurl(&server, &[], &["describe", "inference.ModelInferRequest"]);
    assert!(message.contains("raw_input_contents"), "{message}");

    // A call with typed contents in JSON, as a grpcurl user writes it: typed contents come back.
    use base64_free::encode;
    let request = serde_json::json!({
        "model_name": SERVED_MODEL,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "contents": {"bytes_contents": [encode(&jpegs(1)[0])]}}],
        "outputs": [{"name": "class"}]
    })
    .to_string();
    let answer = grpcurl(
        &server,
        &["-d", &request],
        &["inference.GRPCInferenceService/ModelInfer"],
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).expect(&answer);
    assert_eq!(answer["modelVersion"], "1", "{answer}");
    assert_eq!(answer["outputs"][0]["name"], "class", "{answer}");
    assert!(answer.get("rawOutputContents").is_none(), "{answer}");

    // A client that speaks only reflection v1.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(server.access().channel().await?);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("inference.GRPCInferenceService".to_string()),
    ]
    .map(|message_request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message_request),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .message()
        .await?
        .and_then(|response| response.message_response)
    else {
        anyhow::bail!("no service list from reflection v1");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert!(
        names.contains(&"inference.GRPCInferenceService"),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) = responses
        .message()
        .await?
        .and_then(|response| response.message_response)
    else {
        anyhow::bail!("no file descriptor from reflection v1");
    };
    use prost::Message;
    let described = files
        .file_descriptor_proto
        .iter()
        .filter_map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok())
        .any(|file| {
            file.service.iter().any(|service| {
                service.name() == "GRPCInferenceService"
                    && service
                        .method
                        .iter()
                        .any(|method| method.name() == "ModelInfer")
            })
        });
    assert!(
        described,
        "reflection v1 did not describe GRPCInferenceService"
    );
    server.shutdown().await
}

/// Standard base64 (no new dependency for one test string).
mod base64_free {
    pub fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let value = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for position in 0..4 {
                if position <= chunk.len() {
                    text.push(ALPHABET[(value >> (18 - 6 * position)) as usize & 63] as char);
                } else {
                    text.push('=');
                }
            }
        }
        text
    }

    #[test]
    fn encodes_like_rfc_4648() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_beyond_the_queue_is_refused_quickly_and_expired_deadlines_are_never_computed()
-> anyhow::Result<()> {
    const IMAGES_PER_REQUEST: usize = 8;
    const MAX_IMAGES_PER_REQUEST: usize = 64;
    const REQUESTS: usize = 40;
    let server = SecureServer::start(|config| {
        config.admission = AdmissionConfig {
            max_images_per_request: MAX_IMAGES_PER_REQUEST,
            max_queued_images: 2 * IMAGES_PER_REQUEST,
            max_concurrent_requests: 1,
            retry_after: Duration::from_millis(75),
        };
        config.batching = BatchingConfig {
            max_batch_size: MAX_IMAGES_PER_REQUEST,
            ..BatchingConfig::default()
        };
    })
    .await?;
    let channel = server.access().channel().await?;
    let images = jpegs(IMAGES_PER_REQUEST);

    let too_large = InferenceClient::new(channel.clone())
        .predict(predict_request(&jpegs(MAX_IMAGES_PER_REQUEST + 1)))
        .await
        .expect_err("more images than a request may hold");
    assert_eq!(too_large.code(), Code::InvalidArgument, "{too_large}");

    let calls = (0..REQUESTS).map(|_| {
        let mut client = InferenceClient::new(channel.clone());
        let request = predict_request(&images);
        async move {
            let started = Instant::now();
            let outcome = client.predict(request).await;
            (outcome, started.elapsed())
        }
    });
    // The images held by the server, sampled while the flood lasts: never above the queue's bound.
    let flood_done = std::sync::atomic::AtomicBool::new(false);
    let most_queued_sample = std::sync::Mutex::new(0.0f64);
    let flood = async {
        let outcomes = futures::future::join_all(calls).await;
        flood_done.store(true, std::sync::atomic::Ordering::SeqCst);
        outcomes
    };
    let sampler = async {
        while !flood_done.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(queued) = server.metric("plankton_serve_queued_images").await {
                let mut most = most_queued_sample.lock().expect("sampler lock");
                *most = most.max(queued);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (outcomes, ()) = tokio::join!(flood, sampler);
    let most_queued = *most_queued_sample.lock().expect("sampler lock");
    assert!(
        most_queued <= (2 * IMAGES_PER_REQUEST) as f64,
        "{most_queued} images held, the queue holds 16"
    );
    let mut admitted = 0;
    let mut refused_latencies = Vec::new();
    for (outcome, latency) in &outcomes {
        match outcome {
            Ok(response) => {
                admitted += 1;
                let response = response.get_ref();
                assert_eq!(response.predictions.len(), IMAGES_PER_REQUEST);
                assert!(
                    response
                        .predictions
                        .iter()
                        .all(|prediction| prediction.error.is_empty())
                );
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_eq!(
                    status
                        .metadata()
                        .get("grpc-retry-pushback-ms")
                        .map(|value| value.to_str().unwrap()),
                    Some("75"),
                    "{status:?}"
                );
                assert!(status.message().contains("retry in 75ms"), "{status:?}");
                refused_latencies.push(*latency);
            }
            Err(status) => panic!("an admitted request failed: {status:?}"),
        }
    }
    let slowest_refusal = refused_latencies.iter().max().copied().unwrap_or_default();
    println!(
        "flood: {admitted} of {REQUESTS} admitted, {} refused, slowest refusal {slowest_refusal:?}, at most {most_queued} images held",
        refused_latencies.len()
    );
    assert!(admitted >= 1, "nothing was admitted");
    assert!(
        !refused_latencies.is_empty(),
        "{REQUESTS} concurrent requests all fit a queue of 2"
    );
    assert!(
        slowest_refusal < Duration::from_secs(2),
        "a refusal took {slowest_refusal:?}"
    );
    assert_eq!(server.metric("plankton_serve_queued_images").await?, 0.0);
    assert_eq!(
        server.metric("plankton_serve_images_total").await?,
        (admitted * IMAGES_PER_REQUEST) as f64,
        "refused requests were counted as taken (decoded) images"
    );

    // Deadlines too short to answer in (under 1 ms: expired on arrival), on both protocols: counted, nothing
    // decoded or computed. The client may give up first (its own timer): CANCELLED then.
    let forward_passes = server.metric("plankton_serve_forward_passes_total").await?;
    let images_taken = server.metric("plankton_serve_images_total").await?;
    let dropped = server.dropped_calls().await?;
    let expired = Duration::from_micros(900);
    let expected_code = |status: &tonic::Status| {
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
    };
    for _ in 0..3 {
        let mut request = tonic::Request::new(predict_request(&images));
        request.set_timeout(expired);
        let status = InferenceClient::new(channel.clone())
            .predict(request)
            .await
            .expect_err("an expired deadline");
        expected_code(&status);

        let mut request = tonic::Request::new(ModelInferRequest {
            model_name: SERVED_MODEL.to_string(),
            inputs: vec![InferInputTensor {
                name: "image".to_string(),
                datatype: "BYTES".to_string(),
                shape: vec![1],
                contents: Some(InferTensorContents {
                    bytes_contents: vec![images[0].clone()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        request.set_timeout(expired);
        let status = GrpcInferenceServiceClient::new(channel.clone())
            .model_infer(request)
            .await
            .expect_err("an expired deadline");
        expected_code(&status);
    }
    assert_eq!(
        server.wait_for_dropped_calls(dropped + 6.0).await?,
        dropped + 6.0
    );
    assert_eq!(
        server.metric("plankton_serve_forward_passes_total").await?,
        forward_passes
    );
    assert_eq!(
        server.metric("plankton_serve_images_total").await?,
        images_taken
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_deadline_passes_while_it_waits_is_dropped_uncomputed() -> anyhow::Result<()>
{
    const BIG_REQUEST: usize = 64;
    let server = SecureServer::start(|config| {
        config.admission = AdmissionConfig {
            max_images_per_request: BIG_REQUEST,
            max_queued_images: 2 * BIG_REQUEST,
            max_concurrent_requests: 1,
            ..AdmissionConfig::default()
        };
        config.batching = BatchingConfig {
            max_batch_size: BIG_REQUEST,
            ..BatchingConfig::default()
        };
    })
    .await?;
    let channel = server.access().channel().await?;
    let forward_passes = server.metric("plankton_serve_forward_passes_total").await?;

    // A big request holds the only slot (decoding and computing 64 images) ...
    let big = tokio::spawn({
        let mut client = InferenceClient::new(channel.clone());
        let request = predict_request(&jpegs(BIG_REQUEST));
        async move { client.predict(request).await }
    });
    let admitted_by = Instant::now() + Duration::from_secs(10);
    while server.metric("plankton_serve_queued_images").await? < BIG_REQUEST as f64 {
        anyhow::ensure!(
            Instant::now() < admitted_by,
            "the big request was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ... so a small one with a 20 ms deadline waits for it, and its deadline passes first.
    let mut request = tonic::Request::new(predict_request(&jpegs(1)));
    request.set_timeout(Duration::from_millis(20));
    let status = InferenceClient::new(channel.clone())
        .predict(request)
        .await
        .expect_err("the deadline passes while the slot is taken");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let big_response = big.await??.into_inner();
    assert_eq!(big_response.predictions.len(), BIG_REQUEST);
    // Counted as `deadline` when the server's timer ends it, `cancelled` when the client's own timer is first.
    assert_eq!(server.wait_for_dropped_calls(1.0).await?, 1.0);
    assert_eq!(
        server.metric("plankton_serve_forward_passes_total").await?,
        forward_passes + 1.0,
        "only the big request was computed"
    );
    assert_eq!(
        server.metric("plankton_serve_images_total").await?,
        BIG_REQUEST as f64,
        "the dropped request's image was never taken"
    );
    assert_eq!(server.metric("plankton_serve_queued_images").await?, 0.0);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreadable_weights_of_a_promoted_version_keep_the_old_one_serving_and_count_once_per_backoff()
-> anyhow::Result<()> {
    let server = SecureServer::start(|config| {
        config.refresh_interval = Duration::from_millis(50);
        config.load_backoff = LoadBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
    })
    .await?;
    let broken = publish_model(
        &format!("{}/models/plankton/2", unique_store("oip-broken")),
        2,
        "stretch",
        b"these are not safetensors weights",
    )
    .await?;
    server.registry.register(broken);
    server.registry.promote(MODEL_NAME, 2, "production")?;

    let images = jpegs(2);
    let mut client = server.predict_client().await?;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        let response = client.predict(predict_request(&images)).await?.into_inner();
        assert_eq!(response.model_version, 1, "the old version keeps serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failures = server
        .metric(r#"plankton_serve_model_load_failures_total{model="plankton",version="2"}"#)
        .await?;
    // 40 refreshes in 2 s; attempts at about 0, 0.5 and 1.5 s.
    println!("load failures of version 2 in 2 s of 50 ms refreshes: {failures}");
    assert!(
        (2.0..=4.0).contains(&failures),
        "{failures} load failures in 2 s with a 500 ms doubling backoff"
    );
    assert!(
        !server
            .open_inference_client()
            .await?
            .model_ready(ModelReadyRequest {
                name: MODEL_NAME.to_string(),
                version: "2".to_string(),
            })
            .await?
            .into_inner()
            .ready
    );
    // A request naming the broken version gets the load failure at once, without a new attempt.
    let status = client
        .predict(PredictRequest {
            model: format!("{MODEL_NAME}:2"),
            ..predict_request(&images)
        })
        .await
        .expect_err("version 2 cannot load");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("plankton:2"), "{status:?}");
    server.shutdown().await
}
