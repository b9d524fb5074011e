#!/usr/bin/env bash
# Soak test of `otel-forkcheck receive`: 64 OTLP/HTTP and 8 OTLP/gRPC exporters beside hostile
# clients (unfinished connections on both ports, garbage, gzip bombs, trickled bodies) for
# SECONDS (default 120); then nothing answered OK may be missing from the ledger and the
# resident size must have stayed flat (examples/soak.rs says exactly what is checked).
#
# Usage: scripts/soak.sh [SECONDS] [HTTP_SENDERS] [GRPC_SENDERS]
# Builds the release binary (the receiver under test) and the load generator first.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
http="${2:-64}"
grpc="${3:-8}"
cargo build --release --bin otel-forkcheck --example soak
dir="${CARGO_TARGET_DIR:-target}/release"
exec "$dir/examples/soak" "$dir/otel-forkcheck" "$secs" "$http" "$grpc"
