//! Python facts from interpreter memory (py-spy as a library) and from the target's
//! site-packages: thread names, ghost threads, Python version, opentelemetry-sdk version.
//!
//! On Python 3.8-3.13 every Python thread's comm is the process name, so the only way to see an
//! `OtelPeriodicExportingMetricReader` is to read `threading._active` from the interpreter's
//! memory. py-spy does that without pausing the target (`LockingStrategy::NonBlocking`:
//! process_vm_readv only, no ptrace stop).
//!
//! Cost: `PythonSpy::new` parses the interpreter's ELF symbols (3-23 ms per process). Workers
//! forked from the master without exec have the same executable mapped at the same addresses,
//! so the addresses it finds (`_PyRuntime`, the interpreter state) hold in every such worker.
//! [`PythonReader`] parses once per distinct layout ([`LayoutKey`]: the executable and the load
//! addresses of it and libpython) and re-targets that spy at each worker by swapping its pid,
//! which costs one non-blocking sample (well under a millisecond). If a re-targeted read fails,
//! the worker gets its own full attach.
//!
//! Ghost threads: a server that forks in C without running `PyOS_AfterFork_Child` (uWSGI without
//! `py-call-osafterfork`) leaves the parent's thread states in the child's interpreter; the
//! interpreter lists them (same names, the parent's thread ids) but no such OS thread exists.
//! A Python thread counts only if its OS thread id is the id of one of /proc/<pid>/task's
//! threads in the process's own pid namespace (`NSpid:`; see [`match_threads`]).

use std::collections::{HashMap, HashSet};

use py_spy::config::{LineNo, LockingStrategy};
use py_spy::{Config, PythonSpy};

use crate::snapshot::GhostThread;

use crate::proc::rootfs;
use crate::proc::tree::LayoutKey;

/// One Python thread as the interpreter lists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PyThread {
    /// pthread id (`threading.get_ident()`).
    pub python_thread_id: u64,
    /// OS thread id as recorded by the interpreter (3.11+: `PyThreadState.native_thread_id`).
    pub os_tid: Option<i64>,
    pub name: Option<String>,
}

/// What one read of an interpreter gave.
#[derive(Debug, Clone, Default)]
pub struct PyRead {
    pub version: String,
    pub threads: Vec<PyThread>,
    /// site-packages (or dist-packages) directories seen in the frames' file names.
    pub site_dirs: Vec<String>,
}

fn is_libpython(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|b| b.starts_with("libpython"))
}

/// The libpython mapped in a process (text of /proc/<pid>/maps), when the interpreter is
/// built shared.
pub fn libpython_in_maps(maps: &str) -> Option<String> {
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        is_libpython(path).then(|| path.to_string())
    })
}

/// Whether py-spy is worth trying: a python executable, uwsgi (embeds libpython), or
/// libpython mapped.
pub fn looks_like_python(exe: &str, libpython: Option<&str>) -> bool {
    let base = exe.rsplit('/').next().unwrap_or("");
    base.starts_with("python") || base.starts_with("uwsgi") || libpython.is_some()
}

/// Reads Python thread names, re-using parsed interpreter addresses across forks.
pub struct PythonReader {
    config: Config,
    spies: HashMap<LayoutKey, Result<PythonSpy, String>>,
    /// Layouts where a full attach after a failed re-targeted read did not help either.
    fresh_failed: HashSet<LayoutKey>,
    /// Full attaches (ELF parses) done.
    pub attaches: u32,
    /// Reads served by re-targeting an already parsed spy.
    pub reuses: u32,
}

impl Default for PythonReader {
    fn default() -> Self {
        PythonReader::new()
    }
}

impl PythonReader {
    pub fn new() -> PythonReader {
        let config = Config {
            blocking: LockingStrategy::NonBlocking,
            collect_thread_names: true,
            native: false,
            dump_locals: 0,
            // No line tables and no per-frame filesystem checks: we only need names and paths.
            lineno: LineNo::NoLine,
            full_filenames: true,
            ..Config::default()
        };
        PythonReader {
            config,
            spies: HashMap::new(),
            fresh_failed: HashSet::new(),
            attaches: 0,
            reuses: 0,
        }
    }

