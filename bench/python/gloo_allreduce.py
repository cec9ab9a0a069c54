"""torch.distributed gloo all_reduce throughput, 2 processes on 127.0.0.1 (the reference for allreduce_bench).

Prints one line per size for rank 0: "<size_mib> <f32 seconds per iteration> <bf16 seconds per iteration>",
timed as allreduce_bench times the ring: warmup iterations, a barrier, then the mean over the timed iterations.
The bf16 figure is what DDP's bf16_compress_hook does with a gradient bucket: cast the f32 buffer to bf16,
all_reduce it (gloo sums in bf16), copy it back into the f32 buffer.
"""
import argparse
import multiprocessing
import os
import socket
import sys
import time

WORLD_SIZE = 2


def iterations_for(size_mib: int, iterations: int) -> int:
    return max(iterations // 4, 3) if size_mib >= 64 else iterations


def run_rank(rank: int, port: int, sizes_mib: list[int], iterations: int, warmup: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    for size_mib in sizes_mib:
        element_count = size_mib * 1024 * 1024 // 4
        buffer = torch.ones(element_count, dtype=torch.float32)
        for _ in range(warmup):
            dist.all_reduce(buffer)
        timed = iterations_for(size_mib, iterations)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(timed):
            dist.all_reduce(buffer)
        seconds_per_iteration = (time.perf_counter() - started) / timed
        expected = float(WORLD_SIZE ** (warmup + timed))
        if not bool((buffer == expected).all()):
            raise SystemExit(f"rank {rank}: wrong all-reduce result")

        def compressed_all_reduce():
            compressed = buffer.to(torch.bfloat16)
            dist.all_reduce(compressed)
            buffer.copy_(compressed)

        buffer.fill_(1.0)
        for _ in range(warmup):
            compressed_all_reduce()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(timed):
            compressed_all_reduce()
        bf16_seconds_per_iteration = (time.perf_counter() - started) / timed
        if not bool((buffer == expected).all()):
            raise SystemExit(f"rank {rank}: wrong bf16 all-reduce result")
        if rank == 0:
            results.put((size_mib, seconds_per_iteration, bf16_seconds_per_iteration))
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-mib", default="4,64")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    options = parser.parse_args()
    sizes_mib = [int(size) for size in options.sizes_mib.split(",") if size]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(
            target=run_rank, args=(rank, port, sizes_mib, options.iterations, options.warmup, results)
        )
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        print(f"gloo ranks failed with exit codes {failed}", file=sys.stderr)
        return 1
    for _ in sizes_mib:
        size_mib, seconds, bf16_seconds = results.get(timeout=10)
        print(f"{size_mib} {seconds} {bf16_seconds}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    sys.exit(main())
