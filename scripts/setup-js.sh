#!/usr/bin/env bash
# Install the pinned OpenTelemetry JS SDK generations the end-to-end tests run under Node:
# target/js/<name>/node_modules from fixtures/js/<name>/package.json and package-lock.json
# (`npm ci`, exact versions), for every name given (default: all of them).
#
# Prints one line per generation on stdout: its node_modules path (for NODE_PATH). npm output
# goes to stderr. Cached: a directory whose stamp records the sha256 of its package.json and
# lock file is left alone. Safe to run concurrently (cargo runs test binaries in parallel): one
# flock per generation.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/fixtures/js"
dest="$(realpath -m "$root/target/js")"
npm="${NPM:-npm}"

known() { (cd "$src" && ls -d */ | sed 's|/$||' | tr '\n' ' '); }

if [ "$#" -eq 0 ]; then
    set -- $(known)
fi
if ! command -v "$npm" >/dev/null || ! command -v node >/dev/null; then
    echo "setup-js: node and npm are needed (Node.js 20 or later)" >&2
    exit 2
fi

mkdir -p "$dest"
for name in "$@"; do
    pkg="$src/$name/package.json"
    lock="$src/$name/package-lock.json"
    if [ ! -f "$pkg" ] || [ ! -f "$lock" ]; then
        echo "setup-js: no $pkg with its package-lock.json (known: $(known))" >&2
        exit 2
    fi
    dir="$dest/$name"
    want="$(cat "$pkg" "$lock" | sha256sum | cut -d' ' -f1)"
    (
        flock 9
        if [ "$(cat "$dir/.lock.sha256" 2>/dev/null)" != "$want" ]; then
            echo "setup-js: installing $dir from $lock" >&2
            start=$SECONDS
            # Never reuse a half-installed or outdated tree: start over.
            rm -rf "$dir"
            mkdir -p "$dir"
            cp "$pkg" "$lock" "$dir/"
            # No install scripts: the SDK packages are plain JavaScript.
            if ! (cd "$dir" && "$npm" ci --ignore-scripts --no-audit --no-fund >&2); then
                rm -rf "$dir"
                echo "setup-js: FAILED to install '$name' from $lock (see npm output above)" >&2
                exit 1
            fi
            echo "$want" >"$dir/.lock.sha256"
            echo "setup-js: installed $name in $((SECONDS - start)) s" >&2
        fi
    ) 9>"$dest/.$name.lock"
    echo "$dir/node_modules"
done
