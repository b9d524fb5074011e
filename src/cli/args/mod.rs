//! Every clap definition of the command line (spellings fixed by the design), and the step
//! from parsed arguments to the plain options `check`, `receive` and `run` take. Values are
//! parsed with bounds here, so a command never starts with a flag it cannot honour.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::Error;
use crate::ledger::{CountExpectation, ExpectedCount, Num};
use crate::otlp::signal::Signal;
use crate::receive::{self, Inject};
use crate::report::{FailOn, Format};
use crate::run::traffic::Target;

mod limits;
pub use limits::{parse_size, LimitArgs};

/// What `--version` prints after the name: the crate's version and the commit it was built
/// from (`build.rs`; "unknown" outside a git checkout, e.g. from the sdist).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("OTEL_FORKCHECK_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "otel-forkcheck",
    version = VERSION,
    about = "Finds why OpenTelemetry telemetry from pre-fork Python servers is missing, doubled or mixed up",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Inspecting a live tree without a subcommand is the same as `check`.
    #[command(flatten)]
    pub check: CheckArgs,
    /// When to color human output (auto: on a terminal, unless NO_COLOR is set).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect a live pre-fork tree (--pid), or diagnose a saved snapshot offline (--snapshot).
    Check(CheckArgs),
    /// Receive OTLP (gRPC and HTTP) and show which OS process sent every export.
    Receive(ReceiveArgs),
    /// Launch a server (after --), send it traffic, stop it, and check every worker's telemetry.
    Run(RunArgs),
    /// Print the long form of a finding code: cause, detection, fix, references.
    Explain {
        /// A finding code (FC103) or slug (exporter-socket-shared); none lists them all.
        code: Option<String>,
    },
    /// Print the completion script for a shell.
    ///
    /// For example: otel-forkcheck completions bash >
    /// ~/.local/share/bash-completion/completions/otel-forkcheck; zsh: a file _otel-forkcheck
    /// in a folder of $fpath; fish: ~/.config/fish/completions/otel-forkcheck.fish.
    Completions {
        /// The shell: bash, zsh or fish.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), generated from these definitions; with --dir, write one page
    /// per command into DIR (what man/ in the repository holds).
    #[command(hide = true)]
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    pub fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pid of the pre-fork master (gunicorn arbiter, uWSGI master, Celery MainProcess, ...).
    /// A wrapper's pid (sh -c, tini, uv run) or a worker's is checked through its master.
    #[arg(long, value_name = "MASTER")]
    pub pid: Option<i32>,
    /// Diagnose a snapshot saved with --save-snapshot instead of a live tree.
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    pub snapshot: Option<PathBuf>,
    /// How long to watch the tree between two samples (0 takes one sample). Workers younger
    /// than 2 s are not judged on their own SDK: a tree that just started is first given up to
    /// 2 s, and one whose workers were all replaced in the window is watched up to 2 s more.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub window: Duration,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Lowest severity that makes the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// Also write the observed facts to FILE (JSON), for `check --snapshot` or a bug report.
    #[arg(long, value_name = "FILE")]
    pub save_snapshot: Option<PathBuf>,
    /// Read no process memory (/proc facts only): no Python thread names, no sys.argv, and the
    /// environment as the process started with it.
    #[arg(long)]
    pub no_python_names: bool,
}

