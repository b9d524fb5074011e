//! `receive`'s limit flags: how long a connection may stay without a request, how many may be
//! open, and how much memory bodies may hold (what src/receive/limits/ enforces). Each value is
//! bounded here, so a mistyped one is exit 2 with the range, never a panic or a silent clamp.

use std::time::Duration;

use clap::Args;

use super::parse_duration;
use crate::error::Error;
use crate::receive::{self, limits};

/// Connection caps accepted by the flags (the open-file limit lowers them further).
const MAX_CONNS: usize = 1 << 20;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Close a connection that has not sent one request in full this long after accept
    /// (silent, or unfinished headers; HTTP/1, HTTP/2 and gRPC alike). 100ms to 1h.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = conn_timeout)]
    pub first_request_timeout: Duration,
    /// Close a keep-alive connection idle this long (HTTP/2: GOAWAY). 1s to 24h.
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = idle_timeout)]
    pub idle_timeout: Duration,
    /// How long one request may take to send its headers and its body. 100ms to 1h.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = conn_timeout)]
    pub read_timeout: Duration,
    /// Connections open at once per listener, lowered to fit the open-file limit. At the cap a
    /// new connection closes an idle one (never-served first, then the longest idle).
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNS_PER_LISTENER,
          value_parser = conns)]
    pub max_connections: usize,
    /// Connections open at once per listener from one peer address (at most
    /// --max-connections).
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNS_PER_PEER,
          value_parser = conns)]
    pub max_connections_per_peer: usize,
    /// Bytes of request bodies held at once, as received and decompressed, HTTP and gRPC
    /// together; over it a request gets 503 / RESOURCE_EXHAUSTED with a retry hint. At least
    /// --max-body plus --max-decompressed, at most 64GiB.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = budget)]
    pub memory_budget: u64,
    /// Largest body accepted as received (compressed), e.g. 16MiB. 1KiB to 1GiB.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = body)]
    pub max_body: u64,
    /// Largest body after decompression (gzip bombs stop there). 1KiB to 4GiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = decompressed)]
    pub max_decompressed: u64,
    /// Processes of a re-read tree (--pid, or a sender's) that exited, kept for the report,
    /// the latest first; older ones are dropped and counted (`churn.aged_out`). 0 to 65536.
    #[arg(long, value_name = "N", default_value_t = crate::receive::cmd::DEFAULT_KEEP_EXITED,
          value_parser = keep_exited)]
    pub keep_exited: usize,
}

impl LimitArgs {
    /// The limits into the receiver's options; Err when they contradict each other.
    pub fn apply(&self, o: &mut receive::Options) -> Result<(), Error> {
        let largest = self.max_body + self.max_decompressed;
        if self.memory_budget < largest {
            return Err(Error::new(
                format!(
                    "--memory-budget {}: below --max-body + --max-decompressed ({}), so the \
                     largest body allowed could never be read",
                    show_size(self.memory_budget),
                    show_size(largest)
                ),
                "raise --memory-budget or lower --max-body / --max-decompressed",
            ));
        }
        o.first_request_timeout = self.first_request_timeout;
        o.idle_timeout = self.idle_timeout;
        o.read_timeout = self.read_timeout;
        o.max_conns_per_listener = self.max_connections;
        o.max_conns_per_peer = self.max_connections_per_peer.min(self.max_connections);
        // Bounded above (64 GiB) by the parsers: fits usize on 64-bit targets.
        o.memory_budget = usize::try_from(self.memory_budget).unwrap_or(usize::MAX);
        o.max_body = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        o.max_decompressed = usize::try_from(self.max_decompressed).unwrap_or(usize::MAX);
        Ok(())
    }
}

impl Default for LimitArgs {
    fn default() -> Self {
        let o = receive::Options::default();
        LimitArgs {
            first_request_timeout: o.first_request_timeout,
            idle_timeout: o.idle_timeout,
            read_timeout: o.read_timeout,
            max_connections: o.max_conns_per_listener,
            max_connections_per_peer: o.max_conns_per_peer,
            memory_budget: o.memory_budget as u64,
            max_body: o.max_body as u64,
            max_decompressed: o.max_decompressed as u64,
            keep_exited: crate::receive::cmd::DEFAULT_KEEP_EXITED,
        }
    }
}

