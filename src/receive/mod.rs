//! The OTLP receiver: OTLP/HTTP and OTLP/gRPC servers that account every export against the OS
//! pid(s) that sent it, in a [`Ledger`].
//!
//! [`serve`] binds and starts everything on the current tokio runtime and returns a [`Receiver`]
//! handle (bound addresses, the ledger, a stream of events); `run` embeds it on `127.0.0.1:0`,
//! the `receive` subcommand ([`cmd::receive_main`]) wraps it for people.
//!
//! Per connection: accept -> attribution is resolved on the resolver thread right away (the
//! client may exit soon after sending) -> each request awaits that one answer, decodes, and is
//! accounted. Holders are re-checked (rate-limited) when a resource names a pid that is not
//! among them, and now and then, so a connection opened before a fork and used after it ends up
//! listed under every pid that held it.
//!
//! Nothing a client does holds the receiver without bound ([`limits`]): connections are timed
//! from accept and capped per listener and per peer, and request bodies in flight share one
//! memory budget.

pub mod attribution;
pub mod cmd;
mod conn;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod inject;
pub mod limits;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::ledger::{AttributedBy, Identity, Ledger, Proto, Signal};
use attribution::Resolver;
pub use inject::Inject;
use limits::{Admit, Budget, Closed, Life, Table};

/// Compressed (as received) body limit.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// Decompressed body limit (gzip bombs).
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;
/// Connections served at once on both listeners together, by default (each listener has half:
/// [`limits::DEFAULT_MAX_CONNS_PER_LISTENER`]).
pub const MAX_CONNECTIONS: usize = 2 * limits::DEFAULT_MAX_CONNS_PER_LISTENER;

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// OTLP/HTTP address (port 0: any free port). None: no HTTP server.
    pub http: Option<SocketAddr>,
    /// OTLP/gRPC address. None: no gRPC server.
    pub grpc: Option<SocketAddr>,
    pub max_body: usize,
    pub max_decompressed: usize,
    /// How long a request may take to send its headers or its body.
    pub read_timeout: Duration,
    /// A connection that has not sent one request in full this long after accept is closed.
    pub first_request_timeout: Duration,
    /// A keep-alive connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Connections at once per listener (lowered to fit the open-file limit).
    pub max_conns_per_listener: usize,
    /// Connections at once per listener from one peer address.
    pub max_conns_per_peer: usize,
    /// Bytes of request bodies in flight, compressed and decompressed, HTTP and gRPC together.
    pub memory_budget: usize,
    /// Upstream collector (OTLP/HTTP base URL).
    pub forward: Option<String>,
    pub inject: Inject,
    /// Signals the user expects (recorded in the ledger for the rules).
    pub expected_signals: Vec<Signal>,
    /// Serve OTLP/gRPC on the OTLP/HTTP listener as well (`grpc` is then not bound): one port
    /// for both exporter kinds. Set when `--grpc` and `--http` name the same address; what
    /// `run` uses. Equal addresses with a fixed port are served this way even when unset.
    pub one_port: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 4318))),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 4317))),
            max_body: DEFAULT_MAX_BODY,
            max_decompressed: DEFAULT_MAX_DECOMPRESSED,
            read_timeout: Duration::from_secs(30),
            first_request_timeout: limits::DEFAULT_FIRST_REQUEST_TIMEOUT,
            idle_timeout: limits::DEFAULT_IDLE_TIMEOUT,
            max_conns_per_listener: limits::DEFAULT_MAX_CONNS_PER_LISTENER,
            max_conns_per_peer: limits::DEFAULT_MAX_CONNS_PER_PEER,
            memory_budget: limits::DEFAULT_MEMORY_BUDGET,
            forward: None,
            inject: Inject::default(),
            expected_signals: Vec::new(),
            one_port: false,
        }
    }
}

impl Options {
    /// Both servers on loopback, each on any free port.
    pub fn ephemeral() -> Self {
        Options {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Default::default()
        }
    }

    /// OTLP/HTTP and OTLP/gRPC on one free loopback port: what `run` uses, so that both
    /// exporter kinds can be aimed at one endpoint.
    pub fn ephemeral_one_port() -> Self {
        Options {
            one_port: true,
            ..Options::ephemeral()
        }
    }

    /// Whether one listener serves both protocols.
    pub fn serves_one_port(&self) -> bool {
        match (self.http, self.grpc) {
            (Some(h), Some(g)) => self.one_port || (h == g && h.port() != 0),
            _ => false,
        }
    }
}

/// Why the receiver could not start (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for OTLP/{proto} on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl ServeError {
    /// What the user can do about it, one line.
    pub fn hint(&self) -> String {
        match self {
            ServeError::Bind { proto, source, .. } => {
                let flag = if *proto == "http" { "--http" } else { "--grpc" };
                match source.kind() {
                    std::io::ErrorKind::AddrInUse => format!(
                        "another program (a collector?) already listens there: stop it, or pick another port with {flag} 127.0.0.1:0"
                    ),
                    std::io::ErrorKind::PermissionDenied => format!(
                        "ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a higher port with {flag}"
                    ),
                    _ => format!("check the address given to {flag}"),
                }
            }
            ServeError::Config(_) => "see otel-forkcheck receive --help".to_string(),
        }
    }
}

