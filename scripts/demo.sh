#!/usr/bin/env bash
# Shows otel-forkcheck catching a broken gunicorn: the app sets the OpenTelemetry SDK up at import
# and gunicorn preloads it, so the master exports before fork and its workers inherit the
# connection. Installs what it needs (a pinned venv under target/venvs), cleans up after itself.
#
#   scripts/demo.sh [postfork]      # "postfork" shows the fixed set-up instead
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
conf=preload
[ "${1:-}" = postfork ] && conf=postfork

echo "== building otel-forkcheck (release)" >&2
cargo build --release --quiet
echo "== preparing the Python venv (first run: about a minute)" >&2
python=$(bash scripts/setup-venvs.sh current | tail -n 1)
venv_bin=$(dirname "$python")

pids=()
cleanup() {
    for pgid in "${pids[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
    sleep 0.5
    for pgid in "${pids[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
tmp=$(mktemp -d)
trap cleanup EXIT

# A stand-in collector on an ephemeral port (other programs may own 4318).
setsid python3 fixtures/collector.py --port 0 >"$tmp/collector.out" 2>"$tmp/collector.err" &
pids+=($!)
for _ in $(seq 50); do grep -q LISTENING "$tmp/collector.out" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/LISTENING/ {print $2}' "$tmp/collector.out")
app_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

echo "== starting gunicorn ($conf.conf.py, 2 workers) exporting to 127.0.0.1:$port" >&2
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" \
OTEL_METRIC_EXPORT_INTERVAL=30000 OTEL_BSP_SCHEDULE_DELAY=30000 OTEL_BLRP_SCHEDULE_DELAY=30000 \
FIXTURE_EXPORT_BEFORE_FORK=1 \
    setsid "$venv_bin/gunicorn" -c "fixtures/gunicorn/$conf.conf.py" -b "127.0.0.1:$app_port" -w 2 \
    --pid "$tmp/gunicorn.pid" >"$tmp/gunicorn.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    [ -s "$tmp/gunicorn.pid" ] && [ "$(cat /proc/"$(cat "$tmp/gunicorn.pid")"/task/*/children 2>/dev/null | wc -w)" -ge 2 ] && break
    sleep 0.1
done
master=$(cat "$tmp/gunicorn.pid" 2>/dev/null) || { echo "gunicorn did not start:" >&2; tail "$tmp/gunicorn.log" >&2; exit 2; }
sleep 2   # let the workers settle (post_fork set-up starts threads ~0.5 s in)

echo "== otel-forkcheck --pid $master" >&2
echo >&2
set +e
"$root/target/release/otel-forkcheck" --pid "$master" --window 2s
status=$?
set -e
echo >&2
echo "== otel-forkcheck exited with status $status (0 pass, 1 findings, 2 could not check)" >&2
