//! `--forward` (to another receiver standing in for a collector) and `--inject`.

use std::time::Duration;

use otel_forkcheck::receive::{self, Inject, Options};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/otlp/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn http_only() -> Options {
    Options {
        grpc: None,
        ..Options::ephemeral()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_encoding_kept_and_counts_failures() {
    let upstream = receive::serve(http_only()).await.unwrap();
    let mut inject = Inject::default();
    inject.add("partial=2").unwrap();
    let front = receive::serve(Options {
        forward: Some(format!("http://{}", upstream.http_addr.unwrap())),
        inject,
        ..http_only()
    })
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let r = c
        .post(format!("http://{}/v1/traces", front.http_addr.unwrap()))
        .header("content-type", "application/json")
        .header("x-tenant", "t1")
        .body(fixture("trace.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        v["partialSuccess"]["rejectedSpans"]
            .as_i64()
            .or_else(|| v["partialSuccess"]["rejectedSpans"]
                .as_str()
                .and_then(|s| s.parse().ok())),
        Some(2),
        "{v}"
    );
    for _ in 0..100 {
        if upstream.ledger().totals.traces.items == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.ledger().totals.traces.items, 2);
    assert_eq!(front.ledger().forward.unwrap().sent, 1);
    // upstream gone: failures are counted, local accounting goes on
    upstream.shutdown(Duration::from_millis(100)).await;
    let r = c
        .post(format!("http://{}/v1/traces", front.http_addr.unwrap()))
        .header("content-type", "application/json")
        .body(fixture("trace.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..200 {
        if front.ledger().forward.unwrap().failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l = front.ledger();
    assert_eq!(l.forward.as_ref().unwrap().failed, 1, "{:?}", l.forward);
    assert_eq!(l.totals.traces.items, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_status_and_delay() {
    let mut inject = Inject::default();
    inject.add("status=503,delay=300ms").unwrap();
    let r = receive::serve(Options {
        inject,
        ..http_only()
    })
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/logs", r.http_addr.unwrap()))
        .header("content-type", "application/json")
        .body(fixture("logs.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // it did arrive, so it is counted
    assert_eq!(r.ledger().totals.logs.items, 2);
}

/// OTLP/gRPC metrics (answered off the wire, without tonic's decode): `--inject partial` and
/// `status`, `--forward` as OTLP/HTTP, and a message that does not decode, on the SDK's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metrics_inject_forward_and_refuse() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use prost::Message;
    let upstream = receive::serve(http_only()).await.unwrap();
    let mut inject = Inject::default();
    inject.add("partial=3").unwrap();
    let grpc_only = |inject, forward| Options {
        http: None,
        inject,
        forward,
        ..Options::ephemeral()
    };
    let front = receive::serve(grpc_only(
        inject,
        Some(format!("http://{}", upstream.http_addr.unwrap())),
    ))
    .await
    .unwrap();
    let msg = ExportMetricsServiceRequest::decode(fixture("sdk/metrics.pb").as_slice()).unwrap();
    let mut c = MetricsServiceClient::connect(format!("http://{}", front.grpc_addr.unwrap()))
        .await
        .unwrap();
    for _ in 0..3 {
        let r = c.export(msg.clone()).await.unwrap().into_inner();
        assert_eq!(r.partial_success.unwrap().rejected_data_points, 3);
    }
    let l = front.ledger();
    assert_eq!((l.totals.metrics.items, l.malformed_total), (66, 0));
    for _ in 0..100 {
        if upstream.ledger().totals.metrics.items == 66 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.ledger().totals.metrics.items, 66, "forwarded");

    let mut inject = Inject::default();
    inject.add("status=503").unwrap();
    let refusing = receive::serve(grpc_only(inject, None)).await.unwrap();
    let mut c = MetricsServiceClient::connect(format!("http://{}", refusing.grpc_addr.unwrap()))
        .await
        .unwrap();
    let e = c.export(msg.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // Counted all the same (the export arrived; the answer was the injected one).
    assert_eq!(refusing.ledger().totals.metrics.items, 22);
    // A message that is not an export: refused by tonic, counted as malformed.
    let mut bad = msg.clone();
    bad.resource_metrics.clear();
    let mut raw = bad.encode_to_vec();
    raw.extend_from_slice(&[0x0a, 0xff, 0xff]);
    let ch =
        tonic::transport::Channel::from_shared(format!("http://{}", refusing.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    );
    let r: Result<tonic::Response<Raw>, _> =
        g.unary(tonic::Request::new(Raw(raw)), path, RawCodec).await;
    // tonic's answer to a message it cannot decode.
    assert_eq!(r.unwrap_err().code(), tonic::Code::Internal);
    assert_eq!(refusing.ledger().malformed_total, 1);
}

/// Bytes sent as a gRPC message as they are.
#[derive(Debug)]
struct Raw(Vec<u8>);

#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Raw;
    type Decode = Raw;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

struct RawCoder;

impl tonic::codec::Encoder for RawCoder {
    type Item = Raw;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Raw,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Raw;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Raw>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(Raw(src.copy_to_bytes(src.remaining()).to_vec())))
    }
}
