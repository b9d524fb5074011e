#!/usr/bin/env bash
# Runs every test: builds the pinned Python venvs the end-to-end tests use (cached under
# target/venvs), then the Rust unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venvs.sh
cargo test --all-targets "$@"
