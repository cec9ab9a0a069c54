//! The peer listener a worker binds at start-up, and both sides of the ring handshake (protocol v3: `PeerHello`,
//! `PeerHelloAck`, `PeerProof`, optionally inside TLS; see proto/plankton/v1/peer.proto).
//!
//! Every wait here is bounded by the formation deadline and polls the [`RingAbort`] (and the other half of the
//! formation) at least every [`ABORT_POLL_INTERVAL`]: a worker may wait minutes for peers still loading data,
//! and the coordinator ends that wait by aborting when a member is lost. The accepting side runs the
//! handshakes of all pending connections concurrently (non-blocking reads, one handshake deadline per
//! connection covering TLS, hello and proof), so a connection that sends nothing, garbage or a wrong proof
//! cannot delay the real peer.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plankton_proto::v1::{PeerHello, PeerHelloAck, PeerProof};
use rustls::{ClientConfig, ServerConfig};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, warn};

use crate::abort::RingAbort;
use crate::error::{CollectiveError, Result};
use crate::security::{
    HandshakeTranscript, MIN_NONCE_BYTES, ProofDirection, RingSecurity, fresh_nonce,
};
use crate::tls::{self, TlsSession};
use crate::transport::{LinkStream, Transport};
use crate::wire::FrameReader;

/// Version carried in `PeerHello.protocol_version`; bumped when the handshake or the data path changes
/// (2: hellos and acks carry the ring generation; 3: nonces, HMAC proofs of the ring secret, optional TLS).
pub(crate) const PEER_PROTOCOL_VERSION: u32 = 3;

/// Socket buffer size forced on every ring connection (each direction) when
/// `PLANKTON_RING_SOCKET_BUFFER_BYTES` is set; by default (0) Linux's automatic tuning sizes them, which grows
/// them up to `net.ipv4.tcp_rmem`/`tcp_wmem` max (typically 4-32 MiB), larger than an explicit `SO_RCVBUF` may
/// be (`net.core.rmem_max`), and measured faster on 64 MiB buffers (see bench/src/bin/allreduce_bench.rs).
const DEFAULT_SOCKET_BUFFER_BYTES: usize = 0;

fn socket_buffer_bytes() -> Option<usize> {
    let configured = std::env::var("PLANKTON_RING_SOCKET_BUFFER_BYTES")
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_SOCKET_BUFFER_BYTES);
    (configured > 0).then_some(configured)
}

/// How long the accept loop sleeps when no connection is pending or progressing.
const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Longest a formation wait goes without checking the abort: a connect attempt, a slice of waiting for an ack.
pub(crate) const ABORT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Longest one connect attempt blocks (a cluster's round trip is far below); a new attempt follows at once.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a connecting rank waits before retrying a refused or rejected connection.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Writing a handshake message (a few hundred bytes into an empty socket buffer; a few KiB of TLS handshake)
/// never takes longer unless the connection is broken.
const HANDSHAKE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Connections whose handshake runs at once; beyond that the oldest is dropped (a port scan, a flood).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// The TCP listener a worker binds before it knows its rank; reused by every ring it joins, one at a time.
/// It holds a self-signed TLS certificate made at bind, used by the rings that ask for TLS.
pub struct RingListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls_server: Arc<ServerConfig>,
}

