//! The supervisor: a small process between `otel-forkcheck run` and the server it launches,
//! so that the server and everything it starts are gone when `run` is, however `run` ends
//! (returns, panics, Ctrl-C, or is SIGKILLed).
//!
//! ```text
//! otel-forkcheck run ──control socket (stdin)──> supervisor (subreaper) ──> server (own group)
//!                                                      └── adopted: daemonized descendants
//! ```
//!
//! The supervisor is this binary run again (`/proc/self/exe` with [`ARG`]), single-threaded. It
//! is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a descendant whose parent exits, such as
//! the master of `gunicorn --daemon` after its double fork and `setsid`, is re-parented to it,
//! not to init, so it stays in the tree that `run` watches and stops. It ignores the terminal's
//! signals and watches one thing: its stdin, a socket whose other end only `run` holds. End of
//! file there means `run` asked for the end or died (the kernel closes the socket of a
//! SIGKILLed process), and the supervisor then SIGKILLs the server's process group and every
//! process below itself, round after round until it has no child left, and exits. It reports
//! the launched command's pid and exit status back on the same socket.
//!
//! Why a supervisor, rather than:
//! - only `PR_SET_PDEATHSIG` on the launched command (what `run` had): it reaches the direct
//!   child only, so workers, a wrapper's children or a daemon survive a SIGKILLed `run`, and a
//!   server that ignores SIGTERM survives too.
//! - `run` itself as the subreaper: it keeps daemonized descendants in the tree while `run`
//!   lives, but once `run` is SIGKILLed they are re-parented to init and nobody stops them.
//! - a cgroup (`cgroup.kill`): needs a delegated, writable cgroup v2 subtree (root, or a
//!   systemd user session with delegation), which CI containers and many hosts do not give;
//!   and once `run` is SIGKILLed nobody writes `cgroup.kill` anyway unless a process outside
//!   the cgroup watches, which is this supervisor again.
//! - a pid namespace (killed whole when its init dies): needs CAP_SYS_ADMIN or unprivileged
//!   user namespaces (often disabled), and it changes what is being checked: the server would
//!   see itself as pid 1 (which ignores signals it has no handler for) and report other pids
//!   in `process.pid`.
//!
//! The supervisor needs nothing but the binary itself. A supervisor that is itself SIGKILLed
//! (by someone else) leaves the launched command its parent-death signal (SIGKILL) only.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// `argv[1]` that makes the binary a supervisor: `<exe> ARG [--nofile SOFT:HARD] -- <cmd...>`.
pub const ARG: &str = "__otel-forkcheck-supervise";

/// How often the supervisor looks at its children when nothing is said on the socket.
const TICK: Duration = Duration::from_millis(50);
/// How long the final clean-up may take (it is SIGKILL all along; forks racing it are why it
/// loops).
const CLEANUP: Duration = Duration::from_secs(5);

/// What the supervisor reports on the control socket, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The command runs as this pid (its own process group).
    Started(i32),
    /// It could not be started: errno and the message.
    Failed(i32, String),
    /// The launched command exited with a code, or was killed by a signal.
    Exited(Exit),
}

/// How the launched command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }

    pub fn of(st: std::process::ExitStatus) -> Exit {
        match (st.code(), st.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            _ => Exit::Code(-1),
        }
    }
}

impl Report {
    pub fn line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::Failed(errno, msg) => format!("failed {errno} {}\n", msg.replace('\n', " ")),
            Report::Exited(Exit::Code(c)) => format!("exited code {c}\n"),
            Report::Exited(Exit::Signal(s)) => format!("exited signal {s}\n"),
        }
    }

    pub fn parse(line: &str) -> Option<Report> {
        let mut w = line.trim_end().splitn(3, ' ');
        match (w.next()?, w.next()?, w.next()) {
            ("started", pid, None) => pid.parse().ok().map(Report::Started),
            ("failed", errno, msg) => Some(Report::Failed(
                errno.parse().ok()?,
                msg.unwrap_or("").to_string(),
            )),
            ("exited", "code", Some(c)) => c.parse().ok().map(|c| Report::Exited(Exit::Code(c))),
            ("exited", "signal", Some(s)) => {
                s.parse().ok().map(|s| Report::Exited(Exit::Signal(s)))
            }
            _ => None,
        }
    }
}

/// The supervisor's arguments after [`ARG`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    nofile: Option<(u64, u64)>,
    command: Vec<OsString>,
}

fn parse_args(args: &[OsString]) -> Option<Args> {
    let mut nofile = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].to_str() {
            Some("--") => {
                let command = args[i + 1..].to_vec();
                return (!command.is_empty()).then_some(Args { nofile, command });
            }
            Some("--nofile") => {
                let v = args.get(i + 1)?.to_str()?;
                let (s, h) = v.split_once(':')?;
                nofile = Some((s.parse().ok()?, h.parse().ok()?));
                i += 2;
            }
            _ => return None,
        }
    }
    None
}

