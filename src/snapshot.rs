//! The facts `observe` gathers about a process tree, as plain serde data.
//!
//! A snapshot judges nothing: rules in `diagnose` read it and decide. It is saved with
//! `--save-snapshot` and read back with `check --snapshot`, so every field must survive a JSON
//! round trip, and new fields get `#[serde(default)]` so older snapshots still load.

use serde::{Deserialize, Serialize};

mod python;
pub use python::*;

/// Version of the snapshot file format. Bump only on an incompatible change.
pub const SNAPSHOT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub schema: u32,
    /// Wall clock when the first sample was taken, Unix milliseconds.
    pub taken_at_ms: u64,
    /// How long the tree was watched between the first and the second sample.
    pub window_ms: u64,
    /// The pid the user named (`--pid`).
    pub root_pid: i32,
    pub framework: Framework,
    /// Every process of the tree still alive at the end of the window, root first.
    pub processes: Vec<Process>,
    /// Children of the tree that appeared or vanished while it was watched.
    #[serde(default)]
    pub churn: Churn,
    /// OTLP endpoints the tree is configured to send to (from `OTEL_EXPORTER_OTLP_*ENDPOINT`,
    /// or the SDK defaults when nothing is set), as `host:port`.
    #[serde(default)]
    pub collector_endpoints: Vec<Endpoint>,
    /// Things observe could not read, said once in words (e.g. Python names unavailable).
    #[serde(default)]
    pub notes: Vec<String>,
    /// gunicorn's worker class (`-k`, `--worker-class`, `worker_class` in the config file,
    /// `GUNICORN_CMD_ARGS`), when the framework is gunicorn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_class: Option<WorkerClass>,
    /// How long the server lets a worker take to exit after a graceful stop before it kills
    /// it (gunicorn's `graceful_timeout`, uWSGI's `worker-reload-mercy`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<GracefulTimeout>,
    /// The server replaces each worker after so many requests or tasks (gunicorn's
    /// `max_requests`, Celery's `--max-tasks-per-child`), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycling: Option<Recycling>,
}

/// Planned recycling and where it was read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Recycling {
    /// e.g. `max_requests 1000`.
    pub setting: String,
    /// e.g. `--max-requests on the command line`.
    pub source: String,
}

/// A server's graceful timeout and where it was read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GracefulTimeout {
    pub ms: u64,
    /// e.g. `--graceful-timeout on the command line`, `default`.
    pub source: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    Gunicorn,
    Uwsgi,
    Celery,
    /// `rq worker`: one work horse forked per job, which leaves with os._exit.
    Rq,
    Multiprocessing,
    /// `uvicorn --workers N` (spawned workers) or a script calling `uvicorn.run`.
    Uvicorn,
    /// `hypercorn --workers N` (spawned workers).
    Hypercorn,
    /// Granian (multiprocessing workers: forked before Python 3.14, spawned from it).
    Granian,
    #[default]
    Unknown,
}

impl Framework {
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Gunicorn => "gunicorn",
            Framework::Uwsgi => "uwsgi",
            Framework::Celery => "celery",
            Framework::Rq => "rq",
            Framework::Multiprocessing => "multiprocessing",
            Framework::Uvicorn => "uvicorn",
            Framework::Hypercorn => "hypercorn",
            Framework::Granian => "granian",
            Framework::Unknown => "unknown",
        }
    }
}

/// How a worker was started (multiprocessing's names for its start methods).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StartMethod {
    /// A fork of its parent without exec: it inherited the parent's memory, SDK included.
    Fork,
    /// A fresh interpreter (fork + exec of multiprocessing's `spawn_main`): nothing inherited.
    Spawn,
    /// A fork of multiprocessing's forkserver process: inherits what the forkserver imported,
    /// nothing of the parent that asked for it.
    Forkserver,
}

impl StartMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
        }
    }
}

