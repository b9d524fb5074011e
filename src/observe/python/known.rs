//! What the interpreter's layout makes knowable once per address-space layout: where
//! `threading._active` sits in the `threading` module's dict, each Thread class's shape and the
//! slot of `_name` in its shared keys, the address of the interned `"_name"`. Forks of one
//! process share all of it. Found by reading the dicts on the way (`sys.modules`, then
//! `threading.__dict__`), each read its own call: this runs once per layout, or on a miss.

use std::collections::HashMap;

use super::objects::{self as obj, Offsets};
use crate::proc::mem::{MemError, Memory};

pub(super) type Reads = Vec<(u64, usize)>;

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub addr: u64,
    pub key: u64,
    pub value_at: usize,
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TypeInfo {
    pub flags: u64,
    pub dictoffset: i64,
    pub basicsize: u64,
    /// Slot of `_name` in the class's shared keys (3.11+).
    pub ix: Option<usize>,
}

/// What holds for every process of one address-space layout.
#[derive(Debug, Clone)]
pub struct Known {
    pub o: Offsets,
    pub interp: u64,
    /// Address of the pointer to `sys.modules`.
    pub(super) modules_at: u64,
    pub(super) active: Option<Entry>,
    /// `threading._SHUTTING_DOWN`'s entry (3.9+), and the address of `True`: set once the main
    /// thread has ended and the interpreter exits (atexit handlers, the SDK's shutdown, next).
    pub(super) shutting: Option<Entry>,
    pub(super) py_true: Option<u64>,
    pub(super) dict_type: u64,
    pub(super) str_type: u64,
    pub(super) name_key: u64,
    pub(super) types: HashMap<u64, Option<TypeInfo>>,
    pub(super) split_ix: HashMap<u64, Option<usize>>,
    pub(super) usual: Option<TypeInfo>,
    pub(super) keys_guess: usize,
}

/// What [`Known::learn`] reads of `sys`.
#[derive(Debug, Default)]
pub(super) struct Learnt {
    pub version: Option<String>,
    pub path: Vec<String>,
    /// `sys.argv`, which a process title rewrite does not touch (empty when unread).
    pub argv: Vec<String>,
}

impl Known {
    pub fn new(o: Offsets, interp: u64, modules_at: u64) -> Known {
        Known {
            o,
            interp,
            modules_at,
            active: None,
            dict_type: 0,
            str_type: 0,
            name_key: 0,
            types: HashMap::new(),
            split_ix: HashMap::new(),
            usual: None,
            keys_guess: 512,
            shutting: None,
            py_true: None,
        }
    }

    /// Reads of a keys object: header and entries, from a guess of its size.
    pub(super) fn read_keys(
        &mut self,
        m: &mut Memory,
        addr: u64,
    ) -> Result<Option<(obj::Keys, Vec<u8>)>, MemError> {
        let Some(b) = m.read_one(addr, obj::KEYS_HEADER)? else {
            return Ok(None);
        };
        let Some(k) = obj::parse_keys(&self.o, &b) else {
            return Ok(None);
        };
        Ok(m.read_one(addr, k.bytes())?.map(|b| (k, b)))
    }

    /// Index of the entry whose key is the string `want`; `"_name"` is remembered by address
    /// (attribute names are interned).
    pub(super) fn index_of(
        &mut self,
        m: &mut Memory,
        keys: &(obj::Keys, Vec<u8>),
        want: &str,
    ) -> Result<Option<usize>, MemError> {
        Ok(self.indices_of(m, keys, &[want])?[0])
    }

    /// Indices of the entries whose keys are the strings `wants`, reading the keys' strings in
    /// one call.
    fn indices_of(
        &mut self,
        m: &mut Memory,
        keys: &(obj::Keys, Vec<u8>),
        wants: &[&str],
    ) -> Result<Vec<Option<usize>>, MemError> {
        let (k, b) = keys;
        let entries: Vec<(usize, u64)> = (0..k.nentries)
            .filter_map(|i| k.entry(b, i).map(|(key, _)| (i, key)))
            .filter(|(_, key)| *key != 0)
            .collect();
        let mut out = vec![None; wants.len()];
        if wants == ["_name"] && self.name_key != 0 {
            out[0] = entries
                .iter()
                .find(|(_, key)| *key == self.name_key)
                .map(|(i, _)| *i);
            return Ok(out);
        }
        let longest = wants.iter().map(|w| w.len()).max().unwrap_or(0);
        let len = self.o.compact_size + longest * 4;
        let got = m.read(
            &entries
                .iter()
                .map(|(_, key)| (*key, len))
                .collect::<Reads>(),
        )?;
        for ((i, key), b) in entries.iter().zip(got) {
            let Some(b) = b else { continue };
            let Some((ty, n, kind, at)) = obj::parse_str_header(&self.o, &b) else {
                continue;
            };
            let Some(text) = obj::decode_str(&b, n, kind, at) else {
                continue;
            };
            if let Some(w) = wants.iter().position(|w| *w == text) {
                self.str_type = ty;
                if text == "_name" {
                    self.name_key = *key;
                }
                out[w].get_or_insert(*i);
            }
        }
        Ok(out)
    }

