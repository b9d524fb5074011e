//! Finding the pre-fork master under the launched command, and how many workers to wait for.
//!
//! The launched pid is often not the master: `sh -c`, wrapper scripts and `uv run` sit above it
//! (while `opentelemetry-instrument` execs, so its pid becomes gunicorn's). The master is the
//! first process, breadth-first from the launched pid, with children that are forks of it: same
//! executable and the same layout key (start of code, heap and argv from /proc/<pid>/stat: a
//! fork keeps them; a new program, even the same interpreter, gets fresh randomised ones). Comparing layouts, not only
//! executables, keeps `python wrapper.py` -> `python -m gunicorn` from looking like a master with
//! one worker. The tree walk and what counts as a worker are the /proc floor's ([`crate::proc::tree`]).

use super::children::Horses;
use crate::observe::env as obs_env;
use crate::observe::tree;
use crate::proc::file::{parse_cmdline, parse_environ, read_bytes};
use crate::proc::tree::{is_forkserver, is_mp_helper, kin, walk, ChildIndex, Image, Kin};

/// The master and its workers, as seen in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub master: i32,
    /// Its workers (forks, spawned interpreters, forks of its forkserver), sorted.
    pub workers: Vec<i32>,
}

/// One look at the tree under `launched`: the master and its workers, when there is one yet.
/// A multiprocessing helper (resource tracker, forkserver) is never the master: the forks of a
/// forkserver are workers of the forkserver's owner, which is the master.
pub fn find(launched: i32) -> Option<Found> {
    let index = ChildIndex::for_root(launched);
    let tree = walk(&index, launched).ok()?;
    let children = |pid: i32| -> Vec<i32> {
        tree.iter()
            .filter(|(_, parent)| *parent == pid)
            .map(|(p, _)| *p)
            .collect()
    };
    for &(pid, _) in &tree {
        let kids = children(pid);
        if kids.is_empty() {
            continue;
        }
        let Some(me) = Image::read(pid) else { continue };
        if is_mp_helper(&me.cmdline) {
            continue;
        }
        let mut workers: Vec<i32> = Vec::new();
        for k in kids {
            let Some(img) = Image::read(k) else { continue };
            match kin(&me, &img) {
                w if w.is_worker() => workers.push(k),
                Kin::Helper if is_forkserver(&img.cmdline) => {
                    workers.extend(children(k).into_iter().filter(|g| {
                        Image::read(*g).is_some_and(|gi| kin(&img, &gi) == Kin::Forkserver)
                    }))
                }
                _ => {}
            }
        }
        if !workers.is_empty() {
            workers.sort_unstable();
            return Some(Found {
                master: pid,
                workers,
            });
        }
    }
    // An RQ worker between jobs: a master without a work horse yet.
    tree.iter()
        .map(|&(pid, _)| pid)
        .find(|&pid| is_rq(pid))
        .map(|master| Found {
            master,
            workers: Vec::new(),
        })
}

/// Which of `pid`'s descendants are RQ work horses (forked for one job each): the children of
/// an `rq worker`, the grandchildren of an `rq worker-pool` (its workers' children).
pub fn horses_of(pid: i32) -> Horses {
    let Ok(b) = read_bytes(format!("/proc/{pid}/cmdline")) else {
        return Horses::None;
    };
    let args = parse_cmdline(&b);
    if tree::is_rq_worker(&args) {
        Horses::Children
    } else if tree::is_rq_worker_pool(&args) {
        Horses::Grandchildren
    } else {
        Horses::None
    }
}

/// Whether `pid` is an RQ worker, which forks a work horse per job ([`tree::is_rq_worker`]).
pub fn is_rq(pid: i32) -> bool {
    horses_of(pid) == Horses::Children
}

