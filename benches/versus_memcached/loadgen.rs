//! The load generator: memcached text-protocol requests, a reply decoder, and the
//! per-connection loops that drive a server.
//!
//! Everything runs on one tokio `current_thread` runtime, i.e. one OS thread doing
//! epoll over all connections. That keeps the generator's cost per request small
//! and, more importantly, confined to one core we can pin, so in the pinned
//! configuration it never competes with the server for CPU. Requests for the
//! timed workloads are encoded once up front; the hot loop only copies bytes.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every value the generator stores is this long, as the issue specifies.
pub const VALUE_LEN: usize = 100;

/// A key range: keys `key:` followed by `i` zero-padded to `digits` digits, for
/// `i` in `0..count`. Fixed width makes every request of one kind the same
/// length, so the pre-encoded table can be indexed without an offsets array.
#[derive(Clone, Copy, Debug)]
pub struct Keyspace {
    pub count: u64,
    pub digits: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
}

/// Appends one request for key number `i` to `out`.
pub fn encode(out: &mut Vec<u8>, op: Op, keys: Keyspace, i: u64) {
    let width = keys.digits;
    // Writing into a Vec cannot fail.
    let _ = match op {
        Op::Set => write!(out, "set key:{i:0width$} 0 0 {VALUE_LEN}\r\n"),
        Op::Get => write!(out, "get key:{i:0width$}\r\n"),
    };
    if op == Op::Set {
        // A varied but fixed payload: the value's content never matters to a
        // cache, only its length, and a constant avoids per-request work.
        out.extend((0..VALUE_LEN).map(|n| b'a' + (n % 26) as u8));
        out.extend_from_slice(b"\r\n");
    }
}

/// All requests of one kind for a keyspace, encoded back to back.
pub struct Requests {
    bytes: Vec<u8>,
    stride: usize,
    keys: Keyspace,
}

impl Requests {
    pub fn new(op: Op, keys: Keyspace) -> Self {
        let mut bytes = Vec::new();
        encode(&mut bytes, op, keys, 0);
        let stride = bytes.len();
        bytes.reserve(stride * keys.count as usize);
        for i in 1..keys.count {
            encode(&mut bytes, op, keys, i);
        }
        assert_eq!(
            bytes.len(),
            stride * keys.count as usize,
            "keys must be fixed width"
        );
        Requests {
            bytes,
            stride,
            keys,
        }
    }

    fn request(&self, i: u64) -> &[u8] {
        let start = i as usize * self.stride;
        &self.bytes[start..start + self.stride]
    }
}

/// What a server answered to one request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Stored,
    Hit,
    Miss,
}

/// Decodes one reply from the front of `buf`, consuming it; `Ok(None)` means the
/// reply is not complete yet and nothing was consumed. Anything other than the
/// three replies our workloads expect is an error: a benchmark that silently
/// counts `SERVER_ERROR out of memory` as an operation measures nothing.
fn decode(buf: &mut BytesMut) -> Result<Option<Reply>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        ensure!(
            buf.len() < 1024,
            "no line end in the first 1 KiB of a reply"
        );
        return Ok(None);
    };
    let line = &buf[..eol];
    let (reply, len) = if line == b"STORED" {
        (Reply::Stored, eol + 2)
    } else if line == b"END" {
        (Reply::Miss, eol + 2)
    } else if line.starts_with(b"VALUE ") {
        // `VALUE <key> <flags> <bytes> [<cas>]`: only the length matters here.
        let header = std::str::from_utf8(line).context("non-UTF-8 VALUE line")?;
        let bytes: usize = header
            .split(' ')
            .nth(3)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("malformed VALUE line {header:?}"))?;
        ensure!(
            bytes == VALUE_LEN,
            "server returned a {bytes}-byte value, expected {VALUE_LEN}"
        );
        let total = eol + 2 + bytes + b"\r\nEND\r\n".len();
        if buf.len() < total {
            return Ok(None);
        }
        ensure!(
            &buf[eol + 2 + bytes..total] == b"\r\nEND\r\n",
            "value not followed by END"
        );
        (Reply::Hit, total)
    } else {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(line));
    };
    buf.advance(len);
    Ok(Some(reply))
}

/// One client connection with its read buffer: plain TCP, or (for the client_tls bench) a
/// TLS session over it.
pub struct Conn<S = TcpStream> {
    stream: S,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        Ok(Conn::over(tcp_connect(addr).await?))
    }
}

