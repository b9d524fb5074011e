//! FC109 prometheus-listener-inherited.

use crate::diagnose::evidence::{judgeable, socket, thread, who, MIN_WORKER_AGE_S};
use crate::diagnose::{Facts, Finding, Rule, Severity};
use crate::snapshot::{Framework, Process, Role, Snapshot, Socket};

pub static RULE: Rule = Rule {
    code: "FC109",
    slug: "prometheus-listener-inherited",
    severity: Severity::Error,
    summary: "a Prometheus pull exporter's listening socket opened before fork is held by every worker (scrapes hit one random registry), or workers fail to bind it",
    doc: DOC,
    silenced_by: &[],
    check,
};

const DOC: &str = "\
## What it means
A Prometheus pull exporter (prometheus_client's `start_http_server`, which OpenTelemetry's
`PrometheusMetricReader` is served by) answers scrapes from one process's registry, while the
requests are served by several workers. Either its listening socket was opened in the master
before fork (every worker holds a copy, but only the process running the exporter's thread
answers it), or each worker tried to open the same fixed port after fork and only one could.

## Why telemetry breaks
A registry lives in one process's memory. Opened in the master (`--preload` with the exporter
set up at import, or `opentelemetry-instrument` with `OTEL_METRICS_EXPORTER=prometheus`), the
exporter's server thread exists only in the master (fork copies no thread): every scrape reads
the master's registry, which holds none of the workers' requests, so the counters stay at their
pre-fork values forever. Where several processes run a thread on the inherited socket, each
scrape reads whichever registry accepted the connection: counters jump up and down. Started in
each worker on one fixed port, the first worker binds it, the others fail (`OSError: [Errno 98]
Address already in use`, often caught and ignored): their metrics are never scraped.

