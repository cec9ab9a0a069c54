//! Test harness: boots a whole cluster (coordinator + N workers + object store) in one line, in one process
//! or as separate OS processes, and tears it down in one line. Clusters are secure like a deployment: TLS
//! from a test CA, a token per role ([`access`]).

pub mod access;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use plankton_collective::RingConfig;
use plankton_coordinator::CoordinatorConfig;
use plankton_coordinator::state::Timeouts;
use plankton_coordinator::validation::JobPolicy;
use plankton_proto::v1::job_service_client::JobServiceClient;
use plankton_proto::v1::{GetJobRequest, Job, JobSpec, ListWorkersRequest, SubmitJobRequest};
use plankton_security::{AuthChannel, Role};
use plankton_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use access::{Access, test_credentials};

/// Timeouts short enough for tests to observe failures quickly.
pub fn test_timeouts() -> Timeouts {
    Timeouts {
        worker_timeout: Duration::from_secs(4),
        registration_timeout: Duration::from_secs(8),
        heartbeat_interval: Duration::from_millis(500),
        replacement_wait: Duration::from_secs(2),
    }
}

pub fn test_ring_config() -> RingConfig {
    RingConfig {
        connect_timeout: Duration::from_secs(30),
        io_timeout: Duration::from_secs(20),
        chunk_bytes: 256 * 1024,
        ..RingConfig::default()
    }
}

/// Writes a synthetic dataset of `count` objects to `url`.
pub async fn synth_dataset(
    url: &str,
    count: u64,
    seed: u64,
    images_as_zip: bool,
) -> anyhow::Result<()> {
    let location = plankton_dataset::open_location(url)?;
    let config = plankton_synth::SynthConfig {
        count,
        seed,
        images_as_zip,
        gzip_features: false,
        concurrency: 16,
    };
    plankton_synth::generate(location.store.clone(), location.prefix.clone(), &config).await?;
    Ok(())
}

/// A coordinator and workers running as tasks of the test's process.
pub struct TestCluster {
    pub coordinator_url: String,
    /// The coordinator with the `operator` role's token.
    pub access: Access,
    coordinator_shutdown: CancellationToken,
    coordinator_task: JoinHandle<anyhow::Result<()>>,
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    pub state_dir: Option<PathBuf>,
}

impl TestCluster {
    /// Coordinator with in-memory state and `workers` workers, all on 127.0.0.1 ephemeral ports.
    pub async fn start(workers: usize) -> anyhow::Result<Self> {
        Self::start_with_state(workers, None).await
    }

    pub async fn start_with_state(
        workers: usize,
        state_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Self::start_with(workers, state_dir, |_, _| {}).await
    }

    /// Coordinator (state in `state_dir`, or in memory) and `workers` workers, each configured by `adjust`
    /// (called with the worker's index), e.g. to inject the same fault into every worker:
    /// `TestCluster::start_with(3, None, |_, config| config.fault = Some(fault))`.
    pub async fn start_with(
        workers: usize,
        state_dir: Option<PathBuf>,
        adjust: impl Fn(usize, &mut WorkerConfig),
    ) -> anyhow::Result<Self> {
        Self::start_configured(workers, state_dir, |_| {}, adjust).await
    }

