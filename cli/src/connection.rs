//! The servers `planktonctl` talks to, and how it reaches them: TLS with the operator's CA, a bearer token.

use plankton_security::{AuthChannel, ClientSecurity};

/// A server the CLI calls: its URL and the credentials for it.
#[derive(Clone, Debug)]
pub struct Server {
    pub url: String,
    pub security: ClientSecurity,
}

/// A server could not be reached (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the {role} at {url}: {reason} ({hint})")]
pub struct Unreachable {
    pub role: &'static str,
    pub url: String,
    pub reason: String,
    pub hint: &'static str,
}

impl Server {
    /// Connects (5 s bound); `role` and `hint` name the server and the flag that sets it in the error.
    pub async fn channel(
        &self,
        role: &'static str,
        hint: &'static str,
    ) -> anyhow::Result<AuthChannel> {
        let endpoint = plankton_security::endpoint(&self.url, &self.security)?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|error| Unreachable {
            role,
            url: self.url.clone(),
            reason: source_chain(&error),
            hint,
        })?;
        Ok(plankton_security::tls::auth_channel(
            channel,
            self.security.token.as_deref(),
        )?)
    }

    /// A channel to the coordinator.
    pub async fn coordinator_channel(&self) -> anyhow::Result<AuthChannel> {
        self.channel(
            "coordinator",
            "is it running? set --coordinator or PLANKTON_COORDINATOR",
        )
        .await
    }
}

/// An error and its causes, on one line.
pub fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
