//! The async shell of [`membership`](super::membership): SWIM's messages travel as QUIC
//! datagrams on the authenticated peer connections (no second socket, no second trust
//! setup), one timer task fires its timers, and its verdicts go to the log, the counters
//! and the member lifecycle ([`super::peers::PeerTable::on_membership`]: suspect, down,
//! and left, which forgets the member: no longer dialed nor waited for).
//!
//! A datagram is believed only from the connection of the member it claims to come from:
//! the certificate name is checked against the sender inside the message, and a mismatch
//! is dropped and counted (`gossip_spoofed`). Datagrams go only to peers whose hello
//! carries [`HELLO_GOSSIP`] (a node of the previous release reads none) and only over a
//! connection: gossip for a member without one is dropped (SWIM is built to tolerate loss)
//! and the dialer is woken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::link::LinkError;
use super::membership::{MemberEvent, Membership, MembershipCounters, Verdict};
use super::peers::MembershipEvent;
use super::Cluster;
use crate::replication::frame::HELLO_GOSSIP;
use crate::replication::log::RunId;

/// The longest the timer task sleeps: a timer asked for by a datagram's handling fires at
/// most this late (foca's shortest delays are hundreds of milliseconds).
const GOSSIP_TICK: Duration = Duration::from_millis(50);

/// Counters of the shell (the instance's own are in [`MembershipCounters`]).
#[derive(Debug, Default)]
pub struct GossipCounters {
    /// Gossip for a member without a gossip-capable connection, or too large for the path.
    pub unroutable: AtomicU64,
    /// Members declared down by SWIM.
    pub members_down: AtomicU64,
    /// Members that announced their leave.
    pub members_left: AtomicU64,
    /// Members suspected.
    pub members_suspected: AtomicU64,
    /// New runs of known members (restarts, rejoins).
    pub members_renamed: AtomicU64,
}

/// What the cluster keeps for membership.
pub struct Gossip {
    membership: Mutex<Membership>,
    /// The connection each gossiping peer is reached on, by its certificate name.
    conns: Mutex<HashMap<String, quinn::Connection>>,
    /// This node announced its leave: peers that forget it close their links to it.
    leaving: AtomicBool,
    pub counters: GossipCounters,
}

impl Gossip {
    pub fn new(membership: Membership) -> Gossip {
        Gossip {
            membership: Mutex::new(membership),
            conns: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            counters: GossipCounters::default(),
        }
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The membership instance's counters, for `stats`.
    pub fn stats(&self) -> MembershipCounters {
        self.membership().counters
    }

    /// Whether this node has announced that it leaves: a link a peer then closes (it
    /// forgot this node, as it should) is no failure.
    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Live members according to SWIM (this node not included).
    pub fn live_members(&self) -> usize {
        self.membership().live_members()
    }

    /// SWIM's verdict on `name`, if it has heard of it.
    pub fn verdict(&self, name: &str) -> Option<Verdict> {
        self.membership().verdict(name)
    }
}

/// SWIM's verdict, as the peer table takes it.
impl From<Verdict> for MembershipEvent {
    fn from(v: Verdict) -> MembershipEvent {
        match v {
            Verdict::Alive => MembershipEvent::Alive,
            Verdict::Suspect => MembershipEvent::Suspect,
            Verdict::Down => MembershipEvent::Down,
            Verdict::Left => MembershipEvent::Left,
        }
    }
}

impl Cluster {
    /// Runs `f` on the membership, then sends what it produced and acts on its verdicts.
    fn with_membership(&self, f: impl FnOnce(&mut Membership, u64)) {
        let now = self.now_ms();
        let (sends, events) = {
            let mut m = self.gossip.membership();
            f(&mut m, now);
            let sends: Vec<(String, Bytes)> = std::iter::from_fn(|| m.poll_send()).collect();
            let events: Vec<MemberEvent> = std::iter::from_fn(|| m.poll_event()).collect();
            (sends, events)
        };
        for (to, data) in sends {
            self.send_gossip(&to, data);
        }
        for e in events {
            self.on_member_event(e);
        }
    }

