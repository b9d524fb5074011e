//! Where a request's time goes inside the receiver, without the network: each step on the
//! recorded SDK body (fixtures/otlp/sdk/metrics.{pb,json}), sent as one pid's consecutive
//! exports (times moving forward), in nanoseconds per body (the fastest of 5 runs).
//!
//! The last steps send from 8 and from 64 connections in turn, each its own pid with its own
//! replay state, into one ledger: as the receiver does under that load, where one connection's
//! state is cold again by its next export. Network noise left out, they compare two builds
//! where `scripts/bench-receive.sh`'s rounds vary too much to.
//!
//! `cargo run --release --example bench_decode [ITERATIONS [STEP]]` (default 20000, every step).

#[path = "bench_load/body.rs"]
#[allow(dead_code)]
mod body;

use std::hint::black_box;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_forkcheck::ledger::{Export, Holder, Ledger, Proto, Signal};
use otel_forkcheck::otlp::decode::{self, Encoding};
use otel_forkcheck::otlp::metrics::{summarize_metrics, NameCache};
use prost::Message;

/// The best of 5 rounds, in ns per call: `round` makes its calls with the counter it is given
/// and returns its ns per call.
fn best_of_5(what: &str, mut round: impl FnMut(&mut u64) -> f64) {
    // A second argument runs only the steps whose name has it (e.g. for valgrind).
    if let Some(only) = std::env::args().nth(2) {
        if !what.contains(&only) {
            return;
        }
    }
    let mut k = 1u64;
    let best = (0..5).map(|_| round(&mut k)).fold(f64::MAX, f64::min);
    println!("{what:<58} {best:>9.0} ns");
}

