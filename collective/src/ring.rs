//! Ring all-reduce over TCP: reduce-scatter then all-gather, each segment chunked and pipelined.
//!
//! A ring belongs to one generation of a job: when the coordinator re-forms a job's ring (a member was lost),
//! the survivors establish a new ring with the next generation, and connections left over from the old one are
//! rejected in the handshake. With the job's ring secret ([`RingSecurity`]) only ranks that prove they hold it
//! join, and with ring TLS the data runs encrypted. A [`RingAbort`] ends a formation or a blocked operation
//! from another thread.

use std::net::ToSocketAddrs;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::abort::{AbortRegistration, RingAbort};
use crate::error::{CollectiveError, PeerEndpoint, Result};
use crate::listener::{FormationWatch, RingIdentity, RingListener, connect_next_rank};
use crate::security::RingSecurity;
use crate::tls;
use crate::transport::LinkStream;
use crate::wire::{
    OperationHeader, OperationKind, add_bf16_into, add_into, read_bf16s, read_f32s, round_to_bf16,
    widen_bf16_into, write_bf16s, write_f32s,
};
use crate::{Collective, GradientCompression};

/// Timeouts and chunking of a ring.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// How long establishing the ring may take (peers still starting are retried until then). May be long
    /// (minutes, while peers load data): a [`RingAbort`] ends the wait early.
    pub connect_timeout: Duration,
    /// An accepted connection that has not completed its handshake (TLS, hello and proof) after this long is
    /// dropped. Handshakes run concurrently, so a silent or rogue connection never delays the real peer; this
    /// only bounds what it holds.
    pub handshake_timeout: Duration,
    /// A peer that sends or accepts nothing for this long fails the operation.
    pub io_timeout: Duration,
    /// Size of the pipelined chunks each segment is cut into.
    pub chunk_bytes: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            connect_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(120),
            chunk_bytes: 256 * 1024,
        }
    }
}

/// How one half of establishing the ring (connecting or accepting) ended; `primary` when it failed first.
struct FormationHalf {
    outcome: Result<LinkStream>,
    primary: bool,
}

/// One connection of the ring (TCP, or TLS over TCP) and the peer at its other end.
#[derive(Debug)]
struct PeerLink {
    peer: PeerEndpoint,
    stream: LinkStream,
}

#[derive(Debug)]
struct RingLinks {
    /// Connection this rank writes to: rank (r+1) % n.
    to_next: PeerLink,
    /// Connection this rank reads from: rank (r-1) % n.
    from_previous: PeerLink,
}

/// A rank's place in a ring of data-parallel workers; every operation must be called by all ranks in the
/// same order with the same buffer length.
#[derive(Debug)]
pub struct RingAllReduce {
    job_id: String,
    generation: u32,
    rank: usize,
    world_size: usize,
    config: RingConfig,
    abort: RingAbort,
    /// Clones of the streams held by `abort` so it can shut them down; released when the ring is dropped.
    _abort_registration: Option<AbortRegistration>,
    /// `None` for a ring of one.
    links: Option<RingLinks>,
    /// Number of operations started, carried in operation headers.
    sequence: u64,
    /// Set by the first failed operation; the ring is unusable after it.
    poisoned: Option<String>,
    /// Receive buffer for the chunk being reduced.
    receive_scratch: Vec<f32>,
}

impl RingAllReduce {
    /// [`RingAllReduce::establish_secured`] without a ring secret or TLS: any peer naming the right job,
    /// generation and rank joins (benchmarks, tests, jobs of a coordinator that hands out no secret).
    pub fn establish(
        listener: &RingListener,
        job_id: &str,
        generation: u32,
        rank: usize,
        peer_addresses: &[String],
        config: &RingConfig,
        abort: &RingAbort,
    ) -> Result<Self, CollectiveError> {
        Self::establish_secured(
            listener,
            job_id,
            generation,
            rank,
            peer_addresses,
            config,
            &RingSecurity::unauthenticated(),
            abort,
        )
    }

