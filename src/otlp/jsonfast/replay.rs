//! Replaying a connection's last OTLP JSON metrics body. An SDK's exports differ from one
//! another only in their points' times and values: the same resources, metrics and series in
//! the same order, every time. Unlike protobuf's fixed-size fields, JSON numbers change length,
//! so the next body is the last one with some tokens replaced, not the same bytes.
//!
//! After a full read the connection keeps that body, its summaries, and where each value token
//! sits ([`scan`]): a point's times, value and count, and the tokens the summaries do not keep
//! but the reader checks (bucket counts, min, max, zero count). A body that equals the last
//! one outside those tokens, each token of the same kind (number, plain string, or a list of
//! bucket counts), would be
//! read the same way: same structure, same resources, metrics and series. Each token is then
//! read with the same `Deserialize` the full reader uses for its field, so what that reader
//! would refuse is refused (and the body left to it); anything else is read in full.

use super::common::{Seq, I64, U64};
use super::Signal;
use crate::otlp::identity::{ResourceSummary, SeriesStart};
use crate::otlp::values::{Num, Temporality};

/// Largest body a connection keeps.
const MAX_BODY: usize = 64 << 10;

/// How a token is read: the full reader's type for its field.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Read {
    U64,
    I64,
    F64,
    /// An f64 whose value is not kept: only whether the full reader takes it matters.
    F64Checked,
}

/// What a token looks like in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Number,
    /// Without escapes.
    String,
    /// A histogram's `bucketCounts` (checked only).
    List,
}

/// What a token sets in the summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sets {
    Start,
    Time,
    /// `asDouble`, a histogram's or a summary's `sum`.
    Value,
    /// `asInt`.
    IntValue,
    Count,
    /// Checked only.
    Nothing,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    end: u32,
    shape: Shape,
    read: Read,
    sets: Sets,
    resource: u32,
    metric: u32,
    point: u32,
}

/// A connection's last JSON metrics body read in full, and what may change in it.
#[derive(Debug, Default)]
pub struct Last {
    body: Vec<u8>,
    slots: Vec<Slot>,
    summaries: Vec<ResourceSummary>,
}

/// A connection's replays: its last body kept, and how many bodies to read before keeping
/// another when the kept ones are not replayed (without it, an exporter whose every body differs
/// would pay a scan per body).
#[derive(Debug, Default)]
pub struct Replay {
    last: Option<Last>,
    replayed: bool,
    misses: u32,
    wait: u32,
}

impl Replay {
    /// The summaries of a metrics body: replayed from the last body kept when only values
    /// changed, else read in full (None: left to the reference).
    pub fn summarize(&mut self, body: &[u8]) -> Option<Vec<ResourceSummary>> {
        if let Some(s) = self.last.as_ref().and_then(|l| l.replay(body)) {
            (self.replayed, self.misses, self.wait) = (true, 0, 0);
            return Some(s);
        }
        let s = super::summarize(Signal::Metrics, body)?;
        if self.wait > 0 {
            self.wait -= 1;
            return Some(s);
        }
        if self.last.is_some() && !self.replayed {
            // Waits 1, 3, 7 ... 63 bodies after kept bodies that were never replayed.
            self.misses = (self.misses + 1).min(6);
            self.wait = (1 << self.misses) - 1;
        }
        (self.last, self.replayed) = (Last::keep(body, &s), false);
        Some(s)
    }

    #[cfg(test)]
    pub(super) fn last(&self) -> Option<&Last> {
        self.last.as_ref()
    }
}

/// A token's value as read.
#[derive(Clone, Copy)]
enum Val {
    U(u64),
    F(f64),
}

impl Last {
    /// Keeps `body` (read in full into `summaries`) for the next one, when it can be scanned.
    pub fn keep(body: &[u8], summaries: &[ResourceSummary]) -> Option<Last> {
        if body.len() > MAX_BODY {
            return None;
        }
        let slots = scan(body)?;
        let mut summaries = summaries.to_vec();
        // Rebuilt from the points on each replay.
        summaries.iter_mut().for_each(|r| r.cumulative.clear());
        Some(Last {
            body: body.to_vec(),
            slots,
            summaries,
        })
    }

