#!/usr/bin/env bash
# Runs every test: builds the pinned Python venvs and installs the pinned OpenTelemetry JS SDKs
# the end-to-end tests use (cached under target/venvs and target/js), then the Rust unit,
# integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The programs the end-to-end tests start besides Python's: checked first, so that one missing
# is one message here (with the Debian/Ubuntu package), not a failure in every test that needs
# it. Root runs the container tests too (namespaces), which need util-linux and iproute2.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need node nodejs
need npm npm
need redis-server redis-server
if [ "$(id -u)" = 0 ]; then
    need unshare util-linux
    need nsenter util-linux
    need ip iproute2
fi
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    echo "scripts/test.sh: the tests need programs from: ${pkgs% }" >&2
    echo "  on Debian or Ubuntu: sudo apt-get install ${pkgs% }" >&2
    exit 2
fi
bash scripts/setup-venvs.sh
bash scripts/setup-js.sh >/dev/null
cargo test --all-targets "$@"
