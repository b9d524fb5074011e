//! OTLP request bodies as the receiver decodes them: protobuf and JSON for every signal, gzip
//! (the capped reader and the budgeted one), and the summary taken from what decodes. The first
//! byte picks the signal, the encoding and whether the rest is gzip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_forkcheck::otlp::decode::{self, Encoding};
use otel_forkcheck::otlp::signal::Signal;
use otel_forkcheck::receive::limits::{gunzip_budgeted, Budget};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let signal = Signal::ALL[(pick % 3) as usize];
    let enc = if pick & 4 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let inflated;
    let body = if pick & 8 != 0 {
        let capped = decode::gunzip(body, 1 << 20);
        let budget = Budget::new(4 << 20);
        let mut res = budget.try_reserve(1024).expect("an empty budget has room");
        let budgeted = gunzip_budgeted(body, 0, 1 << 20, &mut res);
        // Both readers agree on what inflates within the cap.
        if let (Ok(a), Ok(b)) = (&capped, &budgeted) {
            assert_eq!(a, b);
        }
        drop(res);
        assert_eq!(budget.in_use(), 0);
        match capped {
            Ok(b) => {
                inflated = b;
                &inflated[..]
            }
            Err(_) => return,
        }
    } else {
        body
    };
    if let Ok(req) = decode::decode(signal, enc, body) {
        let _ = req.summarize();
    }
});