/// One line of the event stream (`--format ndjson`, the live table).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// An export was accepted and accounted.
    Export {
        at_ms: u64,
        conn: u64,
        proto: Proto,
        signal: Signal,
        /// The pid(s) it was recorded against.
        pids: Vec<i32>,
        attributed_by: AttributedBy,
        items: u64,
        bytes: u64,
        /// Identity of each resource block.
        identities: Vec<Identity>,
        /// Status answered (HTTP status; 200 for gRPC OK).
        status: u16,
    },
    /// A body that could not be used.
    Malformed {
        at_ms: u64,
        conn: u64,
        proto: Proto,
        pids: Vec<i32>,
        reason: String,
        status: u16,
    },
}

/// State shared by every connection.
pub struct Shared {
    ledger: Mutex<Ledger>,
    resolver: Resolver,
    pub(crate) opts: Options,
    forwarder: Option<forward::Forwarder>,
    events: broadcast::Sender<Event>,
    next_conn: AtomicU64,
    conns: Table,
    pub(crate) budget: Arc<Budget>,
}

impl Shared {
    /// Runs `f` on the ledger under its lock (keep it short).
    pub fn with_ledger<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut l)
    }

    fn emit(&self, e: Event) {
        // Nobody listening is fine.
        let _ = self.events.send(e);
    }

    /// Counts what a limit did.
    pub(crate) fn count(&self, f: impl FnOnce(&mut crate::ledger::LimitStats)) {
        self.with_ledger(|l| f(&mut l.limits));
    }

    /// The first reservation of a step of reading a body (waits, bounded; counted when it
    /// had to).
    pub(crate) async fn reserve(&self, n: usize) -> Result<limits::Reservation, limits::Short> {
        let (r, waited) = self.budget.reserve(n, limits::BUDGET_WAIT).await?;
        if waited {
            self.count(|c| c.budget_waited += 1);
        }
        Ok(r)
    }

    /// A copy of the ledger, as of now.
    fn ledger_copy(&self) -> Ledger {
        let mut l = self.with_ledger(|l| l.clone());
        // Blocks held on shared connections, decided with every identity learned by now.
        l.settle();
        l.limits.budget_peak_bytes = self.budget.peak() as u64;
        l.as_of_ms = now_ms();
        l
    }
}

/// Current wall clock, Unix milliseconds.
pub use crate::proc::file::now_unix_ms as now_ms;

pub use conn::Conn;
pub(crate) use conn::{account_decoded, account_malformed, account_summary};

/// A running receiver.
pub struct Receiver {
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// While the receiver serves, stdout's reader going away stops the process gracefully
    /// (SIGTERM): see [`crate::out`].
    _stop_on_close: crate::out::StopOnClose,
}

impl Receiver {
    /// A copy of the ledger as it is now.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger_copy()
    }

    /// Connection caps in force (after fitting the open-file limit).
    pub fn caps(&self) -> limits::Caps {
        self.shared.conns.caps()
    }

    /// Connections open now on the OTLP/HTTP (or shared) listener and on the OTLP/gRPC one.
    pub fn open_connections(&self) -> (usize, usize) {
        let http = self.http_addr.is_some();
        let grpc_own = self.grpc_addr.is_some() && self.grpc_addr != self.http_addr;
        match (http, grpc_own) {
            (true, true) => (self.shared.conns.open(0), self.shared.conns.open(1)),
            (true, false) => (self.shared.conns.open(0), 0),
            (false, _) => (0, self.shared.conns.open(0)),
        }
    }

    /// Bytes of request bodies held now.
    pub fn budget_in_use(&self) -> usize {
        self.shared.budget.in_use()
    }

    /// Runs `f` on the live ledger (e.g. to add `activity` evidence).
    pub fn with_ledger<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        self.shared.with_ledger(f)
    }

    /// Every export and malformed body from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Stops accepting at once; requests in flight get `grace` to finish, then every
    /// connection is closed.
    pub async fn shutdown(self, grace: Duration) -> Ledger {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                // Dropping the accept loop's JoinSet aborts every connection it serves.
                t.abort();
                let _ = t.await;
            }
        }
        self.shared.ledger_copy()
    }
}

fn bind(proto: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let err = |source| ServeError::Bind {
        proto,
        addr,
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std).map_err(err)
}

