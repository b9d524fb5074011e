//! OTLP values, below everything that uses them: the signals, resource identities and their
//! summaries (with metric values), series-key hashing, the protobuf wire reader, and the decoders from request bodies
//! to summaries. Imports nothing else of this crate, so the ledger and the receiver can both
//! stand on it.

pub mod decode;
pub mod endpoint;
pub mod hash;
pub mod identity;
pub mod json;
pub mod jsonfast;
pub mod metrics;
pub mod signal;
pub mod values;
mod wire;
