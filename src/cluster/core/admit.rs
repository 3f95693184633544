//! Admitting a connection as a peer's link, and ending it: the hello each side sends, the
//! checks the peer's passes (its certificate's name, its clock, its node id, the
//! one-connection-per-pair rule), and what a link's start and end change in the core.

use std::net::SocketAddr;

use super::session::Session;
use super::{Event, LinkId, Replica, CLOSE_CLOCK, CLOSE_DUPLICATE, CLOSE_PROTOCOL, CLOSE_REFUSED};
use crate::clock::{NodeId, Version};
use crate::cluster::peers::{LinkMeta, Offer};
use crate::cluster::send::Position as SendPosition;
use crate::cluster::sync::Phase;
use crate::replication::frame::{
    Frame, Hello, HELLO_AE, HELLO_CLEAN, HELLO_DEFER, HELLO_EMPTY, HELLO_GOSSIP, HELLO_PROMPT_ACKS,
    HELLO_READY,
};
use crate::replication::log::RunId;

/// Why a connection is not taken as the link to its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The clocks are further apart than `--max-clock-skew` (the reason names the offset).
    Clock(String),
    Protocol(String),
    /// Another connection to the same peer wins the tie-break.
    Duplicate,
    /// The connection leads to this node itself; `imposter` when it is another running
    /// process using this node's name.
    ToSelf {
        imposter: bool,
    },
    IdClash {
        id: u16,
        holder: String,
    },
}

impl Refusal {
    /// The close code to send the peer.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::Duplicate => CLOSE_DUPLICATE,
            Refusal::Protocol(_) => CLOSE_PROTOCOL,
            Refusal::Clock(_) => CLOSE_CLOCK,
            _ => CLOSE_REFUSED,
        }
    }

    /// The close reason to send the peer (it logs it).
    pub fn reason(&self) -> String {
        match self {
            Refusal::Clock(why) | Refusal::Protocol(why) => why.clone(),
            Refusal::Duplicate => "duplicate connection".into(),
            Refusal::ToSelf { .. } => "connected to itself".into(),
            Refusal::IdClash { id, holder } => format!("node id {id} is already taken by {holder}"),
        }
    }
}

/// A new connection, as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub link: LinkId,
    /// The name the peer's certificate carries.
    pub cert_name: &'a str,
    pub dialed_by_me: bool,
    pub addr: SocketAddr,
}

/// How a link came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUp {
    pub peer: String,
    /// The previous connection to the same peer, which the caller closes.
    pub replaced: Option<LinkId>,
    /// That previous connection was from an earlier run of the peer.
    pub restarted: bool,
}

impl Replica {
    /// Our hello for a new connection.
    pub fn hello(&mut self, peer: &str, now_ms: u64) -> Hello {
        self.adopt_donor_position(peer);
        let (have_run, have_seq) = self.peer_counters(peer).have();
        let mut flags = 0;
        if self.plan.phase() == Phase::Ready {
            flags |= HELLO_READY;
        }
        if self.plan.defer() {
            flags |= HELLO_DEFER;
        }
        if self.store.is_empty() {
            flags |= HELLO_EMPTY;
        }
        if self.clean_start {
            flags |= HELLO_CLEAN;
        }
        if self.entropy.period_ms > 0 {
            flags |= HELLO_AE;
        }
        if self.acks.waited_for() {
            flags |= HELLO_PROMPT_ACKS;
        }
        flags |= HELLO_GOSSIP;
        Hello {
            name: self.name.clone(),
            node_id: self.node_id.get(),
            run_id: self.outbox.run_id(),
            have_run,
            have_seq,
            flags,
            load: self.serving,
            wall_ms: now_ms,
            run_floor: self.run_floor.0,
        }
    }

    /// A state file is trusted only for the run that wrote it (DESIGN.md section 6). A run
    /// without `--state-file` (or with another path) leaves an older file in place, and a
    /// later start from it would take that file's contents for current: its own writes of
    /// the runs between would never come back (a node gets its own writes back only by
    /// snapshot or catch-up), and it would serve the values they overwrote. The peers'
    /// hellos tell: each names the last run of ours it applied. One that is neither the
    /// file's run nor this one proves a run after the file (or, harmlessly, one before it
    /// that this peer missed: the cost is a catch-up). Then this start is not clean: every
    /// member is asked for our own writes, and later hellos no longer say clean.
    fn check_file_run(&mut self, theirs: &Hello) {
        let Some(file_run) = self.file_run else {
            return;
        };
        let seen = theirs.have_run;
        if seen == RunId(0) || seen == file_run || seen == self.outbox.run_id() {
            return;
        }
        self.file_run = None;
        tracing::warn!(node = %self.name, peer = %theirs.name, file_run = format_args!("{:016x}", file_run.0), peer_has_run = format_args!("{:016x}", seen.0), "the state file is stale: the peer applied a run of this node that is not the file's (a run without --state-file since?); asking every member for this node's own writes");
        self.sync_counters
            .stale_state_files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.clean_start {
            self.clean_start = false;
            let (name, id) = (self.name.clone(), self.node_id.get());
            self.catch_ups.origin_restarted(&name, id);
        }
    }

