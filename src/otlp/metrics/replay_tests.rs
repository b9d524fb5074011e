//! The replay of a connection's last body (skeleton.rs) gives what a full walk gives, export
//! after export: value changes, changes of shape, corrupted bytes and changes of sender, on the
//! real SDK's body and on a body with every kind of metric.

use super::value_tests::every_kind;
use super::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sdk() -> ExportMetricsServiceRequest {
    let b = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/otlp/sdk/metrics.pb"
    ))
    .unwrap();
    ExportMetricsServiceRequest::decode(b.as_slice()).unwrap()
}

/// Calls `f` on every point as (start, time, value as f64 bits holder, count).
fn each_point(
    m: &mut ExportMetricsServiceRequest,
    mut f: impl FnMut(&mut u64, &mut u64, Option<&mut f64>, Option<&mut u64>),
) {
    for mt in m
        .resource_metrics
        .iter_mut()
        .flat_map(|r| &mut r.scope_metrics)
        .flat_map(|s| &mut s.metrics)
    {
        match &mut mt.data {
            Some(Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| {
                let v = match &mut p.value {
                    Some(number_data_point::Value::AsDouble(d)) => Some(d),
                    _ => None,
                };
                f(&mut p.start_time_unix_nano, &mut p.time_unix_nano, v, None)
            }),
            Some(Data::Gauge(g)) => g.data_points.iter_mut().for_each(|p| {
                f(
                    &mut p.start_time_unix_nano,
                    &mut p.time_unix_nano,
                    None,
                    None,
                )
            }),
            Some(Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| {
                f(
                    &mut p.start_time_unix_nano,
                    &mut p.time_unix_nano,
                    p.sum.as_mut(),
                    Some(&mut p.count),
                )
            }),
            Some(Data::ExponentialHistogram(h)) => h.data_points.iter_mut().for_each(|p| {
                f(
                    &mut p.start_time_unix_nano,
                    &mut p.time_unix_nano,
                    p.sum.as_mut(),
                    Some(&mut p.count),
                )
            }),
            Some(Data::Summary(s)) => s.data_points.iter_mut().for_each(|p| {
                f(
                    &mut p.start_time_unix_nano,
                    &mut p.time_unix_nano,
                    Some(&mut p.sum),
                    Some(&mut p.count),
                )
            }),
            None => {}
        }
    }
}

/// The next export of the same process: later times, grown counts and sums.
fn advance(m: &mut ExportMetricsServiceRequest, rng: &mut Rng) {
    let dt = 1 + rng.below(5_000_000_000);
    each_point(m, |_, t, v, c| {
        *t += dt;
        if let Some(v) = v {
            *v += (rng.below(1000) as f64) / 8.0;
        }
        if let Some(c) = c {
            *c += rng.below(3);
        }
    });
}

/// A change a value cannot make: another point, another series, another kind of value, ...
fn reshape(m: &mut ExportMetricsServiceRequest, rng: &mut Rng) {
    let metrics: Vec<_> = m
        .resource_metrics
        .iter_mut()
        .flat_map(|r| &mut r.scope_metrics)
        .flat_map(|s| &mut s.metrics)
        .collect();
    let n = metrics.len() as u64;
    let Some(mt) = metrics.into_iter().nth(rng.below(n.max(1)) as usize) else {
        return;
    };
    let choice = rng.below(8);
    match (&mut mt.data, choice) {
        (Some(Data::Sum(s)), 0) => {
            // as_int <-> as_double
            for p in &mut s.data_points {
                p.value = match p.value {
                    Some(number_data_point::Value::AsInt(i)) => {
                        Some(number_data_point::Value::AsDouble(i as f64))
                    }
                    Some(number_data_point::Value::AsDouble(d)) => {
                        Some(number_data_point::Value::AsInt(d as i64))
                    }
                    None => Some(number_data_point::Value::AsInt(1)),
                }
            }
        }
        (Some(Data::Sum(s)), 1) => {
            s.aggregation_temporality = 3 - s.aggregation_temporality.clamp(1, 2);
        }
        (Some(Data::Sum(s)), 2) => {
            s.data_points.pop();
        }
        (Some(Data::Histogram(h)), 0) => {
            // a new series
            if let Some(mut p) = h.data_points.last().cloned() {
                p.attributes.push(KeyValue {
                    key: "new".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(rng.below(9) as i64)),
                    }),
                    ..Default::default()
                });
                h.data_points.push(p);
            }
        }
        (Some(Data::Histogram(h)), 1) if h.data_points.len() > 1 => {
            h.data_points.swap(0, 1);
        }
        (Some(Data::Histogram(h)), 2) => {
            for p in &mut h.data_points {
                p.sum = None;
            }
        }
        (_, 3) => {
            // A restart: a later start (a value change: replayed).
            each_point(m, |s, _, _, _| *s += 1);
        }
        (_, 4) => {
            // The same length, other bytes: another attribute value.
            if let Some(kv) = m.resource_metrics[0]
                .resource
                .as_mut()
                .and_then(|r| r.attributes.last_mut())
            {
                kv.key.make_ascii_uppercase();
            }
        }
        (_, 5) => {
            each_point(m, |_, _, v, _| {
                if let Some(v) = v {
                    *v = f64::NAN;
                }
            });
        }
        _ => {
            mt.name.push('x');
        }
    }
}

