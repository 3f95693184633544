//! The replica core, sans-IO: every decision of the cluster that matters for convergence,
//! in plain types with time passed in (DESIGN.md sections 5 and 6; STYLE.md point 1).
//!
//! The core never touches a socket, a task or the system clock. A connection to a peer is
//! an abstract link ([`LinkId`]) carrying one ordered live stream each way and, beside it,
//! snapshot streams (one at a time per direction). The caller feeds it what arrives and
//! asks it what to send:
//!
//! ```text
//!   hello() ──► peer            peer's hello ──► link_up()  (or a Refusal to close with)
//!   poll_live() ──► live stream ──► peer      peer's live frames ──► handle_live()
//!   poll_snapshot() ──► snapshot streams      peer's snapshot frames ──► handle_snapshot()
//!   tick(now)  (timers)          link_down()  (the connection ended)
//!   poll_event() ──► open the client port, close a connection, wake the dialer
//! ```
//!
//! The same code runs over QUIC in production ([`super::link`] moves the bytes) and over
//! in-memory links in the simulator (`tests/simulator`), which checks the contract of
//! DESIGN.md section 0 under faults, deterministically.
//!
//! What the core decides: who resyncs from whom and how ([`super::sync::SyncPlan`], the
//! per-link [`super::send::SendPlan`]), what a position claims (nothing while a gap-filling
//! snapshot arrives), what reconciliation drops ([`super::reconcile`]), what a peer's frame
//! may change (its own writes only, positions clamped), when a write refused by the skew
//! guard stalls its stream.

mod admit;
mod catch_up;
mod entropy;
mod live;
mod members;
mod session;
mod walk;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::acks::AckQuorum;
use super::counters::{ClusterCounters, PeerCounters, SyncCounters};
use super::outbox::Outbox;
use super::peers::PeerTable;
use super::reconcile::Reconciler;
use super::sync::{Action, Phase, ReadyReason, SyncPlan};
use crate::clock::{Hlc, NodeId, Version};
use crate::replication::frame::{Frame, Position};
use crate::replication::log::RunId;
use crate::store::Store;
pub use admit::{Connection, LinkUp, Refusal};
pub use entropy::{Entropy, BUCKETS_PER_ROUND, BUSY_MS, LIST_BYTES, REPAIR_BYTES};
pub use live::{Flow, Transmit};
pub use members::MemberView;
use session::Session;
pub use walk::SnapOut;

/// The sequence of a node's own position (in its state file) when every member
/// acknowledged every write of the run.
pub const DRAINED: u64 = u64::MAX;

/// A connection to a peer, as the caller numbers them (unique for the core's lifetime).
pub type LinkId = u64;

/// Application close codes on peer connections.
pub const CLOSE_DUPLICATE: u32 = 2;
pub const CLOSE_REFUSED: u32 = 3;
pub const CLOSE_PROTOCOL: u32 = 4;
/// The peer is shutting down gracefully: not a failure.
pub const CLOSE_LEAVING: u32 = 5;
/// Refused on clocks (further off than `--max-clock-skew`): the refused side counts the
/// disagreement too (see [`Replica::clock_refused_by`]). A release before it sends
/// [`CLOSE_REFUSED`] for this.
pub const CLOSE_CLOCK: u32 = 6;
/// Membership says the peer restarted: the connection is to its previous process.
pub const CLOSE_RESTARTED: u32 = 7;

/// How many of our own control frames (snapshot requests, start positions) a link may
/// have queued: the sync plan sends a handful; more means a bug, logged and dropped.
const CTL_QUEUE: usize = 64;

/// What a peer did that ends its link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Clock(String),
}

/// What the caller must do, beside sending what the polls return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node may serve clients (once).
    Ready(ReadyReason),
    /// Close this connection (replaced by a newer one) with this code and reason.
    Close {
        link: LinkId,
        code: u32,
        reason: String,
    },
    /// A member was learned or lost: dial what is due.
    Dial,
}

