//! The pieces every signal's JSON reader shares: resources, scopes, and field readers that
//! take exactly what the reference path (`serde_json::Value` -> `json::normalize` -> the prost types) takes. Anything
//! they refuse sends the body to that path, so refusing more is safe; taking more is not.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::attrs::{CowStr, Kv};

/// `null` as the field's default (the reference drops `null` fields before decoding).
pub fn nul<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Any JSON value, parsed as `serde_json::Value` parses it (strings checked, numbers in
/// range) and dropped.
#[derive(Default)]
pub struct Ign;

impl<'de> Deserialize<'de> for Ign {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ign, D::Error> {
        d.deserialize_any(IgnVisitor)
    }
}

struct IgnVisitor;

impl<'de> Visitor<'de> for IgnVisitor {
    type Value = Ign;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_str<E>(self, _: &str) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_unit<E>(self) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_none<E>(self) -> Result<Ign, E> {
        Ok(Ign)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ign, A::Error> {
        while a.next_element::<Ign>()?.is_some() {}
        Ok(Ign)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ign, A::Error> {
        while a.next_key::<CowStr<'de>>()?.is_some() {
            a.next_value::<Ign>()?;
        }
        Ok(Ign)
    }
}

/// The fields of a message the reader does not know, taken as the reference ignores them
/// (flattened into a struct, it also makes the struct refuse the array form, which the
/// reference takes positionally for its own field order).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Rest;

impl<'de> Deserialize<'de> for Rest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rest, D::Error> {
        d.deserialize_map(IgnVisitor).map(|_| Rest)
    }
}

/// A string field that is not needed (checked, not kept).
#[derive(Default)]
pub struct Str;

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        d.deserialize_str(IgnVisitor).map(|_| Str)
    }
}

/// A list of messages not needed, each decoded exactly as the reference does (through
/// `serde_json::Value`, `normalize` and the prost type): they are rare (exemplars, bucket
/// lists, entity refs), so the slow path costs nothing here.
pub struct Each<T>(pub usize, PhantomData<T>);

impl<T> Default for Each<T> {
    fn default() -> Self {
        Each(0, PhantomData)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Each<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Each<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Each<T>, A::Error> {
                let mut n = 0;
                while let Some(v) = a.next_element::<serde_json::Value>()? {
                    serde_json::from_value::<T>(crate::otlp::json::normalize(v))
                        .map_err(de::Error::custom)?;
                    n += 1;
                }
                Ok(Each(n, PhantomData))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// One message not needed, decoded exactly as the reference does (see [`Each`]).
pub struct Ref<T>(PhantomData<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Ref<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::from_value::<T>(crate::otlp::json::normalize(v)).map_err(de::Error::custom)?;
        Ok(Ref(PhantomData))
    }
}

/// A list of plain values (numbers), each checked as `T` and dropped.
#[derive(Default)]
pub struct Seq<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Seq<T>, A::Error> {
                while a.next_element::<T>()?.is_some() {}
                Ok(Seq(PhantomData))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A (fixed)64-bit unsigned integer as the prost serde helpers take it: a number or a string.
#[derive(Default, Clone, Copy)]
pub struct U64(pub u64);

impl<'de> Deserialize<'de> for U64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<U64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = U64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a u64 or a string of one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U64, E> {
                Ok(U64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<U64, E> {
                u64::try_from(v).map(U64).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<U64, E> {
                v.parse().map(U64).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A 64-bit signed integer: a number or a string (`asInt`, `intValue`).
#[derive(Default, Clone, Copy)]
pub struct I64(pub i64);

impl<'de> Deserialize<'de> for I64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<I64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = I64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an i64 or a string of one")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<I64, E> {
                Ok(I64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<I64, E> {
                i64::try_from(v).map(I64).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<I64, E> {
                v.parse().map(I64).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `Resource` (all its fields, so none is taken unchecked).
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Resource<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    pub attributes: Vec<Kv<'a>>,
    #[serde(rename = "droppedAttributesCount", deserialize_with = "nul")]
    _dropped: u32,
    #[serde(rename = "entityRefs", deserialize_with = "nul")]
    _entity_refs: Each<opentelemetry_proto::tonic::common::v1::EntityRef>,
    #[serde(flatten)]
    _rest: Rest,
}

/// `InstrumentationScope`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Scope<'a> {
    #[serde(borrow, deserialize_with = "nul")]
    pub name: CowStr<'a>,
    #[serde(rename = "version", deserialize_with = "nul")]
    _version: Str,
    #[serde(rename = "attributes", borrow, deserialize_with = "nul")]
    _attributes: Vec<Kv<'a>>,
    #[serde(rename = "droppedAttributesCount", deserialize_with = "nul")]
    _dropped: u32,
    #[serde(flatten)]
    _rest: Rest,
}
