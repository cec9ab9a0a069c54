//! Ring TLS: a self-signed certificate per listener, a client that accepts any certificate (the HMAC proofs
//! of the handshake authenticate, bound to the session by [`TlsSession::channel_binding`]), and a TLS session
//! over a blocking or non-blocking `TcpStream`.
//!
//! Only TLS 1.3 and only the ring crypto provider, named explicitly (never a process-wide default).

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
};

use crate::wire::FrameReader;

/// Name in every listener's certificate and in every client's SNI; nothing checks it.
const RING_SERVER_NAME: &str = "plankton-ring";

/// Label of the TLS exporter whose output binds the handshake proofs to the session (RFC 8446 section 7.5).
const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-plankton-ring";

/// Bytes of exported keying material in a channel binding.
pub(crate) const CHANNEL_BINDING_BYTES: usize = 32;

/// Read buffer in front of the socket: rustls asks for at most 4 KiB per `read_tls`, which would cost several
/// system calls per 16 KiB record on the data path.
const SOCKET_READ_BUFFER_BYTES: usize = 64 * 1024;

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_setup_error(context: &str, error: impl std::fmt::Display) -> String {
    format!("{context}: {error}")
}

/// The server side of a listener: a fresh self-signed certificate (ECDSA P-256), made once at bind.
pub(crate) fn server_config() -> Result<Arc<ServerConfig>, String> {
    let certified = rcgen::generate_simple_self_signed(vec![RING_SERVER_NAME.to_string()])
        .map_err(|error| tls_setup_error("generating the ring listener's certificate", error))?;
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| tls_setup_error("configuring ring TLS", error))?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], private_key)
        .map_err(|error| tls_setup_error("loading the ring listener's certificate", error))?;
    // Ring connections are never resumed; tickets would only be bytes the connecting side must read.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of a ring: any server certificate is accepted (see [`AnyServerCertificate`]).
pub(crate) fn client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = crypto_provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| tls_setup_error("configuring ring TLS", error))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts whatever certificate a ring peer presents: it is self-signed and unknown in advance. The peer is
/// authenticated by its HMAC proof over the channel binding instead, and a man in the middle with its own
/// certificate gets a different binding. The handshake signatures are still verified, so the session keys
/// belong to whoever holds the presented certificate's key.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_io_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// One ring connection's TLS session and its socket. Works on a non-blocking socket (the accepting side's
/// handshake), a blocking one with a short read timeout (the connecting side's handshake) and a blocking one
/// with the ring's io timeout (the data path): a `WouldBlock` or `TimedOut` from the socket loses nothing and
/// the call can be repeated.
pub(crate) struct TlsSession {
    connection: rustls::Connection,
    /// The socket, read through a buffer; written through `get_ref()`.
    incoming: BufReader<TcpStream>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsSession")
            .field("socket", self.incoming.get_ref())
            .field("handshaking", &self.connection.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    /// The accepting side of a connection.
    pub(crate) fn server(socket: TcpStream, config: &Arc<ServerConfig>) -> io::Result<Self> {
        let connection = ServerConnection::new(config.clone()).map_err(tls_io_error)?;
        Ok(Self::over(socket, connection.into()))
    }

    /// The connecting side of a connection.
    pub(crate) fn client(socket: TcpStream, config: &Arc<ClientConfig>) -> io::Result<Self> {
        let server_name =
            ServerName::try_from(RING_SERVER_NAME).expect("the ring server name is a DNS name");
        let connection =
            ClientConnection::new(config.clone(), server_name).map_err(tls_io_error)?;
        Ok(Self::over(socket, connection.into()))
    }

    fn over(socket: TcpStream, connection: rustls::Connection) -> Self {
        TlsSession {
            connection,
            incoming: BufReader::with_capacity(SOCKET_READ_BUFFER_BYTES, socket),
        }
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        self.incoming.get_ref()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// 32 bytes of the session's exported keying material: the same on both ends of this session, different
    /// on any other.
    pub(crate) fn channel_binding(&self) -> io::Result<[u8; CHANNEL_BINDING_BYTES]> {
        self.connection
            .export_keying_material([0u8; CHANNEL_BINDING_BYTES], CHANNEL_BINDING_LABEL, None)
            .map_err(tls_io_error)
    }

    /// Writes every pending TLS record. A `WouldBlock` leaves the rest pending (a non-blocking socket); a
    /// `TimedOut` is an error like any other.
    fn flush_records(&mut self) -> io::Result<()> {
        while self.connection.wants_write() {
            let mut socket: &TcpStream = self.incoming.get_ref();
            match self.connection.write_tls(&mut socket) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the socket took no TLS bytes",
                    ));
                }
                Ok(_) => {}
                Err(write_error) if write_error.kind() == io::ErrorKind::Interrupted => {}
                Err(write_error) => return Err(write_error),
            }
        }
        Ok(())
    }

    /// Reads what the socket has (up to its read timeout) and processes the records, writing any answer
    /// (handshake messages, alerts). End of stream is recorded for the plaintext reader to report.
    fn receive_records(&mut self) -> io::Result<()> {
        loop {
            match self.connection.read_tls(&mut self.incoming) {
                Ok(_) => break,
                Err(read_error) if read_error.kind() == io::ErrorKind::Interrupted => {}
                Err(read_error) => return Err(read_error),
            }
        }
        let processed = self.connection.process_new_packets();
        // An alert about a failure goes out before the error is reported (best effort).
        let flushed = self.flush_records_unless_blocked();
        processed.map_err(tls_io_error)?;
        flushed
    }

    fn flush_records_unless_blocked(&mut self) -> io::Result<()> {
        match self.flush_records() {
            Err(write_error) if write_error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Advances the handshake and returns the next handshake frame once it is complete: `None` while the
    /// socket has nothing more (non-blocking, or its read timeout passed).
    pub(crate) fn poll_frame<M: prost::Message + Default>(
        &mut self,
        reader: &mut FrameReader,
    ) -> io::Result<Option<M>> {
        loop {
            self.flush_records_unless_blocked()?;
            if let Some(message) = reader.poll(&mut self.connection.reader())? {
                return Ok(Some(message));
            }
            match self.receive_records() {
                Ok(()) => {}
                Err(read_error)
                    if matches!(
                        read_error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(read_error) => return Err(read_error),
            }
        }
    }

    /// Queues `bytes` and writes them (and anything pending) to the socket, blocking up to its write timeout.
    /// During the handshake the bytes wait in rustls until the session keys exist.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let accepted = self.connection.writer().write(bytes)?;
            if accepted == 0 && !self.connection.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the TLS session buffers no more plaintext",
                ));
            }
            bytes = &bytes[accepted..];
            self.flush_records()?;
        }
        self.flush_records()
    }

    /// Fills `destination` with plaintext, reading records from the (blocking) socket as needed.
    pub(crate) fn read_exact(&mut self, mut destination: &mut [u8]) -> io::Result<()> {
        while !destination.is_empty() {
            match self.connection.reader().read(destination) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the TLS session",
                    ));
                }
                Ok(read) => destination = &mut destination[read..],
                Err(read_error) if read_error.kind() == io::ErrorKind::WouldBlock => {
                    self.receive_records()?;
                }
                Err(read_error) => return Err(read_error),
            }
        }
        Ok(())
    }
}
