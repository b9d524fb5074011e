//! Starts the user's server in its own process group and guarantees it is gone when we are.
//!
//! The group, and what the supervisor adopted, is what gets killed, never anything found by
//! name. In the binary the server runs under a supervisor ([`super::supervise`]: a subreaper
//! that SIGKILLs everything below it when `run` ends or dies, even by SIGKILL); `main` enables
//! it with [`enable_supervisor`]. Without it (the library, unit tests) the server is our own
//! child with a parent-death signal, which covers the direct child only.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: spawn
//! from a thread that lives as long as the run (`run` spawns from the main thread, never from a
//! tokio worker).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::supervise::{self, Exit, Report};

/// Lines of server output kept for error reports.
const KEEP_LINES: usize = 200;
/// How long the supervisor may take to say it started the command.
const START_REPORT: Duration = Duration::from_secs(10);
/// How long the supervisor may take to clean up and exit when told to.
const SUPERVISOR_EXIT: Duration = Duration::from_secs(8);

static SUPERVISOR: OnceLock<PathBuf> = OnceLock::new();

/// Launch servers under a supervisor run from `exe` (this binary; `main` passes
/// `/proc/self/exe`, which stays valid even if the file is replaced meanwhile).
pub fn enable_supervisor(exe: PathBuf) {
    let _ = SUPERVISOR.set(exe);
}

enum Mode {
    /// Under the supervisor, which reports the launched command's exit on `control`.
    Supervised {
        sup: Child,
        control: UnixStream,
        exit: Arc<Mutex<Option<Exit>>>,
        /// The supervisor has been told to finish and has been reaped.
        done: bool,
    },
    /// Our own child.
    Direct(Child),
}

pub struct Server {
    mode: Mode,
    /// Pid of the launched command, which is also its process group id.
    pub pid: i32,
    output: Arc<Output>,
    status: Option<Exit>,
    daemon_noted: bool,
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// True when every process of the server left before the grace period ended.
    pub graceful: bool,
    pub waited: Duration,
}

