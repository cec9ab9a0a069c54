//! Security of every plankton-cluster service: TLS with certificate reload, bearer tokens mapped to roles, the
//! access policy of every RPC, and the audit log of mutating and refused calls.
//!
//! - [`roles`]: [`Role`] and the authenticated [`Principal`].
//! - [`tokens`]: the hashed tokens file ([`TokenStore`], reloaded when it changes) and the [`Authenticator`].
//! - [`policy`]: the [`AccessRule`] of every RPC; a method without a rule is refused.
//! - [`layer`]: [`AuthLayer`], the tower layer enforcing both on a tonic server and writing the audit log.
//! - [`tls`]: [`ReloadingServerTls`] and [`serve_incoming`] for servers; [`connect`] and [`AuthChannel`] for
//!   clients; [`check_insecure_allowed`], the loopback-only rule for plaintext.
//! - [`demo_pki`]: a CA, certificates and a token per role for a secure demo cluster on one machine.
#![forbid(unsafe_code)]

pub mod demo_pki;
mod error;
pub mod layer;
pub mod policy;
mod reload;
pub mod roles;
pub mod tls;
pub mod tokens;

pub use demo_pki::{DemoCredentials, ensure_demo_credentials};
pub use error::SecurityError;
pub use layer::{AuthLayer, principal};
pub use policy::{AccessRule, all_rules, rule_for};
pub use reload::DEFAULT_POLL_INTERVAL;
pub use roles::{Principal, Role};
pub use tls::{
    AuthChannel, BearerToken, ClientSecurity, ReloadingServerTls, ServerIo, ServerTlsFiles,
    check_insecure_allowed, connect, endpoint, lazy_channel, read_token_file, serve_incoming,
};
pub use tokens::{Authenticator, TokenStore, generate_token, hash_token};
