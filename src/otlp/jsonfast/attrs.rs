//! Attributes as the summaries need them: `KeyValue`/`AnyValue` borrowed from the body, their
//! protobuf encoding (series keys hash it, as on the protobuf path), series names and the
//! resource identity.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::common::{nul, Ign, Resource, Rest, I64};
use crate::otlp::hash::Fx;
use crate::otlp::identity::Identity;

/// A string borrowed from the body when it has no escapes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CowStr<'a>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `AnyValue`: at most one value field set (the reference picks among several by key order,
/// which this reader does not guess: several send the body to the reference).
#[derive(Debug, Clone, PartialEq)]
pub enum Av<'a> {
    None,
    Str(Cow<'a, str>),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<Av<'a>>),
    Kvlist(Vec<Kv<'a>>),
}

#[derive(Deserialize)]
struct Values<T> {
    values: Vec<T>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Av<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Av<'a>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Av<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object for AnyValue")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Av<'a>, A::Error> {
                let mut out = Av::None;
                let mut set = 0;
                while let Some(k) = m.next_key::<CowStr<'de>>()? {
                    let v = match &*k.0 {
                        "stringValue" => {
                            m.next_value::<Option<CowStr<'a>>>()?.map(|s| Av::Str(s.0))
                        }
                        "boolValue" => m.next_value::<Option<bool>>()?.map(Av::Bool),
                        "intValue" => m.next_value::<Option<I64>>()?.map(|i| Av::Int(i.0)),
                        "doubleValue" => m.next_value::<Option<f64>>()?.map(Av::Double),
                        "arrayValue" => m
                            .next_value::<Option<Values<Av<'a>>>>()?
                            .map(|a| Av::Array(a.values)),
                        "kvlistValue" => m
                            .next_value::<Option<Values<Kv<'a>>>>()?
                            .map(|a| Av::Kvlist(a.values)),
                        "bytesValue" => return Err(de::Error::custom("bytesValue: reference")),
                        _ => {
                            m.next_value::<Ign>()?;
                            None
                        }
                    };
                    if let Some(v) = v {
                        set += 1;
                        out = v;
                    }
                }
                if set > 1 {
                    return Err(de::Error::custom("several AnyValue fields: reference"));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `KeyValue` (no container default: `key` is required, as in the reference).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Kv<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow)]
    pub value: Option<Av<'a>>,
    #[serde(rename = "keyStrindex", default, deserialize_with = "nul")]
    pub key_strindex: i32,
    #[serde(flatten)]
    _rest: Rest,
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn len_field(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

impl Av<'_> {
    /// The encoded length of the `AnyValue` message.
    fn len(&self) -> usize {
        match self {
            Av::None => 0,
            Av::Str(s) => len_field(s.len()),
            Av::Bool(_) => 2,
            Av::Int(i) => 1 + varint_len(*i as u64),
            Av::Double(_) => 9,
            Av::Array(a) => len_field(a.iter().map(|v| len_field(v.len())).sum()),
            Av::Kvlist(kvs) => len_field(kvs.iter().map(|kv| len_field(kv.len())).sum()),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Av::None => {}
            Av::Str(s) => {
                buf.push(0x0a);
                varint(buf, s.len() as u64);
                buf.extend_from_slice(s.as_bytes());
            }
            Av::Bool(b) => buf.extend_from_slice(&[0x10, *b as u8]),
            Av::Int(i) => {
                buf.push(0x18);
                varint(buf, *i as u64);
            }
            Av::Double(d) => {
                buf.push(0x21);
                buf.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            Av::Array(a) => {
                buf.push(0x2a);
                varint(
                    buf,
                    a.iter().map(|v| len_field(v.len())).sum::<usize>() as u64,
                );
                for v in a {
                    buf.push(0x0a);
                    varint(buf, v.len() as u64);
                    v.encode(buf);
                }
            }
            Av::Kvlist(kvs) => {
                buf.push(0x32);
                varint(
                    buf,
                    kvs.iter().map(|kv| len_field(kv.len())).sum::<usize>() as u64,
                );
                for kv in kvs {
                    buf.push(0x0a);
                    varint(buf, kv.len() as u64);
                    kv.encode(buf);
                }
            }
        }
    }
}

impl Kv<'_> {
    fn len(&self) -> usize {
        let key = if self.key.is_empty() {
            0
        } else {
            len_field(self.key.len())
        };
        let value = self.value.as_ref().map_or(0, |v| len_field(v.len()));
        let strindex = match self.key_strindex {
            0 => 0,
            i => 1 + varint_len(i as i64 as u64),
        };
        key + value + strindex
    }

    /// The protobuf encoding prost gives the `KeyValue`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        if !self.key.is_empty() {
            buf.push(0x0a);
            varint(buf, self.key.len() as u64);
            buf.extend_from_slice(self.key.as_bytes());
        }
        if let Some(v) = &self.value {
            buf.push(0x12);
            varint(buf, v.len() as u64);
            v.encode(buf);
        }
        if self.key_strindex != 0 {
            buf.push(0x18);
            varint(buf, self.key_strindex as i64 as u64);
        }
    }
}

/// Mixes each attribute's protobuf encoding into `h`, as `decode::hash_attrs` does.
pub fn hash_attrs(attrs: &[Kv], mut h: Fx, buf: &mut Vec<u8>) -> Fx {
    for kv in attrs {
        buf.clear();
        kv.encode(buf);
        h = h.bytes(buf);
    }
    h
}

/// `decode::series_name` over borrowed attributes.
pub fn series_name(name: &str, attrs: &[Kv]) -> String {
    use crate::otlp::decode::{series_name_of, ShownValue};
    series_name_of(
        name,
        attrs.len(),
        attrs.iter().map(|kv| {
            let v = match &kv.value {
                Some(Av::Str(v)) => ShownValue::Str(v),
                Some(Av::Int(v)) => ShownValue::Int(*v),
                Some(Av::Bool(v)) => ShownValue::Bool(*v),
                Some(Av::Double(v)) => ShownValue::Double(*v),
                _ => ShownValue::Other,
            };
            (&*kv.key, v)
        }),
    )
}

/// The identity attributes of a resource, as `decode::identity` reads them.
pub fn identity(resource: Option<&Resource>) -> Identity {
    let mut id = Identity::default();
    let Some(r) = resource else {
        return id;
    };
    let str_of = |v: &Av| match v {
        Av::Str(s) => Some(s.to_string()),
        Av::Int(i) => Some(i.to_string()),
        _ => None,
    };
    let int_of = |v: &Av| match v {
        Av::Int(i) => Some(*i),
        Av::Str(s) => s.trim().parse().ok(),
        Av::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    };
    for kv in &r.attributes {
        let Some(v) = kv.value.as_ref() else {
            continue;
        };
        match &*kv.key {
            "service.name" => id.service_name = str_of(v),
            "process.pid" => id.process_pid = int_of(v),
            "service.instance.id" => id.service_instance_id = str_of(v),
            "worker.pid" => id.worker_pid = int_of(v),
            _ => {}
        }
    }
    id
}
