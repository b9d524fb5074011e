//! `--forward URL`: pass every accepted export on to a real collector over OTLP/HTTP.
//!
//! Forwarding never delays or loses local accounting: the export is counted first, then handed
//! to a background task. Failures (and requests dropped because too many were in flight) are
//! counted in the ledger's `forward` stats.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::HeaderMap;
use tokio::sync::Semaphore;

use super::Shared;
use crate::ledger::Signal;

/// Requests in flight to the upstream at most; beyond it new ones are dropped (and counted).
const MAX_IN_FLIGHT: usize = 256;

/// Headers never passed on (hop-by-hop, or recomputed by the client).
const SKIP: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

pub struct Forwarder {
    client: reqwest::Client,
    base: String,
    slots: Arc<Semaphore>,
}

impl Forwarder {
    /// `url` is the collector's OTLP/HTTP base (`http://host:4318`); a trailing `/v1/<signal>`
    /// is dropped so either form works.
    pub fn new(url: &str) -> Result<Forwarder, String> {
        let mut base = url.trim().trim_end_matches('/').to_string();
        for s in Signal::ALL {
            if let Some(b) = base.strip_suffix(s.path()) {
                base = b.to_string();
            }
        }
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| format!("--forward {url:?}: not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("--forward {url:?}: use an http:// or https:// URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // Bodies are passed through as received, gzip included.
            .no_gzip()
            .build()
            .map_err(|e| format!("--forward: cannot build the HTTP client: {e}"))?;
        Ok(Forwarder {
            client,
            base,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends `body` (as received: same Content-Type and Content-Encoding) in the background.
    pub fn forward(&self, shared: &Arc<Shared>, signal: Signal, headers: &HeaderMap, body: Bytes) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            shared.with_ledger(|l| {
                if let Some(f) = l.forward.as_mut() {
                    f.dropped += 1;
                }
            });
            return;
        };
        let mut out = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            if !SKIP.contains(&k.as_str()) {
                out.append(k.clone(), v.clone());
            }
        }
        let req = self
            .client
            .post(format!("{}{}", self.base, signal.path()))
            .headers(out)
            .body(body);
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("upstream answered {}", r.status())),
                Err(e) => Err(format!("upstream unreachable: {e}")),
            };
            drop(permit);
            shared.with_ledger(|l| {
                if let Some(f) = l.forward.as_mut() {
                    match result {
                        Ok(()) => f.sent += 1,
                        Err(e) => {
                            f.failed += 1;
                            f.last_error = Some(e);
                        }
                    }
                }
            });
        });
    }
}
