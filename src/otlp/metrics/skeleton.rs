//! Replaying a connection's last body. An SDK's exports differ from one another only in their
//! points' times and values: the same resource, metrics and series in the same order, every
//! time. Those values are fixed64 and double fields, which keep their size whatever they hold,
//! so the next export is the same bytes except inside them.
//!
//! After a full walk the connection keeps that body, the byte ranges that may change without
//! changing anything the walker checks or reads besides point values (every fixed64 or double
//! payload of a point, and the payload of a point field the walker does not read), and where
//! each point's start, time, value and count are. A body of the same length that differs only
//! inside those ranges would walk the same way: same framing, same resources, metrics and
//! series keys. Its points are read at the noted offsets and passed on exactly as the walk
//! would pass them (the same [`emit`]); anything else is walked in full.

use super::super::identity::Identity;
use super::*;

/// Largest body whose skeleton a connection keeps (its bytes are kept with it).
const MAX_BODY: usize = 64 << 10;

/// Where a point's start, time, value and count were read ([`ABSENT`]: not there).
#[derive(Debug, Clone, Copy)]
pub(super) struct PointAt {
    start: u32,
    time: u32,
    value: u32,
    count: u32,
    /// `value` is NumberDataPoint.as_int (else a double).
    value_int: bool,
}

/// No offset: reading it finds nothing (beyond any body kept), which reads as 0.
const ABSENT: u32 = u32::MAX;

impl Default for PointAt {
    fn default() -> PointAt {
        PointAt {
            start: ABSENT,
            time: ABSENT,
            value: ABSENT,
            count: ABSENT,
            value_int: false,
        }
    }
}

impl PointAt {
    /// Field `field` of a point (counted: a histogram's or summary's) was read at `off`; the
    /// last one of each wins, as in the walk.
    pub(super) fn note(&mut self, field: u32, counted: bool, off: usize) {
        let o = off as u32;
        match (field, counted) {
            (2, _) => self.start = o,
            (3, _) => self.time = o,
            (4, true) => self.count = o,
            (4, false) | (5, true) => {
                self.value = o;
                self.value_int = false;
            }
            (6, false) => {
                self.value = o;
                self.value_int = true;
            }
            _ => {}
        }
    }

    #[inline]
    fn read(&self, b: &[u8]) -> PointValue {
        // One bounds check each; an absent field is out of any body (MAX_BODY).
        let at = |o: u32| {
            let o = o as usize;
            b.get(o..o.saturating_add(8)).map_or(0, word)
        };
        let v = at(self.value);
        PointValue {
            start_time_unix_nano: at(self.start),
            time_unix_nano: at(self.time),
            value: match (self.value == ABSENT, self.value_int) {
                (true, _) => Num::default(),
                (false, true) => Num(v as i64 as f64),
                (false, false) => Num(f64::from_bits(v)),
            },
            count: at(self.count),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    identity: Identity,
    metrics: Vec<Metric>,
}

#[derive(Debug, Clone)]
struct Metric {
    mkey: u64,
    name: Box<str>,
    kind: u32,
    temporality: Temporality,
    monotonic: bool,
    keys: Vec<u64>,
    points: Vec<PointAt>,
}

/// A body walked in full, and what may change in it (see the module docs).
#[derive(Debug, Clone, Default)]
pub(super) struct Skeleton {
    /// The body, and one bit per byte set where the byte must stay (bit `j` of `keep[k]`:
    /// byte `64 * k + j`): a body matches when it has the same length and the same bytes at
    /// every bit set. Checking every 64-byte chunk without a branch costs less than finding
    /// each difference and skipping its range. One bit per byte keeps a connection's state at
    /// 1.1 times its body (a mask of bytes doubled it): under load from many connections that
    /// state is cold again by each connection's next export, and each line of it a miss.
    body: Vec<u8>,
    keep: Vec<u64>,
    blocks: Vec<Block>,
    /// [`NameCache::shapes_made`] when [`Skeleton::named`] last held.
    named_at: Option<u64>,
}

/// Notes what a full walk of one body reads (offsets are into that body).
pub(super) struct Recorder {
    base: usize,
    free: Vec<(u32, u32)>,
    blocks: Vec<Block>,
}

impl Recorder {
    /// None for a body too large to keep.
    pub(super) fn new(body: &[u8]) -> Option<Recorder> {
        (body.len() <= MAX_BODY).then(|| Recorder {
            base: body.as_ptr() as usize,
            free: Vec::new(),
            blocks: Vec::new(),
        })
    }

    /// The offset in the body of an address within it.
    pub(super) fn offset(&self, addr: usize) -> usize {
        addr - self.base
    }

    pub(super) fn free(&mut self, start: usize, end: usize) {
        let (s, e) = (start as u32, end as u32);
        match self.free.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => self.free.push((s, e)),
        }
    }

    pub(super) fn block(&mut self, identity: &Identity) {
        self.blocks.push(Block {
            identity: identity.clone(),
            metrics: Vec::new(),
        });
    }

    pub(super) fn metric(&mut self, mkey: u64, name: &str, kind: u32) {
        if let Some(b) = self.blocks.last_mut() {
            b.metrics.push(Metric {
                mkey,
                name: name.into(),
                kind,
                temporality: Temporality::Unspecified,
                monotonic: false,
                keys: Vec::new(),
                points: Vec::new(),
            });
        }
    }

    pub(super) fn metric_end(&mut self, temporality: Temporality, monotonic: bool, keys: &[u64]) {
        if let Some(m) = self.blocks.last_mut().and_then(|b| b.metrics.last_mut()) {
            m.temporality = temporality;
            m.monotonic = monotonic;
            m.keys = keys.to_vec();
        }
    }

    pub(super) fn point(&mut self, at: PointAt) {
        if let Some(m) = self.blocks.last_mut().and_then(|b| b.metrics.last_mut()) {
            m.points.push(at);
        }
    }

    /// The skeleton of `body`, which this recorder saw walked without an error.
    pub(super) fn finish(self, body: &[u8]) -> Skeleton {
        let mut keep = vec![u64::MAX; body.len().div_ceil(64)];
        if body.len() % 64 != 0 {
            keep[body.len() / 64] = (1 << (body.len() % 64)) - 1;
        }
        for &(s, e) in &self.free {
            for i in s as usize..(e as usize).min(body.len()) {
                keep[i / 64] &= !(1 << (i % 64));
            }
        }
        Skeleton {
            body: body.to_vec(),
            keep,
            blocks: self.blocks,
            named_at: None,
        }
    }
}

/// Eight bytes (from a chunk of eight) as a little-endian word.
#[inline(always)]
fn word(c: &[u8]) -> u64 {
    u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))
}

