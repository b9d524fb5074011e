//! One accepted connection: who holds its client end (resolved, re-checked when a new
//! identity shows up), its series names, and how each export on it is accounted.

use crate::ledger::{AttributedBy, Export, Holder, Identity, Proto, Signal};
use crate::otlp::metrics;
use limits::Life;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::*;

struct ConnState {
    resolved: bool,
    inode: Option<u64>,
    holders: Arc<[Holder]>,
    /// The [`tick`] of the last re-check (or of the first attribution).
    checked_tick: u64,
    /// Foreign resource pids already re-checked on this connection (each once).
    checked_foreign: Vec<i64>,
    /// Identities already seen on this connection: a new one may be a process forked since the
    /// holders were read (an inherited keep-alive connection), so it triggers a re-check.
    seen_ids: Vec<Identity>,
    checking: bool,
}

/// One accepted connection and who holds its client end.
pub struct Conn {
    pub id: u64,
    /// What the connection carries (on a port serving both, what its last request was).
    proto: AtomicU8,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    state: Mutex<ConnState>,
    ready: watch::Receiver<bool>,
    /// Series names already built for this connection's exports.
    names: Mutex<metrics::NameCache>,
    /// OTLP JSON metrics bodies replayed from the last one read in full.
    json_replay: Mutex<crate::otlp::jsonfast::Replay>,
    /// Timers and activity, for the connection's supervisor and the caps.
    pub(crate) life: Life,
}

/// Distinct foreign resource pids (and new identities) re-checked at once per connection, at
/// most.
const MAX_FOREIGN_CHECKS: usize = 64;
/// ... and once a [`tick`] in the background otherwise: resources without any pid or instance
/// id cannot tell us a fork happened.
const ROUTINE_RECHECK: Duration = Duration::from_secs(1);

/// Routine re-checks fall due for every connection at once, when this count of
/// [`ROUTINE_RECHECK`] periods since the receiver started moves on, so that the resolver
/// answers them all with one pass over /proc (see [`attribution`]) instead of one per
/// connection.
fn tick() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    (start.elapsed().as_millis() / ROUTINE_RECHECK.as_millis()) as u64
}
/// How long a request waits for its connection's first attribution.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

impl Conn {
    /// A connection just accepted: nobody resolved yet (`ready` turns true once it is).
    pub(super) fn new(
        id: u64,
        proto: Proto,
        peer: SocketAddr,
        local: SocketAddr,
        ready: watch::Receiver<bool>,
        life: Life,
    ) -> Conn {
        Conn {
            id,
            proto: AtomicU8::new(proto as u8),
            peer,
            local,
            state: Mutex::new(ConnState {
                resolved: false,
                inode: None,
                holders: Vec::new().into(),
                checked_tick: tick(),
                checked_foreign: Vec::new(),
                seen_ids: Vec::new(),
                checking: false,
            }),
            ready,
            names: Mutex::new(metrics::NameCache::default()),
            json_replay: Mutex::default(),
            life,
        }
    }

    pub fn proto(&self) -> Proto {
        proto_from_u8(self.proto.load(Ordering::Relaxed))
    }

    /// On a port serving both protocols: says which one this connection carries (the ledger's
    /// connection record follows).
    pub(crate) fn carries(&self, shared: &Shared, proto: Proto) {
        if self.proto.swap(proto as u8, Ordering::Relaxed) != proto as u8 {
            shared.with_ledger(|l| l.set_conn_proto(self.id, proto));
        }
    }

    /// [`metrics::summarize_metrics`] with this connection's series names.
    pub fn summarize_metrics_pb(
        &self,
        body: &[u8],
    ) -> Result<Vec<crate::ledger::ResourceSummary>, String> {
        let holders = self.lock().holders.clone();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let sole = match &holders[..] {
            [one] => Some(one.ids()),
            _ => None,
        };
        metrics::summarize_metrics(body, &mut names, sole)
    }

