#!/usr/bin/env bash
# Runs every test: builds the pinned Python venvs and installs the pinned OpenTelemetry JS SDKs
# the end-to-end tests use (cached under target/venvs and target/js), then the Rust unit,
# integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venvs.sh
bash scripts/setup-js.sh >/dev/null
cargo test --all-targets "$@"
