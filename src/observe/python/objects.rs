//! CPython 3.8-3.13 object layouts (64-bit, GIL builds) and parsers for the bytes read from
//! another process: thread states, dicts and their keys, str and int objects.
//!
//! The offsets were taken with `offsetof` from each version's own headers (`Py_BUILD_CORE`,
//! pyenv 3.8.18 ... 3.13.0); they hold for every patch release of a minor version, which is
//! what py-spy's bindings assume too. Each read is checked (a thread state names its
//! interpreter, objects name their types) so a wrong layout is an error, never a wrong name.

/// What differs between minor versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub minor: u8,
    /// `_PyRuntime.interpreters.head`: the main interpreter.
    pub runtime_interp_head: u64,
    /// `PyInterpreterState.modules` / `.imports.modules` (3.12+): `sys.modules`.
    pub interp_modules: u64,
    /// `PyInterpreterState.tstate_head` (3.8-3.10) / `.threads.head` (3.11+).
    pub interp_tstate_head: u64,
    pub tstate_thread_id: usize,
    /// `PyThreadState.native_thread_id`, 3.11+ only.
    pub tstate_native_id: Option<usize>,
    pub tstate_size: usize,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_size: usize,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's start.
    pub compact_size: usize,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys shared by a class's instance dicts.
    pub ht_cached_keys: usize,
}

/// Same in every supported version.
pub const TSTATE_NEXT: usize = 8;
pub const TSTATE_INTERP: usize = 16;
pub const OB_TYPE: usize = 8;
pub const DICT_SIZE: usize = 48;
const DICT_KEYS: usize = 32;
const DICT_VALUES: usize = 40;
pub const TYPE_BASICSIZE: usize = 32;
pub const TYPE_FLAGS: usize = 168;
pub const TYPE_DICTOFFSET: usize = 288;
pub const MODULE_DICT: usize = 16;
pub const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
pub const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// Longest thread name read (py-spy's bound too).
const MAX_STR_CHARS: usize = 4096;

pub fn offsets(major: u64, minor: u64) -> Option<Offsets> {
    let o = |minor, (rt, modules), head, tid, native, size, ascii, compact, cached| Offsets {
        minor,
        runtime_interp_head: rt,
        interp_modules: modules,
        interp_tstate_head: head,
        tstate_thread_id: tid,
        tstate_native_id: native,
        tstate_size: size,
        ascii_size: ascii,
        compact_size: compact,
        ht_cached_keys: cached,
    };
    match (major, minor) {
        (3, 8) => Some(o(8, (32, 56), 8, 176, None, 264, 48, 72, 872)),
        (3, 9) => Some(o(9, (32, 856), 8, 176, None, 264, 48, 72, 864)),
        (3, 10) => Some(o(10, (32, 856), 8, 176, None, 280, 48, 72, 872)),
        (3, 11) => Some(o(11, (40, 888), 16, 152, Some(160), 360, 48, 72, 872)),
        (3, 12) => Some(o(12, (40, 944), 72, 136, Some(144), 288, 40, 56, 880)),
        // 3.13's own `_Py_DebugOffsets` (see [`debug_offsets`]) override these.
        (3, 13) => Some(o(13, (632, 7656), 7344, 152, Some(160), 304, 40, 56, 880)),
        _ => None,
    }
}

/// Bytes of 3.13's `_Py_DebugOffsets` (at the start of `_PyRuntime`) that [`debug_offsets`]
/// reads: cookie, version, free_threaded, then the runtime, interpreter and thread state parts.
pub const DEBUG_OFFSETS_SIZE: usize = 208;

