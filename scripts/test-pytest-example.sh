#!/usr/bin/env bash
# Runs examples/pytest/test_telemetry.py for real: pytest (venv target/venvs/pytest-example)
# drives `otel-forkcheck run` over the repository's fixed gunicorn fixture
# (fixtures/gunicorn/postfork.conf.py, gunicorn and the OpenTelemetry SDK from target/venvs/current,
# on PATH as in a user's venv) and must pass.
#
#   OTEL_FORKCHECK=/path/to/otel-forkcheck scripts/test-pytest-example.sh
#
# Without OTEL_FORKCHECK: the debug binary, built with `cargo build` (nothing to do after
# scripts/test.sh). Any pytest arguments are passed on (e.g. -x, -vv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS

if [ -z "${OTEL_FORKCHECK:-}" ]; then
    cargo build --quiet --locked --bin otel-forkcheck
    OTEL_FORKCHECK="${CARGO_TARGET_DIR:-$root/target}/debug/otel-forkcheck"
fi
export OTEL_FORKCHECK
echo "== test-pytest-example: otel-forkcheck is $OTEL_FORKCHECK" >&2

current=$(dirname "$(bash scripts/setup-venvs.sh current)")
pytest_python=$(bash scripts/setup-venvs.sh pytest-example)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The developer's shell must not steer the server: the run sets the endpoints and intervals.
for var in $(compgen -e); do
    case "$var" in OTEL_FORKCHECK) ;; OTEL_* | FIXTURE_* | WEB_CONCURRENCY | PYTHONPATH) unset "$var" ;; esac
done

# The example's knobs, aimed at the fixture: ephemeral ports, a per-run control socket (gunicorn
# 27 uses one path per user by default), two workers (the fixture config leaves that to the
# command line), the config's pythonpath.
export GUNICORN_CONF="fixtures/gunicorn/postfork.conf.py"
export GUNICORN_APP="app:app"
export GUNICORN_ARGS="-w 2 -b 127.0.0.1:0 --control-socket $tmp/gunicorn.ctl"
export FORKCHECK_WORKERS=2
export FORKCHECK_ARGS="--window 3s --requests 20"
export PYTHONDONTWRITEBYTECODE=1
# gunicorn from the fixture venv, found on PATH like in a user's activated venv.
export PATH="$current:$PATH"

# otel-forkcheck run starts the server in its own process group and ends it, whatever happens;
# pytest itself starts nothing else. -p no:cacheprovider: no .pytest_cache in the tree.
"$pytest_python" -m pytest -p no:cacheprovider -o addopts= -v "$@" examples/pytest/test_telemetry.py
echo "test-pytest-example: ok ($((SECONDS - start)) s)" >&2