/// Receive OTLP (HTTP and gRPC) and show which OS process sent every export.
#[derive(Debug, Clone, Args)]
pub struct ReceiveArgs {
    /// OTLP/HTTP listen address (port 0: any free port; "off" to disable). The same address as
    /// --grpc serves both protocols on one port.
    #[arg(long, default_value = "127.0.0.1:4318", value_name = "ADDR")]
    pub http: String,
    /// OTLP/gRPC listen address (port 0: any free port; "off" to disable).
    #[arg(long, default_value = "127.0.0.1:4317", value_name = "ADDR")]
    pub grpc: String,
    /// The pre-fork master: its workers are read from /proc (and re-read) for roles and the
    /// worker rules (FC201, FC202, FC208). Without it, each sender's own tree is found from
    /// its /proc entry. A wrapper's pid (sh -c, tini, uv run) or a worker's stands for its master.
    /// A tree in which nothing ran Python or exported while the receiver ran is exit 2 at the
    /// end (after --save-ledger), with no verdict.
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
    /// At the end, the counter METRIC's total over every pid must be N (a sum's total, a
    /// histogram's count): above is FC211, below FC212 (repeatable).
    #[arg(long, value_name = "METRIC=N")]
    pub expect_count: Vec<String>,
    /// Stop after this long (e.g. 60s); with --expect-workers, exit 1 if it was not met.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Lowest severity that makes the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// Answer like a troubled collector: delay=DUR, status=CODE, partial=N (repeatable).
    #[arg(long, value_name = "FAULT")]
    pub inject: Vec<String>,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Also write what the receiver saw (the ledger, JSON) to FILE at the end, for rule tests
    /// and bug reports.
    #[arg(long, value_name = "FILE")]
    pub save_ledger: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Launch a pre-fork server aimed at an embedded OTLP receiver, send it traffic, stop it
/// gracefully, and check that every worker exported every signal under its own identity and
/// that nothing was lost at stop.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Workers to wait for (default: gunicorn's -w/--workers, GUNICORN_CMD_ARGS or config file,
    /// else WEB_CONCURRENCY, else until the number of children is stable for 1 s).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Signals every worker must export.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "metrics,traces,logs"
    )]
    pub signals: Vec<String>,
    /// URL to send requests to (repeatable; http:// only). Default: the master's listening
    /// address, path /.
    #[arg(long = "hit", value_name = "URL")]
    pub hit: Vec<String>,
    /// Requests to send, spread over the --hit URLs, one connection each, as many open at once
    /// as there are workers (at most 16).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub requests: usize,
    /// After the stop, the counter METRIC's total over every pid must be N, or (`served`, the
    /// default) the number of requests the server answered: above is FC211, below FC212
    /// (repeatable).
    #[arg(long, value_name = "METRIC[=N|served]")]
    pub expect_count: Vec<String>,
    /// How long to watch (inspection and receiver) after the requests, before stopping.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub window: Duration,
    /// Also write a JUnit XML report: one testcase per worker per signal, one per finding.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Lowest severity that makes the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// How long the server may take to fork its workers and open its port.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// How long a graceful stop may take before the group is SIGKILLed (gunicorn's own
    /// graceful_timeout is 30 s).
    #[arg(long, value_name = "DUR", default_value = "35s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Read no process memory (/proc facts only): no Python thread names, no sys.argv, and the
    /// environment as the process started with it.
    #[arg(long)]
    pub no_python_names: bool,
    /// Also write what the receiver saw (the ledger, JSON) to FILE and the snapshot beside it,
    /// FILE's extension replaced by .snapshot.json (run.json: run.snapshot.json), for rule
    /// tests and bug reports.
    #[arg(long, value_name = "FILE")]
    pub save_ledger: Option<PathBuf>,
    /// A producer to run once the workers are up, through `sh -c`, in its own process group
    /// (repeatable): a script that enqueues tasks, `celery call`, `rq enqueue`. The watch window
    /// starts when every driver has ended; one still running after --startup-timeout is stopped.
    #[arg(long = "drive", value_name = "CMD")]
    pub drive: Vec<String>,
    /// When the command ends by itself after forking workers (a batch program), how long to wait
    /// for exports in flight before judging.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// The server command, after `--` (e.g. -- gunicorn -w 2 app:app).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The longest duration any flag takes: beyond it a wait is a mistake, not a plan.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Accepts humantime durations ("3s", "900ms", "1m") and bare numbers as seconds, from 0 to
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            if secs > MAX_DURATION.as_secs_f64() {
                return Err(format!("{s}: longer than the maximum of 366 days"));
            }
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(format!("{s}: not a duration of zero or more seconds")),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{e} (examples: 3s, 900ms, 1m)"))?,
    };
    if d > MAX_DURATION {
        return Err(format!("{s}: longer than the maximum of 366 days"));
    }
    Ok(d)
}

/// `--signals a,b`: each once, in the order given; an empty list is allowed here.
pub fn parse_signals(list: &[String]) -> Result<Vec<Signal>, Error> {
    let mut out = Vec::new();
    for s in list.iter().filter(|s| !s.trim().is_empty()) {
        let sig = Signal::parse(s).ok_or_else(|| {
            Error::new(
                format!("--signals {s:?}: not a signal"),
                "use metrics, traces and/or logs",
            )
        })?;
        if !out.contains(&sig) {
            out.push(sig);
        }
    }
    Ok(out)
}

