//! A snapshot of the cluster's state for `stats replication` and `stats`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::Cluster;

#[derive(Debug, Clone)]
pub struct PeerReport {
    pub name: String,
    pub node_id: u16,
    pub addr: Option<SocketAddr>,
    /// `connected`, `connecting`, or `needs_resync` (connected, but it missed writes that
    /// fell off the log).
    pub state: &'static str,
    /// Unix seconds of the current connection's start (0 when not connected).
    pub connected_since: u64,
    pub sent_seq: u64,
    pub acked_seq: u64,
    /// Our log entries the peer has not acknowledged, and how old the oldest is.
    pub lag_mutations: u64,
    pub lag_ms: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reconnects: u64,
    /// Of the current connection (QUIC's view): smoothed round-trip time, the UDP payload
    /// size the path carries, and datagrams sent.
    pub rtt_us: u64,
    pub mtu: u16,
    pub datagrams_sent: u64,
    /// Also QUIC's view, to tell a lossy path from a stalled reader: packets declared lost,
    /// the congestion window, MTU black holes detected, and how often each side said it was
    /// blocked by the other's flow-control window.
    pub lost_packets: u64,
    pub cwnd: u64,
    pub black_holes: u64,
    pub blocked_sent: u64,
    pub blocked_received: u64,
    /// Anti-entropy with the peer: rounds, buckets found differing, keys sent and
    /// received, bytes (see [`super::counters::EntropyCounters`]).
    pub ae: [u64; 5],
}

#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub node_id: u16,
    pub run_id: u64,
    pub last_seq: u64,
    pub oldest_seq: u64,
    pub backlog_bytes: usize,
    pub peers: Vec<PeerReport>,
}

impl Cluster {
    pub fn report(&self) -> Report {
        let now_ms = self.now_ms();
        let last_seq = self.outbox.last_seq();
        let rows: Vec<_> = {
            let mut core = self.core();
            let rows: Vec<_> = core
                .table()
                .peers()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        p.node_id,
                        p.addr,
                        p.link.as_ref().map(|(_, l)| *l),
                        p.needs_resync,
                        p.since_ms,
                        p.reconnects,
                    )
                })
                .collect();
            rows.into_iter()
                .map(|r| {
                    let c = core.peer_counters(&r.0);
                    (r, c)
                })
                .collect()
        };
        let peers = rows
            .into_iter()
            .map(
                |((name, node_id, addr, link, needs_resync, since_ms, reconnects), c)| {
                    let quic = link.and_then(|l| self.conns().get(&l).map(|c| c.stats()));
                    let connected = link.is_some();
                    let acked_seq = c.acked_seq.load(Ordering::Relaxed);
                    let lag_mutations = last_seq.saturating_sub(acked_seq);
                    // The age of the oldest write not acknowledged; when it has left the log,
                    // the age of the oldest still held (a lower bound).
                    let lag_ms = if lag_mutations == 0 {
                        0
                    } else {
                        let first = acked_seq.saturating_add(1).max(self.outbox.oldest_seq());
                        self.outbox
                            .entry_ms(first)
                            .map_or(0, |t| now_ms.saturating_sub(t))
                    };
                    PeerReport {
                        name,
                        node_id,
                        addr,
                        state: match (connected, needs_resync) {
                            (false, _) => "connecting",
                            (true, false) => "connected",
                            (true, true) => "needs_resync",
                        },
                        connected_since: if connected { since_ms / 1000 } else { 0 },
                        sent_seq: c.sent_seq.load(Ordering::Relaxed),
                        acked_seq,
                        lag_mutations,
                        lag_ms,
                        bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                        bytes_received: c.bytes_received.load(Ordering::Relaxed),
                        reconnects,
                        rtt_us: quic.map_or(0, |q| q.path.rtt.as_micros() as u64),
                        mtu: quic.map_or(0, |q| q.path.current_mtu),
                        datagrams_sent: quic.map_or(0, |q| q.udp_tx.datagrams),
                        lost_packets: quic.map_or(0, |q| q.path.lost_packets),
                        cwnd: quic.map_or(0, |q| q.path.cwnd),
                        black_holes: quic.map_or(0, |q| q.path.black_holes_detected),
                        blocked_sent: quic.map_or(0, |q| {
                            q.frame_tx.stream_data_blocked + q.frame_tx.data_blocked
                        }),
                        blocked_received: quic.map_or(0, |q| {
                            q.frame_rx.stream_data_blocked + q.frame_rx.data_blocked
                        }),
                        ae: c.entropy.values(),
                    }
                },
            )
            .collect();
        Report {
            name: self.name.clone(),
            node_id: self.node_id.get(),
            run_id: self.outbox.run_id().0,
            last_seq,
            oldest_seq: self.outbox.oldest_seq(),
            backlog_bytes: self.outbox.bytes(),
            peers,
        }
    }
}
