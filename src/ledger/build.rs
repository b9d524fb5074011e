//! Builds ledgers export by export for rule tests: a sender, an identity, a connection.

use super::*;

/// A sender pid with its own NSpid chain (outermost first) and start (Unix ms).
pub fn proc(pid: i32, nspid: &[i32], started_ms: u64) -> Holder {
    Holder {
        pid,
        nspid: if nspid.is_empty() {
            vec![pid]
        } else {
            nspid.to_vec()
        },
        started_at_ns: started_ms * 1_000_000,
        comm: "gunicorn".into(),
        ancestors: Vec::new(),
    }
}

pub fn id(service: &str, pid: Option<i64>, instance: Option<&str>) -> Identity {
    Identity {
        service_name: Some(service.into()),
        process_pid: pid,
        service_instance_id: instance.map(str::to_string),
        worker_pid: None,
    }
}

pub struct B {
    pub l: Ledger,
    next_conn: u64,
}

impl B {
    pub fn new() -> B {
        B {
            l: Ledger::new(0),
            next_conn: 1,
        }
    }

    /// Opens a connection held by `holders`; returns its id.
    pub fn conn(&mut self, holders: &[Holder]) -> u64 {
        let c = self.next_conn;
        self.next_conn += 1;
        self.l
            .open_conn(c, Proto::Http, format!("127.0.0.1:{}", 40000 + c), 0);
        self.l.set_holders(c, Some(1000 + c), holders, None);
        c
    }

    /// [`B::export`] without cumulative series: the common case, on one line.
    pub fn sends(
        &mut self,
        c: u64,
        holders: &[Holder],
        signal: Signal,
        identity: Identity,
        items: u64,
        at_ms: u64,
    ) -> &mut Self {
        self.export(c, holders, signal, identity, items, at_ms, None)
    }

    /// One export of `items` on connection `c` at `at_ms`, with cumulative series starting
    /// at `cumulative_start_ms` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn export(
        &mut self,
        c: u64,
        holders: &[Holder],
        signal: Signal,
        identity: Identity,
        items: u64,
        at_ms: u64,
        cumulative_start_ms: Option<u64>,
    ) -> &mut Self {
        let cumulative = cumulative_start_ms
            .map(|s| {
                vec![SeriesStart {
                    series: "requests".into(),
                    start_time_unix_nano: s * 1_000_000,
                    key: 1,
                }]
            })
            .unwrap_or_default();
        let r = ResourceSummary {
            identity,
            items,
            cumulative,
            ..Default::default()
        };
        self.resources(c, holders, signal, vec![r], at_ms)
    }

    /// One export of these resource blocks on connection `c` at `at_ms`.
    pub fn resources(
        &mut self,
        c: u64,
        holders: &[Holder],
        signal: Signal,
        resources: Vec<ResourceSummary>,
        at_ms: u64,
    ) -> &mut Self {
        self.l.record(
            &Export {
                at_ms,
                conn: c,
                proto: Proto::Http,
                signal: Some(signal),
                bytes: 10,
                resources,
            },
            holders,
        );
        self
    }

    pub fn at(&mut self, now_ms: u64) -> Ledger {
        let mut l = self.l.clone();
        l.settle();
        l.as_of_ms = now_ms;
        l
    }
}
