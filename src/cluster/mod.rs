//! The cluster: membership bookkeeping, one authenticated QUIC connection per peer, and on
//! it the live replication stream in each direction (DESIGN.md sections 4, 5 and 7).
//!
//! ```text
//!  client write ─► store (shard lock) ─► journal ─► Outbox (ReplLog ring, seq numbers)
//!                                                      │ one sender task per peer,
//!                                                      ▼ from that peer's cursor
//!            peer ◄── QUIC uni stream: Hello, Members, Batch..., Ack... ──► peer
//!                                                      │ receiver task per peer
//!                                                      ▼
//!                         replication::apply (skew guard, HLC observe, LWW) ─► store
//! ```
//!
//! Each node sends only its own writes, to every peer directly (a full mesh): a write
//! reaches every node in one hop, and no node relays another's.
//!
//! All of it runs on one dedicated runtime thread, apart from the client workers: the
//! client path only appends to the outbox. The sans-IO parts are [`peers::PeerTable`]
//! (members, the one-connection-per-pair rule, dial backoff) and the replication log; the
//! tasks in [`link`] and [`dial`] move bytes.

mod dial;
mod link;
pub mod outbox;
pub mod peers;
mod reconcile;
mod recv;
mod report;
mod send;
mod snapshot;
pub mod sync;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use crate::clock::{Hlc, NodeId};
use crate::config::ClusterConfig;
use crate::replication::apply::{apply_flush_state, ApplyStats};
use crate::replication::frame::{Frame, Position, SnapBegin};
use crate::replication::log::RunId;
use crate::replication::transport::PeerEndpoint;
use crate::store::Store;
use outbox::Outbox;
use peers::PeerTable;
pub use report::{PeerReport, Report};
use sync::{Action, Phase, ReadyReason, SyncPlan};

/// Per-peer figures that outlive any one connection, updated by its link's tasks without
/// taking the table lock.
#[derive(Default)]
pub struct PeerCounters {
    /// Our log's last sequence sent to the peer, and the last it acknowledged.
    pub sent_seq: AtomicU64,
    pub acked_seq: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// What we applied of the peer's log: its run id and last sequence.
    have: Mutex<(RunId, u64)>,
    /// A snapshot from the peer is arriving. It may fill a gap that `have` already skips
    /// (the live stream went on from the log's head while the snapshot covers what fell
    /// off the log), so until it is complete `have` is not a position this node holds: it
    /// is neither acknowledged, nor saved, nor given to a joiner; and if the link ends
    /// first, it is forgotten. Counts the snapshots arriving (connections may overlap).
    gap: std::sync::atomic::AtomicU32,
}

impl PeerCounters {
    /// Whether `have` is a position this node holds whole (no snapshot pending).
    pub fn holds_have(&self) -> bool {
        self.gap.load(Ordering::Acquire) == 0
    }

    pub(crate) fn snapshot_arriving(&self) {
        self.gap.fetch_add(1, Ordering::AcqRel);
    }

