//! The cluster: one authenticated QUIC connection per peer, and on it the live replication
//! stream in each direction, snapshots, and the member list (DESIGN.md sections 4-6).
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
//! reaches every node in one hop, and no node relays another's. What that misses (a write
//! in flight when its node died for good, one lost on the way) is repaired by
//! anti-entropy on the same stream: each node compares the store's bucket digests with
//! each peer's and pulls what its own merge would take ([`core`]'s `entropy`).
//!
//! Every decision lives in the sans-IO [`core::Replica`] (with [`peers::PeerTable`],
//! [`sync::SyncPlan`], [`send::SendPlan`] and [`reconcile`]); this module is its async
//! shell: [`Cluster`] holds the core behind one lock, and the tasks in [`link`], [`streams`]
//! and [`dial`] only move bytes between QUIC and the core and fire its timers. All of them
//! run on one dedicated runtime thread, apart from the client workers: the client path
//! only appends to the outbox.

pub mod acks;
pub mod core;
pub mod counters;
mod dial;
pub mod gossip;
mod link;
pub mod membership;
pub mod outbox;
pub mod peers;
pub mod reconcile;
mod report;
pub mod send;
mod streams;
pub mod sync;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub use self::core::MemberView;
use self::core::{Event, LinkId, Replica, ReplicaConfig};
use self::membership::{MemberId, Membership};
use crate::clock::{Hlc, NodeId};
use crate::config::ClusterConfig;
use crate::replication::frame::Position;
use crate::replication::log::RunId;
use crate::replication::transport::PeerEndpoint;
use crate::store::Store;
pub use counters::{ClusterCounters, EntropyCounters, PeerCounters, SyncCounters};
use outbox::Outbox;
pub use peers::{ForgetError, MemberState, MembershipEvent};
pub use report::{PeerReport, Report};
use sync::Phase;

