//! What the receiver keeps of a resource block: who it says it is, how many items it carried,
//! the start time of each cumulative series and (metrics) every point's value.

use serde::{Deserialize, Serialize};

/// The resource attributes that tell processes apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_pid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<i64>,
}

impl Identity {
    /// True when neither `process.pid` nor `service.instance.id` (nor `worker.pid`) is set:
    /// nothing in the resource tells one worker from another.
    pub fn is_anonymous(&self) -> bool {
        self.process_pid.is_none()
            && self.service_instance_id.is_none()
            && self.worker_pid.is_none()
    }

    /// The part that names a process (service.name left out: one process may run several
    /// services). None when the resource names no process.
    pub fn process_key(&self) -> Option<(Option<i64>, Option<String>, Option<i64>)> {
        if self.is_anonymous() {
            None
        } else {
            Some((
                self.process_pid,
                self.service_instance_id.clone(),
                self.worker_pid,
            ))
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = &self.service_name {
            parts.push(format!("service.name={s}"));
        }
        if let Some(p) = self.process_pid {
            parts.push(format!("process.pid={p}"));
        }
        if let Some(i) = &self.service_instance_id {
            parts.push(format!("service.instance.id={i}"));
        }
        if let Some(w) = self.worker_pid {
            parts.push(format!("worker.pid={w}"));
        }
        if parts.is_empty() {
            f.write_str("(empty resource)")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// One cumulative metric series and the start time it reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesStart {
    /// Metric name, with the data point attributes when any (`requests{route=/}`).
    pub series: std::sync::Arc<str>,
    /// `start_time_unix_nano` of the data point.
    pub start_time_unix_nano: u64,
    /// Internal key (hash of resource, scope, name and attributes).
    #[serde(default, skip_serializing)]
    pub key: u64,
}

/// One resource block of an export, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSummary {
    pub identity: Identity,
    /// Data points, spans or log records under this resource.
    pub items: u64,
    /// Cumulative series under this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cumulative: Vec<SeriesStart>,
    /// Metrics only: every metric's data points with their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<super::values::MetricPoints>,
}

impl ResourceSummary {
    /// Lists the cumulative series from the metrics' points: every point with a start time of
    /// a cumulative metric (summaries are cumulative), in order.
    pub fn list_cumulative(&mut self) {
        use super::values::Temporality;
        self.cumulative.clear();
        for m in &self.metrics {
            if m.temporality != Temporality::Cumulative {
                continue;
            }
            for (i, p) in m.points.iter().enumerate() {
                if p.start_time_unix_nano > 0 {
                    self.cumulative.push(SeriesStart {
                        series: m.series.names[i].clone(),
                        start_time_unix_nano: p.start_time_unix_nano,
                        key: m.series.keys[i],
                    });
                }
            }
        }
    }
}

/// The sole holder of a connection as the summaries need it: its pid and NSpid chain (outermost
/// first). None when several processes (or none) hold the connection.
pub type SoleSender<'a> = Option<(i32, &'a [i32])>;

/// True when `resource_pid` is `pid` in any pid namespace the process lives in (the SDK
/// records the innermost one, often 1 in a container).
pub fn is_own_pid(pid: i32, nspid: &[i32], resource_pid: i64) -> bool {
    resource_pid == pid as i64 || nspid.iter().any(|p| *p as i64 == resource_pid)
}
