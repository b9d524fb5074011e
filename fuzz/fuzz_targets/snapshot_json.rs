//! `check --snapshot FILE`: the JSON snapshot reader, and every rule over whatever it accepts
//! (a saved snapshot may come from another version, or be edited by hand).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_forkcheck::diagnose::{self, Facts};
use otel_forkcheck::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(snap) = serde_json::from_str::<Snapshot>(text) {
        let _ = diagnose::diagnose(&Facts::from_snapshot(&snap));
    }
});
