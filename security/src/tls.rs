//! TLS for servers (certificates reloaded when rotated in place, optional client certificates) and clients
//! (CA, client identity, bearer token), and the rule that plaintext is for loopback only.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::SecurityError;
use crate::reload::{self, DEFAULT_POLL_INTERVAL};

/// A TLS handshake that takes longer is abandoned (and the connection closed).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto of every TLS configuration this crate builds, independent of any process-wide default.
fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------------------
// Server

/// Where a server's certificate, key and (for mutual TLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// A server TLS configuration whose certificate and key are re-read when their files change (cert-manager
/// rotates them in place): new handshakes get the new pair, a pair that does not load is logged and the
/// previous one kept. The client CA is read once.
#[derive(Debug, Clone)]
pub struct ReloadingServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl ReloadingServerTls {
    /// Loads the files and watches the certificate and key every second. Must be called inside a tokio runtime.
    pub fn load(files: ServerTlsFiles) -> Result<Self, SecurityError> {
        Self::load_with_poll_interval(files, DEFAULT_POLL_INTERVAL)
    }

    /// [`ReloadingServerTls::load`] polling every `poll_interval`.
    pub fn load_with_poll_interval(
        files: ServerTlsFiles,
        poll_interval: Duration,
    ) -> Result<Self, SecurityError> {
        let runtime = reload::current_runtime("a reloading TLS certificate")?;
        let provider = crypto_provider();
        let watched_paths = vec![files.cert.clone(), files.key.clone()];
        let contents = reload::read_files(&watched_paths)?;
        let certified_key = load_certified_key(&files.cert, &files.key, &contents, &provider)?;
        let resolver = Arc::new(ReloadingCertResolver {
            files: files.clone(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(certified_key)),
        });
        reload::spawn_reload_task(
            &runtime,
            &resolver,
            watched_paths,
            reload::digest_contents(&contents),
            poll_interval,
            |resolver: &ReloadingCertResolver, contents: &[Vec<u8>]| resolver.replace(contents),
        );

        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| SecurityError::Tls {
                subject: "server TLS versions".to_string(),
                source,
            })?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(client_ca) => {
                builder.with_client_cert_verifier(client_verifier(client_ca, provider)?)
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for servers that do their own accepting.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

fn client_verifier(
    client_ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, SecurityError> {
    let pem =
        std::fs::read(client_ca).map_err(|source| SecurityError::read_file(client_ca, source))?;
    let client_ca_error = |message: String| SecurityError::ClientCa {
        path: client_ca.to_path_buf(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for certificate in parse_certificates(client_ca, &pem)? {
        roots
            .add(certificate)
            .map_err(|error| client_ca_error(error.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| client_ca_error(error.to_string()))
}

fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            SecurityError::invalid_pem(path, format!("invalid PEM certificate: {error}"))
        })?;
    if certificates.is_empty() {
        return Err(SecurityError::invalid_pem(path, "no CERTIFICATE block"));
    }
    Ok(certificates)
}

/// The certified key of `contents` = [certificate PEM, key PEM]; the key must match the certificate.
pub(crate) fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    contents: &[Vec<u8>],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, SecurityError> {
    let [cert_pem, key_pem] = contents else {
        unreachable!("a certified key is read from two files");
    };
    let certificates = parse_certificates(cert_path, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| {
        SecurityError::invalid_pem(key_path, format!("no usable private key: {error}"))
    })?;
    CertifiedKey::from_der(certificates, key, provider).map_err(|source| SecurityError::Tls {
        subject: format!(
            "certificate {} with key {}",
            cert_path.display(),
            key_path.display()
        ),
        source,
    })
}

/// Serves the certified key last loaded from the watched files.
#[derive(Debug)]
struct ReloadingCertResolver {
    files: ServerTlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCertResolver {
    fn replace(&self, contents: &[Vec<u8>]) -> Result<(), SecurityError> {
        let certified_key =
            load_certified_key(&self.files.cert, &self.files.key, contents, &self.provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(certified_key);
        Ok(())
    }
}

impl ResolvesServerCert for ReloadingCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

/// A connection accepted by [`serve_incoming`]: plaintext or TLS over TCP.
///
/// Its connect info is the TCP one, so handlers get `request.remote_addr()` in both cases
/// (`request.peer_certs()` is not available: clients are identified by their bearer token).
#[derive(Debug)]
pub enum ServerIo {
    Plaintext(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            ServerIo::Plaintext(stream) => stream.connect_info(),
            ServerIo::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plaintext(stream) => Pin::new(stream).poll_read(context, buffer),
            ServerIo::Tls(stream) => Pin::new(stream).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plaintext(stream) => Pin::new(stream).poll_write(context, buffer),
            ServerIo::Tls(stream) => Pin::new(stream).poll_write(context, buffer),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plaintext(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            ServerIo::Tls(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plaintext(stream) => stream.is_write_vectored(),
            ServerIo::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plaintext(stream) => Pin::new(stream).poll_flush(context),
            ServerIo::Tls(stream) => Pin::new(stream).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plaintext(stream) => Pin::new(stream).poll_shutdown(context),
            ServerIo::Tls(stream) => Pin::new(stream).poll_shutdown(context),
        }
    }
}

/// The connections of `listener` for `Server::serve_with_incoming_shutdown`: plaintext when `tls` is None,
/// else TLS.
///
/// TLS handshakes run concurrently, each bounded by [`TLS_HANDSHAKE_TIMEOUT`], so a slow or silent client
/// delays nobody; a failed handshake is logged and skipped, never yielded as an error. Accepting stops when
/// `shutdown` is cancelled or the stream is dropped (which closes the listener).
pub async fn serve_incoming(
    listener: TcpListener,
    tls: Option<ReloadingServerTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<ServerIo, io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(64);
    let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config));
    tokio::spawn(accept_connections(listener, acceptor, shutdown, sender));
    ReceiverStream::new(receiver)
}

async fn accept_connections(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    sender: mpsc::Sender<Result<ServerIo, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait, go on.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = &acceptor else {
            if sender.send(Ok(ServerIo::Plaintext(stream))).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = handshake => outcome,
            };
            match outcome {
                Ok(Ok(tls_stream)) => {
                    // The server may have stopped accepting meanwhile; the connection is then just dropped.
                    let _ = sender.send(Ok(ServerIo::Tls(Box::new(tls_stream)))).await;
                }
                // rustls reports protocol failures (unknown CA, no client certificate, plaintext) as InvalidData.
                Ok(Err(error)) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(%peer, %error, "TLS handshake failed");
                }
                // Probes and port scanners connect and close.
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "connection closed during the TLS handshake")
                }
                Err(_elapsed) => {
                    tracing::debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out")
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Client

/// How a client reaches a server: the CA to verify it (https:// URLs), an optional client certificate
/// (mutual TLS) and an optional bearer token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSecurity {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub token: Option<String>,
}

impl fmt::Debug for ClientSecurity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ClientSecurity")
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A tonic interceptor that sends `authorization: Bearer <token>` with every request (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken {
    header_value: Option<MetadataValue<Ascii>>,
}

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, SecurityError> {
        let Some(token) = token else {
            return Ok(Self::default());
        };
        let header_value =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| SecurityError::InvalidToken {
                    message: "a token must be visible ASCII text".to_string(),
                })?;
        Ok(Self {
            header_value: Some(header_value),
        })
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.header_value.as_ref().map(|_| "<redacted>");
        formatter
            .debug_struct("BearerToken")
            .field("token", &token)
            .finish()
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header_value) = &self.header_value {
            request
                .metadata_mut()
                .insert("authorization", header_value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the bearer token of its [`ClientSecurity`]: `JobServiceClient::new(channel)`.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// The endpoint of `url`: TLS with `security`'s CA and client identity for https://, plaintext for http://.
/// The TLS server name is the URL's host. Tune it (timeouts, keep-alive) and finish with [`auth_channel`].
pub fn endpoint(url: &str, security: &ClientSecurity) -> Result<Endpoint, SecurityError> {
    let invalid_url = |message: &str| SecurityError::InvalidUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|error: http::uri::InvalidUri| invalid_url(&error.to_string()))?;
    let host = uri.host().ok_or_else(|| invalid_url("no host"))?;
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|error| invalid_url(&error.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {
            if security.ca_cert.is_some() || security.client_cert.is_some() {
                tracing::warn!(
                    url,
                    "TLS files are configured but the URL is http://: connecting in plaintext"
                );
            }
            Ok(endpoint)
        }
        Some("https") => {
            let tls_config = client_tls_config(
                url,
                host.trim_start_matches('[').trim_end_matches(']'),
                security,
            )?;
            endpoint
                .tls_config(tls_config)
                .map_err(|error| invalid_url(&error.to_string()))
        }
        _ => Err(invalid_url("expected an http:// or https:// URL")),
    }
}

fn client_tls_config(
    url: &str,
    host: &str,
    security: &ClientSecurity,
) -> Result<ClientTlsConfig, SecurityError> {
    let ca_path = security
        .ca_cert
        .as_ref()
        .ok_or_else(|| SecurityError::MissingCaCertificate {
            url: url.to_string(),
        })?;
    let ca_pem =
        std::fs::read(ca_path).map_err(|source| SecurityError::read_file(ca_path, source))?;
    parse_certificates(ca_path, &ca_pem)?;
    let mut tls_config = ClientTlsConfig::new()
        .domain_name(host)
        .ca_certificate(Certificate::from_pem(ca_pem));
    match (&security.client_cert, &security.client_key) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(SecurityError::IncompleteClientIdentity {
                missing: "the client key",
            });
        }
        (None, Some(_)) => {
            return Err(SecurityError::IncompleteClientIdentity {
                missing: "the client certificate",
            });
        }
        (Some(cert_path), Some(key_path)) => {
            let cert_pem = std::fs::read(cert_path)
                .map_err(|source| SecurityError::read_file(cert_path, source))?;
            let key_pem = std::fs::read(key_path)
                .map_err(|source| SecurityError::read_file(key_path, source))?;
            // Checked here so that a bad file is named now rather than failing every handshake later.
            load_certified_key(
                cert_path,
                key_path,
                &[cert_pem.clone(), key_pem.clone()],
                &crypto_provider(),
            )?;
            tls_config = tls_config.identity(Identity::from_pem(cert_pem, key_pem));
        }
    }
    Ok(tls_config)
}

/// Wraps a channel so that it sends `token` as a bearer token.
pub fn auth_channel(channel: Channel, token: Option<&str>) -> Result<AuthChannel, SecurityError> {
    Ok(InterceptedService::new(channel, BearerToken::new(token)?))
}

/// Connects to `url` (see [`endpoint`]), failing after `connect_timeout`.
pub async fn connect(
    url: &str,
    security: &ClientSecurity,
    connect_timeout: Duration,
) -> Result<AuthChannel, SecurityError> {
    let endpoint = endpoint(url, security)?.connect_timeout(connect_timeout);
    let bearer_token = BearerToken::new(security.token.as_deref())?;
    let channel = match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(connected) => connected.map_err(|source| SecurityError::Connect {
            url: url.to_string(),
            source,
        })?,
        Err(_elapsed) => {
            return Err(SecurityError::ConnectTimeout {
                url: url.to_string(),
                timeout: connect_timeout,
            });
        }
    };
    Ok(InterceptedService::new(channel, bearer_token))
}

/// A channel to `url` (see [`endpoint`]) that connects on first use and reconnects when needed.
pub fn lazy_channel(url: &str, security: &ClientSecurity) -> Result<AuthChannel, SecurityError> {
    let endpoint = endpoint(url, security)?;
    auth_channel(endpoint.connect_lazy(), security.token.as_deref())
}

// ---------------------------------------------------------------------------------------------------------
// Plaintext policy and token files

/// Plaintext gRPC is allowed only with loopback hosts (127.0.0.0/8, ::1, localhost) unless
/// `allow_insecure_remote`. `address_or_url` is a URL (an https:// one always passes), `host:port`, or a host.
/// An unspecified bind address (0.0.0.0, ::) listens on every interface and is not loopback.
pub fn check_insecure_allowed(
    address_or_url: &str,
    allow_insecure_remote: bool,
) -> Result<(), SecurityError> {
    if allow_insecure_remote {
        return Ok(());
    }
    let host = match address_or_url.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => return Ok(()),
        Some(_) => address_or_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_string)),
        None => Some(host_of_address(address_or_url).to_string()),
    };
    match host {
        Some(host) if is_loopback_host(&host) => Ok(()),
        _ => Err(SecurityError::InsecureRemote {
            address: address_or_url.to_string(),
        }),
    }
}

