//! Where a kept JSON metrics body's changeable tokens are (see [`super::replay`]): a small
//! scanner over a body the full reader took, following the path to each point's fields.

/// How a token is read: the full reader's type for its field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Read {
    U64,
    I64,
    F64,
    /// An f64 whose value is not kept: only whether the full reader takes it matters.
    F64Checked,
}

/// What a token looks like in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Shape {
    Number,
    /// Without escapes.
    String,
    /// A histogram's `bucketCounts` (checked only).
    List,
}

/// What a token sets in the summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Sets {
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
pub(super) struct Slot {
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) shape: Shape,
    pub(super) read: Read,
    pub(super) sets: Sets,
    pub(super) resource: u32,
    pub(super) metric: u32,
    pub(super) point: u32,
}

/// The end of the plain string token at `i` (no escapes: those are read in full).
pub(super) fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let len = memchr::memchr2(b'"', b'\\', &b[i + 1..])?;
    (b[i + 1 + len] == b'"').then_some(i + len + 2)
}

/// The end of the list at `i`: its first `]` (a list cut short there is refused when read).
pub(super) fn list_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    Some(i + memchr::memchr(b']', &b[i..])? + 1)
}

/// The end of the number token at `i`: every byte a number may hold (what is not a number is
/// refused when it is read).
pub(super) fn number_end(b: &[u8], i: usize) -> Option<usize> {
    let len = b[i..]
        .iter()
        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(b.len() - i);
    (len > 0).then_some(i + len)
}

/// Where a body's changeable tokens are, in order; None when the body has a shape the scanner
/// does not follow (it is then read in full every time).
pub(super) fn scan(body: &[u8]) -> Option<Vec<Slot>> {
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
        match end {
            Some(end) => self.slot(start, end, shape, read, sets),
            None => self.skip(),
        }
    }

    /// A histogram's bucket counts: one token for the whole list (null stays structure).
    fn counts(&mut self) -> Option<()> {
        let start = self.i;
        match list_end(self.b, start) {
            Some(end) => self.slot(start, end, Shape::List, Read::U64, Sets::Nothing),
            None => self.skip(),
        }
    }

    /// Notes the token at `start..end` of the point being scanned, and moves past it.
    fn slot(
        &mut self,
        start: usize,
        end: usize,
        shape: Shape,
        read: Read,
        sets: Sets,
    ) -> Option<()> {
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
