//! Ring all-reduce, broadcast and barrier between ranks run as threads over 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use plankton_collective::{
    Collective, CollectiveError, RingAllReduce, RingConfig, RingListener, SingleProcess,
};
use plankton_proto::v1::{PeerHello, PeerHelloAck};
use prost::Message;

fn test_config() -> RingConfig {
    RingConfig {
        connect_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(10),
        chunk_bytes: 4096,
    }
}

fn bind_listeners(world_size: usize) -> (Vec<RingListener>, Vec<String>) {
    let listeners: Vec<_> = (0..world_size)
        .map(|_| RingListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addresses = listeners
        .iter()
        .map(|listener| listener.local_addr().to_string())
        .collect();
    (listeners, addresses)
}

/// Establishes the ring of `job_id` with one thread per rank and runs `per_rank` on each rank's ring.
fn with_ring<T: Send>(
    listeners: &[RingListener],
    addresses: &[String],
    job_id: &str,
    config: &RingConfig,
    per_rank: impl Fn(usize, RingAllReduce) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..listeners.len())
            .map(|rank| {
                let per_rank = &per_rank;
                scope.spawn(move || {
                    let ring =
                        RingAllReduce::establish(&listeners[rank], job_id, rank, addresses, config)
                            .unwrap_or_else(|error| panic!("rank {rank} establish: {error}"));
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

/// Integer-valued, so sums are exact in f32 whatever the order.
fn rank_values(rank: usize, length: usize) -> Vec<f32> {
    (0..length)
        .map(|index| ((index * 7 + rank * 13) % 1000) as f32 - 500.0)
        .collect()
}

fn expected_sum(world_size: usize, length: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; length];
    for rank in 0..world_size {
        for (total, value) in sum.iter_mut().zip(rank_values(rank, length)) {
            *total += value;
        }
    }
    sum
}

#[test]
fn all_reduce_sums_exactly_for_world_sizes_1_to_4_and_uneven_lengths() {
    let lengths = [1usize, 2, 3, 7, 13, 1009, 0];
    for world_size in 1..=4 {
        // One listener per rank, reused by every job below as a worker's listener is.
        let (listeners, addresses) = bind_listeners(world_size);
        for length in lengths {
            let job_id = format!("job-n{world_size}-len{length}");
            let expected = expected_sum(world_size, length);
            let results = with_ring(
                &listeners,
                &addresses,
                &job_id,
                &test_config(),
                |rank, mut ring| {
                    assert_eq!((ring.rank(), ring.world_size()), (rank, world_size));
                    // Twice on the same ring: operation sequence numbers advance in step.
                    let mut outputs = Vec::new();
                    for _ in 0..2 {
                        let mut buffer = rank_values(rank, length);
                        ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
                        outputs.push(buffer);
                    }
                    outputs
                },
            );
            for (rank, outputs) in results.into_iter().enumerate() {
                for output in outputs {
                    assert_eq!(
                        output, expected,
                        "world size {world_size}, length {length}, rank {rank}"
                    );
                }
            }
        }
    }
}

#[test]
fn all_reduce_sums_ten_million_floats() {
    let length = 10_000_000;
    for world_size in [2usize, 4] {
        let (listeners, addresses) = bind_listeners(world_size);
        let config = RingConfig {
            chunk_bytes: 256 * 1024,
            ..test_config()
        };
        let expected = expected_sum(world_size, length);
        let mismatches = with_ring(
            &listeners,
            &addresses,
            "job-10m",
            &config,
            |rank, mut ring| {
                let mut buffer = rank_values(rank, length);
                ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
                buffer
                    .iter()
                    .zip(&expected)
                    .filter(|(got, want)| got != want)
                    .count()
            },
        );
        assert_eq!(mismatches, vec![0; world_size], "world size {world_size}");
    }
}

#[test]
fn broadcast_copies_the_root_buffer_to_every_rank() {
    let world_size = 3;
    let (listeners, addresses) = bind_listeners(world_size);
    for length in [1usize, 1009] {
        let results = with_ring(
            &listeners,
            &addresses,
            &format!("broadcast-{length}"),
            &test_config(),
            |rank, mut ring| {
                (0..world_size)
                    .map(|root| {
                        let mut buffer = rank_values(rank, length);
                        ring.broadcast(&mut buffer, root).expect("broadcast");
                        buffer
                    })
                    .collect::<Vec<_>>()
            },
        );
        for (rank, per_root) in results.iter().enumerate() {
            for (root, buffer) in per_root.iter().enumerate() {
                assert_eq!(
                    buffer,
                    &rank_values(root, length),
                    "rank {rank} after broadcast from {root}"
                );
            }
        }
    }
    let invalid = with_ring(
        &listeners,
        &addresses,
        "broadcast-bad-root",
        &test_config(),
        |_, mut ring| ring.broadcast(&mut [1.0], 3).unwrap_err(),
    );
    assert!(invalid.iter().all(|error| matches!(
        error,
        CollectiveError::InvalidRoot {
            root: 3,
            world_size: 3
        }
    )));
}

#[test]
fn barrier_waits_for_the_last_rank() {
    let world_size = 4;
    let (listeners, addresses) = bind_listeners(world_size);
    let late_rank_delay = Duration::from_millis(300);
    let started = Instant::now();
    let exits = with_ring(
        &listeners,
        &addresses,
        "barrier",
        &test_config(),
        |rank, mut ring| {
            if rank == 2 {
                std::thread::sleep(late_rank_delay);
            }
            let entered_at = started.elapsed();
            ring.barrier().expect("barrier");
            ring.barrier().expect("second barrier");
            (entered_at, started.elapsed())
        },
    );
    let last_entry = exits
        .iter()
        .map(|(entered, _)| *entered)
        .max()
        .expect("ranks");
    assert!(last_entry >= late_rank_delay);
    for (rank, (_, exited)) in exits.iter().enumerate() {
        assert!(
            *exited >= last_entry,
            "rank {rank} left the barrier at {exited:?} before the last entry at {last_entry:?}"
        );
    }
}

#[test]
fn single_process_and_ring_of_one_are_no_ops() {
    let mut single = SingleProcess;
    let mut buffer = vec![1.0, 2.0];
    single.all_reduce_sum(&mut buffer).expect("no-op");
    single.broadcast(&mut buffer, 0).expect("no-op");
    single.barrier().expect("no-op");
    assert_eq!(buffer, vec![1.0, 2.0]);
    assert!(single.broadcast(&mut buffer, 1).is_err());
    let listener = RingListener::bind("127.0.0.1:0").expect("bind");
    let mut ring = RingAllReduce::establish(
        &listener,
        "solo",
        0,
        &["unused:1".to_string()],
        &test_config(),
    )
    .expect("ring of one");
    ring.all_reduce_sum(&mut buffer).expect("no-op");
    ring.barrier().expect("no-op");
    assert_eq!(buffer, vec![1.0, 2.0]);
}

#[test]
fn stale_and_foreign_connections_are_rejected_and_the_ring_still_forms() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    // Left in rank 1's backlog before the job starts: a hello from an earlier job, and a non-ring client.
    let mut stale = TcpStream::connect(listeners[1].local_addr()).expect("connect stale");
    let hello = PeerHello {
        protocol_version: 1,
        job_id: "old-job".to_string(),
        rank: 0,
        world_size: 2,
    };
    let encoded = hello.encode_to_vec();
    stale
        .write_all(&(encoded.len() as u32).to_le_bytes())
        .expect("write");
    stale.write_all(&encoded).expect("write");
    let mut foreign = TcpStream::connect(listeners[1].local_addr()).expect("connect foreign");
    foreign.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");

    let sums = with_ring(
        &listeners,
        &addresses,
        "new-job",
        &test_config(),
        |rank, mut ring| {
            let mut buffer = rank_values(rank, 13);
            ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
            buffer
        },
    );
    assert!(sums.iter().all(|sum| *sum == expected_sum(world_size, 13)));

    stale
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut length_bytes = [0u8; 4];
    stale.read_exact(&mut length_bytes).expect("ack length");
    let mut ack_bytes = vec![0u8; u32::from_le_bytes(length_bytes) as usize];
    stale.read_exact(&mut ack_bytes).expect("ack");
    let ack = PeerHelloAck::decode(ack_bytes.as_slice()).expect("decode ack");
    assert!(!ack.accepted);
    assert!(
        ack.reason.contains("old-job") && ack.reason.contains("new-job"),
        "{}",
        ack.reason
    );
}

#[test]
fn a_peer_that_dies_mid_operation_fails_the_others_fast_and_poisons_the_ring() {
    let world_size = 3;
    let (listeners, addresses) = bind_listeners(world_size);
    let io_timeout = Duration::from_secs(5);
    let config = RingConfig {
        io_timeout,
        ..test_config()
    };
    let everyone_connected = Barrier::new(world_size);
    let outcomes = with_ring(
        &listeners,
        &addresses,
        "dying-peer",
        &config,
        |rank, mut ring| {
            everyone_connected.wait();
            if rank == 2 {
                // The others are blocked in the all-reduce when this rank disappears.
                std::thread::sleep(Duration::from_millis(200));
                drop(ring);
                return None;
            }
            let started = Instant::now();
            let mut buffer = rank_values(rank, 1_000_000);
            let error = ring.all_reduce_sum(&mut buffer).expect_err("peer died");
            let elapsed = started.elapsed();
            let after = ring.all_reduce_sum(&mut buffer).expect_err("poisoned");
            Some((error, elapsed, after))
        },
    );
    for (rank, outcome) in outcomes.into_iter().enumerate().take(2) {
        let (error, elapsed, after) = outcome.expect("surviving rank");
        assert!(elapsed < io_timeout, "rank {rank} waited {elapsed:?}");
        let message = error.to_string();
        assert!(
            message.contains("peer rank") && message.contains("127.0.0.1:"),
            "rank {rank}: {message}"
        );
        if rank == 0 {
            // Rank 0 reads from rank 2.
            assert!(message.contains("peer rank 2"), "{message}");
        }
        assert!(
            matches!(after, CollectiveError::Poisoned { .. }),
            "rank {rank}: {after}"
        );
    }
}

#[test]
fn a_silent_peer_fails_the_operation_within_the_io_timeout() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    let io_timeout = Duration::from_millis(500);
    let config = RingConfig {
        io_timeout,
        ..test_config()
    };
    let outcomes = with_ring(
        &listeners,
        &addresses,
        "silent-peer",
        &config,
        |rank, mut ring| {
            if rank == 1 {
                // Alive but never joins the operation.
                std::thread::sleep(Duration::from_secs(2));
                return None;
            }
            let started = Instant::now();
            let error = ring
                .all_reduce_sum(&mut rank_values(rank, 1009))
                .expect_err("silent peer");
            Some((error, started.elapsed()))
        },
    );
    let (error, elapsed) = outcomes[0].as_ref().expect("rank 0");
    assert!(
        matches!(error, CollectiveError::PeerTimeout { peer_rank: 1, .. }),
        "{error}"
    );
    assert!(
        *elapsed >= io_timeout && *elapsed < io_timeout * 3,
        "{elapsed:?}"
    );
}

#[test]
fn ranks_that_disagree_on_the_buffer_length_get_a_mismatch_error() {
    let (listeners, addresses) = bind_listeners(2);
    let errors = with_ring(
        &listeners,
        &addresses,
        "mismatch",
        &test_config(),
        |rank, mut ring| {
            let mut buffer = rank_values(rank, 100 + rank);
            ring.all_reduce_sum(&mut buffer)
                .expect_err("lengths differ")
        },
    );
    for error in errors {
        let message = error.to_string();
        assert!(
            matches!(
                error,
                CollectiveError::ProtocolMismatch { .. } | CollectiveError::PeerClosed { .. }
            ),
            "{message}"
        );
    }
}

#[test]
fn establishing_without_the_peers_times_out_naming_them() {
    let (listeners, addresses) = bind_listeners(2);
    let config = RingConfig {
        connect_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let started = Instant::now();
    let error = RingAllReduce::establish(&listeners[0], "lonely", 0, &addresses, &config)
        .expect_err("no peer");
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = error.to_string();
    assert!(
        message.contains("peer rank 1") && message.contains("lonely"),
        "{message}"
    );
}
