//! Python thread names in a handful of `process_vm_readv` calls per process.
//!
//! Two chains advance together, one read each per call: the interpreter's thread states (a
//! linked list: `thread_id`, and on 3.11+ `native_thread_id`), and `threading._active` (ident
//! -> Thread object -> its `_name`), where every thread's reads of one step share one call.
//! What the layout makes knowable is found once per address-space layout ([`Known`]) and holds
//! in every fork of that process: where `_active` sits in the `threading` module's dict, each
//! Thread class's shape and the slot of `_name` in its shared keys, the interned `"_name"`.
//! A cache miss (a class first seen in a worker, a dict that stopped sharing keys) is read on
//! the spot, at the cost of a few more calls.

use std::collections::HashMap;

use super::known::{Entry, Known, Reads, TypeInfo};
use super::objects::{self as obj, Offsets};
use crate::proc::mem::{MemError, Memory};

type Got = Vec<Option<Vec<u8>>>;

/// A Python thread as the interpreter's thread state and `threading._active` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawThread {
    pub thread_id: u64,
    pub native_id: Option<i64>,
    pub name: Option<String>,
}

/// One Thread object of `_active`, on its way to a name.
#[derive(Debug, Clone)]
enum Item {
    /// The ident (an int), and the object with what precedes and follows it.
    Start {
        key: u64,
        obj: u64,
    },
    Dict {
        ident: u64,
        addr: u64,
    },
    Slot {
        ident: u64,
        addr: u64,
    },
    /// `guess`: the first read, of a usual name's size; a miss is read exactly.
    Str {
        ident: u64,
        addr: u64,
        len: usize,
        guess: bool,
    },
    Done {
        ident: u64,
        name: Option<String>,
    },
}

/// Bytes read before a Thread object: 3.11+ keep the dict (and values) pointers there.
fn pre(o: &Offsets) -> u64 {
    if o.minor >= 11 {
        32
    } else {
        0
    }
}

/// Bytes read from the object on: enough to reach the dict pointer or, on 3.13, the usual
/// class's `_name` slot in the inline values.
fn post(k: &Known) -> usize {
    match (k.o.minor, k.usual) {
        (..=10, Some(t)) if t.dictoffset > 0 => (t.dictoffset as usize + 8).max(16),
        (
            13..,
            Some(TypeInfo {
                ix: Some(ix),
                basicsize,
                ..
            }),
        ) => basicsize as usize + 16 + 8 * ix,
        _ => 24,
    }
}

impl Item {
    fn ident(&self) -> u64 {
        match *self {
            Item::Start { .. } => 0,
            Item::Dict { ident, .. }
            | Item::Slot { ident, .. }
            | Item::Str { ident, .. }
            | Item::Done { ident, .. } => ident,
        }
    }

    fn want(&self, k: &Known) -> Reads {
        let p = pre(&k.o);
        match *self {
            Item::Start { key, obj } => {
                vec![
                    (key, obj::LONG_SIZE),
                    (obj.wrapping_sub(p), p as usize + post(k)),
                ]
            }
            Item::Dict { addr, .. } => vec![(addr, obj::DICT_SIZE)],
            Item::Slot { addr, .. } => vec![(addr, 8)],
            Item::Str { addr, len, .. } => vec![(addr, len)],
            Item::Done { .. } => Vec::new(),
        }
    }

