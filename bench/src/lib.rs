//! Benchmark programs against OpenCV, PyTorch and gloo.
