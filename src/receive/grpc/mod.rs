//! OTLP/gRPC: the metrics, trace and logs collector services (gzip accepted), served per
//! connection over HTTP/2 so each request knows the connection it came on.
//!
//! Bodies tonic cannot decode never reach the services: a wrapper around the routes sees the
//! error status tonic answers and counts the body as malformed against the connection.
//!
//! Before tonic sees a request, its message is read here ([`preread`]): the length prefix says
//! how much memory to reserve from the receiver's budget (waiting briefly, else
//! RESOURCE_EXHAUSTED with a RetryInfo detail), the message must arrive by the body deadline
//! (else DEADLINE_EXCEEDED), and a gzip message is inflated here within the budget, so tonic
//! gets one uncompressed message and an unfinished or inflating message never holds memory
//! that is not counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpStream;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::inject::Inject;
use super::limits::{self, Closed, InflateError, Reservation, Short};
use super::{account_decoded, account_malformed, Conn, Shared};
use crate::otlp::decode::Request as Decoded;

mod preread;
mod unary;
use preread::*;

/// Marks a request that reached a service (so the wrapper does not count it as malformed).
#[derive(Clone)]
struct Reached(Arc<AtomicBool>);

/// The message's length as it arrived (compressed when it was): what the ledger counts as
/// bytes, as for OTLP/HTTP bodies.
#[derive(Clone, Copy)]
struct WireLen(u64);

#[derive(Clone)]
pub struct Otlp {
    shared: Arc<Shared>,
}

impl Otlp {
    async fn export(
        &self,
        ext: &hyper::http::Extensions,
        metadata: &tonic::metadata::MetadataMap,
        decoded: Decoded,
    ) -> Result<Option<i64>, Status> {
        if let Some(r) = ext.get::<Reached>() {
            r.0.store(true, Ordering::Relaxed);
        }
        let Some(conn) = ext.get::<Arc<Conn>>().cloned() else {
            return Err(Status::internal("connection unknown"));
        };
        let signal = decoded.signal();
        let bytes = ext
            .get::<WireLen>()
            .map_or(decoded.encoded_len() as u64, |w| w.0);
        let inject = account_decoded(&self.shared, &conn, &decoded, bytes).await;
        if let Some(f) = &self.shared.forwarder {
            let mut headers = metadata.clone().into_headers();
            headers.retain_grpc_free();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-protobuf"),
            );
            f.forward(
                &self.shared,
                signal,
                &headers,
                bytes::Bytes::from(decoded.encode_protobuf()),
            );
        }
        if let Some(d) = inject.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(code) = inject.status.filter(|c| !(200..300).contains(c)) {
            return Err(Status::new(
                Inject::grpc_code(code),
                format!("otel-forkcheck receive --inject status={code}"),
            ));
        }
        Ok(inject.partial)
    }
}

/// Drops gRPC's own headers before a request is forwarded as OTLP/HTTP.
trait RetainGrpcFree {
    fn retain_grpc_free(&mut self);
}

impl RetainGrpcFree for hyper::HeaderMap {
    fn retain_grpc_free(&mut self) {
        let drop: Vec<_> = self
            .keys()
            .filter(|k| {
                let k = k.as_str();
                k.starts_with("grpc-") || k == "te" || k == "content-type" || k == "user-agent"
            })
            .cloned()
            .collect();
        for k in drop {
            self.remove(k);
        }
    }
}

fn partial_msg(n: i64) -> String {
    format!("otel-forkcheck receive --inject partial={n}: {n} item(s) rejected on purpose")
}

