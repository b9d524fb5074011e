//! End-to-end test helpers: the pinned Python venvs, the stand-in OTLP/HTTP collector
//! (`fixtures/collector.py`) and real gunicorn and uWSGI fixtures (`fixtures/gunicorn/*.conf.py`,
//! `fixtures/uwsgi/*.ini`).
//!
//! Every process is started in its own process group and the whole group is ended when its guard
//! drops (SIGTERM, a short grace, then SIGKILL), so a failing test leaves nothing behind.
//! Depends on std, libc and nix only (not on the crate); the crate's binary comes in by path.
//!
//! Include with `mod common;` from a test file.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub mod hostile;
pub mod launch;
pub mod queues;
pub mod receiver;
pub mod report;
pub mod schema;
mod uwsgi;

// Not every test file starts uWSGI (as with `dead_code` above).
#[allow(unused_imports)]
pub use uwsgi::Uwsgi;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a fixture may take to come up. The slow-collector fixture alone spends about
/// 3 x the collector delay importing the app in the master, and CI runs tests in parallel.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process group gets after SIGTERM before SIGKILL. Short on purpose: a worker whose
/// metric reader is stuck blocks its exit for the 30 s export timeout.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// The SDK's export intervals made long, so nothing reconnects or exports while a tree is
/// inspected (and what is recorded is still pending when a run ends).
pub const QUIET: [(&str, &str); 3] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "30000"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "30000"),
];

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Removes from `cmd`'s environment every variable of the test's own environment named in
/// `names` (`OTEL_*` stands for every name that starts with `OTEL_`), so the developer's shell
/// cannot steer what a test starts.
pub fn strip_env(cmd: &mut Command, names: &[&str]) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let named = names.iter().any(|n| match n.strip_suffix('*') {
            Some(prefix) => k.starts_with(prefix),
            None => k == *n,
        });
        if named {
            cmd.env_remove(&key);
        }
    }
}

/// The venv `target/venvs/<name>` built from `fixtures/requirements/<name>.txt`, built (or found
/// up to date) by `scripts/setup-venvs.sh` once per test binary. The script itself caches across
/// runs and locks across concurrent test binaries.
pub fn venv(name: &str) -> PathBuf {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Held while the script runs, so that parallel tests in this binary wait instead of racing.
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/venvs").join(name);
    if !done.iter().any(|d| d == name) {
        let out = Command::new("bash")
            .arg(root().join("scripts/setup-venvs.sh"))
            .arg(name)
            .output()
            .expect("run bash scripts/setup-venvs.sh");
        assert!(
            out.status.success(),
            "scripts/setup-venvs.sh {name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        done.push(name.to_string());
    }
    dir
}

/// A TCP port that was free on 127.0.0.1 a moment ago (prefer binding port 0 where possible).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A spawned process that leads its own process group; the group is ended on drop.
pub struct Group {
    /// The leader (take its piped stdio, signal or wait for it; the guard still ends the group).
    pub child: Child,
    /// The group id, which is also the leader's pid.
    pub pgid: i32,
}

impl Group {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pgid = child.id() as i32;
        Group { child, pgid }
    }

    /// Whether the leader has exited (and is then reaped).
    pub fn leader_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the group: SIGTERM to all of it, SIGKILL to whatever is left after the grace, and
    /// reaps the leader. Members orphaned by the SIGKILL are reaped by init, not by us.
    pub fn stop(&mut self) {
        let pg = Pid::from_raw(self.pgid);
        let _ = killpg(pg, Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while !(self.leader_exited() && live_members(self.pgid).is_empty()) {
            if Instant::now() > deadline {
                let _ = killpg(pg, Signal::SIGKILL);
                let _ = self.child.wait();
                wait_until(Duration::from_secs(5), || {
                    live_members(self.pgid).is_empty()
                });
                return;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pids of the processes in group `pgid` that are not zombies, from `/proc/<pid>/stat`.
pub fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name (which may hold spaces): state ppid pgrp ...
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 1..]
                .split_whitespace()
                .collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2].parse() == Ok(pgid)
        })
        .collect()
}

/// How long `pid` has been running, in ms (its start time read as observe reads it); 0 for a
/// pid that is gone.
pub fn age_ms(pid: i32) -> u64 {
    use otel_forkcheck::proc::file::{now_unix_ms, Clock};
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| otel_forkcheck::proc::task::parse_cpu_exit(&s))
        .map_or(0, |s| {
            now_unix_ms().saturating_sub(Clock::new().ticks_to_unix_ms(s.starttime))
        })
}

/// The current children of `pid`, sorted, from `/proc/<pid>/task/*/children`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Polls `done` every 20 ms for up to `timeout`; returns whether it became true.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file, for panic messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One HTTP/1.1 GET to 127.0.0.1:`port`: (status, body). `Connection: close`, 10 s timeouts.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Runs `f` while another thread sends GET `path` to 127.0.0.1:`port` every 20 ms, one
/// connection each, answered or not (a server replacing its workers drops some).
pub fn while_loaded<T>(port: u16, path: &str, f: impl FnOnce() -> T) -> T {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http_get(port, path);
                sleep(Duration::from_millis(20));
            }
        });
        let out = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

