//! Sockets: which inode each fd holds, what that inode is (from the tables of the process's own
//! network namespace), and every pid of the tree that holds it.
//!
//! An exporter connection opened in the master before fork is one inode held by the master and
//! every worker (docs/failure-modes.md#inherited-exporter-connection); `shared_with` is how the rules see it.
//! Tables are read from /proc/<pid>/net/* (never /proc/net/*, which is the reader's namespace),
//! once per distinct namespace, keyed by the inode of /proc/<pid>/ns/net.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::file::{numeric_entries, read_link, read_text, read_text_sized, ReadError, ReadResult};

/// `(fd, inode)` for every socket fd of `pid`.
pub fn socket_fds(pid: i32) -> ReadResult<Vec<(i32, u64)>> {
    fds_to(pid, socket_inode)
}

/// (fd, inode) of every pipe `pid` holds.
pub fn pipe_fds(pid: i32) -> ReadResult<Vec<(i32, u64)>> {
    fds_to(pid, |link| {
        link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
    })
}

/// (fd, inode) of each fd of `pid` whose link `inode_of` reads, in fd order.
fn fds_to(pid: i32, inode_of: impl Fn(&str) -> Option<u64>) -> ReadResult<Vec<(i32, u64)>> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds = numeric_entries(&dir)?;
    fds.sort_unstable();
    let mut out = Vec::new();
    for fd in fds {
        match read_link(format!("{dir}/{fd}")) {
            Ok(target) => {
                if let Some(inode) = inode_of(&target) {
                    out.push((fd, inode));
                }
            }
            // The fd was closed between listing and reading: nothing to say of it.
            Err(ReadError::Gone) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `socket:[12345]` -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inode of the process's network namespace (`net:[4026531840]`).
pub fn netns_inode(pid: i32) -> ReadResult<u64> {
    let link = read_link(format!("/proc/{pid}/ns/net"))?;
    link.strip_prefix("net:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ReadError::Other(format!("unexpected ns/net link {link}")))
}

/// One row of a socket table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SocketEntry {
    pub proto: &'static str,
    pub state: String,
    pub local: String,
    pub remote: String,
}

/// Inode -> entry for one network namespace.
pub type SocketTable = HashMap<u64, SocketEntry>;

/// Initial read buffer for socket tables: ~150 bytes a row, so 256 KiB holds ~1700 sockets
/// in one read(2).
const TABLE_BUF: usize = 256 * 1024;

/// Reads the tcp, tcp6 and unix tables through `pid` (a member of the namespace), in that
/// order, stopping as soon as every inode in `wanted` is resolved. Each tcp file costs a walk
/// of the kernel's whole established hash (~4 ms with 262144 buckets, even for an empty
/// tcp6), so the common all-IPv4 tree pays for one. A table that cannot be read is skipped:
/// fewer facts, not a failure.
pub fn read_tables(pid: i32, wanted: &[u64]) -> ReadResult<SocketTable> {
    let mut table = SocketTable::new();
    let mut read_any = false;
    for (file, proto) in [("tcp", "tcp"), ("tcp6", "tcp6"), ("unix", "unix")] {
        if read_any && wanted.iter().all(|i| table.contains_key(i)) {
            break;
        }
        match read_text_sized(format!("/proc/{pid}/net/{file}"), TABLE_BUF) {
            Ok(text) => {
                read_any = true;
                if proto == "unix" {
                    parse_unix_table(&text, &mut table);
                } else {
                    parse_tcp_table(&text, proto, &mut table);
                }
            }
            Err(ReadError::Gone) if !read_any => return Err(ReadError::Gone),
            Err(_) => {}
        }
    }
    Ok(table)
}

/// One table (`tcp`, `tcp6` or `unix`) through `pid`, for a caller that knows which it needs
/// (the receiver looks a peer up in tcp first, and reads tcp6 only when it is not there).
pub fn read_table(pid: i32, file: &'static str) -> ReadResult<SocketTable> {
    let text = read_text_sized(format!("/proc/{pid}/net/{file}"), TABLE_BUF)?;
    let mut table = SocketTable::new();
    if file == "unix" {
        parse_unix_table(&text, &mut table);
    } else {
        parse_tcp_table(&text, file, &mut table);
    }
    Ok(table)
}

/// Parses /proc/<pid>/net/tcp or tcp6 into `table` (header line skipped).
pub fn parse_tcp_table(text: &str, proto: &'static str, table: &mut SocketTable) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote)) = (decode_endpoint(f[1]), decode_endpoint(f[2])) else {
            continue;
        };
        let Ok(inode) = f[9].parse::<u64>() else {
            continue;
        };
        if inode == 0 {
            // TIME-WAIT and similar rows belong to no fd.
            continue;
        }
        let state = u8::from_str_radix(f[3], 16).map(tcp_state).unwrap_or("");
        table.insert(
            inode,
            SocketEntry {
                proto,
                state: state.to_string(),
                local,
                remote,
            },
        );
    }
}