    /// The peer's hello arrived on `conn`; `ours` is the hello we sent on it. On success
    /// the connection is the peer's link now.
    pub fn link_up(
        &mut self,
        conn: Connection<'_>,
        ours: &Hello,
        theirs: Hello,
        now_ms: u64,
    ) -> Result<LinkUp, Refusal> {
        let Connection {
            link,
            cert_name,
            dialed_by_me,
            addr,
        } = conn;
        if let Some(why) = crate::cluster::link::clock_refusal(
            cert_name,
            &self.name,
            theirs.wall_ms,
            now_ms,
            self.max_skew,
        ) {
            self.counters
                .peers_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.clock_refused_by(cert_name, now_ms);
            return Err(Refusal::Clock(why));
        }
        let Some(their_node) = NodeId::new(theirs.node_id) else {
            return Err(Refusal::Protocol(format!(
                "node id {} does not fit in 10 bits",
                theirs.node_id
            )));
        };
        if theirs.name != cert_name {
            return Err(Refusal::Protocol(format!(
                "the peer calls itself {:?} but its certificate names {cert_name:?}",
                theirs.name
            )));
        }
        self.check_file_run(&theirs);
        let meta = LinkMeta {
            dialed_by_me,
            addr,
            run_id: theirs.run_id,
            token: link,
        };
        let (replaced, restarted) = match self.table.offer(&theirs, meta, link, now_ms) {
            Offer::Keep {
                replaced,
                restarted,
            } => (replaced, restarted),
            Offer::Duplicate => return Err(Refusal::Duplicate),
            Offer::ToSelf => {
                return Err(Refusal::ToSelf {
                    imposter: theirs.run_id != self.outbox.run_id(),
                })
            }
            Offer::IdClash { id, holder } => {
                self.counters
                    .peers_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Refusal::IdClash { id, holder });
            }
        };
        if let Some(old) = replaced {
            self.end_session(old);
            // What was asked on the old connection is asked again on this one.
            self.catch_ups.link_down(&theirs.name);
            self.events.push_back(Event::Close {
                link: old,
                code: CLOSE_DUPLICATE,
                reason: "replaced by a newer connection".into(),
            });
        }
        self.members_gen += 1;
        self.clock_refused.remove(&theirs.name);
        let peer = theirs.name.clone();
        // (Our hello on this connection may have gone out before the donor's snapshot
        // began.)
        self.adopt_donor_position(&peer);
        let counters = self.peer_counters(&peer);
        let had = counters.have().0;
        if had != theirs.run_id {
            // A new run of the peer: nothing of it applied yet.
            counters.set_have(theirs.run_id, 0);
            // Unless the peer's previous run ended cleanly and we had a position in it, some
            // of its earlier writes may be only on other members: ask every member. (With
            // no position at all, nothing says we ever had any of them.)
            if had == RunId(0) {
                // A node choosing a donor leaves it to the donor's snapshot: it carries
                // what the donor holds, and the origins it claims no position of are
                // caught up then (see `snapshot_began`).
                if !self.plan.defer() {
                    self.catch_ups.origin_restarted(&peer, theirs.node_id);
                }
            } else if theirs.flags & HELLO_CLEAN == 0 {
                tracing::info!(node = %self.name, %peer, "the peer restarted without every member holding its previous run: asking every member for that origin's writes");
                self.catch_ups.origin_restarted(&peer, theirs.node_id);
            }
        }
        // What the peer has of our log is what its hello says, nothing of an earlier run.
        let acked = if theirs.have_run == self.outbox.run_id() {
            theirs.have_seq.min(self.outbox.last_seq())
        } else {
            0
        };
        counters
            .acked_seq
            .store(acked, std::sync::atomic::Ordering::Relaxed);
        counters
            .sent_seq
            .store(acked, std::sync::atomic::Ordering::Relaxed);
        let peer_defers = theirs.flags & HELLO_DEFER != 0;
        let mut session = Session::new(
            &peer,
            theirs.run_id,
            their_node,
            theirs.flags & HELLO_CLEAN != 0,
            counters,
            self.status_gen,
            now_ms,
        );
        // The first comparison soon after the link's resync (delta or snapshot) began.
        session.ae = super::entropy::PeerEntropy::new(
            theirs.flags & HELLO_AE != 0 && self.entropy.period_ms > 0,
            now_ms + self.entropy.confirm_ms,
        );
        if theirs.flags & HELLO_PROMPT_ACKS != 0 {
            session.ack_interval_ms = 0;
        }
        self.sessions.insert(link, session);
        let actions = self.plan.up(
            &peer,
            theirs.flags & HELLO_READY != 0,
            theirs.load,
            peer_defers,
            ours.flags & HELLO_DEFER != 0,
        );
        // Counted only if its hello says it is ready (see `count_ack`).
        self.count_ack(&peer, acked);
        self.act(actions);
        self.sync_step(now_ms);
        self.reconcile_if_due(link, &theirs, their_node, now_ms);
        if theirs.flags & HELLO_EMPTY != 0 {
            self.catch_ups.holds_nothing(&peer);
        }
        self.ask_catch_ups();
        if !peer_defers {
            let p = SendPosition {
                run: theirs.have_run,
                seq: theirs.have_seq,
                // A peer with no position of ours at all never had our data from us nor
                // from a donor (a fresh node that opened at once, say): all of it.
                lacks_older: theirs.flags & HELLO_EMPTY != 0
                    || self.push_own
                    || (theirs.have_run == RunId(0) && !self.store.is_empty()),
            };
            self.reposition(link, p, now_ms);
        }
        self.wake = true;
        Ok(LinkUp {
            peer,
            replaced,
            restarted,
        })
    }

    /// Connection `link` ended. Returns whether it was the peer's registered connection
    /// (then the peer is down; otherwise it was a duplicate and nothing changes).
    pub fn link_down(&mut self, link: LinkId, now_ms: u64) -> bool {
        let Some(peer) = self.end_session(link) else {
            return false;
        };
        if !self.table.down(&peer, link, now_ms) {
            return false;
        }
        self.reconciler.link_down(&peer, now_ms);
        self.catch_ups.link_down(&peer);
        self.plan.down(&peer);
        self.sync_step(now_ms);
        if let Some(p) = self.table.peer_mut(&peer) {
            p.needs_resync = false;
        }
        self.events.push_back(Event::Dial);
        self.wake = true;
        true
    }

    /// A member learned after the initial sync donor's snapshot began: the donor's
    /// position of it is ours, as for the members known then (see `snapshot_began`).
    fn adopt_donor_position(&mut self, peer: &str) {
        if let Some((run, seq)) = self.donor_positions.remove(peer) {
            let counters = self.peer_counters(peer);
            if counters.have().0 == RunId(0) {
                counters.set_have(run, seq);
            }
        }
    }

    /// Forgets a link's session: an incoming snapshot cut off leaves its gap (the position
    /// is forgotten), an outgoing one stops counting as load.
    pub(super) fn end_session(&mut self, link: LinkId) -> Option<String> {
        let s = self.sessions.remove(&link)?;
        if s.incoming.as_ref().is_some_and(|i| i.fills_gap()) {
            s.counters.snapshot_ended(false);
        }
        if s.walk.is_some() {
            self.serving = self.serving.saturating_sub(1);
            self.status_gen += 1;
        }
        Some(s.peer)
    }

    /// Asks the peer for a full snapshot to reconcile with, when this node was apart from
    /// the same run of it for longer than the tombstone TTL (see [`super::reconcile`]).
    fn reconcile_if_due(&mut self, link: LinkId, hello: &Hello, node: NodeId, now_ms: u64) {
        let due = self.reconciler.link_up(
            &hello.name,
            hello.run_id,
            node,
            Version(hello.run_floor),
            now_ms,
        );
        if let Some(token) = due {
            tracing::info!(node = %self.name, peer = %hello.name, "apart from the peer for longer than --tombstone-ttl: reconciling (asking for its full snapshot; keys it deleted meanwhile are dropped here)");
            if let Some(s) = self.sessions.get_mut(&link) {
                s.outgoing.push_back(Frame::SnapshotRequest { token });
            }
        }
    }
}
