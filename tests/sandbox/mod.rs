//! Containers made of namespaces, for the end-to-end tests of containerised targets: a gunicorn
//! sandbox (new network, mount and pid namespaces, `fixtures/containers/sandbox.sh`) and a
//! network namespace behind a veth pair (`ip netns`). Root only: [`require_root`] says so,
//! loudly, when the tests cannot run.
//!
//! Every sandbox is torn down by its guard: the process group is ended (SIGTERM, then SIGKILL:
//! a pid namespace's pid 1 dying takes the whole namespace with it) and a network namespace is
//! deleted with its veth pair.
//!
//! Include with `mod common; mod sandbox;` from a test file.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, report::Outcome, Group};

/// Where the sandbox mounts the venv and the fixtures: a tmpfs over /mnt that exists only in
/// the sandbox's mount namespace.
pub const BOX: &str = "/mnt/forkcheck-sandbox";

/// True when the test can run (root). Otherwise prints why it is skipped on stderr (uncaptured,
/// so it shows in `cargo test` output), and the caller returns.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        for tool in ["unshare", "nsenter", "ip"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{test}: `{tool}` is missing (install util-linux and iproute2; .ci/run does)"
            );
        }
        return true;
    }
    // Straight to stderr, not through eprintln!, which the test harness captures (and hides
    // for a test that returns): a skip must show in every run's output.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root to create pid, network and mount namespaces \
         (unshare, nsenter, ip netns); CI runs it as root"
    );
    false
}

/// The NSpid chain of `pid` as this process's /proc shows it (outermost first).
pub fn nspid(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// gunicorn as a container runs it: pid 1 of its own pid namespace, in network and mount
/// namespaces of its own, the venv and the app at paths (under [`BOX`]) the host does not have,
/// the stand-in collector on the sandbox's loopback.
pub struct GunicornBox {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    /// The master's pid on the host.
    pub master: i32,
    dir: tempfile::TempDir,
}

impl GunicornBox {
    /// `gunicorn -c gunicorn/<conf>.conf.py -b 127.0.0.1:0 -w <workers>` (relative to the app
    /// directory, its working directory) from the `current` venv, with `env` on top of this
    /// process's environment less any OTEL_*, FIXTURE_* and PYTHONPATH. Returns once the master
    /// has `workers` children.
    pub fn start(conf: &str, workers: usize, env: &[(&str, &str)]) -> GunicornBox {
        assert!(
            !Path::new(BOX).exists(),
            "{BOX} exists on the host: the sandbox's paths must not"
        );
        let venv = common::venv("current");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("gunicorn.log");
        let log_file = File::create(&log).expect("create log");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--kill-child",
        ])
        .arg("sh")
        .arg(common::root().join("fixtures/containers/sandbox.sh"))
        .arg(&venv)
        .arg(common::root().join("fixtures"))
        .arg(dir.path())
        .arg("--")
        .args(["-c", &format!("gunicorn/{conf}.conf.py")])
        .args(["-b", "127.0.0.1:0", "-w", &workers.to_string()])
        .args(["--control-socket", &format!("{BOX}/gunicorn.ctl")])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("OTEL_") || k.starts_with("FIXTURE_") || k == "PYTHONPATH" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied());
        let mut group = Group::spawn(&mut cmd);
        let pgid = group.pgid;
        let deadline = Instant::now() + Duration::from_secs(60);
        let tail = |dir: &Path| {
            let mut s = std::fs::read_to_string(dir.join("gunicorn.log")).unwrap_or_default();
            s.push_str(&std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default());
            s
        };
        loop {
            // The master: gunicorn, pid 1 of a pid namespace below ours.
            let master = common::live_members(pgid).into_iter().find(|&p| {
                nspid(p).len() == 2 && nspid(p)[1] == 1 && cmdline(p).contains("gunicorn")
            });
            if let Some(m) = master {
                let listening = std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Listening at: http://127.0.0.1:");
                if listening && common::children_of(m).len() >= workers {
                    return GunicornBox {
                        group,
                        master: m,
                        dir,
                    };
                }
            }
            if group.leader_exited() {
                panic!("the sandbox exited during start-up:\n{}", tail(dir.path()));
            }
            if Instant::now() > deadline {
                panic!(
                    "the sandboxed gunicorn ({conf}) did not start {workers} workers:\n{}",
                    tail(dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The workers' host pids, sorted.
    pub fn workers(&self) -> Vec<i32> {
        common::children_of(self.master)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gunicorn.log")).unwrap_or_default()
    }
}

/// The built binary's JSON report from `cmd` (checked against docs/report.schema.json).
pub fn json_outcome(cmd: &mut Command) -> Outcome {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        report.is_object(),
        "{cmd:?} gave no JSON report (status {}):\n{stdout}\n{stderr}",
        out.status
    );
    common::schema::assert_valid(&report);
    Outcome {
        status: out.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_otel-forkcheck"))
}

/// A network namespace joined to ours by a veth pair on a private /30: `host_addr` on our side,
/// `ns_addr` (and loopback) inside. Deleted, with the pair, on drop.
pub struct NetNs {
    pub name: String,
    host_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A new namespace named after this test process, unique within it.
    pub fn create() -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("fc-{pid}-{n}");
        // Interface names hold 15 bytes at most.
        let tag = format!("{:x}", (pid << 4) | (n & 0xf));
        let host_if = format!("fch{tag}");
        let ns_if = format!("fcc{tag}");
        // One /30 of 10.213.0.0/16 per (process, namespace): .1 ours, .2 theirs.
        let block = ((pid.wrapping_mul(8) + n) % 16384) * 4;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block;
        let host_addr = Ipv4Addr::from(base + 1);
        let ns_addr = Ipv4Addr::from(base + 2);
        ip(&["netns", "add", &name]);
        // From here on the guard cleans up whatever was made.
        let me = NetNs {
            name,
            host_if,
            host_addr,
            ns_addr,
        };
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
            "netns",
            &me.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &me.host_if,
        ]);
        ip(&["link", "set", &me.host_if, "up"]);
        ip(&[
            "-n",
            &me.name,
            "addr",
            "add",
            &format!("{ns_addr}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &me.name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &me.name, "link", "set", "lo", "up"]);
        me
    }

    /// `ip netns exec <name> <program> <args...>`.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace goes when its last process does.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
