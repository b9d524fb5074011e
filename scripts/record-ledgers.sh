#!/usr/bin/env bash
# Records what the receiver saw in real gunicorn (and Celery) runs into fixtures/ledgers/: NAME.json (the
# ledger) and NAME.snapshot.json (the tree), for the rule tests in tests/recorded_ledgers.rs.
# Re-run after a change to what the receiver or observe records, then update the test:
#
#   scripts/record-ledgers.sh [name...]     # default: all scenarios
#
# Runs are short (a few requests, 1-2 s windows) so the files stay small. A run in which the
# kernel handed every request to one worker is done again (up to 3 tries): the scenarios need
# both workers busy. Everything started here runs in its own process group, ended on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
bash scripts/setup-venvs.sh current sdk-1.42 queues >/dev/null
source scripts/fixture-lib.sh
running=  # stderr of the `run` in flight: it names the server's process group
stop_launched() {
    local pgid
    pgid=$(grep -o '` as pid [0-9]*' "$running" 2>/dev/null | awk '{print $4}') || true
    [ -n "$pgid" ] || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pgid" 2>/dev/null || true
}
trap '[ -z "$running" ] || stop_launched; fixture_cleanup; rm -rf "$fixture_tmp"' EXIT
trap 'exit 130' INT TERM
out=fixtures/ledgers
mkdir -p "$out"
tool=$(realpath "${CARGO_TARGET_DIR:-target}/debug/otel-forkcheck")
venvs=$PWD/target/venvs
conf=$PWD/fixtures/gunicorn
# The caller's environment must not steer the server.
clean=(env -u OTEL_EXPORTER_OTLP_PROTOCOL -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_METRIC_EXPORT_INTERVAL
    -u OTEL_BSP_SCHEDULE_DELAY -u OTEL_BLRP_SCHEDULE_DELAY -u OTEL_RESOURCE_ATTRIBUTES -u OTEL_SERVICE_NAME
    -u FIXTURE_SETUP -u WEB_CONCURRENCY PYTHONDONTWRITEBYTECODE=1 NO_COLOR=1)

# workers_served FILE: how many pids served requests in a saved ledger
workers_served() {
    python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("served", {})))' "$1"
}

# record NAME WINDOW [ENV=VALUE...] -- COMMAND...: `run` saves NAME.json and NAME.snapshot.json
record() {
    local name=$1 window=$2
    shift 2
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    local try status
    for try in 1 2 3; do
        status=0
        running=$fixture_tmp/run.err
        setsid "${clean[@]}" "${envs[@]}" "$tool" run --window "$window" --requests 6 --format json \
            --save-ledger "$out/$name.json" -- "$@" >/dev/null 2>"$running" &
        fixture_groups+=($!)
        wait $! || status=$?
        fixture_groups=()
        running=
        if [ "$status" -ge 2 ]; then
            cat "$fixture_tmp/run.err" >&2
            return 1
        fi
        [ "$(workers_served "$out/$name.json")" -ge 2 ] && break
        echo "$name: one worker served every request (try $try)" >&2
    done
    echo "recorded $out/$name.json and $out/$name.snapshot.json" >&2
}

preload_export() {  # the master exported before fork: FC202 FC206 FC207 (and FC101 FC103 FC302)
    record preload-export 2s FIXTURE_EXPORT_BEFORE_FORK=1 -- \
        "$venvs/current/bin/gunicorn" -c "$conf/preload.conf.py" -b 127.0.0.1:0 -w 2
}

postfork() {  # the documented fix: no finding
    record postfork 2s -- "$venvs/current/bin/gunicorn" -c "$conf/postfork.conf.py" -b 127.0.0.1:0 -w 2
}

instrument_sdk142() {  # opentelemetry-instrument, SDK 1.42, process detector: FC203 FC204 (FC101 FC301)
    record instrument-sdk142 2s OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true \
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process -- \
        "$venvs/sdk-1.42/bin/opentelemetry-instrument" "$venvs/sdk-1.42/bin/gunicorn" \
        -c "$conf/instrument.conf.py" -b 127.0.0.1:0 -w 2
}

postfork_noflush() {  # no flush at exit, 60 s intervals: FC209 for every worker that served
    record postfork-noflush 1s OTEL_METRIC_EXPORT_INTERVAL=60000 OTEL_BSP_SCHEDULE_DELAY=60000 \
        OTEL_BLRP_SCHEDULE_DELAY=60000 -- \
        "$venvs/current/bin/gunicorn" -c "$conf/postfork_noflush.conf.py" -b 127.0.0.1:0 -w 2
}

# spread PORT WORKERS ROUNDS: each round holds one half-sent request per worker, so every sync
# worker serves one
spread() {
    python3 - "$@" <<'EOF'
import socket, sys, time
port, workers, rounds = map(int, sys.argv[1:])
for _ in range(rounds):
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(workers)]
    for c in conns:
        c.sendall(b"GET / HTTP/1.1\r\nHost: fixture\r\n")
    time.sleep(0.3)
    for c in conns:
        c.sendall(b"Connection: close\r\n\r\n")
    for c in conns:
        while c.recv(4096):
            pass
        c.close()
EOF
}

