//! One TCP socket looked up by its four-tuple through NETLINK_SOCK_DIAG (`inet_diag`), in this
//! process's own network namespace or, with the rights to enter it, another one.
//!
//! Reading `/proc/net/tcp` walks the kernel's whole connection hash, whatever it holds: tens of
//! milliseconds on a machine with a large table (sized by memory, not by use). An exact
//! `inet_diag` request is one hash lookup. `run` asks once per request it sends, for the
//! worker that accepted it; the receiver once per accepted connection, for its client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR: usize = 16;
/// `inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte socket id.
const REQ_LEN: usize = 8 + 48;
/// In `inet_diag_msg`: family, state, timer, retrans (4), then the id: sport, dport (both
/// big-endian) ...
const MSG_DPORT_AT: usize = 4 + 2;
/// ... src, dst (32), interface, cookie (12), then expires, rqueue, wqueue, uid (16), then
/// the inode.
const MSG_INODE_AT: usize = 4 + 48 + 16;

/// The inode of the TCP socket whose local end is `local` and remote end `remote`: Ok(None)
/// when there is none, Ok(Some(0)) while it waits in a listener's accept queue (no process
/// holds it yet). IPv4 addresses are also looked up as IPv4-mapped IPv6 (a dual-stack
/// listener's sockets).
pub fn tcp_inode(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
    Diag::open()?.tcp_inode(local, remote)
}

/// A NETLINK_SOCK_DIAG socket. It answers for the network namespace it was opened in, whatever
/// namespace the thread that asks is in.
pub struct Diag {
    fd: OwnedFd,
}

impl Diag {
    /// One for this process's network namespace.
    pub fn open() -> io::Result<Diag> {
        // SAFETY: plain socket(2); the descriptor is owned (closed) by `fd` below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
        Ok(Diag {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// One for the network namespace of `pid`: opened on a short-lived thread that enters that
    /// namespace (setns(2), CAP_SYS_ADMIN over it: root, usually), so no other thread of this
    /// process ever changes namespace. Err without the rights.
    pub fn open_in(pid: i32) -> io::Result<Diag> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on this thread only, with a namespace fd we hold open.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Diag::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("setns thread panicked")))
        })
    }

    /// [`tcp_inode`] through this socket's namespace.
    pub fn tcp_inode(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
        let fd = self.fd.as_raw_fd();
        let mut tries: Vec<(u8, [u8; 16], [u8; 16])> = Vec::new();
        match (local.ip(), remote.ip()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => {
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                a[..4].copy_from_slice(&l.octets());
                b[..4].copy_from_slice(&r.octets());
                tries.push((libc::AF_INET as u8, a, b));
                tries.push((
                    libc::AF_INET6 as u8,
                    l.to_ipv6_mapped().octets(),
                    r.to_ipv6_mapped().octets(),
                ));
            }
            (IpAddr::V6(l), IpAddr::V6(r)) => {
                tries.push((libc::AF_INET6 as u8, l.octets(), r.octets()))
            }
            _ => return Ok(None),
        }
        for (family, src, dst) in tries {
            if let Some(inode) = ask(fd, family, local.port(), remote.port(), src, dst)? {
                return Ok(Some(inode));
            }
        }
        Ok(None)
    }
}

/// One exact request; Ok(None) when the kernel has no such socket.
fn ask(
    fd: i32,
    family: u8,
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
) -> io::Result<Option<u64>> {
    let mut req = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    req.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&sport.to_be_bytes());
    req.extend_from_slice(&dport.to_be_bytes());
    req.extend_from_slice(&src);
    req.extend_from_slice(&dst);
    req.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
                                       // SAFETY: sends our buffer on our socket; the kernel reads `req.len()` bytes.
    let sent = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: the kernel writes at most `buf.len()` bytes into our buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let msg = &buf[..n as usize];
    if msg.len() < NLMSG_HDR {
        return Err(io::Error::other("short sock_diag answer"));
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        let code = msg
            .get(NLMSG_HDR..NLMSG_HDR + 4)
            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return match -code {
            libc::ENOENT => Ok(None),
            0 => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::other(format!("sock_diag answered type {kind}")));
    }
    // With no such connection the kernel's lookup falls back to a listener on the local
    // address (remote port 0): not the socket asked for.
    let at = NLMSG_HDR + MSG_DPORT_AT;
    let answered = msg
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| io::Error::other("short inet_diag_msg"))?;
    if answered != dport {
        return Ok(None);
    }
    let at = NLMSG_HDR + MSG_INODE_AT;
    let b = msg
        .get(at..at + 4)
        .ok_or_else(|| io::Error::other("short inet_diag_msg"))?;
    Ok(Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_both_ends_and_the_accept_queue() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(host) else {
                continue; // no IPv6 here
            };
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (me, server) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
            // Not accepted yet: the server's end exists, held by nobody.
            assert_eq!(tcp_inode(server, me).unwrap(), Some(0), "{host}");
            let (s, _) = l.accept().unwrap();
            let inode = tcp_inode(server, me).unwrap().unwrap();
            let fd_inode = std::fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&s)
            ))
            .unwrap();
            assert_eq!(fd_inode.to_str().unwrap(), format!("socket:[{inode}]"));
            assert!(tcp_inode(me, server).unwrap().unwrap() > 0);
            // Nobody.
            let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
            assert_eq!(tcp_inode(nobody, me).unwrap(), None);
        }
    }

    #[test]
    fn a_listener_is_not_taken_for_a_gone_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = l.local_addr().unwrap();
        // No connection from port 1 exists; the kernel's lookup would fall back to `l`.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_inode(at, gone).unwrap(), None);
    }

    #[test]
    fn a_socket_opened_in_our_own_namespace_by_pid_answers_alike() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (me, server) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let inode = tcp_inode(me, server).unwrap().unwrap();
        // setns(2) into the namespace we are in: allowed with CAP_SYS_ADMIN, refused without.
        match Diag::open_in(std::process::id() as i32) {
            Ok(d) => assert_eq!(d.tcp_inode(me, server).unwrap(), Some(inode)),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_found_mapped() {
        let Ok(l) = TcpListener::bind("[::]:0") else {
            return;
        };
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        let (me, server) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let inode = tcp_inode(server, me).unwrap().unwrap();
        assert!(inode > 0);
        drop(s);
    }
}
