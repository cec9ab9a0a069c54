//! Rings with a ring secret (protocol v3 proofs) and ring TLS, between ranks run as threads over 127.0.0.1:
//! they form and reduce exactly, and rogue, silent or mis-configured peers are refused without delaying them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plankton_collective::{
    Collective, CollectiveError, RingAbort, RingAllReduce, RingConfig, RingListener, RingSecurity,
};
use plankton_proto::v1::{PeerHello, PeerProof};

use common::{bind_listeners, expected_sum, rank_values, read_ack, try_write_frame, write_frame};

const SECRET: [u8; 32] = [0x3c; 32];

fn test_config() -> RingConfig {
    RingConfig {
        connect_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(10),
        chunk_bytes: 64 * 1024,
    }
}

/// Establishes the ring of `job_id` with one thread per rank, rank r secured by `securities[r]`, and runs
/// `per_rank` on each rank's outcome.
fn with_ranks<T: Send>(
    listeners: &[RingListener],
    addresses: &[String],
    job_id: &str,
    config: &RingConfig,
    securities: &[RingSecurity],
    per_rank: impl Fn(usize, Result<RingAllReduce, CollectiveError>) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..listeners.len())
            .map(|rank| {
                let per_rank = &per_rank;
                scope.spawn(move || {
                    let ring = RingAllReduce::establish_secured(
                        &listeners[rank],
                        job_id,
                        0,
                        rank,
                        addresses,
                        config,
                        &securities[rank],
                        &RingAbort::new(),
                    );
                    per_rank(rank, ring)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("rank thread"))
            .collect()
    })
}

/// A hello as the real rank would send it: right job, generation, rank and world size, claiming a secret.
fn convincing_hello(job_id: &str, rank: u32, world_size: u32) -> PeerHello {
    PeerHello {
        protocol_version: 3,
        job_id: job_id.to_string(),
        rank,
        world_size,
        generation: 0,
        nonce: vec![0x11; 32],
        authenticated: true,
    }
}

/// Reads until the other end closes; true when it did within five seconds.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
        }
    }
}

#[test]
fn authenticated_rings_reduce_broadcast_and_barrier_exactly_with_and_without_tls() {
    let world_size = 3;
    let (listeners, addresses) = bind_listeners(world_size);
    for tls in [false, true] {
        let security = RingSecurity::new(SECRET, tls);
        let securities = vec![security; world_size];
        // Larger than a TLS record and than a chunk, and uneven across the three segments.
        let length = 300_007;
        let expected = expected_sum(world_size, length);
        let outcomes = with_ranks(
            &listeners,
            &addresses,
            &format!("secured-tls-{tls}"),
            &test_config(),
            &securities,
            |rank, ring| {
                let mut ring = ring.unwrap_or_else(|error| panic!("rank {rank}: {error}"));
                let mut sums = Vec::new();
                for _ in 0..2 {
                    let mut buffer = rank_values(rank, length);
                    ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
                    sums.push(buffer);
                }
                let mut broadcast = rank_values(rank, 1009);
                ring.broadcast(&mut broadcast, 2).expect("broadcast");
                ring.barrier().expect("barrier");
                (sums, broadcast)
            },
        );
        for (rank, (sums, broadcast)) in outcomes.into_iter().enumerate() {
            for sum in sums {
                assert!(sum == expected, "tls {tls}, rank {rank}: wrong sum");
            }
            assert_eq!(broadcast, rank_values(2, 1009), "tls {tls}, rank {rank}");
        }
    }
}

