//! One peer connection, from hello to close: each side opens a unidirectional stream and
//! writes its [`Hello`] first, reads the peer's, registers the connection in the peer table
//! (which may prefer another connection to the same peer), then runs three loops until one
//! fails: the sender ([`super::send`]) streams this node's log from the peer's position
//! (and snapshots when the log does not reach back that far), the receiver
//! ([`super::recv`]) applies the peer's batches, and the snapshot receiver
//! ([`super::snapshot`]) applies the snapshots the peer streams on streams of their own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, Notify};

use super::peers::{LinkMeta, Offer};
use super::{recv, send, snapshot, Cluster, PeerCounters};
use crate::clock::{NodeId, Version};
use crate::replication::frame::{
    self, Frame, FrameError, Hello, HELLO_DEFER, HELLO_EMPTY, HELLO_READY,
};
use crate::replication::transport::PeerConn;

/// How long a peer has to send its hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Application close codes on peer connections.
pub const CLOSE_DUPLICATE: u32 = 2;
pub const CLOSE_REFUSED: u32 = 3;
pub const CLOSE_PROTOCOL: u32 = 4;
/// The peer is shutting down gracefully: not a failure.
pub const CLOSE_LEAVING: u32 = 5;

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
    #[error("{0}")]
    Clock(String),
}

/// Whether a peer's clock is too far from ours to replicate with: its hello's wall time
/// against ours when it arrived. Beyond `max_skew` one side's versions are refused by the
/// other's skew guard, write after write, for as long as the offset lasts (for ever, with a
/// misconfigured clock), so the link is refused at once, on both sides, with the offset
/// named. A hello takes one network delay to arrive, which makes the peer look up to that
/// much behind: negligible against a skew limit of seconds.
pub fn clock_refusal(
    peer: &str,
    us: &str,
    peer_wall_ms: u64,
    our_wall_ms: u64,
    max_skew: Duration,
) -> Option<String> {
    let offset_ms = peer_wall_ms as i128 - our_wall_ms as i128;
    if offset_ms.unsigned_abs() <= max_skew.as_millis() {
        return None;
    }
    let (dir, abs) = if offset_ms > 0 {
        ("ahead of", offset_ms)
    } else {
        ("behind", -offset_ms)
    };
    // Names, not "the peer": the peer logs this reason too, as the one it was refused for.
    Some(format!(
        "{peer}'s clock is {}.{:03} s {dir} {us}'s, more than --max-clock-skew ({max_skew:?}); \
         fix the clocks (NTP): replicating across that offset would refuse one side's writes",
        abs / 1000,
        abs % 1000
    ))
}

