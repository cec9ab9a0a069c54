//! A Python grpcio client (stubs generated from the .proto files) calls Predict and grpc.health.v1 Check.
mod common;

use std::path::PathBuf;

use common::{
    CLASS_NAMES, MODEL_NAME, Sandbox, flowcam_jpeg, publish_model, train_weights, unique_store,
};
use plankton_proto::v1::{ImageInput, PredictRequest};
use plankton_serve::BatchingConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_grpcio_client_gets_the_same_predictions_and_health() -> anyhow::Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace_dir = crate_dir
        .parent()
        .expect("serve/ lives in the workspace")
        .to_path_buf();
    let python = workspace_dir.join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the Python tools environment (grpcio, grpcio-tools)",
        python.display()
    );

    let entry = publish_model(
        &format!("{}/m", unique_store("serve-python")),
        1,
        "stretch",
        &train_weights(5)?,
    )
    .await?;
    let sandbox = Sandbox::start("plankton@production", BatchingConfig::default()).await?;
    sandbox.registry.register(entry);
    sandbox.registry.promote(MODEL_NAME, 1, "production")?;
    sandbox.wait_until_ready().await?;

    let image_dir = tempfile::tempdir()?;
    let mut image_paths = Vec::new();
    let mut images = Vec::new();
    for (file_name, data) in [
        ("1001.jpg", flowcam_jpeg(0, 1001)),
        ("1002.jpg", flowcam_jpeg(4, 1002)),
        ("broken.jpg", b"definitely not a jpeg".to_vec()),
    ] {
        let path = image_dir.path().join(file_name);
        std::fs::write(&path, &data)?;
        image_paths.push(path);
        images.push(ImageInput {
            data,
            id: file_name.to_string(),
            ..Default::default()
        });
    }
    let expected = sandbox
        .client()
        .await?
        .predict(PredictRequest {
            images,
            top_k: 3,
            ..Default::default()
        })
        .await?
        .into_inner();

    let script = crate_dir.join("tests/python/client.py");
    let address = sandbox.serve_address.to_string();
    let proto_root = workspace_dir.join("proto");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--address", &address, "--top-k", "3"])
        .arg("--proto-root")
        .arg(&proto_root)
        .args(&image_paths)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|error| {
        anyhow::anyhow!("python client printed no JSON ({error}):\n{stdout}\n{stderr}")
    })?;

    assert_eq!(answer["health"], "SERVING");
    assert_eq!(answer["model_name"], MODEL_NAME);
    assert_eq!(answer["model_version"], 1);
    assert_eq!(answer["empty_request_code"], "INVALID_ARGUMENT");
    let predictions = answer["predictions"]
        .as_array()
        .expect("a predictions list");
    assert_eq!(predictions.len(), 3);
    for (python_prediction, rust_prediction) in predictions.iter().zip(&expected.predictions) {
        assert_eq!(python_prediction["id"], rust_prediction.id.as_str());
        assert_eq!(python_prediction["error"], rust_prediction.error.as_str());
        let top = python_prediction["top"].as_array().expect("a top list");
        assert_eq!(top.len(), rust_prediction.top.len());
        for (python_score, rust_score) in top.iter().zip(&rust_prediction.top) {
            assert_eq!(python_score[0], rust_score.class_name.as_str());
            assert!(CLASS_NAMES.contains(&rust_score.class_name.as_str()));
            assert_eq!(python_score[1], rust_score.class_index);
            let probability = python_score[2].as_f64().expect("a probability");
            assert!((probability - f64::from(rust_score.probability)).abs() < 1e-5);
        }
    }
    assert!(
        predictions[2]["error"]
            .as_str()
            .is_some_and(|error| error.contains("not a JPEG")),
        "{}",
        predictions[2]
    );
    sandbox.shutdown().await
}