/// `-w N`, `-wN`, `--workers N`, `--workers=N` among `args`; Err(()) when given but not a number.
fn workers_flag<S: AsRef<str>>(args: &[S]) -> Option<Result<usize, ()>> {
    let mut found = None;
    let mut it = args.iter().map(|a| a.as_ref());
    while let Some(a) = it.next() {
        let v = if a == "-w" || a == "--workers" {
            it.next().map(str::to_string)
        } else if let Some(v) = a.strip_prefix("--workers=") {
            Some(v.to_string())
        } else {
            a.strip_prefix("-w")
                .filter(|_| !a.starts_with("--"))
                .map(str::to_string)
        };
        if let Some(v) = v {
            // The last one wins, as in gunicorn's argument parser.
            found = Some(v.trim().parse().map_err(|_| ()));
        }
    }
    found
}

/// `workers = N` in a gunicorn config file; Err(()) for a value we cannot evaluate.
fn config_workers(text: &str) -> Option<Result<usize, ()>> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("workers") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.split('#').next().unwrap_or("").trim();
        found = Some(value.parse().map_err(|_| ()));
    }
    found
}

/// How many workers a server will run, as far as its command line and environment say:
/// gunicorn's `-w`/`--workers` (command line, then GUNICORN_CMD_ARGS, then `workers = N` in its
/// config file), then WEB_CONCURRENCY (gunicorn's default for `workers`, and a convention other
/// servers follow), then gunicorn's own default of 1. None when it cannot be known (not
/// gunicorn and no WEB_CONCURRENCY, or a value computed in Python): then the caller waits for
/// the number of children to settle.
pub fn expected_workers(
    cmdline: &[String],
    env: &[(String, String)],
    read_config: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<usize> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let gunicorn = cmdline.iter().any(|a| {
        let base = a.rsplit('/').next().unwrap_or(a);
        base == "gunicorn" || base.starts_with("gunicorn:")
    });
    if gunicorn {
        if let Some(r) = workers_flag(cmdline) {
            return r.ok();
        }
        if let Some(args) = get("GUNICORN_CMD_ARGS") {
            let words: Vec<&str> = args.split_whitespace().collect();
            if let Some(r) = workers_flag(&words) {
                return r.ok();
            }
        }
        let path =
            obs_env::gunicorn_config_arg(cmdline).unwrap_or_else(|| "gunicorn.conf.py".into());
        if let Some(r) = read_config(&path).as_deref().and_then(config_workers) {
            return r.ok();
        }
    }
    if let Some(n) = get("WEB_CONCURRENCY").and_then(|v| v.trim().parse().ok()) {
        return Some(n);
    }
    gunicorn.then_some(1)
}

