//! The three OTLP signals and the two transports.

use serde::{Deserialize, Serialize};

/// One of the three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Metrics,
    Traces,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Metrics, Signal::Traces, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    /// What one item of this signal is called.
    pub fn item(self) -> &'static str {
        match self {
            Signal::Metrics => "data points",
            Signal::Traces => "spans",
            Signal::Logs => "log records",
        }
    }

    /// The OTLP/HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        match s.trim().to_ascii_lowercase().as_str() {
            "metrics" | "metric" => Some(Signal::Metrics),
            "traces" | "trace" | "spans" => Some(Signal::Traces),
            "logs" | "log" => Some(Signal::Logs),
            _ => None,
        }
    }
}

/// Which protocol an export came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Http,
    Grpc,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Grpc => "grpc",
        }
    }
}
