//! One process's facts in one sample: threads (with Python names when readable), sockets,
//! environment and site-packages; and the socket tables read once per network namespace.

use super::*;

impl<'a> Observer<'a> {
    /// One read of the interpreter of `o`.
    pub(super) fn read_python(&mut self, o: &Observed) -> Result<python::PyRead, String> {
        let tasks = os_threads(&o.p);
        self.reader.read(&python::Target {
            pid: o.p.pid,
            ppid: o.p.ppid,
            exe: &o.p.exe,
            layout: &o.layout,
            tasks: &tasks,
        })
    }

    /// Reads the interpreter again at the end of the window: names for the threads that
    /// appeared during it, and whether it is exiting now (an SDK thread that ended is one of a
    /// worker leaving, as its SDK shuts down thread by thread, or of a broken one).
    pub(super) fn read_again(&mut self, o: &mut Observed, had: &[i32]) {
        let Ok(read) = self.read_python(o) else {
            return;
        };
        o.p.python.exiting |= read.exiting == Some(true);
        let ns_ppid = self.ns_ppid(&o.p);
        let m = python::match_threads(o.p.pid, ns_ppid, &os_threads(&o.p), &read.threads);
        for t in o.p.threads.iter_mut().filter(|t| !had.contains(&t.tid)) {
            if let Some(name) = m.names.get(&t.tid) {
                t.name = name.clone();
                t.name_source = NameSource::Python;
                t.kind = threads::classify_thread(Some(name), &t.comm);
            }
        }
    }

    /// Everything about one process that needs no other process. `Ok(None)`: it went away.
    pub(super) fn observe_process(
        &mut self,
        pid: i32,
        parent: i32,
        is_root: bool,
    ) -> Result<Option<Observed>, ObserveError> {
        macro_rules! gone_or {
            ($r:expr, $what:expr) => {
                match $r {
                    Ok(v) => v,
                    Err(ReadError::Gone) => return Ok(None),
                    Err(ReadError::Denied) if is_root => {
                        return Err(ObserveError::PermissionDenied {
                            pid,
                            what: $what.to_string(),
                        })
                    }
                    Err(e) if is_root => {
                        return Err(ObserveError::Other(format!("/proc/{pid}/{}: {e}", $what)))
                    }
                    Err(_) => return Ok(None),
                }
            };
        }

        let samples = gone_or!(task::sample_tasks(pid), "task");
        let Some(main) = samples
            .iter()
            .find(|s| s.tid == pid)
            .or(samples.first())
            .cloned()
        else {
            return Ok(None);
        };
        if main.stat.state == "Z" && !is_root {
            // Exited, not yet reaped: it is churn, not a process to report.
            return Ok(None);
        }
        let cmdline = procfile::parse_cmdline(&gone_or!(
            read_bytes(format!("/proc/{pid}/cmdline")),
            "cmdline"
        ));
        let mut unreadable = Vec::new();
        let exe = match read_link(format!("/proc/{pid}/exe")) {
            Ok(e) => e,
            Err(ReadError::Gone) if main.stat.state != "Z" => return Ok(None),
            Err(e) => {
                if e == ReadError::Denied {
                    unreadable.push("exe");
                }
                String::new()
            }
        };
        let layout = ptree::layout_key(pid, &exe, &main.stat);
        // The environment now, from memory: /proc/<pid>/environ is the one the process started
        // with, without what its code set (`os.environ[...]` in a gunicorn config file: the
        // collector endpoint, say) and, after a title rewrite (setproctitle), cleared. Not with
        // --no-python-names, which reads no process memory.
        let live = match self.environ_at.get(&layout) {
            _ if !self.opts.python_names => None,
            Some(at) => *at,
            None => {
                let at = python::retitled::environ_at(pid, &exe);
                self.environ_at.insert(layout.clone(), at);
                at
            }
        }
        .and_then(|at| python::retitled::read_environ(pid, at).ok());
        let from_memory = live.is_some();
        let (env_pairs, env_readable) = match live {
            Some(b) => (procfile::parse_environ(&b), true),
            None => match read_bytes(format!("/proc/{pid}/environ")) {
                Err(ReadError::Gone) => return Ok(None),
                Ok(b) if python::retitled::cleared(&b) => (Vec::new(), false),
                Ok(b) => (procfile::parse_environ(&b), true),
                Err(_) => {
                    unreadable.push("environ");
                    (Vec::new(), false)
                }
            },
        };
        let fds = match sockets::socket_fds(pid) {
            Ok(f) => f,
            Err(ReadError::Gone) => return Ok(None),
            Err(_) => {
                unreadable.push("fd");
                Vec::new()
            }
        };
        let netns = match sockets::netns_inode(pid) {
            Ok(n) => n,
            Err(ReadError::Gone) => return Ok(None),
            Err(_) => 0,
        };
        self.nspids.insert(pid, main.status.nspid.clone());
        // libpython (for the version hint and site-packages) from maps, once per layout.
        let mut maps_unread = false;
        let libpython = match self.libpython.get(&layout) {
            Some(l) => l.clone(),
            None => match read_text(format!("/proc/{pid}/maps")) {
                Ok(maps) => {
                    let l = python::libpython_in_maps(&maps);
                    self.libpython.insert(layout.clone(), l.clone());
                    l
                }
                Err(ReadError::Gone) => return Ok(None),
                Err(e) => {
                    if e == ReadError::Denied {
                        unreadable.push("maps");
                    }
                    maps_unread = true;
                    None
                }
            },
        };
        let is_python = python::looks_like_python(&exe, libpython.as_deref());

        let mut facts = PythonFacts {
            // Known only when both were read (a zombie has no executable left to read).
            not_python: !is_python && !exe.is_empty() && !maps_unread,
            ..Default::default()
        };
        if !self.opts.python_names {
            facts.names_error = Some(crate::snapshot::NAMES_NOT_REQUESTED.into());
        } else if !is_python && !unreadable.is_empty() {
            facts.names_error = Some(format!(
                "its {} could not be read (permission denied)",
                unreadable.join(" and ")
            ));
        } else if !is_python {
            facts.names_error =
                Some("not a Python process (no python executable or libpython mapped)".into());
        }
        if is_python {
            facts.version = python::version_hint(&exe, libpython.as_deref());
        }

        let threads = samples.iter().map(|s| self.thread_from(s)).collect();
        let mut env_facts = env::env_facts(&env_pairs);
        env_facts.readable = env_readable;
        env_facts.from_memory = from_memory;

        Ok(Some(Observed {
            p: Process {
                pid,
                ppid: main.stat.ppid,
                nspid: main.status.nspid.clone(),
                role: Role::Other,
                started_by: None,
                started_at_ms: self.clock.ticks_to_unix_ms(main.stat.starttime),
                uid: main.status.uid,
                exe,
                cmdline,
                netns,
                threads,
                sockets: Vec::new(),
                env: env_facts,
                python: facts,
                prometheus: Default::default(),
                gone: false,
                unreadable: unreadable.iter().map(|s| s.to_string()).collect(),
            },
            env: env_pairs,
            fds,
            layout,
            libpython,
            wants_python: is_python && self.opts.python_names,
            parent,
        }))
    }

