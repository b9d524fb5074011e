//! Reads Python threads of many processes, learning each address-space layout once.
//!
//! Per layout ([`LayoutKey`]: the executable and its load addresses; forks without exec share
//! it) the interpreter is found once: by [`attach`] (the ELF file's `_PyRuntime`, then
//! `sys.version` and `sys.path` from memory) on 3.8-3.13, else by py-spy's full attach, non-
//! blocking (it parses the interpreter's ELF sections and walks the stacks: 5-8 ms). Every
//! process, that one included, is then read by [`walk`] on 3.8-3.13: a handful of batched
//! `process_vm_readv` calls, no stop; other versions keep py-spy's sample. Before 3.11 the OS
//! thread ids come from glibc's `struct pthread` ([`pthread`]).

use std::collections::{HashMap, HashSet};

use py_spy::config::{LineNo, LockingStrategy};
use py_spy::{Config, PythonSpy};

use super::known::Known;
use super::{attach, objects, pthread, site_dir_of, walk, OsThread, PyRead, PyThread};
use crate::proc::mem::Memory;
use crate::proc::tree::LayoutKey;

/// One process to read.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub pid: i32,
    pub ppid: i32,
    /// Its executable, as /proc/<pid>/exe names it.
    pub exe: &'a str,
    pub layout: &'a LayoutKey,
    /// Its threads by both ids, as /proc listed them.
    pub tasks: &'a [OsThread],
}

/// What a layout taught.
struct Layout {
    /// py-spy's parse, kept where it found the interpreter.
    spy: Option<PythonSpy>,
    /// Present on 3.8-3.13.
    known: Option<Known>,
    version: String,
    /// site-packages directories on `sys.path`, in its order.
    site_dirs: Vec<String>,
    /// `sys.argv` as the first process of this layout had it (its forks share it).
    argv: Vec<String>,
    /// Before 3.11: where glibc's `struct pthread` keeps the kernel tid, once found.
    tid_at: Option<usize>,
}

