#!/usr/bin/env bash
# Benchmark of the full check with Python names (`otel-forkcheck --pid MASTER --window 0
# --format json`) on pre-fork Python trees of 1 master + N workers (scripts/bench-tree.py), beside,
# in the same run and on the same tree: the check with --no-python-names (the /proc floor) and
# `py-spy dump --nonblocking --subprocesses`. Prints figures and ratios, asserts nothing
# (timings depend on the machine), and the load average they were taken under.
#
#   scripts/bench-check.sh [RUNS] [WORKERS...]      (default: 15 runs; 64 128 256 512 workers)
#
# Per tree size: median ms of each command (the two checks interleaved round by round), the
# cost per process, the growth against the smallest tree, and process_vm_readv calls per
# process counted twice: by the reader itself (OTEL_FORKCHECK_DEBUG_READS) and by
# `strace -c -f` (every call, py-spy's included when it had to attach).
# Needs python3, strace, and the venv target/venvs/bench-pyspy (scripts/setup-venvs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-15}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(64 128 256 512)

PYSPY="$(dirname "$(bash scripts/setup-venvs.sh bench-pyspy)")/py-spy"
cargo build --release --quiet --bin otel-forkcheck
BIN="${CARGO_TARGET_DIR:-target}/release/otel-forkcheck"
command -v strace >/dev/null || { echo "strace is needed to count reads" >&2; exit 2; }

TREE=""
TREE_OUT=$(mktemp)
RESULTS=$(mktemp)
cleanup() {
    [ -n "$TREE" ] && kill -KILL -- "-$TREE" 2>/dev/null || true
    rm -f "$TREE_OUT" "$RESULTS"
}
trap cleanup EXIT

for N in "${SIZES[@]}"; do
    # Each tree gets its own session/process group, killed as a group when measured.
    : >"$TREE_OUT"
    setsid python3 scripts/bench-tree.py "$N" >"$TREE_OUT" &
    TREE=$!
    for _ in $(seq 1 600); do grep -q ready "$TREE_OUT" && break; sleep 0.1; done
    grep -q ready "$TREE_OUT" || { echo "tree of $N workers did not start" >&2; exit 2; }
    # A check of a tree whose youngest worker is under 2 s old waits until it is (so it can be
    # judged): let the tree settle first, so the figures time the check, not that wait.
    sleep 2.5
    python3 - "$BIN" "$PYSPY" "$RUNS" "$N" "$TREE" >>"$RESULTS" <<'PY'
import json, os, re, resource, statistics, subprocess, sys, tempfile, time
binary, pyspy, runs, n, master = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
check = [binary, "--pid", master, "--window", "0", "--format", "json"]
proc_only = check + ["--no-python-names"]
dump = [pyspy, "dump", "--nonblocking", "--subprocesses", "--pid", master]

