//! The peer table: who the members are, which connection is *the* connection to each of
//! them, and when to dial whom. Sans-IO: plain data and decisions, with time passed in; the
//! async shell (`cluster::link`, `cluster::dial`) acts on what it says.
//!
//! **One connection per pair.** Both nodes of a pair may dial each other at the same moment.
//! Each side registers a connection once the peer's hello has arrived, and when a second one
//! shows up, both sides keep the same one without talking about it:
//! - a connection from a newer run of the peer (it restarted) replaces the old one, whose
//!   other end is gone;
//! - otherwise the connection dialed by the node with the smaller name wins.
//!
//! `L` is the shell's handle on a connection (a `quinn::Connection`; an integer in tests).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::certs::NodeName;
use crate::replication::frame::{Hello, Member};
use crate::replication::log::RunId;

mod members;
pub use members::{
    ForgetError, ForgetReason, Forgotten, Liveness, MemberChange, MemberState, MemberTick,
    MembershipEvent, LINK_DOWN_AFTER_MS,
};

/// First retry delay after a failed dial or a lost connection; doubled per failure.
pub const BACKOFF_MIN_MS: u64 = 100;
/// The longest delay between two dials of the same peer.
pub const BACKOFF_MAX_MS: u64 = 5_000;
/// A connection that lived this long was a success: the next dial after it ends starts
/// from the shortest delay again. One that dies sooner (refused right after its hello, a
/// protocol error) counts as a failure, so that a peer that keeps closing on us is not
/// redialed ten times a second.
pub const STABLE_MS: u64 = 10_000;
/// The most members a node keeps (node ids have 10 bits): a broken or hostile peer cannot
/// make it keep, and dial, an unbounded list.
pub const MAX_MEMBERS: usize = 1024;

/// How a connection came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkMeta {
    pub dialed_by_me: bool,
    pub addr: SocketAddr,
    pub run_id: RunId,
    /// Distinguishes connections (the shell's counter).
    pub token: u64,
}

/// The answer to [`PeerTable::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<L> {
    /// This is the connection to the peer now; `replaced` is the previous one, to close;
    /// `restarted` when that one was from an earlier run of the peer.
    Keep {
        replaced: Option<L>,
        restarted: bool,
    },
    /// Another connection to the same peer wins the tie-break: close this one.
    Duplicate,
    /// The connection leads to this node itself (a `--join` address of our own).
    ToSelf,
    /// The peer uses a node id that is already this node's or another member's.
    IdClash { id: u16, holder: String },
}

/// Everything known about one member.
#[derive(Debug, Clone)]
pub struct Peer<L> {
    pub node_id: u16,
    /// Its cluster address, once known (from a connection or from gossip).
    pub addr: Option<SocketAddr>,
    pub link: Option<(LinkMeta, L)>,
    /// When the current connection was registered (ms since the epoch).
    pub since_ms: u64,
    /// Connections registered after the first one.
    pub reconnects: u64,
    connected_before: bool,
    /// The peer fell off our replication log and needs a resync.
    pub needs_resync: bool,
    next_dial_ms: u64,
    backoff_ms: u64,
    dialing: bool,
    /// What membership (or the link-loss fallback) says of it: see [`members`].
    pub liveness: Liveness,
    /// When it was last linked (ms since the epoch; 0: never): the time its last
    /// connection ended, or `since_ms`-onwards while one is up.
    pub last_contact_ms: u64,
    /// Its last connection carried SWIM: membership's verdicts, not a lost link, say
    /// whether it is suspect or down (see [`members`]).
    pub gossips: bool,
}

impl<L> Peer<L> {
    fn new(node_id: u16, addr: Option<SocketAddr>) -> Self {
        Peer {
            node_id,
            addr,
            link: None,
            since_ms: 0,
            reconnects: 0,
            connected_before: false,
            needs_resync: false,
            next_dial_ms: 0,
            backoff_ms: BACKOFF_MIN_MS,
            dialing: false,
            liveness: Liveness::Alive,
            last_contact_ms: 0,
            gossips: false,
        }
    }
}

/// A seed address from `--join`/`-x`: dialed until we learn which member it is.
#[derive(Debug, Clone)]
pub struct Seed {
    pub addr: String,
    /// The member it turned out to be (or this node's own name).
    pub name: Option<String>,
    next_dial_ms: u64,
    backoff_ms: u64,
    dialing: bool,
    /// The last failure, so that a repeated one is logged once.
    pub last_error: Option<String>,
}

