//! Collectives between workers: ring all-reduce over TCP on CPU, NCCL behind a feature.