receive_preload_process() {  # `receive --pid`, preload, SDK 1.42, process detector: FC203 FC204
    local name=receive-preload-process fifo="$fixture_tmp/endpoint" err="$fixture_tmp/receive.err"
    local bin="$venvs/sdk-1.42/bin" pidfile="$fixture_tmp/gunicorn.pid"
    app_port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkfifo "$fifo"
    # The master's pid is known before it runs: the shell waits for the endpoint, then execs.
    PATH="$bin:$PATH" setsid "${clean[@]}" OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process \
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_METRIC_EXPORT_INTERVAL=500 \
        OTEL_BSP_SCHEDULE_DELAY=200 OTEL_BLRP_SCHEDULE_DELAY=200 \
        sh -c 'read ep <"$0" && OTEL_EXPORTER_OTLP_ENDPOINT=$ep exec "$@"' "$fifo" \
        gunicorn -c "$conf/preload.conf.py" -b "127.0.0.1:$app_port" -w 2 --pid "$pidfile" \
        >"$fixture_tmp/gunicorn.log" 2>&1 &
    local master=$!
    fixture_groups+=($master)
    setsid "$tool" receive --http 127.0.0.1:0 --grpc off --pid "$master" --format json \
        --timeout 120s --save-ledger "$out/$name.json" >/dev/null 2>"$err" &
    local receiver=$!
    fixture_groups+=($receiver)
    for _ in $(seq 50); do grep -q "listening" "$err" 2>/dev/null && break; sleep 0.1; done
    grep -o "http://[0-9.:]*" "$err" | head -n 1 >"$fifo"
    for _ in $(seq 300); do
        [ "$(cat /proc/"$master"/task/*/children 2>/dev/null | wc -w)" -ge 2 ] && break
        sleep 0.1
    done
    [ "$(cat "$pidfile")" = "$master" ] || { echo "gunicorn master is not $master" >&2; return 1; }
    spread "$app_port" 2 3
    sleep 1.5
    "$tool" --pid "$master" --window 1s --save-snapshot "$out/$name.snapshot.json" --format json \
        >/dev/null || true
    kill -TERM "$receiver"
    wait "$receiver" || true
    # A graceful stop (the workers flush at exit) before the group is ended.
    kill -TERM "$master"
    for _ in $(seq 100); do
        [ "$(awk '{print $3}' "/proc/$master/stat" 2>/dev/null || echo Z)" = Z ] && break
        sleep 0.1
    done
    wait "$master" || true
    fixture_cleanup
    echo "recorded $out/$name.json and $out/$name.snapshot.json" >&2
}

celery_inherited() {  # plain `receive`, Celery prefork, SDK in MainProcess: FC206 via identity pins
    local name=celery-inherited err="$fixture_tmp/receive.err" py="$venvs/queues/bin/python"
    local rport
    rport=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    setsid redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    fixture_groups+=($!)
    setsid "$tool" receive --http 127.0.0.1:0 --grpc off --format json --timeout 120s \
        --save-ledger "$out/$name.json" >/dev/null 2>"$err" &
    local receiver=$!
    fixture_groups+=($receiver)
    for _ in $(seq 50); do grep -q "http://" "$err" 2>/dev/null && break; sleep 0.1; done
    local ep
    ep=$(grep -o "http://[0-9.:]*" "$err" | head -n 1)
    local envs=(FIXTURE_MODE=broken FIXTURE_EXPORT_METRICS_BEFORE_FORK=1
        FIXTURE_FLUSH_METRICS_AFTER_FIRST_TASK=1 FIXTURE_BROKER="redis://127.0.0.1:$rport/0"
        FIXTURE_TASK_LOG="$fixture_tmp/tasks.log" OTEL_EXPORTER_OTLP_ENDPOINT="$ep"
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_METRIC_EXPORT_INTERVAL=30000
        OTEL_BSP_SCHEDULE_DELAY=200 OTEL_BLRP_SCHEDULE_DELAY=200)
    setsid "${clean[@]}" "${envs[@]}" "$py" -m celery --workdir fixtures/celery -A tasks worker \
        --pool=prefork --concurrency=2 --loglevel=warning --without-gossip --without-mingle \
        --without-heartbeat >"$fixture_tmp/celery.log" 2>&1 &
    local master=$!
    fixture_groups+=($master)
    for _ in $(seq 300); do
        [ "$(cat /proc/"$master"/task/*/children 2>/dev/null | wc -w)" -ge 2 ] && break
        sleep 0.1
    done
    env "${envs[@]}" "$py" fixtures/celery/enqueue.py 4 0.1 --one-by-one >/dev/null
    "$tool" --pid "$master" --window 1s --save-snapshot "$out/$name.snapshot.json" --format json \
        >/dev/null || true
    sleep 1
    kill -TERM "$receiver"
    wait "$receiver" || true
    kill -TERM "$master"  # warm shutdown: MainProcess only
    for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
    fixture_cleanup
    echo "recorded $out/$name.json and $out/$name.snapshot.json" >&2
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] ||
    scenarios=(preload_export postfork instrument_sdk142 postfork_noflush receive_preload_process
        celery_inherited)
for s in "${scenarios[@]}"; do "$s"; done
