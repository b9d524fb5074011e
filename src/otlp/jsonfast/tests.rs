//! Differential tests: on every OTLP JSON body of the repository's fixtures and on generated
//! variations of them, the fast reader either leaves the body to the reference path or gives
//! exactly the summaries that path gives (identities, counts, series keys, values).

use serde_json::{json, Map, Value};

use super::summarize;
use crate::otlp::decode::{decode, BodyError, Encoding};
use crate::otlp::identity::ResourceSummary;
use crate::otlp::signal::Signal;

fn reference(signal: Signal, body: &[u8]) -> Result<Vec<ResourceSummary>, BodyError> {
    decode(signal, Encoding::Json, body).map(|r| r.summarize())
}

/// Whether the fast reader took the body; when it did, its summaries are the reference's.
fn check(signal: Signal, body: &[u8]) -> bool {
    let want = reference(signal, body);
    match summarize(signal, body) {
        Some(got) => {
            assert_eq!(
                Ok(&got),
                want.as_ref(),
                "{signal:?} body: {}",
                String::from_utf8_lossy(body)
            );
            true
        }
        None => false,
    }
}

/// A well-formed body: the fast reader must take it (and agree).
fn taken(signal: Signal, v: &Value) {
    for body in [v.to_string(), serde_json::to_string_pretty(v).unwrap()] {
        assert!(
            check(signal, body.as_bytes()),
            "left to the reference: {body}"
        );
    }
}

fn fixture(path: &str) -> Value {
    let p = format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// Every OTLP JSON body of the fixtures, with its signal.
pub(super) fn fixtures() -> Vec<(Signal, Value)> {
    let mut out = Vec::new();
    for (dir, names) in [
        ("otlp", ["metrics", "trace", "logs"]),
        ("otlp/sdk", ["metrics", "traces", "logs"]),
    ] {
        for (name, signal) in names.into_iter().zip(Signal::ALL) {
            out.push((signal, fixture(&format!("{dir}/{name}.json"))));
        }
    }
    // The JS SDKs' bodies (recorded by scripts/record-js-json.py).
    let js = format!("{}/fixtures/otlp/js", env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<_> = std::fs::read_dir(&js)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 30, "{} JS bodies", paths.len());
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let signal = Signal::parse(name.split('-').next().unwrap()).unwrap();
        out.push((
            signal,
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
        ));
    }
    out.push((Signal::Metrics, all_kinds()));
    out
}