    /// A snapshot ended: `complete`, or cut off with its stream. A cut-off one leaves its
    /// gap missing, so this node claims nothing of the peer's log any more (the next link
    /// starts from the beginning of it, or takes a snapshot).
    pub(crate) fn snapshot_ended(&self, complete: bool) {
        if !complete {
            self.set_have(RunId(0), 0);
        }
        self.gap.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn have(&self) -> (RunId, u64) {
        *self.have.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_have(&self, run: RunId, seq: u64) {
        *self.have.lock().unwrap_or_else(|e| e.into_inner()) = (run, seq);
    }

    /// Takes a donor's position for this origin, unless we already have more of that run.
    pub(crate) fn merge_have(&self, run: RunId, seq: u64) {
        let mut have = self.have.lock().unwrap_or_else(|e| e.into_inner());
        if have.0 != run || have.1 < seq {
            *have = (run, seq);
        }
    }
}

/// How many requests a link's sender may have queued. A peer that keeps asking (snapshot
/// requests, start positions) faster than its own stream drains is closed rather than
/// allowed to grow the queue without bound; a well-behaved peer sends a handful.
pub(crate) const CTL_QUEUE: usize = 64;

/// What a link's sender is asked to do, by the peer (through the link's receiver) or by
/// this node's sync plan.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Write this frame to the peer.
    Send(Frame),
    /// The peer wants our log from this position.
    From(RunId, u64),
    /// The peer wants a snapshot of our store; the token of its request.
    Snapshot(u64),
}

/// Snapshot totals, for `stats`.
#[derive(Default)]
pub struct SyncCounters {
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_items_received: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    /// Keys dropped by reconciliation: a peer's full snapshot, after a separation longer
    /// than the tombstone TTL, showed them gone there.
    pub reconciled_drops: AtomicU64,
}

/// Totals over every peer, for `stats`.
#[derive(Default)]
pub struct ClusterCounters {
    pub accepted: AtomicU64,
    pub rejected_behind: AtomicU64,
    pub rejected_identical: AtomicU64,
    pub refused_forgotten: AtomicU64,
    pub clock_skew_rejects: AtomicU64,
    pub not_stored: AtomicU64,
    /// Peers that fell off the replication log and need a resync.
    pub resyncs_needed: AtomicU64,
    /// Connections refused: bad certificates, wrong protocol, node id clashes.
    pub peers_refused: AtomicU64,
}

impl ClusterCounters {
    fn add(&self, s: &ApplyStats) {
        self.accepted.fetch_add(s.accepted, Ordering::Relaxed);
        self.rejected_behind
            .fetch_add(s.rejected_behind, Ordering::Relaxed);
        self.rejected_identical
            .fetch_add(s.rejected_identical, Ordering::Relaxed);
        self.refused_forgotten
            .fetch_add(s.refused_forgotten, Ordering::Relaxed);
        self.clock_skew_rejects
            .fetch_add(s.clock_skew_rejects, Ordering::Relaxed);
        self.not_stored.fetch_add(s.not_stored, Ordering::Relaxed);
    }
}

/// One node's view of the cluster, shared by the server (which records writes into the
/// outbox and reports stats) and the cluster tasks.
pub struct Cluster {
    pub name: String,
    pub node_id: NodeId,
    pub outbox: Arc<Outbox>,
    pub counters: ClusterCounters,
    pub sync_counters: SyncCounters,
    store: Arc<Store>,
    hlc: Arc<Hlc>,
    max_skew: Duration,
    table: Mutex<PeerTable<quinn::Connection>>,
    peer_counters: Mutex<HashMap<String, Arc<PeerCounters>>>,
    /// Bumped whenever the member list grows, so that every link gossips it.
    members: watch::Sender<u64>,
    /// Wakes the dialer (a member was learned or lost).
    dial_wake: Notify,
    next_token: AtomicU64,
    endpoint: OnceLock<Arc<PeerEndpoint>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    plan: Mutex<SyncPlan>,
    /// True once the client port may open.
    ready: watch::Sender<bool>,
    /// Bumped when this node's readiness or load changes, so that every link tells its peer.
    status: watch::Sender<u64>,
    /// Snapshots this node is serving (its load, as donors are chosen).
    serving: AtomicU16,
    /// What this node knows of each peer's hold on its data, for reconciliation.
    reconciler: Mutex<reconcile::Reconciler>,
    /// Every version this run issues is above this one (told to peers in the hello).
    run_floor: crate::clock::Version,
    /// Each connected peer's sender, by name, with the connection's token.
    links: Mutex<HashMap<String, (u64, mpsc::Sender<Ctl>)>>,
}

/// Holds a node's cluster thread stopped until dropped; see [`Cluster::freeze`].
pub struct Freeze(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Freeze {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Cluster {
    /// `positions`: what this node already has of each peer's log (from a state file),
    /// `None` for a node without data.
    pub fn new(
        config: &ClusterConfig,
        store: Arc<Store>,
        hlc: Arc<Hlc>,
        positions: Option<Vec<Position>>,
    ) -> Arc<Cluster> {
        let run_id = RunId(random_u64());
        let seeds: Vec<String> = config.join.iter().map(|p| p.to_string()).collect();
        let now_ms = hlc.clock().now_ms();
        let join_timeout_ms = config.join_timeout.as_millis() as u64;
        let plan = SyncPlan::new(
            positions.is_some(),
            !seeds.is_empty(),
            now_ms,
            join_timeout_ms,
        );
        let ready = plan.opened();
        let run_floor = hlc.tick();
        let cluster = Arc::new(Cluster {
            name: config.node_name.clone(),
            node_id: config.node_id,
            outbox: Arc::new(Outbox::new(run_id, config.repl_backlog)),
            counters: ClusterCounters::default(),
            store,
            hlc,
            max_skew: config.max_clock_skew,
            table: Mutex::new(PeerTable::new(
                &config.node_name,
                config.node_id.get(),
                seeds,
                random_u64(),
            )),
            peer_counters: Mutex::new(HashMap::new()),
            members: watch::Sender::new(0),
            dial_wake: Notify::new(),
            next_token: AtomicU64::new(1),
            endpoint: OnceLock::new(),
            runtime: OnceLock::new(),
            plan: Mutex::new(plan),
            ready: watch::Sender::new(ready),
            status: watch::Sender::new(0),
            serving: AtomicU16::new(0),
            links: Mutex::new(HashMap::new()),
            reconciler: Mutex::new(reconcile::Reconciler::new(
                config.node_id,
                u64::from(config.tombstone_ttl) * 1000,
            )),
            run_floor,
            sync_counters: SyncCounters::default(),
        });
        for p in positions.into_iter().flatten() {
            if p.origin != cluster.name {
                cluster.peer_counters(&p.origin).set_have(p.run_id, p.seq);
            }
        }
        cluster
    }

    /// Whether the client port may open; changes once, to true.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The sync phase, for `stats`.
    pub fn phase(&self) -> Phase {
        self.plan().phase()
    }

    /// What this node has applied of every peer's log: for a snapshot's first frame and
    /// for the state file.
    pub fn positions(&self) -> Vec<Position> {
        let map = self.peer_counters.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, c)| c.holds_have())
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

    /// Starts accepting and dialing peers on `endpoint`; call inside the cluster runtime.
    pub fn start(self: &Arc<Self>, endpoint: PeerEndpoint) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let endpoint = Arc::new(endpoint);
        if self.endpoint.set(endpoint.clone()).is_err() {
            tracing::error!("cluster started twice; ignoring the second start");
            return;
        }
        tokio::spawn(dial::accept_loop(self.clone(), endpoint.clone()));
        tokio::spawn(dial::dial_loop(self.clone(), endpoint));
        tokio::spawn(sync_loop(self.clone()));
    }

    fn plan(&self) -> MutexGuard<'_, SyncPlan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets the sync plan decide what to do now, and does it.
    fn sync_step(&self) {
        let all_connected = self.table().all_connected();
        let now = self.hlc.clock().now_ms();
        let actions = self.plan().step(now, all_connected);
        self.act(actions);
    }

    fn act(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::RequestSnapshot(peer) => {
                    tracing::info!(node = %self.name, donor = %peer, "asking for a snapshot (initial sync)");
                    self.send_ctl(&peer, Ctl::Send(Frame::SnapshotRequest { token: 0 }));
                }
                Action::Start(peer) => {
                    let (run_id, seq) = self.peer_counters(&peer).have();
                    self.send_ctl(&peer, Ctl::Send(Frame::Start { run_id, seq }));
                }
                Action::Ready(reason) => {
                    let items = self.store.stats().curr_items;
                    match reason {
                        ReadyReason::Synced { peers } => {
                            tracing::info!(node = %self.name, peers, items, "initial sync complete; ready")
                        }
                        ReadyReason::NewCluster => {
                            tracing::info!(node = %self.name, "every member is new: nothing to sync; ready")
                        }
                        ReadyReason::NoPeer => {
                            tracing::warn!(node = %self.name, items, "no peer answered within --join-timeout; serving what this node has")
                        }
                        ReadyReason::NoDonor => {
                            tracing::warn!(node = %self.name, items, "no peer could give a snapshot within --join-timeout; serving what this node has")
                        }
                    }
                    self.ready.send_replace(true);
                    self.status.send_modify(|v| *v += 1);
                }
            }
        }
    }

    fn send_ctl(&self, peer: &str, ctl: Ctl) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tx)) = links.get(peer) {
            if tx.try_send(ctl).is_err() {
                tracing::warn!(node = %self.name, %peer, "the link's request queue is full; a request to it was dropped");
            }
        }
    }

    /// Whether this node serves and can give snapshots, and how many it is giving.
    fn status_now(&self) -> (bool, u16) {
        (
            self.plan().phase() == Phase::Ready,
            self.serving.load(Ordering::Relaxed),
        )
    }

    /// A snapshot's first frame arrived from `peer`: its flushes are taken on (a set
    /// union: a pending flush here stays), and when it is the initial sync's snapshot, its
    /// positions become ours.
    fn snapshot_began(&self, peer: &str, begin: &SnapBegin) {
        let now = self.hlc.clock().now_secs();
        let flushes = apply_flush_state(&self.store, &self.hlc, &begin.flush, self.max_skew, now);
        self.counters.add(&flushes);
        let actions = {
            let mut plan = self.plan();
            if plan.is_donor_snapshot(peer) {
                // Taken as they are, even below what we had: after a donor lost halfway,
                // the next donor's positions are the ones its snapshot makes true, and
                // the other peers resending from there is harmless.
                // Only for members: a peer cannot make us keep positions (and counters)
                // for names it invents.
                let members: Vec<_> = {
                    let table = self.table();
                    let known = |p: &&Position| table.peer(&p.origin).is_some();
                    begin.positions.iter().filter(known).collect()
                };
                for p in members {
                    if p.origin != self.name && p.origin != peer {
                        self.peer_counters(&p.origin).set_have(p.run_id, p.seq);
                    }
                }
            }
            plan.snapshot_began(peer)
        };
        self.act(actions);
    }

    /// Stops the cluster thread (sending, receiving, acknowledging, even QUIC keep-alives)
    /// until the returned guard is dropped, while clients are still served: what a
    /// SIGSTOPped peer looks like to the others, for tests. Returns once it is stopped.
    pub fn freeze(&self) -> Freeze {
        let Some(rt) = self.runtime.get() else {
            return Freeze(None);
        };
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        rt.spawn(async move {
            let _ = stopped_tx.send(());
            // Deliberately blocking: the runtime has one worker, and this holds it.
            let _ = resume_rx.recv();
        });
        let _ = stopped_rx.recv();
        Freeze(Some(resume_tx))
    }

    /// Waits, up to `timeout`, until every connected peer has acknowledged every write in
    /// the log: a node shutting down hands what its clients wrote to the others first.
    /// Returns whether everything was acknowledged.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let last = self.outbox.last_seq();
            let connected: Vec<String> = self
                .table()
                .peers()
                .filter(|(_, p)| p.link.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            let behind = connected
                .iter()
                .filter(|n| self.peer_counters(n).acked_seq.load(Ordering::Relaxed) < last)
                .count();
            if behind == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                tracing::warn!(node = %self.name, peers = behind, "shutting down before every peer acknowledged every write");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes every peer connection, telling the peers this node is leaving (so they log
    /// it as such, not as a failure), and waits (up to `timeout`) for the close to go out:
    /// peers then notice at once instead of after their idle timeout.
    pub async fn close(&self, reason: &str, timeout: Duration) {
        for (_, p) in self.table().peers() {
            if let Some((_, conn)) = &p.link {
                conn.close(link::CLOSE_LEAVING.into(), reason.as_bytes());
            }
        }
        if let Some(e) = self.endpoint.get() {
            e.close(reason);
            let _ = tokio::time::timeout(timeout, e.wait_idle()).await;
        }
    }

    /// The cluster endpoint's address (with the real port when bound on port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.get().and_then(|e| e.local_addr().ok())
    }

    pub fn peers_connected(&self) -> usize {
        self.table().connected()
    }

    fn reconciler(&self) -> MutexGuard<'_, reconcile::Reconciler> {
        self.reconciler.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> MutexGuard<'_, PeerTable<quinn::Connection>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer_counters(&self, name: &str) -> Arc<PeerCounters> {
        let mut map = self.peer_counters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }
}

/// A random number from the standard library's per-process hash keys (no extra crate for
/// run ids and jitter, which need unpredictability, not cryptographic strength).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    // Each RandomState has fresh random keys, so hashing a constant is enough.
    h.write_u64(0x6d65_7368);
    h.finish()
}

/// Runs the sync plan's timers (the donor grace period, `--join-timeout`); events from
/// the links step it too.
async fn sync_loop(cl: Arc<Cluster>) {
    loop {
        cl.sync_step();
        let pause = if cl.plan().phase() == Phase::Ready {
            100
        } else {
            20
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
