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
mod report;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::clock::{Hlc, NodeId};
use crate::config::ClusterConfig;
use crate::replication::apply::ApplyStats;
use crate::replication::log::RunId;
use crate::replication::transport::PeerEndpoint;
use crate::store::Store;
use outbox::Outbox;
use peers::PeerTable;
pub use report::{PeerReport, Report};

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
}

/// Totals over every peer, for `stats`.
#[derive(Default)]
pub struct ClusterCounters {
    pub accepted: AtomicU64,
    pub rejected_behind: AtomicU64,
    pub rejected_identical: AtomicU64,
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
    pub fn new(config: &ClusterConfig, store: Arc<Store>, hlc: Arc<Hlc>) -> Arc<Cluster> {
        let run_id = RunId(random_u64());
        let seeds = config.join.iter().map(|p| p.to_string()).collect();
        Arc::new(Cluster {
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
        })
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

    /// Closes every peer connection, telling the peers why, and waits (up to `timeout`) for
    /// the close to go out: peers then notice at once instead of after their idle timeout.
    pub async fn close(&self, reason: &str, timeout: Duration) {
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