    /// The summaries of an OTLP JSON body, replaying this connection's last metrics body when
    /// only its values changed.
    pub fn summarize_json(
        &self,
        signal: Signal,
        body: &[u8],
    ) -> Result<Vec<crate::ledger::ResourceSummary>, crate::otlp::decode::BodyError> {
        if signal != Signal::Metrics {
            // Only metrics bodies are replayed: no state to take.
            return crate::otlp::jsonfast::summarize_json(signal, body);
        }
        // Taken out while in use: a concurrent request (HTTP/2) reads its body in full. The
        // point lists come from the ones this connection's accounted exports handed back.
        let lock = || self.json_replay.lock().unwrap_or_else(|e| e.into_inner());
        let names = || self.names.lock().unwrap_or_else(|e| e.into_inner());
        let mut replay = std::mem::take(&mut *lock());
        let mut spare = std::mem::take(names().spare_lists());
        let r = crate::otlp::jsonfast::summarize_json_on(signal, body, &mut replay, &mut spare);
        *lock() = replay;
        let mut n = names();
        if n.spare_lists().is_empty() {
            *n.spare_lists() = spare;
        }
        r
    }

    /// Resource pids not the sole holder's own whose blocks were accounted to it: the series
    /// cache may treat them as its own from now on (see [`metrics::NameCache::confirm`]).
    fn confirm(
        &self,
        holders: &[Holder],
        resources: &[crate::ledger::ResourceSummary],
        accounted: &[(Vec<i32>, AttributedBy)],
    ) {
        let [one] = holders else {
            return;
        };
        let mut names = None;
        for (r, (_, by)) in resources.iter().zip(accounted) {
            let Some(p) = r.identity.process_pid else {
                continue;
            };
            if *by == AttributedBy::Connection && !one.is_own_pid(p) {
                names
                    .get_or_insert_with(|| self.names.lock().unwrap_or_else(|e| e.into_inner()))
                    .confirm(one.pid, p);
            }
        }
    }

    /// Hands an accounted export's summaries back for the next one to reuse.
    fn recycle(&self, resources: Vec<crate::ledger::ResourceSummary>) {
        if resources.iter().any(|r| !r.metrics.is_empty()) {
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            names.recycle(resources);
        }
    }

