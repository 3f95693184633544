//! The simulated world: nodes, connections, virtual time in steps of [`STEP_MS`], and the
//! faults a schedule throws at them. Every step delivers what has arrived, fires timers,
//! dials what the peer tables ask for, and sends what the cores have; the checker samples
//! every node after it.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use meshcached::cluster::core::{Connection, Event, Flow, Transmit};
use meshcached::cluster::peers::{Dial, DialEnd};
use meshcached::replication::frame::{self, Frame};
use meshcached::replication::log::Op;
use meshcached::server::state_file::Saving;

use crate::check::Checker;
use crate::net::{Conn, End};
use crate::node::{state_file, Node, Setup};
use crate::rng::Rng;

pub const STEP_MS: u64 = 5;
/// The sync plan's timer period in production.
const TICK_MS: u64 = 20;
/// Slots per shard the sweeper looks at per tick (the server's budget).
const SWEEP_BUDGET: usize = 256;
/// What a silent cut costs before a side notices: the QUIC idle timeout.
pub const IDLE_TIMEOUT_MS: u64 = 2000;
/// An unanswered dial gives up after this (the transport's dial timeout).
const DIAL_TIMEOUT_MS: u64 = 1000;
/// The shutdown drain's bound (`--drain-timeout`).
pub const DRAIN_MS: u64 = 1000;
/// What one step may send per stream: stands in for flow control.
const FRAMES_PER_STEP: usize = 64;
const PIECES_PER_STEP: usize = 4;

/// Prints what happens, when `MESHCACHED_SIM_TRACE` is set (with one seed).
pub fn trace(now: u64, what: std::fmt::Arguments<'_>) {
    if std::env::var_os("MESHCACHED_SIM_TRACE").is_some() {
        eprintln!("[{:>6}] {what}", now % 1_000_000);
    }
}

pub struct World {
    pub now: u64,
    pub rng: Rng,
    pub setups: Vec<Setup>,
    pub nodes: Vec<Option<Node>>,
    /// Runs started per node slot.
    pub runs: Vec<u32>,
    pub conns: Vec<Conn>,
    /// Pairs (smaller index first) that cannot reach each other.
    pub cut: BTreeSet<(usize, usize)>,
    /// Graceful stops under way: the drain's deadline per node.
    pub draining: Vec<Option<u64>>,
    /// Per node, whether its current run was started without its `--state-file` (the
    /// operator left the flag out): it neither loads nor saves, and an older file stays.
    pub file_off: Vec<bool>,
    /// Nodes killed for good (never restarted, never waited for).
    pub gone: Vec<bool>,
    /// Percent chance that a batch delivered loses one of its writes on the way, the
    /// sender none the wiser (a write the stream cannot repair: anti-entropy must).
    pub drop_pct: u64,
    drop_rng: Rng,
    pub check: Checker,
    next_link: u64,
    /// Dials nobody answered: when each gives up, by whom (node, run).
    unanswered: Vec<(u64, usize, u32, Dial)>,
    last_tick: u64,
    seed: u64,
}

impl World {
    pub fn new(seed: u64, setups: Vec<Setup>, start_ms: u64) -> World {
        let n = setups.len();
        World {
            now: start_ms,
            rng: Rng::new(seed),
            setups,
            nodes: (0..n).map(|_| None).collect(),
            file_off: vec![false; n],
            runs: vec![0; n],
            conns: Vec::new(),
            cut: BTreeSet::new(),
            draining: vec![None; n],
            gone: vec![false; n],
            drop_pct: 0,
            drop_rng: Rng::new(seed ^ 0xd409_d409_d409_d409),
            check: Checker::new(n),
            next_link: 1,
            unanswered: Vec::new(),
            last_tick: 0,
            seed,
        }
    }

