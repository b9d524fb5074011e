//! Command-line interface. Spellings are fixed by DESIGN.md; this file only parses, dispatches
//! and maps outcomes to exit statuses (0 pass, 1 findings at or above --fail-on, 2 no check).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diagnose::{self, Facts};
use crate::observe::{self, ObserveError};
use crate::report::{human, json::Report, FailOn, Format};
use crate::snapshot::{Snapshot, SNAPSHOT_SCHEMA};

#[derive(Debug, Parser)]
#[command(
    name = "otel-forkcheck",
    version,
    about = "Finds why OpenTelemetry telemetry from pre-fork Python servers is missing, doubled or mixed up",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Inspecting a live tree without a subcommand is the same as `check`.
    #[command(flatten)]
    check: CheckArgs,
    /// When to color human output (auto: on a terminal, unless NO_COLOR is set).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect a live pre-fork tree (--pid), or diagnose a saved snapshot offline (--snapshot).
    Check(CheckArgs),
    /// Receive OTLP (gRPC and HTTP) and show which OS process sent every export.
    Receive(crate::receive::cmd::ReceiveArgs),
    /// Launch a server (after --), send it traffic, stop it, and check every worker's telemetry.
    Run(crate::run::RunArgs),
    /// Print the long form of a finding code: cause, detection, fix, references.
    Explain {
        /// A finding code (FC103) or slug (exporter-socket-shared); none lists them all.
        code: Option<String>,
    },
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Pid of the pre-fork master (gunicorn arbiter, uWSGI master, Celery MainProcess, ...).
    #[arg(long, value_name = "MASTER")]
    pid: Option<i32>,
    /// Diagnose a snapshot saved with --save-snapshot instead of a live tree.
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    snapshot: Option<PathBuf>,
    /// How long to watch the tree between two samples (0 takes one sample).
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    window: Duration,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Lowest severity that makes the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    fail_on: FailOn,
    /// Also write the observed facts to FILE (JSON), for `check --snapshot` or a bug report.
    #[arg(long, value_name = "FILE")]
    save_snapshot: Option<PathBuf>,
    /// Do not read Python thread names from interpreter memory (/proc facts only).
    #[arg(long)]
    no_python_names: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Accepts humantime durations ("3s", "900ms", "1m") and bare numbers as seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 3s, 900ms, 1m)"))
}

/// Runs the command line and returns the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap: 0 for --help/--version, 2 for usage errors, as our contract says.
            return e.exit_code();
        }
    };
    set_color(cli.color);
    match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Receive(args)) => crate::receive::cmd::receive_main(args),
        Some(Command::Run(args)) => crate::run::run_main(args),
        Some(Command::Explain { code }) => explain(code.as_deref()),
        None => check(&cli.check),
    }
}

fn set_color(choice: ColorChoice) {
    let on = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    };
    colored::control::set_override(on);
}

/// Prints "error: cause" and a hint to stderr and returns 2.
fn cannot_check(cause: &str, hint: &str) -> i32 {
    eprintln!("otel-forkcheck: error: {cause}");
    if !hint.is_empty() {
        eprintln!("  hint: {hint}");
    }
    2
}

fn check(args: &CheckArgs) -> i32 {
    let snapshot = match (&args.snapshot, args.pid) {
        (Some(path), _) => match load_snapshot(path) {
            Ok(s) => s,
            Err(e) => return cannot_check(&e, "pass a file written by --save-snapshot"),
        },
        (None, Some(pid)) => {
            let opts = observe::Options {
                pid,
                window: args.window,
                python_names: !args.no_python_names,
            };
            match observe::observe(&opts) {
                Ok(s) => s,
                Err(e @ (ObserveError::NoSuchPid(_) | ObserveError::PermissionDenied { .. })) => {
                    return cannot_check(&e.to_string(), e.hint())
                }
                Err(e) => return cannot_check(&e.to_string(), e.hint()),
            }
        }
        (None, None) => {
            return cannot_check(
                "nothing to check: give --pid <MASTER> or --snapshot <FILE>",
                "for gunicorn: otel-forkcheck --pid $(cat gunicorn.pid)",
            )
        }
    };
    if let Some(path) = &args.save_snapshot {
        if let Err(e) = save_snapshot(path, &snapshot) {
            return cannot_check(&e, "choose a writable path for --save-snapshot");
        }
    }
    let findings = diagnose::diagnose(&Facts::from_snapshot(&snapshot));
    match args.format {
        Format::Human => print!("{}", human::render(&snapshot, &findings)),
        Format::Json => println!("{}", Report::new(&snapshot, &findings).to_json()),
    }
    args.fail_on.exit_status(&findings)
}

fn load_snapshot(path: &PathBuf) -> Result<Snapshot, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read snapshot {}: {e}", path.display()))?;
    let snap: Snapshot = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a snapshot: {e}", path.display()))?;
    if snap.schema != SNAPSHOT_SCHEMA {
        return Err(format!(
            "{} has snapshot schema {}, this version reads {}",
            path.display(),
            snap.schema,
            SNAPSHOT_SCHEMA
        ));
    }
    Ok(snap)
}

fn save_snapshot(path: &PathBuf, snap: &Snapshot) -> Result<(), String> {
    let text = serde_json::to_string_pretty(snap).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n")
        .map_err(|e| format!("cannot write snapshot {}: {e}", path.display()))
}

fn explain(code: Option<&str>) -> i32 {
    let Some(code) = code else {
        for r in diagnose::rules::ALL {
            println!(
                "{}  {:<36} {:<8} {}",
                r.code,
                r.slug,
                r.severity.as_str(),
                r.summary
            );
        }
        return 0;
    };
    match diagnose::rule(code) {
        Some(r) => {
            println!("{} {} ({})", r.code, r.slug, r.severity.as_str());
            println!("{}\n", r.summary);
            print!("{}", r.doc);
            0
        }
        None => cannot_check(
            &format!("no finding code {code}"),
            "`otel-forkcheck explain` lists every code",
        ),
    }
}
