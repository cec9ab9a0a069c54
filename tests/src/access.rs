//! How tests reach a secure cluster: one local CA, server certificate and token per role for the whole test
//! process (made once), and clients holding a role's token.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use plankton_proto::v1::job_service_client::JobServiceClient;
use plankton_proto::v1::model_registry_client::ModelRegistryClient;
use plankton_security::{AuthChannel, ClientSecurity, DemoCredentials, Role, ServerSecurity};

/// The credentials every test cluster of this process uses (a CA, certificates, a token per role).
pub fn test_credentials() -> &'static DemoCredentials {
    static CREDENTIALS: OnceLock<(tempfile::TempDir, DemoCredentials)> = OnceLock::new();
    &CREDENTIALS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary folder for test credentials");
            let credentials =
                plankton_security::ensure_demo_credentials(dir.path()).expect("test credentials");
            (dir, credentials)
        })
        .1
}

/// TLS with the test server certificate and the test tokens file.
pub fn test_server_security() -> ServerSecurity {
    let credentials = test_credentials();
    ServerSecurity {
        tls: Some(credentials.server_tls_files(false)),
        tokens_file: Some(credentials.tokens_file.clone()),
    }
}

/// The dataset locations test coordinators allow: the temporary folder (where tests write datasets) and the
/// in-memory store.
pub fn test_dataset_prefixes() -> Vec<String> {
    let temp = std::env::temp_dir();
    let temp = temp.canonicalize().unwrap_or(temp);
    vec![temp.display().to_string(), "memory://tests".to_string()]
}

/// A coordinator as a client sees it: its URL and the credentials of one role.
#[derive(Clone, Debug)]
pub struct Access {
    pub url: String,
    pub security: ClientSecurity,
}

impl Access {
    /// `url` with the test CA and `role`'s token.
    pub fn as_role(url: &str, role: Role) -> Self {
        Access {
            url: url.to_string(),
            security: test_credentials().client_security(role),
        }
    }

    /// The same server with another role's token (or none).
    pub fn with_token(&self, token: Option<String>) -> Self {
        Access {
            url: self.url.clone(),
            security: ClientSecurity {
                token,
                ..self.security.clone()
            },
        }
    }

    pub async fn channel(&self) -> anyhow::Result<AuthChannel> {
        Ok(plankton_security::connect(&self.url, &self.security, Duration::from_secs(5)).await?)
    }

    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<AuthChannel>> {
        Ok(JobServiceClient::new(self.channel().await?).max_decoding_message_size(256 << 20))
    }

    pub async fn registry(&self) -> anyhow::Result<ModelRegistryClient<AuthChannel>> {
        Ok(ModelRegistryClient::new(self.channel().await?))
    }
}

/// Paths of the test CA and a role's token file, for command-line flags.
pub fn test_client_flags(role: Role) -> Vec<String> {
    let credentials = test_credentials();
    let path = |path: PathBuf| path.display().to_string();
    vec![
        "--ca-cert".into(),
        path(credentials.ca_cert.clone()),
        "--token-file".into(),
        path(credentials.token_file(role)),
    ]
}

/// The coordinator flags of a secure test cluster: TLS, the tokens file and the allowed dataset locations.
pub fn test_coordinator_security_flags() -> Vec<String> {
    let credentials = test_credentials();
    let path = |path: &PathBuf| path.display().to_string();
    let mut flags = vec![
        "--tls-cert".into(),
        path(&credentials.server_cert),
        "--tls-key".into(),
        path(&credentials.server_key),
        "--tokens-file".into(),
        path(&credentials.tokens_file),
    ];
    for prefix in test_dataset_prefixes() {
        flags.extend(["--allow-dataset".into(), prefix]);
    }
    flags
}