/// `--expect-count METRIC[=N|served]`; `served` (and a bare METRIC) only where requests are
/// sent (`run`).
pub fn parse_expect_count(v: &str, served: bool) -> Result<CountExpectation, Error> {
    let (metric, n) = match v.rsplit_once('=') {
        Some((m, n)) => (m.trim(), Some(n.trim())),
        None => (v.trim(), None),
    };
    let example = if served {
        "e.g. --expect-count http.server.requests=served or --expect-count app.orders=30"
    } else {
        "e.g. --expect-count app.orders=30"
    };
    if metric.is_empty() {
        return Err(Error::new(
            format!("--expect-count {v:?}: no metric name"),
            example,
        ));
    }
    let expected = match n {
        None | Some("served") if served => ExpectedCount::Served(None),
        None | Some("served") => {
            return Err(Error::new(
                format!("--expect-count {v:?}: receive sends no requests, so give the count"),
                example,
            ))
        }
        Some(n) => match n.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => ExpectedCount::Exactly(Num(x)),
            _ => {
                return Err(Error::new(
                    format!("--expect-count {v:?}: {n:?} is not a count of zero or more"),
                    example,
                ))
            }
        },
    };
    Ok(CountExpectation {
        metric: metric.to_string(),
        expected,
    })
}

fn parse_expect_counts(list: &[String], served: bool) -> Result<Vec<CountExpectation>, Error> {
    list.iter().map(|v| parse_expect_count(v, served)).collect()
}

fn parse_addr(flag: &str, v: &str, allow_remote: bool) -> Result<Option<SocketAddr>, Error> {
    if v.eq_ignore_ascii_case("off") || v.is_empty() {
        return Ok(None);
    }
    let a: SocketAddr = v
        .parse()
        .or_else(|_| format!("127.0.0.1:{v}").parse())
        .map_err(|_| {
            Error::new(
                format!("{flag} {v:?}: not an address"),
                "expected HOST:PORT, e.g. 127.0.0.1:4318",
            )
        })?;
    if !a.ip().is_loopback() && !allow_remote {
        return Err(Error::new(
            format!("{flag} {a}: not a loopback address"),
            "add --allow-remote to listen there on purpose",
        ));
    }
    Ok(Some(a))
}

impl ReceiveArgs {
    /// The plain options of `receive`.
    pub fn options(&self, color: bool) -> Result<receive::cmd::ReceiveOptions, Error> {
        let http = parse_addr("--http", &self.http, self.allow_remote)?;
        let grpc = parse_addr("--grpc", &self.grpc, self.allow_remote)?;
        let mut inject = Inject::default();
        for i in &self.inject {
            inject
                .add(i)
                .map_err(|e| Error::new(e, "see otel-forkcheck receive --help"))?;
        }
        let signals = parse_signals(&self.signals)?;
        let mut server = receive::Options {
            http,
            grpc,
            forward: self.forward.clone(),
            inject,
            expected_signals: signals.clone(),
            // The same address for both (port 0 included): one port serving both protocols.
            one_port: http.is_some() && http == grpc,
            ..receive::Options::default()
        };
        self.limits.apply(&mut server)?;
        Ok(receive::cmd::ReceiveOptions {
            server,
            pid: self.pid,
            signals,
            expect_workers: self.expect_workers,
            expect_counts: parse_expect_counts(&self.expect_count, false)?,
            timeout: self.timeout,
            format: self.format,
            fail_on: self.fail_on,
            color,
            save_ledger: self.save_ledger.clone(),
            keep_exited: self.limits.keep_exited,
        })
    }
}

impl RunArgs {
    /// The plain options of `run`.
    pub fn options(&self) -> Result<crate::run::RunOptions, Error> {
        let signals = parse_signals(&self.signals)?;
        if signals.is_empty() {
            return Err(Error::new(
                "--signals is empty",
                "name at least one of metrics, traces, logs",
            ));
        }
        let mut targets = Vec::new();
        for h in &self.hit {
            targets.push(
                Target::parse(h)
                    .map_err(|e| Error::new(e, "e.g. --hit http://127.0.0.1:8000/health"))?,
            );
        }
        if self.requests == 0 {
            return Err(Error::new(
                "--requests 0: nothing would show which workers are active",
                "send at least one request per worker (the default is 30)",
            ));
        }
        Ok(crate::run::RunOptions {
            workers: self.workers,
            signals,
            targets,
            requests: self.requests,
            expect_counts: parse_expect_counts(&self.expect_count, true)?,
            window: self.window,
            junit: self.junit.clone(),
            format: self.format,
            fail_on: self.fail_on,
            startup_timeout: self.startup_timeout,
            grace: self.grace,
            python_names: !self.no_python_names,
            save_ledger: self.save_ledger.clone(),
            drive: self.drive.clone(),
            drain: self.drain,
            command: self.command.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
