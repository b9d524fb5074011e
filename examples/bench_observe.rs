//! Times `observe()` on a live tree with `--window 0`: `bench_observe PID [RUNS]`.
//! Prints one line per mode: `observe_names_ms median=.. min=.. max=.. processes=.. threads=..`
//! (Python names read) and `observe_proc_only_ms ...` (names off: the /proc floor).
//! Used by scripts/bench-check.sh; figures are printed, never asserted.

use std::io::Write;
use std::time::{Duration, Instant};

use otel_forkcheck::observe::{observe, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(pid) = args.next().and_then(|p| p.parse().ok()) else {
        eprintln!("usage: bench_observe PID [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(1);
    for (label, names) in [("observe_names_ms", true), ("observe_proc_only_ms", false)] {
        let opts = Options {
            pid,
            window: Duration::ZERO,
            python_names: names,
        };
        let mut times = Vec::with_capacity(runs);
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            match observe(&opts) {
                Ok(snap) => last = Some(snap),
                Err(e) => {
                    eprintln!("observe failed: {e}");
                    std::process::exit(2);
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let snap = last.unwrap_or_default();
        let threads: usize = snap.processes.iter().map(|p| p.threads.len()).sum();
        let named = snap
            .processes
            .iter()
            .filter(|p| p.python.names_read)
            .count();
        // A closed pipe (`| head`) is not worth a panic.
        let _ = writeln!(
            std::io::stdout(),
            "{label} median={:.2} min={:.2} max={:.2} processes={} threads={threads} names_read={named}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            snap.processes.len(),
        );
    }
}