impl Server {
    /// Spawns `argv` with extra environment, stdout and stderr captured.
    pub fn spawn(argv: &[String], env: &[(String, String)]) -> std::io::Result<Server> {
        if argv.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty server command",
            ));
        }
        match SUPERVISOR.get() {
            Some(exe) => Server::spawn_supervised(exe, argv, env),
            None => Server::spawn_direct(argv, env),
        }
    }

    fn spawn_direct(argv: &[String], env: &[(String, String)]) -> std::io::Result<Server> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let nofile = crate::receive::limits::original_nofile();
        // SAFETY: prctl and setrlimit are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some((soft, hard)) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let output = capture(&mut child);
        Ok(Server {
            pid: child.id() as i32,
            mode: Mode::Direct(child),
            output,
            status: None,
            daemon_noted: false,
        })
    }

    fn spawn_supervised(
        exe: &PathBuf,
        argv: &[String],
        env: &[(String, String)],
    ) -> std::io::Result<Server> {
        let (ours, theirs) = UnixStream::pair()?;
        let nofile = crate::receive::limits::original_nofile();
        let mut cmd = Command::new(exe);
        cmd.args(supervise::args(nofile, argv))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Out of the terminal's foreground group: Ctrl-C is for `run`.
            .process_group(0);
        let mut sup = cmd.spawn()?;
        // The supervisor's stdout and stderr are the server's.
        let output = capture(&mut sup);
        let mut reader = BufReader::new(ours.try_clone()?);
        let started = {
            let _ = reader.get_ref().set_read_timeout(Some(START_REPORT));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            Report::parse(&line)
        };
        let fail = |sup: &mut Child, e: std::io::Error| {
            let _ = sup.kill();
            let _ = sup.wait();
            Err(e)
        };
        let pid = match started {
            Some(Report::Started(pid)) => pid,
            Some(Report::Failed(errno, msg)) => {
                let _ = sup.wait();
                return Err(if errno > 0 {
                    std::io::Error::from_raw_os_error(errno)
                } else {
                    std::io::Error::other(msg)
                });
            }
            _ => {
                return fail(
                    &mut sup,
                    std::io::Error::other("the supervisor did not start the command"),
                )
            }
        };
        let _ = reader.get_ref().set_read_timeout(None);
        let exit = Arc::new(Mutex::new(None));
        {
            let exit = exit.clone();
            std::thread::spawn(move || {
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    if let Some(Report::Exited(e)) = Report::parse(&line) {
                        if let Ok(mut x) = exit.lock() {
                            *x = Some(e);
                        }
                    }
                }
            });
        }
        Ok(Server {
            pid,
            mode: Mode::Supervised {
                sup,
                control: ours,
                exit,
                done: false,
            },
            output,
            status: None,
            daemon_noted: false,
        })
    }

    /// Where the server's tree starts: the supervisor (whose children are the launched command
    /// and whatever daemonized), or the launched command itself.
    pub fn root(&self) -> i32 {
        match &self.mode {
            Mode::Supervised { sup, .. } => sup.id() as i32,
            Mode::Direct(_) => self.pid,
        }
    }

    /// True the first time it is called after the launched command exited leaving processes
    /// behind (to say so once).
    pub fn note_daemon(&mut self) -> bool {
        !std::mem::replace(&mut self.daemon_noted, true)
    }

    /// The last `n` lines the server printed (stdout and stderr interleaved).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines = self
            .output
            .lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines once the server's output has ended (every process holding it left),
    /// waiting at most `within`: what a server prints as it dies (a SIGKILL notice) is read
    /// after its exit is seen.
    pub fn final_lines(&self, n: usize, within: Duration) -> Vec<String> {
        let until = Instant::now() + within;
        while self.output.open.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.last_lines(n)
    }

    /// "exit status 3", "killed by SIGSEGV", once the launched command has exited.
    pub fn status_text(&mut self) -> Option<String> {
        let st = self.exited()?;
        Some(match st {
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal(sig) => match Signal::try_from(sig) {
                Ok(s) => format!("killed by {}", s.as_str()),
                Err(_) => format!("killed by signal {sig}"),
            },
        })
    }

    /// The launched command's exit, once it has exited (reaps it).
    pub fn exited(&mut self) -> Option<Exit> {
        if self.status.is_none() {
            self.status = match &mut self.mode {
                Mode::Direct(child) => child.try_wait().ok().flatten().map(Exit::of),
                Mode::Supervised { exit, .. } => exit.lock().ok().and_then(|x| *x),
            };
        }
        self.status
    }

    /// True while any process of the server is alive: its group, or (supervised) anything
    /// below the supervisor, daemonized descendants included.
    pub fn group_alive(&mut self) -> bool {
        self.exited();
        // A zombie child would still count; `exited` reaped ours, the rest are the server's.
        if killpg(Pid::from_raw(self.pid), None).is_ok() {
            return true;
        }
        match &self.mode {
            Mode::Supervised { sup, done, .. } => {
                !*done && !supervise::living_descendants(sup.id() as i32).is_empty()
            }
            Mode::Direct(_) => false,
        }
    }

    /// Processes of the server outside its process group (daemonized, `setsid`), supervised.
    fn strays(&self) -> Vec<i32> {
        match &self.mode {
            Mode::Supervised {
                sup, done: false, ..
            } => {
                let pgid = Pid::from_raw(self.pid);
                supervise::living_descendants(sup.id() as i32)
                    .into_iter()
                    .filter(|p| nix::unistd::getpgid(Some(Pid::from_raw(*p))).ok() != Some(pgid))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Graceful stop: SIGTERM to `master` (what gunicorn and uWSGI expect; a signal to the
    /// whole group cuts some servers' exit flush short), then SIGKILL to everything after
    /// `grace`.
    pub fn stop(&mut self, master: i32, grace: Duration) -> StopOutcome {
        self.stop_or_abort(master, grace, &|| false)
    }

    /// [`Server::stop`], cut short (SIGKILL to everything at once) when `abort` turns true,
    /// e.g. on a second Ctrl-C.
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

    /// SIGKILL to the whole group (and, supervised, to everything the supervisor holds), and
    /// reap the launched command (or the supervisor).
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let strays = self.strays();
        match &mut self.mode {
            Mode::Direct(child) => {
                if self.status.is_none() {
                    self.status = child.wait().ok().map(Exit::of);
                }
            }
            Mode::Supervised {
                sup, control, done, ..
            } => {
                if !*done {
                    // End of file on its stdin: the supervisor SIGKILLs all below it and exits.
                    let _ = control.shutdown(Shutdown::Write);
                    let until = Instant::now() + SUPERVISOR_EXIT;
                    while !matches!(sup.try_wait(), Ok(Some(_))) {
                        if Instant::now() > until {
                            // Wedged: do its work with what we can see, then end it.
                            for p in &strays {
                                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
                            }
                            let _ = sup.kill();
                            let _ = sup.wait();
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    *done = true;
                }
            }
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
            for p in self.strays() {
                let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
            }
            let until = Instant::now() + Duration::from_millis(500);
            while self.group_alive() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Always: reaps the launched command, or tells the supervisor to finish and reaps it.
        self.kill_group();
    }
}

/// The last lines the server printed, and how many of its output streams are still open.
#[derive(Default)]
struct Output {
    lines: Mutex<VecDeque<String>>,
    open: AtomicUsize,
}

/// Keeps the lines `child` prints on stdout and stderr.
fn capture(child: &mut Child) -> Arc<Output> {
    let output = Arc::new(Output::default());
    if let Some(out) = child.stdout.take() {
        keep_lines(out, output.clone());
    }
    if let Some(err) = child.stderr.take() {
        keep_lines(err, output.clone());
    }
    output
}

fn keep_lines(stream: impl Read + Send + 'static, output: Arc<Output>) {
    output.open.fetch_add(1, Ordering::SeqCst);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = output.lines.lock() {
                if l.len() == KEEP_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        }
        output.open.fetch_sub(1, Ordering::SeqCst);
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
        let mut lines = s.final_lines(10, Duration::from_secs(5));
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
