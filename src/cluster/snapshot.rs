//! Snapshots (DESIGN.md section 6): every live item and tombstone of the donor's store,
//! with versions, streamed shard by shard on a unidirectional stream of its own while the
//! live stream goes on.
//!
//! The donor walks its store in pieces of [`PIECE_BYTES`], one shard lock held per piece,
//! so its clients never wait long; QUIC flow control paces the walk to what the receiver
//! takes. The first frame carries the donor's flush barrier and what it had applied of
//! every other origin's log before the walk began: a node taking its initial sync from this
//! donor then asks those origins for the rest from there.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::link::LinkError;
use super::reconcile::Bounds;
use super::Cluster;
use crate::replication::apply::apply_mutations;
use crate::replication::frame::{self, Frame, SnapBegin, SnapItemsWriter};
use crate::replication::log::RunId;
use crate::store::ExportCursor;

/// Bytes of keys and values copied per shard lock hold, and so per items frame.
const PIECE_BYTES: usize = 64 << 10;
/// How often a long snapshot logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Counts the snapshots being served (the donor's load) while alive.
struct Serving<'a>(&'a Cluster);

impl<'a> Serving<'a> {
    fn new(cl: &'a Cluster) -> Self {
        cl.serving.fetch_add(1, Ordering::Relaxed);
        cl.status.send_modify(|v| *v += 1);
        Serving(cl)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
        self.0.status.send_modify(|v| *v += 1);
    }
}

/// Streams this node's whole store to `peer`.
pub async fn send_snapshot(
    cl: &Cluster,
    peer: &str,
    conn: &quinn::Connection,
    why: &'static str,
    token: u64,
) -> Result<(), LinkError> {
    let _serving = Serving::new(cl);
    let started = Instant::now();
    let now = cl.hlc.clock().now_secs();
    tracing::info!(node = %cl.name, %peer, "sending a snapshot: {why}");
    let mut send = conn.open_uni().await?;
    // The positions first, then the walk: whatever the walk misses of those origins, the
    // receiver asks them for.
    let begin = SnapBegin {
        log_seq: cl.outbox.last_seq(),
        items: cl.store.len(),
        flush: cl.store.flush_state(now),
        positions: cl.positions(),
        token,
    };
    let mut out = BytesMut::with_capacity(PIECE_BYTES + (16 << 10));
    frame::encode(&Frame::SnapBegin(begin), &mut out);
    send.write_chunk(out.split().freeze()).await?;
    let (mut items, mut bytes) = (0u64, 0u64);
    let mut cursor = Some(ExportCursor::default());
    let mut progress = Instant::now();
    while let Some(at) = cursor {
        let mut w = SnapItemsWriter::begin(&mut out);
        cursor = cl
            .store
            .export(at, now, PIECE_BYTES, |e| w.push(&mut out, &e));
        if w.count() == 0 {
            out.clear();
            continue;
        }
        items += u64::from(w.count());
        w.finish(&mut out);
        bytes += out.len() as u64;
        send.write_chunk(out.split().freeze()).await?;
        if progress.elapsed() >= PROGRESS_EVERY {
            progress = Instant::now();
            log_progress(cl, peer, "sending a snapshot", items, bytes, started);
        }
        // Let the live stream and the other links run between pieces.
        tokio::task::yield_now().await;
    }
    frame::encode(&Frame::SnapEnd { items, bytes }, &mut out);
    send.write_chunk(out.split().freeze()).await?;
    send.finish().map_err(|_| LinkError::StreamEnded)?;
    cl.sync_counters
        .snapshots_sent
        .fetch_add(1, Ordering::Relaxed);
    log_progress(cl, peer, "snapshot sent", items, bytes, started);
    Ok(())
}

/// Applies every snapshot `peer` streams to us, one at a time, for as long as the link
/// lives.
pub async fn receive_snapshots(
    cl: &Cluster,
    peer: &str,
    their_run: RunId,
    conn: &quinn::Connection,
) -> Result<(), LinkError> {
    loop {
        let recv = conn.accept_uni().await?;
        receive_one(cl, peer, their_run, recv).await?;
    }
}