/// How a dial ended, which decides when the next one comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialEnd {
    /// It made a connection that was registered; that connection's end schedules the next.
    Connected,
    /// Nothing answered within the dial time-out (a cut path, a stopped or dead peer): the
    /// next try comes after the shortest jittered delay, without growing the backoff, so
    /// that a path that heals is used again within a second. Nothing reached the peer, so
    /// trying again soon burdens nobody.
    Unanswered,
    /// The peer answered and refused (or the connection failed right after): exponential
    /// backoff, so that a peer that keeps refusing is not redialed ten times a second.
    Failed,
}

/// Something to dial now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    Member { name: String, addr: SocketAddr },
    Seed { index: usize, addr: String },
}

pub struct PeerTable<L> {
    name: String,
    node_id: u16,
    peers: BTreeMap<String, Peer<L>>,
    seeds: Vec<Seed>,
    /// Members forgotten (see [`members`]), at most [`MAX_MEMBERS`].
    forgotten: BTreeMap<String, Forgotten>,
    /// Jitter source (xorshift), seeded by the caller.
    rng: u64,
}

impl<L: Clone> PeerTable<L> {
    pub fn new(name: &str, node_id: u16, seeds: Vec<String>, seed_rng: u64) -> Self {
        PeerTable {
            name: name.to_string(),
            node_id,
            peers: BTreeMap::new(),
            seeds: seeds
                .into_iter()
                .map(|addr| Seed {
                    addr,
                    name: None,
                    next_dial_ms: 0,
                    backoff_ms: BACKOFF_MIN_MS,
                    dialing: false,
                    last_error: None,
                })
                .collect(),
            forgotten: BTreeMap::new(),
            rng: seed_rng | 1,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn peers(&self) -> impl Iterator<Item = (&String, &Peer<L>)> {
        self.peers.iter()
    }

    pub fn peer(&self, name: &str) -> Option<&Peer<L>> {
        self.peers.get(name)
    }

    pub fn peer_mut(&mut self, name: &str) -> Option<&mut Peer<L>> {
        self.peers.get_mut(name)
    }

    pub fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    pub fn connected(&self) -> usize {
        self.peers.values().filter(|p| p.link.is_some()).count()
    }

    /// Whether every member known, and every seed, is connected: nobody else to hear
    /// from before deciding how to sync. Members down, and seeds that led to a forgotten
    /// member, are not waited for.
    pub fn all_connected(&self) -> bool {
        // A seed counts once its connection is registered (its hello exchanged), not when
        // its name is known from the handshake.
        let seed_up = |s: &Seed| {
            s.name.as_ref().is_some_and(|n| {
                *n == self.name
                    || self.forgotten.contains_key(n)
                    || self.peers.get(n).is_some_and(|p| p.link.is_some())
            })
        };
        let member_up =
            |p: &Peer<L>| p.link.is_some() || matches!(p.liveness, Liveness::Down { .. });
        self.seeds.iter().all(seed_up) && self.peers.values().all(member_up)
    }

    /// Registers a connection whose hello has arrived, deciding whether it is the one to use.
    pub fn offer(&mut self, hello: &Hello, meta: LinkMeta, link: L, now_ms: u64) -> Offer<L> {
        if hello.name == self.name {
            return Offer::ToSelf;
        }
        if hello.node_id == self.node_id {
            return Offer::IdClash {
                id: hello.node_id,
                holder: self.name.clone(),
            };
        }
        if let Some((holder, _)) = self
            .peers
            .iter()
            .find(|(n, p)| p.node_id == hello.node_id && **n != hello.name)
        {
            return Offer::IdClash {
                id: hello.node_id,
                holder: holder.clone(),
            };
        }
        let me_smaller = self.name.as_str() < hello.name.as_str();
        // A forgotten member that connects again is an ordinary join.
        self.forgotten.remove(&hello.name);
        let peer = self
            .peers
            .entry(hello.name.clone())
            .or_insert_with(|| Peer::new(hello.node_id, Some(meta.addr)));
        peer.node_id = hello.node_id;
        let (replaced, restarted) = match &peer.link {
            None => (None, false),
            Some((old, old_link)) => {
                let newer_run = old.run_id != meta.run_id;
                // The tie-break: the connection dialed by the smaller name.
                let preferred = |m: &LinkMeta| m.dialed_by_me == me_smaller;
                if newer_run || (preferred(&meta) && !preferred(old)) {
                    (Some(old_link.clone()), newer_run)
                } else {
                    return Offer::Duplicate;
                }
            }
        };
        peer.addr = Some(meta.addr);
        peer.link = Some((meta, link));
        peer.since_ms = now_ms;
        peer.last_contact_ms = now_ms;
        peer.liveness = Liveness::Alive;
        if peer.connected_before {
            peer.reconnects += 1;
        }
        peer.connected_before = true;
        for seed in &mut self.seeds {
            if seed.name.is_none() && seed_matches(&seed.addr, meta.addr) {
                seed.name = Some(hello.name.clone());
            }
        }
        Offer::Keep {
            replaced,
            restarted,
        }
    }

    /// The connection with `token` to `name` ended. Returns whether it was the registered
    /// one (then the peer is down; otherwise it was a duplicate and nothing changes). With
    /// the link-loss fallback on, the member is suspect from now (see [`members`]).
    pub fn down(&mut self, name: &str, token: u64, now_ms: u64) -> bool {
        let Some(peer) = self.peers.get_mut(name) else {
            return false;
        };
        if peer.link.as_ref().map(|(m, _)| m.token) != Some(token) {
            return false;
        }
        peer.link = None;
        peer.last_contact_ms = now_ms;
        if !peer.gossips && peer.liveness == Liveness::Alive {
            peer.liveness = Liveness::Suspect { since_ms: now_ms };
        }
        if now_ms.saturating_sub(peer.since_ms) >= STABLE_MS {
            peer.backoff_ms = BACKOFF_MIN_MS;
        }
        let delay = jitter(&mut self.rng, peer.backoff_ms);
        peer.next_dial_ms = now_ms + delay;
        if now_ms.saturating_sub(peer.since_ms) < STABLE_MS {
            peer.backoff_ms = (peer.backoff_ms * 2).min(BACKOFF_MAX_MS);
        }
        true
    }

    /// Merges gossiped members. Returns whether anything new was learned, and the members
    /// refused because their node id is this node's or another member's (to report). Names
    /// that are not valid node names, forgotten members (gossip may lag behind their
    /// leaving; one that comes back connects itself) and members beyond [`MAX_MEMBERS`]
    /// are ignored.
    pub fn learn(&mut self, members: &[Member]) -> (bool, Vec<Member>) {
        let mut changed = false;
        let mut clashes = Vec::new();
        for m in members {
            if m.name == self.name
                || self.forgotten.contains_key(&m.name)
                || NodeName::new(&m.name).is_err()
            {
                continue;
            }
            let Ok(addr) = m.addr.parse::<SocketAddr>() else {
                continue;
            };
            let taken = m.node_id == self.node_id
                || self
                    .peers
                    .iter()
                    .any(|(n, p)| p.node_id == m.node_id && *n != m.name);
            if taken {
                clashes.push(m.clone());
                continue;
            }
            if !self.peers.contains_key(&m.name) && self.peers.len() >= MAX_MEMBERS {
                continue;
            }
            match self.peers.get_mut(&m.name) {
                Some(p) if p.addr.is_some() => {}
                Some(p) => {
                    p.addr = Some(addr);
                    changed = true;
                }
                None => {
                    self.peers
                        .insert(m.name.clone(), Peer::new(m.node_id, Some(addr)));
                    changed = true;
                }
            }
        }
        (changed, clashes)
    }

    /// The members to gossip: every peer whose address is known.
    pub fn members(&self) -> Vec<Member> {
        self.peers
            .iter()
            .filter_map(|(name, p)| {
                p.addr.map(|a| Member {
                    name: name.clone(),
                    node_id: p.node_id,
                    addr: a.to_string(),
                })
            })
            .collect()
    }

    /// Dials that are due at `now_ms`; each is marked as in progress until
    /// [`PeerTable::dial_ended`].
    pub fn due(&mut self, now_ms: u64) -> Vec<Dial> {
        let mut out = Vec::new();
        for (name, p) in self.peers.iter_mut() {
            if p.link.is_none() && !p.dialing && now_ms >= p.next_dial_ms {
                if let Some(addr) = p.addr {
                    p.dialing = true;
                    out.push(Dial::Member {
                        name: name.clone(),
                        addr,
                    });
                }
            }
        }
        for (index, s) in self.seeds.iter_mut().enumerate() {
            // A seed is dialed until it leads to this node or to a registered member:
            // one that answered as some member whose hello never came (it went away at
            // that moment) is still the only way to that member. One that led to a
            // member forgotten because it left or was down too long is dialed as a seed
            // again: it is the operator's configuration, and the only way back to a node
            // that has no `--join` of its own (a cluster's first node, restarted). One
            // that led to a member the operator forgot is not.
            let known = s.name.as_ref().is_some_and(|n| {
                *n == self.name
                    || self.peers.contains_key(n)
                    || self
                        .forgotten
                        .get(n)
                        .is_some_and(|f| f.reason == ForgetReason::Operator)
            });
            if !known && !s.dialing && now_ms >= s.next_dial_ms {
                s.dialing = true;
                out.push(Dial::Seed {
                    index,
                    addr: s.addr.clone(),
                });
            }
        }
        out
    }

    /// A dial (and the connection it made, if any) is over; `end` says how, which sets the
    /// delay before the next one.
    pub fn dial_ended(&mut self, dial: &Dial, end: DialEnd, now_ms: u64) {
        if let (Dial::Member { name, .. }, DialEnd::Failed | DialEnd::Unanswered) = (dial, end) {
            self.never_reached(name, now_ms);
        }
        let (backoff, next, dialing) = match dial {
            Dial::Member { name, .. } => match self.peers.get_mut(name) {
                Some(p) => (&mut p.backoff_ms, &mut p.next_dial_ms, &mut p.dialing),
                None => return,
            },
            Dial::Seed { index, .. } => match self.seeds.get_mut(*index) {
                Some(s) => (&mut s.backoff_ms, &mut s.next_dial_ms, &mut s.dialing),
                None => return,
            },
        };
        *dialing = false;
        match end {
            // The connection's end already scheduled the next dial (see `down`).
            DialEnd::Connected => {}
            DialEnd::Unanswered => *next = now_ms + jitter(&mut self.rng, BACKOFF_MIN_MS),
            DialEnd::Failed => {
                *next = now_ms + jitter(&mut self.rng, *backoff);
                *backoff = (*backoff * 2).min(BACKOFF_MAX_MS);
            }
        }
    }

    /// A dial of `name` failed. A member never linked (learned from gossip) has no lost
    /// link to make it suspect, and SWIM may never report it (one already down when this
    /// node first heard of it is no news to SWIM): without SWIM's word about it, failing
    /// to reach it makes it suspect, and the fallback's timer then makes it down (no
    /// longer waited for; forgotten after `--remove-down-after`), as for a lost link.
    fn never_reached(&mut self, name: &str, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(name) {
            if p.last_contact_ms == 0 && !p.gossips && p.liveness == Liveness::Alive {
                p.liveness = Liveness::Suspect { since_ms: now_ms };
            }
        }
    }

    /// Records which member seed `index` turned out to be, so that it is dialed by name
    /// from then on (a host-name seed cannot be matched by address).
    pub fn seed_named(&mut self, index: usize, name: &str) {
        if let Some(s) = self.seeds.get_mut(index) {
            s.name = Some(name.to_string());
        }
    }

    /// Records that seed `index` is this node itself (it is not dialed again).
    pub fn seed_is_self(&mut self, index: usize) {
        if let Some(s) = self.seeds.get_mut(index) {
            s.name = Some(self.name.clone());
        }
    }

    /// Records a seed's dial error; returns true when the operator should hear of it: it
    /// differs from the last one, and the seed does not lead to a forgotten member. A
    /// member that left (or was forgotten) is expected not to answer: its seed is still
    /// dialed so that it is found again when it comes back, but its silence is no news
    /// (every node of a cluster stopped together would otherwise warn about the others).
    pub fn seed_failed(&mut self, index: usize, error: String) -> bool {
        let forgotten = &self.forgotten;
        match self.seeds.get_mut(index) {
            Some(s) if s.last_error.as_ref() != Some(&error) => {
                s.last_error = Some(error);
                !s.name.as_ref().is_some_and(|n| forgotten.contains_key(n))
            }
            _ => false,
        }
    }
}

/// Whether a seed address (as written by the operator) is the socket address a connection
/// came from: only literal IP:port seeds can be matched; host names are left to the hello.
fn seed_matches(seed: &str, addr: SocketAddr) -> bool {
    seed.parse::<SocketAddr>().is_ok_and(|s| s == addr)
}

/// `base` scaled by a random factor in [0.5, 1.5), so that nodes restarted together do not
/// dial in lockstep.
fn jitter(rng: &mut u64, base: u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    base / 2 + *rng % base.max(1)
}

#[cfg(test)]
mod tests;
