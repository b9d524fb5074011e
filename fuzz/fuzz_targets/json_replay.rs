//! OTLP/JSON metrics replayed from a connection's last body: the real SDK body, then that body
//! changed byte by byte (mostly around numbers), must give exactly what a full read of it gives
//! (a replay that takes what the full reader refuses, or reads a value otherwise, crashes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_forkcheck::otlp::jsonfast::{summarize, Replay};
use otel_forkcheck::otlp::signal::Signal;

const BODY: &[u8] = include_bytes!("../../fixtures/otlp/sdk/metrics.json");
const BYTES: &[u8] = b"0123456789-+.eE\" ,:]}[{n\\";

fuzz_target!(|data: &[u8]| {
    let mut replay = Replay::default();
    let _ = replay.summarize(BODY);
    let mut b = BODY.to_vec();
    // Each 3 bytes: where (16 bits), then what (2 bits: set, insert, remove, set a digit) and
    // which byte.
    for op in data.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % b.len();
        let c = BYTES[usize::from(op[2] & 63) % BYTES.len()];
        match op[2] >> 6 {
            0 => b[at] = c,
            1 => b.insert(at, c),
            2 if b.len() > 1 => {
                b.remove(at);
            }
            _ => b[at] = b'0' + op[2] % 10,
        }
    }
    let full = summarize(Signal::Metrics, &b);
    assert_eq!(replay.summarize(&b), full);
});
