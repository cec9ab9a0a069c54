//! Benchmark programs against OpenCV, PyTorch and gloo; [`ddp_script`] runs the PyTorch DDP script the cluster
//! replaces (shared by `quality_compare` and `scale_bench`).

pub mod ddp_script;
