//! Security of every plankton-cluster service: TLS with certificate reload, bearer tokens mapped to roles, the
//! access policy of every RPC, and the audit log of mutating and refused calls.
//!
//! - [`roles`]: [`Role`] and the authenticated [`Principal`].
//! - [`tokens`]: the hashed tokens file ([`TokenStore`], reloaded when it changes) and the [`Authenticator`].
//! - [`policy`]: the [`AccessRule`] of every RPC; a method without a rule is refused.
//! - [`layer`]: [`AuthLayer`], the tower layer enforcing both on a tonic server and writing the audit log.
//! - [`tls`]: [`ReloadingServerTls`] and [`serve_incoming`] for servers; [`connect`] and [`AuthChannel`] for
//!   clients; [`check_insecure_allowed`], the loopback-only rule for plaintext.
//! - [`flags`]: the security flags every binary shares and their rules (TLS and tokens unless `--insecure`).
//! - [`demo_pki`]: a CA, certificates and a token per role for a secure demo cluster on one machine.
//!
//! A server and a client:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use plankton_proto::v1::ListModelsRequest;
//! use plankton_proto::v1::model_registry_client::ModelRegistryClient;
//! use plankton_proto::v1::model_registry_server::{ModelRegistry, ModelRegistryServer};
//! use plankton_security::{
//!     AuthLayer, Authenticator, ClientSecurity, ReloadingServerTls, ServerTlsFiles, connect, serve_incoming,
//! };
//! use tokio_util::sync::CancellationToken;
//!
//! async fn serve(registry: impl ModelRegistry, shutdown: CancellationToken) -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
//!     let files = ServerTlsFiles { cert: "tls.crt".into(), key: "tls.key".into(), client_ca: None };
//!     let incoming = serve_incoming(listener, Some(ReloadingServerTls::load(files)?), shutdown.clone()).await;
//!     tonic::transport::Server::builder()
//!         .layer(AuthLayer::new(Authenticator::from_tokens_file("/etc/plankton/tokens")?, "coordinator"))
//!         .add_service(ModelRegistryServer::new(registry))
//!         .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
//!         .await?;
//!     Ok(())
//! }
//!
//! async fn list_models() -> Result<(), Box<dyn std::error::Error>> {
//!     let security = ClientSecurity {
//!         ca_cert: Some("ca.crt".into()),
//!         token: Some(plankton_security::read_token_file("token")?),
//!         ..ClientSecurity::default()
//!     };
//!     let channel = connect("https://coordinator:50051", &security, Duration::from_secs(10)).await?;
//!     let models = ModelRegistryClient::new(channel).list_models(ListModelsRequest::default()).await?;
//!     println!("{:?}", models.into_inner());
//!     Ok(())
//! }
//! ```
#![forbid(unsafe_code)]

pub mod demo_pki;
mod error;
pub mod flags;
pub mod layer;
pub mod policy;
mod reload;
pub mod roles;
pub mod tls;
pub mod tokens;

pub use demo_pki::{DemoCredentials, ensure_demo_credentials};
pub use error::SecurityError;
pub use flags::{ClientSecurityFlags, InsecureFlags, ServerSecurity, ServerSecurityFlags};
pub use layer::{AuthLayer, principal};
pub use policy::{AccessRule, all_rules, rule_for};
pub use reload::DEFAULT_POLL_INTERVAL;
pub use roles::{Principal, Role};
pub use tls::{
    AuthChannel, BearerToken, ClientSecurity, ReloadingServerTls, ServerIo, ServerTlsFiles,
    check_insecure_allowed, connect, endpoint, lazy_channel, read_token_file, serve_incoming,
};
pub use tokens::{Authenticator, TokenStore, generate_token, hash_token};