    /// Joins generation `generation` of the ring of `job_id` as `rank`: connects to rank+1 and accepts rank-1
    /// on `listener`. `peer_addresses[i]` is the listen address of rank i (its length is the world size).
    ///
    /// With a secret in `security`, both connections are mutually authenticated (HMAC proofs of the secret,
    /// bound to the connection); a connection that fails to prove it is refused and the wait goes on, so a
    /// rogue peer can delay nothing but its own connection. With `security.tls` the handshake and all data
    /// run over TLS 1.3. Every rank of the ring must be given the same `security`.
    ///
    /// Waits for the peers until `config.connect_timeout`; `abort` ends the wait at once with
    /// [`CollectiveError::Aborted`], and once the ring is established it aborts a blocked operation.
    #[allow(clippy::too_many_arguments)]
    pub fn establish_secured(
        listener: &RingListener,
        job_id: &str,
        generation: u32,
        rank: usize,
        peer_addresses: &[String],
        config: &RingConfig,
        security: &RingSecurity,
        abort: &RingAbort,
    ) -> Result<Self, CollectiveError> {
        let world_size = peer_addresses.len();
        validate_setup(rank, world_size, config)?;
        if let Some(reason) = security.problem() {
            return Err(CollectiveError::InvalidSetup { reason });
        }
        if abort.is_aborted() {
            return Err(abort.error());
        }
        let mut ring = RingAllReduce {
            job_id: job_id.to_string(),
            generation,
            rank,
            world_size,
            config: config.clone(),
            abort: abort.clone(),
            _abort_registration: None,
            links: None,
            sequence: 0,
            poisoned: None,
            receive_scratch: Vec::new(),
        };
        if world_size == 1 {
            return Ok(ring);
        }
        let next_rank = (rank + 1) % world_size;
        let previous_rank = (rank + world_size - 1) % world_size;
        let next_address_text = &peer_addresses[next_rank];
        let next_address = next_address_text
            .to_socket_addrs()
            .map_err(|resolve_error| resolve_error.to_string())
            .and_then(|mut addresses| {
                addresses
                    .next()
                    .ok_or_else(|| "resolves to nothing".to_string())
            })
            .map_err(|reason| CollectiveError::ResolvePeer {
                peer_rank: next_rank,
                address: next_address_text.clone(),
                reason,
            })?;
        let identity = RingIdentity {
            job_id,
            generation,
            rank,
            world_size,
            security,
        };
        let tls_client = if security.tls {
            Some(tls::client_config().map_err(|reason| CollectiveError::InvalidSetup { reason })?)
        } else {
            None
        };
        let deadline = Instant::now() + config.connect_timeout;
        // Set by whichever half fails first, so the other stops waiting instead of running to the deadline.
        let half_failed = AtomicBool::new(false);
        let watch = FormationWatch {
            abort,
            other_half_failed: &half_failed,
        };
        let report = |outcome: Result<LinkStream>| -> FormationHalf {
            let primary = outcome.is_err() && !half_failed.swap(true, Ordering::SeqCst);
            FormationHalf { outcome, primary }
        };
        // Connect and accept at the same time: every rank does both, so doing them in turn would deadlock.
        let (connected, accepted) = std::thread::scope(|scope| {
            let connector = scope.spawn(|| {
                report(connect_next_rank(
                    &identity,
                    next_rank,
                    next_address,
                    tls_client.as_ref(),
                    deadline,
                    &watch,
                ))
            });
            let accepted = report(listener.accept_previous_rank(
                &identity,
                previous_rank,
                deadline,
                config.handshake_timeout,
                &watch,
            ));
            let connected = connector.join().unwrap_or_else(|_| FormationHalf {
                outcome: Err(CollectiveError::InvalidSetup {
                    reason: "the thread connecting to the next rank panicked".to_string(),
                }),
                primary: true,
            });
            (connected, accepted)
        });
        if abort.is_aborted() {
            return Err(abort.error());
        }
        let (to_next_stream, from_previous_stream) = match (connected, accepted) {
            (
                FormationHalf {
                    outcome: Ok(to_next_stream),
                    ..
                },
                FormationHalf {
                    outcome: Ok(from_previous_stream),
                    ..
                },
            ) => (to_next_stream, from_previous_stream),
            // The half that failed first says why; the other only stopped because of it.
            (connected, accepted) => {
                let failed_first = if accepted.primary {
                    accepted
                } else {
                    connected
                };
                return Err(failed_first.outcome.err().unwrap_or_else(|| {
                    CollectiveError::InvalidSetup {
                        reason: "establishing the ring failed without an error".to_string(),
                    }
                }));
            }
        };
        let to_next = PeerLink {
            peer: PeerEndpoint {
                rank: next_rank,
                address: next_address_text.clone(),
            },
            stream: to_next_stream,
        };
        let from_previous = PeerLink {
            peer: PeerEndpoint {
                rank: previous_rank,
                address: peer_addresses[previous_rank].clone(),
            },
            stream: from_previous_stream,
        };
        let mut abort_streams = Vec::with_capacity(2);
        for link in [&to_next, &from_previous] {
            let socket = link.stream.socket();
            socket
                .set_read_timeout(Some(config.io_timeout))
                .and_then(|()| socket.set_write_timeout(Some(config.io_timeout)))
                .and_then(|()| socket.try_clone())
                .map(|clone| abort_streams.push(clone))
                .map_err(|source| {
                    link.peer
                        .io_error("configuring the connection", config.io_timeout, source)
                })?;
        }
        ring._abort_registration = Some(abort.register(abort_streams));
        if abort.is_aborted() {
            return Err(abort.error());
        }
        info!(
            job_id,
            generation,
            rank,
            world_size,
            next_rank,
            previous_rank,
            authenticated = security.is_authenticated(),
            tls = security.tls,
            "ring established"
        );
        ring.links = Some(RingLinks {
            to_next,
            from_previous,
        });
        Ok(ring)
    }

