#!/usr/bin/env bash
# Benchmark of OTLP/HTTP protobuf metric ingestion, in one run, against:
#   - otel-forkcheck receive (release build, --grpc off, default output),
#   - a no-op HTTP server on the same stack (examples/bench_noop_server.rs: the ceiling),
#   - the peer receivers oteltap and ddapm-test-agent (PyPI, in target/venvs/bench-peers).
# Load: examples/bench_load.rs, a minimal HTTP/1.1 keep-alive client (one process, CONNS
# connections, SECONDS, POINTS data points per request: one cumulative Sum, a series per point).
# Memory: before the rate run every server gets 1,024,000 data points from 256 distinct pids
# (256 forked client processes, each with its own connection and resource process.pid, 40
# requests x 100 points), and its VmRSS is read right after (VmHWM: the peak, at the end).
# Prints figures, a table and the ratios against the targets; asserts nothing.
#
#   scripts/bench-receive.sh [SECONDS] [CONNS] [POINTS] [LOAD_THREADS] [ROUNDS]
#
# The rate runs are interleaved (every target once per round, ROUNDS rounds) and the median
# is reported.
#
# The machine is shared and the load generator runs on it too: compare the rows of one run,
# not runs on different days.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-64}
POINTS=${3:-100}
THREADS=${4:-1}
ROUNDS=${5:-3}
PROCS=256
PER_PROC=40
MEM_POINTS=100