    /// The summaries of `new` when it is this body with other values (None: read it in full).
    pub fn replay(&self, new: &[u8]) -> Option<Vec<ResourceSummary>> {
        let old = &self.body[..];
        let mut vals = Vec::with_capacity(self.slots.len());
        let (mut o, mut n) = (0usize, 0usize);
        for s in &self.slots {
            let gap = &old[o..s.start as usize];
            if new.get(n..n + gap.len())? != gap {
                return None;
            }
            n += gap.len();
            let end = match s.shape {
                Shape::String => string_end(new, n)?,
                Shape::Number => number_end(new, n)?,
                Shape::List => list_end(new, n)?,
            };
            let tok = &new[n..end];
            vals.push(match s.shape {
                Shape::List => counts(tok).then_some(Val::U(0))?,
                _ => read(tok, s.read)?,
            });
            (o, n) = (s.end as usize, end);
        }
        if new.get(n..)? != &old[o..] {
            return None;
        }
        let mut out = self.summaries.clone();
        for (s, v) in self.slots.iter().zip(vals) {
            if s.sets == Sets::Nothing {
                continue;
            }
            let p = out
                .get_mut(s.resource as usize)?
                .metrics
                .get_mut(s.metric as usize)?
                .points
                .get_mut(s.point as usize)?;
            match (s.sets, v) {
                (Sets::Start, Val::U(x)) => p.start_time_unix_nano = x,
                (Sets::Time, Val::U(x)) => p.time_unix_nano = x,
                (Sets::Count, Val::U(x)) => p.count = x,
                (Sets::IntValue, Val::U(x)) => p.value = Num(x as i64 as f64),
                (Sets::Value, Val::F(x)) => p.value = Num(x),
                _ => return None,
            }
        }
        for r in &mut out {
            restart_cumulative(r);
        }
        Some(out)
    }
}

/// The cumulative series of a resource from its points, as the full read lists them: every
/// point with a start time of a cumulative metric, in order.
fn restart_cumulative(r: &mut ResourceSummary) {
    for m in &r.metrics {
        if m.temporality != Temporality::Cumulative {
            continue;
        }
        for (i, p) in m.points.iter().enumerate() {
            if p.start_time_unix_nano > 0 {
                r.cumulative.push(SeriesStart {
                    series: m.series.names[i].clone(),
                    start_time_unix_nano: p.start_time_unix_nano,
                    key: m.series.keys[i],
                });
            }
        }
    }
}

/// The end of the plain string token at `i` (no escapes: those are read in full).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let len = b[i + 1..].iter().position(|c| *c == b'"' || *c == b'\\')?;
    (b[i + 1 + len] == b'"').then_some(i + len + 2)
}

/// The end of the list at `i`: its first `]` (a list cut short there is refused when read).
fn list_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    Some(i + memchr::memchr(b']', &b[i..])? + 1)
}

/// Whether a list of bucket counts is one the full reader takes (`Seq<U64>`): plain digits,
/// quoted or not, without serde_json; anything else through it.
fn counts(tok: &[u8]) -> bool {
    let inner = &tok[1..tok.len() - 1];
    let plain = |t: &[u8]| {
        digits(
            t.strip_prefix(b"\"")
                .and_then(|t| t.strip_suffix(b"\""))
                .unwrap_or(t),
        )
        .is_some()
    };
    if inner.is_empty() || inner.split(|c| *c == b',').all(plain) {
        return true;
    }
    std::str::from_utf8(tok).is_ok_and(|t| serde_json::from_str::<Seq<U64>>(t).is_ok())
}

/// The end of the number token at `i`: every byte a number may hold (what is not a number is
/// refused when it is read).
fn number_end(b: &[u8], i: usize) -> Option<usize> {
    let len = b[i..]
        .iter()
        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(b.len() - i);
    (len > 0).then_some(i + len)
}