    /// As [`TestCluster::start_with`], with the coordinator's configuration changed by `adjust_coordinator`
    /// first (security, job policy, ring TLS).
    pub async fn start_configured(
        workers: usize,
        state_dir: Option<PathBuf>,
        adjust_coordinator: impl FnOnce(&mut CoordinatorConfig),
        adjust: impl Fn(usize, &mut WorkerConfig),
    ) -> anyhow::Result<Self> {
        plankton_common::init_tracing_with_default("warn");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut config = CoordinatorConfig {
            listen_address: listener.local_addr()?,
            state_dir: state_dir.clone(),
            timeouts: test_timeouts(),
            security: access::test_server_security(),
            job_policy: JobPolicy {
                dataset_prefixes: access::test_dataset_prefixes(),
                ..JobPolicy::default()
            },
            ring_tls: false,
            health_listen: None,
            metrics_listen: None,
            dashboard_listen: None,
        };
        adjust_coordinator(&mut config);
        let scheme = if config.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let coordinator_url = format!("{scheme}://{}", listener.local_addr()?);
        let coordinator_shutdown = CancellationToken::new();
        let coordinator_task = tokio::spawn(plankton_coordinator::serve(
            config,
            listener,
            coordinator_shutdown.clone(),
        ));
        let mut cluster = Self {
            access: Access::as_role(&coordinator_url, Role::Operator),
            coordinator_url,
            coordinator_shutdown,
            coordinator_task,
            workers: Vec::new(),
            state_dir,
        };
        for index in 0..workers {
            cluster.add_worker_with(|config| adjust(index, config));
        }
        cluster.wait_for_workers(workers).await?;
        Ok(cluster)
    }

    pub fn add_worker(&mut self) {
        self.add_worker_with(|_| {});
    }

    /// Adds a worker whose configuration `adjust` changes first (e.g. to inject a fault).
    pub fn add_worker_with(&mut self, adjust: impl FnOnce(&mut WorkerConfig)) {
        let index = self.workers.len();
        let mut config =
            WorkerConfig::new(self.coordinator_url.clone(), format!("test-worker-{index}"));
        config.security = test_credentials().client_security(Role::Worker);
        config.ring = test_ring_config();
        config.fetch_concurrency = 16;
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(plankton_worker::run(config, shutdown.clone()));
        self.workers.push((shutdown, task));
    }

    /// A client of the coordinator's jobs with the `operator` role.
    pub async fn client(&self) -> anyhow::Result<JobServiceClient<AuthChannel>> {
        self.access.jobs().await
    }

    pub async fn wait_for_workers(&self, wanted: usize) -> anyhow::Result<()> {
        wait_for_workers(&self.access, wanted).await
    }

    pub async fn submit(&self, spec: JobSpec) -> Result<Job, tonic::Status> {
        let mut client = self
            .client()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        Ok(client
            .submit_job(SubmitJobRequest { spec: Some(spec) })
            .await?
            .into_inner())
    }

    /// Submits `spec`, waits for the job's end and fails unless it succeeded.
    pub async fn run_job(&self, spec: JobSpec) -> anyhow::Result<Job> {
        let job = self.submit(spec).await?;
        let finished = self
            .wait_finished(&job.id, Duration::from_secs(300))
            .await?;
        anyhow::ensure!(
            finished.phase() == plankton_proto::v1::JobPhase::Succeeded,
            "job {} ended {:?}: {}",
            job.id,
            finished.phase(),
            finished.message
        );
        Ok(finished)
    }

    pub async fn get(&self, job_id: &str) -> anyhow::Result<Job> {
        Ok(self
            .client()
            .await?
            .get_job(GetJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn wait_finished(&self, job_id: &str, timeout: Duration) -> anyhow::Result<Job> {
        wait_finished(&self.access, job_id, timeout).await
    }

    /// Stops the coordinator and every worker, waiting for each to return.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for (token, _) in &self.workers {
            token.cancel();
        }
        for (_, task) in self.workers {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .context("worker did not stop")???;
        }
        self.coordinator_shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.coordinator_task)
            .await
            .context("coordinator did not stop")???;
        Ok(())
    }
}

