//! The cluster part of `/metrics` (`meshcached_*`: peers, replication, sync) and the sync
//! half of `/ready`.
//!
//! Everything here is read through [`Cluster`]'s public face only: `report()`, the
//! `counters` and `sync_counters` fields, `phase()`, `peers_connected()`, `members()` and
//! `ready()`.
//! The cluster internals change often; this file is the one place metrics touch them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::memcached::{counter, gauge};
use crate::cluster::{
    Cluster, ClusterCounters, EntropyCounters, MemberState, PeerReport, SyncCounters,
};

/// The sync states `stats` shows as `sync_state`, in the order a joining node goes
/// through them.
const SYNC_STATES: [&str; 4] = ["waiting_for_peers", "choosing_donor", "syncing", "ready"];

/// `stats`'s `sync_state` of a clustered node.
pub fn sync_state(cluster: &Cluster) -> &'static str {
    cluster.sync_state()
}

/// Whether the initial sync is over (the node holds what its peers hold, or gave up
/// waiting after `--join-timeout`).
pub fn synced(cluster: &Cluster) -> bool {
    *cluster.ready().borrow()
}

/// Reads one counter out of a group of them.
type Field<C> = fn(&C) -> &AtomicU64;

/// Writes received from peers, by what the merge did with them.
const OUTCOMES: &[(&str, Field<ClusterCounters>)] = &[
    ("accepted", |c| &c.accepted),
    ("rejected_behind", |c| &c.rejected_behind),
    ("rejected_identical", |c| &c.rejected_identical),
    ("refused_forgotten", |c| &c.refused_forgotten),
    ("not_stored", |c| &c.not_stored),
];

/// `(metric, help, counter)`.
type Plain<C> = (&'static str, &'static str, Field<C>);

const CLUSTER_COUNTERS: &[Plain<ClusterCounters>] = &[
    (
        "meshcached_clock_skew_rejects",
        "Writes from peers refused because their version was further ahead than --max-clock-skew.",
        |c| &c.clock_skew_rejects,
    ),
    (
        "meshcached_resyncs_needed",
        "Times a peer fell off this node's replication log and needed a snapshot.",
        |c| &c.resyncs_needed,
    ),
    (
        "meshcached_peers_refused",
        "Peer connections refused (clock too far off, node id clash, another cluster).",
        |c| &c.peers_refused,
    ),
    (
        "meshcached_ack_waits",
        "Client writes that waited for --ack-replicas peers to acknowledge them.",
        |c| &c.ack_waits,
    ),
    (
        "meshcached_ack_timeouts",
        "Client writes answered SERVER_ERROR because --ack-replicas peers did not acknowledge them within --ack-timeout.",
        |c| &c.ack_timeouts,
    ),
];

const ENTROPY_COUNTERS: &[Plain<EntropyCounters>] = &[
    (
        "meshcached_anti_entropy_rounds",
        "Anti-entropy comparisons of this node's bucket digests with a peer's.",
        |c| &c.rounds,
    ),
    (
        "meshcached_anti_entropy_buckets_differing",
        "Buckets found differing, summed over anti-entropy comparisons.",
        |c| &c.buckets_differing,
    ),
    (
        "meshcached_anti_entropy_keys_sent",
        "Entries sent to peers that anti-entropy found lacking them.",
        |c| &c.keys_sent,
    ),
    (
        "meshcached_anti_entropy_keys_received",
        "Entries taken from peers by anti-entropy (writes the live stream had missed).",
        |c| &c.keys_received,
    ),
    (
        "meshcached_anti_entropy_bytes",
        "Bytes of anti-entropy frames, sent and received.",
        |c| &c.bytes,
    ),
];

const SYNC_COUNTERS: &[Plain<SyncCounters>] = &[
    ("meshcached_snapshots_sent", "Snapshots of this node's store sent to peers.", |c| &c.snapshots_sent),
    ("meshcached_snapshots_received", "Snapshots received from peers.", |c| &c.snapshots_received),
    ("meshcached_snapshot_received_items", "Items received in snapshots.", |c| &c.snapshot_items_received),
    ("meshcached_snapshot_received_bytes", "Bytes received in snapshots.", |c| &c.snapshot_bytes_received),
    ("meshcached_reconciled_drops", "Keys dropped by reconciliation after a separation longer than --tombstone-ttl (deleted on the peer).", |c| &c.reconciled_drops),
    ("meshcached_stale_state_files", "State files found stale after loading (a peer had applied a later run of this node); this node's own writes were then asked back from every member.", |c| &c.stale_state_files),
];

/// The collector of a clustered node.
pub struct ClusterCollector {
    cluster: Arc<Cluster>,
}

