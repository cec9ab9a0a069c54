//! The tower layer that authenticates and authorizes every request of a tonic server, and writes the audit log.
//!
//! ```text
//! tonic::transport::Server::builder()
//!     .layer(AuthLayer::new(authenticator, "coordinator"))
//!     .add_service(JobServiceServer::new(jobs))
//! ```
//!
//! Audit events have `target: "audit"` and the fields `service`, `principal`, `role`, `method`, `peer`,
//! `decision` (`allowed`, `unauthenticated`, `permission_denied`) and, for allowed calls, `grpc_status` (the
//! code of a handler's error, "0" when the handler answered normally). Every mutating call and every refused
//! call is logged; allowed mutating calls once their response starts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use tonic::transport::server::TcpConnectInfo;

use crate::policy::{self, AccessRule};
use crate::tokens::AuthenticationFailure;
use crate::{Authenticator, Principal};

/// The gRPC status code of an answer as far as its response headers tell: a handler's error is a trailers-only
/// response whose `grpc-status` is in the headers; a success sends its status in the trailers, later ("0" here).
/// "transport" when the service failed below gRPC, "invalid" for an unreadable header.
pub fn grpc_status_of<Body, Error>(answer: &Result<http::Response<Body>, Error>) -> String {
    match answer {
        Ok(response) => match response.headers().get("grpc-status") {
            Some(value) => value.to_str().unwrap_or("invalid").to_string(),
            None => "0".to_string(),
        },
        Err(_) => "transport".to_string(),
    }
}

/// Adds authentication, the access policy of [`crate::policy`] and the audit log to a tonic server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    service_name_for_logs: &'static str,
}

impl AuthLayer {
    /// `service_name_for_logs` names the server in audit events ("coordinator", "inference").
    pub fn new(authenticator: Authenticator, service_name_for_logs: &'static str) -> Self {
        Self {
            authenticator,
            service_name_for_logs,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
            service_name_for_logs: self.service_name_for_logs,
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
    service_name_for_logs: &'static str,
}

/// The future of [`AuthService`]: the inner service's response, or a refusal.
pub type ResponseFuture<Response, Error> =
    Pin<Box<dyn Future<Output = Result<Response, Error>> + Send + 'static>>;

/// The principal [`AuthLayer`] authenticated for this request; None on public methods and without the layer.
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for AuthService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // The clone that was polled ready serves this request; the fresh clone waits for the next one.
        let fresh_inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh_inner);

        let method = request.uri().path().to_string();
        let rule = policy::rule_for(&method);
        if rule.is_some_and(|rule| rule.public) {
            return Box::pin(inner.call(request));
        }

        let audit = AuditContext {
            service: self.service_name_for_logs,
            method,
            peer: peer_address(&request),
        };
        let principal = match self
            .authenticator
            .authenticate(bearer_token(request.headers()))
        {
            Ok(principal) => principal,
            Err(failure) => {
                audit.unauthenticated(failure);
                let message = match failure {
                    AuthenticationFailure::MissingToken => "missing bearer token",
                    AuthenticationFailure::InvalidToken => "invalid token",
                };
                return refuse(tonic::Status::unauthenticated(message));
            }
        };
        let Some(rule) = rule.filter(|rule| rule.allows(principal.role)) else {
            audit.permission_denied(&principal, rule);
            let reason = match rule {
                Some(_) => "may not call",
                None => "has no access rule, so nobody may call",
            };
            return refuse(tonic::Status::permission_denied(format!(
                "{} (role {}): {reason} {}",
                principal.name, principal.role, audit.method
            )));
        };

        let mutating = rule.mutating;
        request.extensions_mut().insert(principal.clone());
        let response = inner.call(request);
        if !mutating {
            return Box::pin(response);
        }
        Box::pin(async move {
            let result = response.await;
            audit.allowed(&principal, &grpc_status_of(&result));
            result
        })
    }
}

fn refuse<ResponseBody, Error>(
    status: tonic::Status,
) -> ResponseFuture<http::Response<ResponseBody>, Error>
where
    ResponseBody: Default + Send + 'static,
    Error: Send + 'static,
{
    let response = status.into_http();
    Box::pin(std::future::ready(Ok(response)))
}

/// The token of an `authorization: Bearer <token>` header; None when absent. A header in another scheme is
/// passed on as a token that matches nothing, so it reads as invalid rather than missing.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some("");
    };
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => Some(""),
    }
}

fn peer_address<B>(request: &http::Request<B>) -> String {
    let extensions = request.extensions();
    let tcp = extensions.get::<TcpConnectInfo>();
    let tls = extensions.get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>();
    tcp.or(tls.map(|info| info.get_ref()))
        .and_then(TcpConnectInfo::remote_addr)
        .map_or_else(|| "unknown".to_string(), |address| address.to_string())
}

/// What every audit event of one request says.
struct AuditContext {
    service: &'static str,
    method: String,
    peer: String,
}

impl AuditContext {
    fn allowed(&self, principal: &Principal, grpc_status: &str) {
        tracing::info!(
            target: "audit",
            service = self.service,
            principal = %principal.name,
            role = %principal.role,
            method = %self.method,
            peer = %self.peer,
            decision = "allowed",
            grpc_status,
            "rpc"
        );
    }

    fn unauthenticated(&self, failure: AuthenticationFailure) {
        let reason = match failure {
            AuthenticationFailure::MissingToken => "missing bearer token",
            AuthenticationFailure::InvalidToken => "invalid token",
        };
        tracing::warn!(
            target: "audit",
            service = self.service,
            principal = "",
            role = "",
            method = %self.method,
            peer = %self.peer,
            decision = "unauthenticated",
            reason,
            "rpc refused"
        );
    }

    fn permission_denied(&self, principal: &Principal, rule: Option<&AccessRule>) {
        tracing::warn!(
            target: "audit",
            service = self.service,
            principal = %principal.name,
            role = %principal.role,
            method = %self.method,
            peer = %self.peer,
            decision = "permission_denied",
            reason = if rule.is_some() { "role not allowed" } else { "no access rule" },
            "rpc refused"
        );
    }
}
