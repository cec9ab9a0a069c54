//! The gRPC contract of plankton-cluster: `plankton.v1` messages and services and the Open Inference Protocol
//! (`inference`), generated at build time.

/// Everything in the `plankton.v1` package.
pub mod v1 {
    tonic::include_proto!("plankton.v1");

    impl JobPhase {
        /// The phase as operators read it: "pending", "loading", "training", "recovering", "succeeded",
        /// "failed", "cancelled" ("unknown" when unspecified).
        pub fn short_name(self) -> &'static str {
            match self {
                JobPhase::Unspecified => "unknown",
                JobPhase::Pending => "pending",
                JobPhase::Loading => "loading",
                JobPhase::Training => "training",
                JobPhase::Succeeded => "succeeded",
                JobPhase::Failed => "failed",
                JobPhase::Cancelled => "cancelled",
                JobPhase::Recovering => "recovering",
            }
        }
    }

    impl WorkerProgress {
        /// The virtual shards it trains as ranges, as operators read them: `[0, 1, 2, 5]` -> "0-2, 5" ("-" for
        /// none).
        pub fn shard_ranges(&self) -> String {
            let mut sorted = self.virtual_shards.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let mut ranges: Vec<String> = Vec::new();
            let mut index = 0;
            while index < sorted.len() {
                let first = sorted[index];
                let mut last = first;
                while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
                    index += 1;
                    last = sorted[index];
                }
                ranges.push(if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                });
                index += 1;
            }
            if ranges.is_empty() {
                return "-".into();
            }
            ranges.join(", ")
        }
    }
}

/// The Open Inference Protocol v2 (KServe / Triton `inference.GRPCInferenceService`), served by plankton-serve.
pub mod inference {
    tonic::include_proto!("inference");
}

/// The Open Inference Protocol's gRPC service name.
pub const OPEN_INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// Encoded `FileDescriptorSet` of every plankton proto and the Open Inference Protocol, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("plankton_descriptor");

/// gRPC health's service name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Server reflection advertising `served` (fully qualified service names: the services this server answers;
/// the reflection service itself is always listed), in both protocol versions: v1, and v1alpha for clients such
/// as grpcurl before 1.9. Every plankton message and service can still be described.
#[allow(clippy::type_complexity)]
pub fn reflection_services(
    served: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        served.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, service| builder.with_service_name(*service),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Metadata key of the session token a worker's registration returns (`RegisterResponse.session_token`); every
/// later `WorkerControl` call carries it.
pub const WORKER_SESSION_METADATA: &str = "plankton-worker-session";

/// File name of a job's final weights under its output location; `DoneReport.model_url` must name it there.
pub const MODEL_WEIGHTS_FILE: &str = "model.safetensors";

/// File name of a `gbdt` job's trees (plankton-gbdt's bytes) under its output location; `DoneReport.model_url`
/// of such a job names it instead of [`MODEL_WEIGHTS_FILE`].
pub const GBDT_MODEL_FILE: &str = "model-gbdt.json";

/// The model file a job writes under its output location: [`GBDT_MODEL_FILE`] for `model: gbdt`, else
/// [`MODEL_WEIGHTS_FILE`].
pub fn model_file_of(model: &str) -> &'static str {
    if model.eq_ignore_ascii_case("gbdt") {
        GBDT_MODEL_FILE
    } else {
        MODEL_WEIGHTS_FILE
    }
}

/// Serves the probe port a role opens with `--health-listen`: plaintext gRPC with only `grpc.health.v1` (for
/// Kubernetes' native gRPC probes, which cannot speak TLS) and server reflection, until `shutdown` completes.
/// Everything else stays on the role's TLS port. A failure is logged (the role goes on; its probes then fail).
pub async fn serve_probe_port(
    listener: tokio::net::TcpListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let served = async {
        let (reflection, reflection_v1alpha) = reflection_services(&[HEALTH_SERVICE])?;
        let address = listener.local_addr()?;
        tracing::info!(%address, "probe port (health, reflection) listening");
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(error) = served.await {
        tracing::error!(%error, "probe port failed");
    }
}
