//! Refusing and pre-reading gRPC messages before tonic sees them: a message is read only while
//! the memory budget holds it, unfinished ones are bounded in time and size, and a refusal
//! carries the retry hint OTLP exporters honour.

use super::*;

/// The export methods, whose messages are read here before tonic decodes them.
pub(super) const SERVICES: [&str; 3] = [
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
];

/// A request answered before tonic sees it.
pub(super) struct Refusal {
    status: Status,
    /// Counted as malformed, with the HTTP-like status the ledger records.
    malformed: Option<u16>,
    /// Refused for memory (counted in the limits, not as malformed).
    budget: bool,
}

impl Refusal {
    fn malformed(code: tonic::Code, reason: String, like: u16) -> Refusal {
        Refusal {
            status: Status::new(code, reason),
            malformed: Some(like),
            budget: false,
        }
    }

    /// No memory for the message: now (RESOURCE_EXHAUSTED with RetryInfo, which exporters
    /// retry) or ever (RESOURCE_EXHAUSTED without, counted as malformed).
    fn short(shared: &Shared, short: Short, wanted: usize) -> Refusal {
        match short {
            Short::Busy => Refusal {
                status: Status::with_details(
                    tonic::Code::ResourceExhausted,
                    "the receiver's memory for request bodies is in use: retry later",
                    retry_info_details(
                        tonic::Code::ResourceExhausted,
                        "the receiver's memory for request bodies is in use: retry later",
                        limits::RETRY_AFTER_SECS,
                    ),
                ),
                malformed: None,
                budget: true,
            },
            Short::OverBudget => Refusal::malformed(
                tonic::Code::ResourceExhausted,
                format!(
                    "message needs {wanted} bytes, over the receiver's {}-byte memory budget",
                    shared.budget.total()
                ),
                413,
            ),
        }
    }

    pub(super) async fn answer(
        self,
        shared: &Arc<Shared>,
        conn: &Arc<Conn>,
    ) -> hyper::Response<tonic::body::Body> {
        if self.budget {
            shared.count(|c| c.budget_refused += 1);
        }
        if let Some(like) = self.malformed {
            let reason = format!(
                "gRPC request refused ({:?}): {}",
                self.status.code(),
                self.status.message()
            );
            account_malformed(shared, conn, &reason, like).await;
        }
        self.status.into_http()
    }
}