/// Every metric kind, both temporalities, and attributes of every value type.
fn all_kinds() -> Value {
    let attrs = json!([
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i", "value": {"intValue": "-7"}},
        {"key": "n", "value": {"intValue": 9007199254740993u64}},
        {"key": "b", "value": {"boolValue": true}},
        {"key": "d", "value": {"doubleValue": 0.25}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "p"}, {"intValue": 3}, {}]}}},
        {"key": "k", "value": {"kvlistValue": {"values": [{"key": "z", "value": {"boolValue": false}}, {"key": "e"}]}}},
        {"key": "empty", "value": {}},
        {"key": "none"},
        {"key": "", "value": {"stringValue": ""}, "keyStrindex": -3},
    ]);
    let resource = json!({"attributes": [
        {"key": "service.name", "value": {"stringValue": "kinds"}},
        {"key": "process.pid", "value": {"stringValue": " 31 "}},
        {"key": "worker.pid", "value": {"doubleValue": 12.0}},
        {"key": "service.instance.id", "value": {"intValue": 5}},
        {"key": "process.command_args", "value": {"arrayValue": {"values": [{"stringValue": "-m"}]}}},
    ], "droppedAttributesCount": 1});
    let t = "1700000000000000000";
    let st = "1690000000000000000";
    json!({"resourceMetrics": [{
        "resource": resource,
        "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
        "scopeMetrics": [{
            "scope": {"name": "kinds.scope", "version": "1"},
            "metrics": [
                {"name": "g", "unit": "1", "gauge": {"dataPoints": [
                    {"attributes": attrs, "timeUnixNano": t, "asDouble": 1.5},
                    {"timeUnixNano": t, "asInt": 4},
                ]}},
                {"name": "c", "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [
                    {"attributes": attrs, "startTimeUnixNano": st, "timeUnixNano": t, "asInt": "12", "flags": 1},
                    {"startTimeUnixNano": 0, "timeUnixNano": t, "asDouble": -0.0},
                    {"startTimeUnixNano": st, "timeUnixNano": t, "exemplars": [
                        {"timeUnixNano": t, "asDouble": 2.0, "spanId": "0102030405060708", "traceId": "0102030405060708090a0b0c0d0e0f10",
                         "filteredAttributes": [{"key": "f", "value": {"stringValue": "v"}}]}]},
                ]}},
                {"name": "ud", "sum": {"aggregationTemporality": 1, "isMonotonic": false, "dataPoints": [
                    {"startTimeUnixNano": st, "timeUnixNano": t, "asDouble": 3.25}]}},
                {"name": "h", "histogram": {"aggregationTemporality": 2, "dataPoints": [
                    {"attributes": [{"key": "route", "value": {"stringValue": "/"}}], "startTimeUnixNano": st, "timeUnixNano": t,
                     "count": "3", "sum": 7.5, "bucketCounts": ["1", 2, "0"], "explicitBounds": [1, 2.5], "min": 0.5, "max": 4}]}},
                {"name": "hd", "histogram": {"aggregationTemporality": 1, "dataPoints": [
                    {"startTimeUnixNano": st, "timeUnixNano": t, "count": 2}]}},
                {"name": "e", "exponentialHistogram": {"aggregationTemporality": 2, "dataPoints": [
                    {"startTimeUnixNano": st, "timeUnixNano": t, "count": "4", "sum": 10, "scale": -2, "zeroCount": "1",
                     "positive": {"offset": -1, "bucketCounts": ["1", "2"]}, "negative": {"bucketCounts": [0]},
                     "zeroThreshold": 0.001, "min": 1, "max": 5, "flags": 0}]}},
                {"name": "s", "summary": {"dataPoints": [
                    {"startTimeUnixNano": st, "timeUnixNano": t, "count": "5", "sum": 12.5,
                     "quantileValues": [{"quantile": 0.5, "value": 2}, {"quantile": 1, "value": "Infinity"}]}]}},
                {"name": "nodata", "unit": "s"},
                {"name": "emptysum", "sum": {}},
            ]
        }]
    }]})
}

/// Applies `f` to every object of the tree (children first).
fn walk(v: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            for c in m.values_mut() {
                walk(c, f);
            }
            f(m);
        }
        Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
        _ => {}
    }
}

fn varied(v: &Value, mut f: impl FnMut(&mut Map<String, Value>)) -> Value {
    let mut v = v.clone();
    walk(&mut v, &mut f);
    v
}

const INT64: [&str; 8] = [
    "startTimeUnixNano",
    "timeUnixNano",
    "endTimeUnixNano",
    "observedTimeUnixNano",
    "count",
    "zeroCount",
    "asInt",
    "intValue",
];

fn ints_as_strings(m: &mut Map<String, Value>) {
    for k in INT64 {
        if let Some(n @ Value::Number(_)) = m.get(k) {
            if n.is_i64() || n.is_u64() {
                m.insert(k.into(), Value::String(n.to_string()));
            }
        }
    }
    if let Some(Value::Array(a)) = m.get_mut("bucketCounts") {
        for x in a {
            *x = Value::String(x.to_string().trim_matches('"').to_string());
        }
    }
}

fn strings_as_ints(m: &mut Map<String, Value>) {
    for k in INT64 {
        if let Some(Value::String(s)) = m.get(k) {
            if let Ok(n) = s.parse::<u64>() {
                m.insert(k.into(), json!(n));
            } else if let Ok(n) = s.parse::<i64>() {
                m.insert(k.into(), json!(n));
            }
        }
    }
}

