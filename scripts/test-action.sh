#!/usr/bin/env bash
# Tests the GitHub Action (action.yml) without GitHub and without network:
#  1. action.yml against SchemaStore's action metadata schema, and examples/github-workflow.yml
#     (the README's CI example) against its workflow schema, both vendored in the PyPI package
#     check-jsonschema (--builtin-schema vendor.github-actions / vendor.github-workflows),
#     and the README's example must be that file (comments aside);
#  2. broken copies of action.yml must be rejected (the check is not vacuous);
#  3. the action's two bash steps, run as a runner would (bash -eo pipefail, RUNNER_TEMP,
#     GITHUB_PATH, GITHUB_OUTPUT, inputs through env), against a stand-in otel-forkcheck wheel
#     from a local folder: the version spec, the venv, PATH, the argument splitting, --format,
#     --junit and the exit status passed through;
#  4. the formats the action documents, its default first (github), with the real binary: `run`
#     accepts each, and `check --format github` on the broken snapshot prints workflow commands.
#
# check-jsonschema comes from PyPI into target/action-venv (pinned below). The checks run in an
# empty network namespace when `unshare -n` works (root), which proves they need no network.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS

check_jsonschema_version=0.39.0
venv="$root/target/action-venv"
python="${PYTHON:-python3}"

mkdir -p "$root/target"
(
    flock 9
    if [ "$("$venv/bin/check-jsonschema" --version 2>/dev/null)" != "check-jsonschema, version $check_jsonschema_version" ]; then
        echo "test-action: installing check-jsonschema $check_jsonschema_version into $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "check-jsonschema==$check_jsonschema_version" >&2
    fi
) 9>"$root/target/.action-venv.lock"

offline=()
if unshare -n true 2>/dev/null; then
    offline=(unshare -n)
    echo "== test-action: checks run without network (unshare -n)" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== test-action: schemas" >&2
"${offline[@]}" "$venv/bin/check-jsonschema" --builtin-schema vendor.github-actions action.yml
"${offline[@]}" "$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows \
    examples/github-workflow.yml

echo "== test-action: the README's workflow is examples/github-workflow.yml" >&2
# The yaml block of "## Use it in CI" and the example file, comment lines aside, must be the same.
python3 - README.md examples/github-workflow.yml <<'PY'
import sys
readme, example = (open(p).read() for p in sys.argv[1:])
section = readme[readme.index("## Use it in CI"):]
block = section[section.index("```yaml\n") + 8:]
block = block[:block.index("```")]
strip = lambda text: [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
if strip(block) != strip(example):
    sys.exit("test-action: FAIL: README's CI example and examples/github-workflow.yml differ")
PY

echo "== test-action: broken copies of action.yml are rejected" >&2
# Each must fail on its own: a composite step without `shell`, and an input with a misspelled key.
broken() {
    local what=$1
    shift
    sed "$@" action.yml >"$tmp/action.yml"
    if cmp -s action.yml "$tmp/action.yml"; then
        echo "test-action: FAIL: could not break the copy of action.yml ($what)" >&2
        exit 1
    fi
    if "${offline[@]}" "$venv/bin/check-jsonschema" --builtin-schema vendor.github-actions \
        "$tmp/action.yml" >"$tmp/broken.out" 2>&1; then
        echo "test-action: FAIL: action.yml with $what passed the schema check" >&2
        exit 1
    fi
    echo "  rejected as expected: $what: $(grep -m 1 -o 'action.yml::.*' "$tmp/broken.out" | cut -c 1-110)" >&2
}
broken "a step without shell" -e '0,/^      shell: bash$/{/^      shell: bash$/d}'
broken "a misspelled input key" -e 's/^    required: true$/    requird: true/'

echo "== test-action: the action's steps, with a stand-in otel-forkcheck" >&2
"${offline[@]}" "$venv/bin/python" -u - "$root/action.yml" "$tmp" <<'PY'
"""Runs action.yml's bash steps the way a runner runs a composite action, offline."""
import base64, hashlib, json, os, re, subprocess, sys, zipfile

from ruamel.yaml import YAML

action_path, tmp = sys.argv[1], sys.argv[2]
action = YAML(typ="safe").load(open(action_path))
steps = action["runs"]["steps"]

# A stand-in wheel: a script named otel-forkcheck that answers --version and records its argv.
wheels = os.path.join(tmp, "wheels")
os.makedirs(wheels)
stub = """#!python
import json, os, sys
if sys.argv[1:] == ["--version"]:
    print("otel-forkcheck 0.1.0")
    sys.exit(0)
with open(os.environ["STUB_ARGV"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
"""
files = {
    "otel_forkcheck-0.1.0.data/scripts/otel-forkcheck": stub,
    "otel_forkcheck-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: otel-forkcheck\nVersion: 0.1.0\n",
    "otel_forkcheck-0.1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test-action\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
}
record = []
for name, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text.encode())}")
record.append("otel_forkcheck-0.1.0.dist-info/RECORD,,")
with zipfile.ZipFile(os.path.join(wheels, "otel_forkcheck-0.1.0-py3-none-any.whl"), "w") as z:
    for name, text in files.items():
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o100000 | 0o755) << 16  # a regular file, rwxr-xr-x
        z.writestr(info, text)
    z.writestr("otel_forkcheck-0.1.0.dist-info/RECORD", "\n".join(record) + "\n")

