//! The live stream in the core: what a peer's frames change (its batches applied through
//! the merge, its acknowledgements, positions and requests), and what we send it next.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::{LinkId, PeerError, Replica};
use crate::cluster::send::Position as SendPosition;
use crate::replication::apply::apply_entries;
use crate::replication::frame::{self, Frame};
use crate::replication::log::{Entry, Op, RunId};

/// About how many bytes of log entries go in one batch frame.
const BATCH_BYTES: usize = 64 << 10;
/// The most often an acknowledgement is sent (a busy stream is acknowledged at this pace;
/// an idle one once, this long after its last batch at the latest), unless the peer's
/// clients wait for acknowledgements (`HELLO_PROMPT_ACKS`): it then gets one per applied
/// batch, as prompt as the stream itself and never more frequent than its batches.
pub const ACK_INTERVAL_MS: u64 = 10;
/// How often a write refused by the clock-skew guard is retried, and for how long before
/// the link is closed (its next handshake then names the clock offset, or succeeds).
pub const SKEW_RETRY_MS: u64 = 200;
pub const SKEW_GIVE_UP_MS: u64 = 30_000;

/// Whether the caller may go on feeding the live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A write was refused by the skew guard: read nothing more from the stream; call
    /// [`Replica::retry_stalled`] at [`Replica::live_deadline`].
    Stalled,
}

/// The rest of a batch that a write refused by the skew guard holds up.
pub(crate) struct Stall {
    rest: Vec<Entry>,
    since_ms: u64,
    next_ms: u64,
}

/// The next thing to write on the live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Frame(Frame),
    /// Log entries of our run, to encode as one batch frame (by the caller, which can
    /// write large values without copying them).
    Batch {
        run_id: RunId,
        entries: Vec<Entry>,
    },
}

impl Transmit {
    /// Appends what goes on the wire for `self` to `chunks`: a batch's large values as
    /// chunks of their own (not copied), a frame over the frame limit cut into parts.
    /// `scratch` is working space, left empty.
    pub fn encode(self, scratch: &mut BytesMut, chunks: &mut Vec<Bytes>) {
        scratch.clear();
        match self {
            Transmit::Frame(f) => {
                frame::encode(&f, scratch);
                // An anti-entropy repair may carry a value of any size.
                let mut own = vec![scratch.split().freeze()];
                frame::split_into_parts(&mut own);
                chunks.append(&mut own);
            }
            Transmit::Batch { run_id, entries } => {
                let mut own = Vec::new();
                frame::encode_batch_chunks(run_id, &entries, scratch, &mut own);
                frame::split_into_parts(&mut own);
                chunks.append(&mut own);
            }
        }
    }
}

