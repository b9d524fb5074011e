//! Differential tests: a replay gives exactly what a full read of the same body gives, or
//! nothing; bodies that differ only in values are replayed.

use serde_json::{json, Value};

use super::{Last, Replay};
use crate::otlp::jsonfast::{summarize, tests::fixtures};
use crate::otlp::signal::Signal;

fn metrics_bodies() -> Vec<Value> {
    fixtures()
        .into_iter()
        .filter(|(s, _)| *s == Signal::Metrics)
        .map(|(_, v)| v)
        .collect()
}

fn rng(seed: u64) -> impl FnMut() -> usize {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    }
}

/// Every point value of `v` moved, each keeping its JSON type (string or number) but not its
/// length (not those of exponential buckets, exemplars and quantiles: they are structure).
fn new_values(v: &mut Value, next: &mut impl FnMut() -> usize) {
    const INTS: [&str; 5] = [
        "startTimeUnixNano",
        "timeUnixNano",
        "count",
        "asInt",
        "zeroCount",
    ];
    const FLOATS: [&str; 4] = ["asDouble", "sum", "min", "max"];
    let doubles = [
        0.0,
        1.5,
        -2.25,
        1e-7,
        12345.678,
        3.0,
        1.7976931348623157e308,
        5e-324,
    ];
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let int = (next() % 1_000_000_000_000) as u64 >> (next() % 40);
                match x {
                    Value::String(s) if INTS.contains(&k.as_str()) && s.parse::<u64>().is_ok() => {
                        *s = int.to_string()
                    }
                    Value::Number(n) if INTS.contains(&k.as_str()) && n.is_u64() => *x = json!(int),
                    Value::Number(_) if FLOATS.contains(&k.as_str()) => {
                        *x = json!(doubles[next() % doubles.len()])
                    }
                    Value::Array(a) if k == "bucketCounts" => {
                        for b in a {
                            let n = next() % 5000;
                            *b = match b {
                                Value::String(_) => json!(n.to_string()),
                                _ => json!(n),
                            };
                        }
                    }
                    _ if ["positive", "negative", "exemplars", "quantileValues"]
                        .contains(&k.as_str()) => {}
                    _ => new_values(x, next),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| new_values(c, next)),
        _ => {}
    }
}

#[test]
fn bodies_with_other_values_are_replayed_as_a_full_read_gives_them() {
    let mut next = rng(0x2545_f491_4f6c_dd1d);
    let (mut bodies, mut replays) = (0, 0);
    for v in metrics_bodies() {
        for pretty in [false, true] {
            let text = |v: &Value| match pretty {
                true => serde_json::to_string_pretty(v).unwrap(),
                false => v.to_string(),
            };
            let first = text(&v);
            let mut r = Replay::default();
            let want = summarize(Signal::Metrics, first.as_bytes());
            assert_eq!(r.summarize(first.as_bytes()), want);
            assert!(r.last().is_some(), "not kept: {first}");
            let mut m = v.clone();
            for _ in 0..20 {
                new_values(&mut m, &mut next);
                let body = text(&m);
                let want = summarize(Signal::Metrics, body.as_bytes());
                assert!(want.is_some(), "full read refused {body}");
                let replayed = r.last().and_then(|l: &Last| l.replay(body.as_bytes()));
                assert_eq!(replayed, want, "replay of {body}");
                assert_eq!(r.summarize(body.as_bytes()), want);
                bodies += 1;
                replays += replayed.is_some() as usize;
            }
        }
    }
    // Every body differs from the first one in values only: each is a replay.
    assert_eq!(replays, bodies);
    assert!(bodies >= 2 * 20 * 5, "{bodies} bodies");
}

