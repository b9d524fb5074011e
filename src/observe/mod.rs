//! Gathers facts about a live process tree from /proc and interpreter memory. Judges nothing.
//!
//! Never pauses or writes to the target: /proc reads and process_vm_readv only.
//!
//! It stands on the `/proc` floor ([`crate::proc`]: file reads, task stat/status, socket
//! tables, the tree walk). One concern per module: [`tree`] (roles, framework), [`threads`]
//! (thread kinds), [`python`] (interpreter memory and site-packages), [`env`] (environment and
//! config files), [`window`] (churn polling and the second sample). This file only sequences them:
//! first sample of every process, the window, the end sample, then the tree-wide facts
//! (roles, framework, socket sharing, endpoints, notes) on what is still alive.

use std::collections::HashMap;
use std::time::Duration;

use crate::snapshot::{
    Framework, NameSource, Process, PythonFacts, Role, Snapshot, Socket, Thread, SNAPSHOT_SCHEMA,
};

pub mod env;
mod listeners;
mod notes;
mod process;
pub mod python;
pub mod threads;
pub mod tree;
pub mod window;
mod wrapper;

use crate::proc::file::{self as procfile, read_bytes, read_link, read_text, Clock, ReadError};
use crate::proc::sockets::{self, SocketTable};
use crate::proc::task::{self as task, TaskSample};
use crate::proc::tree::{self as ptree, ChildIndex, Image, LayoutKey};
use python::{PythonReader, SiteFacts};

/// What to observe and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    /// Time between the first and the second sample; zero takes one sample.
    pub window: Duration,
    /// Read Python thread names from interpreter memory.
    pub python_names: bool,
}

/// What to do about a `--pid` whose tree runs no Python (`check` and `receive` say it).
pub const PYTHON_MASTER_HINT: &str = "give the pid of the Python server's master (gunicorn, \
     uWSGI, Celery, RQ, uvicorn): e.g. --pid $(cat gunicorn.pid)";

/// The cause `check` and `receive` give for a `--pid` tree without Python: "pid N (program) and
/// its K descendant(s) `what`".
pub fn no_python_cause(s: &crate::snapshot::Snapshot, what: &str) -> String {
    let root = s.processes.iter().find(|p| p.pid == s.root_pid);
    let program = root.map_or("", |p| p.exe.rsplit('/').next().unwrap_or(""));
    format!(
        "pid {} ({program}) and its {} descendant(s) {what}",
        s.root_pid,
        s.processes.len().saturating_sub(1)
    )
}

/// Why a tree could not be observed at all (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("no process with pid {0}")]
    NoSuchPid(i32),
    #[error("permission denied reading /proc/{pid} ({what})")]
    PermissionDenied { pid: i32, what: String },
    #[error("{0}")]
    Other(String),
}

impl ObserveError {
    /// What the user can do about it, one line.
    pub fn hint(&self) -> &'static str {
        match self {
            ObserveError::NoSuchPid(_) => {
                "check the pid (for gunicorn: cat the --pid file, or `pgrep -o -f gunicorn`)"
            }
            ObserveError::PermissionDenied { .. } => {
                "run as the same user as the target, as root, or with CAP_SYS_PTRACE"
            }
            ObserveError::Other(_) => "",
        }
    }
}

impl From<ObserveError> for crate::error::Error {
    fn from(e: ObserveError) -> Self {
        crate::error::Error::new(e.to_string(), e.hint())
    }
}

/// Observe the tree rooted at `opts.pid`.
/// A `--pid` that only wraps the server (a shell, tini, `uv run`) is checked through the
/// pre-fork master below it ([`wrapper`]).
pub fn observe(opts: &Options) -> Result<Snapshot, ObserveError> {
    match resolve_root(opts.pid)? {
        (pid, None) if pid == opts.pid => Observer::new(opts).run(),
        (pid, note) => {
            let inner = Options {
                pid,
                ..opts.clone()
            };
            let mut snap = Observer::new(&inner).run()?;
            snap.notes.splice(0..0, note);
            Ok(snap)
        }
    }
}