    /// Reads `o`'s interpreter and folds the read in; false when the read failed because the
    /// process exited meanwhile (a worker recycled as it was read): gone, as one that exited
    /// before it was reached, not an interpreter that cannot be read.
    pub(super) fn python_of(&mut self, o: &mut Observed) -> bool {
        let read = self.read_python(o);
        let failed = read.is_err();
        self.apply_python(o, read);
        !(failed && window::exited(o.p.pid))
    }

    /// Folds an interpreter read into a process: names and kinds of its threads, ghosts,
    /// version, and the site-packages facts (which also run when the read failed, from the
    /// environment and executable alone).
    pub(super) fn apply_python(&mut self, o: &mut Observed, read: Result<python::PyRead, String>) {
        let pid = o.p.pid;
        let ns_ppid = self.ns_ppid(&o.p);
        let tasks = os_threads(&o.p);
        let denied_before = o.p.unreadable.iter().any(|u| u == "maps");
        let mut denied = false;
        let facts = &mut o.p.python;
        let mut own_dirs = Vec::new();
        match read {
            Ok(read) => {
                // A title rewrite (setproctitle) left one argument, the title, where the kernel
                // shows the command line; sys.argv still has the arguments after it.
                if o.p.cmdline.len() == 1 && read.argv.len() > 1 {
                    o.p.cmdline.extend(read.argv[1..].iter().cloned());
                }
                let m = python::match_threads(pid, ns_ppid, &tasks, &read.threads);
                facts.version = Some(read.version.clone());
                facts.exiting = read.exiting == Some(true);
                // Names count as read only when each Python thread was placed on its OS thread.
                facts.names_read = m.unplaced == 0;
                facts.names_error = (m.unplaced > 0).then(|| {
                    format!(
                        "Python {} records no OS thread ids before 3.11 and {}: {} Python \
                         thread name(s) could not be matched to OS threads",
                        read.version,
                        read.unplaced_why.as_deref().unwrap_or("none were found"),
                        m.unplaced
                    )
                });
                // A thread that started between the /proc sample and the read is real: look
                // again (by the ids the interpreter uses) before calling anything a ghost.
                facts.ghost_threads = m.ghosts;
                if !facts.ghost_threads.is_empty() {
                    if let Ok(now) = task::ns_tids(pid) {
                        facts
                            .ghost_threads
                            .retain(|g| !now.iter().any(|(_, ns)| *ns as i64 == g.os_tid));
                    }
                }
                for t in o.p.threads.iter_mut() {
                    if let Some(name) = m.names.get(&t.tid) {
                        t.name = name.clone();
                        t.name_source = NameSource::Python;
                        t.kind = threads::classify_thread(Some(name), &t.comm);
                    }
                }
                own_dirs = read.site_dirs;
            }
            Err(e) => {
                denied = super::notes::refused(&e);
                facts.names_error = Some(e);
            }
        }
        let cands = python::site_candidates(
            &own_dirs,
            &o.env,
            &o.p.cmdline,
            &o.p.exe,
            o.libpython.as_deref(),
            facts.version.as_deref(),
        );
        // Keyed by the target's filesystem view: two containers may name the same directory.
        let root = crate::proc::rootfs::root_id(pid);
        let site = self
            .sites
            .entry((root, cands))
            .or_insert_with_key(|(_, c)| python::site_facts(pid, c));
        facts.site_packages = site.site_packages.clone();
        facts.sdk_version = site.sdk_version.clone();
        facts.exporters = site.exporters.clone();
        if denied && !denied_before {
            o.p.unreadable.push("memory".into());
        }
    }