    /// The generation of the job's ring this rank joined.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether an earlier failure made the ring unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Runs one operation: refuses when poisoned, and poisons the ring (closing both connections, so the
    /// neighbours fail fast instead of waiting for their timeout) when the operation fails.
    fn run_operation(
        &mut self,
        kind: OperationKind,
        element_count: usize,
        root: usize,
        body: impl FnOnce(&RingLinks, &RingConfig, &mut Vec<f32>, usize, usize) -> Result<()>,
    ) -> Result<()> {
        if let Some(cause) = &self.poisoned {
            return Err(CollectiveError::Poisoned {
                job_id: self.job_id.clone(),
                rank: self.rank,
                cause: cause.clone(),
            });
        }
        if self.abort.is_aborted() {
            let aborted = self.abort.error();
            self.poisoned = Some(aborted.to_string());
            return Err(aborted);
        }
        let Some(links) = &self.links else {
            return Ok(());
        };
        let header = OperationHeader {
            kind,
            sequence: self.sequence,
            element_count: element_count as u64,
            root: root as u64,
        };
        self.sequence += 1;
        let outcome = exchange_headers(links, &header, self.config.io_timeout).and_then(|()| {
            body(
                links,
                &self.config,
                &mut self.receive_scratch,
                self.rank,
                self.world_size,
            )
        });
        // An abort shuts the connections down under the operation: report the abort, not the broken pipe.
        let outcome = outcome.map_err(|failure| {
            if self.abort.is_aborted() {
                self.abort.error()
            } else {
                failure
            }
        });
        if let Err(failure) = &outcome {
            error!(job_id = %self.job_id, generation = self.generation, rank = self.rank, %failure, "ring operation failed, ring poisoned");
            self.poisoned = Some(failure.to_string());
            for link in [&links.to_next, &links.from_previous] {
                link.stream.shutdown();
            }
        }
        outcome
    }
}

