//! One client connection: read bytes, decode requests, dispatch, write answers in order.
//!
//! Memory per connection is bounded: the read buffer holds at most one request line or one
//! value (`-I`) beyond what has been decoded, a refused value is discarded as it arrives,
//! and once pending answers pass [`WRITE_HIGH_WATER`] they are written out (waiting for the
//! client to read them) before another request is decoded. A client that never reads
//! therefore stalls only itself.
//!
//! The loop is generic over the stream: plain TCP, TLS over TCP (after its handshake, which
//! runs here, in the connection's own task) and the unix socket share it.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::ack::HeldAnswers;
use super::dispatch::{self, After, Ctx};
use super::idle::IdleTimer;
use super::stats::{Counter, LocalCounters};
use super::tls::HANDSHAKE_TIMEOUT;
use super::Shared;
use crate::config::ListenerTls;
use crate::protocol::stream::ClientDecoder;
use crate::protocol::ErrorReply;

const READ_CHUNK: usize = 16 * 1024;
/// An idle connection's buffers are given back once they grew past this (a large value
/// came or went), so that many idle connections do not pin memory outside `-m`.
const SHRINK_ABOVE: usize = 64 * 1024;

/// An accepted client socket, in its std (not yet registered) form: it is registered with
/// the reactor of the worker that serves it, so that its readiness events wake that worker
/// directly instead of hopping through the acceptor's thread.
pub enum Stream {
    Tcp(std::net::TcpStream),
    /// A connection to a TLS listener, its handshake still to do.
    Tls(std::net::TcpStream, ListenerTls),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Best-effort refusal message (the socket is non-blocking), then close. A TLS client
    /// gets no message: it would read plaintext as a broken record.
    pub fn refuse(self, msg: &[u8]) {
        use std::io::Write;
        let _ = match self {
            Stream::Tcp(mut s) => s.write(msg),
            Stream::Tls(..) => Ok(0),
            Stream::Unix(mut s) => s.write(msg),
        };
    }
}