fn nulls(m: &mut Map<String, Value>) {
    for k in [
        "schemaUrl",
        "resource",
        "scope",
        "description",
        "unit",
        "metadata",
        "exemplars",
        "flags",
        "min",
        "max",
        "sum",
        "gauge",
        "histogram",
        "summary",
        "aggregationTemporality",
        "isMonotonic",
        "startTimeUnixNano",
        "droppedAttributesCount",
        "entityRefs",
        "version",
        "keyStrindex",
        "attributes",
        "asInt",
        "asDouble",
        "stringValue",
        "intValue",
        "spans",
        "logRecords",
        "dataPoints",
        "scopeMetrics",
        "zeroThreshold",
        "positive",
        "bucketCounts",
    ] {
        m.entry(k).or_insert(Value::Null);
    }
}

fn unknown(m: &mut Map<String, Value>) {
    m.insert(
        "someFutureField".into(),
        json!({"nested": [1, -2, 1.5e300, "x\u{e9}", null, {"a": true}], "s": "é"}),
    );
}

fn snake(k: &str) -> String {
    let mut s = String::new();
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn snake_case(m: &mut Map<String, Value>) {
    let old = std::mem::take(m);
    *m = old.into_iter().map(|(k, v)| (snake(&k), v)).collect();
}

fn set(key: &'static str, to: Value) -> impl FnMut(&mut Map<String, Value>) {
    move |m| {
        if m.contains_key(key) {
            m.insert(key.into(), to.clone());
        }
    }
}

/// The resource blocks repeated with other pids and names (several resources per export).
fn several_resources(v: &Value) -> Value {
    let mut v = v.clone();
    let Value::Object(top) = &mut v else { panic!() };
    for list in top.values_mut() {
        let Value::Array(blocks) = list else { continue };
        let first = blocks.clone();
        for (i, pid) in [(1, json!(101)), (2, json!("202"))] {
            for b in &first {
                let mut b = b.clone();
                if let Some(Value::Array(attrs)) = b.pointer_mut("/resource/attributes") {
                    attrs.push(json!({"key": "process.pid", "value": {"intValue": pid}}));
                    attrs.push(
                        json!({"key": "service.name", "value": {"stringValue": format!("svc{i}")}}),
                    );
                }
                blocks.push(b);
            }
        }
    }
    v
}

#[test]
fn fixtures_and_their_variations_match_the_reference() {
    let mut n = 0;
    for (signal, v) in fixtures() {
        let variations = [
            v.clone(),
            varied(&v, ints_as_strings),
            varied(&v, strings_as_ints),
            varied(&v, nulls),
            varied(&v, unknown),
            varied(&v, snake_case),
            varied(&v, set("dataPoints", json!([]))),
            varied(&v, set("attributes", json!([]))),
            varied(&v, set("scopeMetrics", json!([]))),
            varied(&v, set("scopeSpans", json!([]))),
            varied(&v, set("resource", json!({}))),
            varied(&v, set("scope", json!({}))),
            varied(&v, set("aggregationTemporality", json!(1))),
            varied(&v, set("aggregationTemporality", json!(2))),
            varied(&v, set("aggregationTemporality", json!(0))),
            varied(&v, set("aggregationTemporality", json!(7))),
            varied(&v, set("isMonotonic", json!(false))),
            varied(
                &v,
                set("name", json!("quote\" back\\slash \u{e9} \u{1f600}")),
            ),
            varied(&v, set("key", json!("k\"\\\u{7f}"))),
            several_resources(&v),
            json!({}),
        ];
        for var in &variations {
            taken(signal, var);
            n += 1;
        }
    }
    assert_eq!(n, fixtures().len() * 21);
}

#[test]
fn escaped_text_matches_the_reference() {
    for (signal, v) in fixtures() {
        // Every non-ASCII and every ASCII letter of string values as \u escapes.
        let body = v.to_string();
        let mut esc = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        for c in body.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                esc.push(c);
            } else if in_str && (c == 'e' || !c.is_ascii()) && prev != '\\' {
                let mut b = [0u16; 2];
                for u in c.encode_utf16(&mut b) {
                    esc.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                esc.push(c);
            }
            prev = c;
        }
        assert!(
            check(signal, esc.as_bytes()),
            "left to the reference: {esc}"
        );
    }
}