#[test]
fn mutated_bodies_are_replayed_only_as_a_full_read_takes_them() {
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let bytes = b"0123456789-+.eE\" \\,:}]{[nux";
    let (mut tried, mut replays, mut refused) = (0, 0, 0);
    for v in metrics_bodies() {
        let first = v.to_string();
        let mut r = Replay::default();
        r.summarize(first.as_bytes());
        let last = r.last().expect("kept");
        for _ in 0..400 {
            let mut b = first.clone().into_bytes();
            // Half of the bodies changed inside value tokens only (or just after one).
            let in_tokens = next() % 2 == 0;
            for _ in 0..1 + next() % 3 {
                let c = match next() % 3 {
                    0 => bytes[next() % bytes.len()],
                    _ => b'0' + (next() % 10) as u8,
                };
                let i = match in_tokens || next() % 4 == 0 {
                    true => {
                        let s = last.slots[next() % last.slots.len()];
                        s.start as usize + next() % (s.end - s.start + 1) as usize
                    }
                    false => next() % b.len(),
                };
                match next() % 3 {
                    0 => b[i] = c,
                    1 => b.insert(i, c),
                    _ => {
                        b.remove(i);
                    }
                }
            }
            tried += 1;
            let Some(got) = last.replay(&b) else {
                continue;
            };
            let want = summarize(Signal::Metrics, &b);
            assert_eq!(
                Some(&got),
                want.as_ref(),
                "replayed what a full read gives otherwise: {}",
                String::from_utf8_lossy(&b)
            );
            replays += 1;
            refused += (got != summarize(Signal::Metrics, first.as_bytes()).unwrap()) as usize;
        }
    }
    eprintln!("{replays} of {tried} mutated bodies replayed, {refused} with other values");
    // The mutations that only change a value are replayed (and checked above).
    assert!(
        replays > tried / 8 && refused > tried / 10,
        "{replays} of {tried}"
    );
}

#[test]
fn structure_and_text_changes_are_read_in_full() {
    let v = metrics_bodies().remove(1);
    let first = v.to_string();
    let mut r = Replay::default();
    r.summarize(first.as_bytes());
    let last = r.last().expect("kept");
    let escaped = first.replacen("\"timeUnixNano\":\"", "\"timeUnixNano\":\"\\u0031", 1);
    let as_number = first.replacen("\"timeUnixNano\":\"", "\"timeUnixNano\":", 1);
    for body in [
        // A value escaped, a string as a number, a value as null, one more space.
        escaped,
        as_number,
        first.replacen("\"asDouble\":", "\"asDouble\":null,\"x\":", 1),
        first.replacen(",", ", ", 1),
        // A point attribute's value, a metric name.
        first.replacen("\"stringValue\":\"", "\"stringValue\":\"x", 2),
        first.replacen("\"name\":\"", "\"name\":\"y", 2),
        // Cut, or followed by more.
        first[..first.len() - 1].to_string(),
        format!("{first} {{}}"),
    ] {
        assert_eq!(last.replay(body.as_bytes()), None, "{body}");
    }
}

#[test]
fn bodies_never_replayed_are_kept_less_and_less_often() {
    let first = metrics_bodies().remove(1).to_string();
    let renamed = |i: usize| first.replacen("\"name\":\"", &format!("\"name\":\"{i}."), 1);
    let mut r = Replay::default();
    let mut kept = Vec::new();
    for i in 0..100 {
        let body = renamed(i);
        let before = r.last().map(|l| l.body.clone());
        let want = summarize(Signal::Metrics, body.as_bytes());
        assert_eq!(r.summarize(body.as_bytes()), want);
        if r.last().map(|l| &l.body) != before.as_ref() {
            kept.push(i);
        }
    }
    assert_eq!(kept, [0, 1, 3, 7, 15, 31, 63]);
    // Body 63 with other values is replayed; then a new structure is kept at once.
    let again = renamed(63).replacen("\"timeUnixNano\":\"1", "\"timeUnixNano\":\"2", 1);
    assert!(r.last().unwrap().replay(again.as_bytes()).is_some());
    r.summarize(again.as_bytes());
    let new = renamed(1000);
    r.summarize(new.as_bytes());
    assert_eq!(r.last().map(|l| &l.body[..]), Some(new.as_bytes()));
}

#[test]
fn number_tokens_are_taken_as_serde_json_takes_them() {
    use super::{read, Read};
    let tokens = [
        "0",
        "-0",
        "01",
        "-01",
        "1.",
        "1.5",
        ".5",
        "-.5",
        "1e5",
        "1E+5",
        "1e-5",
        "1e",
        "1e+",
        "-",
        "--1",
        "1e400",
        "-1e400",
        "1.7976931348623157e308",
        "1e-400",
        "0.0e0",
        "2.",
        "+1",
        "1ee5",
        "1.5.5",
        "00",
        "12345678901234567890123",
        "9.9e299",
        "1-2",
        "0e0",
        "-0.0",
        "1E-0",
    ];
    for t in tokens {
        let serde = serde_json::from_str::<f64>(t).ok();
        for how in [Read::F64, Read::F64Checked] {
            assert_eq!(
                read(t.as_bytes(), how).is_some(),
                serde.is_some(),
                "{t} {how:?}"
            );
        }
        let got = read(t.as_bytes(), Read::F64).map(|v| match v {
            super::Val::F(x) => x.to_bits(),
            super::Val::U(_) => panic!("{t}"),
        });
        assert_eq!(got, serde.map(f64::to_bits), "{t}");
    }
}