/// Receives and applies one snapshot stream. Applying a piece runs on the link's thread
/// between reads; a separate applier thread was tried and made a 1M-item join slower on
/// two cores (1.57 s against 0.9 s: three busy threads on two cores, and a handoff).
async fn receive_one(
    cl: &Cluster,
    peer: &str,
    their_run: RunId,
    mut recv: quinn::RecvStream,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut begun = false;
    let mut log_seq = 0;
    // When this snapshot answers our reconciliation request: its token, the bounds to
    // drop by, and the hash of every key it carries (items and tombstones).
    let mut reconciling: Option<(u64, Bounds, HashSet<u64>)> = None;
    // Marks the peer's log position as not held until the snapshot is complete.
    let mut arriving: Option<Arriving> = None;
    let (mut items, mut bytes) = (0u64, 0u64);
    let mut progress = Instant::now();
    loop {
        while let Some(f) = frame::decode(&mut buf)? {
            match f {
                Frame::SnapBegin(b) if !begun => {
                    begun = true;
                    log_seq = b.log_seq;
                    tracing::info!(node = %cl.name, %peer, items = b.items, "receiving a snapshot");
                    cl.store.reserve_entries(b.items);
                    arriving = Some(Arriving::new(cl.peer_counters(peer)));
                    if let Some(bounds) = cl.reconciler().snapshot_began(peer, b.token) {
                        reconciling = Some((b.token, bounds, HashSet::new()));
                    }
                    cl.snapshot_began(peer, &b);
                }
                Frame::SnapItems(list) if begun => {
                    if let Some((_, _, held)) = &mut reconciling {
                        held.extend(list.iter().map(|m| cl.store.hash(&m.key)));
                    }
                    let now = cl.hlc.clock().now_secs();
                    let (stats, done) =
                        apply_mutations(&cl.store, &cl.hlc, &list, cl.max_skew, now);
                    cl.counters.add(&stats);
                    if done < list.len() {
                        // Not applied, so the snapshot cannot count as held: the link
                        // closes and the snapshot is taken again once reconnected.
                        return Err(LinkError::Clock(format!(
                            "a snapshot item of version {} is ahead of this node's clock by \
                             more than --max-clock-skew",
                            list[done].version
                        )));
                    }
                    items += list.len() as u64;
                    if progress.elapsed() >= PROGRESS_EVERY {
                        progress = Instant::now();
                        log_progress(cl, peer, "receiving a snapshot", items, bytes, started);
                    }
                }
                Frame::SnapEnd { items: sent, .. } if begun => {
                    if sent != items {
                        return Err(LinkError::Protocol(format!(
                            "a snapshot of {sent} items brought {items}"
                        )));
                    }
                    let c = &cl.sync_counters;
                    c.snapshots_received.fetch_add(1, Ordering::Relaxed);
                    c.snapshot_items_received
                        .fetch_add(items, Ordering::Relaxed);
                    c.snapshot_bytes_received
                        .fetch_add(bytes, Ordering::Relaxed);
                    log_progress(cl, peer, "snapshot applied", items, bytes, started);
                    if let Some((token, bounds, held)) = reconciling.take() {
                        reconcile(cl, peer, token, &bounds, &held);
                    }
                    // The snapshot holds the peer's own writes up to `log_seq`: a later
                    // reconnect (or a restart from the state file) asks only for the rest.
                    cl.peer_counters(peer).merge_have(their_run, log_seq);
                    if let Some(a) = arriving.take() {
                        a.complete();
                    }
                    cl.plan().snapshot_applied(peer);
                    cl.sync_step();
                    return Ok(());
                }
                other => {
                    return Err(LinkError::Protocol(format!(
                        "unexpected frame on a snapshot stream: {}",
                        frame_name(&other)
                    )))
                }
            }
        }
        match recv.read_chunk(1 << 20, true).await? {
            Some(chunk) => {
                bytes += chunk.bytes.len() as u64;
                buf.extend_from_slice(&chunk.bytes);
            }
            None => return Err(LinkError::StreamEnded),
        }
    }
}

/// Drops the keys the peer's complete snapshot lacks and that it provably held once (so
/// they are gone there: deleted, evicted or expired), and ends the reconciliation.
fn reconcile(cl: &Cluster, peer: &str, token: u64, bounds: &Bounds, held: &HashSet<u64>) {
    let now = cl.hlc.clock().now_secs();
    let dropped = cl.store.forget_where(now, |hash, version| {
        !held.contains(&hash) && bounds.drops(version)
    });
    cl.sync_counters
        .reconciled_drops
        .fetch_add(dropped, Ordering::Relaxed);
    cl.reconciler().done(peer, token);
    tracing::info!(node = %cl.name, %peer, dropped, "reconciled with the peer: dropped the keys it no longer holds that it had held (deleted, evicted or expired while apart)");
}

/// A snapshot under way from a peer ([`super::PeerCounters`]'s gap): dropped without
/// [`Arriving::complete`] (the stream or the link failed), it forgets the position.
struct Arriving(Option<std::sync::Arc<super::PeerCounters>>);

impl Arriving {
    fn new(counters: std::sync::Arc<super::PeerCounters>) -> Self {
        counters.snapshot_arriving();
        Arriving(Some(counters))
    }

    fn complete(mut self) {
        if let Some(c) = self.0.take() {
            c.snapshot_ended(true);
        }
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.snapshot_ended(false);
        }
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::SnapBegin(_) => "a second snapshot start",
        Frame::SnapItems(_) => "items before the snapshot start",
        Frame::SnapEnd { .. } => "an end before the snapshot start",
        _ => "a live-stream frame",
    }
}

fn log_progress(cl: &Cluster, peer: &str, what: &str, items: u64, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { items as f64 / secs } else { 0.0 };
    tracing::info!(
        node = %cl.name,
        %peer,
        items,
        bytes,
        elapsed_ms = (secs * 1000.0) as u64,
        items_per_s = rate as u64,
        "{what}"
    );
}