/// A TCP connection to `addr`, with Nagle off: pipelined batches are written in one call
/// and must go out at once.
pub async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection over a stream that is already set up.
    pub fn over(stream: S) -> Conn<S> {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends `wbuf` and reads `n` replies; returns how many were misses.
    async fn round_trip(&mut self, n: usize) -> Result<u64> {
        self.stream
            .write_all(&self.wbuf)
            .await
            .context("writing requests")?;
        // A TLS stream may hold the end of its last record until flushed (a no-op on TCP).
        self.stream.flush().await.context("writing requests")?;
        let mut misses = 0;
        let mut seen = 0;
        while seen < n {
            while seen < n {
                match decode(&mut self.rbuf)? {
                    Some(Reply::Miss) => misses += 1,
                    Some(Reply::Stored | Reply::Hit) => {}
                    None => break,
                }
                seen += 1;
            }
            if seen < n
                && self
                    .stream
                    .read_buf(&mut self.rbuf)
                    .await
                    .context("reading replies")?
                    == 0
            {
                bail!("server closed the connection");
            }
        }
        Ok(misses)
    }
}

/// The time window of one measured cell: requests are sent from the start of the
/// warm-up until `until`, but only those sent at or after `measure_from` count.
#[derive(Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub until: Instant,
}

/// What one connection observed inside the measured window.
#[derive(Default)]
pub struct ConnStats {
    pub ops: u64,
    pub misses: u64,
    /// One sample per round trip: a single request, or a whole pipelined batch.
    pub latencies_ns: Vec<u64>,
}

/// Sends `depth` uniformly random requests from `reqs`, waits for all their
/// replies, and repeats until the window closes. With `depth == 1` this is the
/// classic closed-loop client; with a larger depth, each latency sample covers
/// a whole batch.
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<S>,
    reqs: &Requests,
    depth: usize,
    window: Window,
    seed: u64,
) -> Result<ConnStats> {
    let mut rng = seed | 1; // xorshift state must be non-zero
    let mut stats = ConnStats {
        latencies_ns: Vec::with_capacity(1 << 16),
        ..Default::default()
    };
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            return Ok(stats);
        }
        conn.wbuf.clear();
        for _ in 0..depth {
            conn.wbuf
                .extend_from_slice(reqs.request(xorshift(&mut rng) % reqs.keys.count));
        }
        let misses = conn.round_trip(depth).await?;
        if sent >= window.measure_from {
            stats.ops += depth as u64;
            stats.misses += misses;
            stats.latencies_ns.push(sent.elapsed().as_nanos() as u64);
        }
    }
}

/// Connections and pipeline depth of `sweep`. Its throughput does not matter;
/// these just make a million-item load take about a second.
const SWEEP_CONNS: u64 = 4;
const SWEEP_DEPTH: u64 = 32;

/// Sends `op` for every `step`-th key of `keys`, pipelined over several
/// connections; returns the number of misses. Used to preload and to
/// spot-check. Requests are encoded on the fly, which avoids holding a million
/// pre-encoded requests in the bench process.
pub async fn sweep(addr: SocketAddr, op: Op, keys: Keyspace, step: u64) -> Result<u64> {
    let (conns, depth) = (SWEEP_CONNS, SWEEP_DEPTH);
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let swept = keys.count.div_ceil(step);
            let mut misses = 0;
            // Connection c takes batches c, c + conns, c + 2 * conns, ...
            for batch in (c * depth..swept).step_by((conns * depth) as usize) {
                let batch_end = (batch + depth).min(swept);
                conn.wbuf.clear();
                for n in batch..batch_end {
                    encode(&mut conn.wbuf, op, keys, n * step);
                }
                misses += conn.round_trip((batch_end - batch) as usize).await?;
            }
            anyhow::Ok(misses)
        }));
    }
    let mut misses = 0;
    for task in tasks {
        misses += task.await.context("sweep task panicked")??;
    }
    Ok(misses)
}

/// CPU time consumed so far by the calling thread, i.e. by the whole generator.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc, 0,
        "clock_gettime(CLOCK_THREAD_CPUTIME_ID) cannot fail on Linux"
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// xorshift64: a few cycles per key, and uniform enough to spread load over
/// the keyspace; the generator must not spend its time in a CSPRNG.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