/// Bits set where `b` differs from `body` at a byte to `keep` (any one: it does not match).
/// `b` and `body` have one length.
fn differs(b: &[u8], body: &[u8], keep: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { differs_avx2(b, body, keep) };
    }
    differs_chunks(b, body, keep)
}

/// [`differs`], 64 bytes at a time: two compares and masks, one `and` with the chunk's bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn differs_avx2(b: &[u8], body: &[u8], keep: &[u64]) -> u64 {
    use std::arch::x86_64::{__m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8};
    let n = (b.len().min(body.len()) / 64).min(keep.len());
    let (p, q) = (
        b.as_ptr().cast::<__m256i>(),
        body.as_ptr().cast::<__m256i>(),
    );
    let mut acc = 0;
    for (k, keep) in keep[..n].iter().enumerate() {
        // SAFETY: `k < n`: the four 32-byte reads are inside their slices (unaligned loads).
        let (x0, y0, x1, y1) = unsafe {
            (
                _mm256_loadu_si256(p.add(2 * k)),
                _mm256_loadu_si256(q.add(2 * k)),
                _mm256_loadu_si256(p.add(2 * k + 1)),
                _mm256_loadu_si256(q.add(2 * k + 1)),
            )
        };
        let lo = _mm256_movemask_epi8(_mm256_cmpeq_epi8(x0, y0)) as u32;
        let hi = _mm256_movemask_epi8(_mm256_cmpeq_epi8(x1, y1)) as u32;
        acc |= !(u64::from(lo) | u64::from(hi) << 32) & keep;
    }
    let (b, body) = (
        b.get(64 * n..).unwrap_or(&[]),
        body.get(64 * n..).unwrap_or(&[]),
    );
    acc | differs_chunks(b, body, &keep[n..])
}

/// [`differs`] without vectors: eight bytes at a time.
fn differs_chunks(b: &[u8], body: &[u8], keep: &[u64]) -> u64 {
    let mut acc = 0;
    for ((x, y), keep) in b.chunks(64).zip(body.chunks(64)).zip(keep) {
        let ne = x
            .chunks(8)
            .zip(y.chunks(8))
            .enumerate()
            .fold(0, |ne, (j, (x, y))| {
                ne | ne_bytes(padded(x) ^ padded(y)) << (8 * j)
            });
        acc |= ne & keep;
    }
    acc
}

/// Up to eight bytes as a little-endian word, zeros after them.
fn padded(c: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..c.len().min(8)].copy_from_slice(&c[..c.len().min(8)]);
    u64::from_le_bytes(w)
}