impl Replica {
    /// A frame of the peer's live stream arrived on `link`.
    pub fn handle_live(
        &mut self,
        link: LinkId,
        frame: Frame,
        now_ms: u64,
    ) -> Result<Flow, PeerError> {
        let Some(s) = self.sessions.get(&link) else {
            return Ok(Flow::Continue);
        };
        let (peer, their_run, their_node) = (s.peer.clone(), s.their_run, s.their_node);
        self.wake = true;
        match frame {
            Frame::Batch { run_id, entries } => {
                if run_id != their_run {
                    return Err(PeerError::Protocol(format!(
                        "a batch of run {} on a stream of run {}",
                        run_id.0, their_run.0
                    )));
                }
                // A peer sends only its own writes: a version of another origin on its
                // stream would let it forge (or replay) anyone's writes.
                if let Some(e) = entries
                    .iter()
                    .find(|e| e.mutation.version.node() != their_node)
                {
                    return Err(PeerError::Protocol(format!(
                        "a write of node id {} on the stream of node id {}",
                        e.mutation.version.node().get(),
                        their_node.get()
                    )));
                }
                return Ok(self.apply_batch(link, entries, now_ms, now_ms));
            }
            Frame::Ack { run_id, seq } => {
                if run_id == self.outbox.run_id() {
                    let c = &self.sessions[&link].counters;
                    // A peer cannot have more than we sent.
                    let seq = seq.min(c.sent_seq.load(Ordering::Relaxed));
                    c.acked_seq.fetch_max(seq, Ordering::Relaxed);
                    self.count_ack(&peer, seq);
                    if let Some(v) = self.outbox.acked_bound(seq) {
                        self.reconciler.acked(&peer, their_run, v);
                    }
                }
            }
            Frame::Members(list) => {
                let (learned, clashes) = self.table.learn(&list);
                for m in clashes {
                    tracing::error!(node = %self.name, member = %m.name, node_id = m.node_id, "a member uses a node id that is already taken; give each node a distinct --node-id");
                }
                if learned {
                    self.members_gen += 1;
                    self.events.push_back(super::Event::Dial);
                }
            }
            Frame::Status { ready, load } => {
                self.plan.status(&peer, ready, load);
                // Its initial sync is over: what it acknowledged so far now counts.
                let acked = self.sessions[&link]
                    .counters
                    .acked_seq
                    .load(Ordering::Relaxed);
                self.count_ack(&peer, acked);
                self.sync_step(now_ms);
            }
            Frame::Start { run_id, seq } => {
                // Clamped like an acknowledgement: a peer cannot have more than exists.
                let seq = seq.min(self.outbox.last_seq());
                if run_id == self.outbox.run_id() {
                    let c = &self.sessions[&link].counters;
                    c.acked_seq.store(seq, Ordering::Relaxed);
                    self.count_ack(&peer, seq);
                }
                // A Start comes after the peer took a donor's snapshot: it has what we held.
                let p = SendPosition {
                    run: run_id,
                    seq,
                    lacks_older: false,
                };
                self.reposition(link, p, now_ms);
            }
            Frame::SnapshotRequest { token } => {
                let last = self.outbox.last_seq();
                let s = self.sessions.get_mut(&link).expect("looked up above");
                s.token = token;
                if s.plan.snapshot_requested(last) {
                    self.start_walk(link, "it asked for one", now_ms);
                }
            }
            Frame::CatchUp { origin, token } => {
                let s = self.sessions.get_mut(&link).expect("looked up above");
                if s.catch_ups.len() >= super::CTL_QUEUE {
                    return Err(PeerError::Protocol(
                        "the peer asks for catch-ups faster than they are sent".into(),
                    ));
                }
                s.catch_ups.push_back((origin, token));
                self.next_walk(link, now_ms);
            }
            Frame::Synced { snapshots } => {
                tracing::debug!(node = %self.name, %peer, snapshots, "peer says we are synced with it");
                self.plan.synced(&peer, snapshots);
                self.sync_step(now_ms);
            }
            f @ (Frame::DigestRequest { .. }
            | Frame::Digest(_)
            | Frame::KeysRequest { .. }
            | Frame::Keys { .. }
            | Frame::RepairRequest { .. }
            | Frame::Repair { .. }) => self.handle_entropy(link, f, now_ms)?,
            Frame::Hello(_) => return Err(PeerError::Protocol("a second hello".into())),
            Frame::SnapBegin(_) | Frame::SnapItems(_) | Frame::SnapEnd { .. } => {
                return Err(PeerError::Protocol(
                    "a snapshot frame on the live stream".into(),
                ))
            }
        }
        Ok(Flow::Continue)
    }

    /// Applies a batch of the peer's writes; one refused by the clock-skew guard stalls
    /// the stream there (what came before it is held and acknowledged, nothing after it
    /// is applied) until [`Replica::retry_stalled`] gets it through, so that nothing is
    /// silently skipped.
    fn apply_batch(
        &mut self,
        link: LinkId,
        entries: Vec<Entry>,
        since_ms: u64,
        now_ms: u64,
    ) -> Flow {
        let now = (now_ms / 1000) as u32;
        let (stats, done) = apply_entries(&self.store, &self.hlc, &entries, self.max_skew, now);
        self.counters.add(&stats);
        let s = self.sessions.get_mut(&link).expect("the caller checked");
        if done < entries.len() {
            // One line per batch (and retry), not per write: a broken clock sends many.
            tracing::warn!(node = %self.name, peer = %s.peer, seq = entries[done].seq, "refusing replicated writes from a peer whose clock is ahead by more than --max-clock-skew (counted in clock_skew_rejects; -v says by how much)");
        }
        if done > 0 {
            s.counters.set_have(s.their_run, entries[done - 1].seq);
            let newest = entries[..done]
                .iter()
                .filter(|e| !matches!(e.mutation.op, Op::Flush { .. }))
                .map(|e| e.mutation.version)
                .max();
            if let Some(v) = newest {
                let (peer, run) = (s.peer.clone(), s.their_run);
                self.reconciler.applied(&peer, run, v);
            }
        }
        let s = self.sessions.get_mut(&link).expect("the caller checked");
        if done == entries.len() {
            s.stalled = None;
            return Flow::Continue;
        }
        s.stalled = Some(Stall {
            rest: entries[done..].to_vec(),
            since_ms,
            next_ms: now_ms + SKEW_RETRY_MS,
        });
        Flow::Stalled
    }

    /// Retries a stalled batch; a stall that outlasts [`SKEW_GIVE_UP_MS`] ends the link.
    pub fn retry_stalled(&mut self, link: LinkId, now_ms: u64) -> Result<Flow, PeerError> {
        let Some(s) = self.sessions.get_mut(&link) else {
            return Ok(Flow::Continue);
        };
        let Some(stall) = s.stalled.take() else {
            return Ok(Flow::Continue);
        };
        if now_ms < stall.next_ms {
            s.stalled = Some(stall);
            return Ok(Flow::Stalled);
        }
        if now_ms.saturating_sub(stall.since_ms) >= SKEW_GIVE_UP_MS {
            return Err(PeerError::Clock(format!(
                "{}'s write {} has been ahead of this node's clock by more than \
                 --max-clock-skew for {} s",
                s.peer,
                stall.rest[0].mutation.version,
                SKEW_GIVE_UP_MS / 1000
            )));
        }
        self.wake = true;
        Ok(self.apply_batch(link, stall.rest, stall.since_ms, now_ms))
    }

