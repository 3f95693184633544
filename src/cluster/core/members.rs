//! The member lifecycle in the core (DESIGN.md section 8): membership events, a peer's
//! leaving, an operator's forget and `--remove-down-after`, applied to the peer table (see
//! [`crate::cluster::peers::MemberState`] for the states and rules), plus what the rest of
//! the core must drop when a member goes: its session, and the sync plan's and catch-ups'
//! wait for it.

use super::{Event, LinkId, Replica, CLOSE_REFUSED, CLOSE_RESTARTED};
use crate::cluster::peers::{ForgetError, MemberChange, MemberState, MembershipEvent};
use crate::replication::log::RunId;
use std::net::SocketAddr;

/// One member as `stats cluster` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub state: MemberState,
    pub node_id: u16,
    pub addr: Option<SocketAddr>,
    /// ms since the epoch of the last time it was linked: `now` while linked, 0 if never.
    pub last_contact_ms: u64,
    /// Why it was forgotten, for a member shown as `left`.
    pub forgotten: Option<&'static str>,
}

impl Replica {
    /// Feeds what membership (SWIM) says about `name` into the core: the peer table's
    /// [`crate::cluster::peers::PeerTable::on_membership`], and, when the member is
    /// forgotten while still linked (membership says it left), the end of that link. Then
    /// the initial sync looks again: it no longer waits for a member down or gone.
    ///
    /// `process` is the process the verdict is about (its replication run id), when known:
    /// gossip can arrive late, and "left", "down" or "suspect" about an earlier process of
    /// a member this node is linked to in a newer one is old news, not a reason to drop the
    /// live link (a node stopped and started again quickly).
    pub fn on_membership(
        &mut self,
        name: &str,
        process: Option<RunId>,
        event: MembershipEvent,
        now_ms: u64,
    ) -> MemberChange<LinkId> {
        let linked_elsewhere = |r: &Replica, run: RunId| {
            r.table
                .peer(name)
                .and_then(|p| p.link.as_ref())
                .is_some_and(|(meta, _)| meta.run_id != run)
        };
        if let Some(run) = process {
            if event != MembershipEvent::Alive && linked_elsewhere(self, run) {
                tracing::debug!(node = %self.name, peer = %name, ?event, "membership verdict about an earlier process of a linked member: ignored");
                return MemberChange::Unchanged;
            }
        }
        let change = self.table.on_membership(name, event, now_ms);
        match &change {
            MemberChange::Unchanged => return change,
            MemberChange::Changed => {
                tracing::info!(node = %self.name, peer = %name, ?event, "membership: member is now {}", self.member_state(name).as_str());
            }
            MemberChange::Forgotten { link } => {
                tracing::info!(node = %self.name, peer = %name, "member left: forgotten (not dialed, not waited for) until it joins again");
                if let Some(link) = *link {
                    self.forgotten_link(name, link, now_ms);
                }
            }
        }
        self.sync_step(now_ms);
        self.wake = true;
        change
    }

    /// The link `link` ended because its peer announced it leaves (a graceful shutdown):
    /// the link is down, and the member forgotten. Returns whether it was the peer's
    /// registered connection (as [`Replica::link_down`]).
    pub fn link_left(&mut self, link: LinkId, now_ms: u64) -> bool {
        let peer = self.sessions.get(&link).map(|s| s.peer.clone());
        if !self.link_down(link, now_ms) {
            return false;
        }
        if let Some(peer) = peer {
            self.on_membership(&peer, None, MembershipEvent::Left, now_ms);
        }
        true
    }

