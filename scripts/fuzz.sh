#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, with libFuzzer:
#   otlp_decode        OTLP/HTTP bodies: protobuf and JSON per signal, gzip (capped and budgeted)
#   metrics_summarize  protobuf metrics summarised off the wire (the receiver's hot path)
#   snapshot_json      `check --snapshot`: the JSON reader and every rule over what it accepts
#   duration           every duration flag's parser
#
# Usage: scripts/fuzz.sh [--smoke] [SECONDS_PER_TARGET] [TARGET...]
#   --smoke: the short run .ci/run does (10 s per target by default). It skips `cargo fuzz`
#     (installing it and its all-ASan, one-codegen-unit build of ~270 crates takes over an hour
#     on a fresh 2-core machine) and builds the targets with plain cargo, profile `smoke` of
#     fuzz/Cargo.toml, through scripts/fuzz-rustc.sh: libFuzzer's coverage flags on the tool
#     and the targets only, no ASan.
#   Without it: a real session through `cargo fuzz` (installed if missing), ASan included,
#     default 20 s per target; e.g. scripts/fuzz.sh 1800 otlp_decode (half an hour on one).
# A crash, a panic or an assertion in a target exits non-zero (so CI fails). The input is kept
# in fuzz/artifacts/<target>/; reproduce with the smoke binary
#   fuzz/target/smoke/<target> fuzz/artifacts/<target>/<file>
# or RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>.
#
# cargo fuzz passes nightly-only flags (ASan); RUSTC_BOOTSTRAP=1 lets the stable toolchain here
# accept them (set for that mode only: the smoke build's flags are stable, and RUSTC_BOOTSTRAP
# would change what proc-macro2 builds). The corpus starts from the repository's own fixtures and grows in
# target/fuzz-corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
if [ "${1:-}" = --smoke ]; then
    smoke=1
    shift
fi
secs="${1:-$([ $smoke = 1 ] && echo 10 || echo 20)}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(otlp_decode metrics_summarize json_replay snapshot_json duration)

if [ $smoke = 1 ]; then
    # fuzz/ is its own workspace: its own target dir (FUZZ_TARGET_DIR), not CARGO_TARGET_DIR.
    echo "== building the fuzz targets (profile smoke)"
    t0=$(date +%s)
    CARGO_TARGET_DIR="$target_dir" RUSTC_WRAPPER="$PWD/scripts/fuzz-rustc.sh" \
        cargo build --manifest-path fuzz/Cargo.toml --profile smoke --bins
    echo "built in $(($(date +%s) - t0)) s"
else
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    export RUSTC_BOOTSTRAP=1
fi

corpus=target/fuzz-corpus
seed() { # seed DIR FILES...
    local dir="$1"
    shift
    mkdir -p "$dir"
    for f in "$@"; do [ -f "$f" ] && cp -n "$f" "$dir/" || true; done
}
seed "$corpus/snapshot_json" fixtures/snapshots/*.json
seed "$corpus/metrics_summarize" fixtures/otlp/*.pb fixtures/otlp/*metrics*
mkdir -p "$corpus/otlp_decode" "$corpus/duration" "$corpus/json_replay"
# json_replay's input is edits to the SDK's JSON body (3 bytes each): start from none and one.
printf '' >"$corpus/json_replay/none"
printf '\x10\x02\xc7' >"$corpus/json_replay/one"
# otlp_decode's first byte picks signal and encoding: seed each fixture under a few picks.
for f in fixtures/otlp/*; do
    [ -f "$f" ] || continue
    for pick in 0 1 2 4 5 6; do
        out="$corpus/otlp_decode/$(basename "$f").$pick"
        [ -f "$out" ] || { printf "\\x$(printf %02x "$pick")" >"$out"; cat "$f" >>"$out"; }
    done
done
for d in 1s 1.5 30s 250ms 1h 366d 1e20 -1 nan inf 18446744073709551615s; do
    printf '%s' "$d" >"$corpus/duration/$(echo "$d" | tr -c 'a-zA-Z0-9.' _)"
done

for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "fuzz/artifacts/$t"
    flags=(-max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1
        -artifact_prefix="fuzz/artifacts/$t/")
    if [ $smoke = 1 ]; then
        run=("$target_dir/smoke/$t" "$corpus/$t" "${flags[@]}")
    else
        run=(cargo fuzz run --release "$t" "$corpus/$t" -- "${flags[@]}")
    fi
    log="target/fuzz-logs/$t.log"
    mkdir -p target/fuzz-logs
    status=0
    "${run[@]}" >"$log" 2>&1 || status=$?
    # Only the summary of libFuzzer's chatter (all of it is in $log).
    grep -aE "^(#[0-9]+[[:space:]]+DONE|stat::peak_rss_mb|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written|Done [0-9]+ runs)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz $t FAILED (status $status): the input is in fuzz/artifacts/$t/, the log in $log" >&2
        exit 1
    fi
done
echo "== fuzz: no crash"
