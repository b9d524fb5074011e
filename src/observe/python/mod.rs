//! Python facts from interpreter memory and from the target's site-packages: thread names,
//! ghost threads, Python version, opentelemetry-sdk version.
//!
//! On Python 3.8-3.13 every Python thread's comm is the process name, so the only way to see an
//! `OtelPeriodicExportingMetricReader` is to read `threading._active` from the interpreter's
//! memory, without pausing the target (process_vm_readv only, no ptrace stop). [`reader`]
//! learns each address-space layout once (py-spy as a library finds the interpreter) and reads
//! every process of it in a handful of calls ([`walk`], [`known`], [`objects`]); before 3.11
//! the OS thread ids come from glibc ([`pthread`]).
//!
//! Ghost threads: a server that forks in C without running `PyOS_AfterFork_Child` (uWSGI without
//! `py-call-osafterfork`) leaves the parent's thread states in the child's interpreter; the
//! interpreter lists them (same names, the parent's thread ids) but no such OS thread exists.
//! A Python thread counts only if its OS thread id is the id of one of /proc/<pid>/task's
//! threads in the process's own pid namespace (`NSpid:`; see [`match_threads`]).

use std::collections::HashMap;

use crate::snapshot::GhostThread;

use crate::proc::rootfs;

mod attach;
mod elf;
mod known;
pub mod objects;
pub mod pthread;
pub mod reader;
pub mod retitled;
pub mod walk;

pub use reader::{PythonReader, Target};

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
    /// site-packages (or dist-packages) directories on `sys.path` (3.8-3.13), or seen in the
    /// frames' file names (py-spy's sample, other versions).
    pub site_dirs: Vec<String>,
    /// Why threads have no OS thread id, when they have none (Python < 3.11 and the tid could
    /// not be found in glibc's `struct pthread`).
    pub unplaced_why: Option<String>,
    /// `sys.argv` (3.8-3.13; empty otherwise), which a process title rewrite leaves alone.
    pub argv: Vec<String>,
    /// `threading._SHUTTING_DOWN` (3.9-3.13; None otherwise): the main thread has ended and
    /// the interpreter is exiting.
    pub exiting: Option<bool>,
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

/// Whether process `pid`, whose executable is `exe` (empty: unreadable), may run Python: as
/// [`looks_like_python`] says, its maps read only when the name does not settle it. Unknown
/// counts as may (an executable or maps that could not be read), as the snapshot's
/// `not_python` does; a process gone before its maps were read does not.
pub fn may_run_python(pid: i32, exe: &str) -> bool {
    if exe.is_empty() || looks_like_python(exe, None) {
        return true;
    }
    match crate::proc::file::read_text(format!("/proc/{pid}/maps")) {
        Ok(maps) => libpython_in_maps(&maps).is_some(),
        Err(crate::proc::file::ReadError::Gone) => false,
        Err(_) => true,
    }
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
/// its pid namespace, and from inside alike (docs/failure-modes.md#containers-and-pid-namespaces); names are keyed by
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

/// Where the target's interpreter may import from, most trustworthy first: its own (`sys.path`
/// or its frames', in `own_dirs`), `VIRTUAL_ENV`, `PYTHONPATH`, a venv named by argv[0]/argv[1]
/// (a venv's `bin/python` is a symlink, so /proc/<pid>/exe loses it), then the prefix of
/// libpython and of the executable.
pub fn site_candidates(
    own_dirs: &[String],
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
    let mut out: Vec<String> = own_dirs.to_vec();
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