#[test]
fn rogue_peers_without_the_secret_are_refused_and_the_real_ring_still_forms_at_once() {
    let world_size = 3;
    let job_id = "rogue-target";
    let (listeners, addresses) = bind_listeners(world_size);
    let handshake_timeout = Duration::from_secs(3);
    let config = RingConfig {
        handshake_timeout,
        ..test_config()
    };
    // Queued on rank 1's listener before the job starts, each claiming to be rank 0 with the public job id.
    let target = listeners[1].local_addr();
    let mut wrong_proof = TcpStream::connect(target).expect("connect");
    write_frame(
        &mut wrong_proof,
        &convincing_hello(job_id, 0, world_size as u32),
    );
    let mut no_proof = TcpStream::connect(target).expect("connect");
    write_frame(
        &mut no_proof,
        &convincing_hello(job_id, 0, world_size as u32),
    );
    let mut claims_no_secret = TcpStream::connect(target).expect("connect");
    write_frame(
        &mut claims_no_secret,
        &PeerHello {
            authenticated: false,
            ..convincing_hello(job_id, 0, world_size as u32)
        },
    );
    // The rogue that sends a proof does so as soon as its hello is acked. On a loaded machine the real ring may
    // form (closing every pending handshake) before this thread writes: the write may then fail.
    let (ack_sender, ack_received) = mpsc::channel();
    let rogue = std::thread::spawn(move || {
        let ack = read_ack(&mut wrong_proof);
        let _ = try_write_frame(
            &mut wrong_proof,
            &PeerProof {
                proof: vec![0xee; 32],
            },
        );
        ack_sender.send(ack).expect("send");
        closed_by_peer(&mut wrong_proof)
    });

    let securities = vec![RingSecurity::new(SECRET, false); world_size];
    let length = 10_007;
    let started = Instant::now();
    let outcomes = with_ranks(
        &listeners,
        &addresses,
        job_id,
        &config,
        &securities,
        |rank, ring| {
            let mut ring = ring.unwrap_or_else(|error| panic!("rank {rank}: {error}"));
            let formed_after = started.elapsed();
            let mut buffer = rank_values(rank, length);
            ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
            (formed_after, buffer)
        },
    );
    let expected = expected_sum(world_size, length);
    for (rank, (formed_after, buffer)) in outcomes.iter().enumerate() {
        assert!(*buffer == expected, "rank {rank}: wrong sum");
        // The rogue without a proof holds its connection until the handshake timeout: the ring does not wait.
        assert!(
            *formed_after < handshake_timeout / 3,
            "rank {rank} formed after {formed_after:?}"
        );
    }

    // The rogue got as far as an accepting ack (job ids are public), then its proof was refused.
    let ack = ack_received.recv().expect("rogue ack");
    assert!(ack.accepted, "{}", ack.reason);
    assert_eq!(ack.proof.len(), 32);
    assert!(
        rogue.join().expect("rogue"),
        "the rogue's connection stayed open"
    );
    let refused = read_ack(&mut claims_no_secret);
    assert!(!refused.accepted);
    assert!(
        refused.reason.contains("no ring secret"),
        "{}",
        refused.reason
    );
    assert!(refused.proof.is_empty());
    // The ring formed, so the silent rogue was closed with it.
    assert!(closed_by_peer(&mut no_proof));
}

#[test]
fn a_rank_with_another_secret_is_never_accepted() {
    for tls in [false, true] {
        let (listeners, addresses) = bind_listeners(2);
        let config = RingConfig {
            connect_timeout: Duration::from_millis(800),
            ..test_config()
        };
        let securities = [
            RingSecurity::new(SECRET, tls),
            RingSecurity::new([0x3d; 32], tls),
        ];
        let errors = with_ranks(
            &listeners,
            &addresses,
            "two-secrets",
            &config,
            &securities,
            |rank, ring| match ring {
                Ok(_) => panic!("rank {rank} formed a ring with a peer holding another secret"),
                Err(error) => error,
            },
        );
        for (rank, error) in errors.iter().enumerate() {
            let message = error.to_string();
            eprintln!("tls {tls}, rank {rank}: {message}");
            assert_eq!(error.peer_rank(), Some(1 - rank), "tls {tls}: {message}");
            assert!(
                message.contains("proof") && message.contains("127.0.0.1:"),
                "tls {tls}, rank {rank}: {message}"
            );
        }
    }
}

#[test]
fn a_silent_connection_does_not_delay_a_tls_ring_past_the_handshake_timeout() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    let handshake_timeout = Duration::from_secs(2);
    let config = RingConfig {
        handshake_timeout,
        ..test_config()
    };
    // Queued before the real peers: one says nothing, one sends the start of a TLS record and stops.
    let _silent = TcpStream::connect(listeners[1].local_addr()).expect("connect silent");
    let mut stalled_tls = TcpStream::connect(listeners[0].local_addr()).expect("connect");
    stalled_tls
        .write_all(&[0x16, 0x03, 0x01, 0x00])
        .expect("write");
    let securities = vec![RingSecurity::new(SECRET, true); world_size];
    let started = Instant::now();
    let formed_after = with_ranks(
        &listeners,
        &addresses,
        "silent-tls",
        &config,
        &securities,
        |rank, ring| {
            let mut ring = ring.unwrap_or_else(|error| panic!("rank {rank}: {error}"));
            let formed_after = started.elapsed();
            let mut buffer = rank_values(rank, 13);
            ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
            assert_eq!(buffer, expected_sum(world_size, 13));
            formed_after
        },
    );
    let slowest = formed_after.iter().max().copied().expect("ranks");
    eprintln!("TLS ring formed in {slowest:?} with silent connections queued");
    assert!(slowest < handshake_timeout / 2, "{slowest:?}");
}

