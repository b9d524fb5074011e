//! The environment the launched server gets: OTLP endpoints aimed at the embedded receiver, and
//! short export intervals where the user chose none.
//!
//! Endpoints are always overridden (pointing the server at the receiver is the point of `run`),
//! as full URLs: old HTTP exporters (SDK 1.6) post to a per-signal endpoint exactly as given, and
//! only append /v1/<signal> to the generic one on newer SDKs. The port follows the protocol the
//! user configured (OTEL_EXPORTER_OTLP_PROTOCOL, or the per-signal one). Export intervals are
//! shortened only when unset, so that a CI run sees exports within its window while a user's own
//! settings (say a 60 s interval, as many real configs have) are checked as they are. Resource
//! settings (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, detectors) are never touched.

use std::net::SocketAddr;

use crate::ledger::Signal;

/// Intervals set when the user has not set them: (variable, milliseconds).
pub const SHORT_INTERVALS: [(&str, &str); 3] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "500"),
];

pub use crate::report::run::EnvSet;

fn signal_word(s: Signal) -> &'static str {
    match s {
        Signal::Metrics => "METRICS",
        Signal::Traces => "TRACES",
        Signal::Logs => "LOGS",
    }
}

fn is_grpc(v: Option<&str>) -> Option<bool> {
    v.map(|p| p.trim().eq_ignore_ascii_case("grpc"))
}

/// True when `command` runs through `opentelemetry-instrument`, whose distro
/// (opentelemetry-distro) defaults OTEL_EXPORTER_OTLP_PROTOCOL to grpc when it is unset.
pub fn uses_distro_default_grpc(command: &[String]) -> bool {
    command
        .iter()
        .take_while(|a| !a.ends_with("gunicorn") && !a.ends_with("uwsgi"))
        .any(|a| a.rsplit('/').next() == Some("opentelemetry-instrument"))
}

/// The variables to set, given the user's environment (`get` reads it). `grpc_default`: the
/// protocol when the user set none (true under `opentelemetry-instrument`, see
/// [`uses_distro_default_grpc`]).
pub fn server_env(
    get: &dyn Fn(&str) -> Option<String>,
    http: SocketAddr,
    grpc: SocketAddr,
    grpc_default: bool,
) -> Vec<EnvSet> {
    let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let mut out = Vec::new();
    let mut set = |name: String, value: String| {
        let replaced = non_empty(&name).filter(|old| *old != value);
        out.push(EnvSet {
            name,
            value,
            replaced,
        });
    };
    let generic_grpc =
        is_grpc(non_empty("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref()).unwrap_or(grpc_default);
    set(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        if generic_grpc {
            format!("http://{grpc}")
        } else {
            format!("http://{http}")
        },
    );
    for s in Signal::ALL {
        let w = signal_word(s);
        let grpc_here = is_grpc(non_empty(&format!("OTEL_EXPORTER_OTLP_{w}_PROTOCOL")).as_deref())
            .unwrap_or(generic_grpc);
        set(
            format!("OTEL_EXPORTER_OTLP_{w}_ENDPOINT"),
            if grpc_here {
                format!("http://{grpc}")
            } else {
                format!("http://{http}{}", s.path())
            },
        );
    }
    for (k, v) in SHORT_INTERVALS {
        if non_empty(k).is_none() {
            set(k.into(), v.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn get<'a>(v: &'a [EnvSet], k: &str) -> Option<&'a EnvSet> {
        v.iter().find(|e| e.name == k)
    }

    const H: &str = "127.0.0.1:40001";
    const G: &str = "127.0.0.1:40002";

    #[test]
    fn http_by_default_with_full_urls_and_short_intervals() {
        let v = server_env(&env_of(&[]), H.parse().unwrap(), G.parse().unwrap(), false);
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40001"
        );
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40001/v1/traces"
        );
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40001/v1/logs"
        );
        assert_eq!(
            get(&v, "OTEL_METRIC_EXPORT_INTERVAL").unwrap().value,
            "1000"
        );
        assert_eq!(get(&v, "OTEL_BSP_SCHEDULE_DELAY").unwrap().value, "500");
        assert!(v.iter().all(|e| e.replaced.is_none()));
    }

    #[test]
    fn grpc_protocol_and_user_intervals_are_respected() {
        let user = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=shop"),
        ]);
        let v = server_env(&user, H.parse().unwrap(), G.parse().unwrap(), false);
        let ep = get(&v, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
        assert_eq!(ep.value, "http://127.0.0.1:40002");
        assert_eq!(ep.replaced.as_deref(), Some("http://collector:4317"));
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                .unwrap()
                .value,
            "http://127.0.0.1:40002"
        );
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40001/v1/logs"
        );
        assert!(get(&v, "OTEL_METRIC_EXPORT_INTERVAL").is_none());
        assert!(get(&v, "OTEL_BLRP_SCHEDULE_DELAY").is_some());
        assert!(v.iter().all(|e| !e.name.starts_with("OTEL_RESOURCE")));
    }

    #[test]
    fn opentelemetry_instrument_defaults_to_grpc() {
        let cmd: Vec<String> = ["/v/bin/opentelemetry-instrument", "gunicorn", "app:app"]
            .map(String::from)
            .to_vec();
        assert!(uses_distro_default_grpc(&cmd));
        assert!(!uses_distro_default_grpc(&cmd[1..]));
        let v = server_env(&env_of(&[]), H.parse().unwrap(), G.parse().unwrap(), true);
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40002"
        );
        let user = env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        let v = server_env(&user, H.parse().unwrap(), G.parse().unwrap(), true);
        assert_eq!(
            get(&v, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").unwrap().value,
            "http://127.0.0.1:40001/v1/traces"
        );
    }
}
