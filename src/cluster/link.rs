//! One peer connection, from hello to close: each side opens a unidirectional stream and
//! writes its [`Hello`] first, reads the peer's, registers the connection in the peer table
//! (which may prefer another connection to the same peer), then runs two loops until either
//! fails: the sender streams this node's log from the peer's position (plus acks for what we
//! applied and the member list), the receiver applies the peer's batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::peers::{LinkMeta, Offer};
use super::{Cluster, PeerCounters};
use crate::replication::apply::apply_entries;
use crate::replication::frame::{self, Frame, FrameError, Hello};
use crate::replication::log::RunId;
use crate::replication::transport::PeerConn;

/// How long a peer has to send its hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// About how many bytes of log entries go in one batch frame.
const BATCH_BYTES: usize = 64 << 10;
/// The most often an acknowledgement is sent (a busy stream is acknowledged at this pace;
/// an idle one once, this long after its last batch at the latest).
const ACK_INTERVAL: Duration = Duration::from_millis(10);
/// Application close codes on peer connections.
pub const CLOSE_DUPLICATE: u32 = 2;
pub const CLOSE_REFUSED: u32 = 3;
pub const CLOSE_PROTOCOL: u32 = 4;

/// Why a link ended, for the "peer down" log line.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("sending: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("receiving: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("malformed frame from the peer: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the peer closed its stream")]
    StreamEnded,
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
}

/// Runs one connection to its end. Returns whether it was registered as the peer's
/// connection (a dial that never got that far backs off).
pub async fn run(cl: Arc<Cluster>, pc: PeerConn, dialed_by_me: bool) -> bool {
    let conn = pc.conn.clone();
    let addr = conn.remote_address();
    let token = cl.token();
    let counters = cl.peer_counters(&pc.name);
    let (hello, send, recv, buf) = match handshake(&cl, &pc, &counters).await {
        Ok(parts) => parts,
        Err(e) => {
            match conn.close_reason() {
                // The peer refused us (a node id clash, say) and said why: that must be seen.
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.error_code == CLOSE_REFUSED.into() =>
                {
                    tracing::error!(node = %cl.name, peer = %pc.name, %addr, "the peer refused this node: {}", String::from_utf8_lossy(&c.reason));
                }
                _ => {
                    tracing::debug!(node = %cl.name, peer = %pc.name, %addr, "peer connection ended before its hello: {e}");
                }
            }
            conn.close(CLOSE_PROTOCOL.into(), b"no hello");
            return false;
        }
    };
    let now_ms = cl.hlc.clock().now_ms();
    let meta = LinkMeta {
        dialed_by_me,
        addr,
        run_id: hello.run_id,
        token,
    };
    let offer = cl.table().offer(&hello, meta, conn.clone(), now_ms);
    let (replacing, restarted) = match offer {
        Offer::Keep {
            replaced,
            restarted,
        } => match replaced {
            Some(old) => {
                old.close(CLOSE_DUPLICATE.into(), b"replaced by a newer connection");
                (true, restarted)
            }
            None => (false, false),
        },
        Offer::Duplicate => {
            conn.close(CLOSE_DUPLICATE.into(), b"duplicate connection");
            return false;
        }
        Offer::ToSelf => {
            if hello.run_id != cl.outbox.run_id() {
                tracing::error!(node = %cl.name, %addr, "another running node uses this node's name; every node needs its own name and certificate");
            }
            conn.close(CLOSE_REFUSED.into(), b"connected to itself");
            return false;
        }
        Offer::IdClash { id, holder } => {
            cl.counters.peers_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(node = %cl.name, peer = %hello.name, %addr, "refusing peer: node id {id} is already taken by {holder:?}; give each node a distinct --node-id");
            let reason = format!("node id {id} is already taken by {holder}");
            conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
            return false;
        }
    };
    cl.members.send_modify(|v| *v += 1);
    let (cursor, lagged) = start_cursor(&cl, &hello);
    if restarted {
        tracing::info!(node = %cl.name, peer = %hello.name, %addr, from_seq = cursor + 1, "peer restarted; up again");
    } else if replacing {
        tracing::debug!(node = %cl.name, peer = %hello.name, %addr, "peer connection replaced (simultaneous dial)");
    } else {
        tracing::info!(node = %cl.name, peer = %hello.name, %addr, node_id = hello.node_id, from_seq = cursor + 1, "peer up");
    }
    if lagged {
        fell_behind(&cl, &hello.name, hello.have_seq);
    }
    counters.sent_seq.store(cursor, Ordering::Relaxed);
    // What the peer has of our log is what its hello says, nothing of an earlier run.
    let acked = if hello.have_run == cl.outbox.run_id() {
        hello.have_seq.min(cl.outbox.last_seq())
    } else {
        0
    };
    counters.acked_seq.store(acked, Ordering::Relaxed);
    // This link's own wake-up for acknowledgements: a replaced link's sender must not take
    // the new one's.
    let applied = Notify::new();
    let reason = tokio::select! {
        r = send_loop(&cl, &hello.name, &counters, &applied, send, cursor) => r,
        r = recv_loop(&cl, &counters, &applied, recv, buf, hello.run_id) => r,
    };
    let (reason, quiet) = match reason {
        Ok(()) => ("closed".to_string(), false),
        Err(e) => describe(&e, &conn),
    };
    if cl.table().down(&hello.name, token, cl.hlc.clock().now_ms()) {
        if quiet {
            tracing::debug!(node = %cl.name, peer = %hello.name, %addr, "peer connection closed: {reason}");
        } else {
            tracing::warn!(node = %cl.name, peer = %hello.name, %addr, "peer down: {reason}");
        }
        cl.dial_wake.notify_one();
    }
    conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
    true
}