/// `google.rpc.Status` with details, `google.protobuf.Any`, `google.rpc.RetryInfo` and
/// `google.protobuf.Duration`: what `grpc-status-details-bin` carries.
#[derive(Clone, PartialEq, Message)]
pub(super) struct StatusDetails {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<PbAny>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct PbAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<PbDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct PbDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The status details that say "retry after `secs` seconds" (OTLP/gRPC: RESOURCE_EXHAUSTED is
/// retryable only with RetryInfo).
pub(super) fn retry_info_details(code: tonic::Code, message: &str, secs: u64) -> Bytes {
    let info = RetryInfo {
        retry_delay: Some(PbDuration {
            seconds: secs as i64,
            nanos: 0,
        }),
    };
    Bytes::from(
        StatusDetails {
            code: code as i32,
            message: message.to_string(),
            details: vec![PbAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        }
        .encode_to_vec(),
    )
}

/// Reads one gRPC request body (a length-prefixed message) within the memory budget and the
/// body deadline, inflating a gzip message. Returns the body to hand to tonic (uncompressed),
/// the memory it holds, which must live until tonic is done with it, and the message's length
/// as it arrived (compressed when it was; None without a complete prefix).
pub(super) async fn preread(
    conn: &Arc<Conn>,
    shared: &Arc<Shared>,
    headers: &mut hyper::HeaderMap,
    mut body: hyper::body::Incoming,
) -> Result<(Bytes, Vec<Reservation>, Option<u64>), Refusal> {
    let opts = &shared.opts;
    let deadline = conn.life.body_deadline(opts);
    let mut buf: Vec<u8> = Vec::new();
    // (compressed flag, message length, its reservation)
    let mut msg: Option<(bool, usize, Reservation)> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Refusal::malformed(
                    tonic::Code::DeadlineExceeded,
                    format!(
                        "message not received within {} ({} bytes arrived)",
                        humantime::format_duration(opts.read_timeout),
                        buf.len()
                    ),
                    408,
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Refusal::malformed(
                    tonic::Code::Cancelled,
                    format!("body cut off: {e}"),
                    400,
                ))
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut msg {
            Some((_, len, res)) => {
                let need = buf.len() + data.len();
                if need > 5 + *len {
                    return Err(Refusal::malformed(
                        tonic::Code::InvalidArgument,
                        format!("more data than the {len}-byte message its prefix declares"),
                        400,
                    ));
                }
                // Memory for bytes that arrived, not for what the prefix announces.
                res.fit(&mut buf, need, 5 + *len)
                    .map_err(|s| Refusal::short(shared, s, need))?;
            }
            None => {
                // Before the prefix is known: at most one frame (16 KiB by default) is held.
                if buf.len() + data.len() > 5 + opts.max_decompressed {
                    return Err(Refusal::malformed(
                        tonic::Code::InvalidArgument,
                        "message larger than its prefix allows".into(),
                        400,
                    ));
                }
            }
        }
        buf.extend_from_slice(&data);
        if msg.is_none() && buf.len() >= 5 {
            let compressed = buf[0] == 1;
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            let limit = if compressed {
                opts.max_body
            } else {
                opts.max_decompressed
            };
            if len > limit {
                return Err(Refusal::malformed(
                    tonic::Code::ResourceExhausted,
                    format!("message of {len} bytes is over the {limit}-byte limit"),
                    413,
                ));
            }
            if buf.len() > 5 + len {
                return Err(Refusal::malformed(
                    tonic::Code::InvalidArgument,
                    format!("more data than the {len}-byte message its prefix declares"),
                    400,
                ));
            }
            // A first slice of the message; more as it arrives.
            let first = (5 + len).min(limits::FIRST_SLICE).max(buf.len());
            let mut res = shared
                .reserve(first)
                .await
                .map_err(|s| Refusal::short(shared, s, first))?;
            res.fit(&mut buf, first, 5 + len)
                .map_err(|s| Refusal::short(shared, s, first))?;
            msg = Some((compressed, len, res));
        }
    }
    let Some((compressed, len, res)) = msg else {
        // No complete prefix: tonic says what is wrong with it.
        return Ok((Bytes::from(buf), Vec::new(), None));
    };
    let gzip = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    if !compressed || !gzip || buf.len() < 5 + len {
        // Uncompressed, an encoding tonic refuses, or cut short: tonic answers as it would,
        // from its own copy of the message.
        let copy = tonic_copy(shared, buf.len()).await?;
        return Ok((Bytes::from(buf), vec![res, copy], Some(len as u64)));
    }
    // Inflated here, then tonic's copy.
    let cap = opts.max_decompressed;
    let first = limits::inflate_estimate(len, cap);
    let mut out_res = shared
        .reserve(first)
        .await
        .map_err(|s| Refusal::short(shared, s, first))?;
    let done = tokio::task::spawn_blocking(move || {
        let r = limits::gunzip_budgeted(&buf[5..], 5, cap, &mut out_res);
        (r, out_res)
    })
    .await;
    drop(res);
    let (mut out, out_res) = match done {
        Ok((Ok(out), r)) => (out, r),
        Ok((Err(InflateError::Budget(s)), _)) => return Err(Refusal::short(shared, s, cap)),
        Ok((Err(InflateError::TooLarge(cap)), _)) => {
            return Err(Refusal::malformed(
                tonic::Code::ResourceExhausted,
                format!("message inflates to more than the {cap}-byte limit"),
                413,
            ))
        }
        Ok((Err(InflateError::Bad(e)), _)) => {
            return Err(Refusal::malformed(
                tonic::Code::InvalidArgument,
                format!("bad gzip message: {e}"),
                400,
            ))
        }
        Err(_) => {
            return Err(Refusal::malformed(
                tonic::Code::Internal,
                "gzip decoder failed".into(),
                500,
            ))
        }
    };
    let inflated = out.len() - 5;
    let copy = tonic_copy(shared, out.len()).await?;
    out[0] = 0;
    out[1..5].copy_from_slice(&(inflated as u32).to_be_bytes());
    headers.remove("grpc-encoding");
    Ok((Bytes::from(out), vec![out_res, copy], Some(len as u64)))
}

/// tonic decodes from its own copy of the message: that memory is reserved too.
pub(super) async fn tonic_copy(shared: &Arc<Shared>, n: usize) -> Result<Reservation, Refusal> {
    shared
        .reserve(n)
        .await
        .map_err(|s| Refusal::short(shared, s, n))
}
