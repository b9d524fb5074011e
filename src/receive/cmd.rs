//! `otel-forkcheck receive`: run the receiver for people and for CI.
//!
//! The CLI (owned elsewhere) wires `Receive(ReceiveArgs)` to [`receive_main`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::diagnose::{self, Facts};
use crate::ledger::{Ledger, Signal};
use crate::snapshot::{Role, Snapshot};

use super::{report, Event, Inject, Options, Receiver};
use crate::observe::tree::tree_snapshot;
use crate::report::{human, FailOn, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Ndjson,
}

/// Receive OTLP (HTTP and gRPC) and show which OS process sent every export.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    /// OTLP/HTTP listen address (port 0: any free port; "off" to disable). The same address as
    /// --grpc serves both protocols on one port.
    #[arg(long, default_value = "127.0.0.1:4318", value_name = "ADDR")]
    pub http: String,
    /// OTLP/gRPC listen address (port 0: any free port; "off" to disable).
    #[arg(long, default_value = "127.0.0.1:4317", value_name = "ADDR")]
    pub grpc: String,
    /// The pre-fork master: its workers are read from /proc (and re-read) for roles and the
    /// worker rules (FC201, FC202, FC208).
    #[arg(long, value_name = "MASTER")]
    pub pid: Option<i32>,
    /// Also pass every accepted export to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318).
    #[arg(long, value_name = "URL")]
    pub forward: Option<String>,
    /// Stop (exit 0) as soon as this many distinct worker pids exported every --signals signal.
    #[arg(long, value_name = "N")]
    pub expect_workers: Option<usize>,
    /// Signals expected from every worker: metrics,traces,logs.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub signals: Vec<String>,
    /// Stop after this long (e.g. 60s); with --expect-workers, exit 1 if it was not met.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Answer like a troubled collector: delay=DUR, status=CODE, partial=N (repeatable).
    #[arg(long, value_name = "FAULT")]
    pub inject: Vec<String>,
    /// Largest body accepted as received (compressed), bytes.
    #[arg(long, default_value_t = super::DEFAULT_MAX_BODY, hide = true)]
    pub max_body: usize,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
}

fn usage_error(msg: &str, hint: &str) -> i32 {
    eprintln!("otel-forkcheck receive: {msg}");
    if !hint.is_empty() {
        eprintln!("  fix: {hint}");
    }
    2
}

fn parse_addr(flag: &str, v: &str, allow_remote: bool) -> Result<Option<SocketAddr>, String> {
    if v.eq_ignore_ascii_case("off") || v.is_empty() {
        return Ok(None);
    }
    let a: SocketAddr = v
        .parse()
        .or_else(|_| format!("127.0.0.1:{v}").parse())
        .map_err(|_| format!("{flag} {v:?}: expected HOST:PORT, e.g. 127.0.0.1:4318"))?;
    if !a.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "{flag} {a}: not a loopback address; add --allow-remote to listen there on purpose"
        ));
    }
    Ok(Some(a))
}

#[derive(Debug)]
struct Plan {
    opts: Options,
    signals: Vec<Signal>,
    timeout: Option<Duration>,
    color: bool,
}

fn plan(args: &ReceiveArgs) -> Result<Plan, String> {
    let http = parse_addr("--http", &args.http, args.allow_remote)?;
    let grpc = parse_addr("--grpc", &args.grpc, args.allow_remote)?;
    let mut inject = Inject::default();
    for i in &args.inject {
        inject.add(i)?;
    }
    let mut signals = Vec::new();
    for s in &args.signals {
        let sig = Signal::parse(s)
            .ok_or_else(|| format!("--signals {s:?}: use metrics, traces and/or logs"))?;
        if !signals.contains(&sig) {
            signals.push(sig);
        }
    }
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| format!("--timeout {t:?}: {e} (e.g. 60s)"))
        })
        .transpose()?;
    // The global --color flag (with NO_COLOR and the TTY check) has set this already.
    let color = colored::control::SHOULD_COLORIZE.should_colorize();
    Ok(Plan {
        opts: Options {
            http,
            grpc,
            max_body: args.max_body,
            forward: args.forward.clone(),
            inject,
            expected_signals: signals.clone(),
            // The same address for both (port 0 included): one port serving both protocols.
            one_port: http.is_some() && http == grpc,
            ..Options::default()
        },
        signals,
        timeout,
        color,
    })
}