/// The settings the core needs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub name: String,
    pub node_id: NodeId,
    /// `--join` addresses.
    pub seeds: Vec<String>,
    pub max_skew: Duration,
    pub tombstone_ttl_ms: u64,
    pub join_timeout_ms: u64,
    pub repl_backlog: usize,
    /// Anti-entropy's timing ([`entropy`]); a period of 0 turns it off.
    pub entropy: Entropy,
    /// `--remove-down-after`: a member down this long is forgotten (see
    /// [`super::peers::MemberState`]).
    pub remove_down_after_ms: u64,
}

impl From<&crate::config::ClusterConfig> for ReplicaConfig {
    fn from(c: &crate::config::ClusterConfig) -> Self {
        ReplicaConfig {
            name: c.node_name.clone(),
            node_id: c.node_id,
            seeds: c.join.iter().map(|p| p.to_string()).collect(),
            max_skew: c.max_clock_skew,
            tombstone_ttl_ms: u64::from(c.tombstone_ttl) * 1000,
            join_timeout_ms: c.join_timeout.as_millis() as u64,
            repl_backlog: c.repl_backlog,
            entropy: Entropy::every(c.anti_entropy_period.as_millis() as u64),
            remove_down_after_ms: c.remove_down_after.as_millis() as u64,
        }
    }
}

/// How often a node compares its store with each peer's when nothing differs: frequent
/// enough that a write the stream missed is repaired within seconds (well within any
/// `--tombstone-ttl`, so that a missed delete is repaired before its tombstone may go),
/// rare enough that the digests (8 KiB per peer per round) cost nothing.
pub const DEFAULT_AE_PERIOD_MS: u64 = 10_000;

/// One node's replica core.
pub struct Replica {
    name: String,
    node_id: NodeId,
    store: Arc<Store>,
    hlc: Arc<Hlc>,
    outbox: Arc<Outbox>,
    max_skew: Duration,
    counters: Arc<ClusterCounters>,
    sync_counters: Arc<SyncCounters>,
    table: PeerTable<LinkId>,
    peer_counters: HashMap<String, Arc<PeerCounters>>,
    plan: SyncPlan,
    reconciler: Reconciler,
    /// Every version this run issues is above this one (told to peers in the hello).
    run_floor: Version,
    sessions: HashMap<LinkId, Session>,
    /// Bumped when the member list grows / when our readiness or load changes: every link
    /// tells its peer.
    members_gen: u64,
    status_gen: u64,
    /// Snapshots this node is serving (its load, as donors are chosen).
    serving: u16,
    events: VecDeque<Event>,
    /// Something changed that links may have to send: see [`Replica::take_wake`].
    wake: bool,
    /// The state file says our previous run's drain timed out: some of its writes may be
    /// only here, so every peer that has not heard from this run gets a full snapshot
    /// (a node's own writes come back to peers only that way; DESIGN.md section 6).
    push_own: bool,
    /// Started from a state file saved when every member had acknowledged every write of
    /// the previous run (told to peers in the hello: no catch-up needed).
    clean_start: bool,
    /// The run that wrote the state file this node started from, if the file says. A
    /// peer that applied a later run of ours proves the file stale (see
    /// [`Replica::link_up`]).
    file_run: Option<RunId>,
    catch_ups: catch_up::CatchUps,
    /// The initial sync donor's positions of origins that were not members yet when its
    /// snapshot began (the member list and the snapshot travel on different streams, so
    /// either may come first): taken when the origin becomes a member we say hello to, so
    /// it streams from there instead of sending a second snapshot. At most
    /// [`super::peers::MAX_MEMBERS`] entries.
    donor_positions: HashMap<String, (RunId, u64)>,
    /// Members whose clock we refused (further off than `--max-clock-skew`), and when we
    /// last did: see [`Replica::clock_outvoted`].
    clock_refused: HashMap<String, u64>,
    /// Whether the last tick found this node outvoted on time (logged on each change).
    outvoted: bool,
    entropy: Entropy,
    /// The last anti-entropy round's token (rounds are numbered per node).
    ae_tokens: u64,
    /// `--remove-down-after`, in ms.
    remove_down_after_ms: u64,
    /// How far N peers acknowledged our log (`--ack-replicas`).
    acks: AckQuorum,
}

