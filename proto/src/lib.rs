//! The gRPC contract of plankton-cluster: `plankton.v1` messages and services, generated at build time.

/// Everything in the `plankton.v1` package.
pub mod v1 {
    tonic::include_proto!("plankton.v1");
}

/// Encoded `FileDescriptorSet` of every plankton proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("plankton_descriptor");

/// Server reflection of every plankton service and of gRPC health, in both protocol versions: v1, and v1alpha
/// for clients such as grpcurl before 1.9.
#[allow(clippy::type_complexity)]
pub fn reflection_services() -> Result<
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
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Metadata key of the session token a worker's registration returns (`RegisterResponse.session_token`); every
/// later `WorkerControl` call carries it.
pub const WORKER_SESSION_METADATA: &str = "plankton-worker-session";

/// File name of a job's final weights under its output location; `DoneReport.model_url` must name it there.
pub const MODEL_WEIGHTS_FILE: &str = "model.safetensors";
