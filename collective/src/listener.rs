//! The peer listener a worker binds at start-up, and both sides of the ring handshake (`PeerHello`).
//!
//! Every wait here is bounded by the formation deadline and polls the [`RingAbort`] (and the other half of the
//! formation) at least every [`ABORT_POLL_INTERVAL`]: a worker may wait minutes for peers still loading data,
//! and the coordinator ends that wait by aborting when a member is lost. The accepting side answers pending
//! hellos concurrently (non-blocking reads, one handshake deadline per connection), so a connection that sends
//! nothing or garbage cannot delay the real peer.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plankton_proto::v1::{PeerHello, PeerHelloAck};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, warn};

use crate::abort::RingAbort;
use crate::error::{CollectiveError, Result};
use crate::wire::{FrameReader, write_frame};

/// Version carried in `PeerHello.protocol_version`; bumped when the handshake or the data path changes
/// (2: hellos and acks carry the ring generation).
pub(crate) const PEER_PROTOCOL_VERSION: u32 = 2;

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

/// Writing a hello or an ack (a few dozen bytes into an empty socket buffer) never takes longer unless the
/// connection is broken.
const HANDSHAKE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Connections whose hello is awaited at once; beyond that the oldest is dropped (a port scan, a flood).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// The TCP listener a worker binds before it knows its rank; reused by every ring it joins, one at a time.
#[derive(Debug)]
pub struct RingListener {
    listener: TcpListener,
    local_addr: SocketAddr,
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
        Ok(RingListener {
            listener,
            local_addr,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until one carries a valid hello from `expected_rank` of this ring (job and
    /// generation); hellos of another job, generation or rank are answered with a rejection and closed, and a
    /// connection with no complete hello after `handshake_timeout` is dropped. Hellos are read from all pending
    /// connections at once, so none of them delays another.
    pub(crate) fn accept_previous_rank(
        &self,
        ring: &RingIdentity<'_>,
        expected_rank: usize,
        deadline: Instant,
        handshake_timeout: Duration,
        watch: &FormationWatch<'_>,
    ) -> Result<TcpStream> {
        let started = Instant::now();
        let mut pending: Vec<PendingHandshake> = Vec::new();
        loop {
            watch.check()?;
            self.accept_new_connections(ring, handshake_timeout, &mut pending)?;
            if let Some(stream) = answer_pending_hellos(ring, expected_rank, &mut pending) {
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(CollectiveError::AcceptTimeout {
                    peer_rank: expected_rank,
                    listen_address: self.local_addr,
                    job_id: ring.job_id.to_string(),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(ACCEPT_POLL_INTERVAL);
        }
    }

    /// Moves every connection waiting in the backlog to `pending`.
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
                    if let Err(setup_error) = stream.set_nonblocking(true) {
                        warn!(job_id = ring.job_id, %remote_address, %setup_error, "dropped a ring connection");
                        continue;
                    }
                    if pending.len() >= MAX_PENDING_HANDSHAKES {
                        let oldest = pending.remove(0);
                        warn!(job_id = ring.job_id, remote_address = %oldest.remote_address, "too many ring connections without a hello, dropped the oldest");
                    }
                    pending.push(PendingHandshake {
                        stream,
                        remote_address,
                        reader: FrameReader::default(),
                        expires_at: Instant::now() + handshake_timeout,
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

/// Who this rank is in which ring: what a hello says and what an incoming hello must match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingIdentity<'a> {
    pub job_id: &'a str,
    pub generation: u32,
    pub rank: usize,
    pub world_size: usize,
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

/// An accepted connection whose hello has not been read completely yet.
struct PendingHandshake {
    stream: TcpStream,
    remote_address: SocketAddr,
    reader: FrameReader,
    expires_at: Instant,
}

/// Reads what every pending connection has sent; answers complete hellos, drops expired and broken
/// connections, and returns the connection of the expected rank once its hello is accepted.
fn answer_pending_hellos(
    ring: &RingIdentity<'_>,
    expected_rank: usize,
    pending: &mut Vec<PendingHandshake>,
) -> Option<TcpStream> {
    let now = Instant::now();
    let mut index = 0;
    while index < pending.len() {
        let handshake = &mut pending[index];
        let remote_address = handshake.remote_address;
        match handshake.reader.poll::<PeerHello>(&handshake.stream) {
            Ok(Some(hello)) => {
                let PendingHandshake { stream, .. } = pending.swap_remove(index);
                match answer_hello(stream, &hello, ring, expected_rank) {
                    Ok(HelloOutcome::Accepted(stream)) => return Some(stream),
                    Ok(HelloOutcome::Rejected(reason)) => {
                        warn!(job_id = ring.job_id, generation = ring.generation, %remote_address, %reason, "rejected a ring connection");
                    }
                    Err(handshake_error) => {
                        warn!(job_id = ring.job_id, %remote_address, %handshake_error, "dropped a ring connection during its handshake");
                    }
                }
            }
            Ok(None) if now >= handshake.expires_at => {
                pending.swap_remove(index);
                warn!(job_id = ring.job_id, %remote_address, "dropped a ring connection that sent no hello within the handshake timeout");
            }
            Ok(None) => index += 1,
            Err(handshake_error) => {
                pending.swap_remove(index);
                warn!(job_id = ring.job_id, %remote_address, %handshake_error, "dropped a ring connection during its handshake");
            }
        }
    }
    None
}

enum HelloOutcome {
    Accepted(TcpStream),
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
    } else {
        None
    }
}

/// The accepting side, once a hello is read: checks it against this ring and answers with an ack.
fn answer_hello(
    stream: TcpStream,
    hello: &PeerHello,
    ring: &RingIdentity<'_>,
    expected_rank: usize,
) -> io::Result<HelloOutcome> {
    let mut rejection = hello_rejection(hello, ring, expected_rank);
    if rejection.is_none() {
        // A connector that gave up (aborted, timed out) before this hello was read closed its end: accepting
        // it would form a ring whose first operation fails. It sends nothing after its hello until the ack,
        // so anything readable now is end-of-stream or a protocol violation.
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connecting side closed the connection before its hello was answered",
                ));
            }
            Ok(_) => rejection = Some("bytes after the hello, before the ack".to_string()),
            Err(peek_error) if peek_error.kind() == io::ErrorKind::WouldBlock => {}
            Err(peek_error) => return Err(peek_error),
        }
    }
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(HANDSHAKE_WRITE_TIMEOUT))?;
    let ack = PeerHelloAck {
        accepted: rejection.is_none(),
        reason: rejection.clone().unwrap_or_default(),
        rank: ring.rank as u32,
        job_id: ring.job_id.to_string(),
        generation: ring.generation,
    };
    write_frame(&stream, &ack)?;
    match rejection {
        Some(reason) => Ok(HelloOutcome::Rejected(reason)),
        None => {
            configure_stream(&stream)?;
            Ok(HelloOutcome::Accepted(stream))
        }
    }
}

/// One attempt of the connecting side that did not produce a connection, and why (retried until the deadline).
struct AttemptFailure(String);

/// The connecting side: connects to the next rank, retrying refused or rejected attempts until `deadline`.
pub(crate) fn connect_next_rank(
    ring: &RingIdentity<'_>,
    next_rank: usize,
    next_address: SocketAddr,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<TcpStream> {
    let started = Instant::now();
    let hello = PeerHello {
        protocol_version: PEER_PROTOCOL_VERSION,
        job_id: ring.job_id.to_string(),
        rank: ring.rank as u32,
        world_size: ring.world_size as u32,
        generation: ring.generation,
    };
    let mut last_failure = String::from("no attempt finished");
    loop {
        watch.check()?;
        if Instant::now() >= deadline {
            break;
        }
        match attempt_connection(ring, &hello, next_rank, next_address, deadline, watch)? {
            Ok(stream) => return Ok(stream),
            Err(AttemptFailure(failure)) => last_failure = failure,
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

/// Connects, sends the hello and waits for the ack. The outer error ends the formation (abort, an ack from
/// the wrong ring); the inner one is retried.
fn attempt_connection(
    ring: &RingIdentity<'_>,
    hello: &PeerHello,
    next_rank: usize,
    next_address: SocketAddr,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<std::result::Result<TcpStream, AttemptFailure>> {
    let attempt_timeout = remaining_until(deadline).min(CONNECT_ATTEMPT_TIMEOUT);
    let stream = match TcpStream::connect_timeout(&next_address, attempt_timeout) {
        Ok(stream) => stream,
        Err(io_error) => return Ok(Err(AttemptFailure(format!("connect failed: {io_error}")))),
    };
    let ack = match send_hello(&stream, hello, deadline, watch)? {
        Ok(ack) => ack,
        Err(io_error) => return Ok(Err(AttemptFailure(format!("handshake failed: {io_error}")))),
    };
    if !ack.accepted {
        debug!(job_id = ring.job_id, generation = ring.generation, next_rank, reason = %ack.reason, "ring hello rejected, retrying");
        return Ok(Err(AttemptFailure(format!(
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
    stream
        .set_read_timeout(None)
        .map_err(|source| CollectiveError::PeerIo {
            operation: "handshake".to_string(),
            peer_rank: next_rank,
            address: next_address.to_string(),
            source,
        })?;
    Ok(Ok(stream))
}

/// Sends the hello and reads the ack in slices of [`ABORT_POLL_INTERVAL`] until the deadline. The next rank
/// may still be busy elsewhere (an earlier job, loading data): its answer is awaited rather than reconnecting,
/// which would leave a valid-looking hello behind in its backlog.
fn send_hello(
    stream: &TcpStream,
    hello: &PeerHello,
    deadline: Instant,
    watch: &FormationWatch<'_>,
) -> Result<io::Result<PeerHelloAck>> {
    let sent = configure_stream(stream)
        .and_then(|()| stream.set_write_timeout(Some(HANDSHAKE_WRITE_TIMEOUT)))
        .and_then(|()| stream.set_read_timeout(Some(ABORT_POLL_INTERVAL)))
        .and_then(|()| write_frame(stream, hello));
    if let Err(io_error) = sent {
        return Ok(Err(io_error));
    }
    let mut reader = FrameReader::default();
    loop {
        match reader.poll::<PeerHelloAck>(stream) {
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
