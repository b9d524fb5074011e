#!/usr/bin/env bash
# RUSTC_WRAPPER for `scripts/fuzz.sh --smoke`: adds libFuzzer's coverage instrumentation (the
# flags `cargo fuzz` passes, without ASan) to the tool's library, the fuzz targets and the
# parsers they lean on (humantime, serde_json, prost, gzip), not to the other ~260 dependencies
# nor to build scripts (not linked with libFuzzer; none of these crates is a build dependency).
# All are stable rustc flags.
rustc="$1"
shift
name=
prev=
for a in "$@"; do
    [ "$prev" = --crate-name ] && name="$a"
    prev="$a"
done
case "$name" in
otel_forkcheck | otlp_decode | metrics_summarize | snapshot_json | duration | \
    humantime | serde_json | prost | flate2 | miniz_oxide)
    exec "$rustc" "$@" \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        -Cllvm-args=-sanitizer-coverage-stack-depth \
        -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
        --cfg fuzzing
    ;;
esac
exec "$rustc" "$@"
