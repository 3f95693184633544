//! How a node gets its initial data (DESIGN.md section 6): the plan that decides, from
//! what peers say, whom to ask for a snapshot, when to let the other peers start their
//! streams, and when the node is ready to serve clients.
//!
//! Sans-IO: events in (a peer connected, said it is ready, began or ended a snapshot, said
//! we are synced; time passed), actions out ([`Action`]); the link tasks carry them out.
//!
//! The phases:
//! - **Choosing**: the node has no data (a fresh start, or stale contents discarded). Its
//!   hellos ask peers to hold their streams (`defer`). It waits until every member it knows
//!   has connected (or [`DONOR_GRACE_MS`] after the first ready peer answered), then asks
//!   the least loaded ready peer for a snapshot: one copy, not one per peer. When every
//!   peer is as new as itself (a cluster's first start), there is nothing to copy.
//! - **Syncing**: a snapshot was asked for (the donor's first snapshot frame says what it
//!   had of every other origin's log, so those peers are told to start from there), or the
//!   node has data and positions (a state file) and every peer sends it a delta, or a
//!   snapshot when its log no longer reaches back that far.
//! - **Ready**: every connected peer has said the node is synced (and the snapshots it
//!   announced have been applied), or no peer answered within `--join-timeout`.

use std::collections::BTreeMap;

/// After the first ready peer answers, how long to wait for the other members before
/// choosing a donor among those that answered.
pub const DONOR_GRACE_MS: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Choosing,
    Syncing,
    Ready,
}

/// Why the node became ready, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyReason {
    /// Every connected peer says the node has its data.
    Synced { peers: usize },
    /// Every member is as new as this node: nothing to copy.
    NewCluster,
    /// `--join-timeout` passed with no peer answering.
    NoPeer,
    /// `--join-timeout` passed with peers connected but none able to give a snapshot.
    NoDonor,
    /// A first node (no `--join`) waited out `--max-clock-skew` after its start (see
    /// [`SyncPlan::new`]).
    ClockLead,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask this peer for a snapshot of its whole store.
    RequestSnapshot(String),
    /// Tell this peer to start its stream from what we have of its log.
    Start(String),
    /// Open the client port.
    Ready(ReadyReason),
}

#[derive(Debug, Clone, Default)]
struct PeerSync {
    connected: bool,
    ready: bool,
    load: u16,
    /// Its hello said it has no data yet.
    fresh: bool,
    /// Its stream to us waits for our Start (we deferred it).
    held: bool,
    /// The snapshot count of its last Synced, if one came on this connection.
    synced: Option<u32>,
    /// Snapshots from it fully applied on this connection.
    snapshots_applied: u32,
}

impl PeerSync {
    fn done(&self) -> bool {
        self.synced.is_some_and(|n| self.snapshots_applied >= n)
    }
}

pub struct SyncPlan {
    phase: Phase,
    /// Whether the client port was opened: once ready, a node keeps serving even when it
    /// has to resync later.
    opened: bool,
    donor: Option<String>,
    /// Whether we know what we have of every origin's log (from our data, or from the
    /// donor's first snapshot frame); until then peers hold their streams.
    positions_known: bool,
    peers: BTreeMap<String, PeerSync>,
    deadline_ms: u64,
    first_candidate_ms: Option<u64>,
    /// A first node keeps its port closed until then, and so does a node with `--join`
    /// that becomes ready without syncing from a peer (see [`SyncPlan::new`]).
    clock_lead_until_ms: u64,
    /// Whether a node with `--join` must wait for `clock_lead_until_ms` too: only if it
    /// becomes ready without a sync.
    peers_configured: bool,
    /// Why it became ready, while the port waits for the clock lead (said when it opens).
    held_reason: Option<ReadyReason>,
}