impl std::fmt::Debug for RingListener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RingListener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RingListener {
    /// Binds `addr` ("127.0.0.1:0" for an ephemeral port, "0.0.0.0:7070" in a deployment).
    pub fn bind(addr: &str) -> Result<Self> {
        let bind_error = |source: io::Error| CollectiveError::Bind {
            address: addr.to_string(),
            source,
        };
        let socket_address = addr
            .to_socket_addrs()
            .map_err(bind_error)?
            .next()
            .ok_or_else(|| {
                bind_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "address resolves to nothing",
                ))
            })?;
        let socket = Socket::new(
            Domain::for_address(socket_address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(bind_error)?;
        socket.set_reuse_address(true).map_err(bind_error)?;
        // Accepted connections inherit the receive buffer; it must be set before listen() to affect the
        // window negotiated in the handshake. A refusal by the kernel only costs speed.
        if let Some(buffer_bytes) = socket_buffer_bytes()
            && let Err(buffer_error) = socket.set_recv_buffer_size(buffer_bytes)
        {
            debug!(%buffer_error, "could not enlarge the listener's receive buffer");
        }
        socket.bind(&socket_address.into()).map_err(bind_error)?;
        socket.listen(128).map_err(bind_error)?;
        let listener: TcpListener = socket.into();
        // Non-blocking so the accept loop can honour the deadline and the abort.
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let tls_server =
            tls::server_config().map_err(|reason| bind_error(io::Error::other(reason)))?;
        Ok(RingListener {
            listener,
            local_addr,
            tls_server,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until one completes the handshake as `expected_rank` of this ring: a hello with
    /// this job, generation and rank, and (with a ring secret) a proof of the secret bound to the connection.
    /// Hellos of another job, generation or rank are answered with a rejection and closed; a connection with a
    /// wrong or missing proof is closed; one that has not completed its handshake after `handshake_timeout`
    /// is dropped. All pending connections progress at once, so none of them delays another.
    pub(crate) fn accept_previous_rank(
        &self,
        ring: &RingIdentity<'_>,
        expected_rank: usize,
        deadline: Instant,
        handshake_timeout: Duration,
        watch: &FormationWatch<'_>,
    ) -> Result<LinkStream> {
        let started = Instant::now();
        let mut pending: Vec<PendingHandshake> = Vec::new();
        let mut last_refusal: Option<String> = None;
        loop {
            watch.check()?;
            self.accept_new_connections(ring, handshake_timeout, &mut pending)?;
            if let Some(joined) =
                advance_pending_handshakes(ring, expected_rank, &mut pending, &mut last_refusal)
            {
                return joined.map_err(|source| CollectiveError::PeerIo {
                    operation: "joining the ring".to_string(),
                    peer_rank: expected_rank,
                    address: source.remote_address.to_string(),
                    source: source.error,
                });
            }
            if Instant::now() >= deadline {
                return Err(CollectiveError::AcceptTimeout {
                    peer_rank: expected_rank,
                    listen_address: self.local_addr,
                    job_id: ring.job_id.to_string(),
                    waited: started.elapsed(),
                    last_refusal: last_refusal
                        .unwrap_or_else(|| "no connection was refused".to_string()),
                });
            }
            std::thread::sleep(ACCEPT_POLL_INTERVAL);
        }
    }

    /// Moves every connection waiting in the backlog to `pending`, starting a TLS session on it when the ring
    /// runs TLS.
    fn accept_new_connections(
        &self,
        ring: &RingIdentity<'_>,
        handshake_timeout: Duration,
        pending: &mut Vec<PendingHandshake>,
    ) -> Result<()> {
        loop {
            match self.listener.accept() {
                Ok((stream, remote_address)) => {
                    // Accepted sockets do not inherit the listener's non-blocking mode.
                    let transport = stream.set_nonblocking(true).and_then(|()| {
                        if ring.security.tls {
                            TlsSession::server(stream, &self.tls_server)
                                .map(|session| Transport::Tls(Box::new(session)))
                        } else {
                            Ok(Transport::Plain(stream))
                        }
                    });
                    let transport = match transport {
                        Ok(transport) => transport,
                        Err(setup_error) => {
                            warn!(job_id = ring.job_id, %remote_address, %setup_error, "dropped a ring connection");
                            continue;
                        }
                    };
                    if pending.len() >= MAX_PENDING_HANDSHAKES {
                        let oldest = pending.remove(0);
                        warn!(job_id = ring.job_id, remote_address = %oldest.remote_address, "too many ring connections in their handshake, dropped the oldest");
                    }
                    pending.push(PendingHandshake {
                        transport,
                        remote_address,
                        reader: FrameReader::default(),
                        expires_at: Instant::now() + handshake_timeout,
                        handshake_timeout,
                        claimed_rank: None,
                        stage: AcceptStage::AwaitingHello,
                    });
                }
                Err(accept_error) => match accept_error.kind() {
                    io::ErrorKind::WouldBlock => return Ok(()),
                    io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset => {}
                    _ => {
                        return Err(CollectiveError::Accept {
                            listen_address: self.local_addr,
                            source: accept_error,
                        });
                    }
                },
            }
        }
    }
}

/// Who this rank is in which ring, and what its peers must prove: what a hello says and what an incoming
/// handshake must match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingIdentity<'a> {
    pub job_id: &'a str,
    pub generation: u32,
    pub rank: usize,
    pub world_size: usize,
    pub security: &'a RingSecurity,
}

/// What ends a formation wait early: the caller's abort, or the failure of the other half of the formation
/// (connecting to the next rank while accepting the previous one).
#[derive(Debug)]
pub(crate) struct FormationWatch<'a> {
    pub abort: &'a RingAbort,
    pub other_half_failed: &'a AtomicBool,
}

impl FormationWatch<'_> {
    fn check(&self) -> Result<()> {
        if self.abort.is_aborted() {
            return Err(self.abort.error());
        }
        if self.other_half_failed.load(Ordering::SeqCst) {
            return Err(CollectiveError::InvalidSetup {
                reason: "the other half of establishing the ring failed".to_string(),
            });
        }
        Ok(())
    }
}

