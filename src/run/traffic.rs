//! Traffic with attribution: every request on a new connection, and the worker that served it
//! read from /proc before the request is sent.
//!
//! A new connection per request lets the kernel hand each to whichever worker accepts first;
//! connections opened together (one per worker) spread over the workers the way concurrent
//! production traffic does (or not: an async worker may take them all, which is not a failure). After connecting, the server side of the
//! connection (local = the server's address, remote = our client address) is looked up in the
//! TCP table of the server's network namespace, and its inode among the fds of the tree's pids:
//! a sync worker accepts and then blocks reading the request, so the holder is visible before we
//! send anything. In our own network namespace the socket is found by one exact sock_diag
//! lookup ([`crate::proc::diag`]; reading the TCP table costs tens of milliseconds on a large
//! machine, per poll); elsewhere through the receiver's table parser
//! ([`crate::receive::attribution`]). The fd reader is observe's ([`crate::proc::sockets`]).
//!
//! The client is a few lines of HTTP/1.1 over a std TcpStream rather than reqwest: attribution
//! needs the connection in hand before the request goes out, which a pooled client hides.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::proc::conn::ConnIndex;
use crate::proc::{diag, sockets};
use crate::receive::now_ms;

/// How long to look for the worker holding a fresh connection.
const FIND_HOLDER_FOR: Duration = Duration::from_secs(2);
/// Connect timeout, and read timeout for the response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Responses are read to the end but only this much is kept.
const KEEP_BODY: usize = 4096;

/// A URL to send requests to, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// Parses and resolves an `http://` URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("--hit {url:?}: {e}"))?;
        if u.scheme() != "http" {
            return Err(format!(
                "--hit {url:?}: only http:// URLs can be attributed to workers (TLS hides \
                 nothing here, but run sends plain HTTP/1.1); hit the workers' own port"
            ));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("--hit {url:?}: no host"))?
            .to_string();
        let port = u.port_or_known_default().unwrap_or(80);
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|e| format!("--hit {url:?}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("--hit {url:?}: {host} has no address"))?;
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(Target {
            url: url.to_string(),
            addr,
            host: host_header,
            path,
        })
    }

    /// The URL of a listening address: wildcard binds are reached on loopback.
    pub fn of_listen(local: SocketAddr) -> Target {
        let ip = match local.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v) if v.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        let addr = SocketAddr::new(ip, local.port());
        let host = match addr {
            SocketAddr::V4(_) => addr.to_string(),
            SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
        };
        Target {
            url: format!("http://{host}/"),
            addr,
            host,
            path: "/".into(),
        }
    }
}

