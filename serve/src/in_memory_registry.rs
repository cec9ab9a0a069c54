//! An in-memory `ModelRegistry` server: the test and benchmark double of the coordinator's registry.

use std::sync::{Arc, Mutex, MutexGuard};

use plankton_proto::v1::model_registry_server::{ModelRegistry, ModelRegistryServer};
use plankton_proto::v1::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, ModelVersion, PromoteModelRequest,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Registered versions and aliases, shared by every clone.
#[derive(Clone, Debug, Default)]
pub struct InMemoryRegistry {
    versions: Arc<Mutex<Vec<ModelVersion>>>,
}

impl InMemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ModelVersion>> {
        // A poisoned lock only means a test thread panicked; the list itself is consistent.
        self.versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds (or replaces) `model_version`, keyed by its name and version.
    pub fn register(&self, model_version: ModelVersion) {
        let mut versions = self.lock();
        versions.retain(|known| {
            !(known.name == model_version.name && known.version == model_version.version)
        });
        versions.push(model_version);
    }

    /// Points `alias` of `name` at `version` (moving it off any other version).
    pub fn promote(&self, name: &str, version: u32, alias: &str) -> Result<ModelVersion, Status> {
        let mut versions = self.lock();
        if !versions
            .iter()
            .any(|known| known.name == name && known.version == version)
        {
            return Err(Status::not_found(format!(
                "model {name} has no version {version}"
            )));
        }
        let mut promoted = None;
        for known in versions.iter_mut().filter(|known| known.name == name) {
            known.aliases.retain(|existing| existing != alias);
            if known.version == version {
                known.aliases.push(alias.to_string());
                promoted = Some(known.clone());
            }
        }
        promoted.ok_or_else(|| Status::internal("promoted version vanished"))
    }

    fn find(&self, request: &GetModelRequest) -> Result<ModelVersion, Status> {
        let versions = self.lock();
        let mut candidates = versions.iter().filter(|known| known.name == request.name);
        let found = if request.version > 0 {
            candidates.find(|known| known.version == request.version)
        } else if !request.alias.is_empty() {
            candidates.find(|known| known.aliases.contains(&request.alias))
        } else {
            candidates.max_by_key(|known| known.version)
        };
        found.cloned().ok_or_else(|| {
            Status::not_found(format!(
                "no model {:?} with version {} / alias {:?}",
                request.name, request.version, request.alias
            ))
        })
    }

    /// Serves the registry on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(ModelRegistryServer::new(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
    }
}

#[tonic::async_trait]
impl ModelRegistry for InMemoryRegistry {
    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let name = request.into_inner().name;
        let models = self
            .lock()
            .iter()
            .filter(|known| name.is_empty() || known.name == name)
            .cloned()
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        self.find(request.get_ref()).map(Response::new)
    }

    async fn promote_model(
        &self,
        request: Request<PromoteModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let request = request.into_inner();
        self.promote(&request.name, request.version, &request.alias)
            .map(Response::new)
    }
}
