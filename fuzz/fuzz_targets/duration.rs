//! Every duration flag's parser: never panics, and what it accepts is within its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_forkcheck::cli::args::{parse_duration, MAX_DURATION};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(s) {
        assert!(d <= MAX_DURATION, "{s:?} -> {d:?}");
    }
});