pub async fn wait_for_workers(coordinator: &Access, wanted: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = coordinator.jobs().await
            && let Ok(response) = client.list_workers(ListWorkersRequest {}).await
            && response.into_inner().workers.len() >= wanted
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{wanted} workers did not register within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_finished(
    coordinator: &Access,
    job_id: &str,
    timeout: Duration,
) -> anyhow::Result<Job> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_state = String::from("coordinator not reached yet");
    loop {
        // The coordinator may be restarting: connection errors are retried until the deadline.
        if let Ok(mut client) = coordinator.jobs().await {
            match client
                .get_job(GetJobRequest {
                    job_id: job_id.into(),
                })
                .await
            {
                Ok(response) => {
                    let job = response.into_inner();
                    if plankton_coordinator::state::is_terminal(job.phase()) {
                        return Ok(job);
                    }
                    last_state = format!("{:?}: {}", job.phase(), job.message);
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    anyhow::bail!("job {job_id}: {}", status.message())
                }
                Err(status) => last_state = status.to_string(),
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} not finished after {timeout:?}: {last_state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The folder holding the workspace's built binaries (`target/<profile>`).
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let folder = exe.parent().expect("the executable has a folder");
    // Tests run from target/<profile>/deps/; programs (benchmarks) from target/<profile>/ itself.
    if folder.file_name().is_some_and(|name| name == "deps") {
        folder
            .parent()
            .expect("target/<profile>/deps layout")
            .to_path_buf()
    } else {
        folder.to_path_buf()
    }
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lies in the workspace")
        .to_path_buf()
}

/// A program of one of the project's Python environments, e.g. `project_tool(".venv-tools", "grpcurl")`;
/// fails (a test never skips) with the set-up command when it is missing.
pub fn project_tool(environment: &str, name: &str) -> PathBuf {
    let path = workspace_root().join(environment).join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (make test does)",
        path.display()
    );
    path
}

/// A client of the inference server at `server` once it answers `GetModelInfo` for its default model (30 s bound).
pub async fn wait_for_inference_server(
    server: &Access,
) -> anyhow::Result<
    plankton_proto::v1::inference_client::InferenceClient<plankton_security::AuthChannel>,
> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = server.channel().await {
            let mut client = plankton_proto::v1::inference_client::InferenceClient::new(channel);
            let probe = client
                .get_model_info(plankton_proto::v1::GetModelInfoRequest {
                    model: String::new(),
                })
                .await;
            if probe.is_ok() {
                return Ok(client);
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "inference server at {} never loaded its model",
            server.url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP address on 127.0.0.1 (bound, then released).
pub fn free_local_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// Path of a workspace binary; fails with the build command to run when it is missing.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = binaries_dir().join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo build --bins` before the tests (make test does)",
        path.display()
    );
    Ok(path)
}

/// A cluster of OS processes: coordinator and workers started from the workspace binaries.
pub struct ProcessCluster {
    pub coordinator_url: String,
    /// The coordinator with the `operator` role's token.
    pub access: Access,
    pub coordinator: tokio::process::Child,
    pub workers: Vec<tokio::process::Child>,
    pub log_dir: tempfile::TempDir,
    coordinator_arguments: Vec<String>,
    worker_arguments: Vec<String>,
    coordinator_starts: usize,
}

impl ProcessCluster {
    pub async fn start(workers: usize, extra_worker_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_args(workers, &[], extra_worker_args).await
    }

    /// [`ProcessCluster::start`] with extra coordinator arguments too (e.g. `--allow-dataset DIR`).
    pub async fn start_with_args(
        workers: usize,
        extra_coordinator_args: &[&str],
        extra_worker_args: &[&str],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let coordinator_url = format!("https://127.0.0.1:{port}");
        let log_dir = tempfile::tempdir()?;
        let timeouts = test_timeouts();
        let mut coordinator_arguments: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--state-dir".into(),
            log_dir
                .path()
                .join("coordinator-state")
                .display()
                .to_string(),
            "--worker-timeout".into(),
            format!("{}ms", timeouts.worker_timeout.as_millis()),
            "--heartbeat-interval".into(),
            format!("{}ms", timeouts.heartbeat_interval.as_millis()),
            "--replacement-wait".into(),
            format!("{}ms", timeouts.replacement_wait.as_millis()),
        ];
        coordinator_arguments.extend(access::test_coordinator_security_flags());
        coordinator_arguments.extend(
            extra_coordinator_args
                .iter()
                .map(|argument| argument.to_string()),
        );
        let coordinator = spawn_logged(
            &binary("plankton-coordinator")?,
            &coordinator_arguments,
            &log_dir.path().join("coordinator-0.log"),
        )?;
        let mut worker_arguments: Vec<String> = vec![
            "--coordinator".into(),
            coordinator_url.clone(),
            "--ring-io-timeout".into(),
            "20s".into(),
        ];
        worker_arguments.extend(access::test_client_flags(Role::Worker));
        worker_arguments.extend(
            extra_worker_args
                .iter()
                .map(|argument| argument.to_string()),
        );
        let mut cluster = Self {
            access: Access::as_role(&coordinator_url, Role::Operator),
            coordinator_url,
            coordinator,
            workers: Vec::new(),
            log_dir,
            coordinator_arguments,
            worker_arguments,
            coordinator_starts: 1,
        };
        for _ in 0..workers {
            cluster.add_worker()?;
        }
        wait_for_workers(&cluster.access, workers).await?;
        Ok(cluster)
    }

    /// Starts one more worker process (e.g. a replacement after a kill); returns its index.
    pub fn add_worker(&mut self) -> anyhow::Result<usize> {
        let index = self.workers.len();
        let mut arguments = self.worker_arguments.clone();
        arguments.extend(["--name".to_string(), format!("proc-worker-{index}")]);
        let worker = spawn_logged(
            &binary("plankton-worker")?,
            &arguments,
            &self.log_dir.path().join(format!("worker-{index}.log")),
        )?;
        self.workers.push(worker);
        Ok(index)
    }

    /// `kill -9` of worker `index`.
    pub async fn kill_worker(&mut self, index: usize) -> anyhow::Result<()> {
        kill_hard(&mut self.workers[index]).await
    }

    /// `kill -9` of the coordinator.
    pub async fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        kill_hard(&mut self.coordinator).await
    }

    /// Starts the coordinator again on the same address and state folder.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        let log = self
            .log_dir
            .path()
            .join(format!("coordinator-{}.log", self.coordinator_starts));
        self.coordinator_starts += 1;
        self.coordinator = spawn_logged(
            &binary("plankton-coordinator")?,
            &self.coordinator_arguments,
            &log,
        )?;
        Ok(())
    }

    /// The logs of every process, for assertion messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.log_dir.path()) {
            for entry in entries.flatten() {
                let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: String = content
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                text.push_str(&format!(
                    "==== {}\n{tail}\n",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        text
    }

    /// Sends SIGTERM to every process and waits (bounded) for each to exit; returns the ones that hung.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut children: Vec<&mut tokio::process::Child> = self.workers.iter_mut().collect();
        children.push(&mut self.coordinator);
        let mut hung = Vec::new();
        for child in children {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        hung.push(pid);
                        let _ = child.start_kill();
                    }
                }
            }
        }
        anyhow::ensure!(
            hung.is_empty(),
            "processes {hung:?} did not exit within 20s of SIGTERM"
        );
        Ok(())
    }
}

