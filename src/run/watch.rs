//! From launch to just before the stop: workers ready, children tracked, drivers started,
//! requests sent when there is HTTP (a port of the master, or --hit), the window.
//!
//! Without HTTP (Celery, RQ, a multiprocessing job: no listening socket and no --hit) no request
//! is sent: work comes from `--drive` commands or from outside, and the child tracker
//! ([`super::children`]) tells which children worked. A command that forked workers and then
//! exits by itself ends the watch there: it is judged after the drain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::children::{Horses, Tracker};
use super::drive::Driver;
use super::launch::Server;
use super::traffic::{self, Outcome, Target};
use super::{master, progress, served_by, Interrupt, RunOptions, SHOW_LINES};
use crate::error::Error;
use crate::observe;
use crate::receive::{now_ms, Receiver};
use crate::snapshot::Snapshot;

/// How long the worker set must stay the same before it counts, when the number is known.
const SETTLE_KNOWN: Duration = Duration::from_millis(200);
/// ... and when it is not.
const SETTLE_UNKNOWN: Duration = Duration::from_secs(1);
/// The inspection's own sampling window, at most.
const SAMPLE_WINDOW: Duration = Duration::from_secs(3);
/// ... without HTTP, where a batch program may end soon.
const SAMPLE_WINDOW_NO_HTTP: Duration = Duration::from_secs(1);
/// Requests on connections open at once, at most.
const MAX_TOGETHER: usize = 16;
/// How long the master may take to show a listening socket once its workers are up.
const PORT_GRACE: Duration = Duration::from_secs(1);
/// The same for spawned workers whose parent holds a socket bound but not listening yet: each
/// worker calls listen() once it has imported the application (uvicorn, Hypercorn).
const SPAWN_PORT_GRACE: Duration = Duration::from_secs(20);

/// What the watch saw, up to the stop.
pub(super) struct Watched {
    pub found: master::Found,
    pub targets: Vec<Target>,
    pub outcomes: Vec<Outcome>,
    pub snapshot: Snapshot,
    pub tracker: Tracker,
    pub drivers: Vec<Driver>,
    pub http: bool,
    /// The command ended by itself: (how, when seen, Unix ms).
    pub ended: Option<(String, u64)>,
}

