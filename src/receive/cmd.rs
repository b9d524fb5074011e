//! `otel-forkcheck receive`.
