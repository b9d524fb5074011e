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
//! kills the group: no orphans, on any path.

pub mod env;
pub mod launch;
pub mod master;
pub mod report;
pub mod traffic;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ledger::{Ledger, Served, Signal, StopRecord};
use crate::observe;
use crate::receive::{self, now_ms, Receiver};
use crate::report::{FailOn, Format};
use crate::snapshot::Snapshot;

use launch::Server;
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
    pub command: Vec<String>,
}

/// Lines of server output shown when it could not be checked.
const SHOW_LINES: usize = 20;
/// How long the worker set must stay the same before it counts, when the number is known.
const SETTLE_KNOWN: Duration = Duration::from_millis(200);
/// ... and when it is not.
const SETTLE_UNKNOWN: Duration = Duration::from_secs(1);
/// The inspection's own sampling window, at most.
const SAMPLE_WINDOW: Duration = Duration::from_secs(3);
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
}

fn progress(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "otel-forkcheck run: {msg}");
    let _ = e.flush();
}

/// Runs `otel-forkcheck run`; returns the exit status.
pub fn run(args: RunOptions) -> i32 {
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
    let result = session(&args, &rt, receiver, signals, targets, &interrupt, started);
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

/// Everything between the receiver being up and the receiver being shut down.
fn session(
    args: &RunOptions,
    rt: &tokio::runtime::Runtime,
    receiver: Receiver,
    signals: Vec<Signal>,
    targets: Vec<Target>,
    interrupt: &Interrupt,
    started: Instant,
) -> Result<RunResult, Error> {
    let (http, grpc) = (receiver.http_addr, receiver.grpc_addr);
    let (Some(http_addr), Some(grpc_addr)) = (http, grpc) else {
        return Err(Error::new("the receiver did not bind both ports", ""));
    };
    progress(&format!(
        "receiver listening: OTLP/HTTP http://{http_addr}, OTLP/gRPC {grpc_addr}"
    ));
    let grpc_default = env::uses_distro_default_grpc(&args.command);
    if grpc_default && std::env::var_os("OTEL_EXPORTER_OTLP_PROTOCOL").is_none() {
        progress("opentelemetry-instrument defaults to OTLP/gRPC: endpoints use the gRPC port");
    }
    let env_set = env::server_env(
        &|k| std::env::var(k).ok(),
        http_addr,
        grpc_addr,
        grpc_default,
    );
    for e in &env_set {
        match &e.replaced {
            Some(old) => progress(&format!("env {}={} (was {old})", e.name, e.value)),
            None => progress(&format!("env {}={}", e.name, e.value)),
        }
    }
    let pairs: Vec<(String, String)> = env_set
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    // Spawned here, on the main thread: see launch.rs on PR_SET_PDEATHSIG.
    let mut server = Server::spawn(&args.command, &pairs).map_err(|e| {
        Error::new(
            format!("cannot start `{}`: {e}", args.command.join(" ")),
            "check the command after `--` (is it on PATH? is the venv activated?)",
        )
    })?;
    progress(&format!(
        "started `{}` as pid {} (its own process group)",
        args.command.join(" "),
        server.pid
    ));
    let launched = server.pid;
    let watched = watch(args, &mut server, &receiver, targets, interrupt);
    let (found, targets, outcomes, snapshot) = match watched {
        Ok(w) => w,
        Err(mut a) => {
            // Stop it now (graceful first, briefly), so its last words are in the lines shown.
            if server.group_alive() {
                let master = master::find(server.pid).map_or(server.pid, |f| f.master);
                server.stop_or_abort(master, Duration::from_secs(5), &|| interrupt.count() > 1);
            }
            if a.lines.is_empty() {
                a.lines = server.last_lines(SHOW_LINES);
            }
            drop(server);
            let _ = rt.block_on(receiver.shutdown(Duration::from_millis(200)));
            return Err(a);
        }
    };

    progress(&format!(
        "stopping: SIGTERM to the master (pid {}), SIGKILL to the group after {:.0} s",
        found.master,
        args.grace.as_secs_f64()
    ));
    let requested_ms = now_ms();
    let out = server.stop_or_abort(found.master, args.grace, &|| interrupt.count() > 1);
    let stop = StopRecord {
        master: found.master,
        requested_ms,
        graceful: out.graceful,
        waited_ms: out.waited.as_millis() as u64,
        notes: kill_notes(&server.last_lines(200)),
    };
    let lines = server.last_lines(SHOW_LINES);
    drop(server);
    progress(&format!(
        "stopped in {:.1} s ({})",
        out.waited.as_secs_f64(),
        if out.graceful {
            "graceful"
        } else {
            "group SIGKILLed"
        }
    ));
    if interrupt.count() > 0 {
        let _ = rt.block_on(receiver.shutdown(Duration::from_millis(200)));
        let mut a = Error::new(
            "interrupted: the server was stopped and nothing was judged",
            "",
        );
        a.lines = lines;
        return Err(a);
    }
    // Exports sent during the exit flush are normally accounted before the sender exits (it
    // waits for the answer); this covers the ones still being decoded.
    std::thread::sleep(IN_FLIGHT);
    receiver.with_ledger(|l| l.stop = Some(stop.clone()));
    let ledger = rt.block_on(receiver.shutdown(Duration::from_millis(500)));
    Ok(RunResult {
        command: args.command.clone(),
        launched,
        master: found.master,
        workers: found.workers,
        http,
        grpc,
        env: env_set,
        signals,
        targets: targets.iter().map(|t| t.url.clone()).collect(),
        outcomes,
        snapshot,
        ledger,
        stop,
        elapsed: started.elapsed(),
    })
}

/// What the server said about workers it killed (gunicorn: `Worker (pid:N) was sent SIGKILL!`,
/// `WORKER TIMEOUT (pid:N)`).
fn kill_notes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("was sent SIG") || l.contains("WORKER TIMEOUT"))
        .map(|l| l.trim().to_string())
        .take(10)
        .collect()
}