    /// Reads the interpreter of `pid`, whose layout is `key`.
    ///
    /// Cost bound: a layout whose ELF parse fails is not parsed again (uWSGI+gRPC workers all
    /// fail the same way); a layout whose spy parses but cannot sample falls back to a full
    /// attach once, not once per worker.
    pub fn read(&mut self, pid: i32, key: &LayoutKey) -> Result<PyRead, String> {
        let mut last_err = None;
        match self.spies.get_mut(key) {
            Some(Ok(spy)) => {
                retarget(spy, pid);
                match sample(spy) {
                    Ok(read) => {
                        self.reuses += 1;
                        return Ok(read);
                    }
                    // Different layout after all, or a racing read: attach to this one properly,
                    // unless that already failed to help for this layout.
                    Err(e) if self.fresh_failed.contains(key) => return Err(e),
                    Err(e) => last_err = Some(e),
                }
            }
            Some(Err(e)) => return Err(e.clone()),
            None => {}
        }
        self.attaches += 1;
        let config = &self.config;
        let result = match guarded("py-spy attach", || {
            PythonSpy::new(pid, config).map_err(|e| one_line(&e))
        }) {
            Ok(mut spy) => {
                let read = sample(&mut spy);
                if read.is_ok() {
                    // A spy that just worked replaces one that did not.
                    self.spies.insert(key.clone(), Ok(spy));
                } else {
                    // Keep a parsed spy even when this sample failed: the next fork may read.
                    self.spies.entry(key.clone()).or_insert(Ok(spy));
                }
                read
            }
            Err(msg) => {
                self.spies.entry(key.clone()).or_insert(Err(msg.clone()));
                Err(msg)
            }
        };
        if result.is_err() && last_err.is_some() {
            self.fresh_failed.insert(key.clone());
        }
        result
    }
}

fn one_line(e: &anyhow::Error) -> String {
    // The root cause is the useful part ("Failed to find a python interpreter in the .data
    // section"); the context chain repeats what we already know.
    let root = e.root_cause().to_string();
    let top = e.to_string();
    if top == root {
        top
    } else {
        format!("{top}: {root}")
    }
}

/// Points a parsed spy at another process of the same layout. `PythonSpy` exposes `pid` and
/// `process` (on Linux just the pid used for process_vm_readv); its caches are per process and
/// are cleared so that the name lookup runs again for this pid.
fn retarget(spy: &mut PythonSpy, pid: i32) {
    spy.pid = pid;
    spy.process.pid = pid;
    spy.python_thread_ids.clear();
    spy.python_thread_names.clear();
}

/// Runs a py-spy call, turning a panic inside it into an error for this process.
///
/// py-spy interprets another process's memory, and memory that is not what it expects can make
/// it panic: measured on uWSGI 2.0.31 workers with the gRPC exporter, its scan for the
/// interpreter overflows an address ("attempt to add with overflow" in `frame_address`, debug
/// builds). One unreadable interpreter must not end the whole check with a panic (exit 101):
/// that process just gets no Python names, with the reason. py-spy's panic message is kept off
/// stderr (see [`quiet_py_spy_panics`]).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    quiet_py_spy_panics();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!("{what} panicked: {msg}"))
        }
    }
}

/// Installs (once) a panic hook that stays silent for panics raised inside py-spy's code, which
/// [`guarded`] turns into errors, and hands every other panic to the previous hook.
fn quiet_py_spy_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_py_spy = info
                .location()
                .is_some_and(|l| l.file().contains("py-spy") || l.file().contains("py_spy"));
            if !in_py_spy {
                previous(info);
            }
        }));
    });
}

/// One non-blocking sample. The target keeps running while we read, so a read can catch a
/// pointer mid-update; a couple of retries make that rare.
fn sample(spy: &mut PythonSpy) -> Result<PyRead, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let traces = guarded("py-spy sample", || {
            spy.get_stack_traces().map_err(|e| one_line(&e))
        });
        match traces {
            Ok(traces) => {
                let mut site_dirs: Vec<String> = Vec::new();
                let threads = traces
                    .iter()
                    .map(|t| {
                        for f in &t.frames {
                            if let Some(dir) = site_dir_of(&f.filename) {
                                if !site_dirs.iter().any(|d| d == dir) {
                                    site_dirs.push(dir.to_string());
                                }
                            }
                        }
                        PyThread {
                            python_thread_id: t.thread_id,
                            os_tid: t.os_thread_id.map(|x| x as i64),
                            name: t.thread_name.clone(),
                        }
                    })
                    .collect();
                return Ok(PyRead {
                    version: spy.version.to_string(),
                    threads,
                    site_dirs,
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `/v/lib/python3.11/site-packages/gunicorn/arbiter.py` -> `/v/lib/python3.11/site-packages`.
pub fn site_dir_of(filename: &str) -> Option<&str> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(i) = filename.find(marker) {
            return Some(&filename[..i + marker.len() - 1]);
        }
    }
    None
}

/// Result of matching the interpreter's threads to the OS threads of one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    /// tid (as /proc/<pid>/task lists it) -> Python name.
    pub names: HashMap<i32, String>,
    pub ghosts: Vec<GhostThread>,
    /// Python threads whose OS thread id the interpreter does not record (Python < 3.11).
    pub unplaced: usize,
}

/// One OS thread of the process, by both of its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsThread {
    /// The id /proc/<pid>/task lists (the namespace we read /proc through).
    pub tid: i32,
    /// The id in the process's own pid namespace (last column of its `NSpid:`): what the
    /// interpreter records as `native_thread_id`. Equal to `tid` outside containers.
    pub ns_tid: i32,
}

