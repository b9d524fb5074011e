//! Protobuf metric exports summarised off the wire bytes (the receiver's hot path), with a
//! connection's name cache carried from one body to the next, as on a keep-alive connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_forkcheck::otlp::metrics::{summarize_metrics, NameCache};

fuzz_target!(|data: &[u8]| {
    let mut names = NameCache::default();
    let nspid = [4242, 1];
    // Split in two bodies on the first 0xff, so the cache sees a second export.
    let (a, b) = match data.iter().position(|&x| x == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = summarize_metrics(a, &mut names, Some((4242, &nspid)));
    let _ = summarize_metrics(b, &mut names, Some((4242, &nspid)));
    let _ = summarize_metrics(a, &mut names, None);
});