/// Parses /proc/<pid>/net/unix: `Num RefCount Protocol Flags Type St Inode [Path]`.
pub fn parse_unix_table(text: &str, table: &mut SocketTable) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let Ok(inode) = f[6].parse::<u64>() else {
            continue;
        };
        table.entry(inode).or_insert_with(|| SocketEntry {
            proto: "unix",
            state: String::new(),
            local: f.get(7).map(|s| s.to_string()).unwrap_or_default(),
            remote: String::new(),
        });
    }
}

/// TCP state names as `ss` spells them, except `ESTABLISHED` (which `ss` abbreviates to
/// `ESTAB`) written out, as in the report schema.
pub fn tcp_state(code: u8) -> &'static str {
    match code {
        0x01 => "ESTABLISHED",
        0x02 => "SYN-SENT",
        0x03 => "SYN-RECV",
        0x04 => "FIN-WAIT-1",
        0x05 => "FIN-WAIT-2",
        0x06 => "TIME-WAIT",
        0x07 => "UNCONN",
        0x08 => "CLOSE-WAIT",
        0x09 => "LAST-ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW-SYN-RECV",
        _ => "UNKNOWN",
    }
}

/// `0100007F:1F90` -> `127.0.0.1:8080`; a 32-hex-digit IPv6 address -> `[addr]:port`, with
/// IPv4-mapped addresses (`::ffff:a.b.c.d`) shown as plain IPv4 so that a grpcio client's tcp6
/// socket matches the IPv4 peer the collector sees.
///
/// The kernel prints each 32-bit word of the address with `%08X` of its in-memory value, so
/// the bytes of each word come out in host order (reversed on little-endian machines).
pub fn decode_endpoint(s: &str) -> Option<String> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes = decode_words(addr)?;
    Some(match bytes.len() {
        4 => format!(
            "{}:{port}",
            Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
        ),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{port}"),
                None => format!("[{v6}]:{port}"),
            }
        }
        _ => return None,
    })
}

fn decode_words(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 8 && hex.len() != 32 {
        return None;
    }
    let mut out = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(8) {
        let word = u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?;
        out.extend_from_slice(&word.to_ne_bytes());
    }
    Some(out)
}

/// Typed form of an endpoint as [`decode_endpoint`] writes it (`127.0.0.1:8080`, `[::1]:4317`;
/// IPv4-mapped IPv6 already plain IPv4). None for unix entries.
pub fn endpoint_addr(endpoint: &str) -> Option<std::net::SocketAddr> {
    endpoint.parse().ok()
}

/// IPv4-mapped IPv6 (`[::ffff:a.b.c.d]:p`) as plain IPv4, the way the tables are decoded, so
/// that an address from `accept()` compares equal to a table row.
pub fn normalize_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, SocketAddr};
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl SocketEntry {
    /// The local endpoint, typed (tcp and tcp6 rows).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        endpoint_addr(&self.local)
    }

    /// The remote endpoint, typed (tcp and tcp6 rows).
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        endpoint_addr(&self.remote)
    }
}

