use super::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

fn fixture() -> ExportMetricsServiceRequest {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/otlp/metrics.json"
    ))
    .unwrap();
    let crate::otlp::decode::Request::Metrics(m) = crate::otlp::decode::decode(
        crate::otlp::signal::Signal::Metrics,
        crate::otlp::decode::Encoding::Json,
        text.as_bytes(),
    )
    .unwrap() else {
        panic!("not metrics")
    };
    m
}

#[test]
fn same_summary_as_the_decoded_message() {
    let m = fixture();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let mut cache = NameCache::default();
    let got = summarize_metrics(&m.encode_to_vec(), &mut cache, None).unwrap();
    assert_eq!(got, want);
    assert!(!want[0].cumulative.is_empty());
    // From the cache the second time: same answer.
    let again = summarize_metrics(&m.encode_to_vec(), &mut cache, None).unwrap();
    assert_eq!(again, want);
}

#[test]
fn unchanged_starts_from_a_sole_sender_are_passed_on_once() {
    let m = fixture();
    let b = m.encode_to_vec();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let n = want[0].cumulative.len();
    let pid = want[0].identity.process_pid.unwrap_or(1) as i32;
    let me = |p: i32| -> SoleSender { Some((p, &[])) };
    let mut c = NameCache::default();
    let first = summarize_metrics(&b, &mut c, me(pid)).unwrap();
    assert_eq!(first, want);
    // Same sender, same starts: counted, not listed again.
    let again = summarize_metrics(&b, &mut c, me(pid)).unwrap();
    assert_eq!(again[0].items, want[0].items);
    assert!(again[0].cumulative.is_empty());
    // Shared connection (after a fork): everything, every time.
    // Shared: no sole sender.
    let shared: SoleSender = None;
    for _ in 0..2 {
        let s = summarize_metrics(&b, &mut c, shared).unwrap();
        assert_eq!(s[0].cumulative.len(), n);
    }
    // A different sole sender: everything again, once.
    let other = summarize_metrics(&b, &mut c, me(pid + 1)).unwrap();
    if want[0].identity.process_pid.is_none() {
        assert_eq!(other[0].cumulative.len(), n);
    } else {
        // The resource names a pid that is not the holder's: never skipped.
        assert_eq!(other[0].cumulative.len(), n);
        let o2 = summarize_metrics(&b, &mut c, me(pid + 1)).unwrap();
        assert_eq!(o2[0].cumulative.len(), n);
    }
    // A moved start (a reset) is passed on.
    let mut m2 = m.clone();
    bump_starts(&mut m2);
    let moved = summarize_metrics(&m2.encode_to_vec(), &mut c, me(pid)).unwrap();
    assert_eq!(moved[0].cumulative.len(), n);
}

#[test]
fn a_foreign_resource_pid_is_treated_as_the_senders_own_once_confirmed() {
    let m = fixture();
    let b = m.encode_to_vec();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let n = want[0].cumulative.len();
    let resource_pid = want[0]
        .identity
        .process_pid
        .expect("the fixture names a pid");
    // A worker that sends the master's pid (a resource made before the fork).
    let worker = resource_pid as i32 + 7;
    let me = |p: i32| -> SoleSender { Some((p, &[])) };
    let mut c = NameCache::default();
    for _ in 0..2 {
        let s = summarize_metrics(&b, &mut c, me(worker)).unwrap();
        assert_eq!(
            s[0].cumulative.len(),
            n,
            "not confirmed: every start, every time"
        );
    }
    // Confirmed for another sender than the one the starts are kept for: nothing changes.
    c.confirm(worker + 1, resource_pid);
    assert_eq!(
        summarize_metrics(&b, &mut c, me(worker)).unwrap()[0]
            .cumulative
            .len(),
        n
    );
    c.confirm(worker, resource_pid);
    let first = summarize_metrics(&b, &mut c, me(worker)).unwrap();
    assert_eq!(
        first, want,
        "the first block after the confirmation passes every start"
    );
    let again = summarize_metrics(&b, &mut c, me(worker)).unwrap();
    assert_eq!(again[0].items, want[0].items);
    assert!(
        again[0].cumulative.is_empty(),
        "then unchanged starts are skipped"
    );
    // Another holder: the confirmation is gone with the starts.
    let other = summarize_metrics(&b, &mut c, me(worker + 1)).unwrap();
    assert_eq!(other[0].cumulative.len(), n);
    let back = summarize_metrics(&b, &mut c, me(worker)).unwrap();
    assert_eq!(back[0].cumulative.len(), n);
    let back2 = summarize_metrics(&b, &mut c, me(worker)).unwrap();
    assert_eq!(
        back2[0].cumulative.len(),
        n,
        "not confirmed again for the new sender"
    );
}

