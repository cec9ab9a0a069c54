//! The error of every collective: which peer (rank and address), which operation, what went wrong.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Result of a collective operation.
pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// Why a collective (or establishing the ring) failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("binding the ring listener on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: io::Error,
    },

    #[error("invalid ring setup: {reason}")]
    InvalidSetup { reason: String },

    #[error("resolving the address {address:?} of peer rank {peer_rank}: {reason}")]
    ResolvePeer {
        peer_rank: usize,
        address: String,
        reason: String,
    },

    #[error(
        "connecting to peer rank {peer_rank} at {address} for job {job_id} gave up after {waited:?}: {last_failure}"
    )]
    ConnectTimeout {
        peer_rank: usize,
        address: SocketAddr,
        job_id: String,
        waited: Duration,
        last_failure: String,
    },

    #[error(
        "peer rank {peer_rank} did not connect for job {job_id} within {waited:?} (listening on {listen_address}; {last_refusal})"
    )]
    AcceptTimeout {
        peer_rank: usize,
        listen_address: SocketAddr,
        job_id: String,
        waited: Duration,
        /// The last connection refused while waiting (wrong job, generation, rank, proof), or that none was.
        last_refusal: String,
    },

    #[error("accepting a connection on {listen_address}: {source}")]
    Accept {
        listen_address: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("{operation}: peer rank {peer_rank} at {address} sent nothing for {timeout:?}")]
    PeerTimeout {
        operation: String,
        peer_rank: usize,
        address: String,
        timeout: Duration,
    },

    #[error("{operation}: peer rank {peer_rank} at {address} closed the connection ({source})")]
    PeerClosed {
        operation: String,
        peer_rank: usize,
        address: String,
        #[source]
        source: io::Error,
    },

    #[error("{operation}: i/o with peer rank {peer_rank} at {address} failed: {source}")]
    PeerIo {
        operation: String,
        peer_rank: usize,
        address: String,
        #[source]
        source: io::Error,
    },

    #[error("{operation}: peer rank {peer_rank} at {address} is out of step: {detail}")]
    ProtocolMismatch {
        operation: String,
        peer_rank: usize,
        address: String,
        detail: String,
    },

    #[error("broadcast root {root} is out of range for world size {world_size}")]
    InvalidRoot { root: usize, world_size: usize },

    /// A [`RingAbort`](crate::RingAbort) (or an NCCL abort handle) ended the formation or the operation.
    #[error("aborted: {reason}")]
    Aborted { reason: String },

    #[error("the ring of job {job_id} (rank {rank}) is unusable after an earlier failure: {cause}")]
    Poisoned {
        job_id: String,
        rank: usize,
        cause: String,
    },

    #[cfg(feature = "nccl")]
    #[error("nccl {operation} (rank {rank} of {world_size}) failed: {detail}")]
    Nccl {
        operation: &'static str,
        rank: usize,
        world_size: usize,
        detail: String,
    },
}

impl CollectiveError {
    /// Whether an abort (not a failure of a peer) ended the operation or the formation.
    pub fn is_aborted(&self) -> bool {
        matches!(self, CollectiveError::Aborted { .. })
    }

    /// The rank of the peer this error is about, when it is about one (who to report as failed).
    pub fn peer_rank(&self) -> Option<usize> {
        match self {
            CollectiveError::ResolvePeer { peer_rank, .. }
            | CollectiveError::ConnectTimeout { peer_rank, .. }
            | CollectiveError::AcceptTimeout { peer_rank, .. }
            | CollectiveError::PeerTimeout { peer_rank, .. }
            | CollectiveError::PeerClosed { peer_rank, .. }
            | CollectiveError::PeerIo { peer_rank, .. }
            | CollectiveError::ProtocolMismatch { peer_rank, .. } => Some(*peer_rank),
            _ => None,
        }
    }
}

/// The end of a ring connection an i/o error happened on; turns `io::Error`s into errors naming the peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerEndpoint {
    pub rank: usize,
    /// The peer's listen address as the job lists it (more useful in a message than an ephemeral port).
    pub address: String,
}

impl PeerEndpoint {
    /// Classifies an i/o error with this peer: timeout, closed connection, or anything else.
    pub(crate) fn io_error(
        &self,
        operation: &str,
        timeout: Duration,
        source: io::Error,
    ) -> CollectiveError {
        let operation = operation.to_string();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CollectiveError::PeerTimeout {
                operation,
                peer_rank: self.rank,
                address: self.address.clone(),
                timeout,
            },
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => CollectiveError::PeerClosed {
                operation,
                peer_rank: self.rank,
                address: self.address.clone(),
                source,
            },
            _ => CollectiveError::PeerIo {
                operation,
                peer_rank: self.rank,
                address: self.address.clone(),
                source,
            },
        }
    }

    pub(crate) fn mismatch(&self, operation: &str, detail: String) -> CollectiveError {
        CollectiveError::ProtocolMismatch {
            operation: operation.to_string(),
            peer_rank: self.rank,
            address: self.address.clone(),
            detail,
        }
    }
}