async fn kill_hard(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    child.start_kill()?;
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .context("a killed process did not exit")??;
    Ok(())
}

fn spawn_logged(
    binary: &std::path::Path,
    arguments: &[String],
    log: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    let log_file = std::fs::File::create(log)?;
    Ok(tokio::process::Command::new(binary)
        .args(arguments)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()?)
}

/// A `plankton-serve` running in this process with the test TLS and tokens, serving `model` from the registry
/// of the coordinator at `coordinator_url`.
pub struct TestServer {
    /// The server's address, as a client-role caller.
    pub access: Access,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and starts serving; the registry is polled every 300 ms.
    pub async fn start(coordinator_url: &str, model: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let access = Access::as_role(&format!("https://{}", listener.local_addr()?), Role::Client);
        let config = plankton_serve::ServeConfig {
            listen_address: listener.local_addr()?,
            security: access::test_server_security(),
            coordinator_url: coordinator_url.to_string(),
            coordinator_security: test_credentials().client_security(Role::Viewer),
            model: model.to_string(),
            refresh_interval: Duration::from_millis(300),
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(plankton_serve::serve(config, listener, shutdown.clone()));
        Ok(TestServer {
            access,
            shutdown,
            task,
        })
    }

    /// Stops the server and waits (at most 20 s) for it to end cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .context("the server did not stop within 20 s")??
    }
}