    /// The entries named `wants` of the dict at `dict`: where each sits, and its value.
    pub(super) fn find(
        &mut self,
        m: &mut Memory,
        dict: u64,
        wants: &[&str],
    ) -> Result<Vec<Option<(Entry, u64)>>, MemError> {
        let none = vec![None; wants.len()];
        let Some(d) = m.read_one(dict, obj::DICT_SIZE)? else {
            return Ok(none);
        };
        let Some((ty, keys_addr, values)) = obj::parse_dict(&d) else {
            return Ok(none);
        };
        let Some(keys) = self.read_keys(m, keys_addr)? else {
            return Ok(none);
        };
        self.dict_type = ty;
        let (k, b) = &keys;
        let mut out = none;
        for (slot, i) in out.iter_mut().zip(self.indices_of(m, &keys, wants)?) {
            let Some(i) = i else { continue };
            let (key, value) = k.entry(b, i).unwrap_or_default();
            let entry = Entry {
                addr: k.entry_addr(keys_addr, i),
                key,
                value_at: k.value_at,
                size: k.entry_size,
            };
            *slot = if values != 0 {
                let v = m.read_one(obj::value_slot(&self.o, values, i), 8)?;
                v.and_then(|v| obj::u64_at(&v, 0)).map(|v| (entry, v))
            } else {
                Some((entry, value))
            };
        }
        Ok(out)
    }

    /// A pointer read from the target.
    fn pointer(m: &mut Memory, at: u64) -> Result<Option<u64>, MemError> {
        Ok(m.read_one(at, 8)?.and_then(|b| obj::u64_at(&b, 0)))
    }

    /// The `__dict__` of each module named in `names`, from `sys.modules`.
    fn module_dicts(
        &mut self,
        m: &mut Memory,
        names: &[&str],
    ) -> Result<Vec<Option<u64>>, MemError> {
        let Some(modules) = Self::pointer(m, self.modules_at)? else {
            return Ok(vec![None; names.len()]);
        };
        let mut out = Vec::new();
        for found in self.find(m, modules, names)? {
            out.push(match found {
                Some((_, module)) => {
                    Self::pointer(m, module.wrapping_add(obj::MODULE_DICT as u64))?
                }
                None => None,
            });
        }
        Ok(out)
    }

    /// The text of each str object at `addrs`: headers in one call, characters in another.
    fn read_strs(&self, m: &mut Memory, addrs: &[u64]) -> Result<Vec<Option<String>>, MemError> {
        let heads = m.read(
            &addrs
                .iter()
                .map(|a| (*a, self.o.compact_size))
                .collect::<Reads>(),
        )?;
        let shapes: Vec<Option<(usize, usize, usize)>> = heads
            .iter()
            .map(|b| {
                let (_, n, kind, at) = obj::parse_str_header(&self.o, b.as_deref()?)?;
                Some((n, kind, at))
            })
            .collect();
        let ranges: Reads = addrs
            .iter()
            .zip(&shapes)
            .map(|(a, s)| (*a, s.map_or(0, |(n, kind, at)| at + n * kind)))
            .collect();
        let full = m.read(&ranges)?;
        Ok(full
            .iter()
            .zip(&shapes)
            .map(|(b, s)| {
                let (n, kind, at) = (*s)?;
                obj::decode_str(b.as_deref()?, n, kind, at)
            })
            .collect())
    }

