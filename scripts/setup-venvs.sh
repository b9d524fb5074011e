#!/usr/bin/env bash
# Build the Python venvs the fixtures run in: target/venvs/<name> from
# fixtures/requirements/<name>.txt, for every name given (default: all of them). A requirements
# file whose first line is `# python: X.Y` is built with pyenv's newest X.Y (under $PYENV_ROOT
# or ~/.pyenv), the others with $PYTHON (default python3).
#
# Prints one line per venv on stdout: the venv's python path. pip output goes to stderr.
# Cached: a venv whose stamp records the sha256 of its requirements file is left alone.
# Safe to run concurrently (cargo runs test binaries in parallel): one flock per venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reqdir="$root/fixtures/requirements"
# Resolved: a worktree whose target/venvs links elsewhere builds venvs whose scripts name the real path.
venvs="$(realpath -m "$root/target/venvs")"
python="${PYTHON:-python3}"

if [ "$#" -eq 0 ]; then
    set -- $(cd "$reqdir" && ls ./*.txt | sed 's|^\./||; s|\.txt$||')
fi

mkdir -p "$venvs"

# pyenv's newest X.Y interpreter, or nothing.
pyenv_python() {
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    ls -d "$root"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -n 1
}

for name in "$@"; do
    req="$reqdir/$name.txt"
    if [ ! -f "$req" ]; then
        echo "setup-venvs: no requirements file $req (known: $(cd "$reqdir" && ls ./*.txt | sed 's|^\./||; s|\.txt$||' | tr '\n' ' '))" >&2
        exit 2
    fi
    dir="$venvs/$name"
    py="$python"
    minor="$(sed -n '1s/^# python: *\([0-9][0-9.]*\) *$/\1/p' "$req")"
    if [ -n "$minor" ]; then
        py="$(pyenv_python "$minor")"
        if [ -z "$py" ]; then
            echo "setup-venvs: venv '$name' needs Python $minor: none under \$PYENV_ROOT/versions or ~/.pyenv/versions (pyenv install $minor)" >&2
            exit 1
        fi
    fi
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    (
        flock 9
        if [ "$(cat "$dir/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
            echo "setup-venvs: building $dir from $req" >&2
            start=$SECONDS
            # Never reuse a half-built or outdated venv: start over.
            rm -rf "$dir"
            if ! "$py" -m venv "$dir" >&2 ||
                ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
                    --no-input -r "$req" >&2; then
                rm -rf "$dir"
                echo "setup-venvs: FAILED to build venv '$name' from $req (see pip output above)" >&2
                exit 1
            fi
            echo "$want" >"$dir/.requirements.sha256"
            echo "setup-venvs: built $name in $((SECONDS - start)) s" >&2
        fi
    ) 9>"$venvs/.$name.lock"
    echo "$dir/bin/python"
done
