//! Snapshots in the core (DESIGN.md section 6): the walk that sends every live item and
//! tombstone of our store, piece by piece, and the receiving side that applies a peer's,
//! holds its gap, and reconciles when the snapshot answers a reconciliation request.
//!
//! The walk takes one shard lock per piece of [`PIECE_BYTES`], so clients never wait
//! long; the caller paces it (QUIC flow control in production). The first frame carries
//! our flushes and what we had applied of every other origin's log before the walk began:
//! a node taking its initial sync from us then asks those origins for the rest from there.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::{LinkId, PeerError, Replica};
use crate::cluster::reconcile::Bounds;
use crate::replication::apply::{apply_flush_state, apply_mutations};
use crate::replication::frame::{self, Frame, SnapBegin, SnapItemsWriter};
use crate::store::ExportCursor;

/// Bytes of keys and values copied per shard lock hold, and so per items frame.
const PIECE_BYTES: usize = 64 << 10;
/// How often a long snapshot logs its progress.
const PROGRESS_EVERY_MS: u64 = 1000;

/// Our snapshot under way to a peer.
pub(crate) struct Walk {
    why: &'static str,
    token: u64,
    /// A catch-up walk carries only this origin's entries (see [`super::catch_up`]).
    origin: Option<u16>,
    /// `None` before the first frame; then where the walk stands (`None` inside: done).
    cursor: Option<Option<ExportCursor>>,
    /// Unix seconds when the walk began (expired items are left out as of then).
    now: u32,
    items: u64,
    bytes: u64,
    started_ms: u64,
    progress_ms: u64,
}

/// The next piece of a snapshot to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapOut {
    /// Open a new snapshot stream first.
    pub open: bool,
    pub data: Bytes,
    /// The snapshot ends with this piece: finish the stream.
    pub finish: bool,
}

/// A peer's snapshot being received.
pub(crate) struct Incoming {
    log_seq: u64,
    /// The token of our catch-up request it answers: then it carries one origin's entries
    /// only, and says nothing of the sender's log nor fills a gap.
    catch_up: Option<u64>,
    /// When it answers our reconciliation request: its token, the bounds to drop by, and
    /// the hash of every key it carries (items and tombstones).
    reconciling: Option<(u64, Bounds, HashSet<u64>)>,
    items: u64,
    bytes: u64,
    started_ms: u64,
    progress_ms: u64,
}

impl Incoming {
    /// Whether it is a full snapshot, which holds the sender's position as a gap until
    /// complete.
    pub(super) fn fills_gap(&self) -> bool {
        self.catch_up.is_none()
    }
}