/// The pid to check for a `--pid`: itself, the one pre-fork master below a wrapper, or the master
/// of a named worker, with the note that says so; an error for a wrapper of several servers.
pub fn resolve_root(pid: i32) -> Result<(i32, Option<String>), ObserveError> {
    wrapper::resolve(pid).map_err(ObserveError::Other)
}

/// A process as observed, with what the tree-wide pass still needs.
struct Observed {
    p: Process,
    env: Vec<(String, String)>,
    fds: Vec<(i32, u64)>,
    layout: LayoutKey,
    libpython: Option<String>,
    /// A Python process whose interpreter is to be read.
    wants_python: bool,
    /// Parent in the tree (0 for the root).
    parent: i32,
}

struct Observer<'a> {
    opts: &'a Options,
    clock: Clock,
    reader: PythonReader,
    files: env::FileCache,
    sites: HashMap<(String, Vec<String>), SiteFacts>,
    libpython: HashMap<LayoutKey, Option<String>>,
    /// Where each layout's `environ` variable is (None: not found).
    environ_at: HashMap<LayoutKey, Option<u64>>,
    tables: HashMap<u64, SocketTable>,
    /// NSpid chain of every process observed (and of parents looked up), by pid.
    nspids: HashMap<i32, Vec<i32>>,
}

