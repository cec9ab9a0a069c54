#!/usr/bin/env bash
# Installs the stores test tools into project-local folders; idempotent. Called by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
