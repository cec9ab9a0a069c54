//! The one error type of this crate; every variant names the file, URL or field involved.

use std::path::PathBuf;

/// An error of loading credentials, building TLS configurations or connecting.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{message}")]
    Flags { message: String },

    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is empty", path.display())]
    EmptyFile { path: PathBuf },

    /// A line of a tokens file is invalid; `line` counts from 1.
    #[error("{}:{line}: {message}", path.display())]
    TokensFile {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A PEM file holds no certificate / private key, or one that does not parse.
    #[error("{}: {message}", path.display())]
    InvalidPem { path: PathBuf, message: String },

    /// rustls refused a certificate, key or configuration; `subject` says which.
    #[error("{subject}: {source}")]
    Tls {
        subject: String,
        source: rustls::Error,
    },

    #[error("client CA {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },

    #[error("invalid URL {url:?}: {message}")]
    InvalidUrl { url: String, message: String },

    #[error("{url}: an https:// URL needs a CA certificate to verify the server (--ca-cert)")]
    MissingCaCertificate { url: String },

    #[error("a client certificate and its key go together: {missing} is missing")]
    IncompleteClientIdentity { missing: &'static str },

    #[error(
        "refusing plaintext gRPC with non-loopback {address}: credentials would cross the network \
         unencrypted; configure TLS, or pass --allow-insecure-remote if the network is trusted"
    )]
    InsecureRemote { address: String },

    #[error("bearer token: {message}")]
    InvalidToken { message: String },

    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },

    /// A reloading store or certificate was created outside of a tokio runtime, which runs its reload task.
    #[error("{what} must be created inside a tokio runtime (it spawns its reload task)")]
    NoRuntime { what: &'static str },

    #[error("cannot connect to {url}: no connection within {timeout:?}")]
    ConnectTimeout {
        url: String,
        timeout: std::time::Duration,
    },

    #[error("generating the {what}: {source}")]
    CertificateGeneration { what: String, source: rcgen::Error },
}

impl SecurityError {
    pub(crate) fn read_file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::ReadFile {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write_file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::WriteFile {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid_pem(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidPem {
            path: path.into(),
            message: message.into(),
        }
    }
}
