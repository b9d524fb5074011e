//! Prints the snapshot `observe` takes of a live tree, as JSON (a debugging aid until the CLI
//! grows `--save-snapshot`): `cargo run --example observe_dump -- PID [WINDOW_MS]`.

use std::time::Duration;

use otel_forkcheck::observe::{observe, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(pid) = args.next().and_then(|p| p.parse().ok()) else {
        eprintln!("usage: observe_dump PID [WINDOW_MS]");
        std::process::exit(2);
    };
    let window_ms: u64 = args.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let opts = Options {
        pid,
        window: Duration::from_millis(window_ms),
        python_names: true,
    };
    match observe(&opts) {
        Ok(snap) => match serde_json::to_string_pretty(&snap) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        Err(e) => {
            eprintln!("error: {e} ({})", e.hint());
            std::process::exit(2);
        }
    }
}
