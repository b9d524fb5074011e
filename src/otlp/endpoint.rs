//! Where an SDK sends a signal, by the OTLP exporter variables: what `observe` reads to find the
//! collector, and what FC214 compares with the endpoints `run` set.

use super::signal::Signal;

/// `http://collector:4318/v1/traces` -> (`collector`, 4318). Without a port: 4317 for gRPC,
/// 4318 for HTTP (the OTLP default ports, which is what a port-less endpoint almost always means
/// in practice). A value without a scheme is `host[:port]` (a gRPC-style target).
pub fn parse_endpoint(value: &str, protocol: &str) -> Option<(String, u16)> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => (String::new(), value),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (
            h.to_string(),
            after.strip_prefix(':').and_then(|p| p.parse().ok()),
        )
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let grpc = protocol.eq_ignore_ascii_case("grpc") || (protocol.is_empty() && scheme.is_empty());
    let port = port.unwrap_or(if grpc { 4317 } else { 4318 });
    let host = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1".to_string()
    } else {
        host
    };
    Some((host, port))
}

/// The variable that sets `signal`'s endpoint alone: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`.
pub fn signal_endpoint_var(signal: Signal) -> &'static str {
    match signal {
        Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    }
}

/// Where a signal's exports go, and what said so.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalEndpoint {
    pub host: String,
    pub port: u16,
    /// The variable and its value; `None` for the SDK's default.
    pub from: Option<(String, String)>,
}

/// Where an exporter built without an `endpoint=` argument sends `signal`, by the environment
/// `env`, as the SDK chooses: the signal's own variable, else the generic one, else the default
/// (localhost, 4318 or 4317 by the protocol). `None` when the value cannot be read.
pub fn signal_endpoint(env: &[(String, String)], signal: Signal) -> Option<SignalEndpoint> {
    let get = |k: &str| {
        env.iter()
            .find(|(n, v)| n == k && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    };
    let own = signal_endpoint_var(signal);
    let protocol_var = own.replace("_ENDPOINT", "_PROTOCOL");
    let protocol = get(&protocol_var)
        .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or("");
    for var in [own, "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        if let Some(v) = get(var) {
            let (host, port) = parse_endpoint(v, protocol)?;
            let from = Some((var.to_string(), v.to_string()));
            return Some(SignalEndpoint { host, port, from });
        }
    }
    let grpc = protocol.eq_ignore_ascii_case("grpc");
    Some(SignalEndpoint {
        host: "127.0.0.1".into(),
        port: if grpc { 4317 } else { 4318 },
        from: None,
    })
}

/// Whether two (host, port) pairs reach the same listener: the same port, and the same host or
/// both this machine's loopback (`localhost` is `127.0.0.1` already).
pub fn same_endpoint(a: (&str, u16), b: (&str, u16)) -> bool {
    let loopback = |h: &str| {
        let h = h.trim_matches(['[', ']']);
        h.starts_with("127.") || h == "::1" || h == "0.0.0.0" || h == "::"
    };
    a.1 == b.1 && (a.0.eq_ignore_ascii_case(b.0) || (loopback(a.0) && loopback(b.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_signal_goes_where_its_own_variable_then_the_generic_one_then_the_default_says() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://localhost:39555/v1/metrics",
            ),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", " "),
        ]);
        let m = signal_endpoint(&e, Signal::Metrics).unwrap();
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 39555));
        assert_eq!(m.from.unwrap().0, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let l = signal_endpoint(&e, Signal::Logs).unwrap();
        assert_eq!((l.host.as_str(), l.port), ("collector", 4318));
        assert_eq!(l.from.unwrap().0, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let none = signal_endpoint(&[], Signal::Traces).unwrap();
        assert_eq!(
            (none.host.as_str(), none.port, none.from),
            ("127.0.0.1", 4318, None)
        );
        let grpc = env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]);
        assert_eq!(signal_endpoint(&grpc, Signal::Traces).unwrap().port, 4317);
        let bad = env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://:x")]);
        assert!(signal_endpoint(&bad, Signal::Traces).is_none());
    }

    #[test]
    fn loopback_addresses_of_one_port_are_one_endpoint() {
        assert!(same_endpoint(("127.0.0.1", 5), ("127.0.0.1", 5)));
        assert!(same_endpoint(("127.0.0.1", 5), ("::1", 5)));
        assert!(same_endpoint(("Collector", 5), ("collector", 5)));
        assert!(!same_endpoint(("127.0.0.1", 5), ("127.0.0.1", 6)));
        assert!(!same_endpoint(("127.0.0.1", 5), ("collector", 5)));
    }
}
