//! Every role observable: the coordinator's and a worker's `/metrics` parse as OpenMetrics text with the Python
//! reference parser (prometheus_client), and their key series move while a job trains.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

use plankton_proto::v1::JobSpec;
use plankton_tests::{TestCluster, synth_dataset};

fn free_address() -> SocketAddr {
    plankton_tests::free_local_address()
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(address: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("metrics endpoint reachable");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_string()
}

/// Every sample of an OpenMetrics text, as parsed by prometheus_client's parser: "name{label=value,...}" ->
/// value.
fn parse_with_prometheus_client(text: &str) -> HashMap<String, f64> {
    let python = plankton_tests::project_tool(".venv-tools", "python");
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not OpenMetrics text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_and_worker_metrics_parse_and_move_while_a_job_trains() -> anyhow::Result<()> {
    let dataset_url = "memory://tests/observability";
    synth_dataset(dataset_url, 400, 43, false).await?;
    let (coordinator_metrics, worker_metrics) = (free_address(), free_address());
    let cluster = TestCluster::start_configured(
        2,
        None,
        |config| config.metrics_listen = Some(coordinator_metrics),
        |index, config| {
            // Worker metrics are per process: one endpoint shows both in-process workers.
            if index == 0 {
                config.metrics_listen = Some(worker_metrics.to_string());
            }
        },
    )
    .await?;
    let before = parse_with_prometheus_client(&scrape(worker_metrics));
    let steps_before = before
        .get("plankton_worker_steps_total{}")
        .copied()
        .unwrap_or(0.0);
    let finished = cluster
        .run_job(JobSpec {
            dataset_url: dataset_url.into(),
            world_size: 2,
            model: "lenet".into(),
            epochs: 1,
            batch_size: 16,
            threads_per_worker: 1,
            ..Default::default()
        })
        .await?;

    let worker = parse_with_prometheus_client(&scrape(worker_metrics));
    let steps = sample(&worker, "plankton_worker_steps_total{}") - steps_before;
    assert_eq!(
        steps,
        2.0 * finished.global_step as f64,
        "both ranks counted every step"
    );
    assert!(sample(&worker, "plankton_worker_images_fetched_total{}") > 0.0);
    assert!(sample(&worker, "plankton_worker_all_reduce_bytes_total{}") > 0.0);
    for phase in ["data", "forward_backward", "all_reduce", "optimizer"] {
        assert!(
            sample(
                &worker,
                &format!("plankton_worker_step_seconds_total{{phase={phase}}}")
            ) > 0.0,
            "{phase}"
        );
    }
    assert_eq!(sample(&worker, "plankton_worker_epoch{}"), 1.0);
    assert!(sample(&worker, "plankton_worker_loss{}") > 0.0);

    let coordinator = parse_with_prometheus_client(&scrape(coordinator_metrics));
    assert_eq!(
        sample(&coordinator, "plankton_coordinator_jobs{phase=succeeded}"),
        1.0
    );
    assert_eq!(
        sample(&coordinator, "plankton_coordinator_jobs_submitted_total{}"),
        1.0
    );
    assert_eq!(
        sample(&coordinator, "plankton_coordinator_workers{state=idle}")
            + sample(&coordinator, "plankton_coordinator_workers{state=busy}"),
        2.0
    );
    assert_eq!(
        sample(&coordinator, "plankton_coordinator_registry_models{}"),
        1.0
    );
    cluster.shutdown().await
}

/// Lists the services over reflection protocol v1 (what current grpcurl speaks) and describes each one;
/// returns the service names.
async fn list_and_describe_v1(
    channel: plankton_security::AuthChannel,
) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![ask(MessageRequest::ListServices(
            String::new(),
        ))]))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(listed)) = answers
        .message()
        .await?
        .and_then(|answer| answer.message_response)
    else {
        anyhow::bail!("no service list");
    };
    let names: Vec<String> = listed
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for name in &names {
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(vec![ask(
                MessageRequest::FileContainingSymbol(name.clone()),
            )]))
            .await?
            .into_inner();
        match answers
            .message()
            .await?
            .and_then(|answer| answer.message_response)
        {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                anyhow::ensure!(
                    !files.file_descriptor_proto.is_empty(),
                    "{name}: no descriptor"
                )
            }
            other => anyhow::bail!("{name}: {other:?}"),
        }
    }
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_v1_lists_and_describes_every_service_of_every_role() -> anyhow::Result<()> {
    use plankton_security::Role;
    use plankton_tests::{Access, access::test_server_security, test_credentials};
    let worker_probe = free_address();
    let cluster = TestCluster::start_configured(
        1,
        None,
        |_| {},
        |_, config| config.health_listen = Some(worker_probe.to_string()),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inference_url = format!("https://{}", listener.local_addr()?);
    let inference_metrics = free_address();
    let config = plankton_serve::ServeConfig {
        listen_address: listener.local_addr()?,
        metrics_listen: Some(inference_metrics),
        security: test_server_security(),
        coordinator_url: cluster.coordinator_url.clone(),
        coordinator_security: test_credentials().client_security(Role::Viewer),
        model: "absent".into(),
        ..Default::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let inference = tokio::spawn(plankton_serve::serve(config, listener, shutdown.clone()));

    let coordinator = list_and_describe_v1(
        Access::as_role(&cluster.coordinator_url, Role::Viewer)
            .channel()
            .await?,
    )
    .await?;
    for service in [
        "plankton.v1.JobService",
        "plankton.v1.ModelRegistry",
        "plankton.v1.WorkerControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            coordinator.iter().any(|name| name == service),
            "coordinator lacks {service}: {coordinator:?}"
        );
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let inference_services = loop {
        match Access::as_role(&inference_url, Role::Client)
            .channel()
            .await
        {
            Ok(channel) => break list_and_describe_v1(channel).await?,
            Err(error) if tokio::time::Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert!(
        inference_services
            .iter()
            .any(|name| name == "plankton.v1.Inference"),
        "{inference_services:?}"
    );
    let probe = Access {
        url: format!("http://{worker_probe}"),
        security: Default::default(),
    };
    let worker = list_and_describe_v1(probe.channel().await?).await?;
    assert!(
        worker.iter().any(|name| name == "grpc.health.v1.Health"),
        "{worker:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(20), inference).await???;
    cluster.shutdown().await
}