impl<'a> Observer<'a> {
    fn new(opts: &'a Options) -> Observer<'a> {
        Observer {
            opts,
            clock: Clock::new(),
            reader: PythonReader::new(),
            files: env::FileCache::default(),
            sites: HashMap::new(),
            libpython: HashMap::new(),
            environ_at: HashMap::new(),
            tables: HashMap::new(),
            nspids: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<Snapshot, ObserveError> {
        let root = self.opts.pid;
        check_root(root)?;
        let index = ChildIndex::for_root(root);
        let mut first_tree = walk(&index, root)?;
        let settled = window::settle_wait(&first_tree, root, self.opts.window, &self.clock);
        if let Some(wait) = settled {
            std::thread::sleep(wait);
            check_root(root)?;
            first_tree = walk(&index.refreshed(), root)?;
        }
        let taken_at_ms = procfile::now_unix_ms();

        let mut procs = self.first_sample(&first_tree)?;
        self.read_tables(&procs);

        let mut snap = Snapshot {
            schema: SNAPSHOT_SCHEMA,
            taken_at_ms,
            root_pid: root,
            ..Snapshot::default()
        };
        if let Some(wait) = settled {
            snap.notes.push(format!(
                "waited {:.1} s before the first sample: a child of pid {root} had just started, \
                 and a worker is judged on its own SDK once it has been up 2 s",
                wait.as_secs_f64()
            ));
        }

        if !self.opts.window.is_zero() {
            let window_start = std::time::Instant::now();
            let initial: Vec<i32> = first_tree
                .iter()
                .filter(|(_, parent)| *parent == root)
                .map(|(pid, _)| *pid)
                .collect();
            let (churn, past) =
                window::watch_children(&index, root, &initial, self.opts.window, &self.clock);
            snap.churn = churn;
            if let Some(past) = past {
                snap.notes.push(format!(
                    "watched {:.2} s past the window: every worker there had started in it, and \
                     one up 2 s is needed to judge",
                    past.as_secs_f64()
                ));
            }
            // A batch program (or a server stopped meanwhile) that ended during the window
            // (gone, or a zombie whose children were re-parented): what was seen at its start
            // is still the truth about that tree.
            let end_tree = match check_root(root) {
                Err(ObserveError::NoSuchPid(_)) => Err(ReadError::Gone),
                _ => ptree::walk(&index.refreshed(), root),
            };
            match end_tree {
                // Every worker seen at the start exited (reaped or not) and none replaced
                // them: the program wound its pool down (a batch job ending). The tree as
                // first seen is the evidence; the end would show a master alone.
                Ok(end_tree)
                    if !initial.is_empty()
                        && end_tree
                            .iter()
                            .all(|(p, _)| *p == root || window::exited(*p)) =>
                {
                    procs
                        .iter_mut()
                        .filter(|o| o.p.pid != root)
                        .for_each(|o| o.p.gone = true);
                    snap.notes.push(format!(
                        "every child of pid {root} exited during the {:.1} s window and none \
                         replaced them: the tree is reported as first sampled",
                        self.opts.window.as_secs_f64()
                    ))
                }
                Ok(end_tree) => procs = self.end_sample(&end_tree, procs)?,
                Err(ReadError::Gone) => {
                    procs.iter_mut().for_each(|o| o.p.gone = true);
                    snap.notes.push(format!(
                    "pid {root} exited during the {:.1} s window: the tree is reported as first \
                     sampled",
                    self.opts.window.as_secs_f64()
                    ))
                }
                Err(e) => return Err(ObserveError::Other(format!("/proc/{root}: {e}"))),
            }
            snap.window_ms = window_start.elapsed().as_millis() as u64;
        }

        self.finish(&mut snap, procs);
        if std::env::var_os("OTEL_FORKCHECK_DEBUG_READS").is_some() {
            // For scripts/bench-check.sh: the cost of the names in memory reads.
            eprintln!(
                "otel-forkcheck: {} process_vm_readv calls for {} processes; {} interpreter \
                 layouts learnt, {} of them by py-spy's attach (whose reads are not counted)",
                self.reader.calls,
                snap.processes.len(),
                self.reader.attaches,
                self.reader.py_spy_attaches
            );
        }
        Ok(snap)
    }

    /// First sample of every process, interpreter included.
    ///
    /// The interpreter reads stay on this thread: overlapping them with the /proc reads on a
    /// second thread measured no better, and usually worse, on a busy 2-core machine (both
    /// halves are syscall-bound on the same targets).
    fn first_sample(&mut self, tree: &[(i32, i32)]) -> Result<Vec<Observed>, ObserveError> {
        let root = self.opts.pid;
        let mut procs: Vec<Observed> = Vec::with_capacity(tree.len());
        for &(pid, parent) in tree {
            match self.observe_process(pid, parent, pid == root)? {
                Some(mut o) => {
                    if o.wants_python && !self.python_of(&mut o) && pid != root {
                        continue;
                    }
                    procs.push(o);
                }
                None if pid == root => return Err(ObserveError::NoSuchPid(root)),
                None => {}
            }
        }
        self.read_tables(&procs);
        Ok(procs)
    }

    /// Second sample: drop what exited, add what appeared, record wakeups/syscalls at the end.
    fn end_sample(
        &mut self,
        end_tree: &[(i32, i32)],
        procs: Vec<Observed>,
    ) -> Result<Vec<Observed>, ObserveError> {
        let root = self.opts.pid;
        let mut by_pid: HashMap<i32, Observed> = procs.into_iter().map(|o| (o.p.pid, o)).collect();
        let mut out = Vec::with_capacity(end_tree.len());
        let mut new_pids = false;
        for &(pid, parent) in end_tree {
            match by_pid.remove(&pid) {
                Some(mut o) if o.p.ppid == parent || pid == root => {
                    let samples = match task::sample_tasks(pid) {
                        // Exited, not yet reaped (its main thread alone, a zombie): gone, as
                        // one that was reaped; not a worker whose threads all stopped.
                        Ok(s) if pid != root && window::zombie(pid, &s) => continue,
                        Ok(s) => s,
                        Err(_) if pid != root => continue,
                        // The root exited since the walk: keep its first sample.
                        Err(_) => {
                            out.push(o);
                            continue;
                        }
                    };
                    let had: Vec<i32> = o.p.threads.iter().map(|t| t.tid).collect();
                    let sdk = o.p.exporter_threads().count();
                    window::merge_end_sample(&mut o.p, &samples, &self.clock);
                    // New threads get names; an SDK thread that ended may mean it is leaving.
                    let new = samples.iter().any(|s| !had.contains(&s.tid));
                    if o.p.python.names_read && (new || o.p.exporter_threads().count() < sdk) {
                        self.read_again(&mut o, &had);
                    }
                    out.push(o);
                }
                // New, or a pid reused by an unrelated process: observe it in full.
                _ => {
                    if let Some(mut o) = self.observe_process(pid, parent, pid == root)? {
                        if o.wants_python && !self.python_of(&mut o) && pid != root {
                            continue;
                        }
                        new_pids = true;
                        out.push(o);
                    }
                }
            }
        }
        if new_pids {
            self.tables.clear();
            self.read_tables(&out);
        }
        Ok(out)
    }

    /// Tree-wide facts on the processes alive at the end.
    fn finish(&mut self, snap: &mut Snapshot, mut procs: Vec<Observed>) {
        let root = self.opts.pid;
        let tree: Vec<(i32, i32)> = procs.iter().map(|o| (o.p.pid, o.parent)).collect();
        let images: HashMap<i32, Image> = procs
            .iter()
            .map(|o| {
                let img = Image {
                    exe: o.p.exe.clone(),
                    layout: Some(o.layout.clone()),
                    cmdline: o.p.cmdline.clone(),
                };
                (o.p.pid, img)
            })
            .collect();
        let placed = tree::placements(&tree, &images);
        let root_idx = procs.iter().position(|o| o.p.pid == root).unwrap_or(0);
        let children: Vec<Vec<String>> = procs
            .iter()
            .filter(|o| o.parent == root && o.p.pid != root)
            .map(|o| o.p.cmdline.clone())
            .collect();
        if let Some(r) = procs.get(root_idx) {
            let files = &mut self.files;
            let (framework, note) =
                tree::framework_of(&r.p.cmdline, &r.p.exe, &children, &mut |path| {
                    files.read_for(r.p.pid, path)
                });
            snap.framework = framework;
            snap.notes.extend(note);
            snap.churn.per_job = tree::is_rq_worker(&r.p.cmdline);
            // Where the root's environment was read, for the settings read from it.
            let at = r.p.env.place(r.p.pid);
            if framework == Framework::Gunicorn {
                snap.worker_class = Some(env::gunicorn_worker_class(
                    &at,
                    &r.p.cmdline,
                    &r.env,
                    &mut |path| files.read_for(r.p.pid, path),
                ));
            }
            snap.graceful_timeout = match framework {
                Framework::Gunicorn => Some(env::gunicorn_graceful_timeout(
                    &at,
                    &r.p.cmdline,
                    &r.env,
                    &mut |path| files.read_for(r.p.pid, path),
                )),
                Framework::Uwsgi => Some(env::uwsgi_graceful_timeout(
                    &r.p.cmdline,
                    &r.env,
                    &mut |path| files.read_for(r.p.pid, path).map(|(text, _)| text),
                )),
                _ => None,
            };
            snap.recycling = match framework {
                Framework::Gunicorn => {
                    env::gunicorn_recycling(&at, &r.p.cmdline, &r.env, &mut |path| {
                        files.read_for(r.p.pid, path)
                    })
                }
                Framework::Celery => env::celery_recycling(&r.p.cmdline),
                Framework::Uvicorn => env::uvicorn_recycling(&r.p.cmdline, &r.env),
                Framework::Hypercorn => env::hypercorn_recycling(&r.p.cmdline),
                Framework::Uwsgi => env::uwsgi_recycling(&r.p.cmdline, &r.env, &mut |path| {
                    files.read_for(r.p.pid, path).map(|(text, _)| text)
                }),
                _ => None,
            };
            if let (Some(rc), false) = (&snap.recycling, snap.churn.exited.is_empty()) {
                snap.notes.push(format!(
                    "{} worker(s) exited and {} started during the window; the server recycles \
                     its workers ({}, {}), and without their exit statuses a recycle cannot be \
                     told from a crash: `otel-forkcheck run` reads them",
                    snap.churn.exited.len(),
                    snap.churn.spawned.len(),
                    rc.setting,
                    rc.source
                ));
            }
        }

        for o in procs.iter_mut() {
            (o.p.role, o.p.started_by) = placed.get(&o.p.pid).copied().unwrap_or_default();
            let pid = o.p.pid;
            let at = o.p.env.place(pid);
            let files = &mut self.files;
            match snap.framework {
                Framework::Gunicorn => {
                    o.p.env.preload =
                        env::gunicorn_preload(&at, &o.p.cmdline, &o.env, &mut |path| {
                            files.read_for(pid, path)
                        });
                }
                Framework::Uwsgi => {
                    o.p.env.uwsgi_fork_options =
                        env::uwsgi_fork_options(&o.p.cmdline, &o.env, &mut |path| {
                            files.read_for(pid, path).map(|(text, _)| text)
                        });
                }
                _ => {}
            }
        }

        name_ghosts_from_parents(&mut procs);

        // inode -> every pid holding it.
        let mut holders: HashMap<u64, Vec<i32>> = HashMap::new();
        for o in &procs {
            for (_, inode) in &o.fds {
                let h = holders.entry(*inode).or_default();
                if !h.contains(&o.p.pid) {
                    h.push(o.p.pid);
                }
            }
        }
        for h in holders.values_mut() {
            h.sort_unstable();
        }
        for o in procs.iter_mut() {
            let Some(table) = self.tables.get(&o.p.netns) else {
                continue;
            };
            o.p.sockets = o
                .fds
                .iter()
                .filter_map(|(fd, inode)| {
                    let e = table.get(inode)?;
                    Some(Socket {
                        fd: *fd,
                        inode: *inode,
                        proto: e.proto.to_string(),
                        state: e.state.clone(),
                        local: e.local.clone(),
                        remote: e.remote.clone(),
                        shared_with: holders.get(inode).cloned().unwrap_or_default(),
                        polled_by: Vec::new(),
                    })
                })
                .collect();
        }
        let mut sites = listeners::SiteCache::new();
        for o in procs.iter_mut() {
            listeners::mark_polled(&mut o.p);
            o.p.prometheus = listeners::prometheus_facts(&o.p, &o.env, &mut sites);
        }

        let envs: Vec<(String, &[(String, String)])> = procs
            .iter()
            .map(|o| (o.p.env.place(o.p.pid), o.env.as_slice()))
            .collect();
        snap.collector_endpoints = env::collector_endpoints(&envs);
        let mut all_notes = notes::notes(root, &procs, self.opts.python_names);
        all_notes.append(&mut snap.notes);
        all_notes.extend(notes::greenlet_note(snap, &procs));
        snap.notes = all_notes;
        snap.processes = procs.into_iter().map(|o| o.p).collect();
    }
}

/// A ghost is a copy of a thread of the parent; when the interpreter's name for it is
/// unreliable (see [`python::match_threads`]) or missing, the parent's live thread with the same
/// OS id (in their pid namespace, which is what the interpreter records) has the right one.
fn name_ghosts_from_parents(procs: &mut [Observed]) {
    let names: HashMap<(i32, i64), String> = procs
        .iter()
        .flat_map(|o| {
            o.p.threads
                .iter()
                .map(move |t| ((o.p.pid, t.ns_tid() as i64), t.name.clone()))
        })
        .collect();
    for o in procs.iter_mut() {
        let ppid = o.p.ppid;
        for g in o.p.python.ghost_threads.iter_mut() {
            if g.name.is_empty() {
                if let Some(n) = names.get(&(ppid, g.os_tid)) {
                    g.name = n.clone();
                }
            }
        }
    }
}

fn check_root(root: i32) -> Result<(), ObserveError> {
    if root <= 0 {
        return Err(ObserveError::NoSuchPid(root));
    }
    let stat = match read_text(format!("/proc/{root}/stat")) {
        Ok(s) => s,
        Err(ReadError::Gone) => return Err(ObserveError::NoSuchPid(root)),
        Err(e) => return Err(ObserveError::Other(format!("/proc/{root}/stat: {e}"))),
    };
    if task::parse_stat(&stat).is_some_and(|s| s.state == "Z") {
        return Err(ObserveError::NoSuchPid(root));
    }
    // /proc/<tid> resolves for threads too; a thread id is not a process to observe.
    if let Ok(status) = read_text(format!("/proc/{root}/status")) {
        let st = task::parse_status(&status);
        if st.tgid != 0 && st.tgid != root {
            return Err(ObserveError::Other(format!(
                "{root} is a thread of process {}; pass the process id",
                st.tgid
            )));
        }
    }
    Ok(())
}

fn walk(index: &ChildIndex, root: i32) -> Result<Vec<(i32, i32)>, ObserveError> {
    match ptree::walk(index, root) {
        Ok(t) => Ok(t),
        Err(ReadError::Gone) => Err(ObserveError::NoSuchPid(root)),
        Err(ReadError::Denied) => Err(ObserveError::PermissionDenied {
            pid: root,
            what: "task".into(),
        }),
        Err(e) => Err(ObserveError::Other(format!("/proc/{root}: {e}"))),
    }
}
