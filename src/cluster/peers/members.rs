//! The member lifecycle (DESIGN.md section 8): what the peer table knows of each member's
//! liveness, and when a member is forgotten.
//!
//! A member is, as `stats cluster` shows it ([`MemberState`]):
//! - **joining**: known (from `--join`, a connection or gossip), but no link to it now and
//!   nothing says it is unwell: it has not completed a hello with us yet, or is redialed;
//! - **syncing**: linked, but a snapshot or resync between us is under way, or it says its
//!   own initial sync is not over (the replica core decides, [`MemberState::linked`]);
//! - **ready**: linked and synced;
//! - **suspect** / **down**: what membership says ([`MembershipEvent`]), or, until SWIM is
//!   wired, the fallback below;
//! - **left**: forgotten, see below.
//!
//! **Forgotten.** A member that left (its graceful shutdown closes every link with
//! `CLOSE_LEAVING`, or membership says so), that was down longer than
//! `--remove-down-after`, or that an operator forgot ([`PeerTable::forget`]) leaves the
//! table: it is not dialed, not waited for by the initial sync or by catch-ups, not
//! counted in `peers_connected`, and not learned again from another member's gossip, which
//! may lag. If the node itself connects again, its hello makes it a member again: an
//! ordinary join. A record of it is kept (bounded) so that `stats cluster` can still show
//! it as `left`. One exception: a `--join` address that led to it is still dialed as a
//! seed (never waited for), unless an operator forgot it: `--join` is the operator's
//! configuration, and the only way back to a restarted node that has no `--join` of its
//! own (a cluster's first node), or across a partition longer than `--remove-down-after`.
//!
//! **Down, not yet forgotten.** Still dialed (with backoff, so a partition heals by
//! itself), but no longer waited for: neither by a joiner choosing its donor nor by a
//! catch-up (anti-entropy repairs what such a member brings when it comes back).
//!
//! **Fallback detection without SWIM.** A link lost without a leave makes the member
//! suspect; not linked again within [`LINK_DOWN_AFTER_MS`], it is down. This holds for
//! each member whose last connection did not carry SWIM (a node of the previous release,
//! or the simulator's cores, which run no SWIM); for one that did
//! ([`PeerTable::set_gossips`]), SWIM's verdicts ([`PeerTable::on_membership`]) decide
//! instead: a lost link is only one node's view, where SWIM's suspicion is the cluster's.

use std::net::SocketAddr;

use super::{Peer, PeerTable, MAX_MEMBERS};

/// Fallback (until SWIM is wired): a member whose link was lost, and not re-established
/// within this, is down. Long enough for a crashed node restarted by its supervisor and a
/// redial at the longest backoff ([`super::BACKOFF_MAX_MS`], jittered up to 7.5 s) to
/// succeed first; short enough that a joiner stops waiting for a dead member soon.
pub const LINK_DOWN_AFTER_MS: u64 = 15_000;

/// What membership (SWIM) says about a member; fed into the peer table with
/// [`PeerTable::on_membership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipEvent {
    /// It answers (again): clears suspect and down.
    Alive,
    /// It stopped answering; others are asked to confirm.
    Suspect,
    /// Confirmed unreachable: no longer waited for; forgotten after `--remove-down-after`.
    Down,
    /// It announced that it leaves: forgotten at once.
    Left,
}

/// What the table knows of a member's health, beside its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    #[default]
    Alive,
    Suspect {
        since_ms: u64,
    },
    Down {
        since_ms: u64,
    },
}

/// A member's state, as `stats cluster` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Joining,
    Syncing,
    Ready,
    Suspect,
    Down,
    Left,
}

impl MemberState {
    /// Every state, in lifecycle order (for metrics).
    pub const ALL: [MemberState; 6] = [
        MemberState::Joining,
        MemberState::Syncing,
        MemberState::Ready,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Syncing => "syncing",
            MemberState::Ready => "ready",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }

    /// The state of a member still in the table; `synced` (asked only when it is linked
    /// and healthy) says whether the sync between us is over, which only the replica core
    /// knows.
    pub fn linked<L>(peer: &Peer<L>, synced: impl FnOnce() -> bool) -> MemberState {
        match (peer.liveness, &peer.link) {
            (Liveness::Down { .. }, _) => MemberState::Down,
            (Liveness::Suspect { .. }, _) => MemberState::Suspect,
            (Liveness::Alive, None) => MemberState::Joining,
            (Liveness::Alive, Some(_)) if synced() => MemberState::Ready,
            (Liveness::Alive, Some(_)) => MemberState::Syncing,
        }
    }
}

/// Why a member was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetReason {
    /// It announced its leaving (a graceful shutdown), or membership said so.
    Left,
    /// Down for longer than `--remove-down-after`.
    DownTooLong,
    /// An operator's `cluster forget`.
    Operator,
}

impl ForgetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgetReason::Left => "left",
            ForgetReason::DownTooLong => "down_too_long",
            ForgetReason::Operator => "operator",
        }
    }
}

/// What is kept of a forgotten member, for `stats cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub node_id: u16,
    pub addr: Option<SocketAddr>,
    pub reason: ForgetReason,
    /// When it was forgotten, and when it was last linked (0: never), in ms since the epoch.
    pub at_ms: u64,
    pub last_contact_ms: u64,
}

/// What a membership event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange<L> {
    /// Nothing: an unknown or forgotten member, or one already in that state.
    Unchanged,
    /// Its liveness changed (it is still a member).
    Changed,
    /// It is forgotten now. `link`: its connection, still registered when the event came;
    /// the caller ends it (the table no longer knows it).
    Forgotten { link: Option<L> },
}

/// Why an operator's forget was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("no member named {0:?}")]
    Unknown(String),
    #[error("{0} is already forgotten")]
    AlreadyForgotten(String),
    #[error("{0} is connected: stop it first (a running node would rejoin at once)")]
    Connected(String),
}

/// What [`PeerTable::tick_members`] changed, to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemberTick {
    /// Members found down by the link-loss fallback.
    pub down: Vec<String>,
    /// Members forgotten for being down longer than `--remove-down-after`.
    pub forgotten: Vec<String>,
}

impl<L: Clone> PeerTable<L> {
    /// Feeds what membership says about `name` into the table (see the module doc).
    /// `Alive` about a forgotten member changes nothing: a forgotten node comes back by
    /// connecting, as an ordinary join.
    pub fn on_membership(
        &mut self,
        name: &str,
        event: MembershipEvent,
        now_ms: u64,
    ) -> MemberChange<L> {
        if event == MembershipEvent::Left {
            return match self.forget_as(name, ForgetReason::Left, now_ms) {
                Some(link) => MemberChange::Forgotten { link },
                None => MemberChange::Unchanged,
            };
        }
        let Some(p) = self.peers.get_mut(name) else {
            return MemberChange::Unchanged;
        };
        let next = match (event, p.liveness) {
            (MembershipEvent::Alive, Liveness::Alive) => return MemberChange::Unchanged,
            (MembershipEvent::Alive, _) => Liveness::Alive,
            (MembershipEvent::Suspect, Liveness::Alive) => Liveness::Suspect { since_ms: now_ms },
            (MembershipEvent::Suspect, _) => return MemberChange::Unchanged,
            (MembershipEvent::Down, Liveness::Down { .. }) => return MemberChange::Unchanged,
            (MembershipEvent::Down, _) => Liveness::Down { since_ms: now_ms },
            (MembershipEvent::Left, _) => return MemberChange::Unchanged,
        };
        p.liveness = next;
        MemberChange::Changed
    }

