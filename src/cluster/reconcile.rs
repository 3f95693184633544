//! Reconciliation after a long separation (DESIGN.md section 6), sans-IO: what this node
//! knows of each peer's hold on its data, and which keys it may drop once a peer's full
//! snapshot shows they are gone there.
//!
//! Tombstones are collected after `--tombstone-ttl`. Two nodes apart for longer may each
//! have forgotten deletes the other missed: node a deleted `k`, its tombstone is gone, and
//! node b still holds `k`. The forgotten fences of the store keep a from taking `k` back;
//! this module makes b drop it. No side's data is ever thrown away wholesale (the node
//! that stayed up served clients the whole time): each side asks the other for a full
//! snapshot and drops only the keys the snapshot lacks *and* that the peer provably held
//! once, so that their absence can only mean deleted (or evicted, or expired: absence is
//! always allowed, resurrection never).
//!
//! Which keys the peer provably held, for a peer whose run has not changed:
//! - our own writes it acknowledged: versions of our origin up to the acknowledged log
//!   entry's (less those of the few entries right after it, which may be smaller: see
//!   [`crate::cluster::outbox::Outbox::acked_bound`]), less [`APPEND_MARGIN_MS`] for a
//!   write that had taken its version but not yet joined the log when the acknowledgement
//!   arrived (a write made within it is kept: dropping fewer is the safe side);
//! - its own writes of its current run: versions of its origin above its run's floor (its
//!   clock when the run began, past everything it loaded, which its hello tells) up to the
//!   newest of its writes we had applied. (A node that crashed without a state file while
//!   its clock ran ahead of its wall time, and restarted within that lead, could have
//!   issued versions above its new floor in its old run: the one case where a key it never
//!   had again counts as held.)
//!
//! The bounds are frozen when the snapshot is requested: every acknowledgement and live
//! write received before the request was applied by the peer before the request reached
//! it, so the walk it starts after that (its `SnapBegin` echoes the request's token) sees
//! them, unless they are gone. A key changed here after the request carries a version
//! above the frozen bounds, so it is never dropped. Keys of third origins are never
//! dropped on one peer's word: that peer may simply never have received them.
//!
//! A node that restarted (empty, or from a state file) starts with no knowledge of any
//! peer, and knowledge of a peer ends when the peer restarts: then nothing is dropped, the
//! node only receives.

use std::collections::HashMap;

use crate::clock::{NodeId, Version};
use crate::replication::log::RunId;

/// How far below an acknowledged log entry's version our own writes count as acknowledged
/// (see the module documentation).
pub const APPEND_MARGIN_MS: u64 = 5;

/// Bounds frozen when a reconciliation snapshot is requested: a key absent from the
/// peer's snapshot is dropped iff [`Bounds::drops`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub us: NodeId,
    pub peer: NodeId,
    /// Our own versions up to this one were applied by the peer.
    pub own_acked: Version,
    /// The peer's versions in `[peer_floor, peer_seen]` were written in its current run
    /// and were held by it.
    pub peer_floor: Version,
    pub peer_seen: Version,
}

impl Bounds {
    /// Whether a key we hold at `version`, absent from the peer's snapshot, was held by the
    /// peer once (so its absence there means it is gone) and is to be dropped here.
    pub fn drops(&self, version: Version) -> bool {
        let origin = version.node();
        if origin == self.us {
            version <= self.own_acked
        } else if origin == self.peer {
            self.peer_floor <= version && version <= self.peer_seen
        } else {
            false
        }
    }
}

/// What this node knows of one peer's run.
#[derive(Debug, Clone)]
struct Known {
    run: RunId,
    node_id: NodeId,
    own_acked: Version,
    peer_floor: Version,
    peer_seen: Version,
    /// When its last link went down (ms); 0 while a link is up or before any.
    down_since_ms: u64,
    /// A reconciliation is due (the separation outlasted the tombstone TTL) and not yet
    /// complete; `Some(token)` once requested on the current link.
    due: bool,
    requested: Option<(u64, Bounds)>,
}