/// Worker pids that exported every expected signal (any signal when none is expected).
pub fn workers_done(ledger: &Ledger, snap: Option<&Snapshot>, signals: &[Signal]) -> Vec<i32> {
    ledger
        .processes
        .values()
        .filter(|p| match snap {
            Some(s) => s
                .process(p.sender.pid)
                .is_some_and(|q| q.role == Role::Worker),
            None => true,
        })
        .filter(|p| {
            if signals.is_empty() {
                p.signals.any()
            } else {
                signals.iter().all(|s| p.signals.get(*s).any())
            }
        })
        .map(|p| p.sender.pid)
        .collect()
}

/// Runs `otel-forkcheck receive`; returns the exit status.
pub fn receive_main(args: ReceiveArgs) -> i32 {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => return usage_error(&e, "see otel-forkcheck receive --help"),
    };
    if let Some(pid) = args.pid {
        if let Err(e) = tree_snapshot(pid) {
            return usage_error(&e.to_string(), e.hint());
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage_error(&format!("cannot start the runtime: {e}"), ""),
    };
    rt.block_on(run(args, plan))
}

async fn run(args: ReceiveArgs, plan: Plan) -> i32 {
    let r = match super::serve(plan.opts.clone()).await {
        Ok(r) => r,
        Err(e) => return usage_error(&e.to_string(), &e.hint()),
    };
    // The bound addresses, always (port 0 says which port it got); on stderr so stdout stays
    // machine-readable for json/ndjson.
    let mut listening = Vec::new();
    match (r.http_addr, r.grpc_addr) {
        (Some(h), Some(g)) if h == g => {
            listening.push(format!("OTLP/HTTP and OTLP/gRPC on one port: http://{h}"))
        }
        (h, g) => {
            if let Some(a) = h {
                listening.push(format!("OTLP/HTTP on http://{a}"));
            }
            if let Some(a) = g {
                listening.push(format!("OTLP/gRPC on {a}"));
            }
        }
    }
    eprintln!(
        "otel-forkcheck receive: listening: {}",
        listening.join(", ")
    );
    let _ = std::io::stderr().flush();

    let live = args.format == Format::Human && std::io::stdout().is_terminal();
    // Only ndjson prints every export: other formats do not subscribe, so the receiver builds
    // no event per request.
    let mut events = (args.format == Format::Ndjson).then(|| r.subscribe());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut snap = args.pid.and_then(|p| tree_snapshot(p).ok());
    let mut last_lines = 0usize;
    let mut met = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let deadline = plan.timeout.map(|t| tokio::time::Instant::now() + t);
    let timed_out = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timed_out);
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let next_event = async {
            match events.as_mut() {
                Some(e) => e.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = term => break,
            _ = &mut timed_out => break,
            ev = next_event => {
                match ev {
                    Ok(e) => if args.format == Format::Ndjson { print_event(&e) },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if args.format == Format::Ndjson {
                            println!("{}", serde_json::json!({"event": "lagged", "skipped": n}));
                        }
                    }
                    Err(_) => break,
                }
            }
            _ = tick.tick() => {
                if let Some(pid) = args.pid {
                    if let Ok(s) = tree_snapshot(pid) {
                        snap = Some(merge_tree(snap.take(), s));
                    }
                }
                let ledger = r.ledger();
                if let Some(n) = args.expect_workers {
                    if workers_done(&ledger, snap.as_ref(), &plan.signals).len() >= n {
                        met = true;
                        break;
                    }
                }
                if live {
                    let findings = diagnose::diagnose(&Facts::new(snap.as_ref(), Some(&ledger)));
                    let text = report::table(&ledger, snap.as_ref(), &findings, plan.color);
                    let mut out = std::io::stdout().lock();
                    if last_lines > 0 {
                        let _ = write!(out, "\x1b[{last_lines}A\x1b[J");
                    }
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                    last_lines = text.lines().count();
                }
            }
        }
    }
    // Drain events already accounted, for ndjson completeness.
    if let Some(events) = events.as_mut() {
        while let Ok(e) = events.try_recv() {
            print_event(&e);
        }
    }
    finish(&args, &plan, r, snap, met, last_lines).await
}