/// Feeds the same bodies to a connection's cache (`replaying`) and to one that walks every
/// body in full, and checks every answer is the same; returns how many bodies were replayed.
fn compare(mut m: ExportMetricsServiceRequest, pid: i32, seed: u64, steps: usize) -> usize {
    let mut rng = Rng(seed);
    let mut replaying = NameCache::default();
    let mut full = NameCache::default();
    let mut replayed = 0;
    for step in 0..steps {
        advance(&mut m, &mut rng);
        if rng.below(8) == 0 {
            reshape(&mut m, &mut rng);
        }
        let mut b = m.encode_to_vec();
        if rng.below(10) == 0 {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next() as u8;
        }
        let sender: SoleSender = match rng.below(12) {
            0 => None,
            1 => Some((pid + 1, &[])),
            _ => Some((pid, &[])),
        };
        let got = summarize_metrics(&b, &mut replaying, sender);
        full.skeleton = None;
        let want = summarize_metrics(&b, &mut full, sender);
        assert_eq!(got, want, "step {step} (seed {seed})");
        if replaying
            .skeleton
            .as_ref()
            .is_some_and(|s| s.body() != b.as_slice())
        {
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn replays_give_what_full_walks_give_on_the_sdk_body() {
    let m = sdk();
    let pid = crate::otlp::decode::identity(m.resource_metrics[0].resource.as_ref())
        .process_pid
        .unwrap() as i32;
    let mut replayed = 0;
    for seed in 1..=40u64 {
        replayed += compare(m.clone(), pid, seed * 7919, 60);
    }
    // Most exports change only values: most are replayed.
    assert!(replayed > 40 * 60 / 3, "{replayed} of {} replayed", 40 * 60);
}

#[test]
fn replays_give_what_full_walks_give_on_every_kind() {
    let mut replayed = 0;
    for seed in 1..=40u64 {
        replayed += compare(every_kind(42, 5_000), 42, seed * 104_729, 60);
    }
    assert!(replayed > 40 * 60 / 3, "{replayed} of {} replayed", 40 * 60);
}

#[test]
fn only_values_change_in_a_replay() {
    let m = sdk();
    let b = m.encode_to_vec();
    let mut c = NameCache::default();
    let first = summarize_metrics(&b, &mut c, None).unwrap();
    // A changed byte outside the values (a resource attribute's) is walked in full.
    let at = b.windows(6).position(|w| w == b"python").unwrap();
    let mut other = b.clone();
    other[at] = b'P';
    let o = summarize_metrics(&other, &mut c, None).unwrap();
    assert_eq!(c.skeleton.as_ref().unwrap().body(), other.as_slice());
    assert_eq!(o[0].items, first[0].items);
    // A longer body is walked in full.
    let mut longer = m.clone();
    longer.resource_metrics[0].scope_metrics[0].metrics[0].name += "x";
    let lb = longer.encode_to_vec();
    summarize_metrics(&lb, &mut c, None).unwrap();
    assert_eq!(c.skeleton.as_ref().unwrap().body(), lb.as_slice());
}