/// Serves one connection; must run on the worker's runtime.
pub async fn serve(shared: Arc<Shared>, stream: Stream) {
    // Gives the connection's slot back however the task ends, a panic included.
    struct Slot<'a>(&'a Shared);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.conns.curr.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _slot = Slot(&shared);
    // memcached's idle timeout applies to TCP connections only.
    let idle_timeout = shared.config.idle_timeout;
    let registered = match stream {
        Stream::Tcp(s) => match TcpStream::from_std(s) {
            Ok(s) => {
                run(&shared, s, idle_timeout).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Stream::Tls(s, mode) => match TcpStream::from_std(s) {
            Ok(s) => {
                serve_tls(&shared, s, mode, idle_timeout).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Stream::Unix(s) => match UnixStream::from_std(s) {
            Ok(s) => {
                run(&shared, s, 0).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = registered {
        tracing::warn!(node = %shared.name, error = %e, "cannot register a client socket");
    }
}

/// Runs the TLS handshake, then serves the connection like any other. The handshake has
/// [`HANDSHAKE_TIMEOUT`], or the idle timeout if that is shorter: a client that has not
/// finished it has sent no command.
async fn serve_tls(shared: &Shared, tcp: TcpStream, mode: ListenerTls, idle_timeout: u32) {
    // Only TLS listeners hand out `Stream::Tls`, and they exist only with `shared.tls`.
    let Some(tls) = &shared.tls else { return };
    let limit = match idle_timeout {
        0 => HANDSHAKE_TIMEOUT,
        secs => HANDSHAKE_TIMEOUT.min(Duration::from_secs(secs.into())),
    };
    // A shutdown does not wait for handshakes: those clients have sent no request yet.
    let mut shutdown = shared.shutdown.subscribe();
    let stream = tokio::select! {
        s = tls.handshake(mode, tcp, limit) => s,
        _ = shutdown.wait_for(|s| *s) => None,
    };
    let Some(stream) = stream else { return };
    if let Some(e) = run(shared, stream, idle_timeout).await {
        // rustls reports a bad record (after the handshake) as invalid data.
        if e.kind() == io::ErrorKind::InvalidData {
            tls.counters.proto_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves requests until the client leaves, errs, is idle for more than `idle_timeout`
/// seconds (0: no limit), or the server shuts down. Returns the read error that ended the
/// connection, if one did.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut stream: S,
    idle_timeout: u32,
) -> Option<io::Error> {
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut counters = LocalCounters::default();
    let mut shutdown = shared.shutdown.subscribe();
    // One waiter for the whole connection: building it per read would register and
    // unregister a waiter on every request.
    let stopping = shutdown.wait_for(|s| *s);
    tokio::pin!(stopping);
    let mut decoder = ClientDecoder::new(shared.config.max_item_size);
    let mut idle = IdleTimer::new(idle_timeout, shared.clock().now_ms());
    let mut read_error = None;
    // Writes' answers waiting for `--ack-replicas` peers (always empty without it).
    let mut held = HeldAnswers::default();
    loop {
        if rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE {
            rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            biased;
            r = stream.read_buf(&mut rbuf) => r,
            _ = &mut stopping => break,
            _ = idle.fired() => {
                if idle.expired(shared.clock().now_ms()) {
                    tracing::debug!("closing an idle connection (-o idle_timeout)");
                    counters.bump(Counter::IdleKicks);
                    break;
                }
                continue;
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => counters.add(Counter::BytesRead, n as u64),
            Err(e) => {
                tracing::debug!(error = %e, "client read failed");
                read_error = Some(e);
                break;
            }
        }
        let mut now = shared.clock().now_secs();
        let mut close = false;
        let mut decoded = false;
        loop {
            let req = match decoder.decode(&mut rbuf) {
                Ok(Some(req)) => {
                    decoded = true;
                    req
                }
                Ok(None) => break,
                Err(e) => {
                    // memcached closes without a word here (an over-long line, a bad
                    // binary magic byte); the reason is only worth a debug line.
                    tracing::debug!(error = %e, "closing connection on a protocol error");
                    close = true;
                    break;
                }
            };
            let mut req = req;
            loop {
                let mut ctx = Ctx {
                    shared,
                    now,
                    counters: &mut counters,
                };
                let (start, reply) = (wbuf.len(), ErrorReply::from(&req.reply));
                if let Some(gate) = &shared.acks {
                    gate.before_command();
                }
                let after = dispatch::execute(&mut ctx, req, &mut wbuf);
                if let Some(gate) = &shared.acks {
                    gate.after_command(&mut held, reply, start, wbuf.len());
                }
                match after {
                    After::Continue => break,
                    After::Close => {
                        close = true;
                        break;
                    }
                    After::More(rest) => {
                        settle(shared, &mut held, &mut wbuf).await;
                        if !flush(&mut stream, &mut wbuf, &mut counters).await {
                            close = true;
                            break;
                        }
                        // Writing may have waited on a slow reader: time has moved.
                        now = shared.clock().now_secs();
                        req = *rest;
                    }
                }
            }
            if close {
                break;
            }
            if wbuf.len() >= dispatch::ANSWER_CHUNK {
                settle(shared, &mut held, &mut wbuf).await;
                if !flush(&mut stream, &mut wbuf, &mut counters).await {
                    close = true;
                    break;
                }
                now = shared.clock().now_secs();
            }
        }
        settle(shared, &mut held, &mut wbuf).await;
        // The batch's counts become visible before its answers leave: `stats` or a scrape
        // from elsewhere that follows a reply always includes the reply's command.
        counters.add(Counter::BytesWritten, wbuf.len() as u64);
        shared.counters.absorb(&mut counters);
        let ok = write_out(&mut stream, &mut wbuf).await;
        if decoded && idle.enabled() {
            // memcached counts idleness from the last command received, not from the
            // last byte: a client trickling a line that never ends is still idle.
            idle.touch(shared.clock().now_ms());
        }
        if close || !ok {
            break;
        }
    }
    settle(shared, &mut held, &mut wbuf).await;
    let _ = flush(&mut stream, &mut wbuf, &mut counters).await;
    shared.counters.absorb(&mut counters);
    let _ = stream.shutdown().await;
    read_error
}

/// With `--ack-replicas`: waits until the peers hold the writes answered in `wbuf` (or the
/// wait times out and their answers become errors); call before `wbuf` goes out.
async fn settle(shared: &Shared, held: &mut HeldAnswers, wbuf: &mut BytesMut) {
    if let Some(gate) = &shared.acks {
        gate.settle(held, wbuf).await;
    }
}

/// Counts and writes out pending answers; `false` when the client is gone.
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut BytesMut,
    counters: &mut LocalCounters,
) -> bool {
    counters.add(Counter::BytesWritten, wbuf.len() as u64);
    write_out(stream, wbuf).await
}

/// Writes out pending answers (already counted); `false` when the client is gone.
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, wbuf: &mut BytesMut) -> bool {
    if wbuf.is_empty() {
        return true;
    }
    // A TLS stream may keep the end of the last record until it is flushed; for a socket
    // the flush is a no-op.
    let ok = stream.write_all(wbuf).await.is_ok() && stream.flush().await.is_ok();
    if wbuf.capacity() > SHRINK_ABOVE {
        *wbuf = BytesMut::with_capacity(READ_CHUNK);
    } else {
        wbuf.clear();
    }
    ok
}
