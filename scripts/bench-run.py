"""`run`'s own overhead on real gunicorn (the postfork fixture, W sync workers): the time from
the server's workers being up (all W forked, seen from /proc every 5 ms by this script) to the
verdict (`run` exited, its report printed), minus --window, the server's own stop (the report's
run.stop.waited_ms) and what the server itself needs from its workers' fork to answering the
requests (the baseline below: the workers' boot, then the requests from a plain client). Each phase is timed from `run`'s progress lines on stderr, stamped
as they arrive. The baseline, measured in the same run: the same server started directly with the
same OTLP environment, exporting to a `receive` started apart, the same requests sent by this
script (one connection each), then stopped. With a --window shorter than the inspection's own sampling (3 s) plus its reads, the
inspection ends after the window: that shows as "beyond --window".

usage: bench-run.py BIN GUNICORN RUNS WINDOW WORKERS REQUESTS
Prints figures and ratios; asserts nothing (timings depend on the machine).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BIN, GUNICORN = sys.argv[1], sys.argv[2]
RUNS, WINDOW, WORKERS, REQUESTS = (
    int(sys.argv[3]),
    float(sys.argv[4]),
    int(sys.argv[5]),
    int(sys.argv[6]),
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "fixtures/gunicorn/postfork.conf.py")
SERVER = [GUNICORN, "-c", CONF, "-b", "127.0.0.1:0", "-w", str(WORKERS)]
ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith("OTEL_") and k not in ("FIXTURE_SETUP", "WEB_CONCURRENCY")
}
ENV.update(PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1")


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children(p):
            out.append(c)
            todo.append(c)
    return out


def watch_workers(root, up, stop):
    """Stamps up[0] when the gunicorn master under `root` has WORKERS children."""
    while not stop.is_set():
        for p in descendants(root):
            if sum("gunicorn" in cmdline(k) for k in children(p)) >= WORKERS:
                up.append(time.monotonic())
                return
        time.sleep(0.005)


# Phases, in order: (name, the progress line that ends it).
PHASES = [
    ("workers seen and settled", r"master pid \d+ with"),
    ("port found", r"sending \d+ request"),
    ("requests sent", r"\d+ of \d+ answered"),
    ("window (incl. inspection)", r"stopping: SIGTERM"),
    ("server's stop", r"stopped in"),
    ("exports in flight", r"child\(ren\) of the master seen"),
]


def one_run():
    p = subprocess.Popen(
        [BIN, "run", "--window", f"{WINDOW}s", "--requests", str(REQUESTS), "--format", "json",
         "--"] + SERVER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    up, stop = [], threading.Event()
    w = threading.Thread(target=watch_workers, args=(p.pid, up, stop), daemon=True)
    w.start()
    lines = []

    def read_err():
        for raw in p.stderr:
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    r = threading.Thread(target=read_err, daemon=True)
    r.start()
    out = p.stdout.read()
    p.wait()
    end = time.monotonic()
    stop.set()
    r.join(5)
    report = json.loads(out)
    if not up:
        raise SystemExit("the workers were never seen: " + "\n".join(l for _, l in lines))
    t_up = up[0]
    stop_s = report["run"]["stop"]["waited_ms"] / 1000
    phases, last = {}, t_up
    for name, pat in PHASES:
        at = next((t for t, l in lines if re.search(pat, l)), None)
        if at is None:
            continue
        phases[name] = max(0.0, at - last)
        last = at
    phases["judge and report"] = end - last
    total = end - t_up
    return {
        "verdict": report["verdict"],
        "total": total,
        "stop": stop_s,
        "overhead": total - WINDOW - stop_s,
        "phases": phases,
    }


def baseline():
    """The same server and requests without `run`: its SDK exports to a receiver started apart
    (`receive`, the same as run's, with the same OTLP environment run sets), a plain client
    sends the requests, then the server is stopped."""
    sink = subprocess.Popen(
        [BIN, "receive", "--http", "127.0.0.1:0", "--grpc", "off", "--format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    url = None
    for raw in sink.stderr:
        m = re.search(rb"OTLP/HTTP on (http://\S+)", raw)
        if m:
            url = m.group(1).decode()
            break
    # Read on, or a full pipe would stall the receiver's progress lines and its answers with them.
    threading.Thread(target=lambda: sink.stderr.read(), daemon=True).start()
    env = dict(
        ENV,
        OTEL_EXPORTER_OTLP_ENDPOINT=url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        OTEL_BSP_SCHEDULE_DELAY="500",
        OTEL_BLRP_SCHEDULE_DELAY="500",
    )
    p = subprocess.Popen(
        SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    port = None
    for raw in p.stderr:
        m = re.search(rb"Listening at: http://127.0.0.1:(\d+)", raw)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
    while len(children(p.pid)) < WORKERS:
        time.sleep(0.005)
    t_up = time.monotonic()
    for _ in range(REQUESTS):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=15) as r:
            r.read()
    t_req = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    p.wait()
    t_end = time.monotonic()
    sink.terminate()
    sink.wait()
    return {"requests": t_req - t_up, "stop": t_end - t_req}


def med(xs):
    return statistics.median(xs)


base = [baseline() for _ in range(RUNS)]
runs = []
for i in range(RUNS):
    r = one_run()
    runs.append(r)
    print(
        f"run {i + 1}: verdict {r['verdict']}, workers up -> verdict {r['total']:.2f} s = window "
        f"{WINDOW:.2f} + server's stop {r['stop']:.2f} + overhead {r['overhead']:.2f} s",
        flush=True,
    )

print(f"\n`run` with {WORKERS} gunicorn workers, --window {WINDOW:g}s, {REQUESTS} requests "
      f"(medians of {RUNS}):")
names = [n for n, _ in PHASES] + ["judge and report"]
for n in names:
    xs = [r["phases"].get(n, 0.0) for r in runs]
    tag = "   (not overhead)" if n in ("window (incl. inspection)", "server's stop") else ""
    print(f"  {n:28s} {med(xs):6.3f} s{tag}")
window_over = med([r["phases"].get("window (incl. inspection)", 0.0) - WINDOW for r in runs])
print(f"  {'  of which beyond --window':28s} {window_over:6.3f} s")
ov = med([r["overhead"] for r in runs])
b_req = med([b["requests"] for b in base])
b_stop = med([b["stop"] for b in base])
print(f"baseline, the server alone: from its {WORKERS} workers forked to {REQUESTS} requests "
      f"answered by a plain client {b_req:.3f} s (the workers' own boot included), its stop "
      f"{b_stop:.3f} s")
print(f"workers up -> verdict, minus --window and the server's stop: {ov:.3f} s")
own = ov - b_req
print(f"run's own overhead (that, minus the baseline's {b_req:.3f} s the server needs to boot and "
      f"answer): {own:.3f} s (target <= 1 s: {'met' if own <= 1.0 else 'NOT met'})")
