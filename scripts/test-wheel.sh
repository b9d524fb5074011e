#!/usr/bin/env bash
# Tests the Python wheel the way a user gets it: builds it (scripts/build-wheel.sh), installs it
# into a fresh venv with pip, checks that the installed `otel-forkcheck` is on the venv's PATH and
# reports the crate's version and commit, that the man pages are installed in the venv's
# share/man/man1, then runs the installed binary on the demo's broken gunicorn
# (preload_app with the SDK set up at import, exporting before fork) and expects exit status 1
# with FC103 (the collector connections shared by master and workers) among the findings.
#
#   scripts/test-wheel.sh             # dev profile: reuses what `cargo build`/`cargo test` compiled
#   scripts/test-wheel.sh --release   # the release wheel, as scripts/build-wheel.sh ships it
#
# Why dev by default: packaging (metadata, tag, the binary on PATH) does not depend on the
# profile, and CI has just compiled the dev profile for the tests, so this step takes seconds
# there; a cold release build of this crate is about 12 CPU-minutes (18 min wall on 2 busy cores).
#
# Needs cargo, python3 with venv and pip, gcc; installs maturin and the fixture venv itself.
# Every process it starts (collector, gunicorn) runs in its own process group, ended on exit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS

build=(--profile dev)
case "${1:-}" in
    "") ;;
    --release) build=() ;;
    *) echo "usage: scripts/test-wheel.sh [--release]" >&2; exit 2 ;;
esac

echo "== test-wheel: building the wheel (${build[*]:-release})" >&2
wheel=$(bash scripts/build-wheel.sh "${build[@]}" | tail -n 1)
echo "== test-wheel: $(basename "$wheel")" >&2
case "$(basename "$wheel")" in
    otel_forkcheck-*-py3-none-manylinux_*_x86_64.whl | otel_forkcheck-*-py3-none-manylinux_*_aarch64.whl) ;;
    *) echo "test-wheel: FAIL: unexpected wheel name $(basename "$wheel") (want py3-none-manylinux_*)" >&2; exit 1 ;;
esac

echo "== test-wheel: preparing the fixture venv" >&2
bash scripts/setup-venvs.sh current >/dev/null

# Sets `trap fixture_cleanup EXIT` (ends the process groups started below, removes $fixture_tmp).
source scripts/fixture-lib.sh

echo "== test-wheel: installing it into a fresh venv" >&2
venv="$fixture_tmp/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-index "$wheel"
installed="$venv/bin/otel-forkcheck"
found=$(PATH="$venv/bin:/usr/bin:/bin" command -v otel-forkcheck || true)
if [ "$found" != "$installed" ]; then
    echo "test-wheel: FAIL: otel-forkcheck on the venv's PATH is '$found', want $installed" >&2
    exit 1
fi
want=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The version and the commit built from (build.rs: "unknown" outside a git checkout).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
got=$("$installed" --version)
echo "$got" >&2
if [ "$got" != "otel-forkcheck $want ($commit)" ]; then
    echo "test-wheel: FAIL: --version printed '$got', want 'otel-forkcheck $want ($commit)'" >&2
    exit 1
fi
# The man pages (the wheel's data: share/man/man1), where man finds them from the venv's bin.
for page in man/*.1; do
    if ! cmp -s "$page" "$venv/share/man/man1/$(basename "$page")"; then
        echo "test-wheel: FAIL: $page is not installed as $venv/share/man/man1/$(basename "$page")" >&2
        exit 1
    fi
done
if command -v man >/dev/null; then
    found=$(env -u MANPATH PATH="$venv/bin:/usr/bin:/bin" man -w otel-forkcheck 2>&1 || true)
    if [ "$found" != "$venv/share/man/man1/otel-forkcheck.1" ]; then
        echo "test-wheel: FAIL: man -w otel-forkcheck found '$found', want the venv's page" >&2
        exit 1
    fi
fi
echo "man pages: $(ls "$venv/share/man/man1" | tr '\n' ' ')" >&2
"$venv/bin/python" -m pip show otel-forkcheck | grep -E '^(Name|Version|License-Expression):' >&2 || true

echo "== test-wheel: the broken preload fixture" >&2
start_collector 0
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$collector_port" \
OTEL_METRIC_EXPORT_INTERVAL=30000 OTEL_BSP_SCHEDULE_DELAY=30000 OTEL_BLRP_SCHEDULE_DELAY=30000 \
FIXTURE_EXPORT_BEFORE_FORK=1 PYTHONDONTWRITEBYTECODE=1 \
    start_gunicorn current 2 gunicorn -c fixtures/gunicorn/preload.conf.py \
    --control-socket "$fixture_tmp/gunicorn.ctl"
echo "== test-wheel: $installed --pid $master_pid --window 1s --format json" >&2
set +e
"$installed" --pid "$master_pid" --window 1s --format json >"$fixture_tmp/report.json" 2>"$fixture_tmp/stderr"
status=$?
set -e
if [ "$status" -ne 1 ]; then
    echo "test-wheel: FAIL: exit status $status, want 1 (findings); stderr:" >&2
    cat "$fixture_tmp/stderr" >&2
    exit 1
fi
codes=$(python3 -c '
import json, sys
report = json.load(open(sys.argv[1]))
print(" ".join(f["code"] for f in report["findings"]))
' "$fixture_tmp/report.json")
echo "findings: $codes" >&2
case " $codes " in
    *" FC103 "*) ;;
    *) echo "test-wheel: FAIL: FC103 not among the findings ($codes)" >&2; exit 1 ;;
esac
echo "test-wheel: ok: $(basename "$wheel") installs, runs and finds FC103 ($((SECONDS - start)) s)" >&2
