//! The ceiling for scripts/bench-receive.sh: an HTTP server on the receiver's own stack (tokio
//! with 2 worker threads as `receive` uses, hyper-util's auto builder with the same HTTP/1.1
//! and HTTP/2 settings) that reads each request body in full and answers 200 with an empty
//! `application/x-protobuf` body: no decoding, no attribution, no accounting.
//!
//! `bench_noop_server [ADDR]` (default 127.0.0.1:0); prints `LISTENING <addr>` when ready.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
            tokio::spawn(async move {
                let b = otel_forkcheck::receive::http::builder(std::time::Duration::from_secs(30));
                let _ = b
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
}