/// Per-peer knowledge, updated by the links' events.
#[derive(Debug)]
pub struct Reconciler {
    us: NodeId,
    ttl_ms: u64,
    peers: HashMap<String, Known>,
    next_token: u64,
}

impl Reconciler {
    pub fn new(us: NodeId, tombstone_ttl_ms: u64) -> Self {
        Reconciler {
            us,
            ttl_ms: tombstone_ttl_ms,
            peers: HashMap::new(),
            next_token: 1,
        }
    }

    /// A link to `peer` (run `run`, node id `node_id`, whose versions of this run are above
    /// `run_floor`) is up. Returns the token of a reconciliation snapshot to request from it,
    /// when one is due: the separation from the same run of the peer outlasted the
    /// tombstone TTL (or an earlier reconciliation with it did not complete).
    pub fn link_up(
        &mut self,
        peer: &str,
        run: RunId,
        node_id: NodeId,
        run_floor: Version,
        now_ms: u64,
    ) -> Option<u64> {
        let known = match self.peers.get_mut(peer) {
            Some(k) if k.run == run => k,
            _ => {
                // A new run of the peer (or a first contact): nothing known of it yet.
                let floor = Version(run_floor.0.saturating_add(1));
                self.peers.insert(
                    peer.to_string(),
                    Known {
                        run,
                        node_id,
                        own_acked: Version::NONE,
                        peer_floor: floor,
                        peer_seen: Version::NONE,
                        down_since_ms: 0,
                        due: false,
                        requested: None,
                    },
                );
                return None;
            }
        };
        let apart_ms = now_ms.saturating_sub(known.down_since_ms);
        if known.down_since_ms != 0 && apart_ms > self.ttl_ms {
            known.due = true;
        }
        known.down_since_ms = 0;
        known.requested = None;
        if !known.due {
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        let bounds = Bounds {
            us: self.us,
            peer: known.node_id,
            own_acked: known.own_acked,
            peer_floor: known.peer_floor,
            peer_seen: known.peer_seen,
        };
        known.requested = Some((token, bounds));
        Some(token)
    }

    /// The link to `peer` went down.
    pub fn link_down(&mut self, peer: &str, now_ms: u64) {
        if let Some(k) = self.peers.get_mut(peer) {
            k.down_since_ms = now_ms.max(1);
            k.requested = None;
        }
    }

    /// The peer (in run `run`) acknowledged our log up to an entry of `version`.
    pub fn acked(&mut self, peer: &str, run: RunId, version: Version) {
        if let Some(k) = self.peers.get_mut(peer).filter(|k| k.run == run) {
            let margin = APPEND_MARGIN_MS << 22;
            k.own_acked = k.own_acked.max(Version(version.0.saturating_sub(margin)));
        }
    }

    /// We applied the peer's own write of `version` from its live stream (run `run`).
    pub fn applied(&mut self, peer: &str, run: RunId, version: Version) {
        if let Some(k) = self.peers.get_mut(peer).filter(|k| k.run == run) {
            k.peer_seen = k.peer_seen.max(version);
        }
    }

    /// A snapshot from `peer` begins, echoing `token`: the bounds to drop by when it
    /// completes, if it answers our pending reconciliation request.
    pub fn snapshot_began(&self, peer: &str, token: u64) -> Option<Bounds> {
        let (t, bounds) = self.peers.get(peer)?.requested?;
        (token != 0 && t == token).then_some(bounds)
    }

    /// The reconciliation with `peer` (answered by the snapshot of `token`) is complete.
    pub fn done(&mut self, peer: &str, token: u64) {
        if let Some(k) = self.peers.get_mut(peer) {
            if k.requested.is_some_and(|(t, _)| t == token) {
                k.requested = None;
                k.due = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::HLC_EPOCH_MS;

    const A: u16 = 1;
    const B: u16 = 2;
    const C: u16 = 3;
    const TTL: u64 = 60_000;
    const SKEW: u64 = 5_000;

    /// Node b's run floor: its clock when its run began.
    fn floor() -> Version {
        v(T0 + SKEW, B)
    }
    const T0: u64 = HLC_EPOCH_MS + 1_000_000_000;

    fn v(ms: u64, node: u16) -> Version {
        Version(Version::at_unix_ms(ms).0 | u64::from(node))
    }

    fn id(n: u16) -> NodeId {
        NodeId::new(n).expect("node id")
    }

    /// Node a's reconciler with node b (run 7) known since T0.
    fn known_b() -> Reconciler {
        let mut r = Reconciler::new(id(A), TTL);
        assert_eq!(
            r.link_up("b", RunId(7), id(B), floor(), T0),
            None,
            "first contact"
        );
        r
    }

    #[test]
    fn a_separation_within_the_ttl_needs_no_reconciliation() {
        let mut r = known_b();
        r.link_down("b", T0 + 1_000);
        assert_eq!(
            r.link_up("b", RunId(7), id(B), floor(), T0 + 1_000 + TTL),
            None
        );
    }

    #[test]
    fn a_separation_beyond_the_ttl_drops_only_what_the_peer_provably_held() {
        let mut r = known_b();
        r.acked("b", RunId(7), v(T0 + 100 + APPEND_MARGIN_MS, A));
        r.applied("b", RunId(7), v(T0 + SKEW + 200, B));
        r.link_down("b", T0 + 1_000);
        let token = r
            .link_up("b", RunId(7), id(B), floor(), T0 + 2_000 + TTL)
            .expect("due");
        // Acknowledgements after the request do not widen the frozen bounds.
        r.acked("b", RunId(7), v(T0 + 900_000, A));
        assert_eq!(r.snapshot_began("b", token + 1), None, "another walk");
        let bounds = r.snapshot_began("b", token).expect("ours");
        assert!(bounds.drops(v(T0 + 100, A)), "our write b acknowledged");
        assert!(!bounds.drops(v(T0 + 101, A)), "ours, within the margin");
        assert!(bounds.drops(v(T0 + SKEW + 200, B)), "b's, of its run, seen");
        assert!(!bounds.drops(v(T0 + SKEW + 201, B)), "b's, newer than seen");
        assert!(!bounds.drops(v(T0 + 10, B)), "b's, maybe of an earlier run");
        assert!(!bounds.drops(v(T0 + 100, C)), "a third origin's");
        r.done("b", token);
        r.link_down("b", T0 + 3_000 + TTL);
        assert_eq!(
            r.link_up("b", RunId(7), id(B), floor(), T0 + 3_001 + TTL),
            None,
            "done"
        );
    }

    #[test]
    fn an_interrupted_reconciliation_is_asked_for_again() {
        let mut r = known_b();
        r.link_down("b", T0 + 1_000);
        let first = r.link_up("b", RunId(7), id(B), floor(), T0 + 2_000 + TTL);
        assert!(first.is_some());
        r.link_down("b", T0 + 2_500 + TTL);
        let second = r.link_up("b", RunId(7), id(B), floor(), T0 + 2_600 + TTL);
        assert!(
            second.is_some() && second != first,
            "still due, a new token"
        );
        assert_eq!(
            r.snapshot_began("b", first.unwrap()),
            None,
            "the old link's walk"
        );
    }

    #[test]
    fn a_restarted_peer_is_known_afresh_and_nothing_is_dropped_on_its_word() {
        let mut r = known_b();
        r.acked("b", RunId(7), v(T0 + 100, A));
        r.link_down("b", T0 + 1_000);
        assert_eq!(
            r.link_up(
                "b",
                RunId(8),
                id(B),
                v(T0 + 5_000 + TTL, B),
                T0 + 5_000 + TTL
            ),
            None,
            "a new run of b"
        );
        r.acked("b", RunId(7), v(T0 + 200, A));
        r.link_down("b", T0 + 6_000 + TTL);
        let token = r
            .link_up("b", RunId(8), id(B), floor(), T0 + 7_000 + 2 * TTL)
            .expect("due");
        let bounds = r.snapshot_began("b", token).expect("ours");
        assert!(
            !bounds.drops(v(T0 + 100, A)),
            "acknowledged by the old run only"
        );
    }
}
