//! Ring all-reduce, broadcast and barrier between ranks run as threads over 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Barrier, mpsc};
use std::time::{Duration, Instant};

use plankton_collective::{
    Collective, CollectiveError, GradientCompression, RingAbort, RingAllReduce, RingConfig,
    RingListener, SingleProcess,
};
use plankton_proto::v1::PeerHello;

use common::{bind_listeners, expected_sum, rank_values, read_ack, write_frame};

fn test_config() -> RingConfig {
    RingConfig {
        connect_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(10),
        chunk_bytes: 4096,
    }
}

/// Establishes generation 0 of the ring of `job_id` with one thread per rank and runs `per_rank` on each
/// rank's ring.
fn with_ring<T: Send>(
    listeners: &[RingListener],
    addresses: &[String],
    job_id: &str,
    config: &RingConfig,
    per_rank: impl Fn(usize, RingAllReduce) -> T + Sync,
) -> Vec<T> {
    // Held for the whole run, as a watchdog would: a ring's registration must not keep its sockets open.
    let aborts: Vec<RingAbort> = (0..listeners.len()).map(|_| RingAbort::new()).collect();
    with_ring_aborts(listeners, addresses, job_id, 0, config, &aborts, per_rank)
}

/// [`with_ring`] for generation `generation`, rank r watched by `aborts[r]`.
fn with_ring_aborts<T: Send>(
    listeners: &[RingListener],
    addresses: &[String],
    job_id: &str,
    generation: u32,
    config: &RingConfig,
    aborts: &[RingAbort],
    per_rank: impl Fn(usize, RingAllReduce) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..listeners.len())
            .map(|rank| {
                let per_rank = &per_rank;
                scope.spawn(move || {
                    let ring = RingAllReduce::establish(
                        &listeners[rank],
                        job_id,
                        generation,
                        rank,
                        addresses,
                        config,
                        &aborts[rank],
                    )
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

/// Gradient-like values (mixed signs, magnitudes 1e-4..1, not bf16-representable), different on every rank.
fn gradient_like_values(rank: usize, length: usize) -> Vec<f32> {
    (0..length)
        .map(|index| {
            let hashed = (index as u64 * 2_654_435_761 + rank as u64 * 40_503 + 17) % 1_000_003;
            let unit = hashed as f32 / 1_000_003.0;
            let sign = if (index + rank).is_multiple_of(3) {
                -1.0
            } else {
                1.0
            };
            sign * (1e-4 + unit) * if index % 5 == 0 { 1e-3 } else { 1.0 }
        })
        .collect()
}

/// The bf16 all-reduce against the exact (f64) sum. Each value passes through at most `world_size` bf16
/// roundings (one per reduce-scatter hop, the last one the final value the all-gather sends), each of relative
/// size at most 2^-8 (half an ulp of bf16's 8-bit significand, 7 bits stored) of a partial sum no larger than
/// the sum of absolute values: |error| <= world_size * 2^-8 * sum_r |x_r| * 1.02, the 2 % covering the
/// compounding of roundings and the f32 additions.
#[test]
fn bf16_all_reduce_is_within_rounding_bounds_and_identical_on_every_rank() {
    for world_size in [2usize, 3, 4] {
        let (listeners, addresses) = bind_listeners(world_size);
        for length in [1usize, 5, 1009, 20_000] {
            let inputs: Vec<Vec<f32>> = (0..world_size)
                .map(|rank| gradient_like_values(rank, length))
                .collect();
            let results = with_ring(
                &listeners,
                &addresses,
                &format!("bf16-n{world_size}-len{length}"),
                &test_config(),
                |rank, mut ring| {
                    let mut compressed = inputs[rank].clone();
                    ring.all_reduce_sum_compressed(&mut compressed, GradientCompression::Bf16)
                        .expect("bf16 all_reduce");
                    // Compression is per operation: a plain all-reduce on the same ring stays exact.
                    let mut exact = inputs[rank].clone();
                    ring.all_reduce_sum(&mut exact).expect("f32 all_reduce");
                    (compressed, exact)
                },
            );
            let (first_compressed, first_exact) = &results[0];
            for (rank, (compressed, exact)) in results.iter().enumerate() {
                let same_bits = compressed
                    .iter()
                    .zip(first_compressed)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same_bits,
                    "rank {rank} differs from rank 0 (n {world_size}, len {length})"
                );
                assert_eq!(exact, first_exact);
            }
            let mut rounded_differently = 0usize;
            for index in 0..length {
                let exact_sum: f64 = inputs.iter().map(|values| values[index] as f64).sum();
                let absolute_sum: f64 =
                    inputs.iter().map(|values| values[index].abs() as f64).sum();
                let bound = world_size as f64 * 2f64.powi(-8) * absolute_sum * 1.02;
                let got = first_compressed[index] as f64;
                assert!(
                    (got - exact_sum).abs() <= bound,
                    "index {index}: bf16 sum {got}, exact {exact_sum}, bound {bound} (n {world_size})"
                );
                assert_eq!(
                    first_compressed[index].to_bits() & 0xffff,
                    0,
                    "not a bf16 value"
                );
                if first_compressed[index] != first_exact[index] {
                    rounded_differently += 1;
                }
            }
            if length >= 1009 {
                assert!(
                    rounded_differently > length / 2,
                    "the wire did not carry bf16"
                );
            }
        }
    }
}

#[test]
fn ranks_that_disagree_on_compression_get_a_mismatch_error() {
    let (listeners, addresses) = bind_listeners(2);
    let errors = with_ring(
        &listeners,
        &addresses,
        "compression-mismatch",
        &test_config(),
        |rank, mut ring| {
            let compression = if rank == 0 {
                GradientCompression::Bf16
            } else {
                GradientCompression::None
            };
            let mut buffer = vec![1.0f32; 64];
            ring.all_reduce_sum_compressed(&mut buffer, compression)
                .expect_err("mismatch")
                .to_string()
        },
    );
    assert!(
        errors.iter().all(|error| error.contains("bf16 wire")),
        "{errors:?}"
    );
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
    let abort = RingAbort::new();
    let mut ring = RingAllReduce::establish(
        &listener,
        "solo",
        0,
        0,
        &["unused:1".to_string()],
        &test_config(),
        &abort,
    )
    .expect("ring of one");
    ring.all_reduce_sum(&mut buffer).expect("no-op");
    ring.barrier().expect("no-op");
    assert_eq!(buffer, vec![1.0, 2.0]);
    abort.abort("job cancelled");
    assert!(ring.all_reduce_sum(&mut buffer).unwrap_err().is_aborted());
}

#[test]
fn stale_and_foreign_connections_are_rejected_and_the_ring_still_forms() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    // Left in rank 1's backlog before the job starts: a hello from an earlier job, and a non-ring client.
    let mut stale = TcpStream::connect(listeners[1].local_addr()).expect("connect stale");
    write_frame(
        &mut stale,
        &PeerHello {
            protocol_version: 3,
            job_id: "old-job".to_string(),
            rank: 0,
            world_size: 2,
            generation: 0,
            ..PeerHello::default()
        },
    );
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

    let ack = read_ack(&mut stale);
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
            assert_eq!(error.peer_rank(), Some(2), "{message}");
        }
        assert!(!error.is_aborted(), "rank {rank}: {message}");
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
    let error = RingAllReduce::establish(
        &listeners[0],
        "lonely",
        0,
        0,
        &addresses,
        &config,
        &RingAbort::new(),
    )
    .expect_err("no peer");
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = error.to_string();
    assert!(
        message.contains("peer rank 1") && message.contains("lonely"),
        "{message}"
    );
}

#[test]
fn a_hello_of_another_generation_is_rejected_and_the_right_generation_still_forms() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    // A connection left over from generation 0 of the job, which has since been re-formed as generation 1.
    let mut leftover = TcpStream::connect(listeners[1].local_addr()).expect("connect leftover");
    write_frame(
        &mut leftover,
        &PeerHello {
            protocol_version: 3,
            job_id: "reformed".to_string(),
            rank: 0,
            world_size: 2,
            generation: 0,
            ..PeerHello::default()
        },
    );
    let quick = RingConfig {
        connect_timeout: Duration::from_millis(400),
        ..test_config()
    };
    std::thread::scope(|scope| {
        let rank_one = scope.spawn(|| {
            let mut ring = RingAllReduce::establish(
                &listeners[1],
                "reformed",
                1,
                1,
                &addresses,
                &test_config(),
                &RingAbort::new(),
            )
            .expect("rank 1 establishes generation 1");
            let mut buffer = rank_values(1, 13);
            ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
            buffer
        });
        // Rank 0 lags behind: it still tries generation 0, which rank 1 refuses.
        let stale_attempt = RingAllReduce::establish(
            &listeners[0],
            "reformed",
            0,
            0,
            &addresses,
            &quick,
            &RingAbort::new(),
        )
        .expect_err("generation 0 is over");
        assert!(
            matches!(
                stale_attempt,
                CollectiveError::ConnectTimeout { peer_rank: 1, .. }
                    | CollectiveError::AcceptTimeout { peer_rank: 1, .. }
            ),
            "{stale_attempt}"
        );
        let mut ring = RingAllReduce::establish(
            &listeners[0],
            "reformed",
            1,
            0,
            &addresses,
            &test_config(),
            &RingAbort::new(),
        )
        .expect("rank 0 establishes generation 1");
        assert_eq!(ring.generation(), 1);
        let mut buffer = rank_values(0, 13);
        ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
        assert_eq!(buffer, expected_sum(world_size, 13));
        assert_eq!(
            rank_one.join().expect("rank 1"),
            expected_sum(world_size, 13)
        );
    });
    let ack = read_ack(&mut leftover);
    assert!(!ack.accepted);
    assert_eq!(ack.generation, 1);
    assert!(ack.reason.contains("generation 0"), "{}", ack.reason);
}