/// Runs one connection to its end. Returns whether it was registered as the peer's
/// connection (a dial that never got that far backs off).
pub async fn run(cl: Arc<Cluster>, pc: PeerConn, dialed_by_me: bool) -> bool {
    let conn = pc.conn.clone();
    let addr = conn.remote_address();
    let token = cl.token();
    let counters = cl.peer_counters(&pc.name);
    let (hello, deferred, send, recv, buf) = match handshake(&cl, &pc, &counters).await {
        Ok(parts) => parts,
        Err(LinkError::Clock(why)) => {
            cl.counters.peers_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(node = %cl.name, peer = %pc.name, %addr, "refusing peer: {why}");
            conn.close(CLOSE_REFUSED.into(), why.as_bytes());
            return false;
        }
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
    // The peer asks us to hold our stream until it has chosen a donor.
    let peer_defers = hello.flags & HELLO_DEFER != 0;
    if restarted {
        tracing::info!(node = %cl.name, peer = %hello.name, %addr, "peer restarted; up again");
    } else if replacing {
        tracing::debug!(node = %cl.name, peer = %hello.name, %addr, "peer connection replaced (simultaneous dial)");
    } else {
        tracing::info!(node = %cl.name, peer = %hello.name, %addr, node_id = hello.node_id, "peer up");
    }
    // What the peer has of our log is what its hello says, nothing of an earlier run.
    let acked = if hello.have_run == cl.outbox.run_id() {
        hello.have_seq.min(cl.outbox.last_seq())
    } else {
        0
    };
    counters.acked_seq.store(acked, Ordering::Relaxed);
    counters.sent_seq.store(acked, Ordering::Relaxed);
    // This link's own wake-up for acknowledgements: a replaced link's sender must not take
    // the new one's.
    let applied = Notify::new();
    let (ctl_tx, ctl_rx) = mpsc::channel(super::CTL_QUEUE);
    cl.links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(hello.name.clone(), (token, ctl_tx.clone()));
    let actions = cl.plan().up(
        &hello.name,
        hello.flags & HELLO_READY != 0,
        hello.load,
        peer_defers,
        deferred,
    );
    cl.act(actions);
    cl.sync_step();
    // Checked in the handshake.
    let their_node = NodeId::new(hello.node_id).unwrap_or_default();
    reconcile_if_due(&cl, &hello, their_node, &ctl_tx);
    let position = (!peer_defers).then_some(send::Position {
        run: hello.have_run,
        seq: hello.have_seq,
        empty: hello.flags & HELLO_EMPTY != 0,
    });
    let link = send::Link {
        cl: &cl,
        peer: &hello.name,
        conn: &conn,
        counters: &counters,
        applied: &applied,
    };
    let reason = tokio::select! {
        r = send::send_loop(&link, send, ctl_rx, position) => r,
        r = recv::recv_loop(&cl, &hello.name, &counters, &applied, &ctl_tx, recv, buf, hello.run_id, their_node) => r,
        r = snapshot::receive_snapshots(&cl, &hello.name, hello.run_id, &conn) => r,
    };
    {
        let mut links = cl.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.get(&hello.name).is_some_and(|(t, _)| *t == token) {
            links.remove(&hello.name);
        }
    }
    let (reason, ending) = match reason {
        Ok(()) => ("closed".to_string(), Ending::Failed),
        Err(e) => describe(&e, &conn),
    };
    let now_ms = cl.hlc.clock().now_ms();
    let was_registered = cl.table().down(&hello.name, token, now_ms);
    if was_registered {
        cl.reconciler().link_down(&hello.name, now_ms);
        cl.plan().down(&hello.name);
        cl.sync_step();
        if let Some(p) = cl.table().peer_mut(&hello.name) {
            p.needs_resync = false;
        }
        match ending {
            Ending::Replaced => {
                tracing::debug!(node = %cl.name, peer = %hello.name, %addr, "peer connection closed: {reason}")
            }
            Ending::Left => {
                tracing::info!(node = %cl.name, peer = %hello.name, %addr, "peer left: {reason}")
            }
            Ending::Failed => {
                tracing::warn!(node = %cl.name, peer = %hello.name, %addr, "peer down: {reason}")
            }
        }
        cl.dial_wake.notify_one();
    }
    conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
    true
}

/// Asks the peer for a full snapshot to reconcile with, when this node was apart from the
/// same run of it for longer than the tombstone TTL (see [`super::reconcile`]).
fn reconcile_if_due(cl: &Cluster, hello: &Hello, node_id: NodeId, ctl: &mpsc::Sender<super::Ctl>) {
    let now_ms = cl.hlc.clock().now_ms();
    let due = cl.reconciler().link_up(
        &hello.name,
        hello.run_id,
        node_id,
        Version(hello.run_floor),
        now_ms,
    );
    if let Some(token) = due {
        tracing::info!(node = %cl.name, peer = %hello.name, "apart from the peer for longer than --tombstone-ttl: reconciling (asking for its full snapshot; keys it deleted meanwhile are dropped here)");
        let _ = ctl.try_send(super::Ctl::Send(Frame::SnapshotRequest { token }));
    }
}

/// How a link ended, for the level of its log line.
enum Ending {
    /// The peer kept another connection to us instead: routine.
    Replaced,
    /// The peer is shutting down gracefully.
    Left,
    Failed,
}

/// What the log line says about a link's end: the peer's own close reason when it gave one.
fn describe(e: &LinkError, conn: &quinn::Connection) -> (String, Ending) {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            let ending = if c.error_code == CLOSE_DUPLICATE.into() {
                Ending::Replaced
            } else if c.error_code == CLOSE_LEAVING.into() {
                Ending::Left
            } else {
                Ending::Failed
            };
            let reason = String::from_utf8_lossy(&c.reason);
            (format!("the peer closed the connection: {reason}"), ending)
        }
        Some(other) => (other.to_string(), Ending::Failed),
        None => (e.to_string(), Ending::Failed),
    }
}

/// The peer's hello, whether ours asked it to hold its stream, and the live streams.
type Handshake = (Hello, bool, quinn::SendStream, quinn::RecvStream, BytesMut);

/// Sends our hello and reads the peer's; the peer's name must be its certificate's.
async fn handshake(
    cl: &Cluster,
    pc: &PeerConn,
    counters: &PeerCounters,
) -> Result<Handshake, LinkError> {
    let deferred = cl.plan().defer();
    let (ready, load) = cl.status_now();
    let (have_run, have_seq) = counters.have();
    let mut flags = 0;
    if ready {
        flags |= HELLO_READY;
    }
    if deferred {
        flags |= HELLO_DEFER;
    }
    if cl.store.is_empty() {
        flags |= HELLO_EMPTY;
    }
    let ours = Frame::Hello(Hello {
        name: cl.name.clone(),
        node_id: cl.node_id.get(),
        run_id: cl.outbox.run_id(),
        have_run,
        have_seq,
        flags,
        load,
        wall_ms: cl.hlc.clock().now_ms(),
        run_floor: cl.run_floor.0,
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
    let now_ms = cl.hlc.clock().now_ms();
    if let Some(why) = clock_refusal(&pc.name, &cl.name, hello.wall_ms, now_ms, cl.max_skew) {
        return Err(LinkError::Clock(why));
    }
    if NodeId::new(hello.node_id).is_none() {
        return Err(LinkError::Protocol(format!(
            "node id {} does not fit in 10 bits",
            hello.node_id
        )));
    }
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
    Ok((hello, deferred, send, recv, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_clock_beyond_the_skew_limit_is_refused_naming_the_offset() {
        let skew = Duration::from_secs(5);
        let now = 1_800_000_000_000;
        let check = |peer_ms| clock_refusal("b", "a", peer_ms, now, skew);
        assert_eq!(check(now + 3_000), None, "3 s ahead");
        assert_eq!(check(now - 5_000), None, "at the limit");
        let ahead = check(now + 3_600_250).expect("an hour ahead");
        assert!(
            ahead.starts_with("b's clock is 3600.250 s ahead of a's"),
            "{ahead}"
        );
        let behind = check(now - 7_000).expect("7 s behind");
        assert!(
            behind.starts_with("b's clock is 7.000 s behind a's"),
            "{behind}"
        );
    }
}