/// [`expected_workers`] for a live master: its /proc cmdline, environ and config file.
pub fn expected_workers_of(master: i32) -> Option<usize> {
    let cmdline = read_bytes(format!("/proc/{master}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default();
    let env = read_bytes(format!("/proc/{master}/environ"))
        .map(|b| parse_environ(&b))
        .unwrap_or_default();
    let mut files = obs_env::FileCache::default();
    expected_workers(&cmdline, &env, &mut |path| {
        files.read_for(master, path).map(|(text, _)| text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::file::read_link;
    use crate::proc::tree::tree_pids;
    use std::time::{Duration, Instant};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn no_file(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn worker_counts_from_gunicorn_settings() {
        let env = vec![("WEB_CONCURRENCY".to_string(), "5".to_string())];
        let gu = |args: &[&str]| {
            let mut v = s(&["/v/bin/python", "/v/bin/gunicorn"]);
            v.extend(s(args));
            v
        };
        assert_eq!(
            expected_workers(&gu(&["-w", "3", "app:app"]), &env, &mut no_file),
            Some(3)
        );
        assert_eq!(expected_workers(&gu(&["-w2"]), &[], &mut no_file), Some(2));
        assert_eq!(
            expected_workers(&gu(&["--workers=4"]), &[], &mut no_file),
            Some(4)
        );
        assert_eq!(
            expected_workers(&gu(&["app:app"]), &env, &mut no_file),
            Some(5)
        );
        assert_eq!(
            expected_workers(&gu(&["app:app"]), &[], &mut no_file),
            Some(1)
        );
        let cmd_args = vec![("GUNICORN_CMD_ARGS".to_string(), "--workers 6".to_string())];
        assert_eq!(
            expected_workers(&gu(&["app:app"]), &cmd_args, &mut no_file),
            Some(6)
        );
        let mut conf = |p: &str| (p == "x.conf.py").then(|| "workers = 7  # seven\n".to_string());
        assert_eq!(
            expected_workers(&gu(&["-c", "x.conf.py"]), &[], &mut conf),
            Some(7)
        );
        let mut computed = |_: &str| Some("import os\nworkers = os.cpu_count() * 2\n".to_string());
        assert_eq!(expected_workers(&gu(&[]), &[], &mut computed), None);
        // Not gunicorn: only WEB_CONCURRENCY says anything.
        assert_eq!(
            expected_workers(&s(&["uwsgi", "--processes", "4"]), &[], &mut no_file),
            None
        );
        assert_eq!(
            expected_workers(&s(&["python", "pool.py"]), &env, &mut no_file),
            Some(5)
        );
    }

    /// A forkserver pool: the pool processes are children of the forkserver, which is a child
    /// of the pool's owner beside the resource tracker. The owner is the master.
    #[test]
    fn a_forkserver_pool_has_its_owner_as_master() {
        let script = "import multiprocessing as mp, time\n\
            if __name__ == '__main__':\n    ctx = mp.get_context('forkserver')\n    \
            p = ctx.Pool(2)\n    p.map(abs, range(4))\n    time.sleep(30)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let launched = child.id() as i32;
        let until = Instant::now() + Duration::from_secs(20);
        let mut found = None;
        while Instant::now() < until && found.is_none() {
            found = find(launched).filter(|f| f.workers.len() == 2);
            std::thread::sleep(Duration::from_millis(50));
        }
        let cmdline = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let ppid = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| crate::proc::task::parse_stat(&s))
                .map_or(0, |st| st.ppid)
        };
        let seen = found.clone().map(|f| {
            let master = cmdline(f.master);
            let parents: Vec<(i32, String)> = f
                .workers
                .iter()
                .map(|w| (ppid(ppid(*w)), cmdline(ppid(*w))))
                .collect();
            (master, parents)
        });
        for p in tree_pids(launched) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        let f = found.expect("the owner and its two pool processes");
        let (master, parents) = seen.unwrap();
        assert!(master.contains("get_context('forkserver')"), "{master}");
        for (grandparent, parent) in parents {
            assert!(parent.contains("multiprocessing.forkserver"), "{parent}");
            assert_eq!(grandparent, f.master, "{f:?}");
        }
    }

    #[test]
    fn finds_the_forking_process_under_a_shell() {
        // sh -> python (exec'd, a new image) -> two forks of it.
        let script = "import os, time\nfor _ in range(2):\n    if os.fork() == 0:\n        time.sleep(30); os._exit(0)\ntime.sleep(30)\n";
        let mut child = std::process::Command::new("sh")
            .args(["-c", &format!("python3 -c '{script}'; true")])
            .spawn()
            .unwrap();
        let sh = child.id() as i32;
        let until = Instant::now() + Duration::from_secs(5);
        let mut found = None;
        while Instant::now() < until {
            found = find(sh).filter(|f| f.workers.len() == 2);
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let f = found.expect("master found");
        assert_ne!(f.master, sh, "the shell is not the master");
        let exe = read_link(format!("/proc/{}/exe", f.master)).unwrap();
        assert!(exe.contains("python"), "{exe}");
        assert_eq!(tree_pids(f.master).len(), 3);
        // Clean up the whole tree: the python and its forks.
        for p in tree_pids(sh) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
    }
}
