#!/usr/bin/env bash
# Benchmark of the OTLP receiver on bodies the real Python SDK sends, in one run, against its
# ceilings and peers:
#   - otel-forkcheck receive (release build; OTLP/HTTP and OTLP/gRPC on two ports),
#   - the ceilings on the same stack (examples/bench_noop_server.rs): a no-op hyper server for
#     OTLP/HTTP, a no-op tonic server for OTLP/gRPC,
#   - the peer receivers oteltap (OTLP/HTTP protobuf only) and ddapm-test-agent (OTLP/HTTP
#     protobuf and JSON, OTLP/gRPC), from PyPI into target/venvs/bench-peers.
# Bodies: fixtures/otlp/sdk/metrics.{pb,json} (made by scripts/make-otlp-bodies.py with the
# pinned SDK: one ExportMetricsServiceRequest, 25 resource attributes, 9 metrics, 22 points).
# Load: examples/bench_load (one process, LOAD_THREADS threads): each connection sends the body
# as its own (process.pid) with the points' times moving forward on every request, one export
# at a time, for SECONDS; OTLP/HTTP protobuf, OTLP/HTTP JSON and OTLP/gRPC at 8 and at 64
# connections. Rounds are interleaved (every target once per round) and medians reported, with
# the receiver / ceiling ratio paired within each round.
# Memory: first every HTTP server (but ddapm-test-agent, too slow) gets 1,000,000+ data points
# from 256 forked client pids (the same body, 178 requests each), and its VmRSS
# (/proc/<pid>/status) is read right after; the receiver's VmRSS and VmHWM (peak) are read
# again at the end.
# CPU: each server's CPU time (/proc/<pid>/stat, all threads) and the generator's own
# (getrusage) per answered request, and the CPU ratio paired per round. The generator runs on
# the same cores, so the requests/s ratio counts its CPU on both sides (the dearer it is, the
# closer to 100% that ratio gets); the CPU ratio does not.
# Prints figures and ratios against the targets; asserts nothing.
#
#   scripts/bench-receive.sh [SECONDS] [ROUNDS] [LOAD_THREADS]     # default 3 5 1
#
# The machine may be shared and the load generator runs on it too: compare the rows of one run
# (the ratios), not runs at different times. The load average is printed at the start and end.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
ROUNDS=${2:-5}
THREADS=${3:-1}
BODIES=${BODIES:-fixtures/otlp/sdk}
PROCS=256
PER_PROC=178
CONN_COUNTS=(8 64)

VENV=target/venvs/bench-peers
if [ ! -x "$VENV/bin/oteltap" ] || [ ! -x "$VENV/bin/ddapm-test-agent" ]; then
    { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet oteltap ddapm-test-agent; } ||
        echo "note: oteltap / ddapm-test-agent could not be installed from PyPI; their rows are left out"
fi
have_tap=$([ -x "$VENV/bin/oteltap" ] && echo 1 || echo 0)
have_agent=$([ -x "$VENV/bin/ddapm-test-agent" ] && echo 1 || echo 0)
# BENCH_REL=DIR: binaries built already (DIR/otel-forkcheck, DIR/examples/...), e.g. another
# commit's, to compare two builds in one session; else this tree's, built now.
if [ -n "${BENCH_REL:-}" ]; then
    REL=$BENCH_REL
else
    cargo build --release --quiet --bin otel-forkcheck --example bench_load --example bench_noop_server
    REL=${CARGO_TARGET_DIR:-target}/release
fi
LOAD=$REL/examples/bench_load
NOOP=$REL/examples/bench_noop_server

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

listening() { # FILE PATTERN: waits for a line, prints its address
    for _ in $(seq 150); do grep -q "$2" "$1" 2>/dev/null && break; sleep 0.1; done
    grep -o "$2 [^ ,]*" "$1" | head -1 | awk '{print $NF}' | sed 's|^http://||'
}

rss_kib() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: bench_load, $THREADS thread(s), ${SECS}s x $ROUNDS interleaved rounds per target; bodies from $BODIES:"
echo "  metrics.pb $(stat -c %s "$BODIES/metrics.pb") bytes, metrics.json $(stat -c %s "$BODIES/metrics.json") bytes"