/// Addresses a network namespace answers as its own, as `(address, prefix length)`: IPv4 from
/// the `host LOCAL` entries of /proc/<pid>/net/fib_trie (`127.0.0.0/8` is one such prefix),
/// IPv6 from /proc/<pid>/net/if_inet6. Both files are small (proportional to the namespace's
/// addresses and routes, unlike the socket tables, whose every read walks the kernel's whole
/// connection hash), so the namespace that owns a peer address can be found before any socket
/// table is read. Unreadable files give fewer addresses, not an error.
pub fn local_addresses(pid: i32) -> ReadResult<Vec<(IpAddr, u8)>> {
    let v4 = read_text(format!("/proc/{pid}/net/fib_trie"));
    let v6 = read_text(format!("/proc/{pid}/net/if_inet6"));
    if let (Err(e), Err(_)) = (&v4, &v6) {
        return Err(e.clone());
    }
    let mut out = v4.map(|t| parse_fib_trie_local(&t)).unwrap_or_default();
    out.extend(v6.map(|t| parse_if_inet6(&t)).unwrap_or_default());
    Ok(out)
}

/// Whether `ip` is one of `owned` (as [`local_addresses`] gives them).
pub fn owns_address(owned: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    owned.iter().any(|&(a, len)| match (a, ip) {
        (IpAddr::V4(a), IpAddr::V4(ip)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(ip)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(ip) & mask
        }
        _ => false,
    })
}

/// The `host LOCAL` entries of a fib_trie dump: each leaf is a `|-- a.b.c.d` line followed by
/// one `/len scope TYPE` line per route it carries.
pub fn parse_fib_trie_local(text: &str) -> Vec<(IpAddr, u8)> {
    let mut out: Vec<(IpAddr, u8)> = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            leaf = a.trim().parse().ok();
        } else if let Some(route) = t.strip_prefix('/') {
            let f: Vec<&str> = route.split_whitespace().collect();
            if let (Some(a), [len, "host", "LOCAL", ..]) = (leaf, f.as_slice()) {
                if let Ok(len) = len.parse::<u8>() {
                    let e = (IpAddr::V4(a), len);
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
        } else {
            leaf = None;
        }
    }
    out
}

/// /proc/<pid>/net/if_inet6: `address(32 hex) ifindex prefix_len scope flags name`. Each address
/// is the namespace's own (/128); its prefix is the link's, which holds other hosts too.
pub fn parse_if_inet6(text: &str) -> Vec<(IpAddr, u8)> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next().filter(|h| h.len() == 32)?;
            let a = u128::from_str_radix(hex, 16).ok()?;
            Some((IpAddr::V6(Ipv6Addr::from(a)), 128))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:10E1 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A1B3 0100007F:10E1 06 00000000:00000000 03:00000CA5 00000000     0        0 0 3 0000000000000000
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:C350 0000000000000000FFFF00000100007F:10DD 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 20 4 0 10 -1
   1: 00000000000000000000000001000000:10DD 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 100 0 0 10 0