    /// Takes this step's reads; cache misses are read on the spot.
    fn feed(&mut self, got: Got, k: &mut Known, m: &mut Memory) -> Result<(), MemError> {
        let ident = self.ident();
        let none = Item::Done { ident, name: None };
        let mut got = got.into_iter().map(Option::unwrap_or_default);
        *self = match *self {
            Item::Start { obj, .. } => {
                let ident = obj::parse_long(&k.o, &got.next().unwrap_or_default());
                let window = got.next().unwrap_or_default();
                match ident {
                    Some((_, ident)) if !window.is_empty() => {
                        after_object(k, m, ident, obj, &window)?
                    }
                    _ => none,
                }
            }
            Item::Dict { .. } => {
                match obj::parse_dict(&got.next().unwrap_or_default()) {
                    Some((ty, keys, values)) if ty == k.dict_type && values != 0 => {
                        match k.split_index(m, keys)? {
                            Some(ix) => Item::Slot {
                                ident,
                                addr: obj::value_slot(&k.o, values, ix),
                            },
                            None => none,
                        }
                    }
                    Some((ty, keys_addr, _)) if ty == k.dict_type => {
                        // A combined table: the entry whose key is the interned "_name".
                        match k.read_keys(m, keys_addr)? {
                            Some(keys) => match k.index_of(m, &keys, "_name")? {
                                Some(i) => Item::Slot {
                                    ident,
                                    addr: keys
                                        .0
                                        .entry_addr(keys_addr, i)
                                        .wrapping_add(keys.0.value_at as u64),
                                },
                                None => none,
                            },
                            None => none,
                        }
                    }
                    _ => none,
                }
            }
            Item::Slot { .. } => match obj::u64_at(&got.next().unwrap_or_default(), 0) {
                Some(addr) if addr != 0 => str_guess(ident, addr, k),
                _ => none,
            },
            Item::Str {
                addr, len, guess, ..
            } => {
                let b = got.next().unwrap_or_default();
                match obj::parse_str_header(&k.o, &b) {
                    Some((ty, ..)) if k.str_type != 0 && ty != k.str_type => none,
                    Some((_, n, kind, at)) if b.len() >= at + n * kind => Item::Done {
                        ident,
                        name: obj::decode_str(&b, n, kind, at),
                    },
                    // Longer than the first read: read it exactly (once).
                    Some((_, n, kind, at)) if len != at + n * kind => Item::Str {
                        ident,
                        addr,
                        len: at + n * kind,
                        guess: false,
                    },
                    // The guess ran past readable memory: the header alone, then the rest.
                    None if b.is_empty() && guess => Item::Str {
                        ident,
                        addr,
                        len: k.o.compact_size,
                        guess: false,
                    },
                    _ => none,
                }
            }
            Item::Done { .. } => return Ok(()),
        };
        Ok(())
    }
}

/// A name's first read: header and up to 48 ASCII characters.
fn str_guess(ident: u64, addr: u64, k: &Known) -> Item {
    Item::Str {
        ident,
        addr,
        len: k.o.ascii_size + 48,
        guess: true,
    }
}

/// Next step for a Thread object, from the window read around it.
fn after_object(
    k: &mut Known,
    m: &mut Memory,
    ident: u64,
    objaddr: u64,
    w: &[u8],
) -> Result<Item, MemError> {
    let none = Item::Done { ident, name: None };
    let p = pre(&k.o) as usize;
    let Some(ty) = obj::u64_at(w, p + obj::OB_TYPE) else {
        return Ok(none);
    };
    let Some(t) = k.type_info(m, ty)? else {
        return Ok(none);
    };
    if k.usual.is_none() {
        k.usual = Some(t);
    }
    let at = |off: i64| obj::u64_at(w, (p as i64 + off) as usize);
    let slot = |values: u64, ix: usize| Item::Slot {
        ident,
        addr: obj::value_slot(&k.o, values, ix),
    };
    let dict = match (k.o.minor, t.ix) {
        (..=10, _) if t.dictoffset > 0 => match at(t.dictoffset) {
            Some(d) => d,
            None => {
                let b = m.read_one(objaddr.wrapping_add(t.dictoffset as u64), 8)?;
                b.and_then(|b| obj::u64_at(&b, 0)).unwrap_or(0)
            }
        },
        (..=10, _) => 0,
        // values pointer, then dict pointer, before the object
        (11, Some(ix)) if at(-32).is_some_and(|v| v != 0) => {
            return Ok(slot(at(-32).unwrap_or(0), ix))
        }
        (11, _) => at(-24).unwrap_or(0),
        // one tagged pointer: values when odd (stored minus one)
        (12, Some(ix)) if at(-24).is_some_and(|v| v & 1 == 1) => {
            return Ok(slot(at(-24).unwrap_or(0).wrapping_add(1), ix))
        }
        (12, _) => at(-24).filter(|v| v & 1 == 0).unwrap_or(0),
        // 3.13: the dict pointer when materialised, else values inline after the object
        (_, Some(ix)) if at(-24) == Some(0) && t.flags & obj::TPFLAGS_INLINE_VALUES != 0 => {
            let values = t.basicsize as usize;
            let need = 8 + 8 * (ix + 1);
            let v = match w.get(p + values..p + values + need) {
                Some(v) => Some(v.to_vec()),
                None => m.read_one(objaddr.wrapping_add(values as u64), need)?,
            };
            // `valid` (fourth byte of the header) is cleared when a dict took the values over.
            return Ok(match v {
                Some(v) if v.get(3) == Some(&1) => match obj::u64_at(&v, 8 + 8 * ix) {
                    Some(addr) if addr != 0 => str_guess(ident, addr, k),
                    _ => none,
                },
                _ => none,
            });
        }
        _ => at(-24).unwrap_or(0),
    };
    Ok(if dict == 0 {
        none
    } else {
        Item::Dict { ident, addr: dict }
    })
}