/// One node's cluster: the core, and what its tasks share.
pub struct Cluster {
    pub name: String,
    pub node_id: NodeId,
    pub outbox: Arc<Outbox>,
    pub counters: Arc<ClusterCounters>,
    pub sync_counters: Arc<SyncCounters>,
    hlc: Arc<Hlc>,
    core: Mutex<Replica>,
    /// Each registered connection, by link id.
    conns: Mutex<HashMap<LinkId, quinn::Connection>>,
    /// Bumped whenever the core may have something new to send: every link's senders
    /// poll it again.
    changed: watch::Sender<u64>,
    /// Wakes the dialer (a member was learned or lost).
    dial_wake: Notify,
    next_link: AtomicU64,
    endpoint: OnceLock<Arc<PeerEndpoint>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    /// True once the client port may open.
    ready: watch::Sender<bool>,
    /// The highest sequence of our log that `--ack-replicas` peers acknowledged: clients
    /// waiting for their writes to be held by peers watch it.
    acks: watch::Sender<u64>,
    /// SWIM membership and the connections its datagrams travel on.
    pub gossip: gossip::Gossip,
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
        let mut core = Replica::new(
            &ReplicaConfig::from(config),
            store,
            hlc.clone(),
            positions,
            run_id,
            random_u64(),
        );
        core.set_ack_replicas(config.ack_replicas);
        // A new run at every start: the cluster sees a restart as a new identity of the
        // same member (see membership::identity).
        let me = MemberId::new(
            &config.node_name,
            config.node_id.get(),
            config.listen,
            hlc.clock().now_ms(),
        )
        .with_process(run_id.0);
        let gossip = gossip::Gossip::new(Membership::new(me, random_u64()));
        Arc::new(Cluster {
            gossip,
            name: config.node_name.clone(),
            node_id: config.node_id,
            outbox: core.outbox().clone(),
            counters: core.counters().clone(),
            sync_counters: core.sync_counters().clone(),
            hlc,
            ready: watch::Sender::new(core.opened()),
            core: Mutex::new(core),
            conns: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            dial_wake: Notify::new(),
            next_link: AtomicU64::new(1),
            endpoint: OnceLock::new(),
            runtime: OnceLock::new(),
            acks: watch::Sender::new(0),
        })
    }

    /// The highest sequence of our log that `--ack-replicas` distinct peers acknowledged,
    /// as it grows (see [`acks::AckQuorum`]).
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// Whether the client port may open; changes once, to true.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The sync phase, for `stats`.
    pub fn phase(&self) -> Phase {
        self.core().phase()
    }

    /// `stats`'s `sync_state`.
    pub fn sync_state(&self) -> &'static str {
        match self.phase() {
            Phase::Choosing if self.peers_connected() == 0 => "waiting_for_peers",
            Phase::Choosing => "choosing_donor",
            Phase::Syncing => "syncing",
            Phase::Ready => "ready",
        }
    }

    /// `(against, voters)` when most nodes that compared clocks with this one find it off
    /// (see [`core::Replica::clock_outvoted`]).
    pub fn clock_outvoted(&self) -> Option<(usize, usize)> {
        let now = self.now_ms();
        self.core().clock_outvoted(now)
    }

    /// What this node has applied of every peer's log: for the state file.
    pub fn positions(&self) -> Vec<Position> {
        self.core().positions()
    }

    /// Starts accepting and dialing peers on `endpoint`; call inside the cluster runtime.
    pub fn start(self: &Arc<Self>, endpoint: PeerEndpoint) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let endpoint = Arc::new(endpoint);
        if self.endpoint.set(endpoint.clone()).is_err() {
            tracing::error!(node = %self.name, "cluster started twice; ignoring the second start");
            return;
        }
        tokio::spawn(dial::accept_loop(self.clone(), endpoint.clone()));
        tokio::spawn(dial::dial_loop(self.clone(), endpoint));
        tokio::spawn(tick_loop(self.clone()));
        tokio::spawn(gossip::timer_loop(self.clone()));
    }

    /// Runs `f` on the core, then carries out what it asks for (events) and wakes the
    /// links' senders if something may have become due.
    fn with<R>(&self, f: impl FnOnce(&mut Replica) -> R) -> R {
        let (r, events, wake) = {
            let mut core = self.core();
            let r = f(&mut core);
            let events: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
            if let Some(reached) = core.take_acks_moved() {
                self.acks.send_replace(reached);
            }
            (r, events, core.take_wake())
        };
        for e in events {
            match e {
                Event::Ready(_) => {
                    self.ready.send_replace(true);
                }
                Event::Close { link, code, reason } => {
                    if let Some(c) = self.conns().get(&link) {
                        c.close(code.into(), reason.as_bytes());
                    }
                }
                Event::Dial => self.dial_wake.notify_one(),
            }
        }
        if wake {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        r
    }

    fn core(&self) -> MutexGuard<'_, Replica> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<LinkId, quinn::Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.hlc.clock().now_ms()
    }

    fn new_link_id(&self) -> LinkId {
        self.next_link.fetch_add(1, Ordering::Relaxed)
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
            let behind = self.core().peers_behind();
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
        for conn in self.conns().values() {
            conn.close(self::core::CLOSE_LEAVING.into(), reason.as_bytes());
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

    /// See [`Replica::own_position`].
    pub fn own_position(&self) -> (RunId, u64) {
        self.core().own_position()
    }

    pub fn peers_connected(&self) -> usize {
        self.core().table().connected()
    }

    /// Every member (this node aside) and its lifecycle state, those forgotten included
    /// (as `left`): for `stats cluster` and the metrics.
    pub fn members(&self) -> Vec<MemberView> {
        let now = self.now_ms();
        self.core().members(now)
    }

    /// An operator's `cluster forget NAME`: the member is forgotten at once (DESIGN.md
    /// section 8); see [`peers::PeerTable::forget`] for what is refused.
    pub fn forget(&self, name: &str) -> Result<(), ForgetError> {
        let now = self.now_ms();
        self.with(|c| c.forget_member(name, now))
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

/// Fires the core's timers (the donor grace period, `--join-timeout`).
async fn tick_loop(cl: Arc<Cluster>) {
    loop {
        let now = cl.now_ms();
        cl.with(|c| c.tick(now));
        let pause = if cl.phase() == Phase::Ready { 100 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
