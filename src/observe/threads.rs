//! The kind of a thread (metric reader, span or log processor, gRPC core) from its name.

use crate::snapshot::ThreadKind;

/// Kind of a thread from its name (docs/failure-modes.md#thread-names-by-sdk-version). Prefixes are used so that
/// the 15-byte comm of Python 3.14+ (`OtelPeriodicExp`, `OtelBatchSpanRe`) classifies the same
/// as the full Python name.
pub fn classify(name: &str) -> ThreadKind {
    if name.starts_with("OtelPeriodicExp") {
        ThreadKind::MetricReader
    } else if name.starts_with("OtelBatchSpan") {
        ThreadKind::SpanProcessor
    } else if name.starts_with("OtelBatchLog") {
        ThreadKind::LogProcessor
    } else if name.starts_with("grpc")
        || name.starts_with("event_engine")
        || name.starts_with("lifeguard")
    {
        ThreadKind::Grpc
    } else {
        ThreadKind::Other
    }
}

/// Kind from the Python name when it says something, else from comm (gRPC's C threads have no
/// Python name; comm is all there is for them).
pub fn classify_thread(python_name: Option<&str>, comm: &str) -> ThreadKind {
    match python_name.map(classify) {
        Some(kind) if kind != ThreadKind::Other => kind,
        _ => classify(comm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        use ThreadKind::*;
        for (name, kind) in [
            ("OtelPeriodicExportingMetricReader", MetricReader),
            ("OtelPeriodicExp", MetricReader),
            ("OtelBatchSpanProcessor", SpanProcessor),
            ("OtelBatchSpanRecordProcessor", SpanProcessor),
            ("OtelBatchSpanRe", SpanProcessor),
            ("OtelBatchLogProcessor", LogProcessor),
            ("OtelBatchLogRecordProcessor", LogProcessor),
            ("grpc_global_tim", Grpc),
            ("event_engine", Grpc),
            ("lifeguard", Grpc),
            ("Thread-2 (_handle_tasks)", Other),
            ("MainThread", Other),
            ("python3", Other),
        ] {
            assert_eq!(classify(name), kind, "{name}");
        }
        assert_eq!(classify_thread(Some("Dummy-1"), "grpc_global_tim"), Grpc);
        assert_eq!(
            classify_thread(Some("OtelBatchLogRecordProcessor"), "python3"),
            LogProcessor
        );
    }
}