/// What the log line says about a link's end: the peer's own close reason when it gave one,
/// and whether it is routine (the peer kept another connection to us instead).
fn describe(e: &LinkError, conn: &quinn::Connection) -> (String, bool) {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => (
            format!(
                "the peer closed the connection: {}",
                String::from_utf8_lossy(&c.reason)
            ),
            c.error_code == CLOSE_DUPLICATE.into(),
        ),
        Some(other) => (other.to_string(), false),
        None => (e.to_string(), false),
    }
}

type Handshake = (Hello, quinn::SendStream, quinn::RecvStream, BytesMut);

/// Sends our hello and reads the peer's; the peer's name must be its certificate's.
async fn handshake(
    cl: &Cluster,
    pc: &PeerConn,
    counters: &PeerCounters,
) -> Result<Handshake, LinkError> {
    let (have_run, have_seq) = counters.have();
    let ours = Frame::Hello(Hello {
        name: cl.name.clone(),
        node_id: cl.node_id.get(),
        run_id: cl.outbox.run_id(),
        have_run,
        have_seq,
    });
    let mut out = BytesMut::new();
    frame::encode(&ours, &mut out);
    let mut send = pc.conn.open_uni().await?;
    send.write_all(&out).await?;
    let read_hello = async {
        let mut recv = pc.conn.accept_uni().await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(f) = frame::decode(&mut buf)? {
                return Ok::<_, LinkError>((f, recv, buf));
            }
            match recv.read_chunk(64 << 10, true).await? {
                Some(chunk) => buf.extend_from_slice(&chunk.bytes),
                None => return Err(LinkError::StreamEnded),
            }
        }
    };
    let (first, recv, buf) = tokio::time::timeout(HELLO_TIMEOUT, read_hello)
        .await
        .map_err(|_| LinkError::HelloTimeout)??;
    let Frame::Hello(hello) = first else {
        return Err(LinkError::Protocol("the first frame is not a hello".into()));
    };
    if hello.name != pc.name {
        return Err(LinkError::Protocol(format!(
            "the peer calls itself {:?} but its certificate names {:?}",
            hello.name, pc.name
        )));
    }
    if counters.have().0 != hello.run_id {
        // A new run of the peer: nothing of it applied yet.
        counters.set_have(hello.run_id, 0);
    }
    Ok((hello, send, recv, buf))
}

/// Where to start sending our log to a peer that says it has `have_seq` of our run
/// `have_run`. Returns the cursor and whether the peer misses entries the ring no longer
/// holds (it needs a resync).
fn start_cursor(cl: &Cluster, hello: &Hello) -> (u64, bool) {
    let last = cl.outbox.last_seq();
    let oldest = cl.outbox.oldest_seq();
    let from = if hello.have_run == cl.outbox.run_id() {
        hello.have_seq.min(last)
    } else {
        0
    };
    if from + 1 >= oldest {
        (from, false)
    } else {
        // What is still held is still worth sending; only the older part needs the resync.
        (oldest - 1, true)
    }
}