declare -A ADDR PID
start noop-http "$NOOP" 127.0.0.1:0 http
PID[noop-http]=$server_pid
start noop-grpc "$NOOP" 127.0.0.1:0 grpc
PID[noop-grpc]=$server_pid
# Two ports, as by default (4318 and 4317): equal addresses would serve both on one.
start receiver "$REL/otel-forkcheck" receive --http "127.0.0.1:$(free_port)" \
    --grpc "127.0.0.1:$(free_port)" --color never
rpid=$server_pid
if [ "$have_tap" = 1 ]; then
    p_tap=$(free_port)
    start oteltap "$VENV/bin/python" "$VENV/bin/oteltap" --port "$p_tap"
    PID[oteltap]=$server_pid
    ADDR[pb:oteltap]=127.0.0.1:$p_tap
fi
if [ "$have_agent" = 1 ]; then
    p_http=$(free_port)
    p_agent=$(free_port)
    p_grpc=$(free_port)
    start ddapm "$VENV/bin/python" "$VENV/bin/ddapm-test-agent" --port "$p_agent" \
        --otlp-http-port "$p_http" --otlp-grpc-port "$p_grpc"
    PID[ddapm-test-agent]=$server_pid
    ADDR[pb:ddapm-test-agent]=127.0.0.1:$p_http
    ADDR[json:ddapm-test-agent]=127.0.0.1:$p_http
    ADDR[grpc:ddapm-test-agent]=127.0.0.1:$p_grpc
fi
a=$(listening "$tmp/noop-http.out" LISTENING)
ADDR[pb:ceiling]=$a
ADDR[json:ceiling]=$a
ADDR[grpc:ceiling]=$(listening "$tmp/noop-grpc.out" LISTENING)
a=$(listening "$tmp/receiver.err" 'OTLP/HTTP on')
ADDR[pb:otel-forkcheck]=$a
ADDR[json:otel-forkcheck]=$a
ADDR[grpc:otel-forkcheck]=$(listening "$tmp/receiver.err" 'OTLP/gRPC on')
PID[otel-forkcheck]=$rpid
[ "$have_tap" = 1 ] && wait_port "$p_tap"
if [ "$have_agent" = 1 ]; then
    wait_port "$p_http"
    wait_port "$p_grpc"
fi

echo
echo "memory: $PROCS pids x $PER_PROC requests of metrics.pb (OTLP/HTTP protobuf)"
declare -A RSS MEMPTS
for t in ceiling otel-forkcheck oteltap ddapm-test-agent; do
    a=${ADDR[pb:$t]:-}
    [ -n "$a" ] || continue
    if [ "$t" = ddapm-test-agent ]; then
        # About 150 requests/s here under this load: the run would take over 5 minutes.
        echo "  ddapm-test-agent   left out (too slow for $((PROCS * PER_PROC)) requests)"
        continue
    fi
    out=$("$LOAD" pids-body pb metrics "$a" "$BODIES/metrics.pb" "$PROCS" "$PER_PROC")
    sleep 0.5
    pid=${PID[$t]:-${PID[noop-http]}}
    RSS[$t]=$(rss_kib "$pid" VmRSS)
    MEMPTS[$t]=$(field "$out" points)
    printf '  %-18s %s | VmRSS after them %s MiB\n' "$t" "$out" "$(mib "${RSS[$t]}")"
done

KINDS=(pb json grpc)
declare -A RUNS PAIRS ERRS SCPU GCPU CPAIRS SCPUS GCPUS GSLEEP GSLEEPS
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-0}/stat" 2>/dev/null || echo 0; }
# A server may still work through what the memory phase sent after answering it (oteltap took
# a core for a minute or more, printing each item): every figure below would be taken beside
# it. Each server is waited for until it uses under 5% of a core over a second (at most 5 min).
for t in otel-forkcheck oteltap; do
    spid=${PID[$t]:-}
    [ -n "$spid" ] || continue
    start=$SECONDS
    while [ $((SECONDS - start)) -lt 300 ]; do
        t0=$(cpu_ticks "$spid")
        sleep 1
        [ $(($(cpu_ticks "$spid") - t0)) -le $((HZ / 20)) ] && break
    done
    echo "  $t idle again after the memory phase in $((SECONDS - start)) s"
