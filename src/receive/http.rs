//! OTLP/HTTP: `POST /v1/{metrics,traces,logs}`, protobuf or JSON, optionally gzip.
//!
//! Answers as the OTLP specification says: the response message in the request's encoding;
//! 400 for an undecodable body, 413 over the size limit (compressed or decompressed), 415 for a
//! content type or encoding OTLP does not define, 404 for another path, 405 for another method.
//! Error bodies are a `google.rpc.Status` in the request's encoding. A body the memory budget
//! has no room for now gets 503 with `Retry-After` (see [`super::limits`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpStream;

use super::limits::{self, Closed, InflateError, Reservation, Short};
use super::{account_malformed, account_summary, Conn, Shared};
use crate::ledger::Signal;
use crate::otlp::decode::{self, BodyError, Encoding};

/// `google.rpc.Status`, the body of OTLP error responses.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

type Resp = Response<Full<Bytes>>;

/// Serves one accepted connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it ends or
/// a bound closes it.
pub async fn serve_conn(stream: TcpStream, conn: Arc<Conn>, shared: Arc<Shared>) -> Closed {
    let b = builder(shared.opts.read_timeout);
    let (c, sh) = (conn.clone(), shared.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (shared, conn) = (sh.clone(), c.clone());
        async move {
            let _busy = conn.life.begin();
            Ok::<_, Infallible>(handle(shared.clone(), conn.clone(), req).await)
        }
    });
    let served = b.serve_connection(TokioIo::new(stream), svc);
    limits::supervise(&conn.life, &shared.opts, served, |c| c.graceful_shutdown()).await
}

/// HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one connection, as OTLP/HTTP clients and,
/// on a port serving both, gRPC clients speak.
pub fn builder(
    header_read_timeout: std::time::Duration,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(super::grpc::MAX_STREAMS);
    b
}

