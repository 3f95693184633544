//! SWIM membership in the `stats` replies: its counters, and its verdict per member in
//! `stats cluster`.

use std::sync::atomic::Ordering;

use super::{push, Stats};
use crate::cluster::gossip::GossipCounters;

/// SWIM membership's counters (`stats`): what it concluded and what its gossip cost.
pub(super) fn swim_stats(s: &mut Stats, cluster: Option<&crate::cluster::Cluster>) {
    let m = cluster.map(|c| c.gossip.stats()).unwrap_or_default();
    let g = |f: fn(&GossipCounters) -> &std::sync::atomic::AtomicU64| {
        cluster.map_or(0, |c| f(&c.gossip.counters).load(Ordering::Relaxed))
    };
    push(
        s,
        "swim_members_live",
        cluster.map_or(0, |c| c.gossip.live_members()),
    );
    push(s, "swim_suspicions", g(|c| &c.members_suspected));
    push(s, "swim_members_down", g(|c| &c.members_down));
    push(s, "swim_members_left", g(|c| &c.members_left));
    push(s, "swim_member_restarts", g(|c| &c.members_renamed));
    push(s, "swim_datagrams_sent", m.datagrams_out);
    push(s, "swim_bytes_sent", m.bytes_out);
    push(s, "swim_datagrams_received", m.datagrams_in);
    push(s, "swim_bytes_received", m.bytes_in);
    push(s, "swim_spoofed", m.spoofed);
    push(s, "swim_undecodable", m.undecodable);
    push(s, "swim_unroutable", g(|c| &c.unroutable));
}

/// SWIM's word for a member in `stats cluster`.
pub(super) fn swim_verdict(cluster: &crate::cluster::Cluster, name: &str) -> &'static str {
    use crate::cluster::membership::Verdict;
    match cluster.gossip.verdict(name) {
        None => "-",
        Some(Verdict::Alive) => "alive",
        Some(Verdict::Suspect) => "suspect",
        Some(Verdict::Down) => "down",
        Some(Verdict::Left) => "left",
    }
}