type Watched = (master::Found, Vec<Target>, Vec<Outcome>, Snapshot);

/// From launch to just before the stop: ready, traffic, window.
fn watch(
    args: &RunOptions,
    server: &mut Server,
    receiver: &Receiver,
    mut targets: Vec<Target>,
    interrupt: &Interrupt,
) -> Result<Watched, Error> {
    let t0 = Instant::now();
    let found = wait_for_workers(args, server, interrupt)?;
    progress(&format!(
        "master pid {} with {} worker(s): {:?} (after {:.1} s)",
        found.master,
        found.workers.len(),
        found.workers,
        t0.elapsed().as_secs_f64()
    ));
    if targets.is_empty() {
        targets.push(wait_for_port(args, server, found.master, t0, interrupt)?);
    } else {
        wait_for_hit(args, server, &targets[0], t0, interrupt)?;
    }

    progress(&format!(
        "sending {} request(s) to {}",
        args.requests,
        targets
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut outcomes = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        interrupt.check()?;
        alive(server, "while it was sent requests")?;
        let pids = crate::proc::tree::tree_pids(found.master);
        outcomes.push(traffic::send(
            &targets[i % targets.len()],
            found.master,
            &pids,
        ));
    }
    let answered = outcomes.iter().filter(|o| o.status.is_some()).count();
    if answered == 0 {
        let first = outcomes
            .first()
            .and_then(|o| o.error.clone())
            .unwrap_or_default();
        return Err(Error::new(
            format!(
                "none of the {} request(s) got an HTTP answer ({first})",
                outcomes.len()
            ),
            "check --hit (the server's address and path)",
        ));
    }
    let served = served_by(&outcomes);
    receiver.with_ledger(|l| {
        for (pid, s) in &served {
            l.activity.entry(*pid).or_default().push(format!(
                "served {} request(s) sent by otel-forkcheck run",
                s.requests
            ));
            l.served.insert(*pid, s.clone());
        }
    });
    progress(&format!(
        "{answered} of {} answered; served by {}",
        outcomes.len(),
        if served.is_empty() {
            "no pid of the tree that could be found".to_string()
        } else {
            served
                .iter()
                .map(|(p, s)| format!("pid {p} x{}", s.requests))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));

    progress(&format!(
        "watching for {:.1} s (inspection and receiver)",
        args.window.as_secs_f64()
    ));
    let window_start = Instant::now();
    let opts = observe::Options {
        pid: found.master,
        window: args.window.min(SAMPLE_WINDOW),
        python_names: args.python_names,
    };
    let sampler = std::thread::spawn(move || observe::observe(&opts));
    while !sampler.is_finished() || window_start.elapsed() < args.window {
        interrupt.check()?;
        alive(server, "during the window")?;
        std::thread::sleep(Duration::from_millis(25));
    }
    let snapshot = match sampler.join() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            alive(server, "during the window")?;
            return Err(Error::new(
                format!("could not inspect the server's tree: {e}"),
                e.hint(),
            ));
        }
        Err(_) => return Err(Error::new("the inspection thread panicked", "")),
    };
    Ok((found, targets, outcomes, snapshot))
}

