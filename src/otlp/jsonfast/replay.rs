//! Replaying a connection's last OTLP JSON metrics body. An SDK's exports differ from one
//! another only in their points' times and values: the same resources, metrics and series in
//! the same order, every time. Unlike protobuf's fixed-size fields, JSON numbers change length,
//! so the next body is the last one with some tokens replaced, not the same bytes.
//!
//! After a full read the connection keeps that body, its summaries, and where each value token
//! sits ([`scan`]): a point's times, value and count, and the tokens the summaries do not keep
//! but the reader checks (bucket counts, min, max, zero count). A body that equals the last
//! one outside those tokens, each token of the same kind (number, plain string, or a list of
//! bucket counts), would be read the same way: same structure, same resources, metrics and
//! series. Each token that differs from the kept one is read with the same `Deserialize` the
//! full reader uses for its field, so what that reader would refuse is refused (and the body
//! left to it); the others hold the kept values. Anything else is read in full.

use super::common::{Seq, I64, U64};
use super::scan::{list_end, number_end, scan, string_end, Read, Sets, Shape, Slot};
use super::Signal;
use crate::otlp::identity::ResourceSummary;
use crate::otlp::values::{MetricPoints, Num, PointValue};

/// Largest body a connection keeps.
const MAX_BODY: usize = 64 << 10;

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
    /// A body was offered for keeping before (kept, or too large or odd to scan).
    offered: bool,
    replayed: bool,
    misses: u32,
    wait: u32,
    /// The tokens a replay found changed, kept between bodies so as not to grow a list each
    /// time.
    changed: Vec<(usize, Val)>,
}

impl Replay {
    /// The summaries of a metrics body: replayed from the last body kept when only values
    /// changed, else read in full (None: left to the reference).
    pub fn summarize(&mut self, body: &[u8]) -> Option<Vec<ResourceSummary>> {
        self.summarize_reusing(body, &mut Vec::new())
    }

    /// [`Replay::summarize`], a replay's point lists taken from `spare` (emptied lists of
    /// summaries already accounted, last metric first) instead of allocated.
    pub fn summarize_reusing(
        &mut self,
        body: &[u8],
        spare: &mut Vec<Vec<PointValue>>,
    ) -> Option<Vec<ResourceSummary>> {
        let changed = &mut self.changed;
        if let Some(s) = self
            .last
            .as_ref()
            .and_then(|l| l.replay_into(body, spare, changed))
        {
            (self.replayed, self.misses, self.wait) = (true, 0, 0);
            return Some(s);
        }
        let s = super::summarize(Signal::Metrics, body)?;
        if self.wait > 0 {
            self.wait -= 1;
            return Some(s);
        }
        if self.offered && !self.replayed {
            // Waits 1, 3, 7 ... 63 bodies after offered bodies that were never replayed.
            self.misses = (self.misses + 1).min(6);
            self.wait = (1 << self.misses) - 1;
        }
        (self.last, self.offered, self.replayed) = (Last::keep(body, &s), true, false);
        Some(s)
    }

    #[cfg(test)]
    pub(super) fn last(&self) -> Option<&Last> {
        self.last.as_ref()
    }
}

