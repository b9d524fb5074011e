//! The receiver on the host, its clients in a container's network namespace behind a veth pair
//! (`ip netns`, a private /30, the receiver on the host-side address with `--allow-remote`):
//! each client socket is found in the namespace that owns the peer address, and each export is
//! attributed to the sender's host pid, with its pid inside the container beside it.
//!
//! Root only (CI runs as root); without root each test says SKIPPED and returns.
mod common;
mod sandbox;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use otel_forkcheck::proc::conn::{scan_holders, Lookup};

use common::report::Outcome;
use common::{wait_until, Group};
use sandbox::{bin, nspid, require_root, NetNs};

/// Reads `pid <n> <role>` and `nspid <host> <n>` pairs (fixture run with FIXTURE_SAY_NSPID=1):
/// the parent's host pid, and the children's pid inside the container -> their host pid.
fn children(stdout: &str) -> (i64, BTreeMap<i64, i64>) {
    let mut out = BTreeMap::new();
    let mut parent = 0;
    let mut last: Option<(i64, bool)> = None;
    for l in stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["pid", pid, role] => last = Some((pid.parse().unwrap(), *role == "child")),
            ["nspid", host, inner] => {
                let (pid, child) = last.take().expect("nspid after pid");
                assert_eq!(inner.parse::<i64>().unwrap(), pid, "{stdout}");
                if child {
                    out.insert(pid, host.parse().unwrap());
                } else {
                    parent = host.parse().unwrap();
                }
            }
            _ => {}
        }
    }
    (parent, out)
}