/// Matches Python threads to the OS threads `tasks` of process `pid`.
///
/// The interpreter records each thread's id as the thread itself sees it, in the process's own
/// pid namespace; /proc lists ids of the namespace it was mounted for. Matching goes through
/// each task's `ns_tid`, so a container's threads match from the host, from a sidecar sharing
/// its pid namespace, and from inside alike (FIELD-NOTES "Containers"); names are keyed by
/// `tid`. `ns_ppid` is the parent's pid in the process's own namespace (None when the parent
/// lives outside it, as a container's pid 1's does).
///
/// One correction: when a fork bypassed `PyOS_AfterFork_Child`, the forking thread lives on as
/// the child's main thread but its thread state still carries the parent's OS thread id. So if
/// no Python thread claims the child's main thread (tid == pid) and one claims the parent's
/// main thread (the thread servers fork from), that one is the child's main thread, not a
/// ghost.
pub fn match_threads(
    pid: i32,
    ns_ppid: Option<i32>,
    tasks: &[OsThread],
    py: &[PyThread],
) -> Matched {
    let mut m = Matched::default();
    let live = |os: i64| tasks.iter().find(|t| t.ns_tid as i64 == os);
    let mut claimed_main = false;
    let mut ghost_idx = Vec::new();
    for (i, t) in py.iter().enumerate() {
        match t.os_tid {
            Some(os) => match live(os) {
                Some(task) => {
                    if task.tid == pid {
                        claimed_main = true;
                    }
                    if let Some(name) = &t.name {
                        m.names.insert(task.tid, name.clone());
                    }
                }
                None => ghost_idx.push(i),
            },
            None => m.unplaced += 1,
        }
    }
    let has_main = tasks.iter().any(|t| t.tid == pid);
    if let (false, Some(ppid), true) = (claimed_main, ns_ppid.filter(|p| *p > 0), has_main) {
        if let Some(pos) = ghost_idx
            .iter()
            .position(|&i| py[i].os_tid == Some(ppid as i64))
        {
            let i = ghost_idx.remove(pos);
            if let Some(name) = &py[i].name {
                m.names.insert(pid, name.clone());
            }
        }
    }
    // After a fork glibc recycles the dead threads' stacks, so a thread started in the child
    // can get a ghost's pthread id; `threading._active` then maps that id to the new thread and
    // the ghost's name read by id is the new thread's. Such names are unknown here (the caller
    // can take the name from the parent's thread with the ghost's OS id).
    let live_ids: Vec<u64> = py
        .iter()
        .filter(|t| t.os_tid.is_some_and(|os| live(os).is_some()))
        .map(|t| t.python_thread_id)
        .collect();
    m.ghosts = ghost_idx
        .into_iter()
        .map(|i| GhostThread {
            name: if live_ids.contains(&py[i].python_thread_id) {
                String::new()
            } else {
                py[i].name.clone().unwrap_or_default()
            },
            os_tid: py[i].os_tid.unwrap_or(-1),
        })
        .collect();
    m
}

/// opentelemetry-sdk facts of one site-packages directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteFacts {
    pub site_packages: Option<String>,
    pub sdk_version: Option<String>,
    pub exporters: Vec<String>,
}