#[test]
fn an_abort_ends_establishing_at_once() {
    let (listeners, addresses) = bind_listeners(2);
    // Rank 1 is alive (its listener queues the connection) but busy elsewhere: a long formation wait.
    let config = RingConfig {
        connect_timeout: Duration::from_secs(60),
        ..test_config()
    };
    let abort = RingAbort::new();
    let (aborted_at_sender, aborted_at) = mpsc::channel();
    let watchdog = {
        let abort = abort.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            aborted_at_sender.send(Instant::now()).expect("send");
            abort.abort("member 1 lost");
        })
    };
    let error =
        RingAllReduce::establish(&listeners[0], "waiting", 0, 0, &addresses, &config, &abort)
            .expect_err("aborted");
    let returned_at = Instant::now();
    watchdog.join().expect("watchdog");
    let latency = returned_at - aborted_at.recv().expect("abort time");
    eprintln!("establish returned {latency:?} after the abort");
    assert!(latency < Duration::from_millis(300), "{latency:?}");
    assert!(error.is_aborted(), "{error}");
    assert!(error.to_string().contains("member 1 lost"), "{error}");
}

#[test]
fn an_abort_ends_an_all_reduce_blocked_on_a_stalled_peer() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    let aborts = [RingAbort::new(), RingAbort::new()];
    let (rank_zero_done_sender, rank_zero_done) = mpsc::channel::<()>();
    let rank_zero_done = std::sync::Mutex::new(rank_zero_done);
    let outcomes = with_ring_aborts(
        &listeners,
        &addresses,
        "stalled-peer",
        0,
        &test_config(),
        &aborts,
        |rank, mut ring| {
            let mut buffer = rank_values(rank, 100_000);
            if rank == 1 {
                // Alive but stalled: joins the all-reduce only after rank 0 has given up.
                rank_zero_done
                    .lock()
                    .expect("lock")
                    .recv()
                    .expect("rank 0 done");
                return (
                    ring.all_reduce_sum(&mut buffer)
                        .expect_err("rank 0 aborted"),
                    None,
                );
            }
            let (aborted_at_sender, aborted_at) = mpsc::channel();
            let watchdog = {
                let abort = aborts[0].clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    aborted_at_sender.send(Instant::now()).expect("send");
                    abort.abort("step watchdog: peer stalled");
                })
            };
            let error = ring.all_reduce_sum(&mut buffer).expect_err("aborted");
            let latency = Instant::now() - aborted_at.recv().expect("abort time");
            watchdog.join().expect("watchdog");
            let after = ring.barrier().expect_err("poisoned");
            assert!(matches!(after, CollectiveError::Poisoned { .. }), "{after}");
            rank_zero_done_sender.send(()).expect("send");
            (error, Some(latency))
        },
    );
    let (error, latency) = &outcomes[0];
    let latency = latency.expect("rank 0 latency");
    eprintln!("all_reduce_sum returned {latency:?} after the abort");
    assert!(latency < Duration::from_millis(300), "{latency:?}");
    assert!(
        matches!(error, CollectiveError::Aborted { reason } if reason.contains("peer stalled")),
        "{error}"
    );
    // The stalled rank finds its neighbour gone, named.
    let (peer_error, _) = &outcomes[1];
    assert_eq!(peer_error.peer_rank(), Some(0), "{peer_error}");
    assert!(!peer_error.is_aborted(), "{peer_error}");
}

