//! OTLP JSON quirks the generated serde code does not take as the OTLP JSON mapping allows.
//!
//! Applied to the parsed `serde_json::Value` before it is turned into the message:
//! - `null` fields are dropped (protobuf JSON treats `null` as the default value);

use serde_json::Value;

/// Rewrites a parsed OTLP JSON body into what the generated deserializers accept.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalize(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}