    /// What one read of the layout finds beyond thread names: `sys.version` (its first word,
    /// `3.11.7`), `sys.path` and `sys.argv`. Also learns where `threading._active` is.
    pub(super) fn learn(&mut self, m: &mut Memory) -> Result<Learnt, MemError> {
        let dicts = self.module_dicts(m, &["sys", "threading"])?;
        if let Some(td) = dicts[1] {
            let found = self.find(m, td, &["_active", "_SHUTTING_DOWN"])?;
            self.active = found[0].map(|(e, _)| e);
            self.shutting = found[1].map(|(e, _)| e);
        }
        let Some(sys) = dicts[0] else {
            return Ok(Learnt::default());
        };
        let found = self.find(m, sys, &["version", "path", "argv"])?;
        let mut strs = Vec::new();
        strs.extend(found[0].map(|(_, v)| v));
        // sys.path and sys.argv are lists: ob_size at 16, ob_item at 24.
        let mut counts = [0usize; 2];
        for (list, count) in [found[1], found[2]].into_iter().zip(&mut counts) {
            let Some((_, list)) = list else {
                continue;
            };
            let head = m.read_one(list, 32)?.unwrap_or_default();
            if let (Some(n), Some(items)) = (obj::u64_at(&head, 16), obj::u64_at(&head, 24)) {
                let n = n.min(1024) as usize;
                let ptrs = m.read_one(items, 8 * n)?.unwrap_or_default();
                let before = strs.len();
                strs.extend((0..n).filter_map(|i| obj::u64_at(&ptrs, 8 * i)));
                *count = strs.len() - before;
            }
        }
        let mut texts = self.read_strs(m, &strs)?.into_iter();
        let version = match found[0] {
            Some(_) => texts
                .next()
                .flatten()
                .and_then(|v| v.split_whitespace().next().map(str::to_string)),
            None => None,
        };
        let path: Vec<String> = texts.by_ref().take(counts[0]).flatten().collect();
        // Every argument or none: one that could not be read would shift the others.
        let argv: Option<Vec<String>> = texts.take(counts[1]).collect();
        Ok(Learnt {
            version,
            path,
            argv: argv.unwrap_or_default(),
        })
    }

    /// Where `threading._active` is now: `sys.modules["threading"].__dict__["_active"]`.
    pub(super) fn find_active(&mut self, m: &mut Memory) -> Result<Option<u64>, MemError> {
        let Some(td) = self.module_dicts(m, &["threading"])?[0] else {
            return Ok(None);
        };
        let found = self.find(m, td, &["_active", "_SHUTTING_DOWN"])?;
        self.active = found[0].map(|(e, _)| e);
        self.shutting = found[1].map(|(e, _)| e);
        Ok(found[0].map(|(_, v)| v))
    }

    /// A Thread class's shape, read once per class.
    pub(super) fn type_info(
        &mut self,
        m: &mut Memory,
        ty: u64,
    ) -> Result<Option<TypeInfo>, MemError> {
        if let Some(t) = self.types.get(&ty) {
            return Ok(*t);
        }
        let b = m.read_one(ty, self.o.ht_cached_keys + 8)?;
        let read = b.and_then(|b| {
            let info = TypeInfo {
                flags: obj::u64_at(&b, obj::TYPE_FLAGS)?,
                dictoffset: obj::i64_at(&b, obj::TYPE_DICTOFFSET)?,
                basicsize: obj::u64_at(&b, obj::TYPE_BASICSIZE)?,
                ix: None,
            };
            // A class's shape, or a misread: nothing a Thread class has is this large.
            let sane = info.basicsize <= 1 << 16 && info.dictoffset.unsigned_abs() <= 1 << 16;
            sane.then_some((info, obj::u64_at(&b, self.o.ht_cached_keys)?))
        });
        let info = match read {
            Some((mut t, cached)) => {
                if self.o.minor >= 11 && t.flags & obj::TPFLAGS_MANAGED_DICT != 0 && cached != 0 {
                    t.ix = self.split_index(m, cached)?;
                }
                Some(t)
            }
            None => None,
        };
        self.types.insert(ty, info);
        Ok(info)
    }

    /// Slot of `_name` in shared keys, read once per keys object.
    pub(super) fn split_index(
        &mut self,
        m: &mut Memory,
        keys: u64,
    ) -> Result<Option<usize>, MemError> {
        if let Some(ix) = self.split_ix.get(&keys) {
            return Ok(*ix);
        }
        let ix = match self.read_keys(m, keys)? {
            Some(k) => self.index_of(m, &k, "_name")?,
            None => None,
        };
        self.split_ix.insert(keys, ix);
        Ok(ix)
    }
}