/// An accepted connection whose handshake has not completed yet.
struct PendingHandshake {
    transport: Transport,
    remote_address: SocketAddr,
    reader: FrameReader,
    /// The whole handshake (TLS, hello, proof) must be over by then.
    expires_at: Instant,
    handshake_timeout: Duration,
    /// The rank its hello claimed, once read (for the logs).
    claimed_rank: Option<u32>,
    stage: AcceptStage,
}

enum AcceptStage {
    /// The TLS handshake (with ring TLS) and the hello.
    AwaitingHello,
    /// Acked; the connecting side must now prove it holds the ring secret.
    AwaitingProof(ExpectedProof),
}

/// The parts of a connection's transcript the accepting side must remember until the proof arrives.
struct ExpectedProof {
    connector_rank: u32,
    connector_nonce: Vec<u8>,
    acceptor_nonce: Vec<u8>,
    channel_binding: Vec<u8>,
}

/// Where one pending handshake stands after reading what its connection sent.
enum Progress {
    Waiting,
    Refused(String),
    Joined,
}

/// A connection that completed its handshake but could not be made a ring link.
struct JoinFailure {
    remote_address: SocketAddr,
    error: io::Error,
}

/// Advances every pending handshake; drops expired, refused and broken connections (logging why, with the
/// rank they claimed and their address), and returns the connection of the expected rank once it joins.
fn advance_pending_handshakes(
    ring: &RingIdentity<'_>,
    expected_rank: usize,
    pending: &mut Vec<PendingHandshake>,
    last_refusal: &mut Option<String>,
) -> Option<std::result::Result<LinkStream, JoinFailure>> {
    let now = Instant::now();
    let mut index = 0;
    while index < pending.len() {
        match advance_handshake(&mut pending[index], ring, expected_rank, now) {
            Progress::Waiting => index += 1,
            Progress::Refused(reason) => {
                let PendingHandshake {
                    remote_address,
                    claimed_rank,
                    ..
                } = pending.swap_remove(index);
                let claimed = claimed_rank.map_or_else(
                    || "no rank claimed yet".to_string(),
                    |rank| format!("claiming rank {rank}"),
                );
                warn!(job_id = ring.job_id, generation = ring.generation, rank = ring.rank, claimed_rank, %remote_address, %reason, "refused a ring connection");
                *last_refusal = Some(format!(
                    "last refused connection: {remote_address} ({claimed}): {reason}"
                ));
            }
            Progress::Joined => {
                let handshake = pending.swap_remove(index);
                let remote_address = handshake.remote_address;
                debug!(job_id = ring.job_id, generation = ring.generation, rank = ring.rank, %remote_address, authenticated = ring.security.is_authenticated(), tls = handshake.transport.is_tls(), "ring connection from the previous rank joined");
                let joined = configure_stream(handshake.transport.socket())
                    .and_then(|()| handshake.transport.into_link_stream())
                    .map_err(|error| JoinFailure {
                        remote_address,
                        error,
                    });
                return Some(joined);
            }
        }
    }
    None
}