#[test]
fn a_silent_connection_does_not_delay_the_ring() {
    let world_size = 2;
    let (listeners, addresses) = bind_listeners(world_size);
    let handshake_timeout = Duration::from_millis(500);
    let config = RingConfig {
        handshake_timeout,
        ..test_config()
    };
    // Queued before the real peer on both listeners: one says nothing, one sends half a frame.
    let mut silent = TcpStream::connect(listeners[1].local_addr()).expect("connect silent");
    let mut half_frame = TcpStream::connect(listeners[0].local_addr()).expect("connect half");
    half_frame.write_all(&[40, 0]).expect("write");
    let started = Instant::now();
    let formed_after = with_ring(
        &listeners,
        &addresses,
        "silent-connection",
        &config,
        |rank, mut ring| {
            let formed_after = started.elapsed();
            let mut buffer = rank_values(rank, 13);
            ring.all_reduce_sum(&mut buffer).expect("all_reduce_sum");
            assert_eq!(buffer, expected_sum(world_size, 13));
            formed_after
        },
    );
    let slowest = formed_after.iter().max().copied().expect("ranks");
    eprintln!("ring formed in {slowest:?} with a silent connection queued");
    assert!(slowest < handshake_timeout, "{slowest:?}");
    // The silent connection was closed when the ring formed, without an answer.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(silent.read(&mut byte).unwrap_or(0), 0);
}