/// Reads a token as the full reader reads its field; plain digits (the usual case) without
/// serde_json, with the same result.
fn read(tok: &[u8], how: Read) -> Option<Val> {
    let inner = tok.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\""));
    match (how, inner) {
        // A u64 as a string or a number: what `U64` gives.
        (Read::U64, _) => {
            if let Some(x) = digits(inner.unwrap_or(tok)) {
                return Some(Val::U(x));
            }
        }
        // A number of digits: serde_json reads it as a u64, and f64 takes that `as f64`.
        (Read::F64, None) => {
            if let Some(x) = digits(tok) {
                return Some(Val::F(x as f64));
            }
        }
        // serde_json takes a number in JSON's grammar unless it is out of an f64's range; far
        // from that bound, rounding cannot matter.
        (Read::F64Checked, None) if number(tok) => {
            let x: f64 = std::str::from_utf8(tok).ok()?.parse().ok()?;
            if x.abs() < 1e300 {
                return Some(Val::F(0.0));
            }
        }
        _ => {}
    }
    let t = std::str::from_utf8(tok).ok()?;
    match how {
        Read::U64 => serde_json::from_str::<U64>(t).ok().map(|x| Val::U(x.0)),
        Read::I64 => serde_json::from_str::<I64>(t)
            .ok()
            .map(|x| Val::U(x.0 as u64)),
        Read::F64 | Read::F64Checked => serde_json::from_str::<f64>(t).ok().map(Val::F),
    }
}

/// Whether `t` is a number in JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number(t: &[u8]) -> bool {
    let run = |t: &[u8]| t.iter().take_while(|c| c.is_ascii_digit()).count();
    let t = t.strip_prefix(b"-").unwrap_or(t);
    let n = run(t);
    if n == 0 || (t[0] == b'0' && n > 1) {
        return false;
    }
    let mut t = &t[n..];
    if let Some(f) = t.strip_prefix(b".") {
        let n = run(f);
        if n == 0 {
            return false;
        }
        t = &f[n..];
    }
    if let Some(e) = t.strip_prefix(b"e").or_else(|| t.strip_prefix(b"E")) {
        let e = e
            .strip_prefix(b"+")
            .or_else(|| e.strip_prefix(b"-"))
            .unwrap_or(e);
        let n = run(e);
        if n == 0 {
            return false;
        }
        t = &e[n..];
    }
    t.is_empty()
}