impl ClusterCollector {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

impl fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let c = &self.cluster;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut enc,
            "meshcached_peers_connected",
            "Peers with a live replication link.",
            c.peers_connected() as u64,
        )?;
        gauge(
            &mut enc,
            "meshcached_clock_outvoted",
            "1 while most nodes comparing clocks with this one refuse it as further off than --max-clock-skew (its clock is the one that is off; /ready answers 503).",
            u64::from(c.clock_outvoted().is_some()),
        )?;
        let state = sync_state(c);
        let mut m = enc.encode_descriptor(
            "meshcached_sync_state",
            "1 for the node's current initial-sync state (stats' sync_state), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for s in SYNC_STATES {
            ConstGauge::new(u64::from(s == state)).encode(m.encode_family(&[("state", s)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "meshcached_replicated_writes",
            "Writes received from peers, by what last-writer-wins did with them: accepted (newer, applied), rejected_behind (older than what is held), rejected_identical (already held), refused_forgotten (older than a forgotten key's fence), not_stored (no memory).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, field) in OUTCOMES {
            ConstCounter::new(load(field(&c.counters)))
                .encode(m.encode_family(&[("outcome", *outcome)])?)?;
        }
        for (name, help, field) in CLUSTER_COUNTERS {
            counter(&mut enc, name, help, load(field(&c.counters)))?;
        }
        for (name, help, field) in SYNC_COUNTERS {
            counter(&mut enc, name, help, load(field(&c.sync_counters)))?;
        }
        for (name, help, field) in ENTROPY_COUNTERS {
            counter(&mut enc, name, help, load(field(&c.counters.entropy)))?;
        }
        encode_report(&mut enc, c)?;
        encode_members(&mut enc, c)
    }
}

/// The member lifecycle (DESIGN.md section 8): each member's state, as `stats cluster`
/// shows it (forgotten members as `left`), how many are in each state, and last contact.
fn encode_members(enc: &mut DescriptorEncoder, c: &Cluster) -> fmt::Result {
    let members = c.members();
    let mut m = enc.encode_descriptor(
        "meshcached_members",
        "Members this node knows (itself aside) by lifecycle state; left counts those forgotten (left, down longer than --remove-down-after, or forgotten by an operator).",
        None,
        MetricType::Gauge,
    )?;
    for state in MemberState::ALL {
        let n = members.iter().filter(|x| x.state == state).count();
        ConstGauge::new(n as u64).encode(m.encode_family(&[("state", state.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "meshcached_member_state",
        "1 for the member's lifecycle state (joining, syncing, ready, suspect, down, left), 0 for the others.",
        None,
        MetricType::Gauge,
    )?;
    for x in &members {
        for state in MemberState::ALL {
            let labels = [("member", x.name.as_str()), ("state", state.as_str())];
            ConstGauge::new(u64::from(x.state == state)).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "meshcached_member_last_contact_seconds",
        "Unix time of the last moment the member was linked to this node (now while it is; 0 if never).",
        None,
        MetricType::Gauge,
    )?;
    for x in &members {
        let labels = [("member", x.name.as_str())];
        ConstGauge::new(x.last_contact_ms / 1000).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The replication log and the per-peer lines of `stats replication`.
fn encode_report(enc: &mut DescriptorEncoder, c: &Cluster) -> fmt::Result {
    let r = c.report();
    gauge(
        enc,
        "meshcached_log_last_seq",
        "Sequence number of this node's latest write in its replication log.",
        r.last_seq,
    )?;
    gauge(
        enc,
        "meshcached_log_bytes",
        "Bytes of recent writes held for peers that fall behind (bounded by --repl-backlog).",
        r.backlog_bytes as u64,
    )?;
    type PeerField = fn(&PeerReport) -> f64;
    let per_peer: &[(&str, &str, MetricType, PeerField)] = &[
        (
            "meshcached_peer_up",
            "1 while the replication link to the peer is connected.",
            MetricType::Gauge,
            |p| f64::from(u8::from(p.state != "connecting")),
        ),
        (
            "meshcached_peer_lag_writes",
            "This node's writes the peer has not acknowledged.",
            MetricType::Gauge,
            |p| p.lag_mutations as f64,
        ),
        (
            "meshcached_peer_lag_seconds",
            "Age of the oldest write the peer has not acknowledged.",
            MetricType::Gauge,
            |p| p.lag_ms as f64 / 1000.0,
        ),
        (
            "meshcached_peer_rtt_seconds",
            "Smoothed round-trip time of the link (QUIC's estimate).",
            MetricType::Gauge,
            |p| p.rtt_us as f64 / 1e6,
        ),
        (
            "meshcached_peer_sent_bytes",
            "Replication bytes sent to the peer.",
            MetricType::Counter,
            |p| p.bytes_sent as f64,
        ),
        (
            "meshcached_peer_received_bytes",
            "Replication bytes received from the peer.",
            MetricType::Counter,
            |p| p.bytes_received as f64,
        ),
        (
            "meshcached_peer_reconnects",
            "Times the link to the peer was re-established.",
            MetricType::Counter,
            |p| p.reconnects as f64,
        ),
        (
            "meshcached_peer_lost_packets",
            "Packets of the current link declared lost.",
            MetricType::Counter,
            |p| p.lost_packets as f64,
        ),
    ];
    for (name, help, kind, field) in per_peer {
        let mut m = enc.encode_descriptor(name, help, None, *kind)?;
        for p in &r.peers {
            let labels = [("peer", p.name.as_str())];
            let e = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(field(p)).encode(e)?,
                _ => ConstGauge::new(field(p)).encode(e)?,
            }
        }
    }
    Ok(())
}
