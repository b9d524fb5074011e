#!/usr/bin/env bash
# `run`'s own overhead (issue target: <= 1 s for 4 workers): time from the server's workers being
# up to the verdict, minus --window and the server's own stop, with each phase's share and a
# baseline measured in the same run (the same server and requests without the tool). Real
# gunicorn (fixtures/gunicorn/postfork.conf.py) from the pinned `current` venv.
#
#   scripts/bench-run.sh [RUNS] [WINDOW_SECONDS] [WORKERS] [REQUESTS]     (default 5 10 4 30)
#
# Builds the release binary, or uses $OTEL_FORKCHECK_BIN. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
WINDOW=${2:-10}
WORKERS=${3:-4}
REQUESTS=${4:-30}
bash scripts/setup-venvs.sh current >/dev/null
BIN=${OTEL_FORKCHECK_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-target}/release/otel-forkcheck"
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); binary $BIN"
exec python3 scripts/bench-run.py "$BIN" target/venvs/current/bin/gunicorn \
    "$RUNS" "$WINDOW" "$WORKERS" "$REQUESTS"