/// Reads what one pending connection has sent and moves its handshake on: answers a hello, verifies a proof.
fn advance_handshake(
    handshake: &mut PendingHandshake,
    ring: &RingIdentity<'_>,
    expected_rank: usize,
    now: Instant,
) -> Progress {
    let expired = now >= handshake.expires_at;
    let timeout = handshake.handshake_timeout;
    match &handshake.stage {
        AcceptStage::AwaitingHello => {
            match handshake
                .transport
                .poll_frame::<PeerHello>(&mut handshake.reader)
            {
                Ok(Some(hello)) => {
                    handshake.claimed_rank = Some(hello.rank);
                    match answer_hello(&mut handshake.transport, &hello, ring, expected_rank) {
                        Ok(HelloOutcome::Rejected(reason)) => Progress::Refused(reason),
                        Ok(HelloOutcome::Acked(None)) => Progress::Joined,
                        Ok(HelloOutcome::Acked(Some(expected_proof))) => {
                            handshake.stage = AcceptStage::AwaitingProof(expected_proof);
                            Progress::Waiting
                        }
                        Err(answer_error) => {
                            Progress::Refused(format!("answering its hello failed: {answer_error}"))
                        }
                    }
                }
                Ok(None) if expired => {
                    Progress::Refused(if handshake.transport.is_tls_handshaking() {
                        format!("no TLS handshake within the handshake timeout of {timeout:?}")
                    } else {
                        format!("no hello within the handshake timeout of {timeout:?}")
                    })
                }
                Ok(None) => Progress::Waiting,
                Err(read_error) if handshake.transport.is_tls_handshaking() => {
                    Progress::Refused(format!(
                        "TLS handshake failed: {read_error} (does the connecting side use ring TLS?)"
                    ))
                }
                Err(read_error) => {
                    Progress::Refused(format!("reading its hello failed: {read_error}"))
                }
            }
        }
        AcceptStage::AwaitingProof(expected_proof) => {
            match handshake
                .transport
                .poll_frame::<PeerProof>(&mut handshake.reader)
            {
                Ok(Some(proof)) => {
                    let transcript = HandshakeTranscript {
                        job_id: ring.job_id,
                        generation: ring.generation,
                        acceptor_rank: ring.rank as u32,
                        connector_rank: expected_proof.connector_rank,
                        world_size: ring.world_size as u32,
                        connector_nonce: &expected_proof.connector_nonce,
                        acceptor_nonce: &expected_proof.acceptor_nonce,
                        channel_binding: &expected_proof.channel_binding,
                    };
                    if transcript.verify(
                        &ring.security.secret,
                        ProofDirection::Connector,
                        &proof.proof,
                    ) {
                        Progress::Joined
                    } else if proof.proof.is_empty() {
                        Progress::Refused("its PeerProof is empty".to_string())
                    } else {
                        Progress::Refused(
                            "its proof does not verify: it does not hold this job's ring secret (or relays another connection's handshake)"
                                .to_string(),
                        )
                    }
                }
                Ok(None) if expired => Progress::Refused(format!(
                    "no proof within the handshake timeout of {timeout:?}"
                )),
                Ok(None) => Progress::Waiting,
                Err(read_error) if read_error.kind() == io::ErrorKind::UnexpectedEof => {
                    Progress::Refused(
                        "closed the connection instead of sending its proof (a connecting rank does that when the ack's proof does not verify: another ring secret?)"
                            .to_string(),
                    )
                }
                Err(read_error) => Progress::Refused(format!("reading its proof failed: {read_error}")),
            }
        }
    }
}

enum HelloOutcome {
    /// Answered with an accepting ack; the proof to expect when the ring has a secret.
    Acked(Option<ExpectedProof>),
    Rejected(String),
}

/// Sets the options every ring connection gets: no Nagle delay, big buffers.
pub(crate) fn configure_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(buffer_bytes) = socket_buffer_bytes() else {
        return Ok(());
    };
    let socket = SockRef::from(stream);
    if let Err(buffer_error) = socket
        .set_send_buffer_size(buffer_bytes)
        .and_then(|()| socket.set_recv_buffer_size(buffer_bytes))
    {
        debug!(%buffer_error, "could not enlarge a ring connection's socket buffers");
    }
    Ok(())
}