/// The supervisor's arguments for `command`, restoring open-file limits `nofile` in it.
pub fn args(nofile: Option<(u64, u64)>, command: &[String]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![ARG.into()];
    if let Some((s, h)) = nofile {
        v.push("--nofile".into());
        v.push(format!("{s}:{h}").into());
    }
    v.push("--".into());
    v.extend(command.iter().map(OsString::from));
    v
}

/// Points the supervisor's own stdout and stderr at /dev/null once the command has its copies:
/// `run` reads the server's output until every holder of those pipes is gone, and the
/// supervisor, which lives until `run` is done, would otherwise keep them open to the end.
fn release_output() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    for fd in [1, 2] {
        // SAFETY: dup2 onto the process's own standard descriptors; `null` stays owned.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs the supervisor (`args` follow [`ARG`]); its stdin is the control socket. Returns the
/// process's exit status.
pub fn main(args: &[OsString]) -> i32 {
    // SAFETY: fd 0 is the control socket `run` passed as stdin; owned from here on.
    let mut control = unsafe { UnixStream::from_raw_fd(0) };
    let Some(args) = parse_args(args) else {
        let _ = control.write_all(
            Report::Failed(libc::EINVAL, "bad supervisor arguments".into())
                .line()
                .as_bytes(),
        );
        return 2;
    };
    // SAFETY: prctl and signal only change this process's own attributes.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"forkcheck-sup".as_ptr(), 0, 0, 0);
        // Ctrl-C and friends are for `run`, which stops the server its own way.
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .stdin(Stdio::null())
        .process_group(0);
    let nofile = args.nofile;
    // SAFETY: only async-signal-safe calls (signal, prctl, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
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
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let report = Report::Failed(e.raw_os_error().unwrap_or(0), e.to_string());
            let _ = control.write_all(report.line().as_bytes());
            return 0;
        }
    };
    let launched = child.id() as i32;
    let _ = release_output();
    // Reaped below with waitpid(-1), with every adopted process.
    drop(child);
    if control
        .write_all(Report::Started(launched).line().as_bytes())
        .is_err()
    {
        cleanup(launched);
        return 0;
    }
    let mut buf = [0u8; 256];
    let mut reported = false;
    loop {
        let mut fds = [libc::pollfd {
            fd: control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one fd we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, TICK.as_millis() as i32) };
        if n > 0 && fds[0].revents != 0 {
            match control.read(&mut buf) {
                // End of file: `run` is done, or dead.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        for (pid, exit) in reap() {
            if pid == launched && !reported {
                reported = true;
                let _ = control.write_all(Report::Exited(exit).line().as_bytes());
            }
        }
    }
    cleanup(launched);
    0
}

/// Reaps every child that has ended (adopted ones included): (pid, how).
fn reap() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                out.push((pid.as_raw(), Exit::Signal(sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

/// SIGKILL to the launched group and to every process below the supervisor, until none is
/// left (bounded).
fn cleanup(launched: i32) {
    let me = std::process::id() as i32;
    let until = Instant::now() + CLEANUP;
    loop {
        let _ = killpg(Pid::from_raw(launched), Signal::SIGKILL);
        let below = living_descendants(me);
        for p in &below {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        reap();
        let no_child = matches!(
            waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        );
        if (below.is_empty() && no_child) || Instant::now() > until {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every process below `root` (not `root`), zombies left out.
pub fn living_descendants(root: i32) -> Vec<i32> {
    crate::proc::tree::tree_pids(root)
        .into_iter()
        .filter(|p| *p != root && !is_zombie(*p))
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
        // Gone already.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Started(42),
            Report::Failed(2, "No such file or directory (os error 2)".into()),
            Report::Exited(Exit::Code(3)),
            Report::Exited(Exit::Signal(9)),
        ] {
            assert_eq!(Report::parse(&r.line()), Some(r));
        }
        assert_eq!(Report::parse("nonsense"), None);
    }

    #[test]
    fn arguments_round_trip() {
        let cmd = vec!["gunicorn".to_string(), "--daemon".to_string()];
        let a = args(Some((1024, 4096)), &cmd);
        assert_eq!(a[0], ARG);
        assert_eq!(
            parse_args(&a[1..]),
            Some(Args {
                nofile: Some((1024, 4096)),
                command: cmd.iter().map(OsString::from).collect(),
            })
        );
        assert_eq!(parse_args(&args(None, &[])[1..]), None);
    }
}
