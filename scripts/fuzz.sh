#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, with libFuzzer through `cargo fuzz`:
#   otlp_decode        OTLP/HTTP bodies: protobuf and JSON per signal, gzip (capped and budgeted)
#   metrics_summarize  protobuf metrics summarised off the wire (the receiver's hot path)
#   snapshot_json      `check --snapshot`: the JSON reader and every rule over what it accepts
#   duration           every duration flag's parser
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   default 20 s per target (what .ci/run runs: a smoke run); a real session is longer, e.g.
#   scripts/fuzz.sh 1800 otlp_decode   (half an hour on one target)
# Crashes are kept in fuzz/artifacts/<target>/; reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
#
# cargo fuzz needs a nightly compiler for the sanitizer flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain here accept them. The corpus starts from the repository's own fixtures and
# grows in target/fuzz-corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(otlp_decode metrics_summarize snapshot_json duration)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

corpus=target/fuzz-corpus
seed() { # seed DIR FILES...
    local dir="$1"
    shift
    mkdir -p "$dir"
    for f in "$@"; do [ -f "$f" ] && cp -n "$f" "$dir/" || true; done
}
seed "$corpus/snapshot_json" fixtures/snapshots/*.json
seed "$corpus/metrics_summarize" fixtures/otlp/*.pb fixtures/otlp/*metrics*
mkdir -p "$corpus/otlp_decode" "$corpus/duration"
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
    cargo fuzz run --release "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 2>&1 |
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written|Done [0-9]+ runs)" || true
    # grep hides libFuzzer's chatter; the exit status is the fuzzer's.
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "fuzz $t FAILED (status $status): see fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "== fuzz: no crash"