fn print_event(e: &Event) {
    if let Ok(s) = serde_json::to_string(e) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// Keeps processes that exited since (their exports stay meaningful), with the latest roles.
fn merge_tree(old: Option<Snapshot>, mut new: Snapshot) -> Snapshot {
    if let Some(old) = old {
        for p in old.processes {
            if new.process(p.pid).is_none() {
                new.processes.push(p);
            }
        }
    }
    new
}

async fn finish(
    args: &ReceiveArgs,
    plan: &Plan,
    r: Receiver,
    snap: Option<Snapshot>,
    met: bool,
    last_lines: usize,
) -> i32 {
    let (http, grpc) = (r.http_addr, r.grpc_addr);
    let ledger = r.shutdown(Duration::from_millis(500)).await;
    let findings = diagnose::diagnose(&Facts::new(snap.as_ref(), Some(&ledger)));
    let status = match args.expect_workers {
        Some(_) if met => 0,
        Some(_) => 1,
        None => FailOn::Error.exit_status(&findings),
    };
    match args.format {
        Format::Json => {
            let mut v = report::json_report(&ledger, snap.as_ref(), &findings, http, grpc);
            if let Some(n) = args.expect_workers {
                v["expectation"] = serde_json::json!({
                    "workers": n,
                    "signals": plan.signals,
                    "met": met,
                    "workers_done": workers_done(&ledger, snap.as_ref(), &plan.signals),
                });
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
            );
        }
        Format::Ndjson => {
            let v = serde_json::json!({
                "event": "summary",
                "verdict": Verdict::of(&findings),
                "expectation_met": args.expect_workers.map(|_| met),
                "findings": findings,
            });
            println!("{v}");
        }
        Format::Human => {
            let mut out = std::io::stdout().lock();
            if last_lines > 0 {
                let _ = write!(out, "\x1b[{last_lines}A\x1b[J");
            }
            let _ = write!(
                out,
                "{}\n{}",
                report::table(&ledger, snap.as_ref(), &findings, plan.color),
                if findings.is_empty() {
                    "No findings.\n\n".to_string()
                } else {
                    human::findings(&findings)
                }
            );
            if let Some(n) = args.expect_workers {
                let done = workers_done(&ledger, snap.as_ref(), &plan.signals);
                let _ = writeln!(
                    out,
                    "expectation: {n} worker(s) exporting {}: {} ({} so far: {:?})",
                    if plan.signals.is_empty() {
                        "anything".to_string()
                    } else {
                        plan.signals
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    if met { "met" } else { "NOT met" },
                    done.len(),
                    done
                );
            }
            let _ = writeln!(out, "verdict: {}", Verdict::of(&findings).as_str());
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: ReceiveArgs,
    }

    #[test]
    fn parses_flags() {
        let t = T::try_parse_from([
            "x",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "off",
            "--signals",
            "metrics,traces",
            "--inject",
            "delay=900ms",
            "--timeout",
            "5s",
            "--format",
            "ndjson",
        ])
        .unwrap();
        let p = plan(&t.a).unwrap();
        assert_eq!(p.opts.http, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(p.opts.grpc, None);
        assert_eq!(p.signals, vec![Signal::Metrics, Signal::Traces]);
        assert_eq!(p.timeout, Some(Duration::from_secs(5)));
        assert!(!p.opts.one_port);
        let t = T::try_parse_from(["x", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]).unwrap();
        let p = plan(&t.a).unwrap();
        assert!(p.opts.one_port && p.opts.serves_one_port());
        let t =
            T::try_parse_from(["x", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:4317"]).unwrap();
        assert!(!plan(&t.a).unwrap().opts.serves_one_port());
        let t = T::try_parse_from(["x", "--http", "0.0.0.0:4318"]).unwrap();
        assert!(plan(&t.a).unwrap_err().contains("--allow-remote"));
        let t = T::try_parse_from(["x", "--signals", "spans,nope"]).unwrap();
        assert!(plan(&t.a).is_err());
    }
}
