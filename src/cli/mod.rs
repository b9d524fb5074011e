//! The command line: parses ([`args`]), hands plain options to `check`, `receive` and `run`,
//! and maps outcomes to exit statuses (0 pass, 1 findings at or above --fail-on, 2 no check,
//! printed by the one [`crate::error::Error`]).

pub mod args;
pub mod generate;

use std::io::IsTerminal;
use std::path::Path;

use clap::Parser;

use crate::diagnose::{self, Facts};
use crate::error::Error;
use crate::observe;
use crate::report::{emit_report, model::Report, print_stdout};
use crate::snapshot::{Snapshot, SNAPSHOT_SCHEMA};
use args::{CheckArgs, Cli, ColorChoice, Command};

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
        Some(Command::Receive(args)) => {
            // The global --color flag (with NO_COLOR and the TTY check) has been applied.
            let color = colored::control::SHOULD_COLORIZE.should_colorize();
            match args.options(color) {
                Ok(o) => crate::receive::cmd::receive(o),
                Err(e) => e.print(),
            }
        }
        Some(Command::Run(args)) => match args.options() {
            Ok(o) => crate::run::run(o),
            Err(e) => e.print(),
        },
        Some(Command::Explain { code }) => explain(code.as_deref()),
        Some(Command::Completions { shell }) => generate::completions(shell),
        Some(Command::Manpage { dir }) => generate::manpage(dir.as_deref()),
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

fn check(args: &CheckArgs) -> i32 {
    match check_findings(args) {
        Ok(status) => status,
        Err(e) => e.print(),
    }
}

fn check_findings(args: &CheckArgs) -> Result<i32, Error> {
    let snapshot = match (&args.snapshot, args.pid) {
        (Some(path), _) => load_snapshot(path)
            .map_err(|e| Error::new(e, "pass a file written by --save-snapshot"))?,
        (None, Some(pid)) => runs_python(observe::observe(&observe::Options {
            pid,
            window: args.window,
            python_names: !args.no_python_names,
        })?)?,
        (None, None) => {
            return Err(Error::new(
                "nothing to check: give --pid <MASTER> or --snapshot <FILE>",
                "for gunicorn: otel-forkcheck --pid $(cat gunicorn.pid)",
            ))
        }
    };
    if let Some(path) = &args.save_snapshot {
        save_snapshot(path, &snapshot)
            .map_err(|e| Error::new(e, "choose a writable path for --save-snapshot"))?;
    }
    let findings = diagnose::diagnose(&Facts::from_snapshot(&snapshot));
    Ok(emit_report(
        &Report::new(&snapshot, &findings),
        args.format,
        args.fail_on,
    ))
}

/// A tree in which nothing runs Python cannot be checked: a pass would only say that the pid
/// is not the server's (a shell, a sidecar, the collector).
fn runs_python(snap: Snapshot) -> Result<Snapshot, Error> {
    if snap.processes.is_empty() || !snap.processes.iter().all(|p| p.python.not_python) {
        return Ok(snap);
    }
    Err(Error::new(
        crate::observe::no_python_cause(&snap, "run no Python: nothing here to check"),
        crate::observe::PYTHON_MASTER_HINT,
    ))
}

fn load_snapshot(path: &Path) -> Result<Snapshot, String> {
    // Only a regular file, and only up to a cap: `--snapshot /dev/zero` or a fifo is an error.
    let text = crate::proc::bounded::read_regular_file_capped(
        path,
        crate::proc::bounded::MAX_SNAPSHOT_BYTES,
    )
    .map_err(|e| format!("cannot read snapshot: {e}"))?;
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

fn save_snapshot(path: &Path, snap: &Snapshot) -> Result<(), String> {
    let text = serde_json::to_string_pretty(snap).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n")
        .map_err(|e| format!("cannot write snapshot {}: {e}", path.display()))
}

fn explain(code: Option<&str>) -> i32 {
    let Some(code) = code else {
        let mut out = String::new();
        for r in diagnose::rules::ALL {
            out.push_str(&format!(
                "{}  {:<36} {:<8} {}\n",
                r.code,
                r.slug,
                r.severity.as_str(),
                r.summary
            ));
        }
        print_stdout(&out);
        return 0;
    };
    match diagnose::rule(code) {
        Some(r) => {
            print_stdout(&format!(
                "{} {} ({})\n{}\n\n{}",
                r.code,
                r.slug,
                r.severity.as_str(),
                r.summary,
                r.doc
            ));
            0
        }
        None => Error::new(
            format!("no finding code {code}"),
            "`otel-forkcheck explain` lists every code",
        )
        .print(),
    }
}