/// The host of `host:port`, `[v6]:port`, a bare IPv6 address or a bare host.
fn host_of_address(address: &str) -> &str {
    if let Some(bracketed) = address.strip_prefix('[') {
        return bracketed
            .split_once(']')
            .map_or(bracketed, |(host, _)| host);
    }
    if address.parse::<IpAddr>().is_ok() {
        return address;
    }
    address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host)
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The token stored in `path` (a `token-<role>` file, a mounted Secret), without surrounding whitespace.
pub fn read_token_file(path: impl AsRef<Path>) -> Result<String, SecurityError> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).map_err(|source| SecurityError::read_file(path, source))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(SecurityError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_only() {
        for allowed in [
            "127.0.0.1:50051",
            "127.1.2.3:1",
            "[::1]:50051",
            "::1",
            "localhost:50051",
            "localhost",
            "http://127.0.0.1:50051",
            "http://localhost:8080",
            "http://[::1]:50051",
            "https://coordinator.example.com:443",
        ] {
            assert!(
                check_insecure_allowed(allowed, false).is_ok(),
                "{allowed} should be allowed"
            );
        }
        for refused in [
            "0.0.0.0:50051",
            "[::]:50051",
            "::",
            "10.0.0.5:50051",
            "coordinator:50051",
            "http://coordinator:50051",
            "http://0.0.0.0:50051",
            "http://localhost.evil.com:1",
        ] {
            let error = check_insecure_allowed(refused, false).expect_err(refused);
            assert!(
                error.to_string().contains("--allow-insecure-remote"),
                "{error}"
            );
            assert!(check_insecure_allowed(refused, true).is_ok());
        }
    }

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token-admin");
        std::fs::write(&path, "  abc123\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "abc123");
        std::fs::write(&path, "\n").unwrap();
        let error = read_token_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("token-admin") && error.contains("empty"),
            "{error}"
        );
        let missing = read_token_file(directory.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn endpoints_check_scheme_ca_and_identity() {
        let plain = ClientSecurity::default();
        assert!(endpoint("http://127.0.0.1:1", &plain).is_ok());
        assert!(matches!(
            endpoint("https://127.0.0.1:1", &plain),
            Err(SecurityError::MissingCaCertificate { .. })
        ));
        assert!(matches!(
            endpoint("ftp://127.0.0.1:1", &plain),
            Err(SecurityError::InvalidUrl { .. })
        ));
        let half_identity = ClientSecurity {
            client_cert: Some("c.pem".into()),
            ..ClientSecurity::default()
        };
        assert!(endpoint("http://127.0.0.1:1", &half_identity).is_ok());
        assert!(BearerToken::new(Some("bad\ntoken")).is_err());
        let debug = format!(
            "{:?}",
            ClientSecurity {
                token: Some("secret".into()),
                ..ClientSecurity::default()
            }
        );
        assert!(!debug.contains("secret"), "{debug}");
    }
}
