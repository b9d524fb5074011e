//! `--drive CMD`: producers (a script that enqueues tasks, `celery call`, `rq enqueue`) started
//! through `sh -c` once the workers are up, each in its own process group like the server (the
//! same [`Server`] launcher: captured output, parent-death signal, the group killed on drop),
//! waited for, stopped when still running at the end of the watch, and reported.

use std::time::{Duration, Instant};

use super::launch::Server;
use crate::report::run::DriverView;

/// How long a driver still running at the stop gets after SIGTERM before its group is killed.
const DRIVER_GRACE: Duration = Duration::from_secs(5);

pub struct Driver {
    pub command: String,
    server: Server,
    started: Instant,
    ended: Option<Duration>,
    stopped_by_run: bool,
}

impl Driver {
    pub fn start(command: &str) -> std::io::Result<Driver> {
        let argv = vec!["sh".to_string(), "-c".to_string(), command.to_string()];
        Ok(Driver {
            command: command.to_string(),
            server: Server::spawn(&argv, &[])?,
            started: Instant::now(),
            ended: None,
            stopped_by_run: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.server.pid
    }

    /// True while the driver's shell has not exited.
    pub fn running(&mut self) -> bool {
        if self.ended.is_none() && self.server.exited().is_some() {
            self.ended = Some(self.started.elapsed());
        }
        self.ended.is_none()
    }

    /// Exited by itself with a status other than 0.
    pub fn failed(&mut self) -> Option<String> {
        if self.running() || self.stopped_by_run {
            return None;
        }
        match self.server.exited().and_then(|s| s.code()) {
            Some(0) => None,
            _ => self.server.status_text(),
        }
    }

    /// SIGTERM to the driver's shell, SIGKILL to its group after a grace; nothing when it ended.
    pub fn stop(&mut self) {
        if self.running() {
            self.stopped_by_run = true;
            let pid = self.server.pid;
            self.server.stop(pid, DRIVER_GRACE);
            self.ended = Some(self.started.elapsed());
        }
    }

    pub fn last_lines(&self, n: usize) -> Vec<String> {
        self.server.last_lines(n)
    }

    pub fn view(&mut self) -> DriverView {
        self.running();
        DriverView {
            command: self.command.clone(),
            pid: self.server.pid,
            status: self.server.status_text(),
            exit_code: self.server.exited().and_then(|s| s.code()),
            stopped_by_run: self.stopped_by_run,
            elapsed_ms: self.ended.unwrap_or(self.started.elapsed()).as_millis() as u64,
            output: self.server.last_lines(5),
        }
    }
}
