"""Telemetry survives fork: run the real server under `otel-forkcheck run` from your test suite.

Copy this file into your tests. It starts gunicorn under `otel-forkcheck run` (which points the
OpenTelemetry SDK at an embedded OTLP receiver, waits for the workers, sends requests, stops the
server and judges), then asserts a pass and prints every finding (code, title, fix) when it fails.

Defaults match `otel-forkcheck run --workers 2 --format json -- gunicorn -c gunicorn.conf.py app:app`
run from the directory pytest is started in. Every part can be changed through the environment:

    OTEL_FORKCHECK      the otel-forkcheck executable         (default: otel-forkcheck on PATH)
    FORKCHECK_WORKERS   workers to wait for                   (default: 2)
    FORKCHECK_ARGS      more `run` flags, e.g. "--window 3s --requests 20 --signals metrics,traces"
    GUNICORN            the gunicorn executable               (default: gunicorn on PATH)
    GUNICORN_CONF       the gunicorn config file              (default: gunicorn.conf.py)
    GUNICORN_APP        the WSGI app; empty: the config's wsgi_app (default: app:app)
    GUNICORN_ARGS       more gunicorn arguments, e.g. "-b 127.0.0.1:0"
    FORKCHECK_TIMEOUT   seconds before the whole run is abandoned (default: 300)

The *_ARGS variables are split like a shell command line (quotes work, no expansion).
"""

import json
import os
import shlex
import subprocess
import sys

import pytest


def _env(name, default):
    value = os.environ.get(name)
    return default if value is None else value


def forkcheck_command():
    server = [_env("GUNICORN", "gunicorn"), "-c", _env("GUNICORN_CONF", "gunicorn.conf.py")]
    server += shlex.split(_env("GUNICORN_ARGS", ""))
    app = _env("GUNICORN_APP", "app:app")
    if app:
        server.append(app)
    return [
        _env("OTEL_FORKCHECK", "otel-forkcheck"),
        "run",
        "--workers",
        _env("FORKCHECK_WORKERS", "2"),
        "--format",
        "json",
        *shlex.split(_env("FORKCHECK_ARGS", "")),
        "--",
        *server,
    ]


def describe(report, proc):
    """What a person needs when the test fails: every finding with its fix, or why no check ran."""
    lines = [f"otel-forkcheck exited with status {proc.returncode}: {shlex.join(proc.args)}"]
    if report is None:
        lines.append("no JSON report on stdout (status 2: the check could not be made); stderr:")
        lines.append(proc.stderr.strip()[-4000:] or "(empty)")
        return "\n".join(lines)
    lines.append(f"verdict: {report.get('verdict')}")
    for finding in report.get("findings", []):
        pids = ", ".join(str(p) for p in finding.get("pids", []))
        lines.append("")
        lines.append(
            f"{finding.get('severity')}[{finding.get('code')}] {finding.get('slug')}: "
            f"{finding.get('title')} (pids {pids})"
        )
        for item in finding.get("evidence", []):
            lines.append(f"  evidence: {item}")
        fix = (finding.get("fix") or "").strip()
        if fix:
            lines.append("  fix:")
            lines.extend("    " + line for line in fix.splitlines())
        lines.append(f"  more: otel-forkcheck explain {finding.get('code')}")
    return "\n".join(lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="otel-forkcheck reads /proc: Linux only")
def test_every_worker_exports_its_telemetry_under_fork():
    command = forkcheck_command()
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=float(_env("FORKCHECK_TIMEOUT", "300")),
        )
    except FileNotFoundError:
        pytest.fail(
            f"{command[0]} not found: `pip install otel-forkcheck`, or set OTEL_FORKCHECK to its path"
        )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    message = describe(report, proc)
    assert report is not None and report.get("verdict") == "pass", message
    assert proc.returncode == 0, message