fn validate_setup(rank: usize, world_size: usize, config: &RingConfig) -> Result<()> {
    let problem = if world_size == 0 {
        Some("no peer addresses: the world size must be at least 1".to_string())
    } else if rank >= world_size {
        Some(format!(
            "rank {rank} is out of range for world size {world_size}"
        ))
    } else if world_size > u32::MAX as usize {
        Some(format!("world size {world_size} is too large"))
    } else if config.chunk_bytes < std::mem::size_of::<f32>() {
        Some(format!(
            "chunk_bytes {} is smaller than one f32",
            config.chunk_bytes
        ))
    } else if config.io_timeout.is_zero()
        || config.connect_timeout.is_zero()
        || config.handshake_timeout.is_zero()
    {
        Some("connect_timeout, handshake_timeout and io_timeout must be positive".to_string())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(CollectiveError::InvalidSetup { reason }),
        None => Ok(()),
    }
}

/// Sends this rank's header to the next rank and checks the previous rank's header against it.
fn exchange_headers(
    links: &RingLinks,
    header: &OperationHeader,
    io_timeout: Duration,
) -> Result<()> {
    let operation = header.kind.name();
    let encoded = header.encode();
    links
        .to_next
        .stream
        .write_all(&encoded)
        .map_err(|source| links.to_next.peer.io_error(operation, io_timeout, source))?;
    let mut received = [0u8; OperationHeader::ENCODED_BYTES];
    links
        .from_previous
        .stream
        .read_exact(&mut received)
        .map_err(|source| {
            links
                .from_previous
                .peer
                .io_error(operation, io_timeout, source)
        })?;
    let previous_header = OperationHeader::decode(&received)
        .map_err(|detail| links.from_previous.peer.mismatch(operation, detail))?;
    if previous_header != *header {
        return Err(links.from_previous.peer.mismatch(
            operation,
            format!(
                "this rank runs {}, the previous rank runs {}",
                header.describe(),
                previous_header.describe()
            ),
        ));
    }
    Ok(())
}

/// Where segment `index` of `world_size` lies in a buffer of `length` elements: the first `length % n`
/// segments get one element more, so segments may be empty when `length < n`.
fn segment_range(length: usize, world_size: usize, index: usize) -> Range<usize> {
    let base = length / world_size;
    let remainder = length % world_size;
    let start = index * base + index.min(remainder);
    let segment_length = base + usize::from(index < remainder);
    start..start + segment_length
}

/// The buffer cut into segments and each segment into chunks; chunks are moved to the sender thread and back.
struct ChunkedBuffer<'a> {
    /// `chunks[id]` is `None` while the sender thread holds it.
    chunks: Vec<Option<&'a mut [f32]>>,
    /// Chunk ids of each segment.
    segment_chunks: Vec<Range<usize>>,
}

impl<'a> ChunkedBuffer<'a> {
    fn new(buffer: &'a mut [f32], world_size: usize, chunk_elements: usize) -> Self {
        let length = buffer.len();
        let mut chunks = Vec::new();
        let mut segment_chunks = Vec::with_capacity(world_size);
        let mut rest = buffer;
        for segment_index in 0..world_size {
            let first_chunk = chunks.len();
            let mut segment_remaining = segment_range(length, world_size, segment_index).len();
            while segment_remaining > 0 {
                let chunk_length = segment_remaining.min(chunk_elements);
                let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(chunk_length);
                chunks.push(Some(chunk));
                rest = tail;
                segment_remaining -= chunk_length;
            }
            segment_chunks.push(first_chunk..chunks.len());
        }
        debug_assert!(rest.is_empty());
        ChunkedBuffer {
            chunks,
            segment_chunks,
        }
    }
}

/// A failure on one side of a pipelined exchange; `primary` is false when the other side failed first and
/// this failure is only its consequence.
struct SideFailure {
    error: CollectiveError,
    primary: bool,
}

fn fail_side(aborted: &AtomicBool, error: CollectiveError, other_side: &LinkStream) -> SideFailure {
    let primary = !aborted.swap(true, Ordering::SeqCst);
    if primary {
        // Unblocks the other side at once instead of after its timeout.
        other_side.shutdown();
    }
    SideFailure { error, primary }
}