/// 1 to 19 ASCII digits without a leading zero (they always fit a u64), as a number.
fn digits(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || (t[0] == b'0' && t.len() > 1) {
        return None;
    }
    t.iter().try_fold(0u64, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// Where a body's changeable tokens are, in order; None when the body has a shape the scanner
/// does not follow (it is then read in full every time).
fn scan(body: &[u8]) -> Option<Vec<Slot>> {
    let mut s = Scanner {
        b: body,
        i: 0,
        slots: Vec::new(),
        at: (0, 0, 0),
    };
    s.ws();
    s.object(|s, key| match key {
        b"resourceMetrics" => s.list(|s, r| {
            s.at = (r as u32, 0, 0);
            s.resource()
        }),
        _ => s.skip(),
    })?;
    s.ws();
    (s.i == body.len()).then_some(s.slots)
}

/// Which kind of point a metric's data holds.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Number,
    Histogram,
    Exponential,
    Summary,
}

struct Scanner<'b> {
    b: &'b [u8],
    i: usize,
    slots: Vec<Slot>,
    /// Resource, metric (among those with points) and point being scanned.
    at: (u32, u32, u32),
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// An object, `f` called on each value with its key (a key with escapes stops the scan).
    fn object(&mut self, mut f: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        if self.peek() == Some(b'n') {
            return self.skip();
        }
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let start = self.i;
            self.i = string_end(self.b, start)?;
            let key = &self.b[start + 1..self.i - 1];
            self.eat(b':')?;
            self.ws();
            f(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// A list (or null), `f` called on each element with its index.
    fn list(&mut self, mut f: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        if self.peek() == Some(b'n') {
            return self.skip();
        }
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        let mut n = 0;
        loop {
            self.ws();
            f(self, n)?;
            n += 1;
            if self.eat(b',').is_none() {
                return self.eat(b']');
            }
        }
    }

    /// Any value, skipped (strings may hold escapes here).
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|s, _| s.skip()),
            b'[' => self.list(|s, _| s.skip()),
            b'"' => {
                let mut j = self.i + 1;
                loop {
                    j += memchr::memchr2(b'"', b'\\', self.b.get(j..)?)?;
                    match self.b[j] {
                        b'\\' => j += 2,
                        _ => break,
                    }
                }
                self.i = j + 1;
                Some(())
            }
            _ => {
                let len = self.b[self.i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))?;
                self.i += len;
                (len > 0).then_some(())
            }
        }
    }

    /// A value token the summaries may take from the next body: a number or a plain string
    /// becomes a slot; anything else (null) stays part of the structure.
    fn token(&mut self, read: Read, sets: Sets) -> Option<()> {
        let start = self.i;
        let (end, shape) = match self.b.get(start)? {
            b'"' => (string_end(self.b, start), Shape::String),
            b'-' | b'0'..=b'9' => (number_end(self.b, start), Shape::Number),
            _ => return self.skip(),
        };
        let Some(end) = end else {
            return self.skip();
        };
        let (resource, metric, point) = self.at;
        self.slots.push(Slot {
            start: start as u32,
            end: end as u32,
            shape,
            read,
            sets,
            resource,
            metric,
            point,
        });
        self.i = end;
        Some(())
    }

    /// A histogram's bucket counts: one token for the whole list (null stays structure).
    fn counts(&mut self) -> Option<()> {
        let start = self.i;
        let Some(end) = list_end(self.b, start) else {
            return self.skip();
        };
        let (resource, metric, point) = self.at;
        self.slots.push(Slot {
            start: start as u32,
            end: end as u32,
            shape: Shape::List,
            read: Read::U64,
            sets: Sets::Nothing,
            resource,
            metric,
            point,
        });
        self.i = end;
        Some(())
    }

    fn resource(&mut self) -> Option<()> {
        self.object(|s, key| match key {
            b"scopeMetrics" => s.list(|s, _| {
                s.object(|s, key| match key {
                    b"metrics" => s.list(|s, _| s.metric()),
                    _ => s.skip(),
                })
            }),
            _ => s.skip(),
        })
    }

    /// One metric; counted among its resource's metrics when it has points (as the summaries
    /// list them).
    fn metric(&mut self) -> Option<()> {
        let mut points = 0;
        self.object(|s, key| {
            let kind = match key {
                b"gauge" | b"sum" => Kind::Number,
                b"histogram" => Kind::Histogram,
                b"exponentialHistogram" => Kind::Exponential,
                b"summary" => Kind::Summary,
                _ => return s.skip(),
            };
            s.object(|s, key| match key {
                b"dataPoints" => s.list(|s, p| {
                    s.at.2 = p as u32;
                    points = p + 1;
                    s.point(kind)
                }),
                _ => s.skip(),
            })
        })?;
        if points > 0 {
            self.at.1 += 1;
        }
        Some(())
    }

    fn point(&mut self, kind: Kind) -> Option<()> {
        self.object(|s, key| {
            let (read, sets) = match (key, kind) {
                (b"startTimeUnixNano", _) => (Read::U64, Sets::Start),
                (b"timeUnixNano", _) => (Read::U64, Sets::Time),
                (b"asDouble", Kind::Number) => (Read::F64, Sets::Value),
                (b"asInt", Kind::Number) => (Read::I64, Sets::IntValue),
                (b"count", Kind::Histogram | Kind::Exponential | Kind::Summary) => {
                    (Read::U64, Sets::Count)
                }
                (b"sum", Kind::Histogram | Kind::Exponential | Kind::Summary) => {
                    (Read::F64, Sets::Value)
                }
                (b"min" | b"max", Kind::Histogram | Kind::Exponential) => {
                    (Read::F64Checked, Sets::Nothing)
                }
                (b"zeroCount", Kind::Exponential) => (Read::U64, Sets::Nothing),
                (b"bucketCounts", Kind::Histogram) => return s.counts(),
                _ => return s.skip(),
            };
            s.token(read, sets)
        })
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
