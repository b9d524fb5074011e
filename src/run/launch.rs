//! Starts the user's server in its own process group and guarantees it is gone when we are.
//!
//! The group is what gets killed, never anything found by name. The child also gets a
//! parent-death signal, so even a SIGKILLed otel-forkcheck leaves no server behind.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: spawn
//! from a thread that lives as long as the run (`run` spawns from the main thread, never from a
//! tokio worker). It survives exec, so `opentelemetry-instrument gunicorn` keeps it; a wrapper
//! that forks (a shell running several commands) passes it to nobody, and then only the group
//! kill on our way out (Drop, Ctrl-C) covers the grandchildren.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Lines of server output kept for error reports.
const KEEP_LINES: usize = 200;

pub struct Server {
    child: Child,
    /// Pid of the launched command, which is also its process group id.
    pub pid: i32,
    output: Arc<Mutex<VecDeque<String>>>,
    status: Option<ExitStatus>,
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// True when every process of the group left before the grace period ended.
    pub graceful: bool,
    pub waited: Duration,
}

impl Server {
    /// Spawns `argv` with extra environment, stdout and stderr captured.
    pub fn spawn(argv: &[String], env: &[(String, String)]) -> std::io::Result<Server> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty server command")
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            keep_lines(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            keep_lines(err, output.clone());
        }
        Ok(Server {
            pid: child.id() as i32,
            child,
            output,
            status: None,
        })
    }

    /// The last `n` lines the server printed (stdout and stderr interleaved).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines = self.output.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// "exit status 3", "killed by SIGSEGV", once the launched command has exited.
    pub fn status_text(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let st = self.exited()?;
        Some(match (st.code(), st.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(s) => format!("killed by {}", s.as_str()),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "exited".to_string(),
        })
    }

    /// The launched command's exit status, once it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// True while any process of the group is alive.
    pub fn group_alive(&mut self) -> bool {
        self.exited();
        // A zombie child would still count; `exited` reaped ours, the rest are the server's.
        killpg(Pid::from_raw(self.pid), None).is_ok()
    }

    /// Graceful stop: SIGTERM to `master` (what gunicorn and uWSGI expect; a signal to the
    /// whole group cuts some servers' exit flush short), then SIGKILL to the group after `grace`.
    pub fn stop(&mut self, master: i32, grace: Duration) -> StopOutcome {
        self.stop_or_abort(master, grace, &|| false)
    }

    /// [`Server::stop`], cut short (SIGKILL to the group at once) when `abort` turns true, e.g.
    /// on a second Ctrl-C.
    pub fn stop_or_abort(
        &mut self,
        master: i32,
        grace: Duration,
        abort: &dyn Fn() -> bool,
    ) -> StopOutcome {
        let start = Instant::now();
        let _ = kill(Pid::from_raw(master), Signal::SIGTERM);
        while start.elapsed() < grace && !abort() {
            if !self.group_alive() {
                return StopOutcome {
                    graceful: true,
                    waited: start.elapsed(),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_group();
        StopOutcome {
            graceful: false,
            waited: start.elapsed(),
        }
    }

    /// SIGKILL to the whole group and reap the launched command.
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        // Give the kernel a moment to take the group's other members away.
        let until = Instant::now() + Duration::from_secs(2);
        while killpg(Pid::from_raw(self.pid), None).is_ok() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.group_alive() {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
            let until = Instant::now() + Duration::from_millis(500);
            while self.group_alive() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill_group();
        } else if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }
}

fn keep_lines(stream: impl Read + Send + 'static, lines: Arc<Mutex<VecDeque<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = lines.lock() {
                if l.len() == KEEP_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_is_kept_and_exit_seen() {
        let mut s = Server::spawn(&sh("echo one; echo two >&2; exit 3"), &[]).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while s.exited().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.exited().and_then(|st| st.code()), Some(3));
        std::thread::sleep(Duration::from_millis(50));
        let mut lines = s.last_lines(10);
        lines.sort();
        assert_eq!(lines, vec!["one", "two"]);
    }

    #[test]
    fn stop_kills_a_group_that_ignores_sigterm() {
        // The child of sh ignores SIGTERM too: only SIGKILL to the group ends it.
        let mut s = Server::spawn(&sh("trap '' TERM; sleep 30 & wait"), &[]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let pgid = s.pid;
        let outcome = s.stop(pgid, Duration::from_millis(300));
        assert!(!outcome.graceful);
        assert!(
            killpg(Pid::from_raw(pgid), None).is_err(),
            "group still alive"
        );
    }

    #[test]
    fn drop_leaves_no_process() {
        let s = Server::spawn(&sh("sleep 30 & sleep 30"), &[]).unwrap();
        let pgid = s.pid;
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        assert!(
            killpg(Pid::from_raw(pgid), None).is_err(),
            "group still alive"
        );
    }
}
