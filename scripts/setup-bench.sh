#!/usr/bin/env bash
# Installs the Python references the benchmark programs compare against (PyTorch eager, DDP/gloo, OpenCV, XGBoost)
# into .venv-bench; idempotent. Only the benchmarks need it (several GB: torch's wheel pulls its CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .venv-bench/.installed-v1 ]; then
  echo "setup-bench: installing torch 2.11.0 + opencv into .venv-bench"
  rm -rf .venv-bench
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --upgrade pip
  .venv-bench/bin/pip install --quiet "torch==2.11.0" "numpy<2.3" "opencv-python-headless==4.10.0.84"
  touch .venv-bench/.installed-v1
fi
if [ ! -f .venv-bench/.installed-xgboost-v1 ]; then
  echo "setup-bench: installing xgboost 3.1.2 into .venv-bench"
  .venv-bench/bin/pip install --quiet "xgboost==3.1.2"
  touch .venv-bench/.installed-xgboost-v1
fi
