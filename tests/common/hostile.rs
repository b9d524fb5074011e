//! Hostile clients and measurements for the receiver's limits: raw sockets that never finish a
//! request (HTTP/2 frames written by hand), waiting for the server to close them, and a
//! process's memory from `/proc/<pid>/status`. Std only, like the rest of `common`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connection that never completes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// Connects and sends nothing.
    Silent,
    /// The HTTP/2 client preface (magic and an empty SETTINGS frame), then nothing.
    H2Preface,
    /// The preface and a HEADERS frame without END_HEADERS (no CONTINUATION ever follows).
    H2HeadersOpen,
    /// Half an HTTP/1.1 request head.
    Http1HalfHead,
}

impl Unfinished {
    pub const H2: [Unfinished; 3] = [
        Unfinished::Silent,
        Unfinished::H2Preface,
        Unfinished::H2HeadersOpen,
    ];
    pub const ALL: [Unfinished; 4] = [
        Unfinished::Silent,
        Unfinished::H2Preface,
        Unfinished::H2HeadersOpen,
        Unfinished::Http1HalfHead,
    ];

    /// What the client sends before it falls silent.
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Unfinished::Silent => Vec::new(),
            Unfinished::H2Preface => h2_preface(),
            Unfinished::H2HeadersOpen => {
                let mut b = h2_preface();
                // HPACK: :method POST (3), :scheme http (6), :path / (4): an incomplete block as
                // far as the server knows, since END_HEADERS is not set.
                let block = [0x83u8, 0x86, 0x84];
                b.extend(frame_header(block.len(), 0x1, 0x1, 1));
                b.extend(block);
                b
            }
            Unfinished::Http1HalfHead => {
                b"POST /v1/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic".to_vec()
            }
        }
    }

    /// Connects to `addr` and sends [`Unfinished::bytes`].
    pub fn open(self, addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let b = self.bytes();
        if !b.is_empty() {
            s.write_all(&b).expect("write");
        }
        s
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let l = (len as u32).to_be_bytes();
    let mut h = vec![l[1], l[2], l[3], kind, flags];
    h.extend(stream.to_be_bytes());
    h
}

/// The HTTP/2 client connection preface: the magic and an empty SETTINGS frame.
pub fn h2_preface() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend(frame_header(0, 0x4, 0, 0));
    b
}

/// HTTP/2 frames that open `streams` gRPC export calls on one connection, each sending the
/// start of a message whose length prefix declares `declared` bytes, then nothing more: the
/// "unfinished gRPC messages" attack. `per_stream` message bytes are sent per stream (keep
/// `streams * per_stream` under 64 KiB, the connection's initial flow-control window).
pub fn h2_unfinished_grpc(streams: u32, declared: u32, per_stream: usize) -> Vec<u8> {
    let mut b = h2_preface();
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        ),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal header field without indexing, new name, no Huffman coding.
        block.push(0x00);
        block.push(k.len() as u8);
        block.extend(k.as_bytes());
        block.push(v.len() as u8);
        block.extend(v.as_bytes());
    }
    for i in 0..streams {
        let id = 1 + 2 * i;
        b.extend(frame_header(block.len(), 0x1, 0x4, id));
        b.extend(&block);
        let mut data = vec![0u8];
        data.extend(declared.to_be_bytes());
        data.extend(std::iter::repeat_n(7u8, per_stream));
        b.extend(frame_header(data.len(), 0x0, 0x0, id));
        b.extend(data);
    }
    b
}

/// Reads (and discards what the server sends: SETTINGS, GOAWAY, a 408) until the server closes
/// `s`. Returns when that happened, or None when it is still open at `until`.
pub fn wait_closed(s: &mut TcpStream, until: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match s.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if Instant::now() >= until {
                    return None;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Reset by the server counts as closed.
            Err(_) => return Some(Instant::now()),
        }
    }
}

/// Whether the server has closed `s` already (without waiting).
pub fn is_closed(s: &mut TcpStream) -> bool {
    wait_closed(s, Instant::now() + Duration::from_millis(5)).is_some()
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM, ...), in KiB.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