/// Binds the servers and starts serving on the current tokio runtime.
pub async fn serve(opts: Options) -> Result<Receiver, ServeError> {
    if opts.http.is_none() && opts.grpc.is_none() {
        return Err(ServeError::Config(
            "nothing to serve: give --http and/or --grpc".into(),
        ));
    }
    let forwarder = match &opts.forward {
        Some(u) => Some(forward::Forwarder::new(u).map_err(ServeError::Config)?),
        None => None,
    };
    let one_port = opts.serves_one_port();
    limits::pin_mmap_threshold();
    let nofile = limits::raise_nofile();
    let http_l = opts.http.map(|a| bind("http", a)).transpose()?;
    let grpc_l = if one_port {
        None
    } else {
        opts.grpc.map(|a| bind("grpc", a)).transpose()?
    };
    let mut ledger = Ledger::new(now_ms());
    ledger.expected_signals = opts.expected_signals.clone();
    if let Some(f) = &forwarder {
        ledger.forward = Some(crate::ledger::ForwardStats {
            url: f.url().to_string(),
            ..Default::default()
        });
    }
    let listeners = http_l.is_some() as usize + grpc_l.is_some() as usize;
    let caps = limits::Caps::fit(&opts, listeners, nofile);
    let budget = Budget::new(opts.memory_budget);
    let (events, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        ledger: Mutex::new(ledger),
        resolver: Resolver::start()
            .map_err(|e| ServeError::Config(format!("cannot start the attribution thread: {e}")))?,
        opts,
        forwarder,
        events,
        next_conn: AtomicU64::new(1),
        conns: Table::new(caps, listeners),
        budget,
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut http_addr = None;
    let mut grpc_addr = None;
    if let Some(l) = http_l {
        http_addr = l.local_addr().ok();
        if one_port {
            grpc_addr = http_addr;
        }
        let serves = Serves {
            http: true,
            grpc: one_port,
        };
        tasks.push(tokio::spawn(accept_loop(
            l,
            0,
            serves,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(l) = grpc_l {
        grpc_addr = l.local_addr().ok();
        let serves = Serves {
            http: false,
            grpc: true,
        };
        tasks.push(tokio::spawn(accept_loop(
            l,
            tasks.len(),
            serves,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    Ok(Receiver {
        http_addr,
        grpc_addr,
        shared,
        stop,
        tasks,
        _stop_on_close: crate::out::StopOnClose::new(),
    })
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// What one listener speaks.
#[derive(Debug, Clone, Copy)]
struct Serves {
    http: bool,
    grpc: bool,
}

async fn accept_loop(
    listener: TcpListener,
    index: usize,
    serves: Serves,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let grpc_routes = serves.grpc.then(|| grpc::routes(shared.clone()));
    // Until a request says otherwise, a connection carries what its port is for.
    let proto = if serves.http {
        Proto::Http
    } else {
        Proto::Grpc
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let peer_seen = crate::proc::sockets::normalize_addr(peer);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (ready_tx, ready_rx) = watch::channel(false);
        let conn = Arc::new(Conn::new(
            id,
            proto,
            peer,
            local,
            ready_rx,
            Life::new(index, peer_seen.ip()),
        ));
        match shared.conns.admit(&conn) {
            Admit::Refused => {
                // Every connection in scope is busy with a request: this one goes.
                shared.count(|c| c.refused_connections += 1);
                drop(stream);
                continue;
            }
            Admit::In {
                evicted_listener,
                evicted_peer,
            } => {
                if evicted_listener + evicted_peer > 0 {
                    shared.count(|c| {
                        c.evicted_listener_cap += evicted_listener;
                        c.evicted_peer_cap += evicted_peer;
                    });
                }
            }
        }
        shared.with_ledger(|l| l.open_conn(id, proto, peer_seen.to_string(), now_ms()));
        // Attribution right away: the client may be gone by the time its request is read.
        {
            let (conn, shared) = (conn.clone(), shared.clone());
            tokio::spawn(async move {
                let r = shared.resolver.resolve(conn.peer, conn.local).await;
                conn.resolved(r.inode, &r.holders);
                shared.with_ledger(|l| l.set_holders(conn.id, r.inode, &r.holders, r.error));
                let _ = ready_tx.send(true);
            });
        }
        let shared2 = shared.clone();
        let routes = grpc_routes.clone();
        conns.spawn(async move {
            let closed = match (serves.http, routes) {
                (true, Some(r)) => {
                    http::serve_conn_both(stream, conn.clone(), shared2.clone(), r).await
                }
                (false, Some(r)) => {
                    grpc::serve_conn(stream, conn.clone(), shared2.clone(), r).await
                }
                (_, None) => http::serve_conn(stream, conn.clone(), shared2.clone()).await,
            };
            // Evictions were counted when they were decided.
            match closed {
                Closed::FirstRequest => shared2.count(|c| c.first_request_timeouts += 1),
                Closed::Idle => shared2.count(|c| c.idle_timeouts += 1),
                Closed::Done | Closed::Evicted => {}
            }
            shared2.conns.remove(&conn);
            shared2.with_ledger(|l| l.close_conn(conn.id, now_ms()));
        });
        // Reap finished connection tasks so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    // The listener is closed now; requests in flight may finish until `shutdown`'s grace runs
    // out and aborts this task (idle keep-alive connections with it).
    drop(listener);
    while conns.join_next().await.is_some() {}
}