    /// The first attribution's answer.
    pub(super) fn resolved(&self, inode: Option<u64>, holders: &[Holder]) {
        let mut st = self.lock();
        st.resolved = true;
        st.inode = inode;
        st.holders = holders.to_vec().into();
        st.checked_tick = tick();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The holders known now, after the first attribution (waited for, bounded).
    pub async fn holders(&self) -> Arc<[Holder]> {
        // Resolved already (every request but a connection's first): no timer, no waiting.
        if !*self.ready.borrow() {
            let mut ready = self.ready.clone();
            let _ = tokio::time::timeout(RESOLVE_WAIT, ready.wait_for(|r| *r)).await;
        }
        self.lock().holders.clone()
    }

    fn apply_recheck(&self, shared: &Shared, found: Vec<Holder>) {
        let inode = {
            let mut st = self.lock();
            st.checking = false;
            if !found.is_empty() {
                st.holders = found.clone().into();
            }
            st.inode
        };
        if !found.is_empty() {
            shared.with_ledger(|l| l.set_holders(self.id, inode, &found, None));
        }
    }

    /// Holders to attribute an export to. Re-checked first, once per connection and value,
    /// when a resource names a pid that none of them has (`foreign`: a fork since the
    /// connection was resolved, or a resource built elsewhere) or an identity not seen on this
    /// connection before (the same fork, told by a refreshed service.instance.id); re-checked
    /// in the background from time to time otherwise.
    async fn holders_for(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        foreign: &[i64],
        ids: &[&Identity],
    ) -> Arc<[Holder]> {
        let (inode, due_now, due_bg) = {
            let mut st = self.lock();
            let fresh: Vec<i64> = foreign
                .iter()
                .copied()
                .filter(|f| !st.checked_foreign.contains(f))
                .collect();
            let new_ids: Vec<Identity> = ids
                .iter()
                .filter(|id| !st.seen_ids.contains(id))
                .map(|id| (*id).clone())
                .collect();
            // The first identity on a connection is what the first attribution already saw.
            let first_ids = st.seen_ids.is_empty();
            let budget = st.checked_foreign.len() + st.seen_ids.len() < MAX_FOREIGN_CHECKS;
            let now = budget && (!fresh.is_empty() || (!new_ids.is_empty() && !first_ids));
            if budget {
                st.checked_foreign.extend(fresh);
                st.seen_ids.extend(new_ids);
            }
            let t = tick();
            let bg = !now && !st.checking && t > st.checked_tick;
            if bg {
                st.checking = true;
            }
            if bg || now {
                st.checked_tick = t;
            }
            (st.inode, now, bg)
        };
        let Some(inode) = inode else {
            return self.lock().holders.clone();
        };
        if due_now {
            let found = shared.resolver.recheck(inode).await;
            self.apply_recheck(shared, found);
        } else if due_bg {
            let (me, sh) = (self.clone(), shared.clone());
            tokio::spawn(async move {
                let found = sh.resolver.routine_recheck(inode).await;
                me.apply_recheck(&sh, found);
            });
        }
        self.lock().holders.clone()
    }
}

fn proto_from_u8(v: u8) -> Proto {
    if v == Proto::Grpc as u8 {
        Proto::Grpc
    } else {
        Proto::Http
    }
}

/// Resource pids (or -1 for "nobody holds it") that name none of the holders.
fn foreign_pids<'a>(holders: &[Holder], ids: impl Iterator<Item = &'a Identity>) -> Vec<i64> {
    if holders.is_empty() {
        return vec![-1];
    }
    let mut out: Vec<i64> = ids
        .filter_map(|id| id.process_pid)
        .filter(|rp| !holders.iter().any(|h| h.is_own_pid(*rp)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Accounts a decoded export; returns the event (already emitted).
pub(crate) async fn account(shared: &Arc<Shared>, conn: &Arc<Conn>, mut ex: Export, status: u16) {
    let first = conn.holders().await;
    let ids: Vec<&Identity> = ex.resources.iter().map(|r| &r.identity).collect();
    let foreign = foreign_pids(&first, ids.iter().copied());
    let holders = conn.holders_for(shared, &foreign, &ids).await;
    ex.at_ms = now_ms();
    let acc = shared.with_ledger(|l| l.record(&ex, &holders));
    if !foreign.is_empty() {
        conn.confirm(&holders, &ex.resources, &acc.resources);
    }
    if shared.events.receiver_count() == 0 {
        // Nobody prints exports one by one: no event to build.
        conn.recycle(ex.resources);
        return;
    }
    let mut pids: Vec<i32> = acc.resources.iter().flat_map(|r| r.0.clone()).collect();
    pids.sort_unstable();
    pids.dedup();
    let attributed_by = acc
        .resources
        .first()
        .map(|r| r.1)
        .unwrap_or(AttributedBy::Unknown);
    shared.emit(Event::Export {
        at_ms: ex.at_ms,
        conn: conn.id,
        proto: conn.proto(),
        signal: ex.signal.unwrap_or(Signal::Metrics),
        pids,
        attributed_by,
        items: ex.items(),
        bytes: ex.bytes,
        identities: ex.resources.iter().map(|r| r.identity.clone()).collect(),
        status,
    });
}

/// Accounts a decoded request of `bytes` on the wire; returns what to inject into the answer.
pub(crate) async fn account_decoded(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    decoded: &crate::otlp::decode::Request,
    bytes: u64,
) -> Inject {
    account_summary(shared, conn, decoded.signal(), decoded.summarize(), bytes).await
}

/// Accounts a request of `signal` summarised as `resources`, `bytes` on the wire.
pub(crate) async fn account_summary(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    signal: Signal,
    resources: Vec<crate::ledger::ResourceSummary>,
    bytes: u64,
) -> Inject {
    let inject = shared.opts.inject.clone();
    let ex = Export {
        at_ms: 0,
        conn: conn.id,
        proto: conn.proto(),
        signal: Some(signal),
        bytes,
        resources,
    };
    account(shared, conn, ex, inject.status.unwrap_or(200)).await;
    inject
}

/// Accounts a body that could not be used.
pub(crate) async fn account_malformed(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    reason: &str,
    status: u16,
) {
    let holders = conn.holders().await;
    let at = now_ms();
    shared.with_ledger(|l| l.record_malformed(conn.id, &holders, reason, at));
    shared.emit(Event::Malformed {
        at_ms: at,
        conn: conn.id,
        proto: conn.proto(),
        pids: holders.iter().map(|h| h.pid).collect(),
        reason: reason.to_string(),
        status,
    });
}