/// A token's value as read.
#[derive(Debug, Clone, Copy)]
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
        Some(Last {
            body: body.to_vec(),
            slots,
            summaries: summaries.to_vec(),
        })
    }

    /// [`Last::replay_reusing`] with new point lists.
    #[cfg(test)]
    pub(super) fn replay(&self, new: &[u8]) -> Option<Vec<ResourceSummary>> {
        self.replay_reusing(new, &mut Vec::new())
    }

    /// The summaries of `new` when it is this body with other values (None: read it in full),
    /// its point lists taken from `spare` (see [`Replay::summarize_reusing`]).
    #[cfg(test)]
    pub(super) fn replay_reusing(
        &self,
        new: &[u8],
        spare: &mut Vec<Vec<PointValue>>,
    ) -> Option<Vec<ResourceSummary>> {
        self.replay_into(new, spare, &mut Vec::new())
    }

    /// [`Last::replay_reusing`], the changed tokens listed in `changed` (emptied first).
    fn replay_into(
        &self,
        new: &[u8],
        spare: &mut Vec<Vec<PointValue>>,
        changed: &mut Vec<(usize, Val)>,
    ) -> Option<Vec<ResourceSummary>> {
        let old = &self.body[..];
        // Tokens that differ from the kept body's, and their values: the others hold the
        // values the kept summaries have (exporters resend most: start times, many counts).
        // The bodies are compared in runs of equal bytes: every token that ends before a run
        // does (and the byte after it, so a number does not go on) is the kept one. The first
        // difference must then sit in the next token, or just past its end (a number that
        // goes on): anywhere else, the body is not this one.
        changed.clear();
        let (mut o, mut n, mut i) = (0usize, 0usize, 0usize);
        loop {
            let p = o + common_prefix(&old[o..], &new[n..]);
            while self.slots.get(i).is_some_and(|s| (s.end as usize) < p) {
                i += 1;
            }
            let Some(s) = self.slots.get(i) else {
                // Past the last token: equal to the end, and of the same length.
                let to_end = p == old.len() && new.len() - n == old.len() - o;
                return to_end.then(|| self.with_changes(spare, changed))?;
            };
            if p < s.start as usize {
                return None;
            }
            let at = n + (s.start as usize - o);
            let end = match s.shape {
                Shape::String => string_end(new, at)?,
                Shape::Number => number_end(new, at)?,
                Shape::List => list_end(new, at)?,
            };
            let tok = &new[at..end];
            let v = match s.shape {
                Shape::List => counts(tok).then_some(Val::U(0))?,
                _ => read(tok, s.read)?,
            };
            if s.sets != Sets::Nothing {
                changed.push((i, v));
            }
            (o, n, i) = (s.end as usize, end, i + 1);
        }
    }

    /// The kept summaries with the `changed` tokens' values.
    fn with_changes(
        &self,
        spare: &mut Vec<Vec<PointValue>>,
        changed: &[(usize, Val)],
    ) -> Option<Vec<ResourceSummary>> {
        let mut out = self.copy(spare);
        let mut restarted = false;
        for &(i, v) in changed {
            let s = &self.slots[i];
            let p = out
                .get_mut(s.resource as usize)?
                .metrics
                .get_mut(s.metric as usize)?
                .points
                .get_mut(s.point as usize)?;
            match (s.sets, v) {
                (Sets::Start, Val::U(x)) => {
                    p.start_time_unix_nano = x;
                    restarted = true;
                }
                (Sets::Time, Val::U(x)) => p.time_unix_nano = x,
                (Sets::Count, Val::U(x)) => p.count = x,
                (Sets::IntValue, Val::U(x)) => p.value = Num(x as i64 as f64),
                (Sets::Value, Val::F(x)) => p.value = Num(x),
                _ => return None,
            }
        }
        if restarted {
            out.iter_mut().for_each(ResourceSummary::list_cumulative);
        }
        Some(out)
    }

    /// The kept summaries, each metric's points in a list from `spare` when there is one.
    fn copy(&self, spare: &mut Vec<Vec<PointValue>>) -> Vec<ResourceSummary> {
        let mut metric = |m: &MetricPoints| {
            let mut points = spare.pop().unwrap_or_default();
            points.clear();
            points.extend_from_slice(&m.points);
            MetricPoints {
                name: m.name.clone(),
                kind: m.kind,
                temporality: m.temporality,
                monotonic: m.monotonic,
                series: m.series.clone(),
                points,
            }
        };
        let mut out = Vec::with_capacity(self.summaries.len());
        for r in &self.summaries {
            out.push(ResourceSummary {
                identity: r.identity.clone(),
                items: r.items,
                cumulative: r.cumulative.clone(),
                metrics: r.metrics.iter().map(&mut metric).collect(),
            });
        }
        out
    }
}

/// How many bytes `a` and `b` have in common from their start.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { common_prefix_avx2(&a[..n], &b[..n]) };
    }
    common_prefix_bytes(&a[..n], &b[..n], 0)
}

/// [`common_prefix`] of two slices of one length, 32 bytes at a time: one compare and one
/// mask per chunk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn common_prefix_avx2(a: &[u8], b: &[u8]) -> usize {
    use std::arch::x86_64::{__m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8};
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: `i + 32 <= n`: both 32-byte reads are inside their slices (unaligned loads).
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(i).cast::<__m256i>()),
                _mm256_loadu_si256(b.as_ptr().add(i).cast::<__m256i>()),
            )
        };
        let same = _mm256_movemask_epi8(_mm256_cmpeq_epi8(x, y)) as u32;
        if same != u32::MAX {
            return i + (!same).trailing_zeros() as usize;
        }
        i += 32;
    }
    common_prefix_bytes(a, b, i)
}

/// [`common_prefix`] of two slices of one length from `i`, known equal before it: eight bytes
/// at a time.
fn common_prefix_bytes(a: &[u8], b: &[u8], mut i: usize) -> usize {
    let n = a.len().min(b.len());
    while i + 8 <= n {
        let w = |s: &[u8]| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
        let d = w(a) ^ w(b);
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
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

/// 1 to 19 ASCII digits without a leading zero (they always fit a u64), as a number: eight
/// at a time (a time in nanoseconds has 19).
fn digits(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || (t[0] == b'0' && t.len() > 1) {
        return None;
    }
    let mut chunks = t.chunks_exact(8);
    let mut n = 0u64;
    for c in &mut chunks {
        n = n * 100_000_000 + eight_digits(u64::from_le_bytes(c.try_into().ok()?))?;
    }
    chunks.remainder().iter().try_fold(n, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// Eight ASCII digits, the first in the lowest byte, as a number (None: one is not a digit).
fn eight_digits(w: u64) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // A digit is 0x30..=0x39: high nibble 3, and still 3 once 6 is added.
    let high = |w: u64| w & (0xf0 * ONES);
    if high(w) != 0x30 * ONES || high(w + 0x06 * ONES) != 0x30 * ONES {
        return None;
    }
    // Pairs, then fours, then all eight, each step in place (simdjson's way).
    let v = ((w & (0x0f * ONES)).wrapping_mul(10 << 8 | 1)) >> 8;
    let v = ((v & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 << 16 | 1)) >> 16;
    Some(((v & 0x0000_ffff_0000_ffff).wrapping_mul(10_000 << 32 | 1)) >> 32)
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