/// The TCP listening addresses of `pid` (from its own namespace's tables), in fd order, less
/// the ones a background thread of `pid` answers (a Prometheus exporter's server started in the
/// master: not where the application is served).
pub fn listen_addrs(pid: i32) -> Vec<SocketAddr> {
    let Ok(mut fds) = sockets::socket_fds(pid) else {
        return Vec::new();
    };
    let side = crate::proc::polled::fds_answered_by_side_threads(pid);
    fds.retain(|(fd, _)| !side.contains(fd));
    let inodes: Vec<u64> = fds.iter().map(|(_, i)| *i).collect();
    let Ok(table) = sockets::read_tables(pid, &inodes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (_, inode) in fds {
        let Some(e) = table.get(&inode) else { continue };
        if e.state != "LISTEN" || e.proto == "unix" {
            continue;
        }
        if let Ok(a) = e.local.parse::<SocketAddr>() {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// Whether `pid` holds a TCP socket bound but not listening yet (uvicorn and Hypercorn bind in
/// the parent and call listen() in each spawned worker, once it has imported the application):
/// a TCP socket in state CLOSE (`UNCONN`, as ss prints it), or one no table lists.
pub fn holds_unlistened_socket(pid: i32) -> bool {
    let Ok(fds) = sockets::socket_fds(pid) else {
        return false;
    };
    let inodes: Vec<u64> = fds.iter().map(|(_, i)| *i).collect();
    let Ok(table) = sockets::read_tables(pid, &inodes) else {
        return false;
    };
    inodes.iter().any(|i| match table.get(i) {
        None => true,
        Some(e) => e.proto != "unix" && e.state == "UNCONN",
    })
}

/// What happened to one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub url: String,
    /// The pid that held the server side of the connection, when found.
    pub pid: Option<i32>,
    /// HTTP status, when a response came.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// Unix milliseconds when the response was fully read (or the request failed).
    pub done_ms: u64,
    pub took_ms: u64,
}

/// Which pid among `pids` holds the server side of `server` <- `client`, looked up through the
/// namespace of `ns_pid`.
fn holder(ns_pid: i32, pids: &[i32], server: SocketAddr, client: SocketAddr) -> Option<i32> {
    // The server's side of the connection: local address the server, remote address us. In
    // our own network namespace one exact sock_diag lookup finds it; elsewhere (or if that
    // fails) the namespace's TCP tables are read, the receiver's lookup with the roles swapped.
    let exact = same_netns(ns_pid)
        .then(|| diag::tcp_inode(server, client).ok())
        .flatten();
    let inode = match exact {
        Some(found) => found.filter(|i| *i != 0)?,
        None => {
            let mut index = ConnIndex::default();
            ["tcp", "tcp6"].iter().find_map(|t| {
                index.add(&sockets::read_table(ns_pid, t).ok()?);
                index.client_inode(server, client).filter(|i| *i != 0)
            })?
        }
    };
    pids.iter().copied().find(|p| {
        sockets::socket_fds(*p)
            .map(|fds| fds.iter().any(|(_, i)| *i == inode))
            .unwrap_or(false)
    })
}

/// Whether `pid` is in this process's network namespace.
fn same_netns(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    match (
        ino("/proc/self/ns/net".into()),
        ino(format!("/proc/{pid}/ns/net")),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Sends one GET on a new connection; `pids` are the tree's processes (re-read by the caller),
/// `ns_pid` a process in the server's network namespace.
pub fn send(target: &Target, ns_pid: i32, pids: &[i32]) -> Outcome {
    send_together(&[target], ns_pid, pids).remove(0)
}

/// A connection opened for one request, not sent yet.
struct Open<'a> {
    target: &'a Target,
    start: Instant,
    stream: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    pid: Option<i32>,
}

/// Sends one GET per target, each on its own connection, all open at once before any is sent:
/// a sync worker that accepted one holds it until its request is done, so the others go to
/// other workers, as concurrent clients' do. Sent one after the other instead, every request
/// may reach the same idle worker, and the effects of several workers never show.
pub fn send_together(targets: &[&Target], ns_pid: i32, pids: &[i32]) -> Vec<Outcome> {
    let mut out: Vec<Option<Outcome>> = vec![None; targets.len()];
    let mut open = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let start = Instant::now();
        let stream = match TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                out[i] = Some(failed(
                    target,
                    start,
                    format!("connect {}: {e}", target.addr),
                    None,
                ));
                continue;
            }
        };
        match (stream.local_addr(), stream.peer_addr()) {
            (Ok(client), Ok(server)) => open.push((
                i,
                Open {
                    target,
                    start,
                    stream,
                    client,
                    server,
                    pid: None,
                },
            )),
            (Err(e), _) | (_, Err(e)) => {
                out[i] = Some(failed(target, start, format!("socket: {e}"), None))
            }
        }
    }
    let until = Instant::now() + FIND_HOLDER_FOR;
    loop {
        for (_, o) in open.iter_mut().filter(|(_, o)| o.pid.is_none()) {
            o.pid = holder(ns_pid, pids, o.server, o.client);
        }
        if open.iter().all(|(_, o)| o.pid.is_some()) || Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, o) in open {
        out[i] = Some(request(o));
    }
    out.into_iter().flatten().collect()
}

fn failed(target: &Target, start: Instant, e: String, pid: Option<i32>) -> Outcome {
    Outcome {
        url: target.url.clone(),
        pid,
        status: None,
        error: Some(e),
        done_ms: now_ms(),
        took_ms: start.elapsed().as_millis() as u64,
    }
}

/// Sends the request on an open connection and reads the answer.
fn request(o: Open) -> Outcome {
    let Open {
        target,
        start,
        mut stream,
        pid,
        ..
    } = o;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: otel-forkcheck/{}\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        target.path,
        target.host,
        env!("CARGO_PKG_VERSION")
    );
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    if let Err(e) = stream.write_all(req.as_bytes()) {
        return failed(target, start, format!("send: {e}"), pid);
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if head.len() < KEEP_BODY {
                    head.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if head.is_empty() => return failed(target, start, format!("read: {e}"), pid),
            // A server that answered but did not close: what we have is the answer.
            Err(_) => break,
        }
    }
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|t| t.lines().next())
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    Outcome {
        url: target.url.clone(),
        pid,
        status,
        error: status
            .is_none()
            .then(|| "no HTTP response (connection closed without a status line)".to_string()),
        done_ms: now_ms(),
        took_ms: start.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8000/health?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.path, "/health?x=1");
        assert_eq!(t.host, "127.0.0.1:8000");
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("not a url").is_err());
        let l = Target::of_listen("0.0.0.0:9000".parse().unwrap());
        assert_eq!(l.url, "http://127.0.0.1:9000/");
        let l = Target::of_listen("[::]:9000".parse().unwrap());
        assert_eq!(l.url, "http://[::1]:9000/");
    }

    #[test]
    fn attributes_a_request_to_the_process_that_accepted_it() {
        // This process is the server here: it must find itself as the holder.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let me = std::process::id() as i32;
        assert_eq!(listen_addrs(me).iter().filter(|a| **a == addr).count(), 1);
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
        });
        let out = send(&Target::of_listen(addr), me, &[me]);
        server.join().unwrap();
        assert_eq!(out.status, Some(204), "{out:?}");
        assert_eq!(out.pid, Some(me));
    }
}