/// Serves one accepted connection on a port that takes both protocols: gRPC requests
/// (content-type `application/grpc*`) go to the gRPC services, the rest to the OTLP/HTTP routes.
pub async fn serve_conn_both(
    stream: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    routes: tonic::service::Routes,
) -> Closed {
    use crate::ledger::Proto;
    use http_body_util::Either;
    let b = builder(shared.opts.read_timeout);
    let (c, sh) = (conn.clone(), shared.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, conn, routes) = (sh.clone(), c.clone(), routes.clone());
        async move {
            let _busy = conn.life.begin();
            let resp = if super::grpc::is_grpc(&req) {
                conn.carries(&shared, Proto::Grpc);
                super::grpc::call(&routes, &conn, &shared, req)
                    .await
                    .map(Either::Right)
            } else {
                conn.carries(&shared, Proto::Http);
                handle(shared.clone(), conn.clone(), req)
                    .await
                    .map(Either::Left)
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let served = b.serve_connection(TokioIo::new(stream), svc);
    limits::supervise(&conn.life, &shared.opts, served, |c| c.graceful_shutdown()).await
}

fn signal_of(path: &str) -> Option<Signal> {
    Signal::ALL
        .into_iter()
        .find(|s| path == s.path() || path.strip_suffix('/') == Some(s.path()))
}

fn status_body(enc: Encoding, status: StatusCode, message: &str) -> Resp {
    // gRPC codes as the OTLP spec pairs them with HTTP statuses.
    let code = match status.as_u16() {
        400 | 413 => 3, // INVALID_ARGUMENT
        404 => 5,
        415 => 3,
        429 => 8,
        503 => 14,
        _ => 13,
    };
    let st = RpcStatus {
        code,
        message: message.to_string(),
    };
    let body = match enc {
        Encoding::Protobuf => st.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&st).unwrap_or_default(),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(enc.content_type()));
    r
}

/// The success (or injected partial success) response message of `signal` in `enc`.
pub fn success_body(signal: Signal, enc: Encoding, partial: Option<i64>) -> Vec<u8> {
    let msg = partial.map(|n| {
        format!("otel-forkcheck receive --inject partial={n}: {n} item(s) rejected on purpose")
    });
    macro_rules! resp {
        ($resp:ident, $partial:ident, $field:ident) => {{
            let r = $resp {
                partial_success: msg.map(|m| $partial {
                    $field: partial.unwrap_or(0),
                    error_message: m,
                }),
            };
            match enc {
                Encoding::Protobuf => r.encode_to_vec(),
                // An absent partial_success is left out, not sent as null.
                Encoding::Json if r.partial_success.is_none() => b"{}".to_vec(),
                Encoding::Json => serde_json::to_vec(&r).unwrap_or_else(|_| b"{}".to_vec()),
            }
        }};
    }
    match signal {
        Signal::Metrics => resp!(
            ExportMetricsServiceResponse,
            ExportMetricsPartialSuccess,
            rejected_data_points
        ),
        Signal::Traces => resp!(
            ExportTraceServiceResponse,
            ExportTracePartialSuccess,
            rejected_spans
        ),
        Signal::Logs => resp!(
            ExportLogsServiceResponse,
            ExportLogsPartialSuccess,
            rejected_log_records
        ),
    }
}

async fn handle(shared: Arc<Shared>, conn: Arc<Conn>, req: Request<Incoming>) -> Resp {
    let Some(signal) = signal_of(req.uri().path()) else {
        return status_body(
            Encoding::Protobuf,
            StatusCode::NOT_FOUND,
            "OTLP/HTTP paths are /v1/metrics, /v1/traces and /v1/logs",
        );
    };
    let enc_hint = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_content_type);
    if req.method() != Method::POST {
        let mut r = status_body(
            enc_hint.unwrap_or(Encoding::Protobuf),
            StatusCode::METHOD_NOT_ALLOWED,
            "OTLP/HTTP takes POST",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(enc) = enc_hint else {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let reason = format!(
            "unsupported Content-Type {ct:?}: use application/x-protobuf or application/json"
        );
        account_malformed(&shared, &conn, &reason, 415).await;
        return status_body(
            Encoding::Protobuf,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &reason,
        );
    };
    let gzip = match req
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" || e == "x-gzip" => true,
        Some(e) => {
            let reason = BodyError::UnsupportedEncoding(e).to_string();
            account_malformed(&shared, &conn, &reason, 415).await;
            return status_body(enc, StatusCode::UNSUPPORTED_MEDIA_TYPE, &reason);
        }
    };
    let max = shared.opts.max_body;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        let reason = format!(
            "body of {} bytes is over the {max}-byte limit",
            declared.unwrap_or(0)
        );
        account_malformed(&shared, &conn, &reason, 413).await;
        return close(status_body(enc, StatusCode::PAYLOAD_TOO_LARGE, &reason));
    }
    // Kept only when they are forwarded.
    let headers = shared.forwarder.is_some().then(|| req.headers().clone());
    // Memory before anything is read: a first slice of what the body declares; more as it
    // arrives.
    let first = declared
        .map_or(UNDECLARED_FIRST, |n| n as usize)
        .min(max)
        .min(limits::FIRST_SLICE);
    let mut held = match shared.reserve(first).await {
        Ok(r) => r,
        Err(short) => return refuse(&shared, &conn, enc, short, first).await,
    };
    let deadline = conn.life.body_deadline(&shared.opts);
    let ceiling = declared.map_or(max, |n| (n as usize).min(max));
    let body = match read_body(req.into_body(), max, ceiling, deadline, &mut held).await {
        Ok(b) => b,
        Err(BodyRead::TimedOut) => {
            let reason = format!(
                "body not received within {}",
                humantime::format_duration(shared.opts.read_timeout)
            );
            account_malformed(&shared, &conn, &reason, 408).await;
            return close(status_body(enc, StatusCode::REQUEST_TIMEOUT, &reason));
        }
        Err(BodyRead::TooLarge) => {
            let reason = format!("body over the {max}-byte limit");
            account_malformed(&shared, &conn, &reason, 413).await;
            return close(status_body(enc, StatusCode::PAYLOAD_TOO_LARGE, &reason));
        }
        Err(BodyRead::Budget(short)) => return refuse(&shared, &conn, enc, short, max).await,
        Err(BodyRead::Cut(e)) => {
            // The client went away mid-body: nobody to answer, but it is counted.
            let reason = format!("body cut off: {e}");
            account_malformed(&shared, &conn, &reason, 400).await;
            return close(status_body(enc, StatusCode::BAD_REQUEST, &reason));
        }
    };
    let wire_len = body.len() as u64;
    // The inflated body's memory stays held until the request is answered.
    let (inflated, _inflated_held) = if gzip {
        let cap = shared.opts.max_decompressed;
        let first = limits::inflate_estimate(body.len(), cap);
        let mut inflate_res = match shared.reserve(first).await {
            Ok(r) => r,
            Err(short) => return refuse(&shared, &conn, enc, short, first).await,
        };
        let done = tokio::task::spawn_blocking({
            let body = body.clone();
            move || {
                let r = limits::gunzip_budgeted(&body, 0, cap, &mut inflate_res);
                (r, inflate_res)
            }
        })
        .await;
        let inflated = match done {
            Ok((Ok(b), r)) => Ok((Bytes::from(b), Some(r))),
            Ok((Err(InflateError::Budget(short)), _)) => {
                return refuse(&shared, &conn, enc, short, cap).await
            }
            Ok((Err(InflateError::TooLarge(cap)), _)) => Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TooLarge(cap).to_string(),
            )),
            Ok((Err(InflateError::Bad(e)), _)) => {
                Err((StatusCode::BAD_REQUEST, BodyError::BadGzip(e).to_string()))
            }
            Err(_) => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "gzip decoder failed".to_string(),
            )),
        };
        match inflated {
            Ok(x) => x,
            Err((status, reason)) => {
                account_malformed(&shared, &conn, &reason, status.as_u16()).await;
                return status_body(enc, status, &reason);
            }
        }
    } else {
        (body.clone(), None)
    };
    // Protobuf metrics (the bulk of OTLP traffic) are summarised off the wire bytes and JSON
    // off the text, without building the message; protobuf traces and logs are decoded.
    let summary = match (signal, enc) {
        (Signal::Metrics, Encoding::Protobuf) => conn
            .summarize_metrics_pb(&inflated)
            .map_err(BodyError::Undecodable),
        (_, Encoding::Json) => conn.summarize_json(signal, &inflated),
        (_, Encoding::Protobuf) => decode::decode(signal, enc, &inflated).map(|d| d.summarize()),
    };
    let resources = match summary {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            account_malformed(&shared, &conn, &reason, 400).await;
            return status_body(enc, StatusCode::BAD_REQUEST, &reason);
        }
    };
    let inject = account_summary(&shared, &conn, signal, resources, wire_len).await;
    if let (Some(f), Some(headers)) = (&shared.forwarder, &headers) {
        f.forward(&shared, signal, headers, body);
    }
    if let Some(d) = inject.delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = inject.status.filter(|c| !(200..300).contains(c)) {
        let st = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut r = status_body(
            enc,
            st,
            &format!("otel-forkcheck receive --inject status={code}"),
        );
        if code == 429 || code == 503 {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(success_body(
        signal,
        enc,
        inject.partial,
    ))));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(enc.content_type()));
    r
}