/// Reduce-scatter then all-gather, 2(n-1) steps. A sender thread writes chunks to the next rank in the order
/// the main thread queues them, while the main thread receives (and reduces) chunks from the previous rank:
/// a chunk reduced in step s is queued for step s+1 at once, so the pipeline runs across steps.
///
/// With [`GradientCompression::Bf16`] every chunk travels as bf16: the receiver widens it to f32 and adds its
/// own f32 values (one rounding per hop, when the sum is sent on), and the owner of a fully reduced segment
/// rounds it to bf16 in place before the all-gather sends it, so every rank ends with the same values.
#[allow(clippy::too_many_arguments)]
fn ring_all_reduce(
    links: &RingLinks,
    config: &RingConfig,
    receive_scratch: &mut Vec<f32>,
    rank: usize,
    world_size: usize,
    buffer: &mut [f32],
    compression: GradientCompression,
) -> Result<()> {
    let chunk_elements = (config.chunk_bytes / std::mem::size_of::<f32>()).max(1);
    if receive_scratch.len() < chunk_elements {
        receive_scratch.resize(chunk_elements, 0.0);
    }
    let chunked = ChunkedBuffer::new(buffer, world_size, chunk_elements);
    let aborted = AtomicBool::new(false);
    let (queue_sender, queue_receiver) = mpsc::channel::<(usize, &mut [f32])>();
    let (sent_sender, sent_receiver) = mpsc::channel::<(usize, &mut [f32])>();
    let io_timeout = config.io_timeout;
    let aborted_flag = &aborted;
    std::thread::scope(|scope| {
        // `move`: the thread owns `sent_sender`, so its exit (error included) ends the main thread's waits.
        let sender_thread = scope.spawn(move || -> std::result::Result<(), SideFailure> {
            let mut encoded = Vec::new();
            for (chunk_id, chunk) in queue_receiver {
                let written = match compression {
                    GradientCompression::None => write_f32s(&links.to_next.stream, chunk),
                    GradientCompression::Bf16 => {
                        write_bf16s(&links.to_next.stream, chunk, &mut encoded)
                    }
                };
                if let Err(source) = written {
                    let error =
                        links
                            .to_next
                            .peer
                            .io_error("all_reduce_sum (sending)", io_timeout, source);
                    return Err(fail_side(aborted_flag, error, &links.from_previous.stream));
                }
                // The main thread stops listening once it has received everything; what is queued must
                // still be written, so a closed return channel is no reason to stop.
                let _ = sent_sender.send((chunk_id, chunk));
            }
            Ok(())
        });
        let receive_outcome = receive_and_reduce(
            links,
            io_timeout,
            &mut receive_scratch[..chunk_elements],
            rank,
            world_size,
            chunked,
            queue_sender,
            sent_receiver,
            compression,
        )
        .map_err(|error| fail_side(&aborted, error, &links.to_next.stream));
        let send_outcome = sender_thread.join().unwrap_or_else(|_| {
            Err(SideFailure {
                error: CollectiveError::InvalidSetup {
                    reason: "the all-reduce sender thread panicked".to_string(),
                },
                primary: true,
            })
        });
        match (receive_outcome, send_outcome) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(receive_failure), Err(send_failure))
                if send_failure.primary && !receive_failure.primary =>
            {
                Err(send_failure.error)
            }
            (Err(failure), _) | (Ok(()), Err(failure)) => Err(failure.error),
        }
    })
}