    /// The peer stands at `p` in our log: go on from there, or snapshot.
    pub(super) fn reposition(&mut self, link: LinkId, p: SendPosition, now_ms: u64) {
        let (ours, last, oldest) = (
            self.outbox.run_id(),
            self.outbox.last_seq(),
            self.outbox.oldest_seq(),
        );
        let Some(s) = self.sessions.get_mut(&link) else {
            return;
        };
        if s.plan.position(p, ours, last, oldest) {
            self.start_walk(link, OFF_THE_LOG, now_ms);
        } else if let Some(from) = s.plan.cursor().filter(|&from| from < last) {
            // Logged as a snapshot is: what the peer gets, and why this way.
            tracing::info!(node = %self.name, peer = %s.peer, writes = last - from, from_seq = from + 1, "sending a delta: the writes the peer lacks are still in this node's replication log");
        }
    }

    /// The next frame to write on `link`'s live stream, or `None` until something changes
    /// (the log grows, a peer frame arrives, [`Replica::live_deadline`] passes).
    pub fn poll_live(&mut self, link: LinkId, now_ms: u64) -> Option<Transmit> {
        let members_gen = self.members_gen;
        let status_gen = self.status_gen;
        let s = self.sessions.get_mut(&link)?;
        if s.members_sent != members_gen {
            s.members_sent = members_gen;
            return Some(Transmit::Frame(Frame::Members(self.table.members())));
        }
        if s.status_sent != status_gen {
            s.status_sent = status_gen;
            let ready = self.plan.phase() == crate::cluster::sync::Phase::Ready;
            let load = self.serving;
            return Some(Transmit::Frame(Frame::Status { ready, load }));
        }
        let (run, have) = s.counters.have();
        if have > s.acked && now_ms >= s.last_ack_ms + s.ack_interval_ms && s.counters.holds_have()
        {
            s.acked = have;
            s.last_ack_ms = now_ms;
            return Some(Transmit::Frame(Frame::Ack {
                run_id: run,
                seq: have,
            }));
        }
        if let Some(snapshots) = s.plan.synced_due() {
            return Some(Transmit::Frame(Frame::Synced { snapshots }));
        }
        if let Some(f) = s.outgoing.pop_front() {
            return Some(Transmit::Frame(f));
        }
        if let Some(f) = self.poll_entropy(link) {
            return Some(Transmit::Frame(f));
        }
        let s = self.sessions.get_mut(&link)?;
        let cursor = s.plan.cursor()?;
        match self.outbox.read(cursor, BATCH_BYTES) {
            Err(lagged) => {
                self.fell_behind(link, cursor, lagged.oldest);
                let s = self.sessions.get_mut(&link)?;
                if s.plan.lagged(lagged.oldest) {
                    self.start_walk(link, "it fell behind the replication log", now_ms);
                }
                self.poll_live(link, now_ms)
            }
            Ok(entries) if !entries.is_empty() => {
                let last = entries.last().map_or(cursor, |e| e.seq);
                s.plan.sent(last);
                s.counters.sent_seq.store(last, Ordering::Relaxed);
                Some(Transmit::Batch {
                    run_id: self.outbox.run_id(),
                    entries,
                })
            }
            Ok(_) => None,
        }
    }

    /// What a link's live sender waits for when [`Replica::poll_live`] has nothing: log
    /// entries beyond this sequence (`None`: the peer holds our stream), and a time.
    pub fn live_wait(&self, link: LinkId) -> (Option<u64>, Option<u64>) {
        let Some(s) = self.sessions.get(&link) else {
            return (None, None);
        };
        let ack_due = (s.counters.have().1 > s.acked && s.counters.holds_have())
            .then_some(s.last_ack_ms + s.ack_interval_ms);
        (s.plan.cursor(), ack_due)
    }

    /// When the link's stalled batch is to be retried, if one is stalled.
    pub fn live_deadline(&self, link: LinkId) -> Option<u64> {
        self.sessions
            .get(&link)?
            .stalled
            .as_ref()
            .map(|s| s.next_ms)
    }

    fn fell_behind(&mut self, link: LinkId, cursor: u64, oldest: u64) {
        self.counters.resyncs_needed.fetch_add(1, Ordering::Relaxed);
        let peer = self.sessions[&link].peer.clone();
        if let Some(p) = self.table.peer_mut(&peer) {
            p.needs_resync = true;
        }
        tracing::warn!(
            node = %self.name,
            %peer,
            cursor,
            oldest,
            "peer fell behind the replication log (raise --repl-backlog): it gets every write still in the log and a snapshot for the rest"
        );
    }
}

/// Why a snapshot follows a position the log does not reach back to.
const OFF_THE_LOG: &str = "its position is older than this node's replication log";
