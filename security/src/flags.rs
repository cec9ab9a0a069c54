//! The security flags every binary shares, and the rules they enforce: TLS and tokens unless `--insecure`, and
//! `--insecure` only on loopback unless `--allow-insecure-remote`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::FalseyValueParser;

use crate::SecurityError;
use crate::tls::{ClientSecurity, ServerTlsFiles, check_insecure_allowed, read_token_file};

/// `--insecure` and `--allow-insecure-remote`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InsecureFlags {
    /// Allow plaintext gRPC (and, on a server without --tokens-file, no authentication: every caller may do
    /// everything). Only on loopback addresses unless --allow-insecure-remote.
    #[arg(long, env = "PLANKTON_INSECURE", value_parser = FalseyValueParser::new())]
    pub insecure: bool,
    /// Allow --insecure on a non-loopback address (traffic and tokens cross the network in clear).
    #[arg(long, env = "PLANKTON_ALLOW_INSECURE_REMOTE", value_parser = FalseyValueParser::new())]
    pub allow_insecure_remote: bool,
}

/// A server's TLS files and tokens file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerSecurityFlags {
    /// PEM certificate (chain) the server presents; reloaded when the file changes (cert-manager rotation).
    #[arg(long, env = "PLANKTON_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PLANKTON_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, env = "PLANKTON_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens of the callers, hashed: one `<name> <role> sha256:<hex>` per line (roles: admin, operator,
    /// viewer, worker, client); reloaded when the file changes.
    #[arg(long, env = "PLANKTON_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
}

/// What a server enforces, once its flags are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSecurity {
    /// `None`: plaintext.
    pub tls: Option<ServerTlsFiles>,
    /// `None`: nobody is authenticated and everyone may do everything.
    pub tokens_file: Option<PathBuf>,
}

impl ServerSecurity {
    /// What a server on `listener` needs to enforce this: the layer authenticating and authorizing every call
    /// (`service_name_for_logs` names the server in audit events) and the stream of its connections, TLS when
    /// configured. Inside a tokio runtime: certificates and tokens are reloaded in the background.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        service_name_for_logs: &'static str,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<
        (
            crate::AuthLayer,
            impl futures::Stream<Item = Result<crate::ServerIo, std::io::Error>> + Send + 'static,
        ),
        SecurityError,
    > {
        let authenticator = self.authenticator()?;
        let incoming = self.incoming(listener, shutdown).await?;
        Ok((
            crate::AuthLayer::new(authenticator, service_name_for_logs),
            incoming,
        ))
    }

    /// Who the callers are: the tokens file's principals (reloaded when it changes), or everyone an admin
    /// without one. Inside a tokio runtime.
    pub fn authenticator(&self) -> Result<crate::Authenticator, SecurityError> {
        match &self.tokens_file {
            Some(tokens_file) => crate::Authenticator::from_tokens_file(tokens_file),
            None => Ok(crate::Authenticator::Disabled),
        }
    }

    /// The connections of `listener`, TLS when configured (certificates reloaded when they change).
    pub async fn incoming(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<
        impl futures::Stream<Item = Result<crate::ServerIo, std::io::Error>> + Send + 'static,
        SecurityError,
    > {
        let tls = self
            .tls
            .clone()
            .map(crate::ReloadingServerTls::load)
            .transpose()?;
        Ok(crate::serve_incoming(listener, tls, shutdown).await)
    }
}

impl ServerSecurityFlags {
    /// Checks the flags for a server listening on `listen`: TLS needs a certificate and its key; plaintext or
    /// no tokens file needs `--insecure`, which needs a loopback address or `--allow-insecure-remote`.
    pub fn resolve(
        &self,
        listen: SocketAddr,
        insecure: &InsecureFlags,
    ) -> Result<ServerSecurity, SecurityError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(flag_error("--tls-client-ca needs --tls-cert and --tls-key"));
            }
            (None, None) => None,
            (Some(_), None) => return Err(flag_error("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(flag_error("--tls-key needs --tls-cert")),
        };
        if !insecure.insecure {
            if tls.is_none() {
                return Err(flag_error(
                    "no TLS: give --tls-cert and --tls-key (or --insecure for plaintext on loopback)",
                ));
            }
            if self.tokens_file.is_none() {
                return Err(flag_error(
                    "no --tokens-file: every caller would be allowed everything (give --insecure to accept that on loopback)",
                ));
            }
        } else {
            check_insecure_allowed(&listen.to_string(), insecure.allow_insecure_remote)?;
        }
        Ok(ServerSecurity {
            tls,
            tokens_file: self.tokens_file.clone(),
        })
    }
}

