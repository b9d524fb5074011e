//! `--inject delay=DUR|status=CODE|partial=N`: answer like a troubled collector would.

use std::time::Duration;

/// Faults applied to every accepted export (the data is still counted: it did arrive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inject {
    /// Answer only after this long.
    pub delay: Option<Duration>,
    /// Answer with this HTTP status (gRPC: the matching code) instead of success.
    pub status: Option<u16>,
    /// Answer with a partial success rejecting this many items.
    pub partial: Option<i64>,
}

impl Inject {
    /// Parses one `--inject` value; several may be given, comma-separated or repeated.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("--inject {part:?}: expected delay=DUR, status=CODE or partial=N")
            })?;
            match k.trim() {
                "delay" => {
                    self.delay =
                        Some(humantime::parse_duration(v.trim()).map_err(|e| {
                            format!("--inject delay={v}: {e} (examples: 900ms, 2s)")
                        })?)
                }
                "status" => {
                    let code: u16 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|c| (200..600).contains(c))
                        .ok_or_else(|| format!("--inject status={v}: an HTTP status 200-599"))?;
                    self.status = Some(code);
                }
                "partial" => {
                    let n: i64 = v.trim().parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        format!("--inject partial={v}: a count of rejected items >= 0")
                    })?;
                    self.partial = Some(n);
                }
                other => {
                    return Err(format!(
                        "--inject {other}=...: unknown; use delay=DUR, status=CODE or partial=N"
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self == &Inject::default()
    }

    /// The gRPC status code for an injected HTTP status (OTLP's mapping of retryable codes).
    pub fn grpc_code(http: u16) -> tonic::Code {
        match http {
            400 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            403 => tonic::Code::PermissionDenied,
            404 => tonic::Code::NotFound,
            408 | 504 => tonic::Code::DeadlineExceeded,
            413 | 429 => tonic::Code::ResourceExhausted,
            502 | 503 => tonic::Code::Unavailable,
            501 => tonic::Code::Unimplemented,
            200..=299 => tonic::Code::Ok,
            _ => tonic::Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let mut i = Inject::default();
        i.add("delay=900ms").unwrap();
        i.add("status=503, partial=3").unwrap();
        assert_eq!(i.delay, Some(Duration::from_millis(900)));
        assert_eq!(i.status, Some(503));
        assert_eq!(i.partial, Some(3));
        assert!(i.add("status=abc").is_err());
        assert!(i.add("status=99").is_err());
        assert!(i.add("nope=1").is_err());
        assert!(i.add("delay").is_err());
        assert_eq!(Inject::grpc_code(503), tonic::Code::Unavailable);
    }
}
