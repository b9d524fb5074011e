#!/usr/bin/env bash
# Benchmark of a full observe (--window 0, Python names included) on a 1-master + 64-worker
# Python tree, beside `py-spy dump` over the same 65 processes and `ss -tanp`, in the same run.
# Prints figures and ratios; asserts nothing (timings depend on the machine).
#
#   scripts/bench-check.sh [WORKERS] [RUNS]
#
# Needs python3, ss, and a Python venv with py-spy (created under target/venvs/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-64}
RUNS=${2:-20}

VENV=target/venvs/bench
if [ ! -x "$VENV/bin/py-spy" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet py-spy
fi
cargo build --release --quiet --example bench_observe
BENCH=target/release/examples/bench_observe

# The tree gets its own session/process group; killed as a group on exit.
TREE_OUT=$(mktemp)
setsid python3 scripts/bench-tree.py "$WORKERS" >"$TREE_OUT" &
TREE=$!
cleanup() { kill -KILL -- "-$TREE" 2>/dev/null || true; rm -f "$TREE_OUT"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q ready "$TREE_OUT" && break; sleep 0.1; done
grep -q ready "$TREE_OUT" || { echo "tree did not start" >&2; exit 2; }
PIDS=$(python3 - "$TREE" <<'PY'
import sys
root = sys.argv[1]
kids = set()
for task in __import__("os").listdir(f"/proc/{root}/task"):
    kids.update(open(f"/proc/{root}/task/{task}/children").read().split())
print(" ".join([root] + sorted(kids, key=int)))
PY
)
NPROC=$(echo "$PIDS" | wc -w)
echo "tree: master $TREE, $NPROC processes"
sleep 0.5

OBS=$("$BENCH" "$TREE" "$RUNS")
echo "$OBS"

python3 - "$VENV/bin/py-spy" "$RUNS" "$OBS" $PIDS <<'PY'
import statistics, subprocess, sys, time
pyspy, runs, obs, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def timed(cmd_lists, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for cmd in cmd_lists:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed: {r.stderr.decode()[:300]}")
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)

fields = {l.split()[0]: dict(kv.split("=") for kv in l.split()[1:]) for l in obs.splitlines()}
names_ms = float(fields["observe_names_ms"]["median"])
proc_ms = float(fields["observe_proc_only_ms"]["median"])
dump_each = timed([[pyspy, "dump", "--nonblocking", "--pid", p] for p in pids], 3)
dump_sub = timed([[pyspy, "dump", "--nonblocking", "--subprocesses", "--pid", pids[0]]], 5)
ss = timed([["ss", "-tanp"]], max(runs, 10))

print()
print(f"{'what (' + str(len(pids)) + ' processes)':<46} {'median ms':>10} {'vs observe':>11}")
rows = [
    ("otel-forkcheck observe, Python names", names_ms),
    ("otel-forkcheck observe, /proc only", proc_ms),
    (f"py-spy dump --pid, once per process", dump_each),
    ("py-spy dump --subprocesses --pid master", dump_sub),
    ("ss -tanp", ss),
]
for label, ms in rows:
    print(f"{label:<46} {ms:>10.1f} {ms / names_ms:>10.1f}x")
print()
print(f"target: observe with names <= 150 ms: {'yes' if names_ms <= 150 else 'NO'} ({names_ms:.1f} ms); "
      f">= 5x faster than py-spy: {'yes' if dump_sub / names_ms >= 5 and dump_each / names_ms >= 5 else 'NO'} "
      f"({dump_each / names_ms:.0f}x per-pid loop, {dump_sub / names_ms:.0f}x --subprocesses)")
PY