    fn send_gossip(&self, to: &str, data: Bytes) {
        let conn = self.gossip.conns().get(to).cloned();
        let sent = match conn {
            Some(c) if c.max_datagram_size().is_some_and(|max| data.len() <= max) => {
                c.send_datagram(data).is_ok()
            }
            Some(_) => false,
            None => {
                self.dial_wake.notify_one();
                false
            }
        };
        if !sent {
            self.gossip
                .counters
                .unroutable
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_member_event(&self, e: MemberEvent) {
        let c = &self.gossip.counters;
        match e {
            MemberEvent::Renamed { old, new } if old.process == new.process => {
                tracing::info!(node = %self.name, peer = %new.name, "member rejoined membership after a false down verdict (same process)");
            }
            MemberEvent::Renamed { old, new } => {
                c.members_renamed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %self.name, peer = %new.name, "member restarted (a new process)");
                let now = self.now_ms();
                self.with(|c| c.member_restarted(&new.name, RunId(old.process), now));
            }
            MemberEvent::Verdict { id, verdict } => {
                let counter = match verdict {
                    Verdict::Alive => None,
                    Verdict::Suspect => Some(&c.members_suspected),
                    Verdict::Down => Some(&c.members_down),
                    Verdict::Left => Some(&c.members_left),
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let event = MembershipEvent::from(verdict);
                let now = self.now_ms();
                let process = Some(RunId(id.process));
                self.with(|c| c.on_membership(&id.name, process, event, now));
                match verdict {
                    Verdict::Down => {
                        tracing::warn!(node = %self.name, peer = %id.name, "member down (SWIM)")
                    }
                    _ => {
                        tracing::info!(node = %self.name, peer = %id.name, ?verdict, "member state")
                    }
                }
            }
        }
    }

    /// A registered connection: if the peer gossips, SWIM's datagrams for it go here, and
    /// this node announces itself to it (which is also how a node joins: through any one
    /// member it connects to).
    pub(super) fn gossip_link_up(&self, peer: &str, conn: &quinn::Connection, their_flags: u8) {
        let gossips = their_flags & HELLO_GOSSIP != 0 && conn.max_datagram_size().is_some();
        // If it gossips, SWIM's verdicts about it supersede the peer table's own guess from
        // a lost link (one node's view, where SWIM's is the cluster's); if not (a node of
        // the previous release), that guess is all there is.
        self.core().table_mut().set_gossips(peer, gossips);
        if !gossips {
            return;
        }
        self.gossip.conns().insert(peer.to_string(), conn.clone());
        let seeds: Vec<String> = {
            let core = self.core();
            core.table()
                .seeds()
                .iter()
                .filter_map(|s| s.name.clone())
                .collect()
        };
        self.with_membership(|m, now| {
            m.set_seeds(seeds);
            m.announce_to(peer, now);
        });
    }

    pub(super) fn gossip_link_down(&self, peer: &str, conn: &quinn::Connection) {
        let mut conns = self.gossip.conns();
        if conns
            .get(peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(peer);
        }
    }

    /// Tells the cluster this node is leaving, then keeps gossip flowing for `linger` (the
    /// connections stay open meanwhile) so that the leave spreads. Nothing to do, and no
    /// wait, for a node that knows no live member.
    pub async fn leave_membership(&self, linger: Duration) {
        self.gossip.leaving.store(true, Ordering::Relaxed);
        if self.gossip.live_members() == 0 {
            return;
        }
        self.with_membership(|m, now| m.leave(now));
        tokio::time::sleep(linger).await;
    }
}

/// Reads one connection's datagrams into the membership, for as long as it lives.
pub(super) async fn recv(
    cl: &Cluster,
    peer: &str,
    conn: &quinn::Connection,
) -> Result<(), LinkError> {
    loop {
        let data = conn.read_datagram().await?;
        cl.with_membership(|m, now| {
            if let Err(e) = m.handle_datagram(peer, &data, now) {
                tracing::debug!(node = %cl.name, %peer, "gossip dropped: {e}");
            }
        });
    }
}

/// Fires the membership's timers, in order, as they fall due.
pub(super) async fn timer_loop(cl: Arc<Cluster>) {
    loop {
        cl.with_membership(|m, now| m.handle_timers(now));
        let next = cl.gossip.membership().next_timer_ms();
        let wait = Duration::from_millis(next.saturating_sub(cl.now_ms())).min(GOSSIP_TICK);
        tokio::time::sleep(wait).await;
    }
}
