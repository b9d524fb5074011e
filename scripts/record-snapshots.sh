#!/usr/bin/env bash
# Records snapshots of real gunicorn fixtures into fixtures/snapshots/, for the rule tests in
# tests/recorded_snapshots.rs. Re-run after a change to what observe records:
#
#   scripts/record-snapshots.sh [name...]     # default: all scenarios
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bash scripts/setup-venvs.sh current sdk-1.6.2 >/dev/null
source scripts/fixture-lib.sh
out=fixtures/snapshots
mkdir -p "$out"
tool=target/release/otel-forkcheck
slow="OTEL_METRIC_EXPORT_INTERVAL=30000 OTEL_BSP_SCHEDULE_DELAY=30000 OTEL_BLRP_SCHEDULE_DELAY=30000"

save() {  # save NAME WINDOW
    sleep "${SETTLE:-2}"
    "$tool" --pid "$master_pid" --window "$2" --save-snapshot "$out/$1.json" --format json >/dev/null || true
    echo "recorded $out/$1.json (master $master_pid)" >&2
    fixture_cleanup
}

preload_http() {  # the master exported before fork: FC101 FC103 FC302
    start_collector 0
    start_gunicorn current 2 env $slow OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" FIXTURE_EXPORT_BEFORE_FORK=1 \
        gunicorn -c fixtures/gunicorn/preload.conf.py
    save preload-http 1s
}

postfork() {  # the documented fix: no finding
    start_collector 0
    start_gunicorn current 2 env $slow OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" \
        gunicorn -c fixtures/gunicorn/postfork.conf.py
    hit 4
    save postfork 1s
}

sdk162_preload() {  # no at-fork support: FC102 FC106
    start_collector 0
    start_gunicorn sdk-1.6.2 2 env $slow OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" FIXTURE_EXPORT_BEFORE_FORK=1 \
        gunicorn -c fixtures/gunicorn/preload.conf.py
    hit 4
    save sdk162-preload 1s
}

stuck_reader() {  # the master forks mid-export to a slow collector: worker readers stay stuck (FC104)
    start_collector 3
    start_gunicorn current 2 env OTEL_METRIC_EXPORT_INTERVAL=500 OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" \
        gunicorn -c fixtures/gunicorn/preload_fork_mid_export.conf.py
    SETTLE=3 save stuck-reader 3s
}

instrument() {  # opentelemetry-instrument sets the SDK up in the master: FC301
    start_collector 0
    start_gunicorn current 2 env $slow OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" FIXTURE_SETUP=none OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
        OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=otlp OTEL_LOGS_EXPORTER=otlp OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true \
        opentelemetry-instrument gunicorn --chdir fixtures/app app:app
    hit 4
    save instrument 1s
}

grpc_fork_off() {  # gRPC exporter created in the master, fork support off: FC105 (and a crash loop)
    local err="$fixture_tmp/receive.err"
    setsid "$tool" receive --http off --grpc 127.0.0.1:0 --timeout 120s --format ndjson >/dev/null 2>"$err" &
    fixture_groups+=($!)
    disown $!
    for _ in $(seq 50); do grep -q "OTLP/gRPC on" "$err" 2>/dev/null && break; sleep 0.1; done
    local addr
    addr=$(grep -o "OTLP/gRPC on [0-9.:]*" "$err" | awk '{print $3}')
    start_gunicorn current 2 env OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT="http://$addr" \
        OTEL_METRIC_EXPORT_INTERVAL=500 OTEL_BSP_SCHEDULE_DELAY=200 GRPC_ENABLE_FORK_SUPPORT=0 \
        FIXTURE_EXPORT_BEFORE_FORK=1 gunicorn -c fixtures/gunicorn/preload.conf.py
    hit 4
    SETTLE=0 save grpc-fork-off 6s
}

pool_recycling() {  # Pool(maxtasksperchild=1) kept busy: processes recycled, no crash (no FC107)
    start_collector 0
    local out="$fixture_tmp/pool.out"
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" setsid \
        target/venvs/current/bin/python fixtures/multiprocessing/pool.py fixed \
        --max-tasks-per-child 1 --keep-busy >"$out" 2>&1 &
    fixture_groups+=($!)
    master_pid=$!
    disown $!
    for _ in $(seq 100); do grep -q READY "$out" 2>/dev/null && break; sleep 0.1; done
    # The parent reaps a recycled process within milliseconds: keep the recording in which
    # the window caught at least one exit status.
    for _ in $(seq 10); do
        "$tool" --pid "$master_pid" --window 4s --save-snapshot "$out.json" --format json \
            >/dev/null || true
        grep -q '"wait_statuses"' "$out.json" && break
    done
    mv "$out.json" fixtures/snapshots/pool-recycling.json
    echo "recorded fixtures/snapshots/pool-recycling.json (parent $master_pid)" >&2
    fixture_cleanup
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(preload_http postfork sdk162_preload stuck_reader instrument grpc_fork_off pool_recycling)
for s in "${scenarios[@]}"; do "$s"; done
