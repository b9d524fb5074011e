//! The ceilings for scripts/bench-receive.sh, on the receiver's own stack (tokio with 2 worker
//! threads as `receive` uses, connections served one task each as the receiver serves them):
//! - `http`: hyper-util's auto builder with the receiver's HTTP/1.1 and HTTP/2 settings; reads
//!   each request body in full and answers 200 with an empty `application/x-protobuf` body: no
//!   decoding, no attribution, no accounting.
//! - `grpc`: tonic's OTLP metrics, trace and logs services on hyper's HTTP/2 server, as the
//!   receiver serves gRPC; each Export returns an empty response at once (tonic decodes the
//!   message, as any tonic server does; nothing else is done with it).
//!
//! `bench_noop_server [ADDR] [http|grpc]` (default 127.0.0.1:0 http); prints `LISTENING <addr>`
//! when ready.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codegen::Service;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}

#[derive(Clone)]
struct Noop;

#[tonic::async_trait]
impl MetricsService for Noop {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Noop {
    async fn export(
        &self,
        _: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Noop {
    async fn export(
        &self,
        _: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let grpc = std::env::args().nth(2).as_deref() == Some("grpc");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let routes = tonic::service::Routes::new(MetricsServiceServer::new(Noop))
        .add_service(TraceServiceServer::new(Noop))
        .add_service(LogsServiceServer::new(Noop));
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("LISTENING {}", l.local_addr().unwrap());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let routes = routes.clone();
            tokio::spawn(async move {
                if grpc {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let mut routes = routes.clone();
                        async move { routes.call(req).await }
                    });
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    b.timer(TokioTimer::new())
                        .max_concurrent_streams(otel_forkcheck::receive::grpc::MAX_STREAMS);
                    let _ = b.serve_connection(TokioIo::new(s), svc).await;
                } else {
                    let b =
                        otel_forkcheck::receive::http::builder(std::time::Duration::from_secs(30));
                    let _ = b
                        .serve_connection(TokioIo::new(s), hyper::service::service_fn(handle))
                        .await;
                }
            });
        }
    });
}
