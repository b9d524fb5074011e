//! One run, between the receiver being up and the receiver being shut down: launch, watch
//! ([`super::watch`]), stop (drivers first, then SIGTERM to the master; or, for a command that
//! ended by itself, the drain), and the facts the rules need written into the ledger (the stop,
//! every tracked child and the activity of those that worked).

use std::time::{Duration, Instant};

use super::children::{activity_line, Tracker};
use super::launch::Server;
use super::traffic::Target;
use super::watch::{watch, Watched};
use super::{env, master, progress, Interrupt, RunOptions, RunResult, IN_FLIGHT, SHOW_LINES};

/// How long, once the server is gone, its last output may take to be read (a daemonized
/// descendant that kept the pipe open is not waited for longer).
const FINAL_OUTPUT: Duration = Duration::from_millis(500);
use crate::error::Error;
use crate::ledger::{Signal, StopRecord};
use crate::receive::{now_ms, Receiver};

pub(super) fn session(
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
    receiver.with_ledger(|l| {
        l.endpoints_set = pairs
            .iter()
            .filter(|(k, _)| k.ends_with("_ENDPOINT"))
            .map(|(var, value)| crate::ledger::EndpointSet {
                var: var.clone(),
                value: value.clone(),
            })
            .collect();
    });
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
    let w = match watch(args, &mut server, &receiver, targets, interrupt) {
        Ok(w) => w,
        Err(mut a) => {
            // Stop it now (graceful first, briefly), so its last words are in the lines shown.
            if server.group_alive() {
                let master = master::find(server.root()).map_or(server.pid, |f| f.master);
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
    let Watched {
        found,
        targets,
        outcomes,
        snapshot,
        tracker,
        mut drivers,
        http: sent_http,
        ended,
    } = w;

    for d in drivers.iter_mut() {
        if !d.running() {
            continue;
        }
        progress(&format!(
            "stopping driver `{}` (pid {}): SIGTERM, SIGKILL to its group after 5 s",
            d.command,
            d.pid()
        ));
        d.stop();
    }
    tracker.freeze();
    let stop = match &ended {
        Some((how, at_ms)) => drain(args, &mut server, found.master, how, *at_ms),
        None => stop_server(args, &mut server, found.master, interrupt),
    };
    let lines = server.final_lines(SHOW_LINES, FINAL_OUTPUT);
    let exit_code = server.exited().and_then(|s| s.code());
    drop(server);
    if interrupt.count() > 0 {
        let _ = rt.block_on(receiver.shutdown(Duration::from_millis(200)));
        let mut a = Error::new(
            "interrupted: the server was stopped and nothing was judged",
            "",
        );
        a.lines = lines;
        return Err(a);
    }
    if let (Some((how, _)), Some(code)) = (&ended, exit_code) {
        if code != 0 {
            let _ = rt.block_on(receiver.shutdown(Duration::from_millis(200)));
            let mut a = Error::new(
                format!(
                    "the command ended by itself with {how} after it forked workers: it failed, \
                     so nothing was judged"
                ),
                "its own output below says why",
            );
            a.lines = lines;
            return Err(a);
        }
    }
    if ended.is_none() {
        // Exports sent during the exit flush are normally accounted before the sender exits
        // (it waits for the answer); this covers the ones still being decoded.
        wait_in_flight(&receiver);
    }
    let stop = record_children(&receiver, tracker, stop);
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
        sent_http,
        ended: ended.map(|(how, _)| how),
        exit_code,
        drivers: drivers.iter_mut().map(|d| d.view()).collect(),
    })
}

/// SIGTERM to the master, SIGKILL to the group after the grace.
fn stop_server(
    args: &RunOptions,
    server: &mut Server,
    master: i32,
    interrupt: &Interrupt,
) -> StopRecord {
    progress(&format!(
        "stopping: SIGTERM to the master (pid {master}), SIGKILL to the group after {:.0} s",
        args.grace.as_secs_f64()
    ));
    let requested_ms = now_ms();
    let out = server.stop_or_abort(master, args.grace, &|| interrupt.count() > 1);
    progress(&format!(
        "stopped in {:.1} s ({})",
        out.waited.as_secs_f64(),
        if out.graceful {
            "graceful"
        } else {
            "group SIGKILLed"
        }
    ));
    StopRecord {
        master,
        requested_ms,
        graceful: out.graceful,
        waited_ms: out.waited.as_millis() as u64,
        notes: kill_notes(&server.final_lines(200, FINAL_OUTPUT)),
        ended: None,
        exits: Vec::new(),
    }
}

/// The command ended by itself: `--drain` for exports in flight and for what is left of its
/// group to leave; the group is SIGKILLed after that.
fn drain(args: &RunOptions, server: &mut Server, master: i32, how: &str, at_ms: u64) -> StopRecord {
    progress(&format!(
        "draining for {:.1} s (exports in flight)",
        args.drain.as_secs_f64()
    ));
    let t0 = Instant::now();
    std::thread::sleep(args.drain);
    let graceful = !server.group_alive();
    if !graceful {
        progress("processes of its group were still alive after the drain: SIGKILL to the group");
        server.kill_group();
    }
    StopRecord {
        master,
        requested_ms: at_ms,
        graceful,
        waited_ms: t0.elapsed().as_millis() as u64,
        notes: kill_notes(&server.final_lines(200, FINAL_OUTPUT)),
        ended: Some(how.to_string()),
        exits: Vec::new(),
    }
}

/// Until what the stopped server sent has been read and accounted, at most [`IN_FLIGHT`]: its
/// processes are gone, so each of their connections ends once the receiver has served what is
/// in it (a connection is forgotten only after its last request is accounted). Seen closed
/// twice in a row, 10 ms apart, for a connection the kernel accepted a moment before the
/// receiver did.
fn wait_in_flight(receiver: &Receiver) {
    let t0 = Instant::now();
    let mut quiet = 0;
    while t0.elapsed() < IN_FLIGHT {
        if receiver.open_connections() == (0, 0) {
            quiet += 1;
            if quiet == 2 {
                return;
            }
        } else {
            quiet = 0;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every tracked child into the ledger, and the activity of those that worked (what FC209
/// judges besides requests served); the stop with each worker's exit (FC210).
fn record_children(receiver: &Receiver, tracker: Tracker, mut stop: StopRecord) -> StopRecord {
    let children = tracker.finish();
    let worked: Vec<i32> = children
        .iter()
        .filter(|c| c.worked && c.pid != stop.master)
        .map(|c| c.pid)
        .collect();
    progress(&format!(
        "{} child(ren) of the master seen; worked (CPU grown): {:?}",
        children.len(),
        worked
    ));
    stop.exits = crate::ledger::worker_exits(&children, &stop);
    if !stop.exits.is_empty() {
        let slowest = stop.exits.iter().map(|e| e.after_ms).max().unwrap_or(0);
        progress(&format!(
            "{} worker(s) left after the SIGTERM, the last {:.1} s after it; killed: {:?}",
            stop.exits.len(),
            slowest as f64 / 1000.0,
            stop.exits
                .iter()
                .filter(|e| e.killed())
                .map(|e| e.pid)
                .collect::<Vec<_>>()
        ));
    }
    receiver.with_ledger(|l| {
        for c in children.iter().filter(|c| worked.contains(&c.pid)) {
            l.activity.entry(c.pid).or_default().push(activity_line(c));
        }
        l.children = children.clone();
        l.stop = Some(stop.clone());
    });
    stop
}

/// What the server said about workers it killed (gunicorn: `Worker (pid:N) was sent SIGKILL!`,
/// `WORKER TIMEOUT (pid:N)`; uWSGI: `... is taking too much time to die...NO MERCY !!!`), and the SDK's refusals to replace a global provider
/// (`Overriding of current MeterProvider is not allowed`, FC304).
pub(super) fn kill_notes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            l.contains("was sent SIG")
                || l.contains("WORKER TIMEOUT")
                || l.contains("Overriding of current")
                || l.contains("NO MERCY")
        })
        .map(|l| l.trim().to_string())
        .take(10)
        .collect()
}