/// Where the target's interpreter may import from, most trustworthy first: directories seen in
/// its own frames, `VIRTUAL_ENV`, `PYTHONPATH`, a venv named by argv[0]/argv[1] (a venv's
/// `bin/python` is a symlink, so /proc/<pid>/exe loses it), then the prefix of libpython and
/// of the executable.
pub fn site_candidates(
    frame_dirs: &[String],
    env: &[(String, String)],
    cmdline: &[String],
    exe: &str,
    libpython: Option<&str>,
    version: Option<&str>,
) -> Vec<String> {
    let xy = version.and_then(|v| {
        let mut it = v.split('.');
        Some(format!("{}.{}", it.next()?, it.next()?))
    });
    let xy = xy.or_else(|| xy_from_path(libpython.unwrap_or(exe)));
    let lib_site = |prefix: &str| -> Option<String> {
        xy.as_ref().map(|xy| {
            format!(
                "{}/lib/python{xy}/site-packages",
                prefix.trim_end_matches('/')
            )
        })
    };
    let mut out: Vec<String> = frame_dirs.to_vec();
    let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    if let Some(venv) = get("VIRTUAL_ENV") {
        out.extend(lib_site(venv));
    }
    if let Some(pp) = get("PYTHONPATH") {
        out.extend(pp.split(':').filter(|p| !p.is_empty()).map(str::to_string));
    }
    for arg in cmdline.iter().take(2) {
        if let Some(bin) = arg.rsplit_once('/').map(|(d, _)| d) {
            if let Some(prefix) = bin.strip_suffix("/bin") {
                out.extend(lib_site(prefix));
            }
        }
    }
    if let Some(lib) = libpython {
        if let Some((dir, _)) = lib.rsplit_once('/') {
            if let Some(prefix) = dir.strip_suffix("/lib").or(dir.strip_suffix("/lib64")) {
                out.extend(lib_site(prefix));
            }
        }
    }
    if let Some(prefix) = exe
        .rsplit_once('/')
        .and_then(|(d, _)| d.strip_suffix("/bin"))
    {
        out.extend(lib_site(prefix));
    }
    let mut seen = Vec::new();
    out.retain(|d| {
        if seen.contains(d) {
            false
        } else {
            seen.push(d.clone());
            true
        }
    });
    out
}

fn xy_from_path(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let i = base.find("python")? + "python".len();
    let rest = &base[i..];
    let mut parts = rest.split('.');
    let major = parts.next()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!major.is_empty() && major.chars().all(|c| c.is_ascii_digit()) && !minor.is_empty())
        .then(|| format!("{major}.{minor}"))
}

/// Looks at each candidate as the target sees it (below its root, in its mount namespace, so a
/// container's venv at a path the host does not have is found, and a host directory of the same
/// name is not) and takes the first that holds opentelemetry-sdk, else the first that exists.
/// Candidates are paths in the target's view; a relative one (from `PYTHONPATH`) is its
/// working directory's.
pub fn site_facts(pid: i32, candidates: &[String]) -> SiteFacts {
    let mut first_existing: Option<String> = None;
    for dir in candidates {
        let Ok(abs) = rootfs::target_path(pid, dir) else {
            continue;
        };
        let Ok(names) = rootfs::list_dir(pid, &abs) else {
            continue;
        };
        let facts = facts_from_listing(&names);
        if facts.sdk_version.is_some() {
            return SiteFacts {
                site_packages: Some(dir.clone()),
                ..facts
            };
        }
        if first_existing.is_none() && dir.ends_with("-packages") {
            first_existing = Some(dir.clone());
        }
    }
    SiteFacts {
        site_packages: first_existing,
        ..SiteFacts::default()
    }
}

/// SDK version and OTLP exporters from the names in a site-packages directory.
pub fn facts_from_listing(names: &[String]) -> SiteFacts {
    let mut facts = SiteFacts::default();
    for n in names {
        let Some(stem) = n
            .strip_suffix(".dist-info")
            .or_else(|| n.strip_suffix(".egg-info"))
        else {
            continue;
        };
        let Some((project, version)) = stem.split_once('-') else {
            continue;
        };
        let project = project.to_ascii_lowercase().replace(['-', '.'], "_");
        let version = version.split('-').next().unwrap_or(version);
        match project.as_str() {
            "opentelemetry_sdk" => facts.sdk_version = Some(version.to_string()),
            "opentelemetry_exporter_otlp_proto_http" => facts.exporters.push("http".into()),
            "opentelemetry_exporter_otlp_proto_grpc" => facts.exporters.push("grpc".into()),
            _ => {}
        }
    }
    facts.exporters.sort();
    facts.exporters.dedup();
    facts
}

/// `3.11` from `/usr/lib/libpython3.11.so.1.0` or `/usr/bin/python3.11`, as a version hint
/// when the interpreter could not be read.
pub fn version_hint(exe: &str, libpython: Option<&str>) -> Option<String> {
    xy_from_path(libpython.unwrap_or(exe))
}

#[cfg(test)]
mod tests;