pub(super) fn watch(
    args: &RunOptions,
    server: &mut Server,
    receiver: &Receiver,
    mut targets: Vec<Target>,
    interrupt: &Interrupt,
) -> Result<Watched, Error> {
    let t0 = Instant::now();
    let found = wait_for_workers(args, server, interrupt)?;
    let horses = master::horses_of(found.master);
    let per_job = horses != Horses::None;
    let tracker = Tracker::start(found.master, horses);
    progress(&format!(
        "master pid {} with {} worker(s): {:?} (after {:.1} s)",
        found.master,
        found.workers.len(),
        found.workers,
        t0.elapsed().as_secs_f64()
    ));
    let http = if !targets.is_empty() {
        wait_for_hit(args, server, &targets[0], t0, interrupt)?;
        true
    } else if let Some(t) = wait_for_port(args, server, &found, interrupt)? {
        targets.push(t);
        true
    } else {
        progress(
            "no TCP port and no --hit: no requests are sent; watching (work from --drive or \
             from outside)",
        );
        false
    };
    let mut drivers = Vec::new();
    for cmd in &args.drive {
        let d = Driver::start(cmd).map_err(|e| {
            Error::new(
                format!("cannot start --drive `{cmd}`: {e}"),
                "check the command (run through sh -c)",
            )
        })?;
        progress(&format!(
            "driver `{cmd}` started as pid {} (its own process group)",
            d.pid()
        ));
        drivers.push(d);
    }
    let outcomes = if http {
        send(
            args,
            server,
            receiver,
            &targets,
            found.master,
            found.workers.len(),
            interrupt,
        )?
    } else {
        Vec::new()
    };

    progress(&format!(
        "watching for {:.1} s{} (inspection and receiver)",
        args.window.as_secs_f64(),
        if drivers.is_empty() {
            ""
        } else {
            " after the drivers end"
        }
    ));
    let sample = if http {
        SAMPLE_WINDOW
    } else {
        SAMPLE_WINDOW_NO_HTTP
    };
    let opts = observe::Options {
        pid: found.master,
        window: args.window.min(sample),
        python_names: args.python_names,
    };
    let mut sample = Some(move || std::thread::spawn(move || observe::observe(&opts)));
    let mut sampler = None;
    // An RQ worker (or worker pool) is inspected once its drivers are done: it may still be
    // importing (and setting the SDK up) when found, and its horses come and go anyway.
    if !per_job {
        sampler = sample.take().map(|f| f());
    }
    let drivers_since = Instant::now();
    let mut quiet_since = Instant::now();
    let mut ended = None;
    loop {
        interrupt.check()?;
        if http {
            alive(server, "during the window")?;
        } else if ended_by_itself(server) {
            let st = server.status_text().unwrap_or_default();
            progress(&format!("the command ended by itself ({st})"));
            ended = Some((st, now_ms()));
            break;
        }
        let mut running = 0;
        for d in drivers.iter_mut() {
            if d.running() {
                running += 1;
            } else if let Some(st) = d.failed() {
                let mut a = Error::new(
                    format!(
                        "--drive `{}` failed ({st}): the work was not produced",
                        d.command
                    ),
                    "its own output below says why",
                );
                a.lines = d.last_lines(SHOW_LINES);
                return Err(a);
            }
        }
        if running > 0 {
            quiet_since = Instant::now();
            if drivers_since.elapsed() >= args.startup_timeout {
                progress(&format!(
                    "{running} driver(s) still running after {:.0} s: stopping them",
                    args.startup_timeout.as_secs_f64()
                ));
                drivers.iter_mut().for_each(Driver::stop);
            }
        }
        if running == 0 && sampler.is_none() {
            sampler = sample.take().map(|f| f());
        }
        let sampled = sampler.as_ref().is_some_and(|h| h.is_finished());
        if sampled && running == 0 && quiet_since.elapsed() >= args.window {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let joined = match sampler {
        Some(h) => h.join(),
        None => Ok(Err(observe::ObserveError::NoSuchPid(found.master))),
    };
    let snapshot = match joined {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if ended.is_none() => {
            alive(server, "during the window")?;
            return Err(Error::new(
                format!("could not inspect the server's tree: {e}"),
                e.hint(),
            ));
        }
        Ok(Err(e)) => {
            progress(&format!("the tree ended before it could be inspected: {e}"));
            Snapshot {
                root_pid: found.master,
                taken_at_ms: now_ms(),
                notes: vec![format!(
                    "the command ended before its tree could be inspected ({e}): only the \
                     receiver's and the child tracker's facts are judged"
                )],
                ..Snapshot::default()
            }
        }
        Err(_) => return Err(Error::new("the inspection thread panicked", "")),
    };
    Ok(Watched {
        found,
        targets,
        outcomes,
        snapshot,
        tracker,
        drivers,
        http,
        ended,
    })
}

/// Sends the requests, each attributed to the pid that served it; recorded in the ledger.
fn send(
    args: &RunOptions,
    server: &mut Server,
    receiver: &Receiver,
    targets: &[Target],
    master: i32,
    workers: usize,
    interrupt: &Interrupt,
) -> Result<Vec<Outcome>, Error> {
    progress(&format!(
        "sending {} request(s) to {}",
        args.requests,
        targets
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut outcomes = Vec::with_capacity(args.requests);
    // As many at once as there are workers: each sync worker takes one (see send_together).
    let together = workers.clamp(1, MAX_TOGETHER);
    while outcomes.len() < args.requests {
        interrupt.check()?;
        alive(server, "while it was sent requests")?;
        let pids = crate::proc::tree::tree_pids(master);
        let batch: Vec<&Target> = (outcomes.len()..args.requests.min(outcomes.len() + together))
            .map(|i| &targets[i % targets.len()])
            .collect();
        outcomes.extend(traffic::send_together(&batch, master, &pids));
    }
    let answered = outcomes.iter().filter(|o| o.status.is_some()).count();
    if answered == 0 {
        let first = outcomes
            .first()
            .and_then(|o| o.error.clone())
            .unwrap_or_default();
        return Err(Error::new(
            format!(
                "none of the {} request(s) got an HTTP answer ({first})",
                outcomes.len()
            ),
            "check --hit (the server's address and path)",
        ));
    }
    let served = served_by(&outcomes);
    receiver.with_ledger(|l| {
        for (pid, s) in &served {
            l.activity.entry(*pid).or_default().push(format!(
                "served {} request(s) sent by otel-forkcheck run",
                s.requests
            ));
            l.served.insert(*pid, s.clone());
        }
    });
    progress(&format!(
        "{answered} of {} answered; served by {}",
        outcomes.len(),
        if served.is_empty() {
            "no pid of the tree that could be found".to_string()
        } else {
            served
                .iter()
                .map(|(p, s)| format!("pid {p} x{}", s.requests))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    Ok(outcomes)
}

/// Err when the launched command has exited.
/// The launched command exited and nothing it started is left: a program that ended by
/// itself. A launcher that exited leaving its server running (it daemonized) has not.
fn ended_by_itself(server: &mut Server) -> bool {
    server.exited().is_some() && !server.group_alive()
}

/// Err when the launched command has exited, unless it exited 0 leaving processes behind (a
/// server that daemonizes: they are the server now, adopted by the supervisor).
pub(super) fn alive(server: &mut Server, when: &str) -> Result<(), Error> {
    match server.status_text() {
        None => Ok(()),
        Some(st) if server.exited().and_then(|e| e.code()) == Some(0) && server.group_alive() => {
            if server.note_daemon() {
                progress(&format!(
                    "the launched command exited ({st}) and left processes running (it \
                     daemonized): they are the server, watched and stopped like it"
                ));
            }
            Ok(())
        }
        Some(st) => {
            let mut a = Error::new(
                format!("the server exited {when} ({st})"),
                "its own output below says why",
            );
            a.lines = server.last_lines(SHOW_LINES);
            Err(a)
        }
    }
}

/// Waits until the master and the expected number of workers are there, and stay there. A
/// command that forked workers and exited before they settled is returned as found (it ended by
/// itself; the watch sees that): exit 2 stays for a command that never forked.
fn wait_for_workers(
    args: &RunOptions,
    server: &mut Server,
    interrupt: &Interrupt,
) -> Result<master::Found, Error> {
    let start = Instant::now();
    let mut last: Option<master::Found> = None;
    let mut ever: Option<master::Found> = None;
    let mut since = Instant::now();
    let mut expected: BTreeMap<i32, Option<usize>> = BTreeMap::new();
    let mut rq_noted = false;
    loop {
        interrupt.check()?;
        if ended_by_itself(server) {
            if let Some(f) = ever.take() {
                return Ok(f);
            }
        }
        alive(server, "before it was ready")?;
        let found = master::find(server.root());
        // An RQ worker's horses come and go with its jobs: none is waited for.
        let rq = found.as_ref().is_some_and(|f| master::is_rq(f.master));
        let master_of = |f: &Option<master::Found>| f.as_ref().map(|f| f.master);
        if (rq && master_of(&found) != master_of(&last)) || (!rq && found != last) {
            since = Instant::now();
        }
        if let Some(f) = &found {
            ever = Some(f.clone());
            if rq && args.workers.is_some() && !rq_noted {
                rq_noted = true;
                progress(
                    "rq worker forks one work horse per job: --workers is not waited for; each \
                     horse is tracked as it comes and goes",
                );
            }
            let want = if rq {
                Some(0)
            } else {
                args.workers.or_else(|| {
                    *expected
                        .entry(f.master)
                        .or_insert_with(|| master::expected_workers_of(f.master))
                })
            };
            let ready = match want {
                Some(n) => f.workers.len() >= n && since.elapsed() >= SETTLE_KNOWN,
                None => since.elapsed() >= SETTLE_UNKNOWN,
            };
            if ready {
                return Ok(f.clone());
            }
        }
        last = found;
        if start.elapsed() >= args.startup_timeout {
            let t = args.startup_timeout.as_secs_f64();
            let mut a = match &last {
                None => Error::new(
                    format!(
                        "the server never forked: no process under pid {} started a worker \
                         within {t:.0} s",
                        server.pid
                    ),
                    "run only pre-fork servers (gunicorn, uWSGI, Celery prefork, an RQ worker, a \
                     multiprocessing pool), or raise --startup-timeout",
                ),
                Some(f) => {
                    let want = args
                        .workers
                        .or(expected.get(&f.master).copied().flatten())
                        .unwrap_or(0);
                    Error::new(
                        format!(
                            "only {} of {want} worker(s) of master pid {} started within {t:.0} s",
                            f.workers.len(),
                            f.master
                        ),
                        "set --workers to the number the server runs, or raise --startup-timeout",
                    )
                }
            };
            a.lines = server.last_lines(SHOW_LINES);
            return Err(a);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The master's first TCP listening socket, given [`PORT_GRACE`] to appear once the workers are
/// up (pre-fork HTTP servers bind before they fork), or [`SPAWN_PORT_GRACE`] while spawned
/// workers have yet to call listen() on the socket their parent bound; None: a server without
/// HTTP.
fn wait_for_port(
    args: &RunOptions,
    server: &mut Server,
    found: &master::Found,
    interrupt: &Interrupt,
) -> Result<Option<Target>, Error> {
    let t0 = Instant::now();
    // Read again each round: a spawned worker shows its own command line only once it has
    // exec'd (before that it is a fork of its parent).
    let spawned = || {
        found.workers.iter().any(|w| {
            crate::proc::tree::Image::read(*w).is_some_and(|img| {
                img.cmdline
                    .iter()
                    .any(|a| a.contains("multiprocessing.spawn"))
            })
        })
    };
    loop {
        interrupt.check()?;
        if ended_by_itself(server) {
            return Ok(None);
        }
        // Before the listening sockets: a worker's listen() between the two reads then finds
        // the port, and never cuts the wait short.
        let grace = if traffic::holds_unlistened_socket(found.master) && spawned() {
            SPAWN_PORT_GRACE.min(args.startup_timeout)
        } else {
            PORT_GRACE
        };
        if let Some(a) = traffic::listen_addrs(found.master).first() {
            return Ok(Some(Target::of_listen(*a)));
        }
        if t0.elapsed() >= grace {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the first --hit URL accepts a connection.
fn wait_for_hit(
    args: &RunOptions,
    server: &mut Server,
    target: &Target,
    t0: Instant,
    interrupt: &Interrupt,
) -> Result<(), Error> {
    loop {
        interrupt.check()?;
        alive(server, "before it opened its port")?;
        if std::net::TcpStream::connect_timeout(&target.addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if t0.elapsed() >= args.startup_timeout {
            let mut a = Error::new(
                format!(
                    "nothing accepts connections at {} after {:.0} s",
                    target.url,
                    args.startup_timeout.as_secs_f64()
                ),
                "check --hit, or raise --startup-timeout",
            );
            a.lines = server.last_lines(SHOW_LINES);
            return Err(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
