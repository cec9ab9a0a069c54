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
        assert_eq!(output.status.code(), Some(2), "{binary} {arguments:?}: {stderr}");
        assert!(stderr.contains(expected), "{binary} {arguments:?}: {stderr}");
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
