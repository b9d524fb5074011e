//! Metric values as the summaries carry them: each metric of a resource block with its kind,
//! temporality and data points (series key, start, time, value, count), for the ledger to add
//! up per pid and per identity. Both summarisers (the protobuf walker and the decoded message)
//! produce these, point for point.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number that compares by its bits (so summaries and ledgers stay `Eq`, NaN included) and is
/// written as an integer when it is one (`30`, not `30.0`); NaN and infinities as `null`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Num(pub f64);

impl PartialEq for Num {
    fn eq(&self, other: &Num) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Num {}

/// Integers up to 2^53 are exact in an f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if !v.is_finite() {
            s.serialize_none()
        } else if v.fract() == 0.0 && v.abs() <= EXACT {
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        Ok(Num(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
    }
}

/// As people read it: `30`, `0.125`, `1.500e9`, `?` for NaN or an infinity.
impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if !v.is_finite() {
            f.write_str("?")
        } else if v.fract() == 0.0 && v.abs() < 1e15 {
            write!(f, "{v:.0}")
        } else if v.abs() >= 1e6 || v.abs() < 1e-3 {
            write!(f, "{v:.3e}")
        } else {
            let s = format!("{v:.3}");
            f.write_str(s.trim_end_matches('0').trim_end_matches('.'))
        }
    }
}

/// The OTLP data kind of a metric.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    #[default]
    Sum,
    Gauge,
    Histogram,
    ExponentialHistogram,
    Summary,
}

impl MetricKind {
    /// Histograms and summaries: their points carry a count and a sum of observations.
    pub fn is_counted(self) -> bool {
        matches!(
            self,
            MetricKind::Histogram | MetricKind::ExponentialHistogram | MetricKind::Summary
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Sum => "sum",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::ExponentialHistogram => "exponential_histogram",
            MetricKind::Summary => "summary",
        }
    }
}

/// `aggregation_temporality` of sums and histograms (gauges have none; summaries are
/// cumulative by definition).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    #[default]
    Unspecified,
    Delta,
    Cumulative,
}

impl Temporality {
    /// From the protobuf enum value (as prost reads an `int32`: the varint truncated).
    pub fn from_i32(v: i32) -> Temporality {
        match v {
            1 => Temporality::Delta,
            2 => Temporality::Cumulative,
            _ => Temporality::Unspecified,
        }
    }
}

/// One data point's value (its series is the same index of [`MetricPoints::series`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointValue {
    pub start_time_unix_nano: u64,
    pub time_unix_nano: u64,
    /// Sums and gauges: the value (`as_double`, or `as_int`; 0 when neither is set).
    /// Histograms and summaries: the sum of the observations (0 when not sent).
    pub value: Num,
    /// Histograms and summaries: the number of observations; 0 for sums and gauges.
    pub count: u64,
}

/// The series of a metric's points, in their order: keys and names. Exporters send the same
/// series in the same order every time, so the walker shares one list between the exports of a
/// connection, and the ledger finds the series it followed last time by `fp` without a lookup
/// per point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesList {
    /// Series keys (hash of resource, scope, metric name and point attributes): the same keys
    /// as [`super::identity::SeriesStart::key`].
    pub keys: Vec<u64>,
    /// Metric name with the point's attributes (`requests{route=/}`).
    pub names: Vec<Arc<str>>,
    /// A hash of `keys`, in order.
    pub fp: u64,
}

impl SeriesList {
    pub fn new(keys: Vec<u64>, names: Vec<Arc<str>>) -> SeriesList {
        let fp = SeriesList::fingerprint(&keys);
        SeriesList { keys, names, fp }
    }

    pub fn fingerprint(keys: &[u64]) -> u64 {
        keys.iter()
            .fold(super::hash::Fx::new(), |h, k| h.word(*k))
            .word(keys.len() as u64)
            .finish()
    }
}

/// The points of one metric under one resource block (and scope) of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricPoints {
    pub name: Arc<str>,
    pub kind: MetricKind,
    pub temporality: Temporality,
    /// Sums only: `is_monotonic`.
    pub monotonic: bool,
    /// The series of `points`, one for one.
    pub series: Arc<SeriesList>,
    pub points: Vec<PointValue>,
}

impl MetricPoints {
    /// Whether each point adds to what came before (delta sums and histograms) rather than
    /// replacing it (cumulative, unspecified, gauges, summaries).
    pub fn adds(&self) -> bool {
        self.temporality == Temporality::Delta && self.kind != MetricKind::Gauge
    }

    /// Each point with its series key and name.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<str>, &PointValue)> {
        self.series
            .keys
            .iter()
            .zip(&self.series.names)
            .zip(&self.points)
            .map(|((k, n), p)| (*k, n, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_integers_when_they_are() {
        let j = |v: f64| serde_json::to_string(&Num(v)).unwrap();
        assert_eq!(j(30.0), "30");
        assert_eq!(j(-2.0), "-2");
        assert_eq!(j(0.25), "0.25");
        assert_eq!(j(f64::NAN), "null");
        assert_eq!(j(1e300), "1e+300");
        let back: Num = serde_json::from_str("30").unwrap();
        assert_eq!(back, Num(30.0));
        assert_eq!(Num(f64::NAN), Num(f64::NAN));
        assert_ne!(Num(0.0), Num(-0.0));
        let show: Vec<String> = [30.0, -2.0, 0.125, 0.5, 1.5e9, 1.5e20, 1e-5, f64::NAN]
            .into_iter()
            .map(|v| Num(v).to_string())
            .collect();
        assert_eq!(
            show,
            [
                "30",
                "-2",
                "0.125",
                "0.5",
                "1500000000",
                "1.500e20",
                "1.000e-5",
                "?"
            ]
        );
    }
}
