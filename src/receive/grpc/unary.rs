//! OTLP/gRPC metrics exports answered without tonic decoding them: the message read by
//! [`preread`](super::preread) is summarised off the wire by the connection's walker, as
//! OTLP/HTTP protobuf bodies are, and the answer is written here as tonic would write it
//! (HTTP 200, `application/grpc`, one length-prefixed message, `grpc-status` in the trailers).
//! A message the walker refuses goes to tonic, which says what is wrong with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

use super::*;
use crate::ledger::Signal;

/// One message, then the trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Unary {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A successful unary answer carrying `msg`.
fn ok_response(msg: &[u8]) -> hyper::Response<tonic::body::Body> {
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Unary {
        data: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    };
    let mut r = hyper::Response::new(tonic::body::Body::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

/// The uncompressed message of a body that holds exactly one.
fn one_message(body: &Bytes) -> Option<Bytes> {
    let (head, _) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0 && body.len() == 5 + len).then(|| body.slice(5..))
}

/// Answers a metrics export from the wire, as the service would (accounting, forwarding,
/// `--inject`); None when tonic must decode it. `wire`: the message's length as it arrived.
pub(super) async fn metrics_export(
    conn: &Arc<Conn>,
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: &Bytes,
    wire: Option<u64>,
) -> Option<hyper::Response<tonic::body::Body>> {
    let msg = one_message(body)?;
    let resources = conn.summarize_metrics_pb(&msg).ok()?;
    // Bytes as they arrived (compressed when they were), as the service path counts them.
    let bytes = wire.unwrap_or(msg.len() as u64);
    let inject =
        super::super::account_summary(shared, conn, Signal::Metrics, resources, bytes).await;
    if let Some(f) = &shared.forwarder {
        let mut h = headers.clone();
        h.retain_grpc_free();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        f.forward(shared, Signal::Metrics, &h, msg);
    }
    if let Some(d) = inject.delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = inject.status.filter(|c| !(200..300).contains(c)) {
        let st = Status::new(
            Inject::grpc_code(code),
            format!("otel-forkcheck receive --inject status={code}"),
        );
        return Some(st.into_http());
    }
    let resp = ExportMetricsServiceResponse {
        partial_success: inject.partial.map(|n| ExportMetricsPartialSuccess {
            rejected_data_points: n,
            error_message: partial_msg(n),
        }),
    };
    Some(ok_response(&resp.encode_to_vec()))
}