/// Export counts reported by the collector's `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub metrics: u64,
    pub traces: u64,
    pub logs: u64,
}

/// `fixtures/collector.py`: an OTLP/HTTP sink that answers 200 to every export, after an
/// optional delay, and counts them.
pub struct Collector {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts the collector on an ephemeral port; each export is answered after `delay_secs`.
    pub fn start(delay_secs: f64) -> Collector {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("collector.log");
        let mut group = Group::spawn(
            Command::new("python3")
                .arg(root().join("fixtures/collector.py"))
                .args(["--delay", &delay_secs.to_string()])
                .stdout(Stdio::piped())
                .stderr(File::create(&log).expect("create collector log")),
        );
        let mut first = String::new();
        let stdout = group.child.stdout.take().expect("piped stdout");
        // The first line comes at once, or stdout closes because python3 failed.
        let _ = BufReader::new(stdout).read_line(&mut first);
        let port = match first.strip_prefix("LISTENING ") {
            Some(p) => p.trim().parse().expect("a port after LISTENING"),
            None => panic!(
                "collector.py did not start (first line {first:?}):\n{}",
                tail(&log, 20)
            ),
        };
        Collector {
            group,
            port,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`: the value for OTEL_EXPORTER_OTLP_ENDPOINT (SDKs that append
    /// `/v1/<signal>` themselves, 1.7+).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The full URL for one signal ("traces", "metrics", "logs"), for the per-signal
    /// OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT that old SDKs (1.6.2) use as given.
    pub fn signal_url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.url())
    }

    pub fn stats(&self) -> Stats {
        let (status, body) = http_get(self.port, "/stats").expect("GET /stats from the collector");
        assert_eq!(status, 200, "GET /stats: {body}");
        // The body is flat JSON written by collector.py: {"metrics": 1, "traces": 2, ...}.
        let count = |key: &str| -> u64 {
            let rest = &body[body.find(&format!("\"{key}\": ")).expect(key) + key.len() + 4..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a count")
        };
        Stats {
            metrics: count("metrics"),
            traces: count("traces"),
            logs: count("logs"),
        }
    }

    /// Polls the stats until `done` holds; panics with the collector's log after `timeout`.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&Stats) -> bool) -> Stats {
        let mut last = Stats::default();
        if wait_until(timeout, || {
            last = self.stats();
            done(&last)
        }) {
            return last;
        }
        panic!(
            "collector stats still {last:?} after {timeout:?}; its log:\n{}",
            self.log_tail(20)
        )
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    pub fn pgid(&self) -> i32 {
        self.group.pgid
    }
}

/// `n` GETs of `path` to the fixture app on `port`, one connection each; the pid that served
/// each (the app answers `ok pid=<pid>`). Panics on a failed request, with the server's log.
fn hit_app(port: u16, path: &str, n: usize, log: impl Fn() -> String) -> Vec<i32> {
    (0..n)
        .map(|_| match http_get(port, path) {
            Ok((200, body)) => body
                .trim()
                .strip_prefix("ok pid=")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("unexpected body {body:?}")),
            other => panic!("GET {path}: {other:?}; server log:\n{}", log()),
        })
        .collect()
}

/// `otel-forkcheck receive` as a real OTLP/gRPC collector on an ephemeral port (for exporters the
/// stand-in HTTP sink cannot serve), in its own process group like every fixture.
pub struct GrpcReceiver {
    group: Group,
    /// `127.0.0.1:<port>` it bound.
    pub addr: String,
}

impl GrpcReceiver {
    /// `bin` is the test's `env!("CARGO_BIN_EXE_otel-forkcheck")`.
    pub fn start(bin: &str) -> GrpcReceiver {
        let mut group = Group::spawn(
            Command::new(bin)
                .args(["receive", "--http", "off", "--grpc", "127.0.0.1:0"])
                .args(["--timeout", "300s", "--format", "ndjson"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = group.child.stderr.take().expect("piped stderr");
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        let addr = line
            .split("OTLP/gRPC on ")
            .nth(1)
            .map(|a| a.trim().trim_end_matches(',').to_string())
            .unwrap_or_else(|| panic!("receive did not start: {line:?}"));
        GrpcReceiver { group, addr }
    }

    /// `http://<addr>`: OTEL_EXPORTER_OTLP_ENDPOINT for OTLP/gRPC exporters.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The major version of the gunicorn installed in the venv whose `bin` this is (its
/// `gunicorn-<version>.dist-info`).
fn gunicorn_major(bin: &Path) -> u32 {
    let lib = bin.parent().expect("venv").join("lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|py| std::fs::read_dir(py.path().join("site-packages")).ok())
        .flatten()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("gunicorn-")?.strip_suffix(".dist-info")?;
            version.split('.').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no gunicorn-*.dist-info under {}", lib.display()))
}

/// A gunicorn master (sync workers) running one of the `fixtures/gunicorn/<conf>.conf.py`
/// configurations from a pinned venv.
pub struct Gunicorn {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    pub master_pid: i32,
    /// The port gunicorn bound (`-b 127.0.0.1:0`, read back from its "Listening at" line).
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gunicorn {
    /// `gunicorn -c fixtures/gunicorn/<conf>.conf.py -w <workers>` from venv `<venv>`, with `env`
    /// on top of this process's environment less any OTEL_*, FIXTURE_* and PYTHONPATH. Returns
    /// once the master has `workers` children.
    pub fn start(venv_name: &str, conf: &str, workers: usize, env: &[(&str, &str)]) -> Gunicorn {
        Self::launch(venv_name, &["gunicorn"], conf, &[], workers, env)
    }

    /// The same with more gunicorn options after the config (for example `-k gevent`, which
    /// overrides the config file's `worker_class`).
    pub fn start_with_args(
        venv_name: &str,
        conf: &str,
        args: &[&str],
        workers: usize,
        env: &[(&str, &str)],
    ) -> Gunicorn {
        Self::launch(venv_name, &["gunicorn"], conf, args, workers, env)
    }

    /// The same under `opentelemetry-instrument` (conf `instrument`: the app leaves the set-up
    /// to the distro). Defaults to OTLP/HTTP (the distro's default is gRPC) and turns logging
    /// auto-instrumentation on; `env` overrides both.
    pub fn start_instrumented(venv_name: &str, workers: usize, env: &[(&str, &str)]) -> Gunicorn {
        let mut all = vec![
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true"),
        ];
        all.extend_from_slice(env);
        Self::launch(
            venv_name,
            &["opentelemetry-instrument", "gunicorn"],
            "instrument",
            &[],
            workers,
            &all,
        )
    }

    fn launch(
        venv_name: &str,
        argv: &[&str],
        conf: &str,
        args: &[&str],
        workers: usize,
        env: &[(&str, &str)],
    ) -> Gunicorn {
        let bin = venv(venv_name).join("bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("gunicorn.log");
        let log_file = File::create(&log).expect("create gunicorn log");
        let mut cmd = Command::new(bin.join(argv[0]));
        cmd.args(&argv[1..])
            .arg("-c")
            .arg(root().join(format!("fixtures/gunicorn/{conf}.conf.py")))
            .args(args)
            .args(["-b", "127.0.0.1:0", "-w", &workers.to_string()]);
        // gunicorn 27's control socket defaults to one path per user: parallel tests collide.
        // Older releases (the Python 3.7 venv's) have none and refuse the flag.
        if gunicorn_major(&bin) >= 27 {
            cmd.arg("--control-socket")
                .arg(dir.path().join("gunicorn.ctl"));
        }
        cmd.current_dir(root())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        // Only what the test asks for reaches the SDK, whatever the developer's shell exports.
        strip_env(&mut cmd, &["OTEL_*", "FIXTURE_*", "PYTHONPATH"]);
        // opentelemetry-instrument execs `gunicorn` through PATH.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
        cmd.envs(env.iter().copied());
        let group = Group::spawn(&mut cmd);
        let mut g = Gunicorn {
            master_pid: group.pgid,
            group,
            port: 0,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while g.port == 0 || g.worker_pids().len() < workers {
            if g.group.leader_exited() {
                panic!("gunicorn exited during start-up:\n{}", g.log_tail(30));
            }
            if Instant::now() > deadline {
                panic!(
                    "gunicorn ({conf}, venv {venv_name}) did not start {workers} workers in \
                     {START_TIMEOUT:?} (has {:?}):\n{}",
                    g.worker_pids(),
                    g.log_tail(30)
                );
            }
            if g.port == 0 {
                g.port = listening_port(&std::fs::read_to_string(&g.log).unwrap_or_default());
            }
            sleep(Duration::from_millis(20));
        }
        g
    }

    /// The master's current children (workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid)
    }

    /// Sends `n` GET `path` requests, one connection each; returns the pid that served each.
    /// Panics on a failed request, with gunicorn's log.
    pub fn hit(&self, path: &str, n: usize) -> Vec<i32> {
        hit_app(self.port, path, n, || self.log_tail(30))
    }

    /// A graceful stop as an operator does it: SIGTERM to the master only, then wait up to
    /// `timeout` for it to exit (gunicorn stops its workers itself). Returns whether it exited;
    /// anything left is ended on drop.
    pub fn terminate_master(&mut self, timeout: Duration) -> bool {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.master_pid), Signal::SIGTERM);
        wait_until(timeout, || self.group.leader_exited())
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    pub fn pgid(&self) -> i32 {
        self.group.pgid
    }
}

/// The port in gunicorn's "Listening at: http://127.0.0.1:PORT (PID)" line, or 0.
fn listening_port(log: &str) -> u16 {
    log.lines()
        .find_map(|line| {
            let rest = &line[line.find("Listening at: http://")? + 21..];
            let addr = rest.split_whitespace().next()?;
            addr.rsplit_once(':')?.1.parse().ok()
        })
        .unwrap_or(0)
}