fn time(what: &str, n: usize, mut f: impl FnMut(u64)) {
    best_of_5(what, |k| {
        let t = Instant::now();
        for _ in 0..n {
            f(*k);
            *k += 1;
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
}

/// As [`time`], with `scratch` written over before each call (outside the timing): what the
/// receiver's caches hold of a connection's state by its next export under load, where the
/// kernel's, hyper's and the other connections' data pass through them in between. `arrive`
/// then makes the call's body (outside the timing too): it has just come off the socket, so
/// it is in the cache, as in the receiver.
fn time_cold(
    what: &str,
    n: usize,
    scratch: &mut [u8],
    mut arrive: impl FnMut(u64),
    mut f: impl FnMut(u64),
) {
    best_of_5(what, |k| {
        let mut spent = 0u128;
        for _ in 0..n {
            for j in (0..scratch.len()).step_by(64) {
                scratch[j] = scratch[j].wrapping_add(1);
            }
            black_box(&mut *scratch);
            arrive(*k);
            let t = Instant::now();
            f(*k);
            spent += t.elapsed().as_nanos();
            *k += 1;
        }
        spent as f64 / n as f64
    });
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/otlp/sdk");
    let pid = std::process::id() as i64;
    let pb = body::template(
        body::Kind::Pb,
        "metrics",
        &std::fs::read(format!("{dir}/metrics.pb")).unwrap(),
        pid,
    );
    let js = body::template(
        body::Kind::Json,
        "metrics",
        &std::fs::read(format!("{dir}/metrics.json")).unwrap(),
        pid,
    );
    println!(
        "metrics.pb {} bytes, metrics.json {} bytes, {} points",
        pb.bytes.len(),
        js.bytes.len(),
        pb.items
    );
    let sole = Some((pid as i32, &[][..]));
    let mut buf = pb.bytes.clone();
    let mut jbuf = js.bytes.clone();

    // The receiver hands each summary back once accounted (its point lists are reused).
    let mut cache = NameCache::default();
    time("protobuf walker, sole sender (the HTTP path)", n, |k| {
        pb.stamp(&mut buf, k);
        let r = black_box(summarize_metrics(&buf, &mut cache, sole).unwrap());
        cache.recycle(r);
    });
    let mut cache = NameCache::default();
    time("protobuf walker, no sole sender", n, |k| {
        pb.stamp(&mut buf, k);
        black_box(summarize_metrics(&buf, &mut cache, None).unwrap());
    });
    time("prost decode", n, |k| {
        pb.stamp(&mut buf, k);
        black_box(ExportMetricsServiceRequest::decode(&buf[..]).unwrap());
    });
    time("prost decode + summarize (the gRPC path)", n, |k| {
        pb.stamp(&mut buf, k);
        let m = ExportMetricsServiceRequest::decode(&buf[..]).unwrap();
        black_box(decode::summarize_metrics(&m));
    });
    js.stamp(&mut jbuf, 1);
    let fast = otel_forkcheck::otlp::jsonfast::summarize(Signal::Metrics, &jbuf);
    assert!(
        fast.is_some(),
        "the JSON reader left the SDK body to the reference"
    );
    time("JSON read in full into summaries", n, |k| {
        js.stamp(&mut jbuf, k);
        black_box(otel_forkcheck::otlp::jsonfast::summarize_json(Signal::Metrics, &jbuf).unwrap());
    });
    let mut replay = otel_forkcheck::otlp::jsonfast::Replay::default();
    let mut cache = NameCache::default();
    time("JSON replay of the last body (the JSON path)", n, |k| {
        js.stamp(&mut jbuf, k);
        let r = otel_forkcheck::otlp::jsonfast::summarize_json_on(
            Signal::Metrics,
            &jbuf,
            &mut replay,
            cache.spare_lists(),
        )
        .unwrap();
        cache.recycle(black_box(r));
    });
    time("JSON read in full + kept (no body replays)", n, |k| {
        js.stamp(&mut jbuf, k);
        let s = otel_forkcheck::otlp::jsonfast::summarize(Signal::Metrics, &jbuf).unwrap();
        black_box(otel_forkcheck::otlp::jsonfast::Last::keep(&jbuf, &s).unwrap());
    });
    time(
        "JSON Value + prost + summarize (the reference)",
        n / 4,
        |k| {
            js.stamp(&mut jbuf, k);
            let m = decode::decode(Signal::Metrics, Encoding::Json, &jbuf).unwrap();
            black_box(m.summarize());
        },
    );
    time("JSON serde_json::from_slice alone", n / 4, |k| {
        js.stamp(&mut jbuf, k);
        black_box(serde_json::from_slice::<ExportMetricsServiceRequest>(&jbuf).unwrap());
    });
    time("JSON serde_json::Value alone", n / 4, |k| {
        js.stamp(&mut jbuf, k);
        black_box(serde_json::from_slice::<serde_json::Value>(&jbuf).unwrap());
    });

    let file = std::fs::read(format!("{dir}/metrics.pb")).unwrap();
    let jfile = std::fs::read(format!("{dir}/metrics.json")).unwrap();
    let mut one = Conns::new(1, &file, &jfile, false);
    time("protobuf walker + ledger record", n, |k| one.export(k));
    for conns in [8, 64] {
        for json in [false, true] {
            let mut c = Conns::new(conns, &file, &jfile, json);
            let what = match json {
                false => format!("protobuf walker + ledger record, {conns} connections in turn"),
                true => format!("JSON replay + ledger record, {conns} connections in turn"),
            };
            time(&what, n, |k| c.export(k));
        }
    }
    // bench-receive's arrangement: one process (the load generator) holds every connection
    // and each connection's resource names a pid of its own, as a worker whose resource was
    // made in the master before the fork names the master's. The series cache treats such a
    // pid as the holder's own once a block was accounted to it (the receiver confirms it);
    // the baseline row leaves it unconfirmed, as before that change.
    for confirm in [false, true] {
        let mut c = Conns::new(64, &file, &jfile, false);
        c.one_holder(confirm);
        let what = match confirm {
            false => "protobuf + ledger, 64 conns, 1 holder, pids not confirmed",
            true => "protobuf + ledger, 64 conns, 1 holder, pids confirmed",
        };
        time(what, n, |k| c.export(k));
    }
    // The same, with the caches cold: 1 MiB (this machine's L2) written between exports.
    let mut scratch = vec![0u8; 1 << 20];
    for json in [false, true] {
        let c = Conns::new(64, &file, &jfile, json);
        let what = match json {
            false => "protobuf walker + ledger record, 64 conns, caches cold",
            true => "JSON replay + ledger record, 64 conns, caches cold",
        };
        let c = std::cell::RefCell::new(c);
        let arrive = |k| c.borrow_mut().arrive(k);
        time_cold(what, n / 4, &mut scratch, arrive, |k| {
            c.borrow_mut().process(k)
        });
    }
}

/// Connections, each its own pid and body with its own replay state, exporting in turn into
/// one ledger.
struct Conns {
    ledger: Ledger,
    each: Vec<Conn>,
    json: bool,
}

struct Conn {
    body: body::Template,
    buf: Vec<u8>,
    holder: Holder,
    cache: NameCache,
    replay: otel_forkcheck::otlp::jsonfast::Replay,
}

impl Conns {
    fn new(n: usize, pb: &[u8], json_file: &[u8], json: bool) -> Conns {
        let mut ledger = Ledger::new(0);
        let each = (0..n)
            .map(|i| {
                let pid = 100_000 + i as i64;
                let (kind, file) = match json {
                    true => (body::Kind::Json, json_file),
                    false => (body::Kind::Pb, pb),
                };
                let body = body::template(kind, "metrics", file, pid);
                let holder = Holder {
                    pid: pid as i32,
                    ..Default::default()
                };
                let id = i as u64 + 1;
                ledger.open_conn(id, Proto::Http, format!("127.0.0.1:{id}"), 0);
                ledger.set_holders(id, Some(id), std::slice::from_ref(&holder), None);
                Conn {
                    buf: body.bytes.clone(),
                    body,
                    holder,
                    cache: NameCache::default(),
                    replay: Default::default(),
                }
            })
            .collect();
        Conns { ledger, each, json }
    }

    /// Every connection held by one process whose pid none of the resources names (see
    /// `main`); `confirm`: as the receiver does once a block of a resource pid was accounted
    /// to that holder.
    fn one_holder(&mut self, confirm: bool) {
        let holder = Holder {
            pid: 99,
            ..Default::default()
        };
        for (i, c) in self.each.iter_mut().enumerate() {
            let id = i as u64 + 1;
            self.ledger
                .set_holders(id, Some(id), std::slice::from_ref(&holder), None);
            c.holder = holder.clone();
            if confirm {
                // The names cache notes its sender at the first body.
                summarize_metrics(&c.buf, &mut c.cache, Some((99, &[][..]))).unwrap();
                c.cache.confirm(99, 100_000 + i as i64);
            }
        }
    }

    fn export(&mut self, k: u64) {
        self.arrive(k);
        self.process(k);
    }

    /// Export `k`'s body, read through once (as the socket's copy into hyper's buffer does).
    fn arrive(&mut self, k: u64) {
        let n = self.each.len();
        let c = &mut self.each[k as usize % n];
        c.body.stamp(&mut c.buf, k);
        black_box(c.buf.iter().fold(0u8, |a, b| a ^ b));
    }

    fn process(&mut self, k: u64) {
        let i = k as usize % self.each.len();
        let c = &mut self.each[i];
        let resources = match self.json {
            false => {
                let sole = Some((c.holder.pid, &[][..]));
                summarize_metrics(&c.buf, &mut c.cache, sole).unwrap()
            }
            true => otel_forkcheck::otlp::jsonfast::summarize_json_on(
                Signal::Metrics,
                &c.buf,
                &mut c.replay,
                c.cache.spare_lists(),
            )
            .unwrap(),
        };
        let ex = Export {
            at_ms: k,
            conn: i as u64 + 1,
            proto: Proto::Http,
            signal: Some(Signal::Metrics),
            bytes: c.buf.len() as u64,
            resources,
        };
        black_box(self.ledger.record(&ex, std::slice::from_ref(&c.holder)));
        c.cache.recycle(ex.resources);
    }
}