/// How long a refusal on clocks counts against this node's clock: peers redial within
/// [`super::peers::BACKOFF_MAX_MS`], so a disagreement that lasts is renewed well within it.
pub const CLOCK_VOTE_MS: u64 = 30_000;

impl Replica {
    /// `positions`: what this node already has of each peer's log (from a state file),
    /// `None` for a node without data. `run_id` and `rng` are random in production and
    /// seeded in the simulator.
    pub fn new(
        cfg: &ReplicaConfig,
        store: Arc<Store>,
        hlc: Arc<Hlc>,
        positions: Option<Vec<Position>>,
        run_id: RunId,
        rng: u64,
    ) -> Replica {
        let now_ms = hlc.clock().now_ms();
        let plan = SyncPlan::new(
            positions.is_some(),
            !cfg.seeds.is_empty(),
            now_ms,
            cfg.join_timeout_ms,
            cfg.max_skew.as_millis() as u64,
        );
        let run_floor = hlc.tick();
        let mut r = Replica {
            name: cfg.name.clone(),
            node_id: cfg.node_id,
            outbox: Arc::new(Outbox::new(run_id, cfg.repl_backlog)),
            store,
            hlc,
            max_skew: cfg.max_skew,
            counters: Arc::default(),
            sync_counters: Arc::default(),
            table: PeerTable::new(&cfg.name, cfg.node_id.get(), cfg.seeds.clone(), rng),
            peer_counters: HashMap::new(),
            plan,
            reconciler: Reconciler::new(cfg.node_id, cfg.tombstone_ttl_ms),
            run_floor,
            sessions: HashMap::new(),
            members_gen: 1,
            status_gen: 1,
            serving: 0,
            events: VecDeque::new(),
            wake: false,
            push_own: false,
            clean_start: false,
            file_run: None,
            catch_ups: catch_up::CatchUps::default(),
            donor_positions: HashMap::new(),
            clock_refused: HashMap::new(),
            outvoted: false,
            entropy: cfg.entropy,
            ae_tokens: 0,
            remove_down_after_ms: cfg.remove_down_after_ms,
            acks: AckQuorum::default(),
        };
        let loaded = positions.is_some();
        for p in positions.into_iter().flatten() {
            if p.origin == r.name {
                // The run that wrote the file, and whether its drain was complete (see
                // `StateFile::save`; files of releases before 0.7 name themselves only
                // when it was not).
                r.file_run = Some(p.run_id);
                r.push_own = p.seq != DRAINED;
            } else {
                r.peer_counters(&p.origin).set_have(p.run_id, p.seq);
            }
        }
        r.clean_start = loaded && !r.push_own;
        if !r.clean_start {
            // Our own previous run (if there was one) may have writes that only some
            // members hold: ask each for them, as peers do for any origin that restarts.
            let (name, id) = (r.name.clone(), r.node_id.get());
            r.catch_ups.origin_restarted(&name, id);
        }
        r
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn counters(&self) -> &Arc<ClusterCounters> {
        &self.counters
    }

    pub fn sync_counters(&self) -> &Arc<SyncCounters> {
        &self.sync_counters
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the client port may be open.
    pub fn opened(&self) -> bool {
        self.plan.opened()
    }

    pub fn phase(&self) -> Phase {
        self.plan.phase()
    }

    pub fn table(&self) -> &PeerTable<LinkId> {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut PeerTable<LinkId> {
        &mut self.table
    }

    /// The next thing the caller must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// `--ack-replicas`: how many distinct peers must acknowledge a write before its client
    /// is answered (0: none; nothing is tracked).
    pub fn set_ack_replicas(&mut self, n: usize) {
        self.acks.set_need(n);
    }

    /// The highest sequence of our log that `--ack-replicas` peers acknowledged, if it grew
    /// since the last call: the shell wakes the clients waiting for it.
    pub fn take_acks_moved(&mut self) -> Option<u64> {
        self.acks.take_moved()
    }

    /// Counts `peer`'s acknowledgement of our log up to `seq` towards `--ack-replicas`, if
    /// it is ready. A peer still in its initial sync does not hold what it acknowledges:
    /// its position of our log was adopted from its donor when the donor's snapshot
    /// *began* (so that our stream could start at once), and the entries up to it are
    /// still arriving in that snapshot; if the donor died mid-snapshot they would never
    /// come. Its acknowledgements count once it says it is ready (its Status), when
    /// everything up to them is applied.
    pub(super) fn count_ack(&mut self, peer: &str, seq: u64) {
        if self.plan.peer_ready(peer) {
            self.acks.acked(peer, seq);
        }
    }

    /// Whether anything changed since the last call that a link may now have to send
    /// (the caller wakes its senders then; polling without it is harmless).
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// What this node has applied of every peer's log, holding it whole: for a snapshot's
    /// first frame and for the state file.
    pub fn positions(&self) -> Vec<Position> {
        // Members down are not waited for (DESIGN.md section 8): anti-entropy repairs what
        // one of them brings back. With anti-entropy off nothing would, so they are.
        let awaited: Vec<&str> = if self.entropy.period_ms > 0 {
            self.table.awaited().collect()
        } else {
            self.table.peers().map(|(n, _)| n.as_str()).collect()
        };
        self.peer_counters
            .iter()
            .filter(|(_, c)| c.holds_have())
            .filter(|(name, _)| !self.catch_ups.unsettled(name, awaited.iter().copied()))
            .filter_map(|(name, c)| {
                let (run_id, seq) = c.have();
                (run_id != RunId(0)).then(|| Position {
                    origin: name.clone(),
                    run_id,
                    seq,
                })
            })
            .collect()
    }

    /// The figures kept for `peer` (made on first use).
    pub fn peer_counters(&mut self, peer: &str) -> Arc<PeerCounters> {
        self.peer_counters
            .entry(peer.to_string())
            .or_default()
            .clone()
    }

    /// Connected peers that have not acknowledged every write in our log (a graceful
    /// shutdown waits for them).
    pub fn peers_behind(&self) -> usize {
        let last = self.outbox.last_seq();
        self.table
            .peers()
            .filter(|(_, p)| p.link.is_some())
            .filter(|(n, _)| {
                self.peer_counters.get(*n).map_or(0, |c| {
                    c.acked_seq.load(std::sync::atomic::Ordering::Relaxed)
                }) < last
            })
            .count()
    }

    /// Our run and the last sequence of it every member acknowledged, or
    /// [`DRAINED`] when they all have all of it. Below that (a member was cut off, or the
    /// shutdown drain timed out) a warm restart must hand this run's writes to the peers
    /// by snapshot: they are in the state file, and nowhere else (see `StateFile::save`).
    pub fn own_position(&self) -> (RunId, u64) {
        let last = self.outbox.last_seq();
        let acked = self
            .table
            .peers()
            .map(|(n, _)| {
                self.peer_counters.get(n).map_or(0, |c| {
                    c.acked_seq.load(std::sync::atomic::Ordering::Relaxed)
                })
            })
            .min()
            // Knowing no member, a node cannot say that its members have its writes (a
            // first node whose peers join it later, say).
            .unwrap_or(0);
        let seq = if acked < last { acked } else { DRAINED };
        (self.outbox.run_id(), seq)
    }

    /// Timers: the sync plan's (the donor grace period, `--join-timeout`).
    pub fn tick(&mut self, now_ms: u64) {
        self.members_tick(now_ms);
        self.sync_step(now_ms);
        self.entropy_tick(now_ms);
        let vote = self.clock_outvoted(now_ms);
        if vote.is_some() != self.outvoted {
            self.outvoted = vote.is_some();
            match vote {
                Some((against, of)) => {
                    tracing::error!(node = %self.name, against, voters = of, "outvoted on time: {against} of the {of} nodes that compared clocks with this one (itself included) find its clock further off than --max-clock-skew; this node says it is not ready (/ready answers 503, stats clock_outvoted 1) until its clock is fixed (NTP)")
                }
                None => {
                    tracing::info!(node = %self.name, "no longer outvoted on time: ready again")
                }
            }
        }
    }

    /// Whether most of the nodes that compared clocks with this one recently (itself
    /// included) refused each other on time: then this node's clock is the one that is
    /// off, and it says it is not ready. `(against, voters)`. With two nodes it is a tie:
    /// neither can tell whose clock is wrong, and both serve (README, "Behaviour worth knowing").
    pub fn clock_outvoted(&self, now_ms: u64) -> Option<(usize, usize)> {
        let against = self
            .clock_refused
            .values()
            .filter(|&&at| now_ms < at + CLOCK_VOTE_MS)
            .count();
        let agreeing = 1 + self.table.connected();
        (against > agreeing).then_some((against, against + agreeing))
    }

    /// This node and `peer` disagree on time: one refused the other's hello. Both sides
    /// compare clocks at every handshake, and whichever reads the other's hello first
    /// refuses and closes, so the refused side records it too (`peer` closed with
    /// [`CLOSE_CLOCK`]); otherwise a node's vote would depend on that race. At most
    /// [`super::peers::MAX_MEMBERS`] names are kept.
    pub fn clock_refused_by(&mut self, peer: &str, now_ms: u64) {
        if self.clock_refused.len() < super::peers::MAX_MEMBERS
            || self.clock_refused.contains_key(peer)
        {
            self.clock_refused.insert(peer.to_string(), now_ms);
        }
    }

    fn sync_step(&mut self, now_ms: u64) {
        let all_connected = self.table.all_connected();
        let actions = self.plan.step(now_ms, all_connected);
        self.act(actions);
    }

    fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            self.wake = true;
            match a {
                Action::RequestSnapshot(peer) => {
                    tracing::info!(node = %self.name, donor = %peer, "asking for a snapshot (initial sync)");
                    self.queue_ctl(&peer, Frame::SnapshotRequest { token: 0 });
                }
                Action::Start(peer) => {
                    let (run_id, seq) = self.peer_counters(&peer).have();
                    self.queue_ctl(&peer, Frame::Start { run_id, seq });
                }
                Action::Ready(reason) => {
                    self.log_ready(reason);
                    self.status_gen += 1;
                    self.events.push_back(Event::Ready(reason));
                }
            }
        }
    }

    fn log_ready(&self, reason: ReadyReason) {
        let items = self.store.stats().curr_items;
        let node = &self.name;
        match reason {
            ReadyReason::Synced { peers } => {
                tracing::info!(%node, peers, items, "initial sync complete; ready")
            }
            ReadyReason::NewCluster => {
                tracing::info!(%node, "every member is new: nothing to sync; ready")
            }
            ReadyReason::NoPeer => {
                tracing::warn!(%node, items, "no peer answered within --join-timeout; serving what this node has")
            }
            ReadyReason::ClockLead => {
                tracing::info!(%node, items, "--max-clock-skew has passed since the start: versions issued now are newer than any an earlier run of this node issued; ready")
            }
            ReadyReason::NoDonor => {
                tracing::warn!(%node, items, "no peer could give a snapshot within --join-timeout; serving what this node has")
            }
        }
    }

    /// Queues a control frame for `peer`'s live stream, if it is connected.
    fn queue_ctl(&mut self, peer: &str, frame: Frame) {
        let Some(link) = self.link_of(peer) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&link) {
            if s.outgoing.len() >= CTL_QUEUE {
                tracing::warn!(node = %self.name, %peer, "the link's request queue is full; a request to it was dropped");
            } else {
                s.outgoing.push_back(frame);
            }
        }
    }

    /// Sends the catch-up requests due (see [`catch_up`]).
    pub(super) fn ask_catch_ups(&mut self) {
        let linked: Vec<String> = self
            .table
            .peers()
            .filter(|(_, p)| p.link.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for (peer, frame) in self
            .catch_ups
            .requests_due(linked.iter().map(String::as_str))
        {
            self.queue_ctl(&peer, frame);
        }
    }

    fn link_of(&self, peer: &str) -> Option<LinkId> {
        self.table
            .peer(peer)
            .and_then(|p| p.link.as_ref())
            .map(|(_, l)| *l)
    }
}

#[cfg(test)]
mod tests;