    /// Membership says `name` restarted: the process with replication run id `old` was
    /// replaced by another. A connection still registered to `old` leads nowhere (QUIC
    /// would notice only at its idle time-out, and the planner would keep counting on what
    /// that process had): it ends now, like a lost link (catch-ups and the sync plan stop
    /// waiting on it), and the member is dialed at once, so that its new run's hello
    /// re-plans the sync (a delta, or a snapshot if the restart lost our position) without
    /// waiting for a backoff. A connection to any other process is kept: the news may be
    /// late (a member restarted twice). Returns whether a link was ended.
    pub fn member_restarted(&mut self, name: &str, old: RunId, now_ms: u64) -> bool {
        let Some(p) = self.table.peer(name) else {
            return false;
        };
        let stale = p
            .link
            .as_ref()
            .filter(|(meta, _)| meta.run_id == old)
            .map(|(_, link)| *link);
        let ended = match stale {
            Some(link) => {
                tracing::info!(node = %self.name, peer = %name, "member restarted: ending the connection to its previous process");
                self.link_down(link, now_ms);
                self.events.push_back(Event::Close {
                    link,
                    code: CLOSE_RESTARTED,
                    reason: "membership says this node restarted: this connection is to its previous process".into(),
                });
                true
            }
            None => false,
        };
        if self.table.peer(name).is_some_and(|p| p.link.is_none()) {
            self.table.dial_soon(name, now_ms);
            self.events.push_back(Event::Dial);
            self.wake = true;
        }
        ended
    }

    /// An operator forgets `name` at once (`cluster forget`); see
    /// [`crate::cluster::peers::PeerTable::forget`].
    pub fn forget_member(&mut self, name: &str, now_ms: u64) -> Result<(), ForgetError> {
        self.table.forget(name, now_ms)?;
        tracing::warn!(node = %self.name, peer = %name, "member forgotten by the operator: not dialed, not waited for, until it joins again");
        self.sync_step(now_ms);
        self.wake = true;
        Ok(())
    }

    /// The lifecycle's timers: the link-loss fallback's down, and `--remove-down-after`.
    pub(super) fn members_tick(&mut self, now_ms: u64) {
        let tick = self.table.tick_members(now_ms, self.remove_down_after_ms);
        for peer in &tick.down {
            tracing::warn!(node = %self.name, %peer, "member down: its link has been lost for {} s; no longer waited for (still dialed)", crate::cluster::peers::LINK_DOWN_AFTER_MS / 1000);
        }
        for peer in &tick.forgotten {
            tracing::warn!(node = %self.name, %peer, "member down for longer than --remove-down-after: forgotten (no longer dialed) until it joins again");
        }
    }

    /// Every member's state, those forgotten (shown as `left`) included, at `now_ms`.
    pub fn members(&self, now_ms: u64) -> Vec<MemberView> {
        let mut out: Vec<MemberView> = self
            .table
            .peers()
            .map(|(name, p)| MemberView {
                name: name.clone(),
                state: self.member_state(name),
                node_id: p.node_id,
                addr: p.addr,
                last_contact_ms: if p.link.is_some() {
                    now_ms
                } else {
                    p.last_contact_ms
                },
                forgotten: None,
            })
            .collect();
        out.extend(self.table.forgotten().map(|(name, f)| MemberView {
            name: name.clone(),
            state: MemberState::Left,
            node_id: f.node_id,
            addr: f.addr,
            last_contact_ms: f.last_contact_ms,
            forgotten: Some(f.reason.as_str()),
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A member's state: the table's, refined by what the core knows of the sync between
    /// us (syncing while a snapshot runs either way, while it must be resynced, or while
    /// it says its own initial sync is not over).
    pub fn member_state(&self, name: &str) -> MemberState {
        let Some(p) = self.table.peer(name) else {
            return if self.table.is_forgotten(name) {
                MemberState::Left
            } else {
                MemberState::Joining
            };
        };
        MemberState::linked(p, || {
            let link = p.link.as_ref().map(|(_, l)| *l);
            let busy = link
                .and_then(|l| self.sessions.get(&l))
                .is_some_and(|s| s.walk.is_some() || s.incoming.is_some());
            !busy && !p.needs_resync && self.plan.peer_ready(name)
        })
    }

    /// A member forgotten while linked: end its link here (the table no longer knows it,
    /// so the link's end will be no news) and tell the caller to close it.
    fn forgotten_link(&mut self, peer: &str, link: LinkId, now_ms: u64) {
        self.end_session(link);
        self.reconciler.link_down(peer, now_ms);
        self.catch_ups.link_down(peer);
        self.plan.down(peer);
        self.events.push_back(Event::Close {
            link,
            code: CLOSE_REFUSED,
            reason: "membership says this node left: it was forgotten; reconnect to join again"
                .into(),
        });
    }
}
