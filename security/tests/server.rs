//! The auth layer, TLS with certificate reload, and mutual TLS against real tonic servers on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plankton_proto::v1::model_registry_client::ModelRegistryClient;
use plankton_proto::v1::model_registry_server::{ModelRegistry, ModelRegistryServer};
use plankton_proto::v1::peer_service_client::PeerServiceClient;
use plankton_proto::v1::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, ModelVersion, PeerHello,
    PromoteModelRequest,
};
use plankton_security::demo_pki::reissue_demo_server_certificate;
use plankton_security::{
    AuthChannel, AuthLayer, Authenticator, ClientSecurity, DemoCredentials, ReloadingServerTls,
    Role, ServerTlsFiles, connect, ensure_demo_credentials, principal, serve_incoming,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Answers every call with a model version naming the caller's principal (`name`) and peer address (`job_id`);
/// a promotion to the alias "fail" fails.
struct EchoRegistry;

fn echo_caller<T>(request: &Request<T>) -> ModelVersion {
    ModelVersion {
        name: principal(request)
            .map(|principal| principal.name.clone())
            .unwrap_or_default(),
        job_id: request
            .remote_addr()
            .map(|address| address.to_string())
            .unwrap_or_default(),
        ..ModelVersion::default()
    }
}

#[tonic::async_trait]
impl ModelRegistry for EchoRegistry {
    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: vec![echo_caller(&request)],
        }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        Ok(Response::new(echo_caller(&request)))
    }

    async fn promote_model(
        &self,
        request: Request<PromoteModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        if request.get_ref().alias == "fail" {
            return Err(Status::failed_precondition("no such version"));
        }
        Ok(Response::new(echo_caller(&request)))
    }
}