/// One bit per byte of `d` (bit `j` for byte `j`), set where that byte is not zero.
fn ne_bytes(d: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // The high bit of each byte: set when the byte is not zero (adding 0x7f to its low seven
    // bits carries into it unless they are all zero; no carry crosses bytes).
    let high = (((d & LOW7) + LOW7) | d) & !LOW7;
    // Gathers the eight high bits (bit 8j + 7 -> bit j) into the top byte, then down.
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

impl Skeleton {
    #[cfg(test)]
    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether `b` is this body with changes only inside the free ranges.
    fn matches(&self, b: &[u8]) -> bool {
        b.len() == self.body.len() && differs(b, &self.body, &self.keep) == 0
    }

    /// Whether every metric's series are the ones the cache has named last.
    fn named(&self, names: &NameCache) -> bool {
        self.blocks
            .iter()
            .flat_map(|b| &b.metrics)
            .filter(|m| !m.points.is_empty())
            .all(|m| {
                names
                    .shapes
                    .get(&m.mkey)
                    .is_some_and(|s| s.list.keys == m.keys)
            })
    }

    fn emit_all(
        &self,
        body: &[u8],
        names: &mut NameCache,
        sender: SoleSender,
    ) -> R<Vec<ResourceSummary>> {
        let mut out = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            names.resource(sender, &b.identity);
            let mut s = ResourceSummary {
                identity: b.identity.clone(),
                metrics: Vec::with_capacity(b.metrics.len()),
                ..Default::default()
            };
            for m in &b.metrics {
                let mut points = names.spare.pop().unwrap_or_default();
                points.extend(m.points.iter().map(|p| p.read(body)));
                names.keys.clear();
                names.keys.extend_from_slice(&m.keys);
                let read = Read {
                    mkey: m.mkey,
                    name: &m.name,
                    kind: m.kind,
                    temporality: m.temporality,
                    monotonic: m.monotonic,
                };
                emit(&read, points, &mut s, names, None)?;
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// The summary of `body` from the connection's skeleton, when `body` is its last one with
/// other values (None: walk it in full).
pub(super) fn replay(
    body: &[u8],
    names: &mut NameCache,
    sender: SoleSender,
) -> Option<R<Vec<ResourceSummary>>> {
    let mut sk = names.skeleton.take()?;
    if !sk.matches(body) {
        return None;
    }
    if sk.named_at != Some(names.shapes_made) {
        if !sk.named(names) {
            return None;
        }
        sk.named_at = Some(names.shapes_made);
    }
    let r = sk.emit_all(body, names, sender);
    names.skeleton = Some(sk);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte changed in turn, for every tail length: a change matches exactly when it is
    /// inside a free range, whichever loop checks (the vector one on a CPU that has it).
    #[test]
    fn a_body_matches_when_only_its_free_bytes_changed() {
        for len in (0..80usize).chain([127, 128, 129, 200]) {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let free = [(len / 4, len / 3), (len / 2, len / 2 + 3)];
            let mut rec = Recorder::new(&body).unwrap();
            for (s, e) in free {
                rec.free(s, e.min(len));
            }
            let sk = rec.finish(&body);
            assert!(sk.matches(&body));
            assert!(!sk.matches(&body[..len.saturating_sub(1)]) || len == 0);
            for i in 0..len {
                let mut b = body.clone();
                b[i] ^= 0x5a;
                let inside = free.iter().any(|&(s, e)| s <= i && i < e.min(len));
                assert_eq!(sk.matches(&b), inside, "len {len}, byte {i}");
                let words = differs_chunks(&b, &sk.body, &sk.keep) == 0;
                assert_eq!(words, inside, "len {len}, byte {i} (words)");
            }
        }
    }

    #[test]
    fn ne_bytes_sets_one_bit_per_byte_that_is_not_zero() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Zero some bytes, so that every mix of zero and non-zero bytes comes up.
            let d = x & padded(
                &(x >> 8)
                    .to_le_bytes()
                    .map(|b| if b & 1 == 0 { 0 } else { 0xff }),
            );
            let want = (0..8).fold(0, |m, j| m | u64::from((d >> (8 * j)) & 0xff != 0) << j);
            assert_eq!(ne_bytes(d), want, "{d:#x}");
        }
        assert_eq!(ne_bytes(0), 0);
        assert_eq!(ne_bytes(u64::MAX), 0xff);
        assert_eq!(ne_bytes(0x80), 1);
        assert_eq!(ne_bytes(0x0100_0000_0000_0000), 0x80);
    }
}