#[test]
fn bodies_too_large_to_keep_are_offered_less_and_less_often() {
    let first = metrics_bodies().remove(1).to_string();
    let large = first.replacen('{', &format!("{{\"pad\":\"{}\",", "x".repeat(70_000)), 1);
    let want = summarize(Signal::Metrics, large.as_bytes());
    assert!(want.is_some());
    let mut r = Replay::default();
    for _ in 0..4 {
        assert_eq!(r.summarize(large.as_bytes()), want);
        assert!(r.last().is_none());
    }
    // Offered at 0, 1 and 3 (not 2): the next offer waits 3 more bodies.
    assert_eq!((r.misses, r.wait), (2, 3));
}

/// Point lists handed back by accounted exports (here with stale points in them, of other
/// sizes) are filled afresh: the same summaries as with new lists, and the lists are used.
#[test]
fn reused_point_lists_give_the_same_summaries() {
    use crate::otlp::values::PointValue;
    let mut next = rng(7);
    for v in metrics_bodies() {
        let first = v.to_string();
        let mut r = Replay::default();
        r.summarize(first.as_bytes());
        let mut m = v.clone();
        new_values(&mut m, &mut next);
        let body = m.to_string();
        let last = r.last().expect("kept");
        let want = last.replay(body.as_bytes());
        assert!(want.is_some());
        let stale = PointValue {
            time_unix_nano: 9,
            count: 9,
            ..Default::default()
        };
        let mut spare: Vec<Vec<PointValue>> = (0..40).map(|i| vec![stale; i % 7]).collect();
        let metrics: usize = want.iter().flatten().map(|r| r.metrics.len()).sum();
        assert_eq!(last.replay_reusing(body.as_bytes(), &mut spare), want);
        assert_eq!(spare.len(), 40 - metrics);
        assert_eq!(
            r.summarize_reusing(body.as_bytes(), &mut spare),
            summarize(Signal::Metrics, body.as_bytes())
        );
    }
}

#[test]
fn common_prefix_finds_the_first_difference_anywhere() {
    let a: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
    for len in [0, 1, 7, 8, 31, 32, 33, 64, 100, 200] {
        assert_eq!(super::common_prefix(&a[..len], &a[..len]), len);
        // One side shorter: the shorter one's length.
        assert_eq!(super::common_prefix(&a[..len], &a), len);
        for at in 0..len {
            let mut b = a[..len].to_vec();
            b[at] ^= 0x20;
            assert_eq!(
                super::common_prefix(&a[..len], &b),
                at,
                "len {len}, at {at}"
            );
            assert_eq!(super::common_prefix_bytes(&a[..len], &b, 0), at);
        }
    }
}

#[test]
fn digits_read_as_a_byte_at_a_time_would() {
    let one_by_one = |t: &[u8]| -> Option<u64> {
        if t.is_empty() || t.len() > 19 || (t[0] == b'0' && t.len() > 1) {
            return None;
        }
        t.iter().try_fold(0u64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
        })
    };
    let mut next = rng(7);
    let mut cases: Vec<Vec<u8>> = ["0", "7", "10", "01", "12345678", "123456789", "99999999"]
        .iter()
        .chain(&[
            "1764547200000000000",
            "9999999999999999999",
            "17645472000000000000",
        ])
        .chain(&["1234567/", "1234567:", "12345678a", "", "-1", "1e3", "12 4"])
        .map(|s| s.as_bytes().to_vec())
        .collect();
    for _ in 0..20_000 {
        let len = 1 + next() % 20;
        let mut t: Vec<u8> = (0..len).map(|_| b'0' + (next() % 10) as u8).collect();
        if next() % 4 == 0 {
            let at = next() % len;
            t[at] = [b'/', b':', b'.', b' ', 0x30 + 0x10, 0xb5][next() % 6];
        }
        cases.push(t);
    }
    for t in cases {
        assert_eq!(
            super::digits(&t),
            one_by_one(&t),
            "{:?}",
            String::from_utf8_lossy(&t)
        );
    }
}
