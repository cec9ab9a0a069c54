//! planktonctl as an operator runs it: against an unreachable coordinator, and a whole job's life on a cluster.

use std::process::Output;

use plankton_tests::{TestCluster, synth_dataset};

fn planktonctl(arguments: &[&str]) -> Output {
    let binary = plankton_tests::binary("planktonctl").expect("planktonctl built");
    std::process::Command::new(binary)
        .args(arguments)
        .output()
        .expect("running planktonctl")
}

fn json_of(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "planktonctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn an_unreachable_coordinator_is_a_clear_error_and_exit_code_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = planktonctl(&[
        "--coordinator",
        &format!("http://127.0.0.1:{port}"),
        "--insecure",
        "list",
    ]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the coordinator at http://127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn servers_refuse_plaintext_without_insecure_and_insecure_off_loopback() {
    let run = |binary: &str, arguments: &[&str]| {
        let path = plankton_tests::binary(binary).expect("binary built");
        std::process::Command::new(path)
            .args(arguments)
            .output()
            .expect("the binary runs")
    };
    for (binary, arguments, expected) in [
        (
            "plankton-coordinator",
            &["--in-memory", "--listen", "127.0.0.1:0"][..],
            "--tls-cert",
        ),
        (
            "plankton-coordinator",
            &["--in-memory", "--insecure", "--listen", "0.0.0.0:0"][..],
            "--allow-insecure-remote",
        ),
        (
            "plankton-serve",
            &["--model", "m", "--insecure", "--listen", "0.0.0.0:0"][..],
            "--allow-insecure-remote",
        ),
        (
            "plankton-worker",
            &["--coordinator", "http://10.1.2.3:7070"][..],
            "--insecure",
        ),
        (
            "plankton-worker",
            &["--coordinator", "http://10.1.2.3:7070", "--insecure"][..],
            "--allow-insecure-remote",
        ),
    ] {
        let output = run(binary, arguments);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{binary} {arguments:?}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{binary} {arguments:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_watch_list_get_and_promote_through_the_cli() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dataset = format!("file://{}", data.path().display());
    synth_dataset(&dataset, 300, 17, false).await?;
    let cluster = TestCluster::start(1).await?;
    let coordinator = cluster.coordinator_url.clone();
    let run = move |arguments: Vec<String>| {
        let coordinator = coordinator.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut all = vec!["--coordinator".to_string(), coordinator];
                all.extend(plankton_tests::access::test_client_flags(
                    plankton_security::Role::Operator,
                ));
                all.extend(arguments);
                let borrowed: Vec<&str> = all.iter().map(String::as_str).collect();
                planktonctl(&borrowed)
            })
            .await
            .expect("planktonctl thread")
        }
    };
    let strings = |items: &[&str]| {
        items
            .iter()
            .map(|item| item.to_string())
            .collect::<Vec<_>>()
    };

    let refused = run(strings(&[
        "submit",
        "--dataset",
        &dataset,
        "--world-size",
        "0",
    ]))
    .await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("spec.world_size: 0 is outside"), "{stderr}");

    let job_file = data.path().join("job.json");
    std::fs::write(
        &job_file,
        serde_json::to_vec(
            &serde_json::json!({"dataset": dataset, "model": "lenet", "epochs": 1, "batch_size": 16}),
        )?,
    )?;
    let watched = run(strings(&[
        "-o",
        "json",
        "submit",
        "-f",
        &job_file.display().to_string(),
        "--world-size",
        "1",
        "--watch",
    ]))
    .await;
    let job = json_of(&watched);
    assert_eq!(job["phase"], "succeeded", "{job}");
    assert_eq!(job["epochs"].as_array().map(Vec::len), Some(1));
    let job_id = job["id"].as_str().unwrap().to_string();

    let listed = json_of(&run(strings(&["-o", "json", "list"])).await);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|listed_job| listed_job["id"] == job_id.as_str())
    );
    let fetched = json_of(&run(strings(&["-o", "json", "get", &job_id])).await);
    assert_eq!(
        fetched["epochs"][0]["per_class"].as_array().map(Vec::len),
        Some(40)
    );
    let table = run(strings(&["get", &job_id])).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("macro-F1"));
    let not_resumable = run(strings(&["resume", &job_id])).await;
    assert_eq!(not_resumable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&not_resumable.stderr)
            .contains("only a failed or cancelled job can be resumed")
    );

    let models = json_of(&run(strings(&["-o", "json", "models", "list"])).await);
    assert_eq!(models[0]["name"], "flowcam-lenet");
    assert_eq!(models[0]["job_id"], job_id.as_str());
    json_of(
        &run(strings(&[
            "-o",
            "json",
            "models",
            "promote",
            "flowcam-lenet",
            "1",
            "--alias",
            "production",
        ]))
        .await,
    );
    let promoted = json_of(
        &run(strings(&[
            "-o",
            "json",
            "models",
            "get",
            "flowcam-lenet@production",
        ]))
        .await,
    );
    assert_eq!(promoted["version"], 1);
    let missing = run(strings(&["models", "get", "flowcam-lenet:7"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no version 7"));
    cluster.shutdown().await
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    plankton_tests::free_local_address().port()
}

/// grpcurl 1.8.6 (v1alpha reflection only) from the project's tools, in plaintext against a probe port.
fn grpcurl_plaintext(port: u16, arguments: &[&str]) -> (bool, String) {
    let grpcurl = plankton_tests::project_tool(".venv-tools", "grpcurl");
    let output = std::process::Command::new(grpcurl)
        .arg("-plaintext")
        .arg(format!("127.0.0.1:{port}"))
        .args(arguments)
        .output()
        .expect("grpcurl runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Polls the probe port's health until it says `wanted` (bounded).
fn wait_for_health(port: u16, wanted: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, answer) = grpcurl_plaintext(port, &["grpc.health.v1.Health/Check"]);
        if answer.contains(wanted) || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn every_role_answers_plaintext_health_probes_and_reflection_on_its_probe_port() {
    let spawn = |binary: &str, arguments: Vec<String>| {
        let path = plankton_tests::binary(binary).expect("binary built");
        std::process::Command::new(path)
            .args(arguments)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starts")
    };
    let coordinator_port = free_port();
    let (coordinator_probe, worker_probe, serve_probe) = (free_port(), free_port(), free_port());
    let coordinator_url = format!("http://127.0.0.1:{coordinator_port}");
    let strings = |items: &[&str]| {
        items
            .iter()
            .map(|item| item.to_string())
            .collect::<Vec<_>>()
    };
    let mut children = vec![
        spawn(
            "plankton-coordinator",
            strings(&[
                "--in-memory",
                "--insecure",
                "--listen",
                &format!("127.0.0.1:{coordinator_port}"),
                "--health-listen",
                &format!("127.0.0.1:{coordinator_probe}"),
            ]),
        ),
        spawn(
            "plankton-worker",
            strings(&[
                "--insecure",
                "--coordinator",
                &coordinator_url,
                "--health-listen",
                &format!("127.0.0.1:{worker_probe}"),
            ]),
        ),
        spawn(
            "plankton-serve",
            strings(&[
                "--insecure",
                "--coordinator",
                &coordinator_url,
                "--model",
                "absent@production",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--health-listen",
                &format!("127.0.0.1:{serve_probe}"),
            ]),
        ),
    ];
    let coordinator_health = wait_for_health(coordinator_probe, "\"SERVING\"");
    let worker_health = wait_for_health(worker_probe, "\"SERVING\"");
    // No model to load: up, but not ready.
    let serve_health = wait_for_health(serve_probe, "NOT_SERVING");
    let (listed, services) = grpcurl_plaintext(coordinator_probe, &["list"]);
    let mut undescribed = Vec::new();
    for port in [coordinator_probe, worker_probe, serve_probe] {
        let (_, listed_here) = grpcurl_plaintext(port, &["list"]);
        for service in listed_here.lines().filter(|line| !line.trim().is_empty()) {
            let (described, description) = grpcurl_plaintext(port, &["describe", service.trim()]);
            if !described {
                undescribed.push(format!("{service} on {port}: {description}"));
            }
        }
    }
    let (described, description) =
        grpcurl_plaintext(worker_probe, &["describe", "grpc.health.v1.Health"]);
    let (refused, business) =
        grpcurl_plaintext(coordinator_probe, &["plankton.v1.JobService/ListJobs"]);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        coordinator_health.contains("\"SERVING\""),
        "coordinator: {coordinator_health}"
    );
    assert!(
        worker_health.contains("\"SERVING\""),
        "worker: {worker_health}"
    );
    assert!(
        serve_health.contains("NOT_SERVING"),
        "serve: {serve_health}"
    );
    assert!(
        listed && services.contains("grpc.health.v1.Health"),
        "{services}"
    );
    assert!(
        described && description.contains("rpc Check"),
        "{description}"
    );
    assert!(
        !refused,
        "the probe port serves no business RPC: {business}"
    );
}