def once(cmd, env=None):
    """Wall ms, CPU ms (user + system, of the command and its children) and the outcome."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ms = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    # 0 pass, 1 findings at or above --fail-on: both are a finished check.
    if r.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[:300]}")
    return ms, cpu, r

names, floor, names_cpu, floor_cpu = [], [], [], []
for _ in range(runs):
    ms, cpu, _ = once(check)
    names.append(ms)
    names_cpu.append(cpu)
    ms, cpu, _ = once(proc_only)
    floor.append(ms)
    floor_cpu.append(cpu)
spy = [once(dump)[0] for _ in range(max(3, runs // 5))]

env = dict(os.environ, OTEL_FORKCHECK_DEBUG_READS="1")
_, _, r = once(check, env)
report = json.loads(r.stdout)
procs = len(report["processes"])
named = sum(1 for p in report["processes"] if p["python"]["names_read"])
own = int(re.search(rb"(\d+) process_vm_readv calls", r.stderr).group(1))
with tempfile.NamedTemporaryFile() as f:
    subprocess.run(["strace", "-f", "-c", "-e", "trace=process_vm_readv", "-o", f.name] + check,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?process_vm_readv", open(f.name).read(), re.M)
    traced = int(m.group(1)) if m else -1
print(json.dumps({"workers": n, "processes": procs, "named": named,
                  "names": statistics.median(names), "floor": statistics.median(floor),
                  "names_cpu": statistics.median(names_cpu), "floor_cpu": statistics.median(floor_cpu),
                  "pyspy": statistics.median(spy), "own": own, "traced": traced,
                  "load": os.getloadavg()}))
PY
    kill -KILL -- "-$TREE" 2>/dev/null || true
    wait "$TREE" 2>/dev/null || true
    TREE=""
done

python3 - "$RESULTS" "$RUNS" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = sys.argv[2]
print(f"full check = otel-forkcheck --pid MASTER --window 0 --format json (release), median of {runs}")
print("wall ms (median):")
print(f"{'workers':>7} {'procs':>5} {'named':>5} {'check':>8} {'no-names':>8} {'py-spy':>8} "
      f"{'/no-names':>9} {'py-spy/':>8} {'ms/proc':>8} {'growth':>7} {'floor gr.':>9} "
      f"{'reads/proc':>10} {'strace/proc':>11} {'load1':>6}")
base = rows[0]
per = lambda r, k: r[k] / r["processes"]
for r in rows:
    growth = per(r, "names") / per(base, "names")
    floor_growth = per(r, "floor") / per(base, "floor")
    print(f"{r['workers']:>7} {r['processes']:>5} {r['named']:>5} {r['names']:>8.1f} {r['floor']:>8.1f} "
          f"{r['pyspy']:>8.1f} {r['names'] / r['floor']:>8.2f}x {r['pyspy'] / r['names']:>7.1f}x "
          f"{per(r, 'names'):>8.3f} {growth:>6.2f}x {floor_growth:>8.2f}x {per(r, 'own'):>10.1f} "
          f"{per(r, 'traced'):>11.1f} {r['load'][0]:>6.2f}")
print()
print("CPU ms (user + system, median; steadier than wall time on a loaded machine):")
print(f"{'workers':>7} {'check':>8} {'no-names':>8} {'/no-names':>9} {'ms/proc':>8} {'growth':>7} {'floor gr.':>9}")
for r in rows:
    growth = per(r, "names_cpu") / per(base, "names_cpu")
    floor_growth = per(r, "floor_cpu") / per(base, "floor_cpu")
    print(f"{r['workers']:>7} {r['names_cpu']:>8.1f} {r['floor_cpu']:>8.1f} "
          f"{r['names_cpu'] / r['floor_cpu']:>8.2f}x {per(r, 'names_cpu'):>8.3f} {growth:>6.2f}x "
          f"{floor_growth:>8.2f}x")
print()
print("growth: the check's ms per process against the smallest tree (1.00x = linear); floor gr.: "
      "the same for --no-python-names")
print("reads/proc: the reader's own process_vm_readv calls; strace/proc: all of them (py-spy's "
      "included, if it had to attach)")
worst = max(rows, key=lambda r: r["names"] / r["floor"])
slow = min(rows, key=lambda r: r["pyspy"] / r["names"])
most = max(r["traced"] / r["processes"] for r in rows)
print(f"targets: check <= 1.5x --no-python-names: {'yes' if worst['names'] / worst['floor'] <= 1.5 else 'NO'} "
      f"(worst {worst['names'] / worst['floor']:.2f}x at {worst['workers']}); "
      f">= 15x faster than py-spy: {'yes' if slow['pyspy'] / slow['names'] >= 15 else 'NO'} "
      f"(least {slow['pyspy'] / slow['names']:.1f}x at {slow['workers']}); "
      f"<= 40 reads per process: {'yes' if most <= 40 else 'NO'} (most {most:.1f})")
print(f"machine: {os.cpu_count()} cpus, load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
PY
