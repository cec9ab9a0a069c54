//! Test harness: tiny trained models published to memory stores, an in-memory registry, a served instance.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use plankton_collective::SingleProcess;
use plankton_dataset::open_location;
use plankton_proto::v1::inference_client::InferenceClient;
use plankton_proto::v1::{EvalMetrics, ModelVersion};
use plankton_serve::{BatchingConfig, InMemoryRegistry, ServeConfig, serve_with_metrics_listener};
use plankton_trainer::{
    Architecture, IMAGE_LEN, LoggingObserver, ModelCard, ModelInput, ShardData, TrainConfig,
    run_training,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const MODEL_NAME: &str = "plankton";
/// Class names with spaces and parentheses, as the real level2 names have.
pub const CLASS_NAMES: [&str; 3] = ["detritus", "nauplii (Crustacea)", "Neoceratium"];

/// A memory store name no other test of this process uses.
pub fn unique_store(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "memory://{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Safetensors weights of a LeNet briefly trained (one step) on random images; `seed` varies the weights.
pub fn train_weights(seed: u64) -> anyhow::Result<Vec<u8>> {
    let num_classes = CLASS_NAMES.len();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut shard = ShardData::default();
    for index in 0..8 {
        for _ in 0..IMAGE_LEN {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            shard.images.push((state >> 56) as u8);
        }
        shard.labels.push((index % num_classes) as u32);
    }
    let mut config = TrainConfig::new(num_classes, vec![1.0; num_classes]);
    config.architecture = Architecture::ResNet;
    config.epochs = 1;
    config.batch_size = 8;
    config.steps_per_epoch = 1;
    config.learning_rate = 1e-2;
    config.seed = seed;
    let trained = run_training(
        &config,
        &shard,
        &shard,
        &mut SingleProcess,
        &mut LoggingObserver,
    )?;
    Ok(trained.to_safetensors()?)
}

/// Writes `weights` and a model card under `location_url`, returns the registry entry of `name:version`.
pub async fn publish_model(
    location_url: &str,
    version: u32,
    resize_mode: &str,
    weights: &[u8],
) -> anyhow::Result<ModelVersion> {
    let location = open_location(location_url)?;
    let card = ModelCard {
        architecture: Architecture::ResNet,
        classes: CLASS_NAMES.iter().map(|name| name.to_string()).collect(),
        input: ModelInput::standard(resize_mode),
        metrics: serde_json::json!({"macro_f1": 0.5}),
        job_id: format!("job-{version}"),
        created_unix_ms: 1_700_000_000_000,
        weights_file: "model.safetensors".to_string(),
        feature_transform: None,
        training: None,
    };
    location
        .put_bytes("model.safetensors", Bytes::copy_from_slice(weights))
        .await?;
    location
        .put_bytes("model-card.json", Bytes::from(serde_json::to_vec(&card)?))
        .await?;
    Ok(ModelVersion {
        name: MODEL_NAME.to_string(),
        version,
        job_id: card.job_id.clone(),
        architecture: "resnet".to_string(),
        class_names: card.classes.clone(),
        resize_mode: resize_mode.to_string(),
        test_metrics: Some(EvalMetrics {
            macro_f1: 0.5,
            ..Default::default()
        }),
        weights_url: location.object_url("model.safetensors"),
        card_url: location.object_url("model-card.json"),
        aliases: Vec::new(),
        created_unix_ms: 1_700_000_000_000,
    })
}

/// A registry double and an inference server, both on 127.0.0.1:0.
pub struct Sandbox {
    pub registry: InMemoryRegistry,
    pub serve_address: SocketAddr,
    pub metrics_address: SocketAddr,
    shutdown: CancellationToken,
    registry_task: JoinHandle<()>,
    serve_task: JoinHandle<anyhow::Result<()>>,
}

impl Sandbox {
    /// Starts the registry (empty: register models with `sandbox.registry`) and a server whose
    /// default model is `default_model`.
    pub async fn start(default_model: &str, batching: BatchingConfig) -> anyhow::Result<Sandbox> {
        plankton_common::init_tracing_with_default("warn");
        let shutdown = CancellationToken::new();
        let registry = InMemoryRegistry::new();
        let registry_listener = TcpListener::bind("127.0.0.1:0").await?;
        let registry_address = registry_listener.local_addr()?;
        let registry_task = {
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = registry.serve(registry_listener, shutdown).await {
                    tracing::error!(%error, "registry double failed");
                }
            })
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let serve_address = listener.local_addr()?;
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await?;
        let metrics_address = metrics_listener.local_addr()?;
        let config = ServeConfig {
            listen_address: serve_address,
            metrics_listen: Some(metrics_address),
            coordinator_url: format!("http://{registry_address}"),
            model: default_model.to_string(),
            batching,
            refresh_interval: Duration::from_millis(200),
            torch_threads: 1,
            ..ServeConfig::default()
        };
        let serve_task = tokio::spawn(serve_with_metrics_listener(
            config,
            listener,
            Some(metrics_listener),
            shutdown.clone(),
        ));
        Ok(Sandbox {
            registry,
            serve_address,
            metrics_address,
            shutdown,
            registry_task,
            serve_task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.serve_address)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.url())?.connect().await?)
    }

    pub async fn client(&self) -> anyhow::Result<InferenceClient<Channel>> {
        Ok(InferenceClient::new(self.channel().await?))
    }

    /// Waits until the default model answers GetModelInfo.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let info = client
                .get_model_info(plankton_proto::v1::GetModelInfoRequest::default())
                .await;
            match info {
                Ok(_) => return Ok(()),
                Err(status) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%status, "default model not ready yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => anyhow::bail!("the default model never became ready: {status}"),
            }
        }
    }

    /// The `/metrics` page (plain HTTP/1.0 GET).
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_address).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        Ok(response)
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.serve_task.await??;
        self.registry_task.await?;
        Ok(())
    }
}

/// A synthetic FlowCam JPEG of `class_index` (dark object on a light background).
pub fn flowcam_jpeg(class_index: usize, objid: u64) -> Vec<u8> {
    plankton_synth::render_object(class_index, objid, 7)
        .encode_jpeg(90)
        .expect("synthetic images encode")
}

/// `jpeg` with the width and height of its frame header replaced (a header-only size change).
pub fn with_frame_size(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut patched = jpeg.to_vec();
    let frame_marker = patched
        .windows(2)
        .position(|pair| pair[0] == 0xFF && (0xC0..=0xC2).contains(&pair[1]))
        .expect("a baseline or progressive frame header");
    // FF Cx, length (2), precision (1), height (2), width (2).
    patched[frame_marker + 5..frame_marker + 7].copy_from_slice(&height.to_be_bytes());
    patched[frame_marker + 7..frame_marker + 9].copy_from_slice(&width.to_be_bytes());
    patched
}
