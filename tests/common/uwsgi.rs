//! A uWSGI master from a pinned venv, started and ended like the other fixtures of `common`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{
    children_of, free_port, hit_app, live_members, root, strip_env, tail, venv, wait_until, Group,
    START_TIMEOUT,
};

/// A uWSGI master running one of the `fixtures/uwsgi/<ini>.ini` configurations (2 workers,
/// `http-socket` on 127.0.0.1) from a pinned venv. uWSGI does not daemonize here: the process
/// spawned is the master, and it leads the group.
pub struct Uwsgi {
    // Fields drop in order: the processes end before their temp dir goes.
    group: Group,
    pub master_pid: i32,
    /// The port given to the ini's `http-socket` (`--set-ph port=PORT`).
    pub port: u16,
    /// `processes` in the ini.
    pub workers: usize,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Uwsgi {
    /// `uwsgi --set-ph port=<free port> --ini fixtures/uwsgi/<ini>.ini` (path relative to the
    /// repository root, its working directory) from venv `<venv>`, with `env` on top of this
    /// process's environment less any OTEL_*, FIXTURE_*, UWSGI_* and PYTHONPATH. Returns once the
    /// master has spawned its `workers` workers (uWSGI logs "spawned uWSGI worker N").
    pub fn start(venv_name: &str, ini: &str, workers: usize, env: &[(&str, &str)]) -> Uwsgi {
        Self::start_with_args(venv_name, ini, &[], workers, env)
    }

    /// The same with more uWSGI options after the `--ini` (for example `--chdir DIR`).
    pub fn start_with_args(
        venv_name: &str,
        ini: &str,
        args: &[&str],
        workers: usize,
        env: &[(&str, &str)],
    ) -> Uwsgi {
        let bin = venv(venv_name).join("bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("uwsgi.log");
        let log_file = File::create(&log).expect("create uwsgi log");
        let port = free_port();
        let mut cmd = Command::new(bin.join("uwsgi"));
        cmd.args(["--set-ph", &format!("port={port}")])
            .args(["--ini", &format!("fixtures/uwsgi/{ini}.ini")])
            .args(args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        // Only what the test asks for reaches the SDK and uWSGI (UWSGI_* variables are options).
        strip_env(&mut cmd, &["OTEL_*", "FIXTURE_*", "UWSGI_*", "PYTHONPATH"]);
        cmd.envs(env.iter().copied());
        let group = Group::spawn(&mut cmd);
        let mut u = Uwsgi {
            master_pid: group.pgid,
            group,
            port,
            workers,
            log,
            _dir: dir,
        };
        let last = format!("spawned uWSGI worker {workers} ");
        let deadline = Instant::now() + START_TIMEOUT;
        while !(u.log_text().contains(&last) && u.worker_pids().len() >= workers) {
            if u.group.leader_exited() {
                panic!("uwsgi exited during start-up:\n{}", u.log_tail(30));
            }
            if Instant::now() > deadline {
                panic!(
                    "uwsgi ({ini}, venv {venv_name}) did not start {workers} workers in \
                     {START_TIMEOUT:?} (has {:?}):\n{}",
                    u.worker_pids(),
                    u.log_tail(30)
                );
            }
            sleep(Duration::from_millis(20));
        }
        u
    }

    /// Waits until every worker has loaded the app itself (`lazy-apps`: uWSGI logs "WSGI app 0
    /// (mountpoint='') ready ... pid: <worker>" once per worker).
    pub fn wait_apps_loaded_in_workers(&self) {
        let workers = self.worker_pids();
        let loaded = || {
            let log = self.log_text();
            workers.iter().all(|w| {
                log.lines()
                    .any(|l| l.contains("WSGI app 0 ") && l.contains(&format!("pid: {w} ")))
            })
        };
        assert!(
            wait_until(START_TIMEOUT, loaded),
            "workers {workers:?} did not load the app:\n{}",
            self.log_tail(30)
        );
    }

    /// The master's current children (workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.master_pid)
    }

    /// Sends `n` GET `path` requests, one connection each; returns the pid that served each.
    /// Panics on a failed request, with uWSGI's log.
    pub fn hit(&self, path: &str, n: usize) -> Vec<i32> {
        hit_app(self.port, path, n, || self.log_tail(30))
    }

    /// A graceful stop as an operator does it: SIGTERM to the master only (the inis set
    /// `die-on-term`, so that is a stop, not a reload), then wait up to `timeout` for the master
    /// to exit and every process of the group to be gone. Returns whether that happened; anything
    /// left is ended on drop.
    pub fn terminate_master(&mut self, timeout: Duration) -> bool {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.master_pid), Signal::SIGTERM);
        let pgid = self.group.pgid;
        wait_until(timeout, || {
            self.group.leader_exited() && live_members(pgid).is_empty()
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    pub fn pgid(&self) -> i32 {
        self.group.pgid
    }
}