/// 3.13+: the interpreter describes its own layout at the start of `_PyRuntime`, so patch
/// releases that move fields are read right. Returns the offsets and `PY_VERSION_HEX`.
pub fn debug_offsets(o: &Offsets, b: &[u8]) -> Option<(Offsets, u64)> {
    if b.get(..8)? != b"xdebugpy" || u64_at(b, 16)? != 0 {
        // Not the table, or a free-threaded build (other object layouts).
        return None;
    }
    let (next, interp) = (u64_at(b, 168)?, u64_at(b, 176)?);
    if (next, interp) != (TSTATE_NEXT as u64, TSTATE_INTERP as u64) {
        return None;
    }
    let out = Offsets {
        runtime_interp_head: u64_at(b, 40)?,
        interp_tstate_head: u64_at(b, 72)?,
        interp_modules: u64_at(b, 88)?,
        tstate_size: usize::try_from(u64_at(b, 152)?).ok()?.min(4096),
        tstate_thread_id: usize::try_from(u64_at(b, 192)?).ok()?,
        tstate_native_id: Some(usize::try_from(u64_at(b, 200)?).ok()?),
        ..*o
    };
    let fits = |at: usize| at.checked_add(8).is_some_and(|end| end <= out.tstate_size);
    (fits(out.tstate_native_id?) && fits(out.tstate_thread_id)).then_some((out, u64_at(b, 8)?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    u64_at(b, at).map(|v| v as i64)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One thread state: (its `next`, `thread_id`, `native_thread_id`), if it names `interp`.
pub fn parse_tstate(o: &Offsets, b: &[u8], interp: u64) -> Option<(u64, u64, Option<i64>)> {
    if u64_at(b, TSTATE_INTERP)? != interp {
        return None;
    }
    let native = match o.tstate_native_id {
        Some(at) => Some(i64_at(b, at)?),
        None => None,
    };
    Some((
        u64_at(b, TSTATE_NEXT)?,
        u64_at(b, o.tstate_thread_id)?,
        native,
    ))
}

/// A dict object: (type, `ma_keys`, `ma_values`).
pub fn parse_dict(b: &[u8]) -> Option<(u64, u64, u64)> {
    Some((
        u64_at(b, OB_TYPE)?,
        u64_at(b, DICT_KEYS)?,
        u64_at(b, DICT_VALUES)?,
    ))
}

/// Where the entries of a dict keys object are, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// Entries start this far from the keys object.
    pub entries_at: usize,
    pub nentries: usize,
    pub entry_size: usize,
    /// Key and value within an entry.
    pub key_at: usize,
    pub value_at: usize,
}

/// Bytes of a keys object header that [`parse_keys`] needs.
pub const KEYS_HEADER: usize = 40;

impl Keys {
    /// Bytes from the keys object's start to the end of its entries.
    pub fn bytes(&self) -> usize {
        self.entries_at + self.nentries * self.entry_size
    }

    /// (key, value) of entry `i` in the bytes of the whole keys object.
    pub fn entry(&self, b: &[u8], i: usize) -> Option<(u64, u64)> {
        let at = self.entries_at + i * self.entry_size;
        Some((u64_at(b, at + self.key_at)?, u64_at(b, at + self.value_at)?))
    }

    /// Address of entry `i`, for a keys object at `addr`.
    pub fn entry_addr(&self, addr: u64, i: usize) -> u64 {
        addr.wrapping_add((self.entries_at + i * self.entry_size) as u64)
    }
}

pub fn parse_keys(o: &Offsets, b: &[u8]) -> Option<Keys> {
    let general = Keys {
        entries_at: 0,
        nentries: 0,
        entry_size: 24,
        key_at: 8,
        value_at: 16,
    };
    let keys = if o.minor <= 10 {
        // dk_refcnt, dk_size, dk_lookup, dk_usable, dk_nentries, dk_indices[]
        let size = u64_at(b, 8)?;
        if !size.is_power_of_two() || size > 1 << 24 {
            return None;
        }
        let index_bytes = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            _ => 4,
        };
        Keys {
            entries_at: 40 + size as usize * index_bytes,
            nentries: u64_at(b, 32)? as usize,
            ..general
        }
    } else {
        // dk_refcnt, dk_log2_size, dk_log2_index_bytes, dk_kind, dk_version, dk_usable,
        // dk_nentries, dk_indices[]; kind 0 (general) entries carry the hash
        let log2_index_bytes = *b.get(9)? as u32;
        if log2_index_bytes > 27 {
            return None;
        }
        let entries_at = 32 + (1usize << log2_index_bytes);
        let nentries = u64_at(b, 24)? as usize;
        if *b.get(10)? == 0 {
            Keys {
                entries_at,
                nentries,
                ..general
            }
        } else {
            Keys {
                entries_at,
                nentries,
                entry_size: 16,
                key_at: 0,
                value_at: 8,
            }
        }
    };
    (keys.nentries <= 1 << 22).then_some(keys)
}

/// Slot `ix` of a split dict's values array at `values`.
pub fn value_slot(o: &Offsets, values: u64, ix: usize) -> u64 {
    // 3.13's PyDictValues has four bytes of header (capacity, size, embedded, valid).
    let header = if o.minor >= 13 { 8 } else { 0 };
    values.wrapping_add(header + 8 * ix as u64)
}

/// A str object's header: (type, characters, bytes per character, where they start). Only
/// compact strings (all that Python code creates since 3.3).
pub fn parse_str_header(o: &Offsets, b: &[u8]) -> Option<(u64, usize, usize, usize)> {
    let ty = u64_at(b, OB_TYPE)?;
    let len = u64_at(b, 16)? as usize;
    let state = u32_at(b, 32)?;
    let kind = ((state >> 2) & 7) as usize;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !matches!(kind, 1 | 2 | 4) || len > MAX_STR_CHARS {
        return None;
    }
    let data_at = if ascii { o.ascii_size } else { o.compact_size };
    Some((ty, len, kind, data_at))
}

/// The characters of a string whose header [`parse_str_header`] read, from the object's bytes.
pub fn decode_str(b: &[u8], len: usize, kind: usize, data_at: usize) -> Option<String> {
    let data = b.get(data_at..data_at + len * kind)?;
    match kind {
        1 => Some(data.iter().map(|&c| c as char).collect()),
        2 => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    }
}

/// Bytes to read for an int of up to 64 bits (three 30-bit digits).
pub const LONG_SIZE: usize = 36;

/// A non-negative int object of up to 64 bits: (type, value).
pub fn parse_long(o: &Offsets, b: &[u8]) -> Option<(u64, u64)> {
    let ty = u64_at(b, OB_TYPE)?;
    let ndigits = if o.minor >= 12 {
        // lv_tag: digit count << 3 | sign (0 positive, 1 zero, 2 negative)
        let tag = u64_at(b, 16)?;
        match tag & 3 {
            1 => return Some((ty, 0)),
            0 => (tag >> 3) as usize,
            _ => return None,
        }
    } else {
        // ob_size: digit count, negative for negative numbers
        usize::try_from(i64_at(b, 16)?).ok()?
    };
    if ndigits > 3 {
        return None;
    }
    let mut v: u128 = 0;
    for i in 0..ndigits {
        v |= (u32_at(b, 24 + 4 * i)? as u128 & 0x3fff_ffff) << (30 * i);
    }
    Some((ty, u64::try_from(v).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn ints_of_both_layouts() {
        let ident: u64 = 0x7f3a_1c2b_3640;
        let digits = [
            ident & 0x3fff_ffff,
            (ident >> 30) & 0x3fff_ffff,
            ident >> 60,
        ];
        let mut b = vec![0u8; LONG_SIZE];
        put(&mut b, OB_TYPE, 0xabc);
        put(&mut b, 16, 2); // 3.8-3.11: two digits
        for (i, d) in digits.iter().enumerate() {
            b[24 + 4 * i..28 + 4 * i].copy_from_slice(&(*d as u32).to_ne_bytes());
        }
        let o11 = offsets(3, 11).unwrap();
        assert_eq!(parse_long(&o11, &b), Some((0xabc, ident)));
        put(&mut b, 16, (-2i64) as u64);
        assert_eq!(parse_long(&o11, &b), None, "negative");
        let o12 = offsets(3, 12).unwrap();
        put(&mut b, 16, 2 << 3);
        assert_eq!(parse_long(&o12, &b), Some((0xabc, ident)));
        put(&mut b, 16, 1);
        assert_eq!(parse_long(&o12, &b), Some((0xabc, 0)));
        put(&mut b, 16, (2 << 3) | 2);
        assert_eq!(parse_long(&o12, &b), None);
    }

    #[test]
    fn strings_of_each_kind() {
        let o = offsets(3, 12).unwrap();
        let mut b = vec![0u8; 80];
        put(&mut b, OB_TYPE, 0x55);
        put(&mut b, 16, 5);
        b[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_ne_bytes());
        b[40..45].copy_from_slice(b"_name");
        let (ty, len, kind, at) = parse_str_header(&o, &b).unwrap();
        assert_eq!((ty, len, kind, at), (0x55, 5, 1, 40));
        assert_eq!(decode_str(&b, len, kind, at).as_deref(), Some("_name"));
        // UCS-2, not ASCII: characters after the compact header
        b[32..36].copy_from_slice(&((2u32 << 2) | (1 << 5)).to_ne_bytes());
        put(&mut b, 16, 2);
        b[56..58].copy_from_slice(&0x00e9u16.to_ne_bytes());
        b[58..60].copy_from_slice(&0x0431u16.to_ne_bytes());
        let (_, len, kind, at) = parse_str_header(&o, &b).unwrap();
        assert_eq!(
            decode_str(&b, len, kind, at).as_deref(),
            Some("\u{e9}\u{431}")
        );
        // not compact: refused
        b[32..36].copy_from_slice(&(1u32 << 2).to_ne_bytes());
        assert_eq!(parse_str_header(&o, &b), None);
    }

    #[test]
    fn keys_headers() {
        let mut b = vec![0u8; KEYS_HEADER];
        put(&mut b, 8, 8); // dk_size 8: 1-byte indices
        put(&mut b, 32, 3);
        let k = parse_keys(&offsets(3, 9).unwrap(), &b).unwrap();
        assert_eq!((k.entries_at, k.nentries, k.entry_size), (48, 3, 24));
        assert_eq!(k.bytes(), 48 + 72);
        let mut b = vec![0u8; KEYS_HEADER];
        b[8] = 3; // log2 size
        b[9] = 3; // 8 bytes of indices
        b[10] = 1; // unicode keys: (key, value) entries
        put(&mut b, 24, 4);
        let k = parse_keys(&offsets(3, 13).unwrap(), &b).unwrap();
        assert_eq!(
            (k.entries_at, k.nentries, k.entry_size, k.key_at),
            (40, 4, 16, 0)
        );
        b[10] = 0;
        let k = parse_keys(&offsets(3, 13).unwrap(), &b).unwrap();
        assert_eq!((k.entry_size, k.key_at, k.value_at), (24, 8, 16));
        assert_eq!(value_slot(&offsets(3, 13).unwrap(), 1000, 2), 1024);
        assert_eq!(value_slot(&offsets(3, 11).unwrap(), 1000, 2), 1016);
    }
}
