//! The built `otel-forkcheck receive` as a collector for real SDK clients (tests/receive_*.rs):
//! started in its own process group on an ephemeral OTLP/HTTP port, its pipes read line by line
//! on threads so every wait can time out.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Group;

/// Lines of a child's pipe, read on a thread.
pub fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line for which `wanted` holds, within `wait`; every line read is kept in `seen`.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    wanted: impl Fn(&str) -> bool,
    wait: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if wanted(&l) {
                    return Some(l);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// A running `otel-forkcheck receive --http 127.0.0.1:0 --grpc off <args>`. Its stdout is left
/// in `group.child.stdout` for the test to read.
pub struct Receiver {
    pub group: Group,
    /// Its stderr lines not read yet.
    pub stderr: mpsc::Receiver<String>,
    /// Its stderr lines read so far.
    pub log: Vec<String>,
    /// Where it takes OTLP/HTTP: `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Receiver {
    /// Starts it; returns once it says where it listens, or panics after `wait`.
    pub fn start(args: &[&str], wait: Duration) -> Receiver {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otel-forkcheck"));
        cmd.args(["receive", "--http", "127.0.0.1:0", "--grpc", "off"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut group = Group::spawn(&mut cmd);
        let stderr = lines_of(group.child.stderr.take().unwrap());
        let mut log = Vec::new();
        let listening = wait_line(
            &stderr,
            |l| l.starts_with("otel-forkcheck receive: listening"),
            wait,
            &mut log,
        )
        .unwrap_or_else(|| panic!("receiver did not start within {wait:?}: {log:#?}"));
        let url = listening
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("receiver URL")
            .trim_end_matches(',')
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{listening}");
        Receiver {
            group,
            stderr,
            log,
            url,
        }
    }
}