fn remaining_until(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Why `hello` cannot join this ring as `expected_rank`, if it cannot.
fn hello_rejection(
    hello: &PeerHello,
    ring: &RingIdentity<'_>,
    expected_rank: usize,
) -> Option<String> {
    let authenticated = ring.security.is_authenticated();
    if hello.protocol_version != PEER_PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} is not {}",
            hello.protocol_version, PEER_PROTOCOL_VERSION
        ))
    } else if hello.job_id != ring.job_id {
        Some(format!(
            "hello for job {:?}, this ring is job {:?}",
            hello.job_id, ring.job_id
        ))
    } else if hello.generation != ring.generation {
        Some(format!(
            "hello for generation {} of job {:?}, this ring is generation {}",
            hello.generation, ring.job_id, ring.generation
        ))
    } else if hello.world_size as usize != ring.world_size {
        Some(format!(
            "hello for world size {}, this ring has {}",
            hello.world_size, ring.world_size
        ))
    } else if hello.rank as usize != expected_rank {
        Some(format!(
            "hello from rank {}, rank {} accepts only from rank {}",
            hello.rank, ring.rank, expected_rank
        ))
    } else if authenticated && !hello.authenticated {
        Some(format!(
            "rank {} has no ring secret for job {:?}, rank {} requires a proof of it",
            hello.rank, ring.job_id, ring.rank
        ))
    } else if !authenticated && hello.authenticated {
        Some(format!(
            "rank {} holds a ring secret for job {:?}, rank {} has none",
            hello.rank, ring.job_id, ring.rank
        ))
    } else if authenticated && hello.nonce.len() < MIN_NONCE_BYTES {
        Some(format!(
            "hello nonce of {} bytes, at least {MIN_NONCE_BYTES} are needed",
            hello.nonce.len()
        ))
    } else {
        None
    }
}

/// The accepting side, once a hello is read: checks it against this ring and answers with an ack, which
/// carries this side's proof when the ring has a secret.
fn answer_hello(
    transport: &mut Transport,
    hello: &PeerHello,
    ring: &RingIdentity<'_>,
    expected_rank: usize,
) -> io::Result<HelloOutcome> {
    let mut rejection = hello_rejection(hello, ring, expected_rank);
    if rejection.is_none() {
        // A connector that gave up (aborted, timed out) before this hello was read closed its end: accepting
        // it would form a ring whose first operation fails. It sends nothing after its hello until the ack,
        // so anything readable now is end-of-stream or (on plain TCP) a protocol violation.
        match transport.socket().peek(&mut [0u8; 1]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connecting side closed the connection before its hello was answered",
                ));
            }
            Ok(_) if !transport.is_tls() => {
                rejection = Some("bytes after the hello, before the ack".to_string());
            }
            Ok(_) => {}
            Err(peek_error) if peek_error.kind() == io::ErrorKind::WouldBlock => {}
            Err(peek_error) => return Err(peek_error),
        }
    }
    let acceptor_nonce = fresh_nonce();
    let mut ack = PeerHelloAck {
        accepted: rejection.is_none(),
        reason: rejection.clone().unwrap_or_default(),
        rank: ring.rank as u32,
        job_id: ring.job_id.to_string(),
        generation: ring.generation,
        nonce: acceptor_nonce.clone(),
        proof: Vec::new(),
    };
    let mut expected_proof = None;
    if rejection.is_none() && ring.security.is_authenticated() {
        let channel_binding = transport.channel_binding()?;
        let transcript = HandshakeTranscript {
            job_id: ring.job_id,
            generation: ring.generation,
            acceptor_rank: ring.rank as u32,
            connector_rank: hello.rank,
            world_size: ring.world_size as u32,
            connector_nonce: &hello.nonce,
            acceptor_nonce: &acceptor_nonce,
            channel_binding: &channel_binding,
        };
        ack.proof = transcript
            .proof(&ring.security.secret, ProofDirection::Acceptor)
            .to_vec();
        expected_proof = Some(ExpectedProof {
            connector_rank: hello.rank,
            connector_nonce: hello.nonce.clone(),
            acceptor_nonce,
            channel_binding,
        });
    }
    transport.write_frame(&ack, HANDSHAKE_WRITE_TIMEOUT)?;
    Ok(match rejection {
        Some(reason) => HelloOutcome::Rejected(reason),
        None => HelloOutcome::Acked(expected_proof),
    })
}