done
for r in $(seq "$ROUNDS"); do
    for c in "${CONN_COUNTS[@]}"; do
        for k in "${KINDS[@]}"; do
            file=$BODIES/metrics.pb
            [ "$k" = json ] && file=$BODIES/metrics.json
            for t in ceiling otel-forkcheck oteltap ddapm-test-agent; do
                a=${ADDR[$k:$t]:-}
                [ -n "$a" ] || continue
                # The slow peers once, in the first round: their figures are far off anyway.
                if [ "$r" -gt 1 ] && [ "$t" != ceiling ] && [ "$t" != otel-forkcheck ]; then
                    continue
                fi
                spid=${PID[$t]:-}
                [ "$t" = ceiling ] && spid=${PID[noop-$([ "$k" = grpc ] && echo grpc || echo http)]}
                t0=$(cpu_ticks "$spid")
                out=$("$LOAD" body "$k" metrics "$a" "$file" "$c" "$SECS" "$THREADS")
                t1=$(cpu_ticks "$spid")
                echo "$out" >>"$tmp/runs.log"
                RUNS[$k:$c:$t]="${RUNS[$k:$c:$t]:-} $(field "$out" rps)"
                # The server's CPU per answered request, microseconds (all its threads,
                # background work included), and the generator's own.
                SCPU[$k:$c:$t]=$(awk -v a="$t0" -v b="$t1" -v n="$(field "$out" ok)" -v hz="$HZ" \
                    'BEGIN {printf "%.1f", (n > 0 ? (b - a) * 1e6 / hz / n : 0)}')
                GCPU[$k:$c:$t]=$(field "$out" cpu_us_per_req)
                GSLEEP[$k:$c:$t]=$(field "$out" sleeps_per_req)
                ERRS[$k:$c:$t]=$((${ERRS[$k:$c:$t]:-0} + $(field "$out" errors)))
            done
            last() { tr ' ' '\n' <<<"${RUNS[$k:$c:$1]}" | grep -v '^$' | tail -1; }
            PAIRS[$k:$c]="${PAIRS[$k:$c]:-} $(awk -v a="$(last otel-forkcheck)" -v b="$(last ceiling)" 'BEGIN {printf "%.3f", a / b}')"
            CPAIRS[$k:$c]="${CPAIRS[$k:$c]:-} $(awk -v a="${SCPU[$k:$c:ceiling]}" -v b="${SCPU[$k:$c:otel-forkcheck]}" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')"
            SCPUS[$k:$c:ceiling]="${SCPUS[$k:$c:ceiling]:-} ${SCPU[$k:$c:ceiling]}"
            SCPUS[$k:$c:otel-forkcheck]="${SCPUS[$k:$c:otel-forkcheck]:-} ${SCPU[$k:$c:otel-forkcheck]}"
            GCPUS[$k:$c:ceiling]="${GCPUS[$k:$c:ceiling]:-} ${GCPU[$k:$c:ceiling]}"
            GCPUS[$k:$c:otel-forkcheck]="${GCPUS[$k:$c:otel-forkcheck]:-} ${GCPU[$k:$c:otel-forkcheck]}"
            GSLEEPS[$k:$c:ceiling]="${GSLEEPS[$k:$c:ceiling]:-} ${GSLEEP[$k:$c:ceiling]}"
            GSLEEPS[$k:$c:otel-forkcheck]="${GSLEEPS[$k:$c:otel-forkcheck]:-} ${GSLEEP[$k:$c:otel-forkcheck]}"
        done
    done
done

RSS_END=$(rss_kib "$rpid" VmRSS)
HWM_END=$(rss_kib "$rpid" VmHWM)
kill -TERM "$rpid" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done

