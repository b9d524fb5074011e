//! A bounds-checked protobuf wire reader: varints, keys, length-delimited fields and skips,
//! with errors small enough to stay in registers in the hot loops.

pub(super) type R<T> = Result<T, String>;

/// A framing error, small and Copy so the hot loops carry no String (made one at the top).
#[derive(Debug, Clone, Copy)]
pub(super) enum PbErr {
    TruncatedVarint,
    InvalidVarint,
    InvalidKey(u64),
    FieldZero,
    Underflow,
    WireType(u8),
    Expected {
        msg: Name,
        field: u32,
        wt: u8,
        want: u8,
    },
    Utf8(Name),
}

impl From<PbErr> for String {
    fn from(e: PbErr) -> String {
        match e {
            PbErr::TruncatedVarint => "truncated varint".into(),
            PbErr::InvalidVarint => "invalid varint".into(),
            PbErr::InvalidKey(k) => format!("invalid key value: {k}"),
            PbErr::FieldZero => "invalid field number: 0".into(),
            PbErr::Underflow => "buffer underflow".into(),
            PbErr::WireType(w) => format!("invalid wire type: {w}"),
            PbErr::Expected {
                msg,
                field,
                wt,
                want,
            } => format!("{msg}.{field}: invalid wire type: {wt} (expected {want})"),
            PbErr::Utf8(what) => {
                format!("{what}: invalid string value: data is not UTF-8 encoded")
            }
        }
    }
}

pub(super) type P<T> = Result<T, PbErr>;

/// A message or field name in an error: one pointer, so that [`PbErr`] (and the results of
/// the hot readers) stays two words, returned in registers.
pub(super) type Name = &'static &'static str;

pub(super) const VARINT: u8 = 0;
pub(super) const I64: u8 = 1;
pub(super) const LEN: u8 = 2;
pub(super) const I32: u8 = 5;

/// A cursor over one message's bytes.
pub(super) struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    pub(super) fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, p: 0 }
    }

    pub(super) fn more(&self) -> bool {
        self.p < self.b.len()
    }

    /// The cursor's address (for offsets within the buffer this one's bytes are part of).
    pub(super) fn at(&self) -> usize {
        self.b.as_ptr() as usize + self.p
    }

    #[inline]
    pub(super) fn varint(&mut self) -> P<u64> {
        // One byte: keys, small lengths, temporality (nearly every varint here).
        if let Some(&b) = self.b.get(self.p) {
            if b < 0x80 {
                self.p += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    pub(super) fn varint_slow(&mut self) -> P<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.b.get(self.p) else {
                return Err(PbErr::TruncatedVarint);
            };
            self.p += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(PbErr::InvalidVarint)
    }

    #[inline]
    pub(super) fn key(&mut self) -> P<(u32, u8)> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(PbErr::InvalidKey(k));
        }
        let (field, wt) = ((k >> 3) as u32, (k & 7) as u8);
        if field == 0 {
            return Err(PbErr::FieldZero);
        }
        Ok((field, wt))
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize) -> P<&'a [u8]> {
        let end = self
            .p
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(PbErr::Underflow)?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }

    #[inline]
    pub(super) fn len_delimited(&mut self) -> P<&'a [u8]> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| PbErr::Underflow)?)
    }

    #[inline]
    pub(super) fn fixed64(&mut self) -> P<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(
            s.try_into().map_err(|_| PbErr::Underflow)?,
        ))
    }

    #[inline]
    pub(super) fn skip(&mut self, wt: u8) -> P<()> {
        match wt {
            VARINT => self.varint().map(|_| ()),
            I64 => self.take(8).map(|_| ()),
            LEN => self.len_delimited().map(|_| ()),
            I32 => self.take(4).map(|_| ()),
            other => Err(PbErr::WireType(other)),
        }
    }
}

/// `wt` must be `want` for a known field, as prost requires.
#[inline]
pub(super) fn expect(field: u32, wt: u8, want: u8, msg: Name) -> P<()> {
    if wt == want {
        Ok(())
    } else {
        Err(PbErr::Expected {
            msg,
            field,
            wt,
            want,
        })
    }
}

pub(super) fn utf8(b: &[u8], what: Name) -> P<&str> {
    std::str::from_utf8(b).map_err(|_| PbErr::Utf8(what))
}

/// Identity, data points and cumulative series of every resource block of an
/// `ExportMetricsServiceRequest` body.
///
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_errors_stay_two_words() {
        assert!(std::mem::size_of::<PbErr>() <= 16);
    }
}