VENV=target/venvs/bench-peers
if [ ! -x "$VENV/bin/oteltap" ] || [ ! -x "$VENV/bin/ddapm-test-agent" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet oteltap ddapm-test-agent
fi
cargo build --release --quiet --bin otel-forkcheck --example bench_load --example bench_noop_server
LOAD=target/release/examples/bench_load

tmp=$(mktemp -d)
groups=()
cleanup() {
    for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME CMD...: in its own session/process group; sets server_pid.
start() {
    local name=$1
    shift
    local out="$tmp/$name.out"
    # oteltap's CLI prints every item it receives as NDJSON: gigabytes in a run.
    [ "$name" = oteltap ] && out=/dev/null
    setsid "$@" >"$out" 2>"$tmp/$name.err" &
    server_pid=$!
    disown "$server_pid"
    groups+=("$server_pid")
}

wait_port() {
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# The server's own pid (the python process under a wrapper script, if any).
rss_kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

declare -A URL PID RSS HWM OKMEM RPS PPS RUNS
mem_run() {
    local name=$1
    "$LOAD" rate "${URL[$name]}" 8 1 "$POINTS" "$THREADS" >/dev/null # warm-up
    local mem
    mem=$("$LOAD" pids "${URL[$name]}" "$PROCS" "$PER_PROC" "$MEM_POINTS")
    sleep 0.5
    RSS[$name]=$(rss_kib "${PID[$name]}" VmRSS)
    OKMEM[$name]=$(field "$mem" points)
    printf '%-18s 256 pids: %s | VmRSS after them %s KiB\n' "$name" "$mem" "${RSS[$name]}"
}

echo "load: $CONNS connections, ${SECS}s x $ROUNDS interleaved rounds, $POINTS points/request, $THREADS load thread(s); memory: $PROCS pids x $PER_PROC requests x $MEM_POINTS points"

# All four servers up at once (each in its own process group), so that the rate runs can be
# interleaved: the machine is shared, and a neighbour's build during one target's run would
# otherwise skew the ratios.
start noop target/release/examples/bench_noop_server 127.0.0.1:0
PID[noop]=$server_pid
start receiver target/release/otel-forkcheck receive --http 127.0.0.1:0 --grpc off --color never
PID[otel-forkcheck]=$server_pid
port=$(free_port)
start oteltap "$VENV/bin/python" "$VENV/bin/oteltap" --port "$port"
PID[oteltap]=$server_pid
URL[oteltap]="http://127.0.0.1:$port/v1/metrics"
p_http=$(free_port)
p_agent=$(free_port)
p_grpc=$(free_port)
start ddapm "$VENV/bin/python" "$VENV/bin/ddapm-test-agent" --port "$p_agent" \
    --otlp-http-port "$p_http" --otlp-grpc-port "$p_grpc"
PID[ddapm-test-agent]=$server_pid
URL[ddapm-test-agent]="http://127.0.0.1:$p_http/v1/metrics"
for _ in $(seq 100); do grep -q LISTENING "$tmp/noop.out" && break; sleep 0.1; done
URL[noop]="http://$(awk '/LISTENING/ {print $2}' "$tmp/noop.out")/v1/metrics"
for _ in $(seq 100); do grep -q listening "$tmp/receiver.err" && break; sleep 0.1; done
URL[otel-forkcheck]="$(grep -o 'http://[0-9.:]*' "$tmp/receiver.err" | head -1)/v1/metrics"
wait_port "$port"
wait_port "$p_http"

TARGETS=(noop otel-forkcheck oteltap ddapm-test-agent)
for t in "${TARGETS[@]}"; do mem_run "$t"; done

for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        out=$("$LOAD" rate "${URL[$t]}" "$CONNS" "$SECS" "$POINTS" "$THREADS")
        printf 'round %s %-18s %s\n' "$r" "$t" "$out"
        RUNS[$t]="${RUNS[$t]:-} $(field "$out" rps)"
    done
    # Paired within the round: the receiver against the ceiling and against oteltap.
    last() { tr ' ' '\n' <<<"${RUNS[$1]}" | grep -v '^$' | tail -1; }
    VS_NOOP="${VS_NOOP:-} $(awk -v a="$(last otel-forkcheck)" -v b="$(last noop)" 'BEGIN {printf "%.3f", a / b}')"
    VS_TAP="${VS_TAP:-} $(awk -v a="$(last otel-forkcheck)" -v b="$(last oteltap)" 'BEGIN {printf "%.3f", a / b}')"
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for t in "${TARGETS[@]}"; do
    RPS[$t]=$(median "${RUNS[$t]}")
    PPS[$t]=$((RPS[$t] * POINTS))
    HWM[$t]=$(rss_kib "${PID[$t]}" VmHWM)
done

rpid=${PID[otel-forkcheck]}
kill -TERM "$rpid" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
tail -n 4 "$tmp/receiver.out" | sed 's/^/  receiver summary: /'

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
echo
echo "median of $ROUNDS rounds:"
printf '%-18s %12s %14s %9s %12s %10s %10s\n' target 'requests/s' 'points/s' '% noop' 'mem points' 'RSS MiB' 'peak MiB'
for t in "${TARGETS[@]}"; do
    pct=$(awk -v a="${RPS[$t]}" -v b="${RPS[noop]}" 'BEGIN {printf "%.0f%%", 100 * a / b}')
    printf '%-18s %12s %14s %9s %12s %10s %10s\n' "$t" "${RPS[$t]}" "${PPS[$t]}" "$pct" \
        "${OKMEM[$t]}" "$(mib "${RSS[$t]}")" "$(mib "${HWM[$t]}")"
done
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
echo "otel-forkcheck / oteltap:          $(ratio "${RPS[otel-forkcheck]}" "${RPS[oteltap]}")x   (target >= 20x)"
echo "no-op ceiling / oteltap:           $(ratio "${RPS[noop]}" "${RPS[oteltap]}")x   (what any server on this stack could reach)"
echo "otel-forkcheck / ddapm-test-agent: $(ratio "${RPS[otel-forkcheck]}" "${RPS[ddapm-test-agent]}")x"
echo "otel-forkcheck / no-op ceiling:    $(awk -v a="${RPS[otel-forkcheck]}" -v b="${RPS[noop]}" 'BEGIN {printf "%.0f%%", 100 * a / b}')   (target >= 70%)"
echo "paired per round (median; rounds:$VS_NOOP / oteltap:$VS_TAP):"
echo "  otel-forkcheck / no-op ceiling:  $(awk -v r="$(median "$VS_NOOP")" 'BEGIN {printf "%.0f%%", 100 * r}')"
echo "  otel-forkcheck / oteltap:        $(awk -v r="$(median "$VS_TAP")" 'BEGIN {printf "%.1fx", r}')"
echo "otel-forkcheck RSS after ${OKMEM[otel-forkcheck]} points from $PROCS pids: $(mib "${RSS[otel-forkcheck]}") MiB; peak over the whole run $(mib "${HWM[otel-forkcheck]}") MiB   (target < 64 MiB)"