fn bounded_duration(
    s: &str,
    min: Duration,
    max: Duration,
    range: &str,
) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("{s}: out of range ({range})"));
    }
    Ok(d)
}

fn conn_timeout(s: &str) -> Result<Duration, String> {
    bounded_duration(
        s,
        Duration::from_millis(100),
        Duration::from_secs(3600),
        "100ms to 1h",
    )
}

fn idle_timeout(s: &str) -> Result<Duration, String> {
    bounded_duration(
        s,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
        "1s to 24h",
    )
}

fn conns(s: &str) -> Result<usize, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= MAX_CONNS as u64 => Ok(n as usize),
        _ => Err(format!("{s}: not a count from 1 to {MAX_CONNS}")),
    }
}

fn keep_exited(s: &str) -> Result<usize, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= 65_536 => Ok(n as usize),
        _ => Err(format!("{s}: not a count from 0 to 65536")),
    }
}

fn bounded_size(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < min || n > max {
        return Err(format!(
            "{s}: out of range ({} to {})",
            show_size(min),
            show_size(max)
        ));
    }
    Ok(n)
}

fn budget(s: &str) -> Result<u64, String> {
    bounded_size(s, MIB, 64 * GIB)
}

fn body(s: &str) -> Result<u64, String> {
    bounded_size(s, KIB, GIB)
}

fn decompressed(s: &str) -> Result<u64, String> {
    bounded_size(s, KIB, 4 * GIB)
}

/// A size in bytes: a plain number, or a number with a unit: KiB, MiB, GiB (K, M, G mean the
/// same), or KB, MB, GB (powers of 1000). At most 1 TiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s}: not a size (examples: 1048576, 512KiB, 16MiB, 1GiB)"
            ))
        }
    };
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{s}: not a size (examples: 1048576, 512KiB, 16MiB, 1GiB)"))?;
    let bytes = x * mult as f64;
    if !bytes.is_finite() || bytes > (1u64 << 40) as f64 {
        return Err(format!("{s}: larger than 1TiB"));
    }
    Ok(bytes.round() as u64)
}

/// A size as the flags spell it (exact units when they fit).
pub fn show_size(n: u64) -> String {
    for (unit, m) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= m && n % m == 0 {
            return format!("{}{unit}", n / m);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bounds() {
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert_eq!(parse_size("16MiB"), Ok(16 * MIB));
        assert_eq!(parse_size("16m"), Ok(16 * MIB));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("2KB"), Ok(2000));
        for bad in [
            "",
            "x",
            "-1",
            "1e3",
            "16 parsecs",
            "1.2.3M",
            "99999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("2048GiB").is_err());
        assert!(budget("512KiB").is_err() && budget("65GiB").is_err() && budget("1MiB").is_ok());
        assert!(body("1GiB").is_ok() && body("1025MiB").is_err() && body("100").is_err());
        assert_eq!(show_size(256 * MIB), "256MiB");
        assert_eq!(show_size(1500), "1500 bytes");
    }

    #[test]
    fn timeouts_and_counts_are_bounded() {
        assert_eq!(conn_timeout("10s"), Ok(Duration::from_secs(10)));
        for bad in ["0", "50ms", "2h", "1e30", "18446744073709551615s"] {
            assert!(conn_timeout(bad).is_err(), "{bad}");
        }
        assert!(idle_timeout("500ms").is_err() && idle_timeout("25h").is_err());
        assert_eq!(conns("4096"), Ok(4096));
        for bad in ["0", "-1", "1048577", "18446744073709551616", "x"] {
            assert!(conns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_the_receivers() {
        let mut o = receive::Options::default();
        let before = format!("{o:?}");
        LimitArgs::default().apply(&mut o).unwrap();
        assert_eq!(format!("{o:?}"), before);
    }

    #[test]
    fn a_budget_below_the_largest_body_is_refused() {
        let a = LimitArgs {
            memory_budget: 32 * MIB,
            ..LimitArgs::default()
        };
        let e = a.apply(&mut receive::Options::default()).unwrap_err();
        assert!(e.to_string().contains("--memory-budget 32MiB"), "{e}");
    }
}
