//! Simulated connections: what QUIC gives the core, in memory. Each connection carries a
//! live stream and a snapshot stream in each direction, each reliable and ordered, with
//! its own latency (so a snapshot and the live stream overtake each other). Packet loss,
//! duplication and reordering inside a stream are QUIC's business; what reaches the core
//! is the connection dying (a partition, a crash, a close), with everything in flight on
//! it lost, and a new connection after it.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use meshcached::cluster::core::LinkId;
use meshcached::cluster::peers::Dial;
use meshcached::replication::frame::Hello;

/// One direction of one stream: bytes with their delivery time, in order.
#[derive(Default)]
pub struct Pipe {
    pub queue: VecDeque<(u64, Bytes)>,
    pub buf: BytesMut,
}

impl Pipe {
    /// Queues `data` to arrive `latency` ms from `now`, never before what was queued
    /// earlier.
    pub fn push(&mut self, now: u64, latency: u64, data: Bytes) {
        let at = self
            .queue
            .back()
            .map_or(now + latency, |(t, _)| (*t).max(now + latency));
        self.queue.push_back((at, data));
    }

    /// Moves what has arrived by `now` into the read buffer.
    pub fn arrive(&mut self, now: u64) {
        while self.queue.front().is_some_and(|(t, _)| *t <= now) {
            let (_, data) = self.queue.pop_front().expect("checked");
            self.buf.extend_from_slice(&data);
        }
    }
}

/// One side of a connection.
pub struct End {
    pub node: usize,
    /// The node's run this end belongs to: a restarted node has none of its old ends.
    pub run: u32,
    pub link: LinkId,
    pub dialed: bool,
    /// The dial that made it (dialer side), to report its end to the peer table.
    pub dial: Option<Dial>,
    /// Our hello, sent at once.
    pub ours: Option<Hello>,
    /// The core took the peer's hello.
    pub up: bool,
    /// Streams towards this end.
    pub live_in: Pipe,
    pub snap_in: Pipe,
    /// A batch of the live stream is stalled by the skew guard.
    pub stalled: bool,
    /// When this end learns the connection is gone (idle timeout or a close), if it is.
    pub dies_at: Option<u64>,
    /// Whether this end has been told (link_down) already.
    pub dead: bool,
    /// The other end's node left gracefully (its close says so: `CLOSE_LEAVING`).
    pub peer_left: bool,
}

impl End {
    pub fn new(node: usize, run: u32, link: LinkId, dialed: bool, dial: Option<Dial>) -> End {
        End {
            node,
            run,
            link,
            dialed,
            dial,
            ours: None,
            up: false,
            peer_left: false,
            live_in: Pipe::default(),
            snap_in: Pipe::default(),
            stalled: false,
            dies_at: None,
            dead: false,
        }
    }
}

/// A connection between two nodes; `ends[0]` dialed.
pub struct Conn {
    pub ends: [End; 2],
    /// One-way latency of each stream, ms: live then snapshot.
    pub latency: [u64; 2],
}

impl Conn {
    /// Cuts the connection: nothing more arrives, and each end learns of it after `notice`
    /// ms (the idle timeout for a silent cut, a round trip for a close).
    pub fn cut(&mut self, now: u64, notice: [u64; 2]) {
        for (e, n) in self.ends.iter_mut().zip(notice) {
            e.live_in.queue.clear();
            e.snap_in.queue.clear();
            let at = now + n;
            e.dies_at = Some(e.dies_at.map_or(at, |d| d.min(at)));
        }
    }

    pub fn is_cut(&self) -> bool {
        self.ends.iter().any(|e| e.dies_at.is_some())
    }
}
