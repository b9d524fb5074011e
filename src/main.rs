//! The binary: the command line ([`otel_forkcheck::cli::main`]) with the process-wide care
//! around it. Standard output goes through [`out::Relay`] when it is a pipe or a socket, so a
//! reader going away (`| head -1`, `| true`) never makes a print panic; the exit status is the
//! command's own. A panic anyway (a bug) unwinds first, so whatever the command started is
//! stopped by its guards' Drop (`run`'s server), then exits 2 ("the check could not be made")
//! instead of Rust's 101; a panic that is only a closed stdout or stderr exits 1, quietly,
//! since the findings it would have shown are unknown.
//!
//! The same binary is `run`'s supervisor when started with [`supervise::ARG`] (see
//! [`otel_forkcheck::run::supervise`]); nothing else is done then.

use otel_forkcheck::run::{launch, supervise};
use otel_forkcheck::{error::EXIT_CANNOT_CHECK, out};

/// Exit status when only a closed stdout or stderr stopped the command.
const EXIT_OUTPUT_CLOSED: i32 = 1;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == supervise::ARG) {
        std::process::exit(supervise::main(&args[2..]));
    }
    launch::enable_supervisor("/proc/self/exe".into());
    out::quiet_broken_pipe_panics();
    let relay = out::Relay::install();
    let status = match std::panic::catch_unwind(otel_forkcheck::cli::main) {
        Ok(status) => status,
        Err(payload) if out::is_broken_pipe(payload.as_ref()) => EXIT_OUTPUT_CLOSED,
        Err(_) => {
            // The hook has printed the panic; say what it means for the user.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"otel-forkcheck: error: internal error (a bug; please report it with the message above)\n",
            );
            EXIT_CANNOT_CHECK
        }
    };
    if let Some(r) = relay {
        r.finish();
    }
    std::process::exit(status);
}