#[test]
fn client_socket_is_found_in_the_namespace_that_owns_the_peer_address() {
    if !require_root("client_socket_is_found_in_the_namespace_that_owns_the_peer_address") {
        return;
    }
    // The client's namespace, and two others that must not be read: one behind its own veth
    // pair, one with loopback only, each kept alive by a process in it.
    let ns = NetNs::create();
    let other = NetNs::create();
    let mut decoys = [
        Group::spawn(other.exec("sleep").arg("60")),
        Group::spawn(Command::new("unshare").args(["--net", "sleep", "60"])),
    ];
    let listener = TcpListener::bind((ns.host_addr, 0)).unwrap();
    let ours = listener.local_addr().unwrap();
    let script = format!(
        "import socket, sys, time\ns = socket.create_connection(('{}', {}))\n\
         print('connected', flush=True)\ntime.sleep(60)\n",
        ours.ip(),
        ours.port()
    );
    let mut client = Group::spawn(
        ns.exec("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped()),
    );
    let (_conn, peer) = listener.accept().unwrap();
    let mut line = String::new();
    BufReader::new(client.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");
    assert_eq!(peer.ip(), ns.ns_addr);
    // Wait until every decoy lives in its namespace (both exec sleep once they are there).
    assert!(wait_until(Duration::from_secs(5), || decoys.iter().all(
        |g| {
            std::fs::read_to_string(format!("/proc/{}/comm", g.pgid))
                .is_ok_and(|c| c.trim() == "sleep")
        }
    )));

    // As root the namespaces are asked through sock_diag, entered; without that (the
    // baseline) through their tables: both ways find the same socket in the owner only.
    let mut lookup = Lookup::default();
    let mut by_tables = Lookup::tables_only();
    let inode = lookup
        .client_inode(peer, ours)
        .expect("client socket found");
    assert_eq!(by_tables.client_inode(peer, ours), Some(inode));
    assert_eq!(
        lookup.namespaces_asked(),
        1,
        "only the owner is asked, not the decoys"
    );
    assert_eq!(lookup.tables_read(), 0, "the owner answered exactly");
    assert_eq!(
        by_tables.tables_read(),
        1,
        "only the owner's tables are read, not the decoys'"
    );
    let holders = scan_holders(&HashSet::from([inode]));
    // `ip netns exec` execs python3: the group leader is the client.
    assert_eq!(holders[&inode], vec![client.pgid]);
    // A peer address nobody owns is not found, after every namespace was asked once.
    let nobody: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    assert_eq!(lookup.client_inode(nobody, ours), None);
    assert!(
        lookup.namespaces_asked() >= 3,
        "{}",
        lookup.namespaces_asked()
    );
    assert_eq!(lookup.tables_read(), 0);
    assert_eq!(by_tables.client_inode(nobody, ours), None);
    assert!(by_tables.tables_read() >= 3, "{}", by_tables.tables_read());
    for g in decoys.iter_mut() {
        g.stop();
    }
}

/// `otel-forkcheck receive` on the host-side address; the real Python SDK's exporters (`proto`)
/// in 3 forked children in the namespace, in a pid namespace of their own.
fn exporters_in_a_container_are_attributed(proto: &str) {
    let ns = NetNs::create();
    let host = ns.host_addr.to_string();
    let mut receiver = Group::spawn(
        Command::new(bin())
            .args(["receive", "--http", &format!("{host}:0")])
            .args(["--grpc", &format!("{host}:0"), "--allow-remote"])
            .args(["--format", "json", "--timeout", "90s"])
            .args(["--expect-workers", "3", "--signals", "traces,metrics"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(receiver.child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .map(|a| a.trim().trim_end_matches(',').to_string())
        .unwrap_or_else(|| panic!("receive did not start: {line:?}"));
    let endpoint = match proto {
        "http" => format!("http://{addr}"),
        _ => addr.clone(),
    };

    // No /proc of their own: the fixture reads its NSpid through the host's (host pid first).
    // The children stay until `hold` exists: the receiver reads their tree while it is whole.
    let hold_dir = tempfile::tempdir().unwrap();
    let hold = hold_dir.path().join("release");
    let mut py = Group::spawn(
        ns.exec("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(common::venv("current").join("bin/python"))
            .arg(common::root().join("fixtures/receive/forked_exporters.py"))
            .args(["own", proto, &endpoint, "3"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
            .env("FIXTURE_SAY_NSPID", "1")
            .env("FIXTURE_HOLD", &hold)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );

    // The receiver ends by itself once 3 senders exported traces and metrics.
    let mut out = String::new();
    receiver
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || receiver.leader_exited()));
    std::fs::write(&hold, b"").unwrap();
    let mut stdout = String::new();
    py.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || py.leader_exited()),
        "the exporters did not finish"
    );
    let (parent, kids) = children(&stdout);
    assert_eq!(kids.len(), 3, "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON report ({e}):\n{out}"));
    common::schema::assert_valid(&report);
    let o = Outcome {
        status: receiver.child.wait().unwrap().code().unwrap_or(-1),
        report,
        stderr: String::new(),
    };
    assert_eq!(o.report["verdict"], "pass", "{:#}", o.report["findings"]);
    assert_eq!(o.codes(), Vec::<String>::new());
    assert_eq!(o.status, 0);
    let unattributed = &o.report["receiver"]["unattributed"]["signals"];
    assert_eq!(unattributed["traces"]["requests"], 0, "{unattributed:#}");
    assert_eq!(unattributed["metrics"]["requests"], 0, "{unattributed:#}");

    for (inner, host_pid) in &kids {
        let p = o.process(*host_pid as i32);
        // Host pid, and the pid inside the container beside it.
        assert_eq!(p["nspid"], serde_json::json!([host_pid, inner]), "{p:#}");
        let ex = &p["exports"];
        assert_eq!(ex["signals"]["traces"]["items"], 1, "{ex:#}");
        assert!(ex["signals"]["metrics"]["requests"].as_i64().unwrap() >= 1);
        // The SDK put the pid it knows (inside) into the resource: that is its own, no FC204.
        assert_eq!(ex["identities"][0]["identity"]["process_pid"], *inner);
        // Each connection came from the namespace's address and is held by that child alone.
        let conns: Vec<&serde_json::Value> = o.report["receiver"]["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["holders"] == serde_json::json!([host_pid]))
            .collect();
        assert!(!conns.is_empty(), "no connection held by {host_pid}");
        for c in conns {
            let peer: SocketAddr = c["peer"].as_str().unwrap().parse().unwrap();
            assert_eq!(peer.ip().to_string(), ns.ns_addr.to_string(), "{c:#}");
            assert_eq!(c["proto"], proto, "{c:#}");
        }
    }
    // The senders' parent (pid 1 in the container) is the root of their tree: its master.
    let procs = &o.report["processes"];
    assert_eq!(procs.as_array().unwrap().len(), 4, "{procs:#}");
    let root = o.process(parent as i32);
    assert_eq!(root["nspid"], serde_json::json!([parent, 1]), "{root:#}");
    assert_eq!(root["role"], "master", "{root:#}");
    // The children are gone; nothing of the namespace is left but what the guards remove.
    assert!(kids.values().all(|h| nspid(*h as i32).is_empty()));
}

#[test]
fn http_exporters_in_a_container_are_attributed_to_host_and_container_pids() {
    if !require_root("http_exporters_in_a_container_are_attributed_to_host_and_container_pids") {
        return;
    }
    exporters_in_a_container_are_attributed("http");
}

#[test]
fn grpc_exporters_in_a_container_are_attributed_to_host_and_container_pids() {
    if !require_root("grpc_exporters_in_a_container_are_attributed_to_host_and_container_pids") {
        return;
    }
    exporters_in_a_container_are_attributed("grpc");
}
