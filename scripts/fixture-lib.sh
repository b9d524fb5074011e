# Shell helpers shared by demo.sh and record-snapshots.sh: start the stand-in collector and a
# gunicorn fixture, each in its own process group, and end exactly those groups on exit.
# Source it from bash; it sets `trap fixture_cleanup EXIT`.

fixture_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fixture_tmp=$(mktemp -d)
fixture_groups=()

fixture_cleanup() {
    for pgid in "${fixture_groups[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
    sleep 0.5
    for pgid in "${fixture_groups[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    fixture_groups=()
}
trap 'fixture_cleanup; rm -rf "$fixture_tmp"' EXIT

# start_collector DELAY_SECONDS -> sets collector_port
start_collector() {
    local out="$fixture_tmp/collector.$RANDOM"
    setsid python3 "$fixture_root/fixtures/collector.py" --port 0 --delay "${1:-0}" >"$out" 2>/dev/null &
    fixture_groups+=($!)
    disown $!
    for _ in $(seq 50); do grep -q LISTENING "$out" 2>/dev/null && break; sleep 0.1; done
    collector_port=$(awk '/LISTENING/ {print $2}' "$out")
    [ -n "$collector_port" ] || { echo "collector did not start" >&2; return 2; }
}

# start_gunicorn VENV WORKERS GUNICORN_ARGS... (env passes through) -> sets master_pid, app_port
start_gunicorn() {
    local venv=$1 workers=$2
    shift 2
    local bin="$fixture_root/target/venvs/$venv/bin"
    local pidfile="$fixture_tmp/gunicorn.$RANDOM.pid"
    app_port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    gunicorn_log="$fixture_tmp/gunicorn.$RANDOM.log"
    PATH="$bin:$PATH" setsid "$@" -b "127.0.0.1:$app_port" -w "$workers" --pid "$pidfile" \
        >"$gunicorn_log" 2>&1 &
    fixture_groups+=($!)
    disown $!
    master_pid=
    for _ in $(seq 300); do
        if [ -s "$pidfile" ]; then
            master_pid=$(cat "$pidfile")
            [ "$(cat /proc/"$master_pid"/task/*/children 2>/dev/null | wc -w)" -ge "$workers" ] && return 0
        fi
        sleep 0.1
    done
    echo "gunicorn did not start $workers workers:" >&2
    tail -n 20 "$gunicorn_log" >&2
    return 2
}

# hit N: N GET / requests to the fixture app
hit() {
    for _ in $(seq "$1"); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=5).read()" \
            "http://127.0.0.1:$app_port/" || true
    done
}