/// The names side: `_active`'s entry in `threading`'s dict, `_active` itself, its keys, then
/// one item per thread.
enum Names {
    Entry(Entry),
    Dict(u64),
    Keys(u64, usize),
    Items(Vec<Item>),
    Done(HashMap<u64, Option<String>>),
}

impl Names {
    fn want(&self, k: &Known) -> (Reads, Vec<usize>) {
        match self {
            Names::Entry(e) => (vec![(e.addr, e.size)], Vec::new()),
            Names::Dict(d) => (vec![(*d, obj::DICT_SIZE)], Vec::new()),
            Names::Keys(a, len) => (vec![(*a, *len)], Vec::new()),
            Names::Items(items) => {
                let mut reads = Vec::new();
                let mut per = Vec::new();
                for it in items {
                    let w = it.want(k);
                    per.push(w.len());
                    reads.extend(w);
                }
                (reads, per)
            }
            Names::Done(_) => (Vec::new(), Vec::new()),
        }
    }

    fn feed(
        self,
        got: Got,
        per: Vec<usize>,
        k: &mut Known,
        m: &mut Memory,
    ) -> Result<Names, MemError> {
        let off = || Names::Done(HashMap::new());
        let mut got = got.into_iter();
        let first = got.next().flatten().unwrap_or_default();
        Ok(match self {
            Names::Entry(e) => {
                let key = obj::u64_at(&first, e.value_at - 8);
                match (key, obj::u64_at(&first, e.value_at)) {
                    (Some(key), Some(v)) if key == e.key && v != 0 => Names::Dict(v),
                    // `threading`'s dict changed since the layout was learnt: look again.
                    _ => match k.find_active(m)? {
                        Some(d) => Names::Dict(d),
                        None => off(),
                    },
                }
            }
            Names::Dict(_) => match obj::parse_dict(&first) {
                Some((ty, keys, 0)) if ty == k.dict_type => Names::Keys(keys, k.keys_guess),
                _ => off(),
            },
            Names::Keys(a, _) => {
                let keys = match obj::parse_keys(&k.o, &first) {
                    Some(keys) if keys.bytes() <= first.len() => Some((keys, first)),
                    Some(keys) => {
                        k.keys_guess = keys.bytes().next_power_of_two();
                        m.read_one(a, keys.bytes())?.map(|b| (keys, b))
                    }
                    None if first.is_empty() => k.read_keys(m, a)?,
                    None => None,
                };
                match keys {
                    Some((keys, b)) => Names::Items(
                        (0..keys.nentries)
                            .filter_map(|i| keys.entry(&b, i))
                            .filter(|&(key, value)| key != 0 && value != 0)
                            .map(|(key, obj)| Item::Start { key, obj })
                            .collect(),
                    ),
                    None => off(),
                }
            }
            Names::Items(mut items) => {
                let mut got = std::iter::once(Some(first)).chain(got);
                for (it, n) in items.iter_mut().zip(per) {
                    if n > 0 {
                        it.feed(got.by_ref().take(n).collect(), k, m)?;
                    }
                }
                if items.iter().all(|i| matches!(i, Item::Done { .. })) {
                    Names::Done(
                        items
                            .into_iter()
                            .filter_map(|i| match i {
                                Item::Done { ident, name } => Some((ident, name)),
                                _ => None,
                            })
                            .collect(),
                    )
                } else {
                    Names::Items(items)
                }
            }
            done @ Names::Done(_) => done,
        })
    }
}

