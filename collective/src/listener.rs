//! The peer listener a worker binds at start-up, and both sides of the ring handshake (`PeerHello`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use plankton_proto::v1::{PeerHello, PeerHelloAck};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, warn};

use crate::error::{CollectiveError, Result};
use crate::wire::{read_frame, write_frame};

/// Version carried in `PeerHello.protocol_version`; bumped when the data path changes.
pub(crate) const PEER_PROTOCOL_VERSION: u32 = 1;

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

/// How long the accept loop sleeps when no connection is pending.
const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How long a connecting rank waits before retrying a refused or rejected connection.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);

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
        // Non-blocking so the accept loop can honour the connect timeout.
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

    /// Accepts connections until one carries a valid hello from `expected_rank` of this job; stale or foreign
    /// connections are answered with a rejection and closed.
    pub(crate) fn accept_previous_rank(
        &self,
        ring: &RingIdentity<'_>,
        expected_rank: usize,
        deadline: Instant,
        io_timeout: Duration,
    ) -> Result<TcpStream> {
        let started = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((stream, remote_address)) => {
                    match answer_hello(stream, ring, expected_rank, deadline, io_timeout) {
                        Ok(HelloOutcome::Accepted(stream)) => return Ok(stream),
                        Ok(HelloOutcome::Rejected(reason)) => {
                            warn!(job_id = ring.job_id, %remote_address, %reason, "rejected a ring connection");
                        }
                        Err(handshake_error) => {
                            warn!(job_id = ring.job_id, %remote_address, %handshake_error, "dropped a ring connection during its handshake");
                        }
                    }
                }
                Err(accept_error) => match accept_error.kind() {
                    io::ErrorKind::WouldBlock => {
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
    pub rank: usize,
    pub world_size: usize,
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

/// The accepting side: reads the hello, checks it against this ring, answers with an ack.
fn answer_hello(
    stream: TcpStream,
    ring: &RingIdentity<'_>,
    expected_rank: usize,
    deadline: Instant,
    io_timeout: Duration,
) -> io::Result<HelloOutcome> {
    stream.set_nonblocking(false)?;
    configure_stream(&stream)?;
    stream.set_read_timeout(Some(io_timeout.min(remaining_until(deadline))))?;
    stream.set_write_timeout(Some(io_timeout))?;
    let hello: PeerHello = read_frame(&stream)?;
    let rejection = if hello.protocol_version != PEER_PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} is not {}",
            hello.protocol_version, PEER_PROTOCOL_VERSION
        ))
    } else if hello.job_id != ring.job_id {
        Some(format!(
            "hello for job {:?}, this ring is job {:?}",
            hello.job_id, ring.job_id
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
    };
    let ack = PeerHelloAck {
        accepted: rejection.is_none(),
        reason: rejection.clone().unwrap_or_default(),
        rank: ring.rank as u32,
        job_id: ring.job_id.to_string(),
    };
    write_frame(&stream, &ack)?;
    match rejection {
        Some(reason) => Ok(HelloOutcome::Rejected(reason)),
        None => Ok(HelloOutcome::Accepted(stream)),
    }
}

/// The connecting side: connects to the next rank, retrying refused or rejected attempts until `deadline`.
pub(crate) fn connect_next_rank(
    ring: &RingIdentity<'_>,
    next_rank: usize,
    next_address: SocketAddr,
    deadline: Instant,
    io_timeout: Duration,
) -> Result<TcpStream> {
    let started = Instant::now();
    let hello = PeerHello {
        protocol_version: PEER_PROTOCOL_VERSION,
        job_id: ring.job_id.to_string(),
        rank: ring.rank as u32,
        world_size: ring.world_size as u32,
    };
    let mut last_failure = String::from("no attempt finished");
    while Instant::now() < deadline {
        let attempt_timeout = remaining_until(deadline).min(Duration::from_secs(1));
        match TcpStream::connect_timeout(&next_address, attempt_timeout) {
            Ok(stream) => match send_hello(&stream, &hello, deadline, io_timeout) {
                Ok(ack) if ack.accepted => {
                    if ack.rank as usize != next_rank || ack.job_id != ring.job_id {
                        return Err(CollectiveError::InvalidSetup {
                            reason: format!(
                                "{next_address} answered as rank {} of job {:?}, expected rank {next_rank} of job {:?}",
                                ack.rank, ack.job_id, ring.job_id
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
                    return Ok(stream);
                }
                Ok(ack) => {
                    debug!(job_id = ring.job_id, next_rank, reason = %ack.reason, "ring hello rejected, retrying");
                    last_failure = format!("hello rejected: {}", ack.reason);
                }
                Err(io_error) => last_failure = format!("handshake failed: {io_error}"),
            },
            Err(io_error) => last_failure = format!("connect failed: {io_error}"),
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

fn send_hello(
    stream: &TcpStream,
    hello: &PeerHello,
    deadline: Instant,
    io_timeout: Duration,
) -> io::Result<PeerHelloAck> {
    configure_stream(stream)?;
    stream.set_write_timeout(Some(io_timeout))?;
    // The next rank may still be busy elsewhere (an earlier job, loading data): wait for its answer until the
    // deadline rather than reconnecting, which would leave a valid-looking hello behind in its backlog.
    stream.set_read_timeout(Some(remaining_until(deadline)))?;
    write_frame(stream, hello)?;
    read_frame(stream)
}