/// Err when the launched command has exited.
fn alive(server: &mut Server, when: &str) -> Result<(), Error> {
    match server.status_text() {
        None => Ok(()),
        Some(st) => {
            let mut a = Error::new(
                format!("the server exited {when} ({st})"),
                "its own output below says why",
            );
            a.lines = server.last_lines(SHOW_LINES);
            Err(a)
        }
    }
}

/// Waits until the master and the expected number of workers are there, and stay there.
fn wait_for_workers(
    args: &RunOptions,
    server: &mut Server,
    interrupt: &Interrupt,
) -> Result<master::Found, Error> {
    let start = Instant::now();
    let mut last: Option<master::Found> = None;
    let mut since = Instant::now();
    let mut expected: BTreeMap<i32, Option<usize>> = BTreeMap::new();
    loop {
        interrupt.check()?;
        alive(server, "before it was ready")?;
        let found = master::find(server.pid);
        if found != last {
            since = Instant::now();
        }
        if let Some(f) = &found {
            let want = args.workers.or_else(|| {
                *expected
                    .entry(f.master)
                    .or_insert_with(|| master::expected_workers_of(f.master))
            });
            let ready = match want {
                Some(n) => f.workers.len() >= n && since.elapsed() >= SETTLE_KNOWN,
                None => since.elapsed() >= SETTLE_UNKNOWN,
            };
            if ready {
                return Ok(f.clone());
            }
        }
        last = found;
        if start.elapsed() >= args.startup_timeout {
            let t = args.startup_timeout.as_secs_f64();
            let mut a = match &last {
                None => Error::new(
                    format!(
                        "the server never forked: no process under pid {} started a worker \
                         within {t:.0} s",
                        server.pid
                    ),
                    "run only pre-fork servers (gunicorn, uWSGI, Celery prefork, a multiprocessing \
                     pool), or raise --startup-timeout",
                ),
                Some(f) => {
                    let want = args
                        .workers
                        .or(expected.get(&f.master).copied().flatten())
                        .unwrap_or(0);
                    Error::new(
                        format!(
                            "only {} of {want} worker(s) of master pid {} started within {t:.0} s",
                            f.workers.len(),
                            f.master
                        ),
                        "set --workers to the number the server runs, or raise --startup-timeout",
                    )
                }
            };
            a.lines = server.last_lines(SHOW_LINES);
            return Err(a);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the master's TCP listening socket; the URL of the first one.
fn wait_for_port(
    args: &RunOptions,
    server: &mut Server,
    master: i32,
    t0: Instant,
    interrupt: &Interrupt,
) -> Result<Target, Error> {
    loop {
        interrupt.check()?;
        alive(server, "before it opened its port")?;
        if let Some(a) = traffic::listen_addrs(master).first() {
            return Ok(Target::of_listen(*a));
        }
        if t0.elapsed() >= args.startup_timeout {
            let mut a = Error::new(
                format!(
                    "the server never opened a TCP port: master pid {master} holds no listening \
                     socket after {:.0} s",
                    args.startup_timeout.as_secs_f64()
                ),
                "bind a TCP address (gunicorn -b 127.0.0.1:0), or give --hit URL",
            );
            a.lines = server.last_lines(SHOW_LINES);
            return Err(a);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the first --hit URL accepts a connection.
fn wait_for_hit(
    args: &RunOptions,
    server: &mut Server,
    target: &Target,
    t0: Instant,
    interrupt: &Interrupt,
) -> Result<(), Error> {
    loop {
        interrupt.check()?;
        alive(server, "before it opened its port")?;
        if std::net::TcpStream::connect_timeout(&target.addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if t0.elapsed() >= args.startup_timeout {
            let mut a = Error::new(
                format!(
                    "nothing accepts connections at {} after {:.0} s",
                    target.url,
                    args.startup_timeout.as_secs_f64()
                ),
                "check --hit, or raise --startup-timeout",
            );
            a.lines = server.last_lines(SHOW_LINES);
            return Err(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
        assert_eq!(kill_notes(&lines).len(), 1);
    }
}
