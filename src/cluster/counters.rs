//! Counters of the cluster core, kept as atomics so that `stats` (on client threads) reads
//! them without taking the core's lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::replication::apply::ApplyStats;
use crate::replication::log::RunId;

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
    gap: AtomicU32,
    /// What anti-entropy did with this peer.
    pub entropy: EntropyCounters,
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

    pub(crate) fn set_have(&self, run: RunId, seq: u64) {
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

/// Anti-entropy's figures, per peer and in total (`stats`, `stats replication`, /metrics).
#[derive(Default, Debug)]
pub struct EntropyCounters {
    /// Comparisons started.
    pub rounds: AtomicU64,
    /// Buckets found differing, summed over comparisons.
    pub buckets_differing: AtomicU64,
    /// Entries pushed to peers that asked for them, and entries taken from peers.
    pub keys_sent: AtomicU64,
    pub keys_received: AtomicU64,
    /// Bytes of anti-entropy frames, both ways.
    pub bytes: AtomicU64,
}

impl EntropyCounters {
    /// Rounds, buckets differing, keys sent, keys received, bytes.
    pub fn values(&self) -> [u64; 5] {
        [
            &self.rounds,
            &self.buckets_differing,
            &self.keys_sent,
            &self.keys_received,
            &self.bytes,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn add(&self, field: fn(&Self) -> &AtomicU64, n: u64) {
        field(self).fetch_add(n, Ordering::Relaxed);
    }
}

/// Snapshot totals, for `stats`.
#[derive(Default)]
pub struct SyncCounters {
    pub snapshots_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_items_received: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    /// Catch-ups with restarted origins: walks sent, and entries received.
    pub catch_ups_sent: AtomicU64,
    pub catch_up_items_received: AtomicU64,
    /// Keys dropped by reconciliation: a peer's full snapshot, after a separation longer
    /// than the tombstone TTL, showed them gone there.
    pub reconciled_drops: AtomicU64,
    /// Starts from a state file that a peer proved stale (it applied a later run of this
    /// node): the node then asked every member for its own writes.
    pub stale_state_files: AtomicU64,
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
    /// What anti-entropy did, with every peer.
    pub entropy: EntropyCounters,
    /// `--ack-replicas`: client writes that waited for peers to acknowledge them, and those
    /// of them answered `SERVER_ERROR` because the peers did not in `--ack-timeout`.
    pub ack_waits: AtomicU64,
    pub ack_timeouts: AtomicU64,
}

impl ClusterCounters {
    pub(crate) fn add(&self, s: &ApplyStats) {
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
