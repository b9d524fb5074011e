//! OTLP JSON bodies read straight into summaries, without `serde_json::Value` or the prost
//! messages: what `decode::decode` + `Request::summarize` give, faster. Whatever this reader
//! does not take (malformed bodies, shapes the reference decides by key order, `bytesValue`
//! attributes) it leaves to that path, which stays the reference: [`summarize_json`]
//! tries this first and falls back.

mod attrs;
mod common;
mod metrics;
mod replay;
mod scan;
#[cfg(test)]
mod tests;

pub use self::replay::{Last, Replay};

use serde::Deserialize;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;

use self::attrs::identity;
use self::common::{nul, Each, Resource, Rest, Scope, Str};
use super::decode;
use super::identity::ResourceSummary;
use super::signal::Signal;

/// The summaries of a JSON body of `signal`; None when the reference path must decide.
pub fn summarize(signal: Signal, body: &[u8]) -> Option<Vec<ResourceSummary>> {
    // The reference refuses a body that is not an object; typed structs would take arrays.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))?;
    if *first != b'{' {
        return None;
    }
    // Checked once here, the body's strings are not checked again one by one (`from_slice`
    // checks each): a sixth of the parse. A body that is not UTF-8 goes to the reference.
    let body = std::str::from_utf8(body).ok()?;
    match signal {
        Signal::Metrics => serde_json::from_str::<metrics::Request>(body)
            .ok()?
            .summarize(),
        Signal::Traces => {
            let req = serde_json::from_str::<Traces>(body).ok()?;
            let blocks = req.resource_spans.iter().map(|r| {
                let n = r.scope_spans.iter().map(|s| s.spans.0 as u64).sum();
                (r.resource.as_ref(), n)
            });
            Some(by_resource(blocks))
        }
        Signal::Logs => {
            let req = serde_json::from_str::<Logs>(body).ok()?;
            let blocks = req.resource_logs.iter().map(|r| {
                let n = r.scope_logs.iter().map(|s| s.log_records.0 as u64).sum();
                (r.resource.as_ref(), n)
            });
            Some(by_resource(blocks))
        }
    }
}

/// The summaries of an (inflated) OTLP JSON body: read straight off the text by [`summarize`],
/// or, for what that reader leaves (malformed bodies among them), by [`decode::decode`] and
/// `Request::summarize`, the reference it is tested against.
pub fn summarize_json(
    signal: Signal,
    body: &[u8],
) -> Result<Vec<ResourceSummary>, decode::BodyError> {
    or_reference(summarize(signal, body), signal, body)
}

/// [`summarize_json`] on a connection, metrics replayed from its last body when only values
/// changed (see [`Replay`]), a replay's point lists taken from `spare`.
pub fn summarize_json_on(
    signal: Signal,
    body: &[u8],
    replay: &mut Replay,
    spare: &mut Vec<Vec<crate::otlp::values::PointValue>>,
) -> Result<Vec<ResourceSummary>, decode::BodyError> {
    let fast = match signal {
        Signal::Metrics => replay.summarize_reusing(body, spare),
        _ => summarize(signal, body),
    };
    or_reference(fast, signal, body)
}

/// The fast reader's summaries, or the reference path's when it left the body to it.
fn or_reference(
    fast: Option<Vec<ResourceSummary>>,
    signal: Signal,
    body: &[u8],
) -> Result<Vec<ResourceSummary>, decode::BodyError> {
    match fast {
        Some(s) => Ok(s),
        None => decode::decode(signal, decode::Encoding::Json, body).map(|r| r.summarize()),
    }
}

fn by_resource<'a, 'b: 'a>(
    blocks: impl Iterator<Item = (Option<&'a Resource<'b>>, u64)>,
) -> Vec<ResourceSummary> {
    blocks
        .map(|(r, items)| ResourceSummary {
            identity: identity(r),
            items,
            ..Default::default()
        })
        .collect()
}

// Spans and log records are counted, each decoded as the reference decodes it (they carry
// nothing a summary keeps, but a malformed one must still be refused).

#[derive(Default, Deserialize)]
#[serde(default)]
struct Traces<'a> {
    #[serde(rename = "resourceSpans", borrow, deserialize_with = "nul")]
    resource_spans: Vec<ResourceSpans<'a>>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResourceSpans<'a> {
    #[serde(borrow)]
    resource: Option<Resource<'a>>,
    #[serde(rename = "scopeSpans", borrow, deserialize_with = "nul")]
    scope_spans: Vec<ScopeSpans<'a>>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ScopeSpans<'a> {
    #[serde(borrow, rename = "scope")]
    _scope: Option<Scope<'a>>,
    #[serde(deserialize_with = "nul")]
    spans: Each<Span>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Logs<'a> {
    #[serde(rename = "resourceLogs", borrow, deserialize_with = "nul")]
    resource_logs: Vec<ResourceLogs<'a>>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResourceLogs<'a> {
    #[serde(borrow)]
    resource: Option<Resource<'a>>,
    #[serde(rename = "scopeLogs", borrow, deserialize_with = "nul")]
    scope_logs: Vec<ScopeLogs<'a>>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ScopeLogs<'a> {
    #[serde(borrow, rename = "scope")]
    _scope: Option<Scope<'a>>,
    #[serde(rename = "logRecords", deserialize_with = "nul")]
    log_records: Each<LogRecord>,
    #[serde(rename = "schemaUrl", deserialize_with = "nul")]
    _schema_url: Str,
    #[serde(flatten)]
    _rest: Rest,
}