/// The main thread's half of [`ring_all_reduce`].
#[allow(clippy::too_many_arguments)]
fn receive_and_reduce<'a>(
    links: &RingLinks,
    io_timeout: Duration,
    receive_scratch: &mut [f32],
    rank: usize,
    world_size: usize,
    mut chunked: ChunkedBuffer<'a>,
    queue_sender: mpsc::Sender<(usize, &'a mut [f32])>,
    sent_receiver: mpsc::Receiver<(usize, &'a mut [f32])>,
    compression: GradientCompression,
) -> Result<()> {
    let previous = &links.from_previous;
    let mut received_bf16 = Vec::new();
    let sender_stopped = |operation: &str| CollectiveError::PeerIo {
        operation: operation.to_string(),
        peer_rank: links.to_next.peer.rank,
        address: links.to_next.peer.address.clone(),
        source: std::io::Error::other("the sender thread stopped"),
    };
    let queue = |chunk_id: usize, chunk: &'a mut [f32], operation: &str| {
        queue_sender
            .send((chunk_id, chunk))
            .map_err(|_| sender_stopped(operation))
    };

    // Step 0 of reduce-scatter sends this rank's own segment.
    for chunk_id in chunked.segment_chunks[rank].clone() {
        let chunk = chunked.chunks[chunk_id]
            .take()
            .expect("chunks start at home");
        queue(chunk_id, chunk, "all_reduce_sum (reduce-scatter)")?;
    }

    // Reduce-scatter: step s receives segment (r-s-1), adds this rank's values and queues it for step s+1
    // (after the last step, the fully reduced segment r+1 opens the all-gather).
    for step in 0..world_size - 1 {
        let segment = (rank + 2 * world_size - step - 1) % world_size;
        let operation = format!("all_reduce_sum (reduce-scatter step {step})");
        for chunk_id in chunked.segment_chunks[segment].clone() {
            let chunk = chunked.chunks[chunk_id]
                .take()
                .expect("a segment is received in reduce-scatter before it is ever sent");
            let io_error = |source| previous.peer.io_error(&operation, io_timeout, source);
            match compression {
                GradientCompression::None => {
                    let received = &mut receive_scratch[..chunk.len()];
                    read_f32s(&previous.stream, received).map_err(io_error)?;
                    add_into(chunk, received);
                }
                GradientCompression::Bf16 => {
                    read_bf16s(&previous.stream, chunk.len(), &mut received_bf16)
                        .map_err(io_error)?;
                    add_bf16_into(chunk, &received_bf16);
                    if step + 2 == world_size {
                        // The segment is complete: this rank keeps exactly what the all-gather sends.
                        round_to_bf16(chunk);
                    }
                }
            }
            queue(chunk_id, chunk, &operation)?;
        }
    }

    // All-gather: step s receives the final segment (r-s) into place and forwards it, except in the last step.
    for step in 0..world_size - 1 {
        let segment = (rank + world_size - step) % world_size;
        let operation = format!("all_reduce_sum (all-gather step {step})");
        for chunk_id in chunked.segment_chunks[segment].clone() {
            // The chunk was sent in reduce-scatter; wait until the sender thread hands it back.
            while chunked.chunks[chunk_id].is_none() {
                let (returned_id, returned_chunk) = sent_receiver
                    .recv()
                    .map_err(|_| sender_stopped(&operation))?;
                chunked.chunks[returned_id] = Some(returned_chunk);
            }
            let chunk = chunked.chunks[chunk_id].take().expect("just returned");
            let io_error = |source| previous.peer.io_error(&operation, io_timeout, source);
            match compression {
                GradientCompression::None => {
                    read_f32s(&previous.stream, chunk).map_err(io_error)?;
                }
                GradientCompression::Bf16 => {
                    read_bf16s(&previous.stream, chunk.len(), &mut received_bf16)
                        .map_err(io_error)?;
                    widen_bf16_into(chunk, &received_bf16);
                }
            }
            if step + 2 < world_size {
                queue(chunk_id, chunk, &operation)?;
            }
        }
    }
    // Dropping `queue_sender` lets the sender thread finish once everything queued is written.
    Ok(())
}

/// Pipelined broadcast along the ring from `root`: each rank receives a chunk and forwards it, except the
/// rank just before the root.
fn ring_broadcast(
    links: &RingLinks,
    config: &RingConfig,
    rank: usize,
    world_size: usize,
    root: usize,
    buffer: &mut [f32],
) -> Result<()> {
    let chunk_elements = (config.chunk_bytes / std::mem::size_of::<f32>()).max(1);
    let io_timeout = config.io_timeout;
    let forwards = (rank + 1) % world_size != root;
    for chunk in buffer.chunks_mut(chunk_elements) {
        if rank != root {
            read_f32s(&links.from_previous.stream, chunk).map_err(|source| {
                links
                    .from_previous
                    .peer
                    .io_error("broadcast (receiving)", io_timeout, source)
            })?;
        }
        if forwards {
            write_f32s(&links.to_next.stream, chunk).map_err(|source| {
                links
                    .to_next
                    .peer
                    .io_error("broadcast (sending)", io_timeout, source)
            })?;
        }
    }
    Ok(())
}