    /// A thread as /proc shows it; [`Self::apply_python`] may rename it later.
    pub(super) fn thread_from(&self, s: &TaskSample) -> Thread {
        Thread {
            tid: s.tid,
            nstid: s.nested_ns_tid(),
            kind: threads::classify_thread(None, &s.stat.comm),
            name: s.stat.comm.clone(),
            name_source: NameSource::Comm,
            comm: s.stat.comm.clone(),
            started_at_ms: self.clock.ticks_to_unix_ms(s.stat.starttime),
            state: s.stat.state.clone(),
            syscall: s.syscall.clone(),
            syscall_end: None,
            wakeups: s.status.voluntary_ctxt_switches,
            wakeups_end: None,
        }
    }

    /// The parent's pid in `p`'s own pid namespace (None when the parent lives outside it), from
    /// the NSpid chains observed so far, else from the parent's /proc status.
    pub(super) fn ns_ppid(&mut self, p: &Process) -> Option<i32> {
        if p.nspid.len() <= 1 {
            return (p.ppid > 0).then_some(p.ppid);
        }
        let chain = match self.nspids.get(&p.ppid) {
            Some(c) => c.clone(),
            None => {
                let c = ptree::proc_basics(p.ppid, &self.clock)
                    .map(|b| b.nspid)
                    .unwrap_or_default();
                self.nspids.insert(p.ppid, c.clone());
                c
            }
        };
        task::id_in_ns_of(&chain, &p.nspid)
    }

    /// Socket tables, once per network namespace not read yet, read only as far as needed to
    /// resolve the inodes that namespace's processes hold.
    pub(super) fn read_tables(&mut self, procs: &[Observed]) {
        let mut wanted: HashMap<u64, (i32, Vec<u64>)> = HashMap::new();
        for o in procs {
            if o.fds.is_empty() || self.tables.contains_key(&o.p.netns) {
                continue;
            }
            let w = wanted.entry(o.p.netns).or_insert((o.p.pid, Vec::new()));
            w.1.extend(o.fds.iter().map(|(_, inode)| *inode));
        }
        for (netns, (pid, mut inodes)) in wanted {
            inodes.sort_unstable();
            inodes.dedup();
            if let Ok(t) = sockets::read_tables(pid, &inodes) {
                self.tables.insert(netns, t);
            }
        }
    }
}

/// A process's threads by both ids, for matching with the interpreter's.
fn os_threads(p: &Process) -> Vec<python::OsThread> {
    p.threads
        .iter()
        .map(|t| python::OsThread {
            tid: t.tid,
            ns_tid: t.ns_tid(),
        })
        .collect()
}