## How it is detected
Listening sockets come from /proc/<pid>/fd and the net/tcp tables of each process's namespace,
with every pid holding the inode. The thread answering a listener is found without stopping it:
a thread blocked in `poll` (the pollfd array named by /proc/<pid>/task/<tid>/syscall, read with
process_vm_readv) or `accept` on its fd; Python's `socketserver.serve_forever` sits in
`poll(fds, 1, 500)`. prometheus_client must be installed in the interpreter's site-packages.
Reported: a listener held by the master and its workers and answered by a thread (not the main
thread) of the master; or, among workers older than 2 s, some answering a listener of their
own from a thread and others none. Not reported in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`
set in the master), where the master's exporter reads every worker's files by design.

## Fix
Use prometheus_client's multiprocess mode, or one port per worker, or push with OTLP:
- gunicorn: set `PROMETHEUS_MULTIPROC_DIR` to an empty directory before gunicorn starts, serve
  a `MultiProcessCollector` registry from the master in `when_ready`, and mark dead workers in
  `child_exit`; or start a server per worker in `post_fork` on its own port.
- uWSGI: the same multiprocess mode, or a port per worker in a `@postfork` function
  (`9464 + uwsgi.worker_id()`).
- uvicorn, Hypercorn, Granian, multiprocessing, Celery: multiprocess mode, or a port per
  worker. OpenTelemetry's `PrometheusMetricReader` has no multiprocess mode: give each worker
  its own port, or export with OTLP instead.

## Known false alarms
Another server built on Python's socketserver (an admin or health endpoint) started in the
master before fork, in a tree that also has prometheus_client installed: the evidence names the
thread and the port. A per-worker exporter on a port computed from something only one worker
gets. Multiprocess mode with a master that serves the default registry instead of a
`MultiProcessCollector` one passes, although it is broken.
Precedence: nothing silences it.

## References
- docs/failure-modes.md#prometheus-listener-inherited (what was measured)
- https://prometheus.github.io/client_python/multiprocess/ (multiprocess mode, with gunicorn)
- https://github.com/prometheus/client_python/issues/127 (prometheus_client under preloading servers)
- https://docs.gunicorn.org/en/stable/settings.html#when-ready (gunicorn's when_ready and child_exit hooks)
";

/// Threads of `p`, other than its main thread, answering `s` (a socket of `p`).
fn answering(p: &Process, s: &Socket) -> Vec<i32> {
    s.polled_by
        .iter()
        .copied()
        .filter(|tid| *tid != p.pid)
        .collect()
}

fn check(facts: &Facts) -> Vec<Finding> {
    let Some(snap) = facts.snapshot else {
        return Vec::new();
    };
    let Some(installed) = snap
        .processes
        .iter()
        .find(|p| p.prometheus.client_version.is_some())
    else {
        return Vec::new();
    };
    let master = snap.master();
    if master.is_some_and(|m| m.prometheus.multiproc_dir.is_some()) {
        return Vec::new();
    }
    let mut out = inherited(snap, installed);
    if out.is_empty() {
        out.extend(one_port_per_tree(snap, installed));
    }
    out
}

/// Listeners of the master held by its workers and answered by a thread of the master.
fn inherited(snap: &Snapshot, installed: &Process) -> Vec<Finding> {
    let Some(master) = snap.master() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in master.sockets.iter().filter(|s| s.state == "LISTEN") {
        let served = answering(master, s);
        let holders: Vec<&Process> = s
            .shared_with
            .iter()
            .filter_map(|pid| snap.process(*pid))
            .collect();
        let workers: Vec<&Process> = holders
            .iter()
            .copied()
            .filter(|p| p.role == Role::Worker)
            .collect();
        if served.is_empty() || workers.is_empty() {
            continue;
        }
        let names: Vec<String> = holders
            .iter()
            .map(|p| match p.role {
                Role::Master => format!("{} (master)", p.pid),
                _ => p.pid.to_string(),
            })
            .collect();
        let mut evidence = vec![format!(
            "{} is open in pids {}",
            socket(s),
            names.join(", ")
        )];
        for tid in &served {
            let t = master.threads.iter().find(|t| t.tid == *tid);
            evidence.push(format!(
                "{} {} waits on fd {} (this socket): it answers the scrapes",
                who(master),
                t.map_or(format!("thread {tid}"), thread),
                s.fd
            ));
        }
        let also: Vec<String> = workers
            .iter()
            .filter_map(|w| {
                let ws = w.sockets.iter().find(|x| x.inode == s.inode)?;
                let tids = answering(w, ws);
                (!tids.is_empty()).then(|| format!("{} (threads {tids:?})", w.pid))
            })
            .collect();
        let silent: Vec<i32> = workers
            .iter()
            .filter(|w| {
                w.sockets
                    .iter()
                    .find(|x| x.inode == s.inode)
                    .is_none_or(|ws| answering(w, ws).is_empty())
            })
            .map(|w| w.pid)
            .collect();
        if !silent.is_empty() {
            evidence.push(format!(
                "workers {silent:?} hold it and no thread of theirs answers it: their \
                 registries are never scraped"
            ));
        }
        if !also.is_empty() {
            evidence.push(format!(
                "workers {} answer it too: each scrape reads whichever registry accepts",
                also.join(", ")
            ));
        }
        evidence.extend(installed_evidence(installed, master));
        let port = s.local.rsplit(':').next().unwrap_or("?");
        let who_answers = if also.is_empty() {
            format!(
                "scrapes are answered by the master (pid {}) alone, so the workers' metrics \
                 are never read",
                master.pid
            )
        } else {
            "each scrape reads one random process's registry".to_string()
        };
        out.push(RULE.finding(
            s.shared_with.clone(),
            format!(
                "the Prometheus listener on port {port} was opened in the master before fork \
                 and is held by {} processes: {who_answers}",
                s.shared_with.len()
            ),
            evidence,
            fix(snap.framework),
        ));
    }
    out
}

/// A listener `w` holds alone and answers from a thread other than its main thread.
fn own(w: &Process) -> Option<&Socket> {
    w.sockets
        .iter()
        .find(|s| s.state == "LISTEN" && s.shared_with == [w.pid] && !answering(w, s).is_empty())
}

/// Some workers answer a listener of their own, others none: one port for the whole tree,
/// bound by the first worker only.
fn one_port_per_tree(snap: &Snapshot, installed: &Process) -> Vec<Finding> {
    let ready: Vec<&Process> = snap.workers().filter(|w| judgeable(snap, w)).collect();
    let (with, without): (Vec<&Process>, Vec<&Process>) =
        ready.iter().copied().partition(|w| own(w).is_some());
    if with.is_empty() || without.is_empty() {
        return Vec::new();
    }
    let mut evidence: Vec<String> = with
        .iter()
        .filter_map(|w| {
            let s = own(w)?;
            Some(format!(
                "{} holds {} alone and thread(s) {:?} answer it",
                who(w),
                socket(s),
                answering(w, s)
            ))
        })
        .collect();
    let pids: Vec<i32> = without.iter().map(|w| w.pid).collect();
    evidence.push(format!(
        "workers {pids:?} (older than {MIN_WORKER_AGE_S:.0} s) answer no listener of their own: \
         their exporter could not bind the port, and their registries are never scraped"
    ));
    evidence.extend(installed_evidence(installed, installed));
    let ports: Vec<&str> = with
        .iter()
        .filter_map(|w| own(w)?.local.rsplit(':').next())
        .collect();
    vec![RULE.finding(
        pids,
        format!(
            "only {} of {} workers serve a Prometheus listener (port {}): the others failed to \
             bind it, so their metrics are never scraped",
            with.len(),
            ready.len(),
            ports.join(", ")
        ),
        evidence,
        fix(snap.framework),
    )]
}

fn installed_evidence(installed: &Process, master: &Process) -> Vec<String> {
    let mut ev = vec![format!(
        "prometheus_client {}{} installed in {} ({})",
        installed
            .prometheus
            .client_version
            .as_deref()
            .unwrap_or("?"),
        installed
            .prometheus
            .otel_exporter_version
            .as_deref()
            .map_or(String::new(), |v| format!(
                " and opentelemetry-exporter-prometheus {v}"
            )),
        installed
            .python
            .site_packages
            .as_deref()
            .unwrap_or("site-packages"),
        who(installed)
    )];
    if master
        .env_var("OTEL_METRICS_EXPORTER")
        .is_some_and(|v| v.contains("prometheus"))
    {
        ev.push(format!(
            "OTEL_METRICS_EXPORTER includes prometheus in {}",
            master.env.place(master.pid)
        ));
    }
    ev.push(format!(
        "no PROMETHEUS_MULTIPROC_DIR in {}: not multiprocess mode",
        master.env.place(master.pid)
    ));
    ev
}

/// The fix for the server at hand.
fn fix(framework: Framework) -> String {
    let per_server = match framework {
        Framework::Gunicorn | Framework::Unknown => GUNICORN,
        Framework::Uwsgi => UWSGI,
        _ => OTHERS,
    };
    format!("{per_server}\n\n{OTEL_READER}")
}

const GUNICORN: &str = "\
Serve every worker's metrics from one place with prometheus_client's multiprocess mode: set
PROMETHEUS_MULTIPROC_DIR to an empty directory in gunicorn's environment, create no server at
import time, and in gunicorn.conf.py:

    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    def when_ready(server):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(9464, registry=registry)

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

Or give each worker its own port in post_fork (start_http_server(9464 + worker.age)) and
scrape every port.";

const UWSGI: &str = "\
Serve every worker's metrics from one place with prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR set to an empty directory, one MultiProcessCollector registry served
by one process), or give each worker its own port after fork:

    from uwsgidecorators import postfork
    from prometheus_client import start_http_server

    @postfork
    def metrics_server():
        import uwsgi
        start_http_server(9464 + uwsgi.worker_id())";

const OTHERS: &str = "\
Start no exporter in the parent, and give each worker its own port (computed from something
unique per worker, with the scrape configuration listing every port), or use prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, one MultiProcessCollector registry served by one
process).";

const OTEL_READER: &str = "\
With OpenTelemetry's PrometheusMetricReader (no multiprocess mode), build the MeterProvider and
its server in each worker after fork on a port of its own, or export with OTLP instead
(PeriodicExportingMetricReader) and let the collector expose Prometheus.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::testkit::*;

    fn listen(fd: i32, inode: u64, port: u16, holders: &[i32], polled_by: &[i32]) -> Socket {
        Socket {
            fd,
            inode,
            proto: "tcp".into(),
            state: "LISTEN".into(),
            local: format!("127.0.0.1:{port}"),
            remote: "0.0.0.0:0".into(),
            shared_with: holders.to_vec(),
            polled_by: polled_by.to_vec(),
        }
    }

    fn with_prometheus(mut snap: Snapshot) -> Snapshot {
        for p in &mut snap.processes {
            p.prometheus.client_version = Some("0.26.0".into());
            p.python.site_packages = Some("/venv/lib/python3.11/site-packages".into());
        }
        snap
    }

    /// gunicorn --preload with start_http_server at import: the master answers the exporter's
    /// listener (fd 3) from a thread; everyone holds it and gunicorn's own (fd 4).
    fn preload() -> Snapshot {
        let mut master = main_only(100);
        master.push(th(150, "Thread-1 (serve_forever)", ThreadKind::Other));
        let mut snap = with_prometheus(gunicorn(master, vec![main_only(200), main_only(300)]));
        for p in &mut snap.processes {
            let served = if p.pid == MASTER { vec![150] } else { vec![] };
            p.sockets = vec![
                listen(3, 900, 9464, &[100, 101, 102], &served),
                listen(4, 901, 8000, &[100, 101, 102], &[]),
            ];
        }
        snap
    }

    #[test]
    fn master_answering_an_inherited_listener_names_every_holder() {
        let found = check(&Facts::from_snapshot(&preload()));
        assert_eq!(codes(&found), vec!["FC109"]);
        let f = &found[0];
        assert_eq!(f.pids, vec![100, 101, 102]);
        assert!(f.title.contains("port 9464"), "{}", f.title);
        assert!(f.title.contains("master (pid 100) alone"), "{}", f.title);
        assert!(
            f.evidence[0].contains("socket inode 900"),
            "{:?}",
            f.evidence
        );
        assert!(f.evidence[1].contains("'Thread-1 (serve_forever)'"));
        assert!(f.evidence[2].contains("[101, 102]"));
        assert!(f
            .evidence
            .iter()
            .any(|e| e.contains("prometheus_client 0.26.0")));
        assert!(f.fix.contains("MultiProcessCollector"), "{}", f.fix);
        assert!(f.fix.contains("when_ready"), "{}", f.fix);
    }

    #[test]
    fn workers_answering_the_inherited_listener_too_read_random_registries() {
        let mut snap = preload();
        snap.processes[1]
            .threads
            .push(th(250, "Thread-1 (serve_forever)", ThreadKind::Other));
        snap.processes[1].sockets[0].polled_by = vec![250];
        let found = check(&Facts::from_snapshot(&snap));
        assert!(found[0].title.contains("one random process's registry"));
        assert!(found[0]
            .evidence
            .iter()
            .any(|e| e.contains("101 (threads [250])")));
    }

    #[test]
    fn multiprocess_mode_no_client_and_no_answering_thread_pass() {
        let mut snap = preload();
        snap.processes[0].prometheus.multiproc_dir = Some("/tmp/prom".into());
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        let mut snap = preload();
        for p in &mut snap.processes {
            p.prometheus = PrometheusFacts::default();
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // Only gunicorn's own listener, answered by nobody in the master: by design.
        let mut snap = preload();
        for p in &mut snap.processes {
            p.sockets.remove(0);
        }
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        // The main thread of the master polling a listener is a server, not an exporter.
        let mut snap = preload();
        snap.processes[0].sockets[0].polled_by = vec![100];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }

    #[test]
    fn a_fixed_port_bound_by_one_worker_names_the_others() {
        let mut snap = with_prometheus(gunicorn(
            main_only(100),
            vec![main_only(200), main_only(300), main_only(400)],
        ));
        snap.processes[1]
            .threads
            .push(th(250, "Thread-1 (serve_forever)", ThreadKind::Other));
        snap.processes[1].sockets = vec![listen(5, 910, 9464, &[101], &[250])];
        let found = check(&Facts::from_snapshot(&snap));
        assert_eq!(codes(&found), vec!["FC109"]);
        assert_eq!(found[0].pids, vec![102, 103]);
        assert!(
            found[0].title.starts_with("only 1 of 3 workers"),
            "{}",
            found[0].title
        );
        assert!(found[0].evidence[0].contains("pid 101 (worker) holds socket inode 910"));
        // A port per worker passes; so does a young worker that has not bound yet.
        snap.processes[2].sockets = vec![listen(5, 911, 9465, &[102], &[260])];
        snap.processes[3].sockets = vec![listen(5, 912, 9466, &[103], &[270])];
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
        snap.processes[3].sockets.clear();
        snap.processes[3].started_at_ms = NOW_MS - 500;
        assert!(check(&Facts::from_snapshot(&snap)).is_empty());
    }
}
