//! Reads generated datasets (imgs/ and imgs.zip variants) through a real S3 server (moto) on 127.0.0.1.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use plankton_tests::synth_dataset;

/// A moto S3 server on a free port, killed on drop.
struct MotoServer {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_bin(name: &str) -> std::path::PathBuf {
    plankton_tests::project_tool(".venv-tools", name)
}

fn start_moto() -> MotoServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(tools_bin("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = MotoServer { child, endpoint };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not start on port {port}");
}

fn create_bucket(endpoint: &str, bucket: &str) {
    let script = format!(
        "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')"
    );
    let status = std::process::Command::new(tools_bin("python"))
        .args(["-c", &script])
        .status()
        .expect("python");
    assert!(status.success(), "creating bucket {bucket}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_round_trip_through_a_real_s3_server() -> anyhow::Result<()> {
    let moto = start_moto();
    create_bucket(&moto.endpoint, "plankton");
    // SAFETY: set before any thread of this test binary reads the environment; this is the only test here.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &moto.endpoint);
        std::env::set_var("AWS_ENDPOINT", &moto.endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    for (url, as_zip) in [
        ("s3://plankton/flowcam", false),
        ("s3://plankton/flowcam-zip", true),
    ] {
        synth_dataset(url, 240, 21, as_zip).await?;
        let location = plankton_dataset::open_location(url)?;
        let meta = plankton_dataset::read_meta(&location).await?;
        assert_eq!(meta.records.len(), 240, "{url}");
        assert!(
            meta.summary.skipped.is_empty(),
            "{url}: {:?}",
            meta.summary.skipped
        );
        let features = plankton_dataset::read_features(&location).await?;
        assert_eq!(features.rows.len(), 240, "{url}");
        let source = plankton_dataset::open_image_source(&location).await?;
        assert_eq!(
            matches!(source, plankton_dataset::ImageSource::Zip(_)),
            as_zip,
            "{url}"
        );
        let objids: Vec<i64> = meta.records.iter().map(|record| record.objid).collect();
        let fetched: Vec<_> = plankton_dataset::fetch_images(&location, &source, objids, 8)
            .collect()
            .await;
        assert_eq!(fetched.len(), 240);
        for (objid, result) in fetched {
            let bytes =
                result.map_err(|error| anyhow::anyhow!("{url}: object {objid}: {error}"))?;
            plankton_preprocess::preprocess_image(
                &bytes,
                &plankton_preprocess::PreprocessConfig::default(),
            )
            .map_err(|error| anyhow::anyhow!("{url}: object {objid} does not decode: {error}"))?;
        }
        // The coordinator plans a job straight from S3.
        let spec = plankton_coordinator::planner::normalize_spec(plankton_proto::v1::JobSpec {
            dataset_url: url.into(),
            world_size: 2,
            batch_size: 8,
            ..Default::default()
        })?;
        let plan = plankton_coordinator::planner::plan_job(&spec).await?;
        assert_eq!(plan.train_objects + plan.test_objects, 240);
        assert_eq!(plan.class_names.len(), 40);
    }
    Ok(())
}
