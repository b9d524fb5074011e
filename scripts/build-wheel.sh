#!/usr/bin/env bash
# Builds the Python wheel that carries the otel-forkcheck binary (pyproject.toml: maturin,
# bindings = "bin") into target/wheels, and prints the wheel's path as the last line on stdout.
#
# maturin comes from PyPI into target/tools-venv (pinned below; rebuilt when the pin changes), so
# this needs only cargo, python3 with venv and pip, and gcc.
#
# Platform tag: manylinux_2_34 (x86_64 here), asked for explicitly so that maturin's own
# auditwheel check fails the build instead of silently changing the tag. It is the lowest tag a
# binary linked against glibc >= 2.34 can have (glibc 2.34 moved libpthread into libc, so
# __libc_start_main, pthread_create, dlsym are GLIBC_2.34 symbols); the binary needs only libc,
# libm and libgcc_s. Such wheels install on glibc 2.34+ (Debian 12, Ubuntu 22.04, RHEL 9 and
# later). FORKCHECK_WHEEL_COMPATIBILITY overrides it (e.g. on an older build host).
#
#   scripts/build-wheel.sh [--profile NAME] [other maturin build flags]   # default --release
#
# The release build shares CARGO_TARGET_DIR (default target/) with `cargo build --release`, and
# `--profile dev` with `cargo build`: what one has compiled the other reuses.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

maturin_version=1.16.0
tools="$root/target/tools-venv"
out="$root/target/wheels"
compatibility="${FORKCHECK_WHEEL_COMPATIBILITY:-manylinux_2_34}"
python="${PYTHON:-python3}"

mkdir -p "$root/target"
(
    flock 9
    if [ "$("$tools/bin/maturin" --version 2>/dev/null)" != "maturin $maturin_version" ]; then
        echo "build-wheel: installing maturin $maturin_version into $tools" >&2
        rm -rf "$tools"
        "$python" -m venv "$tools" >&2
        "$tools/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "maturin==$maturin_version" >&2
    fi
) 9>"$root/target/.tools-venv.lock"

profile=(--release)
for arg in "$@"; do
    case "$arg" in --profile | --profile=*) profile=() ;; esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# Only this version's wheels: an old one left in target/wheels must not be picked up.
rm -f "$out"/otel_forkcheck-"$version"-*.whl
start=$SECONDS
"$tools/bin/maturin" build --locked "${profile[@]}" --compatibility "$compatibility" \
    --out "$out" "$@" >&2
wheels=("$out"/otel_forkcheck-"$version"-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "build-wheel: expected one otel_forkcheck-$version wheel in $out, found: ${wheels[*]}" >&2
    exit 1
fi
echo "build-wheel: built $(basename "${wheels[0]}") in $((SECONDS - start)) s" >&2
echo "${wheels[0]}"
