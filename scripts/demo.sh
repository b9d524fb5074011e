#!/usr/bin/env bash
# Shows otel-forkcheck catching a broken gunicorn: the app sets the OpenTelemetry SDK up at import
# and gunicorn preloads it, so the master exports before fork and its workers inherit the
# connection. Installs what it needs (a pinned venv under target/venvs), cleans up after itself.
#
#   scripts/demo.sh [postfork]      # "postfork" shows the fixed set-up instead
set -euo pipefail
cd "$(dirname "$0")/.."
conf=preload
[ "${1:-}" = postfork ] && conf=postfork

echo "== building otel-forkcheck (release)" >&2
cargo build --release --quiet
echo "== preparing the Python venv (first run: about a minute)" >&2
bash scripts/setup-venvs.sh current >/dev/null
source scripts/fixture-lib.sh

start_collector 0
echo "== starting gunicorn ($conf.conf.py, 2 workers) exporting to 127.0.0.1:$collector_port" >&2
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" \
OTEL_METRIC_EXPORT_INTERVAL=30000 OTEL_BSP_SCHEDULE_DELAY=30000 OTEL_BLRP_SCHEDULE_DELAY=30000 \
FIXTURE_EXPORT_BEFORE_FORK=1 \
    start_gunicorn current 2 gunicorn -c "fixtures/gunicorn/$conf.conf.py"
sleep 2   # let the workers settle (post_fork set-up starts threads ~0.5 s in)

echo "== otel-forkcheck --pid $master_pid --window 2s" >&2
echo >&2
set +e
target/release/otel-forkcheck --pid "$master_pid" --window 2s
status=$?
set -e
echo >&2
echo "== otel-forkcheck exited with status $status (0 pass, 1 findings, 2 could not check)" >&2