/// Reads Python thread names, re-using what each layout taught across its forks.
pub struct PythonReader {
    config: Config,
    layouts: HashMap<LayoutKey, Layout>,
    attach_failed: HashMap<LayoutKey, String>,
    /// Layouts where learning the layout again after a failed read did not help either.
    fresh_failed: HashSet<LayoutKey>,
    /// Python < 3.11: ident -> tid of each process read, to tell which thread of its parent a
    /// left-behind thread state copies.
    idents: HashMap<i32, HashMap<u64, i64>>,
    /// Layouts learnt (one per distinct layout, plus retries after a failed read).
    pub attaches: u32,
    /// Of which py-spy's full attach.
    pub py_spy_attaches: u32,
    /// Reads served by a layout already learnt.
    pub reuses: u32,
    /// `process_vm_readv` calls of this reader's own reads (py-spy's not counted).
    pub calls: u64,
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
            layouts: HashMap::new(),
            attach_failed: HashMap::new(),
            fresh_failed: HashSet::new(),
            idents: HashMap::new(),
            attaches: 0,
            py_spy_attaches: 0,
            reuses: 0,
            calls: 0,
        }
    }

    /// Reads the interpreter of one process.
    ///
    /// Cost bound: a layout that cannot be learnt is not tried again (uWSGI+gRPC workers all
    /// fail the same way); a layout whose reads fail is learnt again once, not once per worker.
    pub fn read(&mut self, t: &Target) -> Result<PyRead, String> {
        let key = t.layout;
        let mut last_err = None;
        if let Some(e) = self.attach_failed.get(key) {
            return Err(e.clone());
        }
        if let Some(mut l) = self.layouts.remove(key) {
            let read = self.read_with(&mut l, t);
            self.layouts.insert(key.clone(), l);
            match read {
                Ok(read) => {
                    self.reuses += 1;
                    return Ok(read);
                }
                // Different layout after all, or a racing read: learn this one properly,
                // unless that already failed to help for this layout.
                Err(e) if self.fresh_failed.contains(key) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        self.attaches += 1;
        let result = match self.learn(t) {
            Ok(mut l) => {
                let read = self.read_with(&mut l, t);
                // A layout that just worked replaces one that did not; one learnt is kept
                // even when this read failed: the next fork may read.
                if read.is_ok() || !self.layouts.contains_key(key) {
                    self.layouts.insert(key.clone(), l);
                }
                read
            }
            Err(msg) => {
                if !self.layouts.contains_key(key) {
                    self.attach_failed.insert(key.clone(), msg.clone());
                }
                Err(msg)
            }
        };
        if result.is_err() && last_err.is_some() {
            self.fresh_failed.insert(key.clone());
        }
        result
    }

    /// Finds the interpreter of `t`: directly on 3.8-3.13, else (or when that fails) with
    /// py-spy.
    fn learn(&mut self, t: &Target) -> Result<Layout, String> {
        let mut mem = Memory::new(t.pid);
        let own = attach::attach(t.pid, t.exe, &mut mem);
        self.calls += u64::from(mem.calls);
        match own {
            Ok(a) => Ok(Layout {
                spy: None,
                known: Some(a.known),
                version: a.version,
                site_dirs: site_dirs(&a.sys_path),
                argv: a.sys_argv,
                tid_at: None,
            }),
            Err(attach::Failed::Denied(why)) => Err(why),
            Err(attach::Failed::Other(own)) => {
                self.py_spy_attaches += 1;
                let config = &self.config;
                let spy = guarded("py-spy attach", || {
                    PythonSpy::new(t.pid, config).map_err(|e| one_line(&e))
                })
                .map_err(|e| format!("{e} (and from _PyRuntime: {own})"))?;
                self.learn_from_spy(t, spy)
            }
        }
    }

    /// What py-spy's attach found, completed with this reader's own reads on 3.8-3.13.
    fn learn_from_spy(&mut self, t: &Target, spy: PythonSpy) -> Result<Layout, String> {
        let mut l = Layout {
            spy: None,
            known: None,
            version: spy.version.to_string(),
            site_dirs: Vec::new(),
            argv: Vec::new(),
            tid_at: None,
        };
        // 3.13's layout is read from the interpreter itself (a free-threaded build's differs),
        // which py-spy does not hand over: that version stays with py-spy's sample here.
        let o = objects::offsets(spy.version.major, spy.version.minor).filter(|o| o.minor < 13);
        if let Some(o) = o {
            let a = &spy.addresses;
            let mut known = Known::new(
                o,
                a.interpreter_address as u64,
                a.imports_modules_address as u64,
            );
            let mut mem = Memory::new(t.pid);
            let learnt = known.learn(&mut mem);
            self.calls += u64::from(mem.calls);
            let learnt = learnt.unwrap_or_default();
            l.site_dirs = site_dirs(&learnt.path);
            l.argv = learnt.argv;
            l.known = Some(known);
        }
        l.spy = Some(spy);
        Ok(l)
    }

    fn read_with(&mut self, l: &mut Layout, t: &Target) -> Result<PyRead, String> {
        let mut mem = Memory::new(t.pid);
        let read = self.read_mem(l, t, &mut mem);
        self.calls += u64::from(mem.calls);
        read
    }

    fn read_mem(&mut self, l: &mut Layout, t: &Target, mem: &mut Memory) -> Result<PyRead, String> {
        let Some(known) = l.known.as_mut() else {
            // Outside 3.8-3.13: py-spy's own sample, names and stacks. Before 3.11 (2.7, 3.6,
            // 3.7) it gives each thread's ident, which glibc's struct pthread places as on
            // 3.8-3.10.
            let spy = l.spy.as_mut().ok_or("no interpreter found")?;
            retarget(spy, t.pid);
            let mut read = sample(spy)?;
            // Every thread of `threading` has a name (the main one "MainThread"): none at all
            // means they were not found (py-spy finds none on Python 2).
            if read.threads.iter().all(|p| p.name.is_none()) {
                return Err(format!(
                    "py-spy found no thread names in Python {}",
                    read.version
                ));
            }
            if read.threads.iter().any(|p| p.os_tid.is_none()) {
                let idents: Vec<u64> = read.threads.iter().map(|p| p.python_thread_id).collect();
                let tids = pthread_tids(&mut l.tid_at, mem, t, idents);
                self.place(t, &mut read, tids);
            }
            return Ok(read);
        };
        let o = known.o;
        // The target keeps running while we read: a pointer caught mid-update fails a read;
        // a couple of retries make that rare.
        let mut raw = walk::walk(known, mem);
        for _ in 0..2 {
            if raw.is_ok() {
                break;
            }
            raw = walk::walk(known, mem);
        }
        let (raw, exiting) = raw?;
        let mut read = PyRead {
            version: l.version.clone(),
            threads: Vec::with_capacity(raw.len()),
            site_dirs: l.site_dirs.clone(),
            unplaced_why: None,
            argv: l.argv.clone(),
            exiting,
        };
        read.threads = raw
            .into_iter()
            .map(|r| PyThread {
                python_thread_id: r.thread_id,
                os_tid: r.native_id,
                name: r.name,
            })
            .collect();
        if o.tstate_native_id.is_some() {
            return Ok(read);
        }
        let idents: Vec<u64> = read.threads.iter().map(|p| p.python_thread_id).collect();
        let tids = pthread_tids(&mut l.tid_at, mem, t, idents);
        self.place(t, &mut read, tids);
        Ok(read)
    }

    /// Before 3.11: gives each thread its OS tid from `tids` (ident -> tid, or why there are
    /// none), and remembers this process's idents for its forks.
    fn place(&mut self, t: &Target, read: &mut PyRead, tids: Result<HashMap<u64, i64>, String>) {
        let parent = self.idents.get(&t.ppid);
        let mut mine: HashMap<u64, i64> = HashMap::new();
        for p in read.threads.iter_mut() {
            let id = p.python_thread_id;
            p.os_tid = match tids.as_ref().map(|m| m.get(&id).copied()) {
                Ok(Some(tid)) if tid != 0 && !mine.contains_key(&id) => {
                    mine.insert(id, tid);
                    Some(tid)
                }
                // glibc marked it dead, or a newer thread state holds the same ident: the
                // state a fork left behind, of a thread of the parent.
                Ok(_) => Some(parent.and_then(|p| p.get(&id).copied()).unwrap_or(-1)),
                Err(_) => None,
            };
        }
        read.unplaced_why = tids.err();
        self.idents.insert(t.pid, mine);
    }
}

/// Python < 3.11: ident -> tid, from glibc's `struct pthread` at each ident. `tid_at`: the
/// layout's offset of the tid in it, found on the first call.
fn pthread_tids(
    tid_at: &mut Option<usize>,
    mem: &mut Memory,
    t: &Target,
    mut idents: Vec<u64>,
) -> Result<HashMap<u64, i64>, String> {
    idents.sort_unstable();
    idents.dedup();
    let ns_pid = t
        .tasks
        .iter()
        .find(|x| x.tid == t.pid)
        .map_or(t.pid, |x| x.ns_tid);
    let read = |mem: &mut Memory, at: usize, len: usize| -> Result<Vec<Vec<u8>>, String> {
        let ranges: Vec<(u64, usize)> = idents
            .iter()
            .map(|i| (i.wrapping_add(at as u64), len))
            .collect();
        let got = mem.read(&ranges).map_err(|e| e.to_string())?;
        got.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
            "a thread's struct pthread (at its Python ident) could not be read".into()
        })
    };
    let at = match *tid_at {
        Some(at) => at,
        None => {
            let windows = read(mem, 0, pthread::WINDOW)?;
            let live: Vec<i32> = t.tasks.iter().map(|x| x.ns_tid).collect();
            let Some(at) = pthread::calibrate(&windows, ns_pid, &live) else {
                return Err(
                    "no offset in the C library's struct pthread (at each Python \
                            thread's ident) holds this process's thread ids"
                        .into(),
                );
            };
            *tid_at = Some(at);
            return Ok(idents
                .iter()
                .zip(&windows)
                .filter_map(|(i, w)| Some((*i, pthread::tid(w, at)?)))
                .collect());
        }
    };
    let got = read(mem, at, 4)?;
    Ok(idents
        .iter()
        .zip(&got)
        .filter_map(|(i, b)| Some((*i, pthread::tid(b, 0)?)))
        .collect())
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
pub(super) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
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

/// The site-packages (or dist-packages) directories of `sys.path`, in its order.
fn site_dirs(sys_path: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in sys_path {
        if let Some(dir) = site_dir_of(&format!("{p}/")) {
            if !out.iter().any(|d| d == dir) {
                out.push(dir.to_string());
            }
        }
    }
    out
}

/// One non-blocking py-spy sample: names (with OS ids on 3.11+) and the stacks' site-packages.
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
                    unplaced_why: None,
                    argv: Vec::new(),
                    exiting: None,
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