EXPR = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


def run_action(with_inputs, stub_exit, workdir):
    inputs = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    unknown = set(with_inputs) - set(inputs)
    assert not unknown, f"inputs not declared in action.yml: {unknown}"
    inputs.update(with_inputs)
    runner_temp = os.path.join(tmp, "runner-temp")
    os.makedirs(runner_temp, exist_ok=True)
    github_path = os.path.join(tmp, "github_path")
    github_output = os.path.join(tmp, "github_output")
    for f in (github_path, github_output):
        open(f, "w").close()
    argv_file = os.path.join(tmp, "argv.json")
    if os.path.exists(argv_file):
        os.remove(argv_file)
    status = 0
    for step in steps:
        assert step.get("shell") == "bash", f"step {step.get('name')}: shell bash"
        script = step["run"]
        assert "${{" not in script, f"step {step.get('name')}: an expression pasted into the script"
        env = dict(os.environ)
        env.update({
            "RUNNER_OS": "Linux", "RUNNER_TEMP": runner_temp, "GITHUB_PATH": github_path,
            "GITHUB_OUTPUT": github_output, "STUB_ARGV": argv_file, "STUB_EXIT": str(stub_exit),
            # pip finds the stand-in in a local folder only.
            "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheels,
        })
        for k, v in (step.get("env") or {}).items():
            env[k] = EXPR.sub(lambda m: inputs[m.group(1)], str(v))
        cwd = EXPR.sub(lambda m: inputs[m.group(1)], step.get("working-directory", "."))
        path = os.path.join(tmp, "step.sh")
        with open(path, "w") as f:
            f.write(script)
        # What the runner does for `shell: bash`.
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", path],
                              cwd=os.path.join(workdir, cwd), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            status = proc.returncode
            last = proc.stdout
            break
        last = proc.stdout
    outputs = dict(l.split("=", 1) for l in open(github_output).read().splitlines() if "=" in l)
    recorded = json.load(open(argv_file)) if os.path.exists(argv_file) else None
    return status, outputs, recorded, open(github_path).read().splitlines(), last


workdir = os.path.join(tmp, "project")
os.makedirs(os.path.join(workdir, "app"))

# 1. A passing run: quoted words survive, junit and format come from their inputs.
status, outputs, rec, path, log = run_action({
    "version": "0.1.0",
    "args": """--workers 4 --hit 'http://127.0.0.1:8000/a b' -- gunicorn -c "my conf.py" myapp:app""",
    "junit": "forkcheck.xml",
    "working-directory": "app",
}, 0, workdir)
assert status == 0, log
want = ["run", "--format", "github", "--junit", "forkcheck.xml", "--workers", "4",
        "--hit", "http://127.0.0.1:8000/a b", "--", "gunicorn", "-c", "my conf.py", "myapp:app"]
