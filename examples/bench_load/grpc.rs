//! One OTLP/gRPC client connection (HTTP/2, prior knowledge), one export at a time as the
//! SDK's exporters send them. A reply counts as ok when its grpc-status is 0.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub struct Client {
    addr: String,
    uri: hyper::Uri,
    send: Option<http2::SendRequest<Full<Bytes>>>,
}

/// The service path of a signal's Export method.
pub fn path(signal: &str) -> String {
    let svc = match signal {
        "metrics" => "metrics.v1.MetricsService",
        "traces" => "trace.v1.TraceService",
        _ => "logs.v1.LogsService",
    };
    format!("/opentelemetry.proto.collector.{svc}/Export")
}

/// The 5-byte gRPC message header (uncompressed) for a message of `len` bytes.
pub fn frame_header(len: usize) -> [u8; 5] {
    let n = (len as u32).to_be_bytes();
    [0, n[0], n[1], n[2], n[3]]
}

impl Client {
    pub fn new(addr: &str, signal: &str) -> Client {
        Client {
            addr: addr.to_string(),
            uri: format!("http://{addr}{}", path(signal))
                .parse()
                .expect("uri"),
            send: None,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let s = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        self.send = Some(send);
        Ok(())
    }

    /// Sends one framed message; Ok(grpc-status).
    pub async fn send(&mut self, framed: Bytes) -> Result<i32, String> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let send = self.send.as_mut().expect("connected");
        let req = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(framed))
            .map_err(|e| e.to_string())?;
        let r = async {
            send.ready().await.map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let got = body.collect().await.map_err(|e| e.to_string())?;
            let status = got
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            Ok(status)
        }
        .await;
        if r.is_err() {
            self.send = None;
        }
        r
    }
}