/// One attempt of the connecting side that did not produce a connection, and why (retried until the
/// deadline). `suspicious` failures (a proof that does not verify) are logged as warnings.
struct AttemptFailure {
    reason: String,
    suspicious: bool,
}

impl AttemptFailure {
    fn retry(reason: String) -> Self {
        AttemptFailure {
            reason,
            suspicious: false,
        }
    }
}

/// The connecting side: connects to the next rank (over TLS when `tls_client` is given), retrying refused,
/// rejected and unauthenticated attempts until `deadline`.
pub(crate) fn connect_next_rank(
    ring: &RingIdentity<'_>,
    next_rank: usize,
    next_address: SocketAddr,
    tls_client: Option<&Arc<ClientConfig>>,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<LinkStream> {
    let started = Instant::now();
    let mut last_failure = String::from("no attempt finished");
    loop {
        watch.check()?;
        if Instant::now() >= deadline {
            break;
        }
        match attempt_connection(ring, next_rank, next_address, tls_client, deadline, watch)? {
            Ok(link) => return Ok(link),
            Err(failure) => {
                // Logged once per distinct failure: attempts repeat every few milliseconds.
                if failure.reason != last_failure {
                    if failure.suspicious {
                        warn!(job_id = ring.job_id, generation = ring.generation, rank = ring.rank, next_rank, %next_address, reason = %failure.reason, "dropped a ring connection to the next rank, retrying");
                    } else {
                        debug!(job_id = ring.job_id, generation = ring.generation, rank = ring.rank, next_rank, %next_address, reason = %failure.reason, "ring connection attempt failed, retrying");
                    }
                }
                last_failure = failure.reason;
            }
        }
        std::thread::sleep(CONNECT_RETRY_INTERVAL.min(remaining_until(deadline)));
    }
    Err(CollectiveError::ConnectTimeout {
        peer_rank: next_rank,
        address: next_address,
        job_id: ring.job_id.to_string(),
        waited: started.elapsed(),
        last_failure,
    })
}

/// Connects, sends the hello, waits for the ack, verifies its proof and sends this side's. The outer error
/// ends the formation (abort, an ack from the wrong ring); the inner one is retried.
fn attempt_connection(
    ring: &RingIdentity<'_>,
    next_rank: usize,
    next_address: SocketAddr,
    tls_client: Option<&Arc<ClientConfig>>,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<std::result::Result<LinkStream, AttemptFailure>> {
    let attempt_timeout = remaining_until(deadline).min(CONNECT_ATTEMPT_TIMEOUT);
    let stream = match TcpStream::connect_timeout(&next_address, attempt_timeout) {
        Ok(stream) => stream,
        Err(io_error) => {
            return Ok(Err(AttemptFailure::retry(format!(
                "connect failed: {io_error}"
            ))));
        }
    };
    let opened = configure_stream(&stream)
        .and_then(|()| stream.set_read_timeout(Some(ABORT_POLL_INTERVAL)))
        .and_then(|()| match tls_client {
            Some(config) => {
                TlsSession::client(stream, config).map(|session| Transport::Tls(Box::new(session)))
            }
            None => Ok(Transport::Plain(stream)),
        });
    let mut transport = match opened {
        Ok(transport) => transport,
        Err(io_error) => {
            return Ok(Err(AttemptFailure::retry(format!(
                "setting up the connection failed: {io_error}"
            ))));
        }
    };
    let connector_nonce = fresh_nonce();
    let hello = PeerHello {
        protocol_version: PEER_PROTOCOL_VERSION,
        job_id: ring.job_id.to_string(),
        rank: ring.rank as u32,
        world_size: ring.world_size as u32,
        generation: ring.generation,
        nonce: connector_nonce.clone(),
        authenticated: ring.security.is_authenticated(),
    };
    let ack = match send_hello(&mut transport, &hello, deadline, watch)? {
        Ok(ack) => ack,
        Err(io_error) => {
            let hint = if transport.is_tls_handshaking() {
                format!(" (TLS handshake unfinished: does rank {next_rank} use ring TLS?)")
            } else {
                String::new()
            };
            return Ok(Err(AttemptFailure::retry(format!(
                "handshake failed: {io_error}{hint}"
            ))));
        }
    };
    if !ack.accepted {
        return Ok(Err(AttemptFailure::retry(format!(
            "hello rejected: {}",
            ack.reason
        ))));
    }
    if ack.rank as usize != next_rank
        || ack.job_id != ring.job_id
        || ack.generation != ring.generation
    {
        return Err(CollectiveError::InvalidSetup {
            reason: format!(
                "{next_address} answered as rank {} of job {:?} generation {}, expected rank {next_rank} of job {:?} generation {}",
                ack.rank, ack.job_id, ack.generation, ring.job_id, ring.generation
            ),
        });
    }
    if ring.security.is_authenticated() {
        let proven = prove_to_acceptor(&mut transport, ring, &ack, &connector_nonce);
        match proven {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Ok(Err(AttemptFailure {
                    reason,
                    suspicious: true,
                }));
            }
            Err(io_error) => {
                return Ok(Err(AttemptFailure::retry(format!(
                    "sending the proof failed: {io_error}"
                ))));
            }
        }
    }
    let link = transport
        .socket()
        .set_read_timeout(None)
        .and_then(|()| transport.into_link_stream())
        .map_err(|source| CollectiveError::PeerIo {
            operation: "handshake".to_string(),
            peer_rank: next_rank,
            address: next_address.to_string(),
            source,
        })?;
    debug!(job_id = ring.job_id, generation = ring.generation, rank = ring.rank, next_rank, %next_address, authenticated = ring.security.is_authenticated(), tls = tls_client.is_some(), "connected to the next rank");
    Ok(Ok(link))
}

/// Verifies the ack's proof (the accepting side holds the secret, on this very connection) and answers with
/// this side's proof. The inner error says why the ack is not trusted.
fn prove_to_acceptor(
    transport: &mut Transport,
    ring: &RingIdentity<'_>,
    ack: &PeerHelloAck,
    connector_nonce: &[u8],
) -> io::Result<std::result::Result<(), String>> {
    if ack.proof.is_empty() {
        return Ok(Err(format!(
            "rank {} accepted without a proof: it has no ring secret for job {:?}",
            ack.rank, ring.job_id
        )));
    }
    if ack.nonce.len() < MIN_NONCE_BYTES {
        return Ok(Err(format!(
            "the ack's nonce has {} bytes, at least {MIN_NONCE_BYTES} are needed",
            ack.nonce.len()
        )));
    }
    let channel_binding = transport.channel_binding()?;
    let transcript = HandshakeTranscript {
        job_id: ring.job_id,
        generation: ring.generation,
        acceptor_rank: ack.rank,
        connector_rank: ring.rank as u32,
        world_size: ring.world_size as u32,
        connector_nonce,
        acceptor_nonce: &ack.nonce,
        channel_binding: &channel_binding,
    };
    if !transcript.verify(&ring.security.secret, ProofDirection::Acceptor, &ack.proof) {
        return Ok(Err(format!(
            "the ack's proof (claiming rank {}) does not verify: a peer without this job's ring secret, or a man in the middle",
            ack.rank
        )));
    }
    let proof = PeerProof {
        proof: transcript
            .proof(&ring.security.secret, ProofDirection::Connector)
            .to_vec(),
    };
    transport.write_frame(&proof, HANDSHAKE_WRITE_TIMEOUT)?;
    Ok(Ok(()))
}

/// Sends the hello and reads the ack in slices of [`ABORT_POLL_INTERVAL`] until the deadline. The next rank
/// may still be busy elsewhere (an earlier job, loading data): its answer is awaited rather than reconnecting,
/// which would leave a valid-looking hello behind in its backlog.
fn send_hello(
    transport: &mut Transport,
    hello: &PeerHello,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<io::Result<PeerHelloAck>> {
    if let Err(io_error) = transport.write_frame(hello, HANDSHAKE_WRITE_TIMEOUT) {
        return Ok(Err(io_error));
    }
    let mut reader = FrameReader::default();
    loop {
        match transport.poll_frame::<PeerHelloAck>(&mut reader) {
            Ok(Some(ack)) => return Ok(Ok(ack)),
            Ok(None) => {}
            Err(io_error) => return Ok(Err(io_error)),
        }
        watch.check()?;
        if Instant::now() >= deadline {
            return Ok(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer to the hello before the deadline",
            )));
        }
    }
}
