# plankton-cluster: the two commands a newcomer needs are `make demo` and `make test`.
export GLIBC_TUNABLES := glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647

.PHONY: setup demo test bench-preprocess bench-train bench-allreduce bench-serve bench-recovery bench-quality bench-scale bench-gbdt gpu-check image

setup:
	scripts/setup.sh

## Generate a synthetic dataset, start a coordinator and 2 workers on 127.0.0.1, train, print the metrics.
demo: setup
	cargo build --release --bins
	target/release/planktonctl demo

## Install what is missing and run every test.
test: setup
	cargo build --bins
	cargo test --workspace --no-fail-fast
	cargo check -p plankton-collective -p plankton-coordinator -p plankton-worker --features nccl

bench-preprocess: setup
	cargo run --release -p plankton-bench --bin preprocess_bench

bench-train: setup
	scripts/setup-bench.sh
	cargo run --release -p plankton-bench --bin train_bench

bench-allreduce: setup
	scripts/setup-bench.sh
	cargo run --release -p plankton-bench --bin allreduce_bench

bench-serve: setup
	scripts/setup-bench.sh
	cargo run --release -p plankton-bench --bin serve_bench

## Worker kill, coordinator kill and the restart-from-epoch-checkpoint anchor on 3 worker processes.
bench-recovery: setup
	cargo build --release --bins
	cargo run --release -p plankton-bench --bin recovery_bench

## Macro-F1 and accuracy of the cluster vs a PyTorch DDP + DataLoader script on the same data, over 3 seeds.
bench-quality: setup
	scripts/setup-bench.sh
	cargo run --release -p plankton-bench --bin quality_compare

## One full-scale epoch (243,610 objects): cluster processes vs PyTorch DDP + DataLoader, times and peak RSS.
bench-scale: setup
	scripts/setup-bench.sh
	cargo build --release --bins
	cargo run --release -p plankton-bench --bin scale_bench

bench-gbdt: setup
	scripts/setup-bench.sh
	cargo run --release -p plankton-bench --bin gbdt_compare

gpu-check:
	scripts/gpu-check.sh

## Container image of every role (deploy/Containerfile) with podman or docker; TORCH_VARIANT=cu130 for GPU workers.
image:
	deploy/build-image.sh