/// Reads the Python threads of the process behind `m`, newest first (the interpreter's
/// order), and whether its interpreter is exiting (`threading._SHUTTING_DOWN`, 3.9+; None
/// when unknown). `Err` when the thread states cannot be read (a wrong layout, or the process
/// went away); a name is `None` where `_active` gives none (`threading` not imported, a thread
/// starting or ending).
pub fn walk(k: &mut Known, m: &mut Memory) -> Result<(Vec<RawThread>, Option<bool>), String> {
    let bad_state = "a thread state does not belong to the interpreter (torn down while read)";
    // Thread-state chain: None before the head is read, Some(0) at its end.
    let mut at: Option<u64> = None;
    let mut threads: Vec<RawThread> = Vec::new();
    let mut names = match k.active {
        Some(e) => Names::Entry(e),
        None => match k.find_active(m).map_err(|e| e.to_string())? {
            Some(d) => Names::Dict(d),
            None => Names::Done(HashMap::new()),
        },
    };
    // Read with the first thread-state pointer: no call of its own.
    let shutting = k.shutting.zip(k.py_true);
    let mut exiting = None;
    loop {
        let mut reads: Reads = match at {
            None => vec![(k.interp.wrapping_add(k.o.interp_tstate_head), 8)],
            Some(0) => Vec::new(),
            Some(a) => vec![(a, k.o.tstate_size)],
        };
        let chain = reads.len();
        let flag = match (at, shutting) {
            (None, Some((e, _))) => {
                reads.push((e.addr, e.size));
                1
            }
            _ => 0,
        };
        let (more, per) = names.want(k);
        reads.extend(more);
        if reads.is_empty() {
            break;
        }
        let mut got = m.read(&reads).map_err(|e| e.to_string())?;
        let rest = got.split_off(chain + flag);
        if let (1, Some((e, py_true))) = (flag, shutting) {
            let b = got.pop().flatten().unwrap_or_default();
            exiting = shutting_down(&b, e, py_true);
        }
        if let Some(b) = got.pop() {
            let b = b.unwrap_or_default();
            at = match at {
                None => match obj::u64_at(&b, 0) {
                    Some(a) => Some(a),
                    None => return Err("the interpreter's thread list could not be read".into()),
                },
                _ => {
                    let Some((next, tid, native)) = obj::parse_tstate(&k.o, &b, k.interp) else {
                        return Err(bad_state.into());
                    };
                    threads.push(RawThread {
                        thread_id: tid,
                        native_id: native,
                        name: None,
                    });
                    if threads.len() > 4096 {
                        return Err("the thread state list does not end".into());
                    }
                    Some(next)
                }
            };
        }
        if !rest.is_empty() {
            names = names.feed(rest, per, k, m).map_err(|e| e.to_string())?;
        }
    }
    if let Names::Done(by_ident) = names {
        for t in threads.iter_mut() {
            t.name = by_ident.get(&t.thread_id).cloned().flatten();
        }
    }
    Ok((threads, exiting))
}

/// `threading._SHUTTING_DOWN` from its dict entry `b` (read at `e`): None when the entry no
/// longer holds that key (the dict changed since the layout was learnt).
fn shutting_down(b: &[u8], e: Entry, py_true: u64) -> Option<bool> {
    let key = obj::u64_at(b, e.value_at.checked_sub(8)?)?;
    let value = obj::u64_at(b, e.value_at)?;
    (key == e.key && value != 0).then_some(value == py_true)
}