/// Token rounds completing a barrier: the header exchange was round 1; after round n-1 every rank has
/// (transitively) heard from every other rank.
fn ring_barrier(
    links: &RingLinks,
    config: &RingConfig,
    world_size: usize,
    sequence: u64,
) -> Result<()> {
    let io_timeout = config.io_timeout;
    for round in 1..world_size - 1 {
        let token = sequence.wrapping_add(round as u64).to_le_bytes();
        links
            .to_next
            .stream
            .write_all(&token)
            .map_err(|source| links.to_next.peer.io_error("barrier", io_timeout, source))?;
        let mut received = [0u8; 8];
        links
            .from_previous
            .stream
            .read_exact(&mut received)
            .map_err(|source| {
                links
                    .from_previous
                    .peer
                    .io_error("barrier", io_timeout, source)
            })?;
        if received != token {
            return Err(links.from_previous.peer.mismatch(
                "barrier",
                format!(
                    "round {round} token {} instead of {}",
                    u64::from_le_bytes(received),
                    u64::from_le_bytes(token)
                ),
            ));
        }
    }
    Ok(())
}

impl Collective for RingAllReduce {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buffer: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_sum_compressed(buffer, GradientCompression::None)
    }

    fn all_reduce_sum_compressed(
        &mut self,
        buffer: &mut [f32],
        compression: GradientCompression,
    ) -> Result<(), CollectiveError> {
        let element_count = buffer.len();
        let kind = match compression {
            GradientCompression::None => OperationKind::AllReduceSum,
            GradientCompression::Bf16 => OperationKind::AllReduceSumBf16,
        };
        self.run_operation(
            kind,
            element_count,
            0,
            |links, config, scratch, rank, world_size| {
                if buffer.is_empty() {
                    return Ok(());
                }
                ring_all_reduce(
                    links,
                    config,
                    scratch,
                    rank,
                    world_size,
                    buffer,
                    compression,
                )
            },
        )
    }

    fn broadcast(&mut self, buffer: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        if root >= self.world_size {
            return Err(CollectiveError::InvalidRoot {
                root,
                world_size: self.world_size,
            });
        }
        let element_count = buffer.len();
        self.run_operation(
            OperationKind::Broadcast,
            element_count,
            root,
            |links, config, _scratch, rank, world_size| {
                ring_broadcast(links, config, rank, world_size, root, buffer)
            },
        )
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let sequence = self.sequence;
        self.run_operation(
            OperationKind::Barrier,
            0,
            0,
            |links, config, _scratch, _rank, world_size| {
                ring_barrier(links, config, world_size, sequence)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_buffer_in_order_with_uneven_sizes() {
        for length in [0usize, 1, 2, 3, 7, 13, 1009] {
            for world_size in 1..=5 {
                let ranges: Vec<_> = (0..world_size)
                    .map(|i| segment_range(length, world_size, i))
                    .collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[world_size - 1].end, length);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() >= pair[1].len());
                    assert!(pair[0].len() - pair[1].len() <= 1);
                }
            }
        }
    }

    #[test]
    fn chunked_buffer_cuts_segments_into_chunks() {
        let mut buffer: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let chunked = ChunkedBuffer::new(&mut buffer, 3, 2);
        // Segments of 4, 3, 3 elements: chunks [2,2], [2,1], [2,1].
        assert_eq!(chunked.segment_chunks, vec![0..2, 2..4, 4..6]);
        let lengths: Vec<_> = chunked
            .chunks
            .iter()
            .map(|chunk| chunk.as_ref().map_or(0, |c| c.len()))
            .collect();
        assert_eq!(lengths, vec![2, 2, 2, 1, 2, 1]);
        let mut buffer_small = vec![1.0f32];
        let chunked_small = ChunkedBuffer::new(&mut buffer_small, 4, 8);
        assert_eq!(chunked_small.segment_chunks, vec![0..1, 1..1, 1..1, 1..1]);
    }
}