/// gunicorn's worker class: as configured, what kind it is, and where it was read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerClass {
    /// As configured, e.g. `gevent`, `uvicorn_worker.UvicornWorker`; `sync` when unset.
    pub name: String,
    pub kind: WorkerKind,
    /// Where it was read, e.g. `-k on the command line`, `default`.
    pub source: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    #[default]
    Sync,
    Gthread,
    Gevent,
    Eventlet,
    Tornado,
    /// `uvicorn_worker.UvicornWorker` (or the older `uvicorn.workers.UvicornWorker`).
    Uvicorn,
    Other,
}

impl WorkerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Sync => "sync",
            WorkerKind::Gthread => "gthread",
            WorkerKind::Gevent => "gevent",
            WorkerKind::Eventlet => "eventlet",
            WorkerKind::Tornado => "tornado",
            WorkerKind::Uvicorn => "uvicorn",
            WorkerKind::Other => "other",
        }
    }

    /// Workers that monkey-patch the standard library: an SDK set up after the patch runs
    /// its exporters as greenlets, not OS threads.
    pub fn patches_threads(self) -> bool {
        matches!(self, WorkerKind::Gevent | WorkerKind::Eventlet)
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
    #[default]
    Other,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Where it came from, e.g. `OTEL_EXPORTER_OTLP_ENDPOINT in /proc/123/environ` or `default`.
    pub source: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Churn {
    /// Workers (children of the master) that exited during the window.
    pub exited: Vec<i32>,
    /// Workers that were started during the window.
    pub spawned: Vec<i32>,
    /// How many times the child list was polled during the window.
    pub polls: u32,
    /// (pid, wait status) of the children caught as zombies, before their parent reaped them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wait_statuses: Vec<(i32, i32)>,
    /// The root forks a child per job, which leaves when the job is done (an `rq worker`'s
    /// work horses): its children coming and going is how it works, not a crash loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_job: bool,
    /// `receive`: processes of the re-read tree that exited and are no longer kept (beyond
    /// `--keep-exited`, the longest gone first), so the tree stays bounded under churn.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aged_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// The pid in each pid namespace, outermost first (`NSpid:` in /proc/<pid>/status).
    #[serde(default)]
    pub nspid: Vec<i32>,
    pub role: Role,
    /// How a worker was started (None for the master, helpers and other processes, and in
    /// snapshots from before this field, whose workers were all forks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartMethod>,
    /// Process start, Unix milliseconds.
    pub started_at_ms: u64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub exe: String,
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Inode of /proc/<pid>/ns/net: sockets are looked up in this namespace's tables.
    #[serde(default)]
    pub netns: u64,
    pub threads: Vec<Thread>,
    pub sockets: Vec<Socket>,
    #[serde(default)]
    pub env: EnvFacts,
    #[serde(default)]
    pub python: PythonFacts,
    /// A Prometheus client in the process's site-packages and its multiprocess mode.
    #[serde(default, skip_serializing_if = "PrometheusFacts::is_empty")]
    pub prometheus: PrometheusFacts,
    /// It exited during the window: its facts are from its first sample, so what it lacked
    /// then (an exporter thread set up later) says nothing about how it ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
    /// What of /proc/<pid> could not be read for want of permission (`exe`, `maps`, `memory`,
    /// `environ`, `fd`): the facts that come from it are missing, not absent (FC305).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// What says a process may run a Prometheus pull exporter (FC109).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PrometheusFacts {
    /// prometheus_client's version, from its dist-info in the interpreter's site-packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// opentelemetry-exporter-prometheus's version (its `PrometheusMetricReader`), when there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel_exporter_version: Option<String>,
    /// `PROMETHEUS_MULTIPROC_DIR` (or the older lowercase spelling) from /proc/<pid>/environ:
    /// prometheus_client's multiprocess mode, where one registry reads every process's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiproc_dir: Option<String>,
}

impl PrometheusFacts {
    pub fn is_empty(&self) -> bool {
        self == &PrometheusFacts::default()
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadKind {
    MetricReader,
    SpanProcessor,
    LogProcessor,
    Grpc,
    #[default]
    Other,
}

impl ThreadKind {
    /// Words for people, e.g. "metric reader".
    pub fn label(self) -> &'static str {
        match self {
            ThreadKind::MetricReader => "metric reader",
            ThreadKind::SpanProcessor => "span processor",
            ThreadKind::LogProcessor => "log processor",
            ThreadKind::Grpc => "gRPC core",
            ThreadKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    Python,
    #[default]
    Comm,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Python => "python",
            NameSource::Comm => "comm",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Thread {
    pub tid: i32,
    /// The thread's id inside its process's own pid namespace (the last column of `NSpid:` in
    /// /proc/<pid>/task/<tid>/status), when that is a namespace below the one observed from: the
    /// id a container's `ps -eLf`, logs and the interpreter use. Absent when both agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nstid: Option<i32>,
    /// The name shown to people: the Python name when known, else comm.
    pub name: String,
    pub name_source: NameSource,
    pub kind: ThreadKind,
    /// /proc/<pid>/task/<tid>/comm (15 bytes at most).
    pub comm: String,
    /// Thread start, Unix milliseconds.
    pub started_at_ms: u64,
    /// One-letter state from /proc/<pid>/task/<tid>/stat (R, S, D, ...).
    pub state: String,
    /// /proc/<pid>/task/<tid>/syscall at the first sample; None when unreadable.
    #[serde(default)]
    pub syscall: Option<Syscall>,
    /// The same file at the end of the window.
    #[serde(default)]
    pub syscall_end: Option<Syscall>,
    /// voluntary_ctxt_switches at the first sample.
    pub wakeups: u64,
    /// voluntary_ctxt_switches at the end of the window (None without a second sample).
    #[serde(default)]
    pub wakeups_end: Option<u64>,
}

impl Thread {
    /// The thread's id in its process's own pid namespace: what the interpreter records as
    /// its native thread id.
    pub fn ns_tid(&self) -> i32 {
        self.nstid.unwrap_or(self.tid)
    }

    /// How many times the thread woke during the window, when it was watched.
    pub fn wakeups_in_window(&self) -> Option<u64> {
        self.wakeups_end.map(|end| end.saturating_sub(self.wakeups))
    }
}

/// The syscall a thread was in (defined with the /proc readers that parse it).
pub use crate::proc::task::Syscall;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Socket {
    pub fd: i32,
    pub inode: u64,
    /// `tcp`, `tcp6` or `unix`.
    pub proto: String,
    /// TCP state as `ss` prints it (`ESTABLISHED`, `LISTEN`, ...); empty for unix sockets.
    pub state: String,
    /// `ip:port`, IPv4-mapped IPv6 shown as IPv4.
    pub local: String,
    pub remote: String,
    /// Every pid of the tree that holds this inode, this one included, sorted.
    pub shared_with: Vec<i32>,
    /// Threads of this process found waiting on it (blocked in `poll` or `accept` on its fd):
    /// who answers the connections made to a listening socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub polled_by: Vec<i32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvFacts {
    /// `OTEL_*` variables from /proc/<pid>/environ.
    #[serde(default)]
    pub otel: Vec<(String, String)>,
    /// PYTHONPATH, when set.
    #[serde(default)]
    pub pythonpath: Option<String>,
    /// True when PYTHONPATH holds opentelemetry's auto_instrumentation directory
    /// (what `opentelemetry-instrument` puts there).
    #[serde(default)]
    pub auto_instrumentation: bool,
    /// GRPC_ENABLE_FORK_SUPPORT as set, when set.
    #[serde(default)]
    pub grpc_fork_support: Option<String>,
    /// gunicorn preload, and where it was read (`--preload` on the command line,
    /// `preload_app = True` in a config file).
    #[serde(default)]
    pub preload: Option<String>,
    /// uWSGI options that make Python's fork hooks run (`lazy-apps`, `py-call-osafterfork`, ...).
    #[serde(default)]
    pub uwsgi_fork_options: Vec<String>,
    /// False when /proc/<pid>/environ could not be read.
    #[serde(default)]
    pub readable: bool,
    /// Read from the process's memory, as its code left it (else /proc/<pid>/environ, as it
    /// started).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_memory: bool,
}

impl EnvFacts {
    /// Where the environment of `pid` was read, for evidence: `/proc/<pid>/environ`, or its
    /// memory (which /proc/<pid>/environ may not match: the code changed it since).
    pub fn place(&self, pid: i32) -> String {
        match self.from_memory {
            true => format!("pid {pid}'s environment, read from its memory"),
            false => format!("/proc/{pid}/environ"),
        }
    }
}

impl Snapshot {
    pub fn process(&self, pid: i32) -> Option<&Process> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    pub fn master(&self) -> Option<&Process> {
        self.processes.iter().find(|p| p.role == Role::Master)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Process> {
        self.processes.iter().filter(|p| p.role == Role::Worker)
    }

    /// Workers that are forks of the master (and so inherited its SDK state).
    pub fn forked_workers(&self) -> impl Iterator<Item = &Process> {
        self.workers().filter(|p| p.forked())
    }

    /// Workers started by spawn or forkserver: fresh interpreters, nothing of the master's.
    pub fn spawned_workers(&self) -> impl Iterator<Item = &Process> {
        self.workers().filter(|p| !p.forked())
    }

    /// Whether anything of the tree was forked from the master: a worker that is its fork, or
    /// an RQ worker that is a master (it forks a work horse per job, seen or not).
    /// Fork findings (FC101, FC105, FC106, FC301) say nothing where this is false.
    pub fn master_forked(&self) -> bool {
        self.forked_workers().next().is_some()
            || (self.framework == Framework::Rq && self.master().is_some())
    }
}

impl Process {
    /// The pid inside the process's own pid namespace (the last of `nspid`): what the process
    /// calls itself (`os.getpid()`, a resource's `process.pid`).
    pub fn ns_pid(&self) -> i32 {
        self.nspid.last().copied().unwrap_or(self.pid)
    }

    /// A fork of its parent: `started_by` fork, or unset (snapshots from before the field
    /// only had forked workers).
    pub fn forked(&self) -> bool {
        matches!(self.started_by, None | Some(StartMethod::Fork))
    }

    pub fn threads_of(&self, kind: ThreadKind) -> impl Iterator<Item = &Thread> {
        self.threads.iter().filter(move |t| t.kind == kind)
    }

    /// Threads an OpenTelemetry SDK runs (reader, processors, gRPC core).
    pub fn exporter_threads(&self) -> impl Iterator<Item = &Thread> {
        self.threads.iter().filter(|t| t.kind != ThreadKind::Other)
    }

    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .otel
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_in_a_container_round_trip_and_old_snapshots_load() {
        let old = r#"{"tid": 5012, "name": "MainThread", "name_source": "python", "kind": "other",
                      "comm": "gunicorn", "started_at_ms": 1, "state": "S", "wakeups": 3}"#;
        let t: Thread = serde_json::from_str(old).unwrap();
        assert_eq!((t.nstid, t.ns_tid()), (None, 5012));
        assert!(!serde_json::to_string(&t).unwrap().contains("nstid"));
        let inner = Thread {
            nstid: Some(7),
            ..t
        };
        let back: Thread = serde_json::from_str(&serde_json::to_string(&inner).unwrap()).unwrap();
        assert_eq!((back.tid, back.nstid, back.ns_tid()), (5012, Some(7), 7));
        let p = Process {
            pid: 5000,
            nspid: vec![5000, 1],
            ..Process::default()
        };
        assert_eq!(p.ns_pid(), 1);
        assert_eq!(Process::default().ns_pid(), 0);
    }
}
