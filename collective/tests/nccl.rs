//! NCCL all-reduce on real GPUs; ignored by default, run by `scripts/gpu-check.sh`.
#![cfg(feature = "nccl")]

use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, DevicePtrMut};
use plankton_collective::Collective;
use plankton_collective::nccl::{NcclAllReduce, new_unique_id};

/// Integer-valued so sums are exact.
fn rank_values(rank: usize, length: usize) -> Vec<f32> {
    (0..length)
        .map(|index| ((index * 7 + rank * 13) % 1000) as f32)
        .collect()
}

fn run_ranks(world_size: usize, length: usize) {
    let unique_id = new_unique_id().expect("nccl unique id");
    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let unique_id = unique_id.clone();
                scope.spawn(move || {
                    let mut communicator =
                        NcclAllReduce::new(&unique_id, rank, world_size, rank).expect("nccl init");
                    // Host path.
                    let mut host_buffer = rank_values(rank, length);
                    communicator
                        .all_reduce_sum(&mut host_buffer)
                        .expect("host all-reduce");
                    communicator.barrier().expect("barrier");
                    // Device path on a separate stream of the same GPU.
                    let context = CudaContext::new(rank).expect("cuda context");
                    let stream = context.new_stream().expect("stream");
                    let mut device_buffer = stream
                        .clone_htod(&rank_values(rank, length))
                        .expect("upload");
                    {
                        let (device_ptr, _record) = device_buffer.device_ptr_mut(&stream);
                        communicator
                            .all_reduce_sum_device(device_ptr, length, stream.cu_stream() as u64)
                            .expect("device all-reduce");
                    }
                    let device_result = stream.clone_dtoh(&device_buffer).expect("download");
                    stream.synchronize().expect("sync");
                    (host_buffer, device_result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("rank thread"))
            .collect()
    });
    let mut expected = vec![0.0f32; length];
    for rank in 0..world_size {
        for (sum, value) in expected.iter_mut().zip(rank_values(rank, length)) {
            *sum += value;
        }
    }
    for (rank, (host_result, device_result)) in results.iter().enumerate() {
        assert_eq!(
            host_result, &expected,
            "host path, rank {rank} of {world_size}"
        );
        assert_eq!(
            device_result, &expected,
            "device path, rank {rank} of {world_size}"
        );
    }
}

#[test]
#[ignore = "needs a GPU with NCCL; run by scripts/gpu-check.sh"]
fn nccl_all_reduce_on_one_gpu() {
    run_ranks(1, 1_000_003);
}

#[test]
#[ignore = "needs two GPUs with NCCL; run by scripts/gpu-check.sh"]
fn nccl_all_reduce_on_two_gpus() {
    let gpu_count = CudaContext::device_count().expect("cuda device count");
    if gpu_count < 2 {
        eprintln!("skipped: {gpu_count} GPU(s)");
        return;
    }
    run_ranks(2, 1_000_003);
}

#[test]
#[ignore = "needs a GPU with NCCL; run by scripts/gpu-check.sh"]
fn an_aborted_communicator_refuses_every_call_and_drops_cleanly() {
    let unique_id = new_unique_id().expect("nccl unique id");
    let mut communicator = NcclAllReduce::new(&unique_id, 0, 1, 0).expect("nccl init");
    let mut buffer = vec![1.0f32; 1024];
    communicator
        .all_reduce_sum(&mut buffer)
        .expect("before the abort");
    let handle = communicator.abort_handle();
    std::thread::spawn(move || handle.abort("watchdog"))
        .join()
        .expect("watchdog thread")
        .expect("ncclCommAbort");
    let error = communicator
        .all_reduce_sum(&mut buffer)
        .expect_err("aborted");
    assert!(error.is_aborted(), "{error}");
    assert!(communicator.barrier().expect_err("aborted").is_aborted());
    // A second abort and the drop do not release the communicator again.
    communicator.abort_handle().abort("again").expect("no-op");
    drop(communicator);
}

#[test]
#[ignore = "needs two GPUs with NCCL; run by scripts/gpu-check.sh"]
fn an_abort_ends_an_all_reduce_blocked_on_a_stalled_rank() {
    let gpu_count = CudaContext::device_count().expect("cuda device count");
    if gpu_count < 2 {
        eprintln!("skipped: {gpu_count} GPU(s)");
        return;
    }
    let unique_id = new_unique_id().expect("nccl unique id");
    let (stalled_sender, stalled) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let unique_id_for_rank_1 = unique_id.clone();
        let stalled_rank = scope.spawn(move || {
            let communicator =
                NcclAllReduce::new(&unique_id_for_rank_1, 1, 2, 1).expect("nccl init rank 1");
            // Alive, never joins the all-reduce; releases its communicator once rank 0 gave up.
            stalled.recv().expect("rank 0 done");
            drop(communicator);
        });
        let mut communicator = NcclAllReduce::new(&unique_id, 0, 2, 0).expect("nccl init rank 0");
        let handle = communicator.abort_handle();
        let watchdog = scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let aborted_at = Instant::now();
            handle.abort("peer stalled").expect("ncclCommAbort");
            aborted_at
        });
        let mut buffer = vec![1.0f32; 1 << 20];
        let error = communicator
            .all_reduce_sum(&mut buffer)
            .expect_err("aborted");
        let returned_at = Instant::now();
        let aborted_at = watchdog.join().expect("watchdog");
        eprintln!(
            "nccl all_reduce returned {:?} after the abort finished",
            returned_at.saturating_duration_since(aborted_at)
        );
        assert!(error.is_aborted(), "{error}");
        stalled_sender.send(()).expect("send");
        stalled_rank.join().expect("rank 1");
    });
}

/// Runs everywhere: without CUDA/NCCL (CI) creating a clique is an error naming nccl, never a panic.
#[test]
fn missing_cuda_or_nccl_is_an_error_not_a_panic() {
    match new_unique_id() {
        Ok(unique_id) => assert_eq!(unique_id.len(), plankton_collective::nccl::UNIQUE_ID_BYTES),
        Err(error) => assert!(error.to_string().contains("nccl get_unique_id"), "{error}"),
    }
    let error = NcclAllReduce::new(&[0u8; 3], 0, 1, 0).expect_err("short id");
    assert!(error.to_string().contains("128"), "{error}");
}
