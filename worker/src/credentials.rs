//! What a worker proves on every call to the coordinator: its bearer token (role `worker`) and, once
//! registered, the session token of its registration, which binds its reports to the places it was given.

use std::sync::{Arc, RwLock};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use plankton_proto::WORKER_SESSION_METADATA;
use plankton_proto::v1::worker_control_client::WorkerControlClient;

/// The worker's client of the coordinator.
pub(crate) type CoordinatorClient =
    WorkerControlClient<InterceptedService<Channel, WorkerCredentials>>;

/// A tonic interceptor adding the worker's credentials to every call. Clones share the session, so a
/// registration (again, after a coordinator restart) updates every client at once.
#[derive(Clone)]
pub(crate) struct WorkerCredentials {
    bearer: Option<MetadataValue<Ascii>>,
    session: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl WorkerCredentials {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let bearer = token
            .map(|token| format!("Bearer {token}").parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the worker token must be visible ASCII text"))?;
        Ok(Self {
            bearer,
            session: Arc::default(),
        })
    }

    /// Adopts the session token a registration returned.
    pub fn set_session(&self, session_token: &str) {
        let value = session_token.parse().ok();
        *self
            .session
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }
}

impl tonic::service::Interceptor for WorkerCredentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        let session = self
            .session
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(session) = session {
            request
                .metadata_mut()
                .insert(WORKER_SESSION_METADATA, session);
        }
        Ok(request)
    }
}
