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
}

impl PeerCounters {
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

/// What a link's sender is asked to do, by the peer (through the link's receiver) or by
/// this node's sync plan.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Write this frame to the peer.
    Send(Frame),
    /// The peer wants our log from this position.
    From(RunId, u64),
    /// The peer wants a snapshot of our store.
    Snapshot,
}

/// Snapshot totals, for `stats`.
#[derive(Default)]
pub struct SyncCounters {
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_items_received: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    /// Times this node discarded its contents as too stale to keep.
    pub discards: AtomicU64,
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
    /// Each connected peer's sender, by name, with the connection's token.
    links: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Ctl>)>>,
    /// When the last peer connection ended (ms since the epoch; 0 while connected or
    /// before any connection).
    alone_since_ms: AtomicU64,
    tombstone_ttl_ms: u64,
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
            alone_since_ms: AtomicU64::new(0),
            tombstone_ttl_ms: u64::from(config.tombstone_ttl) * 1000,
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
                    self.send_ctl(&peer, Ctl::Send(Frame::SnapshotRequest));
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
            let _ = tx.send(ctl);
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
                for p in &begin.positions {
                    if p.origin != self.name && p.origin != peer {
                        self.peer_counters(&p.origin).set_have(p.run_id, p.seq);
                    }
                }
            }
            plan.snapshot_began(peer)
        };
        self.act(actions);
    }

    /// Before greeting a peer: a node that was cut off from every peer for longer than
    /// the tombstone TTL may hold data that was deleted meanwhile and whose tombstones are
    /// gone: it must not serve it back, so it drops everything and resyncs from a donor.
    fn check_isolation(&self) {
        let since = self.alone_since_ms.load(Ordering::Relaxed);
        let now = self.hlc.clock().now_ms();
        if since == 0 || now.saturating_sub(since) <= self.tombstone_ttl_ms {
            return;
        }
        if self
            .alone_since_ms
            .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let dropped = self.store.clear();
        self.sync_counters.discards.fetch_add(1, Ordering::Relaxed);
        for c in self
            .peer_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            c.set_have(RunId(0), 0);
        }
        self.plan().restart();
        tracing::warn!(node = %self.name, dropped, out_of_contact_s = (now - since) / 1000, "out of contact with every peer for longer than --tombstone-ttl: discarding this node's contents (deletes made meanwhile may be forgotten) and resyncing by snapshot");
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