fn bump_starts(m: &mut ExportMetricsServiceRequest) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    for rm in &mut m.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for mt in &mut sm.metrics {
                match &mut mt.data {
                    Some(Data::Sum(s)) => s
                        .data_points
                        .iter_mut()
                        .for_each(|p| p.start_time_unix_nano += 1),
                    Some(Data::Histogram(s)) => s
                        .data_points
                        .iter_mut()
                        .for_each(|p| p.start_time_unix_nano += 1),
                    Some(Data::ExponentialHistogram(s)) => s
                        .data_points
                        .iter_mut()
                        .for_each(|p| p.start_time_unix_nano += 1),
                    Some(Data::Summary(s)) => s
                        .data_points
                        .iter_mut()
                        .for_each(|p| p.start_time_unix_nano += 1),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn bad_bodies_are_errors() {
    let b = fixture().encode_to_vec();
    let mut c = NameCache::default();
    for cut in [1, b.len() / 3, b.len() / 2, b.len() - 1] {
        assert!(
            summarize_metrics(&b[..cut], &mut c, None).is_err(),
            "cut at {cut}"
        );
    }
    assert!(summarize_metrics(&[0xff; 64], &mut c, None).is_err());
    // Field 1 with the wrong wire type (varint).
    assert!(summarize_metrics(&[0x08, 0x01], &mut c, None).is_err());
    assert!(summarize_metrics(&[], &mut c, None).unwrap().is_empty());
    // Never stricter than prost: every corruption prost still decodes, the walker takes.
    let (mut both_ok, mut only_walker) = (0, 0);
    for i in 0..b.len() {
        for x in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
            let mut c2 = b.clone();
            c2[i] = x;
            let walker = summarize_metrics(&c2, &mut NameCache::default(), None);
            match ExportMetricsServiceRequest::decode(c2.as_slice()) {
                Ok(_) => {
                    assert!(walker.is_ok(), "byte {i} = {x:#x}: {walker:?}");
                    both_ok += 1;
                }
                Err(_) if walker.is_ok() => only_walker += 1,
                Err(_) => {}
            }
        }
    }
    assert!(both_ok > 0);
    // Fields it skips unread (exemplars, bucket counts) may hide what prost would refuse.
    assert!(
        only_walker < b.len(),
        "{only_walker} corruptions only prost refused"
    );
}

/// A bench-like export: one cumulative sum of `points` series (`dup`: the first series
/// twice, with different starts), resource process.pid = `pid`.
fn sum_of(points: usize, pid: i64, start: u64, dup: bool) -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let point = |i: usize, start: u64| NumberDataPoint {
        attributes: vec![kv("i", any_value::Value::IntValue(i as i64))],
        start_time_unix_nano: start,
        time_unix_nano: start + 10,
        value: Some(number_data_point::Value::AsInt(i as i64)),
        ..Default::default()
    };
    let mut data_points: Vec<_> = (0..points).map(|i| point(i, start)).collect();
    if dup {
        data_points.push(point(0, start + 5));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", any_value::Value::StringValue("t".into())),
                    kv("process.pid", any_value::Value::IntValue(pid)),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "reqs".into(),
                    data: Some(metric::Data::Sum(Sum {
                        aggregation_temporality: 2,
                        is_monotonic: true,
                        data_points,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn sole(pid: i32) -> SoleSender<'static> {
    Some((pid, &[]))
}

#[test]
fn unchanged_metrics_are_counted_without_lookups() {
    let m = sum_of(100, 42, 1_000, false);
    let b = m.encode_to_vec();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let mut c = NameCache::default();
    assert_eq!(summarize_metrics(&b, &mut c, sole(42)).unwrap(), want);
    assert_eq!(c.remembered(), 1, "passed on: remembered");
    for _ in 0..3 {
        // An exact repeat: counted, nothing passed on (neither starts nor values).
        let again = summarize_metrics(&b, &mut c, sole(42)).unwrap();
        assert_eq!(again[0].items, 100);
        assert!(again[0].cumulative.is_empty());
        assert!(again[0].metrics.is_empty());
        assert_eq!(c.remembered(), 1);
    }
    // One series reset (a moved start): every value, but only that start is passed on, then
    // quiet again.
    let mut m2 = m.clone();
    if let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) =
        &mut m2.resource_metrics[0].scope_metrics[0].metrics[0].data
    {
        s.data_points[37].start_time_unix_nano += 1;
    }
    let b2 = m2.encode_to_vec();
    let moved = summarize_metrics(&b2, &mut c, sole(42)).unwrap();
    assert_eq!(moved[0].items, 100);
    assert_eq!(moved[0].cumulative.len(), 1);
    assert_eq!(moved[0].cumulative[0].start_time_unix_nano, 1_001);
    assert_eq!(moved[0].metrics[0].points.len(), 100);
    for _ in 0..2 {
        let q = summarize_metrics(&b2, &mut c, sole(42)).unwrap();
        assert_eq!((q[0].items, q[0].cumulative.len()), (100, 0));
        assert!(q[0].metrics.is_empty());
    }
    // A new series: passed on.
    let m3 = sum_of(101, 42, 1_000, false);
    let n = summarize_metrics(&m3.encode_to_vec(), &mut c, sole(42)).unwrap();
    assert_eq!(n[0].items, 101);
    // Series 37 moved back to 1_000, series 100 is new.
    assert_eq!(n[0].cumulative.len(), 2);
    // Another sender on the connection: everything again.
    let o = summarize_metrics(&b, &mut c, sole(43)).unwrap();
    assert_eq!(o, want);
    let o2 = summarize_metrics(&b, &mut c, sole(43)).unwrap();
    assert_eq!(
        o2, want,
        "process.pid 42 is not the holder's: never skipped"
    );
}

#[test]
fn a_series_twice_with_two_starts_is_passed_on_once() {
    let m = sum_of(3, 7, 500, true);
    let b = m.encode_to_vec();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let mut c = NameCache::default();
    assert_eq!(summarize_metrics(&b, &mut c, sole(7)).unwrap(), want);
    // The same body again is an exact repeat: nothing passed on.
    let again = summarize_metrics(&b, &mut c, sole(7)).unwrap();
    assert_eq!(again[0].items, 4);
    assert!(again[0].cumulative.is_empty() && again[0].metrics.is_empty());
    for t in 1..4 {
        // Later exports: every value; each start is where it was (the series' starts are
        // remembered per position in the metric's list, so two starts of one series do not
        // take turns): none again.
        let mut later = m.clone();
        if let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) =
            &mut later.resource_metrics[0].scope_metrics[0].metrics[0].data
        {
            s.data_points.iter_mut().for_each(|p| p.time_unix_nano += t);
        }
        let next = summarize_metrics(&later.encode_to_vec(), &mut c, sole(7)).unwrap();
        assert_eq!(next[0].items, 4);
        assert!(next[0].cumulative.is_empty());
        assert_eq!(next[0].metrics[0].points.len(), 4);
    }
}

#[test]
fn a_refused_body_forgets_the_starts_it_noted() {
    // Two resource blocks: the first is noted before the second turns out corrupt.
    let mut m = sum_of(10, 9, 100, false);
    let mut other = sum_of(5, 9, 100, false).resource_metrics.remove(0);
    other.scope_metrics[0].metrics[0].name = "other".into();
    m.resource_metrics.push(other);
    let b = m.encode_to_vec();
    let want = crate::otlp::decode::summarize_metrics(&m);
    let mut c = NameCache::default();
    assert!(summarize_metrics(&b[..b.len() - 3], &mut c, sole(9)).is_err());
    // Nothing of the refused body reached the ledger: all of it is passed on now.
    assert_eq!(summarize_metrics(&b, &mut c, sole(9)).unwrap(), want);
    let quiet = summarize_metrics(&b, &mut c, sole(9)).unwrap();
    assert!(quiet.iter().all(|r| r.cumulative.is_empty()));
    assert!(summarize_metrics(&[0xff; 8], &mut c, sole(9)).is_err());
    assert_eq!(summarize_metrics(&b, &mut c, sole(9)).unwrap(), want);
}

#[test]
fn a_warm_cache_refuses_and_counts_as_a_cold_one() {
    let m = sum_of(20, 5, 100, false);
    let b = m.encode_to_vec();
    let mut warm = NameCache::default();
    for _ in 0..2 {
        summarize_metrics(&b, &mut warm, sole(5)).unwrap();
    }
    assert_eq!(warm.remembered(), 1);
    let items = |r: &[ResourceSummary]| r.iter().map(|r| r.items).sum::<u64>();
    let mut cuts: Vec<Vec<u8>> = (0..b.len()).map(|n| b[..n].to_vec()).collect();
    for i in 0..b.len() {
        for x in [0x00u8, 0x01, 0x02, 0x09, 0x11, 0x7f, 0x80, 0xff] {
            let mut c2 = b.clone();
            c2[i] = x;
            cuts.push(c2);
        }
    }
    for body in &cuts {
        let cold = summarize_metrics(body, &mut NameCache::default(), sole(5));
        let hot = summarize_metrics(body, &mut warm.clone(), sole(5));
        assert_eq!(cold.is_ok(), hot.is_ok(), "{body:?}");
        if let (Ok(cold), Ok(hot)) = (&cold, &hot) {
            assert_eq!(items(cold), items(hot));
            if let Ok(p) = ExportMetricsServiceRequest::decode(body.as_slice()) {
                let want = crate::otlp::decode::summarize_metrics(&p);
                assert_eq!(items(hot), items(&want));
                // Nothing skipped (no sole sender): the same summary as prost's, but for
                // the internal keys of non-canonically encoded attributes (the walker
                // hashes them as sent, prost's side as re-encoded).
                let all = summarize_metrics(body, &mut NameCache::default(), None).unwrap();
                let unkeyed = |r: &[ResourceSummary]| {
                    r.iter()
                        .map(|r| {
                            let s: Vec<_> = r
                                .cumulative
                                .iter()
                                .map(|s| (s.series.clone(), s.start_time_unix_nano))
                                .collect();
                            (r.identity.clone(), r.items, s)
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(unkeyed(&all), unkeyed(&want));
                if body.len() == b.len() && body[..] == b[..] {
                    assert_eq!(all, want);
                }
            }
        }
    }
}