struct TestServer {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(authenticator: Authenticator, tls: Option<ReloadingServerTls>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let incoming = serve_incoming(listener, tls, shutdown.clone()).await;
        let (_health_reporter, health_service) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder()
            .layer(AuthLayer::new(authenticator, "test-server"))
            .add_service(health_service)
            .add_service(ModelRegistryServer::new(EchoRegistry));
        let signal = shutdown.clone();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, signal.cancelled_owned())
                .await
        });
        Self {
            address,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn with_token(token: Option<&str>) -> ClientSecurity {
    ClientSecurity {
        token: token.map(str::to_string),
        ..ClientSecurity::default()
    }
}

async fn registry(url: &str, security: &ClientSecurity) -> ModelRegistryClient<AuthChannel> {
    ModelRegistryClient::new(connect(url, security, TIMEOUT).await.unwrap())
}

fn promotion(alias: &str) -> PromoteModelRequest {
    PromoteModelRequest {
        name: "m".into(),
        version: 1,
        alias: alias.into(),
    }
}

/// Log lines written while the test runs (the test runtime is single-threaded, so a thread-local subscriber
/// sees the server's events).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn audit_lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|line| line.contains(" audit:"))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn the_layer_authenticates_authorizes_and_audits() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default_subscriber = tracing::subscriber::set_default(subscriber);

    let credentials_dir = tempfile::tempdir().unwrap();
    let credentials = ensure_demo_credentials(credentials_dir.path()).unwrap();
    let authenticator = Authenticator::from_tokens_file(&credentials.tokens_file).unwrap();
    let server = TestServer::start(authenticator, None).await;
    let url = format!("http://{}", server.address);
    let token = |role| Some(credentials.token(role));

    let status = registry(&url, &with_token(None))
        .await
        .list_models(ListModelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "missing bearer token")
    );
    let status = registry(&url, &with_token(Some("wrong")))
        .await
        .list_models(ListModelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "invalid token")
    );

    let mut viewer = registry(&url, &with_token(token(Role::Viewer))).await;
    let listed = viewer
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.models[0].name, "demo-viewer",
        "the handler sees the principal"
    );
    assert!(
        listed.models[0].job_id.starts_with("127.0.0.1:"),
        "the handler sees the peer address"
    );
    let status = viewer
        .promote_model(promotion("production"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    for expected in [
        "demo-viewer",
        "viewer",
        "/plankton.v1.ModelRegistry/PromoteModel",
    ] {
        assert!(
            status.message().contains(expected),
            "{:?} should name {expected}",
            status.message()
        );
    }

    let mut operator = registry(&url, &with_token(token(Role::Operator))).await;
    let promoted = operator
        .promote_model(promotion("production"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.name, "demo-operator");
    let failed = operator.promote_model(promotion("fail")).await.unwrap_err();
    assert_eq!(failed.code(), Code::FailedPrecondition);

    let mut inference_client = registry(&url, &with_token(token(Role::Client))).await;
    let status = inference_client
        .get_model(GetModelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A method without an access rule: refused even to an admin, and unauthenticated without a token.
    let admin_channel = connect(&url, &with_token(token(Role::Admin)), TIMEOUT)
        .await
        .unwrap();
    let status = PeerServiceClient::new(admin_channel)
        .hello(PeerHello::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let anonymous_channel = connect(&url, &with_token(None), TIMEOUT).await.unwrap();
    let status = PeerServiceClient::new(anonymous_channel)
        .hello(PeerHello::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Health checks need no token (Kubernetes probes).
    let health_channel = connect(&url, &with_token(None), TIMEOUT).await.unwrap();
    let health = HealthClient::new(health_channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    server.stop().await;

    let audit = logs.audit_lines();
    let count = |needles: &[&str]| {
        audit
            .iter()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .count()
    };
    assert_eq!(count(&["decision=\"unauthenticated\""]), 3, "{audit:#?}");
    assert_eq!(
        count(&[
            "decision=\"permission_denied\"",
            "principal=demo-viewer",
            "PromoteModel"
        ]),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        count(&[
            "decision=\"permission_denied\"",
            "principal=demo-client",
            "GetModel"
        ]),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        count(&[
            "decision=\"permission_denied\"",
            "principal=demo-admin",
            "PeerService"
        ]),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        count(&[
            "decision=\"allowed\"",
            "principal=demo-operator",
            "grpc_status=\"0\""
        ]),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        count(&[
            "decision=\"allowed\"",
            "principal=demo-operator",
            "grpc_status=\"9\""
        ]),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        count(&["decision=\"allowed\""]),
        2,
        "reads are not audited: {audit:#?}"
    );
    assert!(
        audit.iter().all(|line| line.contains("peer=127.0.0.1:")),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn without_tokens_every_caller_is_an_anonymous_admin() {
    let server = TestServer::start(Authenticator::Disabled, None).await;
    let url = format!("http://{}", server.address);
    let promoted = registry(&url, &with_token(None))
        .await
        .promote_model(promotion("production"))
        .await
        .unwrap();
    assert_eq!(promoted.into_inner().name, "anonymous");
    server.stop().await;
}

/// The DER of the certificate a TLS server at `address` presents, by a raw rustls handshake trusting `ca`.
async fn served_certificate(address: SocketAddr, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn certificate_file_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn tls_client(credentials: &DemoCredentials, role: Role) -> ClientSecurity {
    ClientSecurity {
        ca_cert: Some(credentials.ca_cert.clone()),
        token: Some(credentials.token(role).to_string()),
        ..ClientSecurity::default()
    }
}

#[tokio::test]
async fn tls_serves_rotated_certificates_without_restart_and_refuses_plaintext() {
    let credentials_dir = tempfile::tempdir().unwrap();
    let credentials = ensure_demo_credentials(credentials_dir.path()).unwrap();
    let tls = ReloadingServerTls::load_with_poll_interval(
        credentials.server_tls_files(false),
        Duration::from_millis(50),
    )
    .unwrap();
    let server = TestServer::start(
        Authenticator::from_tokens_file(&credentials.tokens_file).unwrap(),
        Some(tls),
    )
    .await;
    let port = server.address.port();

    // A client that connects and says nothing delays no one.
    let _silent_client = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();

    let url = format!("https://localhost:{port}");
    let mut viewer = registry(&url, &tls_client(&credentials, Role::Viewer)).await;
    let listed = viewer
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.models[0].name, "demo-viewer");
    assert!(
        listed.models[0].job_id.starts_with("127.0.0.1:"),
        "TLS handlers see the peer address"
    );
    let by_ip = registry(
        &format!("https://127.0.0.1:{port}"),
        &tls_client(&credentials, Role::Viewer),
    )
    .await;
    by_ip
        .clone()
        .list_models(ListModelsRequest::default())
        .await
        .unwrap();

    let plaintext = async {
        let channel = connect(
            &format!("http://127.0.0.1:{port}"),
            &with_token(Some(credentials.token(Role::Admin))),
            TIMEOUT,
        )
        .await
        .ok()?;
        ModelRegistryClient::new(channel)
            .list_models(ListModelsRequest::default())
            .await
            .ok()
    };
    assert!(
        plaintext.await.is_none(),
        "a plaintext client must not reach a TLS server"
    );

    let first_certificate = certificate_file_der(&credentials.server_cert);
    assert_eq!(
        served_certificate(server.address, &credentials.ca_cert).await,
        first_certificate
    );

    reissue_demo_server_certificate(credentials_dir.path()).unwrap();
    let second_certificate = certificate_file_der(&credentials.server_cert);
    assert_ne!(first_certificate, second_certificate);
    let mut served = Vec::new();
    for _ in 0..100 {
        served = served_certificate(server.address, &credentials.ca_cert).await;
        if served == second_certificate {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served, second_certificate,
        "new connections should get the rotated certificate"
    );
    // The connection made before the rotation goes on; new ones verify the new certificate.
    viewer
        .list_models(ListModelsRequest::default())
        .await
        .unwrap();
    registry(&url, &tls_client(&credentials, Role::Viewer))
        .await
        .list_models(ListModelsRequest::default())
        .await
        .unwrap();

    // A broken rotation keeps the certificate in use.
    std::fs::write(&credentials.server_cert, "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        served_certificate(server.address, &credentials.ca_cert).await,
        second_certificate
    );

    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_client_ca() {
    let credentials_dir = tempfile::tempdir().unwrap();
    let credentials = ensure_demo_credentials(credentials_dir.path()).unwrap();
    let files: ServerTlsFiles = credentials.server_tls_files(true);
    assert_eq!(files.client_ca.as_ref(), Some(&credentials.ca_cert));
    let tls = ReloadingServerTls::load(files).unwrap();
    let server = TestServer::start(
        Authenticator::from_tokens_file(&credentials.tokens_file).unwrap(),
        Some(tls),
    )
    .await;
    let url = format!("https://localhost:{}", server.address.port());

    let without_certificate = async {
        let channel = connect(&url, &tls_client(&credentials, Role::Viewer), TIMEOUT)
            .await
            .ok()?;
        ModelRegistryClient::new(channel)
            .list_models(ListModelsRequest::default())
            .await
            .ok()
    };
    assert!(
        without_certificate.await.is_none(),
        "a client without certificate must be refused"
    );

    let mut with_certificate = registry(&url, &credentials.client_security(Role::Viewer)).await;
    let listed = with_certificate
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.models[0].name, "demo-viewer");

    server.stop().await;
}
