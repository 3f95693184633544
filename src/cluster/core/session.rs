//! One link's state in the core: where the peer stands in our log, what we acknowledged
//! of its log, the control frames queued for it, the snapshots under way in each
//! direction, and a batch stalled by the clock-skew guard.

use std::collections::VecDeque;
use std::sync::Arc;

use super::entropy::PeerEntropy;
use super::live::Stall;
use super::walk::{Incoming, Walk};
use crate::clock::NodeId;
use crate::cluster::counters::PeerCounters;
use crate::cluster::send::SendPlan;
use crate::replication::frame::Frame;
use crate::replication::log::RunId;

pub(super) struct Session {
    pub peer: String,
    pub their_run: RunId,
    pub their_node: NodeId,
    /// The peer's hello said its previous run ended cleanly (`HELLO_CLEAN`).
    pub their_clean: bool,
    pub counters: Arc<PeerCounters>,
    pub plan: SendPlan,
    /// The token of the peer's latest snapshot request: every walk started after it
    /// echoes it, telling the peer that the walk saw all it had sent us before asking.
    pub token: u64,
    /// Our control frames for the peer (sync plan requests, reconciliation).
    pub outgoing: VecDeque<Frame>,
    /// The member list and status generations last sent.
    pub members_sent: u64,
    pub status_sent: u64,
    /// The last sequence of the peer's log we acknowledged, and when.
    pub acked: u64,
    pub last_ack_ms: u64,
    /// The least time between two acknowledgements: [`super::live::ACK_INTERVAL_MS`], or 0
    /// for a peer whose clients wait for them (`HELLO_PROMPT_ACKS`).
    pub ack_interval_ms: u64,
    /// Our snapshot being sent to the peer.
    pub walk: Option<Walk>,
    /// A full snapshot due while a catch-up walk runs (it starts next), and the peer's
    /// catch-up requests not yet started: (origin node id, token).
    pub full_pending: Option<&'static str>,
    pub catch_ups: VecDeque<(u16, u64)>,
    /// The peer's snapshot being received.
    pub incoming: Option<Incoming>,
    /// The rest of a batch refused by the skew guard: nothing after it is applied.
    pub stalled: Option<Stall>,
    /// Anti-entropy with the peer.
    pub ae: PeerEntropy,
}

impl Session {
    pub fn new(
        peer: &str,
        their_run: RunId,
        their_node: NodeId,
        their_clean: bool,
        counters: Arc<PeerCounters>,
        status_gen: u64,
        now_ms: u64,
    ) -> Session {
        let acked = counters.have().1;
        Session {
            peer: peer.to_string(),
            their_run,
            their_node,
            their_clean,
            counters,
            plan: SendPlan::default(),
            token: 0,
            outgoing: VecDeque::new(),
            members_sent: 0,
            status_sent: status_gen,
            acked,
            last_ack_ms: now_ms,
            ack_interval_ms: super::live::ACK_INTERVAL_MS,
            walk: None,
            full_pending: None,
            catch_ups: VecDeque::new(),
            incoming: None,
            stalled: None,
            ae: PeerEntropy::default(),
        }
    }
}
