//! The gRPC contract of plankton-cluster: `plankton.v1` messages and services, generated at build time.

/// Everything in the `plankton.v1` package.
pub mod v1 {
    tonic::include_proto!("plankton.v1");
}

/// Encoded `FileDescriptorSet` of every plankton proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("plankton_descriptor");