name() {
    case $1 in
    pb) echo "OTLP/HTTP protobuf" ;;
    json) echo "OTLP/HTTP JSON" ;;
    grpc) echo "OTLP/gRPC" ;;
    esac
}
echo
echo "requests/s, median of $ROUNDS rounds (peers: 1 round); 22 data points per request"
printf '%-20s %5s  %-18s %11s %12s %9s %7s\n' protocol conns target 'requests/s' 'points/s' '% ceiling' errors
for k in "${KINDS[@]}"; do
    for c in "${CONN_COUNTS[@]}"; do
        ceil=$(median "${RUNS[$k:$c:ceiling]}")
        for t in ceiling otel-forkcheck oteltap ddapm-test-agent; do
            label=$t
            [ "$t" = ceiling ] && label=$([ "$k" = grpc ] && echo "no-op tonic" || echo "no-op hyper")
            if [ -z "${RUNS[$k:$c:$t]:-}" ]; then
                why="does not speak $(name "$k")"
                [ "$t" = oteltap ] && [ "$have_tap" = 0 ] && why="not installed"
                [ "$t" = ddapm-test-agent ] && [ "$have_agent" = 0 ] && why="not installed"
                printf '%-20s %5s  %-18s %11s\n' "$(name "$k")" "$c" "$label" "n/a: $why"
                continue
            fi
            v=$(median "${RUNS[$k:$c:$t]}")
            printf '%-20s %5s  %-18s %11s %12s %8s%% %7s\n' "$(name "$k")" "$c" "$label" "$v" \
                "$((v * 22))" "$(awk -v a="$v" -v b="$ceil" 'BEGIN {printf "%.0f", 100 * a / b}')" \
                "${ERRS[$k:$c:$t]}"
        done
    done
done
echo
echo "otel-forkcheck / ceiling, paired within each round (target >= 75%), and the generator's"
echo "waits per request in each of those rounds of the receiver's:"
for k in "${KINDS[@]}"; do
    for c in "${CONN_COUNTS[@]}"; do
        m=$(median "${PAIRS[$k:$c]}")
        printf '  %-20s %3s conns: %s   (rounds:%s; waits:%s)\n' "$(name "$k")" "$c" \
            "$(awk -v r="$m" 'BEGIN {printf "%.0f%%", 100 * r}')" "${PAIRS[$k:$c]}" \
            "${GSLEEPS[$k:$c:otel-forkcheck]}"
    done
done
echo
echo "CPU per answered request, microseconds, median of $ROUNDS rounds (server: all its threads; generator: bench_load):"
echo "the generator shares the cores, so the ratio above counts its CPU on both sides; the CPU ratio"
echo "(no-op server's CPU / otel-forkcheck's, paired per round) is what each server costs alone"
printf '  %-20s %5s %12s %12s %12s %12s %10s\n' protocol conns no-op receiver 'gen(no-op)' 'gen(recv)' 'CPU ratio'
for k in "${KINDS[@]}"; do
    for c in "${CONN_COUNTS[@]}"; do
        printf '  %-20s %5s %12s %12s %12s %12s %9s\n' "$(name "$k")" "$c" \
            "$(median "${SCPUS[$k:$c:ceiling]}")" "$(median "${SCPUS[$k:$c:otel-forkcheck]}")" \
            "$(median "${GCPUS[$k:$c:ceiling]}")" "$(median "${GCPUS[$k:$c:otel-forkcheck]}")" \
            "$(awk -v r="$(median "${CPAIRS[$k:$c]}")" 'BEGIN {printf "%.0f%%", 100 * r}')"
    done
done
echo
echo "generator waits per answered request (voluntary context switches), median of $ROUNDS rounds:"
echo "a server slower than the generator leaves it idle, and each answer that wakes it costs the"
echo "server a wake-up (dear on a virtual machine); one that keeps up rarely pays it"
printf '  %-20s %5s %12s %12s\n' protocol conns no-op receiver
for k in "${KINDS[@]}"; do
    for c in "${CONN_COUNTS[@]}"; do
        printf '  %-20s %5s %12s %12s\n' "$(name "$k")" "$c" \
            "$(median "${GSLEEPS[$k:$c:ceiling]}")" "$(median "${GSLEEPS[$k:$c:otel-forkcheck]}")"
    done
done
echo
echo "memory after ${MEMPTS[otel-forkcheck]} data points from $PROCS pids (target < 64 MiB for otel-forkcheck):"
for t in ceiling otel-forkcheck oteltap ddapm-test-agent; do
    [ -n "${RSS[$t]:-}" ] && printf '  %-18s VmRSS %s MiB\n' "$t" "$(mib "${RSS[$t]}")"
done
echo "  otel-forkcheck at the end: VmRSS $(mib "$RSS_END") MiB, peak (VmHWM) $(mib "$HWM_END") MiB"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