fn fell_behind(cl: &Cluster, name: &str, cursor: u64) {
    cl.counters.resyncs_needed.fetch_add(1, Ordering::Relaxed);
    if let Some(p) = cl.table().peer_mut(name) {
        p.needs_resync = true;
    }
    tracing::error!(
        node = %cl.name,
        peer = %name,
        cursor,
        oldest = cl.outbox.oldest_seq(),
        "peer needs a resync: it misses writes no longer in the replication log (raise --repl-backlog); it gets every write still in the log and all new ones, the missed ones only by a resync"
    );
}

async fn send_loop(
    cl: &Cluster,
    name: &str,
    counters: &PeerCounters,
    applied: &Notify,
    mut send: quinn::SendStream,
    mut cursor: u64,
) -> Result<(), LinkError> {
    let mut members = cl.members.subscribe();
    let mut members_due = true;
    let mut scratch = BytesMut::with_capacity(64 << 10);
    let mut chunks = Vec::new();
    let mut acked = counters.have().1;
    let mut last_ack = Instant::now();
    loop {
        if members_due {
            members_due = false;
            members.borrow_and_update();
            let list = cl.table().members();
            let mut out = BytesMut::new();
            frame::encode(&Frame::Members(list), &mut out);
            send.write_all(&out).await?;
        }
        let (run, have) = counters.have();
        if have > acked && last_ack.elapsed() >= ACK_INTERVAL {
            let mut out = BytesMut::new();
            frame::encode(
                &Frame::Ack {
                    run_id: run,
                    seq: have,
                },
                &mut out,
            );
            send.write_all(&out).await?;
            acked = have;
            last_ack = Instant::now();
        }
        match cl.outbox.read(cursor, BATCH_BYTES) {
            Err(lagged) => {
                fell_behind(cl, name, cursor);
                // Go on from the oldest entry still held: writes made while this sender
                // was held up by flow control are in the log, and must not be skipped.
                cursor = lagged.oldest - 1;
                continue;
            }
            Ok(entries) if !entries.is_empty() => {
                let last = entries.last().map_or(cursor, |e| e.seq);
                frame::encode_batch_chunks(cl.outbox.run_id(), &entries, &mut scratch, &mut chunks);
                let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                send.write_all_chunks(&mut chunks).await?;
                chunks.clear();
                cursor = last;
                counters.sent_seq.store(cursor, Ordering::Relaxed);
                counters
                    .bytes_sent
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                continue;
            }
            Ok(_) => {}
        }
        let ack_pending = counters.have().1 > acked;
        tokio::select! {
            _ = cl.outbox.wait_beyond(cursor) => {}
            _ = applied.notified(), if !ack_pending => {}
            _ = tokio::time::sleep_until(last_ack + ACK_INTERVAL), if ack_pending => {}
            changed = members.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                members_due = true;
            }
        }
    }
}

async fn recv_loop(
    cl: &Cluster,
    counters: &PeerCounters,
    applied: &Notify,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    their_run: RunId,
) -> Result<(), LinkError> {
    let our_run = cl.outbox.run_id();
    loop {
        while let Some(f) = frame::decode(&mut buf)? {
            match f {
                Frame::Batch { run_id, entries } => {
                    if run_id != their_run {
                        return Err(LinkError::Protocol(format!(
                            "a batch of run {} on a stream of run {}",
                            run_id.0, their_run.0
                        )));
                    }
                    let Some(last) = entries.last().map(|e| e.seq) else {
                        continue;
                    };
                    let now = cl.hlc.clock().now_secs();
                    let stats = apply_entries(&cl.store, &cl.hlc, &entries, cl.max_skew, now);
                    cl.counters.add(&stats);
                    counters.set_have(their_run, last);
                    applied.notify_one();
                }
                Frame::Ack { run_id, seq } => {
                    if run_id == our_run {
                        // A peer cannot have more than we sent.
                        let seq = seq.min(counters.sent_seq.load(Ordering::Relaxed));
                        counters.acked_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                Frame::Members(list) => {
                    let (learned, clashes) = cl.table().learn(&list);
                    for m in clashes {
                        tracing::error!(node = %cl.name, member = %m.name, node_id = m.node_id, "a member uses a node id that is already taken; give each node a distinct --node-id");
                    }
                    if learned {
                        cl.members.send_modify(|v| *v += 1);
                        cl.dial_wake.notify_one();
                    }
                }
                Frame::Hello(_) => return Err(LinkError::Protocol("a second hello".into())),
            }
        }
        match recv.read_chunk(256 << 10, true).await? {
            Some(chunk) => {
                counters
                    .bytes_received
                    .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk.bytes);
            }
            None => return Err(LinkError::StreamEnded),
        }
    }
}
