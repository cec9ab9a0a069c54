#!/usr/bin/env bash
# One-command GPU check of the NCCL collective: builds plankton-collective with --features nccl and runs its
# ignored GPU tests (1 rank; 2 ranks when 2+ GPUs are visible). Prints PASS or FAIL; exit status follows.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || echo "gpu-check: nvidia-smi not found"
# NCCL from the system, or from the pip wheel of .venv-bench when present.
for nccl_dir in .venv-bench/lib/python3*/site-packages/nvidia/nccl/lib; do
  [ -d "$nccl_dir" ] && export LD_LIBRARY_PATH="$PWD/$nccl_dir:${LD_LIBRARY_PATH:-}"
done
if cargo test -p plankton-collective --features nccl --test nccl -- --ignored --nocapture --test-threads=1; then
  echo "gpu-check: PASS"
else
  echo "gpu-check: FAIL"
  exit 1
fi