impl Decoded {
    fn encoded_len(&self) -> usize {
        match self {
            Decoded::Metrics(m) => m.encoded_len(),
            Decoded::Traces(m) => m.encoded_len(),
            Decoded::Logs(m) => m.encoded_len(),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let (meta, ext, msg) = request.into_parts();
        let partial = Otlp::export(self, &ext, &meta, Decoded::Metrics(msg)).await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: partial.map(|n| ExportMetricsPartialSuccess {
                rejected_data_points: n,
                error_message: partial_msg(n),
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (meta, ext, msg) = request.into_parts();
        let partial = Otlp::export(self, &ext, &meta, Decoded::Traces(msg)).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: partial.map(|n| ExportTracePartialSuccess {
                rejected_spans: n,
                error_message: partial_msg(n),
            }),
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let (meta, ext, msg) = request.into_parts();
        let partial = Otlp::export(self, &ext, &meta, Decoded::Logs(msg)).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: partial.map(|n| ExportLogsPartialSuccess {
                rejected_log_records: n,
                error_message: partial_msg(n),
            }),
        }))
    }
}

/// The three services, sharing one state.
pub fn routes(shared: Arc<Shared>) -> Routes {
    let max = shared.opts.max_decompressed;
    let svc = Otlp { shared };
    Routes::new(
        MetricsServiceServer::new(svc.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max),
    )
    .add_service(
        TraceServiceServer::new(svc.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max),
    )
    .add_service(
        LogsServiceServer::new(svc)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(max),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one gRPC request of `conn`; a request tonic refuses before it reaches a service
/// (undecodable, too large, unknown method) is counted as malformed.
pub async fn call(
    routes: &Routes,
    conn: &Arc<Conn>,
    shared: &Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<tonic::body::Body> {
    let reached = Arc::new(AtomicBool::new(false));
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(conn.clone());
    parts.extensions.insert(Reached(reached.clone()));
    // Unknown methods are answered by tonic (UNIMPLEMENTED) without their body being read.
    let known = SERVICES.iter().any(|p| parts.uri.path() == *p);
    let (body, _held) = if known {
        match preread(conn, shared, &mut parts.headers, body).await {
            Ok((body, held, wire)) => {
                if let Some(n) = wire {
                    parts.extensions.insert(WireLen(n));
                }
                (body, held)
            }
            Err(refusal) => return refusal.answer(shared, conn).await,
        }
    } else {
        (Bytes::new(), Vec::new())
    };
    // Metrics, the bulk of OTLP traffic, are summarised off the wire like OTLP/HTTP protobuf.
    if parts.uri.path() == SERVICES[0] {
        let wire = parts.extensions.get::<WireLen>().map(|w| w.0);
        if let Some(r) = unary::metrics_export(conn, shared, &parts.headers, &body, wire).await {
            return r;
        }
    }
    let req = hyper::Request::from_parts(parts, Full::new(body));
    let mut routes = routes.clone();
    let resp = match routes.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if !reached.load(Ordering::Relaxed) {
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        if let Some(code) = code.filter(|c| *c != 0) {
            let msg = resp
                .headers()
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            let reason = format!(
                "gRPC request refused ({:?}): {msg}",
                tonic::Code::from_i32(code)
            );
            let status = match tonic::Code::from_i32(code) {
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => 413,
                tonic::Code::Unimplemented => 404,
                _ => 400,
            };
            account_malformed(shared, conn, &reason, status).await;
        }
    }
    resp
}

/// Is this request gRPC (`application/grpc`, `application/grpc+proto`, ...)?
pub fn is_grpc<B>(req: &hyper::Request<B>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/grpc"))
}

/// Serves one accepted connection (HTTP/2 only, as gRPC requires) until it ends or a bound
/// closes it.
pub async fn serve_conn(
    stream: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    routes: Routes,
) -> Closed {
    let (c, sh) = (conn.clone(), shared.clone());
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (routes, conn, shared) = (routes.clone(), c.clone(), sh.clone());
        async move {
            let _busy = conn.life.begin();
            Ok::<_, std::convert::Infallible>(call(&routes, &conn, &shared, req).await)
        }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    let served = b.serve_connection(TokioIo::new(stream), svc);
    limits::supervise(&conn.life, &shared.opts, served, |c| c.graceful_shutdown()).await
}

/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 256;

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%20b%"), "a b%");
        assert_eq!(super::percent_decode("100%25"), "100%");
    }
}
