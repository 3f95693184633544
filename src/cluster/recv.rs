//! A link's receiver: applies the peer's batches, and passes on what the peer says about
//! our stream (acknowledgements, where to start, a snapshot request) and about itself
//! (members, status, that we are synced).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, Notify};

use super::link::LinkError;
use super::{Cluster, Ctl, PeerCounters};
use crate::clock::NodeId;
use crate::replication::apply::apply_entries;
use crate::replication::frame::{self, Frame};
use crate::replication::log::{Entry, Op, RunId};

#[allow(clippy::too_many_arguments)]
pub async fn recv_loop(
    cl: &Cluster,
    peer: &str,
    counters: &PeerCounters,
    applied: &Notify,
    ctl: &mpsc::Sender<Ctl>,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    their_run: RunId,
    their_node: NodeId,
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
                    // A peer sends only its own writes: a version of another origin on its
                    // stream would let it forge (or replay) anyone's writes.
                    if let Some(e) = entries
                        .iter()
                        .find(|e| e.mutation.version.node() != their_node)
                    {
                        return Err(LinkError::Protocol(format!(
                            "a write of node id {} on the stream of node id {}",
                            e.mutation.version.node().get(),
                            their_node.get()
                        )));
                    }
                    apply_stalling(cl, peer, counters, applied, &entries, their_run).await?;
                    counters.set_have(their_run, last);
                    let newest = entries
                        .iter()
                        .filter(|e| !matches!(e.mutation.op, Op::Flush { .. }))
                        .map(|e| e.mutation.version)
                        .max();
                    if let Some(v) = newest {
                        cl.reconciler().applied(peer, their_run, v);
                    }
                    applied.notify_one();
                }
                Frame::Ack { run_id, seq } => {
                    if run_id == our_run {
                        // A peer cannot have more than we sent.
                        let seq = seq.min(counters.sent_seq.load(Ordering::Relaxed));
                        counters.acked_seq.fetch_max(seq, Ordering::Relaxed);
                        if let Some(v) = cl.outbox.acked_bound(seq) {
                            cl.reconciler().acked(peer, their_run, v);
                        }
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
                Frame::Status { ready, load } => {
                    cl.plan().status(peer, ready, load);
                    cl.sync_step();
                }
                Frame::Start { run_id, seq } => {
                    // Clamped like an acknowledgement: a peer cannot have more than exists.
                    let seq = seq.min(cl.outbox.last_seq());
                    if run_id == our_run {
                        counters.acked_seq.store(seq, Ordering::Relaxed);
                    }
                    queue(ctl, Ctl::From(run_id, seq))?;
                }
                Frame::SnapshotRequest { token } => queue(ctl, Ctl::Snapshot(token))?,
                Frame::Synced { snapshots } => {
                    tracing::debug!(node = %cl.name, %peer, snapshots, "peer says we are synced with it");
                    cl.plan().synced(peer, snapshots);
                    cl.sync_step();
                }
                Frame::Hello(_) => return Err(LinkError::Protocol("a second hello".into())),
                Frame::SnapBegin(_) | Frame::SnapItems(_) | Frame::SnapEnd { .. } => {
                    return Err(LinkError::Protocol(
                        "a snapshot frame on the live stream".into(),
                    ))
                }
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

/// How often a write refused by the clock-skew guard is retried, and for how long before
/// the link is closed (its next handshake then names the clock offset, or succeeds).
const SKEW_RETRY: Duration = Duration::from_millis(200);
const SKEW_GIVE_UP: Duration = Duration::from_secs(30);

/// Applies a batch; a write refused by the clock-skew guard stalls the stream there (what
/// came before it is acknowledged, nothing after it is read) and is retried until our
/// clock has caught up, so that nothing is silently skipped. A stall that outlasts
/// [`SKEW_GIVE_UP`] closes the link.
async fn apply_stalling(
    cl: &Cluster,
    peer: &str,
    counters: &PeerCounters,
    applied: &Notify,
    entries: &[Entry],
    their_run: RunId,
) -> Result<(), LinkError> {
    let mut rest = entries;
    let mut stalled_since = None;
    loop {
        let now = cl.hlc.clock().now_secs();
        let (stats, done) = apply_entries(&cl.store, &cl.hlc, rest, cl.max_skew, now);
        cl.counters.add(&stats);
        if done == rest.len() {
            return Ok(());
        }
        if done > 0 {
            counters.set_have(their_run, rest[done - 1].seq);
            applied.notify_one();
        }
        rest = &rest[done..];
        let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= SKEW_GIVE_UP {
            return Err(LinkError::Clock(format!(
                "{peer}'s write {} has been ahead of this node's clock by more than \
                 --max-clock-skew for {SKEW_GIVE_UP:?}",
                rest[0].mutation.version
            )));
        }
        tokio::time::sleep(SKEW_RETRY).await;
    }
}

/// Queues a request for the link's sender; a peer that floods them is cut off.
fn queue(ctl: &mpsc::Sender<Ctl>, c: Ctl) -> Result<(), LinkError> {
    ctl.try_send(c).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => {
            LinkError::Protocol("the peer sends requests faster than it takes answers".into())
        }
        mpsc::error::TrySendError::Closed(_) => LinkError::StreamEnded,
    })
}