#[test]
fn ranks_that_disagree_on_the_secret_or_tls_are_refused_with_a_reason() {
    let config = RingConfig {
        connect_timeout: Duration::from_millis(600),
        ..test_config()
    };
    let cases = [
        (
            [
                RingSecurity::new(SECRET, false),
                RingSecurity::unauthenticated(),
            ],
            "ring secret",
        ),
        (
            [
                RingSecurity::new(SECRET, true),
                RingSecurity::new(SECRET, false),
            ],
            "TLS",
        ),
    ];
    for (securities, reason) in cases {
        let (listeners, addresses) = bind_listeners(2);
        let errors = with_ranks(
            &listeners,
            &addresses,
            "mismatched",
            &config,
            &securities,
            |rank, ring| match ring {
                Ok(_) => panic!("rank {rank} formed a ring with mismatched security"),
                Err(error) => error.to_string(),
            },
        );
        eprintln!("{errors:#?}");
        assert!(
            errors.iter().any(|message| message.contains(reason)),
            "expected {reason:?} in {errors:?}"
        );
    }
    let short_secret = RingAllReduce::establish_secured(
        &RingListener::bind("127.0.0.1:0").expect("bind"),
        "short",
        0,
        0,
        &["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()],
        &config,
        &RingSecurity::new(vec![1; 4], false),
        &RingAbort::new(),
    )
    .expect_err("short secret");
    assert!(
        matches!(short_secret, CollectiveError::InvalidSetup { .. }),
        "{short_secret}"
    );
}

#[test]
fn abort_and_io_timeout_end_blocked_tls_operations() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    let io_timeout = Duration::from_millis(500);
    let config = RingConfig {
        io_timeout,
        ..test_config()
    };
    let securities = vec![RingSecurity::new(SECRET, true); world_size];
    let aborts = [RingAbort::new(), RingAbort::new()];
    let (rank_zero_done_sender, rank_zero_done) = mpsc::channel::<()>();
    let rank_zero_done = std::sync::Mutex::new(rank_zero_done);
    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let (listeners, addresses, config) = (&listeners, &addresses, &config);
                let (securities, aborts) = (&securities, &aborts);
                let rank_zero_done = &rank_zero_done;
                let rank_zero_done_sender = rank_zero_done_sender.clone();
                scope.spawn(move || {
                    let mut ring = RingAllReduce::establish_secured(
                        &listeners[rank],
                        "tls-abort",
                        0,
                        rank,
                        addresses,
                        config,
                        &securities[rank],
                        &aborts[rank],
                    )
                    .expect("establish");
                    let mut buffer = rank_values(rank, 100_000);
                    if rank == 1 {
                        // Alive but silent until rank 0's first operation has timed out on it.
                        rank_zero_done
                            .lock()
                            .expect("lock")
                            .recv()
                            .expect("rank 0 done");
                        return (ring.barrier().expect_err("rank 0 gave up"), None);
                    }
                    let started = Instant::now();
                    let timed_out = ring.all_reduce_sum(&mut buffer).expect_err("silent peer");
                    let waited = started.elapsed();
                    assert!(
                        matches!(timed_out, CollectiveError::PeerTimeout { peer_rank: 1, .. }),
                        "{timed_out}"
                    );
                    assert!(
                        waited >= io_timeout && waited < io_timeout * 3,
                        "{waited:?}"
                    );
                    rank_zero_done_sender.send(()).expect("send");
                    (timed_out, Some(waited))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("rank"))
            .collect::<Vec<_>>()
    });
    assert!(outcomes[0].1.is_some());
    // Rank 0's failure closed the ring: rank 1's next operation fails naming it.
    assert_eq!(outcomes[1].0.peer_rank(), Some(0), "{}", outcomes[1].0);

    // An abort from another thread ends a TLS all-reduce blocked on a stalled peer at once.
    let (listeners, addresses) = bind_listeners(world_size);
    let aborts = [RingAbort::new(), RingAbort::new()];
    let stalled_released = std::sync::Barrier::new(2);
    let latencies = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let (listeners, addresses, securities, aborts) =
                    (&listeners, &addresses, &securities, &aborts);
                let stalled_released = &stalled_released;
                scope.spawn(move || {
                    let mut ring = RingAllReduce::establish_secured(
                        &listeners[rank],
                        "tls-abort-2",
                        0,
                        rank,
                        addresses,
                        &test_config(),
                        &securities[rank],
                        &aborts[rank],
                    )
                    .expect("establish");
                    if rank == 1 {
                        stalled_released.wait();
                        return None;
                    }
                    let watchdog = {
                        let abort = aborts[0].clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(200));
                            let aborted_at = Instant::now();
                            abort.abort("step watchdog: peer stalled");
                            aborted_at
                        })
                    };
                    let error = ring
                        .all_reduce_sum(&mut rank_values(0, 100_000))
                        .expect_err("aborted");
                    let returned_at = Instant::now();
                    let aborted_at = watchdog.join().expect("watchdog");
                    stalled_released.wait();
                    assert!(error.is_aborted(), "{error}");
                    Some(returned_at - aborted_at)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("rank"))
            .collect::<Vec<_>>()
    });
    let latency = latencies[0].expect("rank 0");
    eprintln!("TLS all_reduce_sum returned {latency:?} after the abort");
    assert!(latency < Duration::from_millis(300), "{latency:?}");
}