assert rec and rec["argv"] == want, f"argv {rec and rec['argv']}\nwant {want}\n{log}"
assert rec["cwd"] == os.path.join(workdir, "app"), rec["cwd"]
assert outputs.get("exit-code") == "0", outputs
assert len(path) == 1 and os.path.isfile(os.path.join(path[0], "otel-forkcheck")), path
assert not os.path.exists(os.path.join(path[0], "python")), "only the binary goes on PATH"
print("  pass: argv", json.dumps(rec["argv"]))

# 2. Findings: exit status 1 fails the step and is the exit-code output; no junit flag when empty.
status, outputs, rec, _, log = run_action({
    "version": ">=0.1,<0.2", "args": "-- gunicorn app:app", "format": "json"}, 1, workdir)
assert status == 1, f"status {status}\n{log}"
assert rec["argv"] == ["run", "--format", "json", "--", "gunicorn", "app:app"], rec["argv"]
assert outputs.get("exit-code") == "1", outputs
print("  fail passed through: exit 1, argv", json.dumps(rec["argv"]))

# 3. A version that does not exist fails the install step.
status, _, rec, _, log = run_action({"version": "==9.9.9", "args": "-- true"}, 0, workdir)
assert status != 0 and rec is None, log
print("  missing version: the install step fails")

# 4. Unbalanced quotes in args: the step fails before running anything.
status, outputs, rec, _, log = run_action({"args": "-- gunicorn -c 'oops"}, 0, workdir)
assert status == 2 and rec is None and "cannot be split" in log, f"status {status}\n{log}"
print("  unbalanced quotes in args: exit 2, nothing run")
PY
echo "== test-action: the action's formats, with the real otel-forkcheck" >&2
if [ -z "${OTEL_FORKCHECK:-}" ]; then
    cargo build --quiet --locked --bin otel-forkcheck
    OTEL_FORKCHECK="${CARGO_TARGET_DIR:-$root/target}/debug/otel-forkcheck"
fi
default=$("$venv/bin/python" -c '
import sys
from ruamel.yaml import YAML
print(YAML(typ="safe").load(open(sys.argv[1]))["inputs"]["format"]["default"])
' action.yml)
if [ "$default" != github ]; then
    echo "test-action: FAIL: the format input's default is '$default', want github" >&2
    exit 1
fi
for format in "$default" human json; do
    # Parsing only: --requests 0 is refused after the arguments parsed, before anything runs.
    set +e
    "$OTEL_FORKCHECK" run --format "$format" --requests 0 -- true >/dev/null 2>"$tmp/run.err"
    status=$?
    set -e
    if [ "$status" -ne 2 ] || ! grep -q -- '--requests 0' "$tmp/run.err"; then
        echo "test-action: FAIL: otel-forkcheck run does not take --format $format:" >&2
        cat "$tmp/run.err" >&2
        exit 1
    fi
done
set +e
"${offline[@]}" "$OTEL_FORKCHECK" check --snapshot fixtures/snapshots/preload-http.json \
    --format github >"$tmp/github.out"
status=$?
set -e
if [ "$status" -ne 1 ] || grep -qv '^::' "$tmp/github.out" \
    || ! grep -q '^::error title=FC103 exporter-socket-shared::' "$tmp/github.out" \
    || [ "$(tail -n 1 "$tmp/github.out")" != "::notice title=otel-forkcheck::verdict fail (1 error(s), 2 warning(s))" ]; then
    echo "test-action: FAIL: check --format github (exit $status):" >&2
    cat "$tmp/github.out" >&2
    exit 1
fi
echo "  --format $default (the default), human, json: accepted by run; github output:" >&2
cut -c 1-100 "$tmp/github.out" | sed 's/^/    /' >&2
echo "test-action: ok ($((SECONDS - start)) s)" >&2
