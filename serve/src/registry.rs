//! Resolves model references through the coordinator's `ModelRegistry` service.

use plankton_proto::v1::model_registry_client::ModelRegistryClient;
use plankton_proto::v1::{GetModelRequest, ModelVersion};
use plankton_security::{AuthChannel, ClientSecurity};

use crate::error::{ServeError, ServeResult};
use crate::model_ref::{ModelReference, VersionSelector};

/// A gRPC client of the model registry (connects lazily, reconnects by itself).
#[derive(Clone, Debug)]
pub struct RegistryClient {
    endpoint: String,
    client: ModelRegistryClient<AuthChannel>,
}

impl RegistryClient {
    /// A client of the registry at `endpoint` (e.g. `https://coordinator:7070`, with `security`'s CA and a
    /// `viewer` token); nothing is dialled yet.
    pub fn connect_lazy(endpoint: &str, security: &ClientSecurity) -> ServeResult<Self> {
        let registry_error = |message: String| ServeError::Registry {
            endpoint: endpoint.to_string(),
            message,
        };
        let channel = plankton_security::endpoint(endpoint, security)
            .map_err(|error| registry_error(error.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .connect_lazy();
        let channel = plankton_security::tls::auth_channel(channel, security.token.as_deref())
            .map_err(|error| registry_error(error.to_string()))?;
        Ok(RegistryClient {
            endpoint: endpoint.to_string(),
            client: ModelRegistryClient::new(channel),
        })
    }

    /// The registry entry `reference` points at now.
    pub async fn resolve(&self, reference: &ModelReference) -> ServeResult<ModelVersion> {
        let (version, alias) = match &reference.selector {
            VersionSelector::Latest => (0, String::new()),
            VersionSelector::Version(version) => (*version, String::new()),
            VersionSelector::Alias(alias) => (0, alias.clone()),
        };
        let request = GetModelRequest {
            name: reference.name.clone(),
            version,
            alias,
        };
        let mut client = self.client.clone();
        match client.get_model(request).await {
            Ok(response) => {
                let model_version = response.into_inner();
                if model_version.name != reference.name || model_version.version == 0 {
                    return Err(ServeError::Registry {
                        endpoint: self.endpoint.clone(),
                        message: format!(
                            "asked for {reference}, answered {}:{}",
                            model_version.name, model_version.version
                        ),
                    });
                }
                Ok(model_version)
            }
            Err(status) if status.code() == tonic::Code::NotFound => Err(
                ServeError::ModelNotFound(format!("{reference}: {}", status.message())),
            ),
            Err(status) if status.code() == tonic::Code::InvalidArgument => Err(
                ServeError::InvalidRequest(format!("model {reference}: {}", status.message())),
            ),
            Err(status) => Err(ServeError::Registry {
                endpoint: self.endpoint.clone(),
                message: format!(
                    "GetModel({reference}) failed: {:?}: {}",
                    status.code(),
                    status.message()
                ),
            }),
        }
    }
}