impl Replica {
    /// Starts a full snapshot walk to the peer on `link` (after the catch-up walk under
    /// way, if one is).
    pub(super) fn start_walk(&mut self, link: LinkId, why: &'static str, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(&link) else {
            return;
        };
        if s.walk.is_some() {
            s.full_pending = Some(why);
            return;
        }
        let token = s.token;
        self.begin_walk(link, why, token, None, now_ms);
    }

    /// Starts what is due when no walk runs: a full snapshot put off, else the peer's next
    /// catch-up request.
    pub(super) fn next_walk(&mut self, link: LinkId, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(&link) else {
            return;
        };
        if s.walk.is_some() {
            return;
        }
        if let Some(why) = s.full_pending.take() {
            let token = s.token;
            self.begin_walk(link, why, token, None, now_ms);
        } else if let Some((origin, token)) = s.catch_ups.pop_front() {
            let why = "catching it up with a restarted origin";
            self.begin_walk(link, why, token, Some(origin), now_ms);
        }
    }

    fn begin_walk(
        &mut self,
        link: LinkId,
        why: &'static str,
        token: u64,
        origin: Option<u16>,
        now_ms: u64,
    ) {
        let Some(s) = self.sessions.get_mut(&link) else {
            return;
        };
        s.walk = Some(Walk {
            why,
            token,
            origin,
            cursor: None,
            now: (now_ms / 1000) as u32,
            items: 0,
            bytes: 0,
            started_ms: now_ms,
            progress_ms: now_ms,
        });
        self.serving += 1;
        self.status_gen += 1;
        self.wake = true;
    }

    /// The next piece of the snapshot being sent on `link`, if one is under way.
    pub fn poll_snapshot(&mut self, link: LinkId, now_ms: u64) -> Option<SnapOut> {
        let positions = self.positions();
        let s = self.sessions.get_mut(&link)?;
        let w = s.walk.as_mut()?;
        let mut out = BytesMut::with_capacity(PIECE_BYTES + (16 << 10));
        let Some(cursor) = w.cursor.as_mut() else {
            if w.origin.is_none() && self.store.is_empty() {
                // A new cluster's nodes snapshot each other's empty stores as they meet:
                // nothing an operator needs to read (the counters in `stats` count them).
                tracing::debug!(node = %self.name, peer = %s.peer, "sending an empty snapshot: {}", w.why);
            } else if w.origin.is_none() {
                tracing::info!(node = %self.name, peer = %s.peer, items = self.store.len(), "sending a snapshot: {}", w.why);
            } else {
                tracing::debug!(node = %self.name, peer = %s.peer, origin = ?w.origin, "sending a catch-up");
            }
            // The positions first, then the walk: whatever the walk misses of those
            // origins, the receiver asks them for.
            let begin = SnapBegin {
                log_seq: self.outbox.last_seq(),
                items: self.store.len(),
                flush: self.store.flush_state(w.now),
                positions,
                token: w.token,
            };
            frame::encode(&Frame::SnapBegin(begin), &mut out);
            w.cursor = Some(Some(ExportCursor::default()));
            return Some(SnapOut {
                open: true,
                data: out.freeze(),
                finish: false,
            });
        };
        let origin = w.origin;
        let wanted =
            |e: &crate::store::Exported<'_>| origin.is_none_or(|o| e.version.node().get() == o);
        while let Some(at) = cursor.take() {
            let mut piece = SnapItemsWriter::begin(&mut out);
            *cursor = self.store.export(at, w.now, PIECE_BYTES, |e| {
                if wanted(&e) {
                    piece.push(&mut out, &e)
                }
            });
            if piece.count() == 0 {
                out.clear();
                continue;
            }
            w.items += u64::from(piece.count());
            piece.finish(&mut out);
            w.bytes += out.len() as u64;
            if now_ms >= w.progress_ms + PROGRESS_EVERY_MS {
                w.progress_ms = now_ms;
                log_progress(
                    &self.name,
                    &s.peer,
                    "sending a snapshot",
                    w.items,
                    w.bytes,
                    now_ms - w.started_ms,
                );
            }
            return Some(SnapOut {
                open: false,
                data: out.freeze(),
                finish: false,
            });
        }
        let (items, bytes) = (w.items, w.bytes);
        let full = origin.is_none();
        if full || items > 0 {
            log_progress(
                &self.name,
                &s.peer,
                "snapshot sent",
                items,
                bytes,
                now_ms - w.started_ms,
            );
        }
        frame::encode(&Frame::SnapEnd { items, bytes }, &mut out);
        s.walk = None;
        let again = full && s.plan.snapshot_done();
        let peer = s.peer.clone();
        let sent = if full {
            &self.sync_counters.snapshots_sent
        } else {
            &self.sync_counters.catch_ups_sent
        };
        sent.fetch_add(1, Ordering::Relaxed);
        self.serving = self.serving.saturating_sub(1);
        self.status_gen += 1;
        self.wake = true;
        if again {
            self.start_walk(
                link,
                "writes were dropped from the log during the last one",
                now_ms,
            );
        } else if full {
            if let Some(p) = self.table.peer_mut(&peer) {
                p.needs_resync = false;
            }
        }
        self.next_walk(link, now_ms);
        Some(SnapOut {
            open: false,
            data: out.freeze(),
            finish: true,
        })
    }

    /// A frame of a snapshot stream from the peer on `link` arrived (`wire_bytes` long).
    /// Returns whether the snapshot is complete (the stream ends there).
    pub fn handle_snapshot(
        &mut self,
        link: LinkId,
        frame: Frame,
        wire_bytes: usize,
        now_ms: u64,
    ) -> Result<bool, PeerError> {
        let Some(s) = self.sessions.get_mut(&link) else {
            return Ok(false);
        };
        let peer = s.peer.clone();
        self.wake = true;
        if let Some(inc) = s.incoming.as_mut() {
            inc.bytes += wire_bytes as u64;
        }
        match (frame, s.incoming.is_some()) {
            (Frame::SnapBegin(b), false) if self.catch_ups.answers(&peer, b.token) => {
                tracing::debug!(node = %self.name, %peer, "receiving a catch-up");
                s.incoming = Some(Incoming {
                    log_seq: b.log_seq,
                    catch_up: Some(b.token),
                    reconciling: None,
                    items: 0,
                    bytes: wire_bytes as u64,
                    started_ms: now_ms,
                    progress_ms: now_ms,
                });
                let now = (now_ms / 1000) as u32;
                let flushes =
                    apply_flush_state(&self.store, &self.hlc, &b.flush, self.max_skew, now);
                self.counters.add(&flushes);
                log_flush_skew(&self.name, &peer, &flushes);
                Ok(false)
            }
            (Frame::SnapBegin(b), false) => {
                if b.items == 0 {
                    tracing::debug!(node = %self.name, %peer, "receiving an empty snapshot");
                } else {
                    tracing::info!(node = %self.name, %peer, items = b.items, "receiving a snapshot");
                }
                self.store.reserve_entries(b.items);
                // Until complete, the peer's position is not one this node holds.
                s.counters.snapshot_arriving();
                let reconciling = self
                    .reconciler
                    .snapshot_began(&peer, b.token)
                    .map(|bounds| (b.token, bounds, HashSet::new()));
                s.incoming = Some(Incoming {
                    log_seq: b.log_seq,
                    catch_up: None,
                    reconciling,
                    items: 0,
                    bytes: wire_bytes as u64,
                    started_ms: now_ms,
                    progress_ms: now_ms,
                });
                self.snapshot_began(&peer, &b, now_ms);
                Ok(false)
            }
            (Frame::SnapItems(list), true) => {
                let inc = s.incoming.as_mut().expect("matched");
                if let Some((_, _, held)) = &mut inc.reconciling {
                    held.extend(list.iter().map(|m| self.store.hash(&m.key)));
                }
                let now = (now_ms / 1000) as u32;
                let (stats, done) =
                    apply_mutations(&self.store, &self.hlc, &list, self.max_skew, now);
                self.counters.add(&stats);
                if done < list.len() {
                    // Not applied, so the snapshot cannot count as held: the link closes
                    // and the snapshot is taken again once reconnected.
                    return Err(PeerError::Clock(format!(
                        "a snapshot item of version {} is ahead of this node's clock by \
                         more than --max-clock-skew",
                        list[done].version
                    )));
                }
                inc.items += list.len() as u64;
                if now_ms >= inc.progress_ms + PROGRESS_EVERY_MS {
                    inc.progress_ms = now_ms;
                    let took = now_ms - inc.started_ms;
                    log_progress(
                        &self.name,
                        &peer,
                        "receiving a snapshot",
                        inc.items,
                        inc.bytes,
                        took,
                    );
                }
                Ok(false)
            }
            (Frame::SnapEnd { items: sent, .. }, true) => {
                let inc = s.incoming.take().expect("matched");
                if let Some(token) = inc.catch_up {
                    if sent != inc.items {
                        return Err(PeerError::Protocol(format!(
                            "a catch-up of {sent} items brought {}",
                            inc.items
                        )));
                    }
                    self.sync_counters
                        .catch_up_items_received
                        .fetch_add(inc.items, Ordering::Relaxed);
                    if inc.items > 0 {
                        let took = now_ms - inc.started_ms;
                        log_progress(
                            &self.name,
                            &peer,
                            "catch-up applied",
                            inc.items,
                            inc.bytes,
                            took,
                        );
                    }
                    self.catch_ups.answered(&peer, token);
                    return Ok(true);
                }
                if sent != inc.items {
                    s.counters.snapshot_ended(false);
                    return Err(PeerError::Protocol(format!(
                        "a snapshot of {sent} items brought {}",
                        inc.items
                    )));
                }
                let c = &self.sync_counters;
                c.snapshots_received.fetch_add(1, Ordering::Relaxed);
                c.snapshot_items_received
                    .fetch_add(inc.items, Ordering::Relaxed);
                c.snapshot_bytes_received
                    .fetch_add(inc.bytes, Ordering::Relaxed);
                let took = now_ms - inc.started_ms;
                log_progress(
                    &self.name,
                    &peer,
                    "snapshot applied",
                    inc.items,
                    inc.bytes,
                    took,
                );
                // The snapshot holds the peer's own writes up to `log_seq`: a later
                // reconnect (or a restart from the state file) asks only for the rest.
                let their_run = s.their_run;
                s.counters.merge_have(their_run, inc.log_seq);
                s.counters.snapshot_ended(true);
                if let Some((token, bounds, held)) = inc.reconciling {
                    self.reconcile(&peer, token, &bounds, &held, now_ms);
                }
                self.plan.snapshot_applied(&peer);
                self.sync_step(now_ms);
                self.entropy_soon(now_ms);
                Ok(true)
            }
            (other, _) => Err(PeerError::Protocol(format!(
                "unexpected frame on a snapshot stream: {}",
                frame_name(&other)
            ))),
        }
    }

    /// A snapshot's first frame arrived from `peer`: its flushes are taken on (a set
    /// union: a pending flush here stays), and when it is the initial sync's snapshot,
    /// its positions become ours.
    fn snapshot_began(&mut self, peer: &str, begin: &SnapBegin, now_ms: u64) {
        let now = (now_ms / 1000) as u32;
        let flushes = apply_flush_state(&self.store, &self.hlc, &begin.flush, self.max_skew, now);
        self.counters.add(&flushes);
        log_flush_skew(&self.name, peer, &flushes);
        if self.plan.is_donor_snapshot(peer) {
            // Taken as they are, even below what we had: after a donor lost halfway, the
            // next donor's positions are the ones its snapshot makes true, and the other
            // peers resending from there is harmless. Only for members: a peer cannot make
            // us keep positions (and counters) for names it invents.
            self.donor_positions.clear();
            for p in &begin.positions {
                if p.origin == self.name || p.origin == peer {
                    continue;
                }
                if self.table.peer(&p.origin).is_none() {
                    if self.donor_positions.len() < crate::cluster::peers::MAX_MEMBERS {
                        self.donor_positions
                            .insert(p.origin.clone(), (p.run_id, p.seq));
                    }
                    continue;
                }
                // An origin already streaming to us in a newer run than the donor knew:
                // its stream position stays; what the donor did not have of its previous
                // run, the other members may (unless that run ended cleanly).
                let linked = self.sessions.values().find(|s| s.peer == p.origin);
                match linked {
                    Some(s) if s.their_run != p.run_id => {
                        if !s.their_clean {
                            let node_id = s.their_node.get();
                            self.catch_ups.origin_restarted(&p.origin, node_id);
                        }
                    }
                    _ => self.peer_counters(&p.origin).set_have(p.run_id, p.seq),
                }
            }
            // A member the donor claims no position of (it never heard of it, or was
            // still catching up with it): only the members can say what it wrote.
            let unclaimed: Vec<(String, u16)> = self
                .table
                .peers()
                .filter(|(n, _)| *n != peer && !begin.positions.iter().any(|p| &p.origin == *n))
                .map(|(n, p)| (n.clone(), p.node_id))
                .collect();
            for (origin, node_id) in unclaimed {
                self.catch_ups.ensure(&origin, node_id);
            }
            self.ask_catch_ups();
        }
        let actions = self.plan.snapshot_began(peer);
        self.act(actions);
    }

    /// Drops the keys the peer's complete snapshot lacks and that it provably held once
    /// (so they are gone there: deleted, evicted or expired), and ends the reconciliation.
    fn reconcile(
        &mut self,
        peer: &str,
        token: u64,
        bounds: &Bounds,
        held: &HashSet<u64>,
        now_ms: u64,
    ) {
        let now = (now_ms / 1000) as u32;
        let dropped = self.store.forget_where(now, |hash, version| {
            !held.contains(&hash) && bounds.drops(version)
        });
        self.sync_counters
            .reconciled_drops
            .fetch_add(dropped, Ordering::Relaxed);
        self.reconciler.done(peer, token);
        tracing::info!(node = %self.name, %peer, dropped, "reconciled with the peer: dropped the keys it no longer holds that it had held (deleted, evicted or expired while apart)");
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

/// The end of a snapshot or catch-up; an empty one only at debug level.
fn log_progress(node: &str, peer: &str, what: &str, items: u64, bytes: u64, took_ms: u64) {
    let rate = (items * 1000).checked_div(took_ms).unwrap_or(0);
    if items == 0 {
        tracing::debug!(%node, %peer, items, bytes, elapsed_ms = took_ms, "{what}");
    } else {
        tracing::info!(%node, %peer, items, bytes, elapsed_ms = took_ms, items_per_s = rate, "{what}");
    }
}

/// A snapshot's flushes refused for being issued by a clock too far ahead.
fn log_flush_skew(node: &str, peer: &str, stats: &crate::replication::apply::ApplyStats) {
    if stats.clock_skew_rejects > 0 {
        tracing::warn!(%node, %peer, flushes = stats.clock_skew_rejects, "refusing a snapshot's flushes issued by a clock ahead by more than --max-clock-skew (counted in clock_skew_rejects)");
    }
}
