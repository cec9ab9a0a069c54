//! `planktonctl demo`: the main job on embedded defaults. Generates a synthetic dataset in a local folder,
//! starts a coordinator and workers as processes on 127.0.0.1 with TLS and tokens (a local CA and a token per role,
//! generated once under the demo folder), submits a job, watches it, prints the results.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::process::{Child, Command};

use plankton_proto::v1::{CancelJobRequest, JobPhase, JobSpec, ListJobsRequest};
use plankton_security::Role;

use crate::OutputFormat;
use crate::connection::Server;
use crate::job_commands::{self, JobFields};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the dataset, job state, caches, logs and models.
    #[arg(long, default_value = "demo-data")]
    dir: PathBuf,
    /// Objects in the generated dataset (every one of the 40 classes present).
    #[arg(long, default_value_t = 12_000)]
    count: u64,
    /// Workers training data-parallel.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// libtorch threads per worker.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    #[command(flatten)]
    job: JobFields,
}

/// Child processes killed when the demo ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    let dataset_dir = dir.join("dataset");
    let dataset_url = dataset_dir.display().to_string();
    std::fs::create_dir_all(dir.join("logs"))?;

    let marker = dataset_dir.join(format!(".synth-complete-{}", args.count));
    if marker.exists() {
        println!("dataset: reusing {} ({} objects)", dataset_url, args.count);
    } else {
        println!(
            "dataset: generating {} synthetic FlowCam objects in {}",
            args.count, dataset_url
        );
        let _ = std::fs::remove_dir_all(&dataset_dir);
        crate::dataset_commands::synth(
            crate::SynthArgs {
                out: dataset_url.clone(),
                count: args.count,
                seed: 42,
                zip: false,
                gzip_features: false,
                concurrency: 32,
            },
            OutputFormat::Table,
        )
        .await?;
        std::fs::write(&marker, b"")?;
    }

    // Secure like any deployment: TLS from a local CA and a bearer token per role, made once under demo-data/.
    let security_dir = dir.join("security");
    let credentials = plankton_security::ensure_demo_credentials(&security_dir)?;
    println!(
        "security: TLS with the CA {} and a token per role in {}",
        credentials.ca_cert.display(),
        security_dir.display()
    );
    let path_text = |path: &Path| path.display().to_string();
    let port = free_port()?;
    let dashboard_port = free_port()?;
    let coordinator_url = format!("https://127.0.0.1:{port}");
    let coordinator = Server {
        url: coordinator_url.clone(),
        security: credentials.client_security(Role::Operator),
    };
    let binaries = std::env::current_exe()?
        .parent()
        .context("locating the planktonctl folder")?
        .to_path_buf();
    let mut processes = Processes(Vec::new());
    processes.0.push(spawn(
        &binaries.join("plankton-coordinator"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            &dir.join("state").display().to_string(),
            "--tls-cert",
            &path_text(&credentials.server_cert),
            "--tls-key",
            &path_text(&credentials.server_key),
            "--tokens-file",
            &path_text(&credentials.tokens_file),
            "--allow-dataset",
            &dataset_url,
            "--http-listen",
            &format!("127.0.0.1:{dashboard_port}"),
        ],
        &dir.join("logs/coordinator.log"),
    )?);
    // The coordinator keeps jobs in the state folder and carries on with unfinished ones after a restart: a
    // demo interrupted earlier would take this demo's workers. End those before any worker registers.
    cancel_unfinished_jobs(&coordinator).await?;
    for index in 0..args.workers {
        processes.0.push(spawn(
            &binaries.join("plankton-worker"),
            &[
                "--coordinator",
                &coordinator_url,
                "--ca-cert",
                &path_text(&credentials.ca_cert),
                "--token-file",
                &path_text(&credentials.token_file(Role::Worker)),
                "--threads",
                &args.threads.to_string(),
                "--cache-dir",
                &dir.join("cache").display().to_string(),
                "--name",
                &format!("demo-worker-{index}"),
            ],
            &dir.join(format!("logs/worker-{index}.log")),
        )?);
    }
    println!(
        "cluster: coordinator on {coordinator_url}, {} workers (logs in {})",
        args.workers,
        dir.join("logs").display()
    );
    println!(
        "dashboard: https://127.0.0.1:{dashboard_port} while the demo runs (log in with the token in {}; \
         the certificate is the demo CA's {})",
        credentials.token_file(Role::Viewer).display(),
        credentials.ca_cert.display()
    );
    wait_for_workers(&coordinator, args.workers as usize).await?;

    let mut fields = args.job;
    fields.dataset.get_or_insert(dataset_url);
    fields.world_size.get_or_insert(args.workers);
    fields.epochs.get_or_insert(4);
    fields.batch_size.get_or_insert(32);
    fields.name.get_or_insert_with(|| "demo".into());
    let spec: JobSpec = fields.into_spec()?;
    let job = job_commands::submit_spec(&coordinator, spec).await?;
    println!(
        "job {} submitted: {} train / {} test objects, {} classes",
        job.id,
        job.train_objects,
        job.test_objects,
        job.class_names.len()
    );
    let finished = job_commands::watch(&coordinator, &job.id, OutputFormat::Table).await?;
    drop(processes);
    if finished.phase() != JobPhase::Succeeded {
        anyhow::bail!(
            "demo job {}: {}",
            crate::render::phase_name(finished.phase()),
            finished.message
        );
    }
    let model_folder = finished.model_url.trim_end_matches("model.safetensors");
    println!("model weights and card written under {model_folder}");
    println!(
        "report (open it in a browser): {model_folder}report.html; TensorBoard logs: {model_folder}tensorboard/"
    );
    println!(
        "to call this cluster yourself: planktonctl --ca-cert {} --token-file {} ... (tokens for other roles beside it)",
        credentials.ca_cert.display(),
        credentials.token_file(Role::Operator).display()
    );
    Ok(())
}

/// Cancels the jobs an earlier, interrupted demo left unfinished in the state folder (waits for the coordinator).
async fn cancel_unfinished_jobs(coordinator: &Server) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match job_commands::connect(coordinator).await {
            Ok(client) => break client,
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(
                    error.context("the coordinator did not start; see logs/coordinator.log")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let jobs = client
        .list_jobs(ListJobsRequest {})
        .await
        .map_err(|status| job_commands::call_error("list", status))?
        .into_inner()
        .jobs;
    for job in jobs {
        if matches!(
            job.phase(),
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
        ) {
            continue;
        }
        client
            .cancel_job(CancelJobRequest {
                job_id: job.id.clone(),
            })
            .await
            .map_err(|status| job_commands::call_error("cancel", status))?;
        println!(
            "state: cancelled job {} ({}), left unfinished by an earlier demo",
            job.id,
            crate::render::phase_name(job.phase())
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(binary: &Path, arguments: &[&str], log: &Path) -> anyhow::Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release --bins`)",
                binary.display()
            )
        })
}

async fn wait_for_workers(coordinator: &Server, wanted: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = job_commands::connect(coordinator).await
            && let Ok(response) = client
                .list_workers(plankton_proto::v1::ListWorkersRequest {})
                .await
            && response.into_inner().workers.len() >= wanted
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("workers did not register within 60s; see the logs folder");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