";

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp4_rows() {
        let mut t = SocketTable::new();
        parse_tcp_table(TCP, "tcp", &mut t);
        assert_eq!(t.len(), 2, "inode 0 rows skipped");
        assert_eq!(t[&31337].local, "127.0.0.1:8080");
        assert_eq!(t[&31337].state, "LISTEN");
        assert_eq!(t[&4242].remote, "127.0.0.1:4321");
        assert_eq!(t[&4242].state, "ESTABLISHED");
        assert_eq!(t[&4242].proto, "tcp");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_rows_v4_mapped_and_loopback() {
        let mut t = SocketTable::new();
        parse_tcp_table(TCP6, "tcp6", &mut t);
        assert_eq!(t[&555].local, "127.0.0.1:50000");
        assert_eq!(t[&555].remote, "127.0.0.1:4317");
        assert_eq!(t[&556].local, "[::1]:4317");
        assert_eq!(t[&556].remote, "[::]:0");
        assert_eq!(t[&556].state, "LISTEN");
    }

    #[test]
    fn unix_rows() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20011 /run/gunicorn.sock
0000000000000000: 00000003 00000000 00000000 0001 03 20012
";
        let mut t = SocketTable::new();
        parse_unix_table(text, &mut t);
        assert_eq!(t[&20011].local, "/run/gunicorn.sock");
        assert_eq!(t[&20012].local, "");
        assert_eq!(t[&20012].proto, "unix");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn typed_endpoints_and_lookup() {
        let mut t = SocketTable::new();
        parse_tcp_table(TCP, "tcp", &mut t);
        parse_tcp_table(TCP6, "tcp6", &mut t);
        assert_eq!(
            t[&4242].local_addr(),
            Some("127.0.0.1:41394".parse().unwrap())
        );
        assert_eq!(t[&556].local_addr(), Some("[::1]:4317".parse().unwrap()));
        // A grpcio client's tcp6 socket reads as the IPv4 peer the server sees, and
        // normalising the IPv4-mapped form of that peer gives the same address.
        assert_eq!(
            t[&555].local_addr(),
            Some("127.0.0.1:50000".parse().unwrap())
        );
        let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:50000".parse().unwrap();
        assert_eq!(normalize_addr(mapped), t[&555].local_addr().unwrap());
        let v6: std::net::SocketAddr = "[::1]:4317".parse().unwrap();
        assert_eq!(normalize_addr(v6), v6);
        assert_eq!(endpoint_addr("/run/gunicorn.sock"), None);
    }

    #[test]
    fn links() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn own_netns_and_fds() {
        let pid = std::process::id() as i32;
        assert!(netns_inode(pid).unwrap() > 0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fds = socket_fds(pid).unwrap();
        let wanted: Vec<u64> = fds.iter().map(|(_, i)| *i).collect();
        let table = read_tables(pid, &wanted).unwrap();
        let found = fds.iter().any(|(_, ino)| {
            table
                .get(ino)
                .is_some_and(|e| e.state == "LISTEN" && e.local == format!("127.0.0.1:{port}"))
        });
        assert!(found);
    }

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.213.0.0/30 2 0 2
        |-- 10.213.0.0
           /30 link UNICAST
        |-- 10.213.0.2
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.213.0.2
        /32 host LOCAL
";

    #[test]
    fn local_addresses_of_a_namespace() {
        let v4 = parse_fib_trie_local(FIB_TRIE);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            v4,
            vec![
                (ip("10.213.0.2"), 32),
                (ip("127.0.0.0"), 8),
                (ip("127.0.0.1"), 32)
            ]
        );
        assert!(owns_address(&v4, ip("10.213.0.2")));
        assert!(
            !owns_address(&v4, ip("10.213.0.1")),
            "the peer end of the /30"
        );
        assert!(owns_address(&v4, ip("127.3.2.1")), "all of 127/8");
        assert!(!owns_address(&v4, ip("::1")));
        let v6 = parse_if_inet6(
            "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
             00000000000000000000000000000001 01 80 10 80       lo\n",
        );
        assert_eq!(v6, vec![(ip("fe80::fc:ff:fe00:1"), 128), (ip("::1"), 128)]);
        assert!(owns_address(&v6, ip("::1")));
        assert!(!owns_address(&v6, ip("fe80::fc:ff:fe00:2")));
        // Our own namespace owns loopback whatever else it has.
        let me = std::process::id() as i32;
        let own = local_addresses(me).unwrap();
        assert!(owns_address(&own, ip("127.0.0.1")), "{own:?}");
    }
}