/// Predicts `images` (objid, JPEG) through `model` with each object's raw native features and checks every
/// returned probability against `direct` (row-major `[images, num_classes]`, computed without the server) within
/// `tolerance`; then asks again without features and checks the refusal: INVALID_ARGUMENT naming
/// `"native_features"`.
pub async fn check_predictions_with_features(
    client: &mut plankton_proto::v1::inference_client::InferenceClient<AuthChannel>,
    model: &str,
    images: &[(i64, bytes::Bytes)],
    features_of: impl Fn(i64) -> Vec<f32>,
    direct: &[f32],
    num_classes: usize,
    tolerance: f32,
) -> anyhow::Result<()> {
    use plankton_proto::v1::{ImageInput, PredictRequest};
    let request = |with_features: bool| PredictRequest {
        model: model.to_string(),
        images: images
            .iter()
            .map(|(objid, jpeg)| ImageInput {
                data: jpeg.to_vec(),
                id: objid.to_string(),
                native_features: if with_features {
                    features_of(*objid)
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
            .collect(),
        top_k: num_classes as u32,
    };
    let response = client.predict(request(true)).await?.into_inner();
    anyhow::ensure!(
        response.predictions.len() == images.len(),
        "{} predictions for {} images",
        response.predictions.len(),
        images.len()
    );
    for (index, prediction) in response.predictions.iter().enumerate() {
        anyhow::ensure!(prediction.error.is_empty(), "{}", prediction.error);
        for score in &prediction.top {
            let expected = direct[index * num_classes + score.class_index as usize];
            anyhow::ensure!(
                (score.probability - expected).abs() < tolerance,
                "image {index} class {}: served {} direct {expected}",
                score.class_index,
                score.probability
            );
        }
    }
    let refused = match client.predict(request(false)).await {
        Ok(_) => anyhow::bail!("a Predict without features was answered"),
        Err(status) => status,
    };
    anyhow::ensure!(
        refused.code() == tonic::Code::InvalidArgument
            && refused.message().contains("\"native_features\""),
        "{refused:?}"
    );
    Ok(())
}

/// Objects of a dataset with their JPEG bytes and raw native features (NaN where the file has no value).
pub struct ObjectsWithFeatures {
    /// (objid, JPEG bytes), in feature-file order.
    pub images: Vec<(i64, bytes::Bytes)>,
    features: std::collections::HashMap<i64, Vec<f32>>,
}

impl ObjectsWithFeatures {
    /// The raw features of `objid` (empty for an object not among these).
    pub fn features_of(&self, objid: i64) -> Vec<f32> {
        self.features.get(&objid).cloned().unwrap_or_default()
    }
}

/// The first `count` objects of the dataset at `dataset_url` that have a feature row, with their images.
pub async fn objects_with_features(
    dataset_url: &str,
    count: usize,
) -> anyhow::Result<ObjectsWithFeatures> {
    use futures::StreamExt;
    let location = plankton_dataset::open_location(dataset_url)?;
    let table = plankton_dataset::read_features(&location).await?;
    let features: Vec<(i64, Vec<f32>)> = table
        .rows
        .iter()
        .take(count)
        .map(|(objid, values)| {
            let raw = values
                .iter()
                .map(|value| value.unwrap_or(f32::NAN))
                .collect();
            (*objid, raw)
        })
        .collect();
    let source = plankton_dataset::open_image_source(&location).await?;
    let mut fetched: std::collections::HashMap<i64, bytes::Bytes> = plankton_dataset::fetch_images(
        &location,
        &source,
        features.iter().map(|(objid, _)| *objid).collect(),
        4,
    )
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .map(|(objid, result)| Ok((objid, result?)))
    .collect::<anyhow::Result<_>>()?;
    let images = features
        .iter()
        .map(|(objid, _)| {
            let jpeg = fetched
                .remove(objid)
                .with_context(|| format!("no image fetched for object {objid}"))?;
            Ok((*objid, jpeg))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ObjectsWithFeatures {
        images,
        features: features.into_iter().collect(),
    })
}