/// How a client proves itself to a server and checks the server.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientSecurityFlags {
    /// Bearer token (prefer --token-file or PLANKTON_TOKEN: a flag's value shows in the process list).
    #[arg(long, env = "PLANKTON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "PLANKTON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the server's certificate (https:// URLs).
    #[arg(long, env = "PLANKTON_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, env = "PLANKTON_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "PLANKTON_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

impl ClientSecurityFlags {
    /// Checks the flags for calls to `url`: an `http://` URL needs `--insecure` (loopback only unless
    /// `--allow-insecure-remote`); `--token` and `--token-file` exclude each other.
    pub fn resolve(
        &self,
        url: &str,
        insecure: &InsecureFlags,
    ) -> Result<ClientSecurity, SecurityError> {
        if url.trim_start().to_ascii_lowercase().starts_with("http://") {
            if !insecure.insecure {
                return Err(flag_error(&format!(
                    "{url} is plaintext: use https:// (with --ca-cert), or give --insecure"
                )));
            }
            check_insecure_allowed(url, insecure.allow_insecure_remote)?;
        }
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(flag_error("give --token or --token-file, not both"));
            }
            (Some(token), None) => Some(token.trim().to_string()),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => None,
        };
        Ok(ClientSecurity {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            token,
        })
    }
}

fn flag_error(message: &str) -> SecurityError {
    SecurityError::Flags {
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_flags() -> ServerSecurityFlags {
        ServerSecurityFlags {
            tls_cert: Some("server.pem".into()),
            tls_key: Some("server.key".into()),
            tls_client_ca: None,
            tokens_file: Some("tokens".into()),
        }
    }

    fn insecure(allow_remote: bool) -> InsecureFlags {
        InsecureFlags {
            insecure: true,
            allow_insecure_remote: allow_remote,
        }
    }

    #[test]
    fn a_server_needs_tls_and_tokens_unless_insecure_on_loopback() {
        let loopback: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let secure = InsecureFlags::default();
        assert!(
            tls_flags()
                .resolve(everywhere, &secure)
                .unwrap()
                .tls
                .is_some()
        );
        let plaintext = ServerSecurityFlags::default();
        assert!(
            plaintext
                .resolve(loopback, &secure)
                .unwrap_err()
                .to_string()
                .contains("--tls-cert")
        );
        let no_tokens = ServerSecurityFlags {
            tokens_file: None,
            ..tls_flags()
        };
        assert!(
            no_tokens
                .resolve(loopback, &secure)
                .unwrap_err()
                .to_string()
                .contains("--tokens-file")
        );
        assert_eq!(
            plaintext.resolve(loopback, &insecure(false)).unwrap(),
            ServerSecurity::default()
        );
        let refused = plaintext.resolve(everywhere, &insecure(false)).unwrap_err();
        assert!(
            refused.to_string().contains("--allow-insecure-remote"),
            "{refused}"
        );
        assert!(plaintext.resolve(everywhere, &insecure(true)).is_ok());
        let half = ServerSecurityFlags {
            tls_key: None,
            ..tls_flags()
        };
        assert!(half.resolve(loopback, &secure).is_err());
    }

    #[test]
    fn a_client_needs_https_unless_insecure_on_loopback() {
        let flags = ClientSecurityFlags {
            token: Some(" secret \n".into()),
            ..Default::default()
        };
        let secure = InsecureFlags::default();
        assert_eq!(
            flags
                .resolve("https://coordinator:7070", &secure)
                .unwrap()
                .token
                .as_deref(),
            Some("secret")
        );
        assert!(
            flags
                .resolve("http://127.0.0.1:7070", &secure)
                .unwrap_err()
                .to_string()
                .contains("--insecure")
        );
        assert!(
            flags
                .resolve("http://127.0.0.1:7070", &insecure(false))
                .is_ok()
        );
        assert!(
            flags
                .resolve("http://10.0.0.5:7070", &insecure(false))
                .is_err()
        );
        assert!(
            flags
                .resolve("http://10.0.0.5:7070", &insecure(true))
                .is_ok()
        );
        let both = ClientSecurityFlags {
            token_file: Some("token".into()),
            ..flags
        };
        assert!(both.resolve("https://c:7070", &secure).is_err());
    }
}