/// Reserved for a body that declares no length, before it is read; it grows (without
/// waiting) as the body arrives.
const UNDECLARED_FIRST: usize = 64 << 10;

/// Why a body could not be read.
enum BodyRead {
    TimedOut,
    TooLarge,
    Budget(Short),
    Cut(String),
}

/// Reads a body of at most `max` bytes by `deadline`, its memory held in `res` (grown as bytes
/// arrive, up to `ceiling` at once, without waiting). A body that arrives in one frame (the
/// common case: hyper hands over a slice of its read buffer) is kept as it is, not copied;
/// more frames are gathered into one buffer.
async fn read_body(
    mut body: Incoming,
    max: usize,
    ceiling: usize,
    deadline: tokio::time::Instant,
    res: &mut Reservation,
) -> Result<Bytes, BodyRead> {
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyRead::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyRead::Cut(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(buf.len(), Bytes::len);
        let need = have + data.len();
        if need > max {
            return Err(BodyRead::TooLarge);
        }
        if first.is_none() && buf.capacity() == 0 {
            res.cover(need).map_err(BodyRead::Budget)?;
            first = Some(data);
            continue;
        }
        res.fit(&mut buf, need, ceiling).map_err(BodyRead::Budget)?;
        if let Some(f) = first.take() {
            buf.extend_from_slice(&f);
        }
        buf.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buf)))
}

/// No memory for this request now (503 with Retry-After, counted), or ever (413, malformed).
async fn refuse(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    enc: Encoding,
    short: Short,
    wanted: usize,
) -> Resp {
    match short {
        Short::Busy => {
            shared.count(|c| c.budget_refused += 1);
            let mut r = status_body(
                enc,
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver's memory for request bodies is in use: retry later",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(limits::RETRY_AFTER_SECS));
            close(r)
        }
        Short::OverBudget => {
            let reason = format!(
                "body needs {wanted} bytes, over the receiver's {}-byte memory budget",
                shared.budget.total()
            );
            account_malformed(shared, conn, &reason, 413).await;
            close(status_body(enc, StatusCode::PAYLOAD_TOO_LARGE, &reason))
        }
    }
}

/// Ask the client to close: the rest of its body (if any) is not read.
fn close(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(signal_of("/v1/metrics"), Some(Signal::Metrics));
        assert_eq!(signal_of("/v1/traces/"), Some(Signal::Traces));
        assert_eq!(signal_of("/v1/logs"), Some(Signal::Logs));
        assert_eq!(signal_of("/v1/profiles"), None);
        assert_eq!(signal_of("/"), None);
    }

    #[test]
    fn partial_success_bodies() {
        let b = success_body(Signal::Traces, Encoding::Protobuf, Some(3));
        let r = ExportTraceServiceResponse::decode(b.as_slice()).unwrap();
        assert_eq!(r.partial_success.unwrap().rejected_spans, 3);
        assert!(success_body(Signal::Logs, Encoding::Protobuf, None).is_empty());
        let j = success_body(Signal::Metrics, Encoding::Json, None);
        assert_eq!(j, b"{}");
    }
}