/// The `i`-th node of the tree in pre-order.
fn nth(v: &mut Value, i: &mut usize) -> Option<*mut Value> {
    if *i == 0 {
        return Some(v as *mut Value);
    }
    *i -= 1;
    match v {
        Value::Object(m) => m.values_mut().find_map(|c| nth(c, i)),
        Value::Array(a) => a.iter_mut().find_map(|c| nth(c, i)),
        _ => None,
    }
}

fn size(v: &Value) -> usize {
    1 + match v {
        Value::Object(m) => m.values().map(size).sum(),
        Value::Array(a) => a.iter().map(size).sum(),
        _ => 0,
    }
}

const KEYS: [&str; 16] = [
    "asInt",
    "asDouble",
    "intValue",
    "doubleValue",
    "bytesValue",
    "stringValue",
    "keyStrindex",
    "sum",
    "gauge",
    "histogram",
    "exponentialHistogram",
    "summary",
    "spanId",
    "exemplars",
    "count",
    "timeUnixNano",
];

#[test]
fn mutated_bodies_are_taken_only_as_the_reference_takes_them() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let values = [
        json!(null),
        json!(0),
        json!(-1),
        json!(1.5),
        json!("x"),
        json!("12"),
        json!(true),
        json!([]),
        json!({}),
        json!({"stringValue": "s"}),
        json!([null]),
        json!({"asInt": "x"}),
        json!("0102"),
        json!(4294967296u64),
        json!(-9007199254740993i64),
        json!([{}]),
        json!({"values": []}),
        json!({"key": "k", "value": {"intValue": "1"}}),
    ];
    let (mut took, mut fine) = (0, 0);
    for (signal, v) in fixtures() {
        for _ in 0..60 {
            let mut m = v.clone();
            for _ in 0..1 + next() % 3 {
                let mut i = next() % size(&m);
                let node = nth(&mut m, &mut i).unwrap();
                // SAFETY: the pointer is to a node of `m`, used before `m` changes again.
                let node = unsafe { &mut *node };
                match (next() % 3, &mut *node) {
                    (0, Value::Object(o)) if !o.is_empty() => {
                        let k = o.keys().nth(next() % o.len()).unwrap().clone();
                        o.remove(&k);
                    }
                    (1, Value::Object(o)) => {
                        o.insert(
                            KEYS[next() % KEYS.len()].into(),
                            values[next() % values.len()].clone(),
                        );
                    }
                    _ => *node = values[next() % values.len()].clone(),
                }
            }
            let body = m.to_string();
            fine += reference(signal, body.as_bytes()).is_ok() as usize;
            took += check(signal, body.as_bytes()) as usize;
        }
    }
    // Of the bodies the reference takes, the fast reader should take most itself.
    eprintln!("fast reader took {took} of {fine} mutated bodies the reference takes");
    assert!(took * 2 > fine, "fast reader took {took} of {fine}");
}

#[test]
fn malformed_text_is_left_to_the_reference() {
    for (signal, v) in fixtures() {
        let body = v.to_string();
        // Cut anywhere: never valid.
        for cut in (0..body.len()).step_by(97) {
            assert!(!check(signal, &body.as_bytes()[..cut]));
        }
        let unknown = |x: &str| body.replacen('{', &format!("{{\"zz\": {x}, "), 2);
        for bad in [
            unknown("\"\\ud800\""),
            unknown("1e400"),
            unknown("[1,]"),
            unknown("\"\u{1}\""),
            body.replacen('{', "{\"zz\":1,\"zz\":2,", 1),
            format!("[{body}]"),
            format!("{body} x"),
            format!("  \n{body}\n "),
            body.replace("\"key\"", "\"key\":\"dup\",\"key\""),
        ] {
            let want = reference(signal, bad.as_bytes());
            let got = summarize(signal, bad.as_bytes());
            if let Some(got) = got {
                assert_eq!(Ok(got), want, "{bad}");
            }
        }
        // Invalid UTF-8 inside an unknown field's string.
        let mut raw = unknown("\"ab\"").into_bytes();
        let at = raw.windows(4).position(|w| w == b"\"ab\"").unwrap();
        raw[at + 1] = 0xff;
        assert!(reference(signal, &raw).is_err());
        assert_eq!(summarize(signal, &raw), None);
    }
}
