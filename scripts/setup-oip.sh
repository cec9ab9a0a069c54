#!/usr/bin/env bash
# Installs the Open Inference Protocol test client into project-local folders; idempotent. Called by scripts/setup.sh.
#   .venv-oip/  tritonclient[grpc] (tests/tests/inference_protocol.rs): its own venv, as tritonclient pins a
#               protobuf/grpcio that conflicts with .venv-tools' grpcio-tools 1.67.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SETUP_PYTHON_TOOLS:-1}" = 1 ] && [ ! -f .venv-oip/.installed-v1 ]; then
  echo "setup: installing the inference-protocol client (tritonclient) into .venv-oip"
  rm -rf .venv-oip && python3 -m venv .venv-oip
  .venv-oip/bin/pip install --quiet --upgrade pip
  .venv-oip/bin/pip install --quiet "tritonclient[grpc]==2.73.0" "grpcio==1.85.3" "protobuf==6.33.6" "numpy==2.2.6"
  touch .venv-oip/.installed-v1
fi