impl SyncPlan {
    /// `has_data`: the node starts with data and positions (a state file); otherwise it
    /// must choose a donor. `peers_configured`: without any (the first node of a cluster,
    /// as far as it knows), it has no one to sync from: peers that connect to it later see
    /// that it is empty and send it snapshots (see `send::SendPlan::position`).
    ///
    /// **Such a first node still waits `max_skew_ms` before it opens the client port.** Its
    /// previous run may have taken its clock ahead of wall time from a peer's (the skew
    /// guard lets a peer's versions be up to `--max-clock-skew` ahead), and issued versions
    /// there. Started again within that lead, with nothing to tell it (no `--join`, peers
    /// not yet back), its clock would issue those versions again: a CAS token reused for
    /// another value, and, if a peer holds the old write, two values under one version
    /// that the merge takes for the same write (a divergence nothing repairs). Once its
    /// wall clock is `max_skew_ms` past its start, every version it issues is above any its
    /// previous runs could have issued (DESIGN section 1). The wait is rarely idle: the
    /// peers that redial it meanwhile send it their snapshots, so it opens warm. A node
    /// with a `--join` is not held when it syncs: its sync shows it its peers' versions
    /// before it serves. It is held when it becomes ready without one (no peer answered,
    /// none could give a snapshot, or every peer is as empty as it is, which is also what a
    /// whole cluster restarted at once looks like): it then knows no more than a first
    /// node.
    pub fn new(
        has_data: bool,
        peers_configured: bool,
        now_ms: u64,
        join_timeout_ms: u64,
        max_skew_ms: u64,
    ) -> Self {
        let phase = if !peers_configured {
            Phase::Ready
        } else if has_data {
            Phase::Syncing
        } else {
            Phase::Choosing
        };
        let clock_lead_until_ms = now_ms.saturating_add(max_skew_ms);
        SyncPlan {
            phase,
            opened: phase == Phase::Ready && max_skew_ms == 0,
            donor: None,
            positions_known: has_data || !peers_configured,
            peers: BTreeMap::new(),
            deadline_ms: now_ms.saturating_add(join_timeout_ms),
            first_candidate_ms: None,
            clock_lead_until_ms,
            peers_configured,
            held_reason: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the client port may be open.
    pub fn opened(&self) -> bool {
        self.opened
    }

    pub fn donor(&self) -> Option<&str> {
        self.donor.as_deref()
    }

    /// Whether `peer` is linked and says its own initial sync is over (its hello or its
    /// latest status).
    pub fn peer_ready(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected && p.ready)
    }

    /// Whether hellos should ask peers to hold their streams.
    pub fn defer(&self) -> bool {
        !self.positions_known
    }

    /// Whether a snapshot arriving from `peer` is the one asked for in the initial sync
    /// (its positions are then ours).
    pub fn is_donor_snapshot(&self, peer: &str) -> bool {
        !self.positions_known && self.donor.as_deref() == Some(peer)
    }

    /// Stale contents were discarded: choose a donor again (the port stays open).
    pub fn restart(&mut self) {
        self.phase = Phase::Choosing;
        self.donor = None;
        self.positions_known = false;
        self.first_candidate_ms = None;
        self.held_reason = None;
    }

    /// A peer connected; `held`: our hello asked it to hold its stream. The hello went out
    /// a round trip ago: if what we have of every log became known meanwhile (the donor's
    /// snapshot began, or the node became ready), the peer is told to start at once.
    pub fn up(
        &mut self,
        name: &str,
        ready: bool,
        load: u16,
        fresh: bool,
        held: bool,
    ) -> Vec<Action> {
        if self.donor.as_deref() == Some(name) && self.phase != Phase::Ready {
            // A new connection to the donor (one replaced the other): the request and any
            // snapshot under way went with the old one. Choose again.
            self.lose_donor();
        }
        let release = held && self.positions_known;
        let p = self.peers.entry(name.to_string()).or_default();
        *p = PeerSync {
            connected: true,
            ready,
            load,
            fresh,
            held: held && !release,
            synced: None,
            snapshots_applied: 0,
        };
        if release {
            vec![Action::Start(name.to_string())]
        } else {
            Vec::new()
        }
    }

    pub fn down(&mut self, name: &str) {
        if let Some(p) = self.peers.get_mut(name) {
            p.connected = false;
            p.synced = None;
        }
        if self.donor.as_deref() == Some(name) && self.phase != Phase::Ready {
            self.lose_donor();
        }
    }

    /// Choose again; what the lost donor's snapshot brought stays (LWW), and the next
    /// donor's positions restart the other streams from where it stands.
    fn lose_donor(&mut self) {
        self.donor = None;
        self.positions_known = false;
        self.phase = Phase::Choosing;
        self.first_candidate_ms = None;
    }

    pub fn status(&mut self, name: &str, ready: bool, load: u16) {
        if let Some(p) = self.peers.get_mut(name) {
            p.ready = ready;
            p.load = load;
            if ready {
                p.fresh = false;
            }
        }
    }

    /// The donor's snapshot began: its positions are now ours (the caller recorded them);
    /// the held streams may start.
    pub fn snapshot_began(&mut self, name: &str) -> Vec<Action> {
        if !self.is_donor_snapshot(name) {
            return Vec::new();
        }
        self.positions_known = true;
        self.release_held()
    }

    pub fn snapshot_applied(&mut self, name: &str) {
        if let Some(p) = self.peers.get_mut(name) {
            p.snapshots_applied += 1;
        }
    }

    pub fn synced(&mut self, name: &str, snapshots: u32) {
        if let Some(p) = self.peers.get_mut(name) {
            p.synced = Some(snapshots);
        }
    }

    /// Decides what to do next; call after every event and periodically.
    /// `all_connected`: every member and seed known is connected.
    pub fn step(&mut self, now_ms: u64, all_connected: bool) -> Vec<Action> {
        let mut actions = Vec::new();

        if self.phase == Phase::Choosing && self.donor.is_none() {
            self.choose(now_ms, all_connected, &mut actions);
        }
        if self.phase == Phase::Syncing {
            let connected: Vec<&PeerSync> = self.peers.values().filter(|p| p.connected).collect();
            let donor_done = self
                .donor
                .as_ref()
                .is_none_or(|d| self.peers.get(d).is_some_and(PeerSync::done));
            // Every connected peer must have said so: one still holding its stream has
            // sent nothing yet.
            if donor_done && !connected.is_empty() && connected.iter().all(|p| p.done()) {
                let peers = connected.len();
                self.become_ready(ReadyReason::Synced { peers }, now_ms, &mut actions);
            }
        }
        if self.phase != Phase::Ready && now_ms >= self.deadline_ms && !self.opened {
            let any = self.peers.values().any(|p| p.connected);
            if !any {
                self.become_ready(ReadyReason::NoPeer, now_ms, &mut actions);
            } else if self.donor.is_none() {
                self.become_ready(ReadyReason::NoDonor, now_ms, &mut actions);
            }
            // A snapshot under way: wait for it (its progress is logged).
        }
        if self.phase == Phase::Ready && !self.opened && now_ms >= self.clock_lead_until_ms {
            self.opened = true;
            let reason = self.held_reason.take().unwrap_or(ReadyReason::ClockLead);
            actions.push(Action::Ready(reason));
        }
        actions
    }

    fn choose(&mut self, now_ms: u64, all_connected: bool, actions: &mut Vec<Action>) {
        let connected = || self.peers.iter().filter(|(_, p)| p.connected);
        let candidate = connected()
            .filter(|(_, p)| p.ready)
            .min_by_key(|(name, p)| (p.load, (*name).clone()))
            .map(|(name, _)| name.clone());
        if let Some(donor) = candidate {
            let first = *self.first_candidate_ms.get_or_insert(now_ms);
            if all_connected || now_ms >= first + DONOR_GRACE_MS {
                self.donor = Some(donor.clone());
                self.phase = Phase::Syncing;
                actions.push(Action::RequestSnapshot(donor));
            }
            return;
        }
        let mut peers = connected().peekable();
        if all_connected && peers.peek().is_some() && peers.all(|(_, p)| p.fresh) {
            self.positions_known = true;
            actions.extend(self.release_held());
            self.become_ready(ReadyReason::NewCluster, now_ms, actions);
        }
    }

    fn release_held(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for (name, p) in self.peers.iter_mut() {
            if p.held && Some(name) != self.donor.as_ref() {
                p.held = false;
                if p.connected {
                    actions.push(Action::Start(name.clone()));
                }
            }
        }
        if let Some(d) = self.donor.as_ref().and_then(|d| self.peers.get_mut(d)) {
            // The snapshot request started the donor's stream.
            d.held = false;
        }
        actions
    }

    fn become_ready(&mut self, reason: ReadyReason, now_ms: u64, actions: &mut Vec<Action>) {
        if !self.positions_known {
            // Serving without a donor: what we have of every log is nothing, say so.
            self.positions_known = true;
            actions.extend(self.release_held());
        }
        self.phase = Phase::Ready;
        self.donor = None;
        let synced = matches!(reason, ReadyReason::Synced { .. });
        let held = !self.peers_configured || !synced;
        if !self.opened && held && now_ms < self.clock_lead_until_ms {
            // Ready, but without a sync that showed it its peers' versions: its clock lead
            // is not yet waited out (see `new`); `step` opens the port when it is.
            // A first node says why it waited (`ClockLead`); a node with `--join` says
            // why it is ready without a sync, once its port opens.
            if self.peers_configured {
                self.held_reason = Some(reason);
            }
            return;
        }
        self.opened = true;
        actions.push(Action::Ready(reason));
    }
}

#[cfg(test)]
mod tests;