    /// Starts node `i` (a new run), from its state file when `load_state`.
    pub fn start(&mut self, i: usize, load_state: bool) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let run = self.runs[i];
        self.runs[i] += 1;
        let seed = self.seed ^ ((i as u64) << 32) ^ u64::from(run).wrapping_mul(0x9e37_79b9);
        let node = Node::start(&self.setups[i], run, self.now, seed, load_state);
        trace(
            self.now,
            format_args!(
                "start n{i} run {run} load_state {load_state} file_off {} -> opened {}",
                self.file_off[i], node.opened
            ),
        );
        self.check.run_started(i, &node, self.now);
        self.nodes[i] = Some(node);
        self.draining[i] = None;
    }

    /// kill -9: the node is gone at once; its peers notice after the idle timeout.
    pub fn crash(&mut self, i: usize) {
        let Some(node) = self.nodes[i].take() else {
            return;
        };
        trace(self.now, format_args!("crash n{i}"));
        self.check.run_ended(i, &node, false, self.now);
        self.draining[i] = None;
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.ends.iter().any(|e| e.node == i))
        {
            let notice = c
                .ends
                .map_ref(|e| if e.node == i { 0 } else { IDLE_TIMEOUT_MS });
            c.cut(self.now, notice);
        }
    }

    /// kill -9, and the node never comes back.
    pub fn kill_for_good(&mut self, i: usize) {
        self.crash(i);
        self.gone[i] = true;
    }

    /// SIGTERM: no more clients; the node drains its log to its peers (bounded), saves its
    /// state file, and leaves.
    pub fn stop(&mut self, i: usize) {
        if self.nodes[i].is_some() && self.draining[i].is_none() {
            trace(self.now, format_args!("stop n{i}"));
            self.draining[i] = Some(self.now + DRAIN_MS);
        }
    }

    pub fn partition(&mut self, i: usize, j: usize) {
        trace(self.now, format_args!("partition n{i} n{j}"));
        self.cut.insert((i.min(j), i.max(j)));
        for c in self.conns.iter_mut() {
            let (a, b) = (c.ends[0].node, c.ends[1].node);
            if (a, b) == (i, j) || (a, b) == (j, i) {
                c.cut(self.now, [IDLE_TIMEOUT_MS, IDLE_TIMEOUT_MS]);
            }
        }
    }

    pub fn heal(&mut self, i: usize, j: usize) {
        trace(self.now, format_args!("heal n{i} n{j}"));
        self.cut.remove(&(i.min(j), i.max(j)));
    }

    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    fn reachable(&self, i: usize, j: usize) -> bool {
        self.nodes[j].is_some() && !self.cut.contains(&(i.min(j), i.max(j)))
    }

    /// One step of virtual time.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        for n in self.nodes.iter().flatten() {
            n.set_time(self.now);
        }
        self.deliver();
        self.expire();
        let tick = self.now >= self.last_tick + TICK_MS;
        if tick {
            self.last_tick = self.now;
        }
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].as_mut() {
                if tick {
                    let now = n.now_ms();
                    n.replica.tick(now);
                    // The server's sweeper: expired items are reclaimed (leaving fences).
                    n.replica.store().sweep((now / 1000) as u32, SWEEP_BUDGET);
                }
            }
            self.dial(i);
        }
        self.give_up_dials();
        self.events();
        self.send();
        self.events();
        self.finish_drains();
        self.check.sample(&self.nodes, self.now);
    }

    /// Delivers what has arrived to every live end.
    fn deliver(&mut self) {
        for c in 0..self.conns.len() {
            for side in 0..2 {
                if let Err(why) = self.deliver_end(c, side) {
                    panic!("{why}");
                }
            }
        }
    }

    fn deliver_end(&mut self, c: usize, side: usize) -> Result<(), String> {
        let now = self.now;
        let lat = self.conns[c].latency[0];
        let (conn_ends, setups) = (&mut self.conns[c].ends, &self.setups);
        let (drop_pct, drop_rng) = (self.drop_pct, &mut self.drop_rng);
        let (e, other) = split(conn_ends, side);
        let Some(node) = self.nodes[e.node].as_mut().filter(|n| n.run == e.run) else {
            return Ok(());
        };
        if e.dead {
            return Ok(());
        }
        let node_now = node.now_ms();
        e.live_in.arrive(now);
        if e.stalled {
            let due = node
                .replica
                .live_deadline(e.link)
                .is_none_or(|t| t <= node_now);
            if !due {
                return Ok(());
            }
            match node.replica.retry_stalled(e.link, node_now) {
                Ok(Flow::Continue) => e.stalled = false,
                Ok(Flow::Stalled) => return Ok(()),
                Err(err) => return Err(format!("node {} stalled for good: {err}", e.node)),
            }
        }
        loop {
            let f = frame::decode(&mut e.live_in.buf)
                .map_err(|err| format!("node {} got a malformed frame: {err}", e.node))?;
            let Some(f) = f else { break };
            if !e.up {
                let Frame::Hello(theirs) = f else {
                    return Err("a live stream began without a hello".into());
                };
                let ours = e.ours.clone().expect("sent at the start");
                let peer = &setups[other.node];
                let up = node.replica.link_up(
                    Connection {
                        link: e.link,
                        cert_name: &peer.name,
                        dialed_by_me: e.dialed,
                        addr: peer.addr,
                    },
                    &ours,
                    theirs,
                    node_now,
                );
                trace(
                    now,
                    format_args!("n{} link {} from n{}: {up:?}", e.node, e.link, other.node),
                );
                match up {
                    Ok(_) => e.up = true,
                    Err(_) => {
                        // Refused (a duplicate, say): closed, and the peer hears of it.
                        e.live_in.buf.clear();
                        close_pair(e, other, now, lat);
                        return Ok(());
                    }
                }
                continue;
            }
            let f = match f {
                Frame::Batch {
                    run_id,
                    mut entries,
                } if drop_pct > 0 && drop_rng.chance(drop_pct) => {
                    let puts: Vec<usize> = (0..entries.len())
                        .filter(|&i| matches!(entries[i].mutation.op, Op::Put { .. }))
                        .collect();
                    if !puts.is_empty() {
                        let lost = entries.remove(puts[drop_rng.below(puts.len() as u64) as usize]);
                        trace(
                            now,
                            format_args!(
                                "n{} loses the write of {:?} at {} from n{}",
                                e.node, lost.mutation.key, lost.mutation.version, other.node
                            ),
                        );
                    }
                    Frame::Batch { run_id, entries }
                }
                f => f,
            };
            match node.replica.handle_live(e.link, f, node_now) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stalled) => {
                    e.stalled = true;
                    return Ok(());
                }
                Err(err) => return Err(format!("node {} refused an honest peer: {err}", e.node)),
            }
        }
        if !e.up {
            return Ok(());
        }
        e.snap_in.arrive(now);
        loop {
            let before = e.snap_in.buf.len();
            let f = frame::decode(&mut e.snap_in.buf)
                .map_err(|err| format!("node {} got a malformed snapshot frame: {err}", e.node))?;
            let Some(f) = f else { break };
            let wire = before - e.snap_in.buf.len();
            node.replica
                .handle_snapshot(e.link, f, wire, node_now)
                .map_err(|err| format!("node {} refused an honest snapshot: {err}", e.node))?;
        }
        Ok(())
    }

    /// Tells every end whose connection died that it did, and forgets dead connections.
    fn expire(&mut self) {
        let now = self.now;
        for c in self.conns.iter_mut() {
            for e in c.ends.iter_mut() {
                if e.dead || e.dies_at.is_none_or(|t| t > now) {
                    continue;
                }
                e.dead = true;
                let Some(node) = self.nodes[e.node].as_mut().filter(|n| n.run == e.run) else {
                    continue;
                };
                let node_now = node.now_ms();
                if e.up {
                    let was = if e.peer_left {
                        node.replica.link_left(e.link, node_now)
                    } else {
                        node.replica.link_down(e.link, node_now)
                    };
                    trace(
                        now,
                        format_args!("n{} link {} down (registered {was})", e.node, e.link),
                    );
                }
                if let Some(dial) = &e.dial {
                    trace(now, format_args!("n{} dial ended (up {})", e.node, e.up));
                    let end = if e.up {
                        DialEnd::Connected
                    } else {
                        DialEnd::Failed
                    };
                    node.replica.table_mut().dial_ended(dial, end, node_now);
                }
            }
        }
        self.conns.retain(|c| !c.ends.iter().all(|e| e.dead));
    }

    /// Dials what node `i`'s peer table says is due.
    fn dial(&mut self, i: usize) {
        if self.draining[i].is_some() {
            return;
        }
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let node_now = node.now_ms();
        let due = node.replica.table_mut().due(node_now);
        let run = node.run;
        for dial in due {
            trace(self.now, format_args!("n{i} dials {dial:?}"));
            let target = match &dial {
                Dial::Member { name, .. } => self.setups.iter().position(|s| &s.name == name),
                Dial::Seed { addr, .. } => {
                    self.setups.iter().position(|s| s.addr.to_string() == *addr)
                }
            };
            let Some(j) = target else {
                self.unanswered
                    .push((self.now + DIAL_TIMEOUT_MS, i, run, dial));
                continue;
            };
            let reachable = self.reachable(i, j);
            let node = self.nodes[i].as_mut().expect("checked");
            if j == i {
                if let Dial::Seed { index, .. } = dial {
                    node.replica.table_mut().seed_is_self(index);
                }
                node.replica
                    .table_mut()
                    .dial_ended(&dial, DialEnd::Failed, node_now);
                continue;
            }
            if !reachable {
                self.unanswered
                    .push((self.now + DIAL_TIMEOUT_MS, i, run, dial));
                continue;
            }
            if let Dial::Seed { index, .. } = dial {
                let name = self.setups[j].name.clone();
                node.replica.table_mut().seed_named(index, &name);
            }
            self.connect(i, j, dial);
        }
    }

    /// A new connection from `i` to `j`: each side sends its hello.
    fn connect(&mut self, i: usize, j: usize, dial: Dial) {
        let latency = [1 + self.rng.below(20), 1 + self.rng.below(40)];
        let mut ends = [
            End::new(
                i,
                self.nodes[i].as_ref().expect("up").run,
                self.next_link,
                true,
                Some(dial),
            ),
            End::new(
                j,
                self.nodes[j].as_ref().expect("up").run,
                self.next_link + 1,
                false,
                None,
            ),
        ];
        self.next_link += 2;
        for side in 0..2 {
            let (me, other) = (ends[side].node, ends[1 - side].node);
            let node = self.nodes[me].as_mut().expect("up");
            let now = node.now_ms();
            let hello = node.replica.hello(&self.setups[other].name, now);
            let mut out = BytesMut::new();
            frame::encode(&Frame::Hello(hello.clone()), &mut out);
            ends[side].ours = Some(hello);
            // The handshake's round trip, then the hello.
            ends[1 - side]
                .live_in
                .push(self.now, 2 * latency[0], out.freeze());
        }
        self.conns.push(Conn { ends, latency });
    }

    fn give_up_dials(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unanswered)
            .into_iter()
            .partition(|(t, ..)| *t <= now);
        self.unanswered = rest;
        for (_, i, run, dial) in due {
            if let Some(node) = self.nodes[i].as_mut().filter(|n| n.run == run) {
                let node_now = node.now_ms();
                if let Dial::Seed { index, .. } = dial {
                    node.replica
                        .table_mut()
                        .seed_failed(index, "no answer".into());
                }
                node.replica
                    .table_mut()
                    .dial_ended(&dial, DialEnd::Unanswered, node_now);
            }
        }
    }

    /// Carries out what the cores asked for.
    fn events(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            let mut closes = Vec::new();
            while let Some(ev) = node.replica.poll_event() {
                match ev {
                    Event::Ready(_) => node.opened = true,
                    Event::Close { link, .. } => closes.push(link),
                    Event::Dial => {}
                }
            }
            let run = node.run;
            for link in closes {
                for c in 0..self.conns.len() {
                    let lat = self.conns[c].latency[0];
                    let ends = &mut self.conns[c].ends;
                    if let Some(side) = ends
                        .iter()
                        .position(|e| e.node == i && e.run == run && e.link == link)
                    {
                        let (e, other) = split(ends, side);
                        close_pair(e, other, self.now, lat);
                    }
                }
            }
        }
    }

    /// Sends what every core has for its links.
    fn send(&mut self) {
        let now = self.now;
        for c in self.conns.iter_mut() {
            let latency = c.latency;
            let cut = c.is_cut();
            for side in 0..2 {
                let (e, other) = split(&mut c.ends, side);
                if !e.up || e.dead {
                    continue;
                }
                let Some(node) = self.nodes[e.node].as_mut().filter(|n| n.run == e.run) else {
                    continue;
                };
                let node_now = node.now_ms();
                for _ in 0..FRAMES_PER_STEP {
                    let Some(t) = node.replica.poll_live(e.link, node_now) else {
                        break;
                    };
                    let bytes = encode(t);
                    if !cut {
                        other.live_in.push(now, latency[0], bytes);
                    }
                }
                for _ in 0..PIECES_PER_STEP {
                    let Some(piece) = node.replica.poll_snapshot(e.link, node_now) else {
                        break;
                    };
                    if !cut {
                        other.snap_in.push(now, latency[1], piece.data);
                    }
                }
            }
        }
    }

    /// Ends the graceful stops whose drain is over: state file, close, gone.
    fn finish_drains(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(deadline) = self.draining[i] else {
                continue;
            };
            let node = self.nodes[i].as_ref().expect("draining nodes are up");
            let behind = node.replica.peers_behind();
            if behind > 0 && self.now < deadline {
                continue;
            }
            let node = self.nodes[i].take().expect("checked");
            self.draining[i] = None;
            trace(
                self.now,
                format_args!("n{i} leaves, drained {}", behind == 0),
            );
            let file = node.setup.state_file.as_ref();
            let saved = file.filter(|_| !self.file_off[i]).map(|path| {
                state_file(&node.setup, path).save(Saving {
                    store: node.replica.store(),
                    now_ms: node.now_ms(),
                    phase: node.replica.phase(),
                    positions: node.replica.positions(),
                    own: node.replica.own_position(),
                });
            });
            self.check.run_ended(i, &node, saved.is_some(), self.now);
            for c in self.conns.iter_mut() {
                if let Some(side) = c.ends.iter().position(|e| e.node == i && e.run == node.run) {
                    let lat = c.latency[0];
                    let (e, other) = split(&mut c.ends, side);
                    other.peer_left = true;
                    close_pair(e, other, self.now, lat);
                }
            }
        }
    }

    /// Whether every node (but those gone for good) is up, every pair connected both
    /// ways, and no node draining.
    pub fn all_linked(&self) -> bool {
        let n = self.nodes.len() - self.gone.iter().filter(|g| **g).count();
        self.nodes
            .iter()
            .zip(&self.gone)
            .all(|(x, gone)| *gone || x.as_ref().is_some_and(|x| x.opened))
            && self.draining.iter().all(Option::is_none)
            && self
                .nodes
                .iter()
                .flatten()
                .all(|x| x.replica.table().connected() == n - 1)
    }
}

fn encode(t: Transmit) -> Bytes {
    let (mut scratch, mut chunks) = (BytesMut::new(), Vec::new());
    t.encode(&mut scratch, &mut chunks);
    let mut out = BytesMut::new();
    for c in chunks {
        out.extend_from_slice(&c);
    }
    out.freeze()
}

/// The two ends of a connection, this one first.
fn split(ends: &mut [End; 2], side: usize) -> (&mut End, &mut End) {
    let (a, b) = ends.split_at_mut(1);
    if side == 0 {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    }
}

/// A close: this end knows at once, the other after the close travels.
fn close_pair(e: &mut End, other: &mut End, now: u64, latency: u64) {
    for (end, after) in [(e, 0), (other, latency)] {
        end.live_in.queue.clear();
        end.snap_in.queue.clear();
        let at = now + after;
        end.dies_at = Some(end.dies_at.map_or(at, |d| d.min(at)));
    }
}

trait MapRef<T> {
    fn map_ref<U>(&self, f: impl Fn(&T) -> U) -> [U; 2];
}

impl<T> MapRef<T> for [T; 2] {
    fn map_ref<U>(&self, f: impl Fn(&T) -> U) -> [U; 2] {
        [f(&self[0]), f(&self[1])]
    }
}
