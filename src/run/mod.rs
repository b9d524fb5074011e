//! `run -- <server command>`: the CI assertion mode. Launches the server aimed at the embedded
//! receiver, drives traffic, watches, stops it gracefully and judges everything together.
//!
//! The sequence (each step its own module, observe -> diagnose -> report kept as the shape):
//! receiver up on loopback ephemeral ports -> server launched in its own process group with the
//! OTLP environment aimed at the receiver ([`env`], [`launch`]) -> master and workers found
//! ([`master`]) -> requests sent, each attributed to the worker that served it ([`traffic`]) ->
//! the window: an inspection snapshot (observe) while the receiver keeps counting -> graceful
//! stop (SIGTERM to the master; SIGKILL to the group only after the grace) -> a moment for
//! exports in flight -> every rule over snapshot + ledger (FC209 needs the stop) -> reports
//! ([`report`]).
//!
//! The orchestration is synchronous on the main thread (the receiver runs on a small tokio
//! runtime beside it): the server is spawned from the thread that lives longest, which its
//! parent-death signal needs, and /proc polling and sleeps stay plain. Ctrl-C, SIGTERM and SIGHUP
//! set a flag that every wait checks; any early return drops the [`launch::Server`], whose Drop
//! kills the group: no orphans, on any path. In the binary the server runs under a supervisor
//! ([`supervise`]), a subreaper that keeps daemonized descendants in the tree and kills
//! everything below it when `run` ends, even when `run` is SIGKILLed.

mod beat;
pub mod children;
pub mod drive;
pub mod env;
pub mod launch;
pub mod master;
pub mod report;
mod session;
mod single;
pub mod supervise;
pub mod traffic;
mod watch;
mod worked;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ledger::{Ledger, Served, Signal, StopRecord};
use crate::receive;
use crate::report::{FailOn, Format};
use crate::snapshot::Snapshot;

use traffic::{Outcome, Target};

/// What `run` was asked to do, parsed (by the command line) and bounded.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Workers to wait for (None: from the server's own settings, else until stable).
    pub workers: Option<usize>,
    /// Signals every worker must export.
    pub signals: Vec<Signal>,
    /// Where requests go (empty: the master's listening address, path /).
    pub targets: Vec<Target>,
    pub requests: usize,
    /// `--expect-count`: judged after the stop (FC211, FC212; see `report::emit`).
    pub expect_counts: Vec<crate::ledger::CountExpectation>,
    pub window: Duration,
    pub junit: Option<PathBuf>,
    pub format: Format,
    pub fail_on: FailOn,
    pub startup_timeout: Duration,
    pub grace: Duration,
    pub python_names: bool,
    /// Where to save the ledger (and the snapshot beside it), for recorded rule tests.
    pub save_ledger: Option<PathBuf>,
    /// Producers run through `sh -c` once the workers are up (`--drive`).
    pub drive: Vec<String>,
    /// After a command ended by itself, how long to wait for exports in flight (`--drain`).
    pub drain: Duration,
    pub command: Vec<String>,
}

/// Lines of server output shown when it could not be checked.
const SHOW_LINES: usize = 20;
/// After the stop, for exports still in flight to be accounted.
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// Ctrl-C, SIGTERM or SIGHUP received (how many times).
#[derive(Clone, Default)]
struct Interrupt(Arc<AtomicU32>);

impl Interrupt {
    fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), Error> {
        if self.count() > 0 {
            Err(Error::new(
                "interrupted: the server was stopped and nothing was judged",
                "",
            ))
        } else {
            Ok(())
        }
    }
}

/// What the run saw, for the reports.
pub struct RunResult {
    pub command: Vec<String>,
    pub launched: i32,
    pub master: i32,
    pub workers: Vec<i32>,
    pub http: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
    pub env: Vec<env::EnvSet>,
    pub signals: Vec<Signal>,
    pub targets: Vec<String>,
    pub outcomes: Vec<Outcome>,
    pub snapshot: Snapshot,
    pub ledger: Ledger,
    pub stop: StopRecord,
    pub elapsed: Duration,
    /// Requests were sent (a port, or --hit).
    pub sent_http: bool,
    /// How the command ended, when it ended by itself.
    pub ended: Option<String>,
    pub exit_code: Option<i32>,
    pub drivers: Vec<crate::report::run::DriverView>,
}

fn progress(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "otel-forkcheck run: {msg}");
    let _ = e.flush();
}

/// Runs `otel-forkcheck run`; returns the exit status.
pub fn run(args: RunOptions) -> i32 {
    if let Some((why, hint)) = single::never_forks(&args.command, &|k| std::env::var(k).ok()) {
        return Error::new(format!("nothing to check: {why}"), hint).print();
    }
    let signals = args.signals.clone();
    let targets = args.targets.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Error::new(format!("cannot start the runtime: {e}"), "").print(),
    };
    let interrupt = Interrupt::default();
    if let Err(e) = rt.block_on(watch_signals(interrupt.clone())) {
        return Error::new(format!("cannot handle signals: {e}"), "").print();
    }
    let opts = receive::Options {
        expected_signals: signals.clone(),
        ..receive::Options::ephemeral_one_port()
    };
    let receiver = match rt.block_on(receive::serve(opts)) {
        Ok(r) => r,
        Err(e) => return Error::new(e.to_string(), e.hint()).print(),
    };
    let started = Instant::now();
    let result = session::session(&args, &rt, receiver, signals, targets, &interrupt, started);
    // Whatever happened, the server is gone by now (its Server was dropped inside).
    match result {
        Err(a) => a.print(),
        Ok(r) => report::emit(&args, &r),
    }
}

/// Ctrl-C, SIGTERM and SIGHUP, registered now (before the server exists), counted later.
async fn watch_signals(flag: Interrupt) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
                _ = hup.recv() => {},
            }
            if flag.0.fetch_add(1, Ordering::SeqCst) == 0 {
                progress("interrupted: stopping the server");
            }
        }
    });
    Ok(())
}

/// Requests served per pid (answered requests whose server side was found).
pub fn served_by(outcomes: &[Outcome]) -> BTreeMap<i32, Served> {
    let mut out: BTreeMap<i32, Served> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.status.is_some()) {
        let Some(pid) = o.pid else { continue };
        let s = out.entry(pid).or_insert_with(|| Served {
            requests: 0,
            first_ms: o.done_ms,
            last_ms: o.done_ms,
        });
        s.requests += 1;
        s.first_ms = s.first_ms.min(o.done_ms);
        s.last_ms = s.last_ms.max(o.done_ms);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_counts_answered_attributed_requests() {
        let o = |pid, status, at| Outcome {
            url: "u".into(),
            pid,
            status,
            error: None,
            done_ms: at,
            took_ms: 1,
        };
        let s = served_by(&[
            o(Some(7), Some(200), 10),
            o(Some(7), Some(500), 30),
            o(Some(8), None, 40),
            o(None, Some(200), 50),
        ]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[&7].requests, 2);
        assert_eq!((s[&7].first_ms, s[&7].last_ms), (10, 30));
    }

    #[test]
    fn kill_lines() {
        let lines = vec![
            "[INFO] Booting worker with pid: 12".to_string(),
            "[ERROR] Worker (pid:12) was sent SIGKILL! Perhaps out of memory?".to_string(),
        ];
        assert_eq!(session::kill_notes(&lines).len(), 1);
    }
}