    /// An operator forgets `name` at once (DESIGN.md section 8): typically a node stopped
    /// for good with `kill -9`, which announced nothing. A connected member is refused.
    pub fn forget(&mut self, name: &str, now_ms: u64) -> Result<(), ForgetError> {
        match self.peers.get(name) {
            Some(p) if p.link.is_some() => Err(ForgetError::Connected(name.to_string())),
            Some(_) => {
                self.forget_as(name, ForgetReason::Operator, now_ms);
                Ok(())
            }
            None if self.forgotten.contains_key(name) => {
                Err(ForgetError::AlreadyForgotten(name.to_string()))
            }
            None => Err(ForgetError::Unknown(name.to_string())),
        }
    }

    /// Records whether `name`'s connection carries SWIM (the shell says so at every link
    /// up): if it does, SWIM's verdicts replace the link-loss fallback for that member
    /// (see the module doc); a member that does not keeps the fallback.
    pub fn set_gossips(&mut self, name: &str, gossips: bool) {
        if let Some(p) = self.peers.get_mut(name) {
            p.gossips = gossips;
        }
    }

    /// Timers: the fallback's suspect-to-down, and forgetting members down longer than
    /// `remove_down_after_ms`. Call periodically.
    pub fn tick_members(&mut self, now_ms: u64, remove_down_after_ms: u64) -> MemberTick {
        let mut tick = MemberTick::default();
        for (name, p) in self.peers.iter_mut() {
            if p.link.is_some() {
                continue;
            }
            match p.liveness {
                Liveness::Suspect { since_ms }
                    if !p.gossips && now_ms.saturating_sub(since_ms) >= LINK_DOWN_AFTER_MS =>
                {
                    p.liveness = Liveness::Down { since_ms: now_ms };
                    tick.down.push(name.clone());
                }
                Liveness::Down { since_ms }
                    if now_ms.saturating_sub(since_ms) >= remove_down_after_ms =>
                {
                    tick.forgotten.push(name.clone());
                }
                _ => {}
            }
        }
        for name in &tick.forgotten {
            self.forget_as(name, ForgetReason::DownTooLong, now_ms);
        }
        tick
    }

    /// Dials `name` at the next [`PeerTable::due`], from the shortest backoff: it has just
    /// restarted, so the failures that grew its backoff were its old process's.
    pub fn dial_soon(&mut self, name: &str, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(name) {
            p.next_dial_ms = now_ms;
            p.backoff_ms = super::BACKOFF_MIN_MS;
            p.liveness = Liveness::Alive;
        }
    }

    /// The members forgotten, and why (for `stats cluster`).
    pub fn forgotten(&self) -> impl Iterator<Item = (&String, &Forgotten)> {
        self.forgotten.iter()
    }

    /// Whether `name` is forgotten (and not a member again since).
    pub fn is_forgotten(&self, name: &str) -> bool {
        self.forgotten.contains_key(name)
    }

    /// The members still worth waiting for (the initial sync, catch-ups): all but those
    /// down.
    pub fn awaited(&self) -> impl Iterator<Item = &str> {
        self.peers
            .iter()
            .filter(|(_, p)| !matches!(p.liveness, Liveness::Down { .. }))
            .map(|(n, _)| n.as_str())
    }

    /// Moves `name` from the members to the forgotten. Returns `None` when it was not a
    /// member, else its link (if it had one), which the caller ends.
    fn forget_as(&mut self, name: &str, reason: ForgetReason, now_ms: u64) -> Option<Option<L>> {
        let p = self.peers.remove(name)?;
        if self.forgotten.len() >= MAX_MEMBERS {
            // The oldest record goes: what matters is that forgotten members stay out.
            let oldest = self
                .forgotten
                .iter()
                .min_by_key(|(_, f)| f.at_ms)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                self.forgotten.remove(&n);
            }
        }
        let last_contact_ms = if p.link.is_some() {
            now_ms
        } else {
            p.last_contact_ms
        };
        self.forgotten.insert(
            name.to_string(),
            Forgotten {
                node_id: p.node_id,
                addr: p.addr,
                reason,
                at_ms: now_ms,
                last_contact_ms,
            },
        );
        Some(p.link.map(|(_, l)| l))
    }
}

#[cfg(test)]
mod tests;
