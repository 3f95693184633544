//! A deterministic world of [`Membership`] instances for tests and benchmarks: virtual time,
//! one seeded random source, datagrams that are lost with a given probability, take 1 to
//! 3 ms, and are dropped between the two sides of a partition. Nodes can be killed (they
//! vanish), restarted (a new run with the same name) or asked to leave.
//!
//! It lives in the library rather than under `tests/` because the membership benchmark
//! (benches/membership.rs) runs the same world.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::Bytes;

use super::{MemberEvent, MemberId, Membership, Verdict};

/// Where virtual time starts (any wall-clock-like value; runs are derived from it).
pub const START_MS: u64 = 1_700_000_000_000;

struct SimNode {
    m: Membership,
    alive: bool,
    node_id: u16,
}

pub struct World {
    pub now_ms: u64,
    nodes: BTreeMap<String, SimNode>,
    in_flight: BTreeMap<(u64, u64), (String, String, Bytes)>,
    seq: u64,
    rng: u64,
    /// Datagram loss, in parts per million.
    pub loss_ppm: u64,
    /// One side of the current partition: datagrams crossing its edge are dropped.
    partition: Option<BTreeSet<String>>,
    seeds: Vec<String>,
    /// Every event each observer reported, with its time.
    pub log: Vec<(u64, String, MemberEvent)>,
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

impl World {
    /// `n` nodes named `node-0`.., all joining through `node-0` alone.
    pub fn new(n: usize, seed: u64) -> World {
        let mut w = World {
            now_ms: START_MS,
            nodes: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            rng: seed ^ 0x5eed_5eed_5eed_5eed,
            loss_ppm: 0,
            partition: None,
            seeds: vec![node_name(0)],
            log: Vec::new(),
        };
        for i in 0..n {
            w.start(&node_name(i), i as u16);
        }
        w
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn start(&mut self, name: &str, node_id: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + node_id));
        // A new process at every start, as the replication log's run id is.
        let process = self.next_random();
        let id = MemberId::new(name, node_id, addr, self.now_ms).with_process(process);
        let rng_seed = self.next_random();
        let mut m = Membership::new(id, rng_seed);
        m.set_seeds(self.seeds.clone());
        let node = SimNode {
            m,
            alive: true,
            node_id,
        };
        self.nodes.insert(name.to_string(), node);
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn alive_names(&self) -> Vec<String> {
        let alive = self.nodes.iter().filter(|(_, n)| n.alive);
        alive.map(|(k, _)| k.clone()).collect()
    }

    pub fn membership(&self, name: &str) -> Option<&Membership> {
        self.nodes.get(name).map(|n| &n.m)
    }

    /// What `observer` currently believes of `subject`.
    pub fn verdict(&self, observer: &str, subject: &str) -> Option<Verdict> {
        self.nodes.get(observer)?.m.verdict(subject)
    }

    /// The node stops without a word (`kill -9`, power loss).
    pub fn kill(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.alive = false;
        }
    }

    /// The node starts again under the same name, as a new run.
    pub fn restart(&mut self, name: &str) {
        let Some(node_id) = self.nodes.get(name).map(|n| n.node_id) else {
            return;
        };
        self.start(name, node_id);
    }

    /// The node announces that it leaves (it keeps answering until killed).
    pub fn leave(&mut self, name: &str) {
        let now = self.now_ms;
        if let Some(n) = self.nodes.get_mut(name) {
            n.m.leave(now);
        }
        self.collect(name);
    }

    pub fn partition(&mut self, side: &[String]) {
        self.partition = Some(side.iter().cloned().collect());
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    fn crosses_partition(&self, from: &str, to: &str) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|side| side.contains(from) != side.contains(to))
    }

    /// Routes what `name` wants to send and records what it concluded.
    fn collect(&mut self, name: &str) {
        let mut sends = Vec::new();
        if let Some(n) = self.nodes.get_mut(name) {
            while let Some(s) = n.m.poll_send() {
                sends.push(s);
            }
            while let Some(e) = n.m.poll_event() {
                self.log.push((self.now_ms, name.to_string(), e));
            }
        }
        for (to, data) in sends {
            let lost = self.next_random() % 1_000_000 < self.loss_ppm;
            if lost || self.crosses_partition(name, &to) {
                continue;
            }
            let due = self.now_ms + 1 + self.next_random() % 3;
            self.seq += 1;
            self.in_flight
                .insert((due, self.seq), (name.to_string(), to, data));
        }
    }

    fn next_timer(&self) -> Option<(u64, String)> {
        let live = self.nodes.iter().filter(|(_, n)| n.alive);
        live.map(|(k, n)| (n.m.next_timer_ms(), k.clone())).min()
    }

    /// Runs the world until `until_ms` (virtual).
    pub fn run_until(&mut self, until_ms: u64) {
        loop {
            let timer = self.next_timer();
            let msg_due = self.in_flight.keys().next().map(|k| k.0);
            let timer_due = timer.as_ref().map_or(u64::MAX, |t| t.0);
            let due = msg_due.unwrap_or(u64::MAX).min(timer_due);
            if due > until_ms {
                self.now_ms = self.now_ms.max(until_ms);
                return;
            }
            self.now_ms = self.now_ms.max(due);
            let now = self.now_ms;
            if msg_due.is_some_and(|m| m <= timer_due) {
                let Some((_, (from, to, data))) = self.in_flight.pop_first() else {
                    continue;
                };
                if let Some(n) = self.nodes.get_mut(&to).filter(|n| n.alive) {
                    let _ = n.m.handle_datagram(&from, &data, now);
                    self.collect(&to);
                }
            } else if let Some((_, name)) = timer {
                if let Some(n) = self.nodes.get_mut(&name) {
                    n.m.handle_timers(now);
                }
                self.collect(&name);
            }
        }
    }

    /// Runs for `ms` more.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now_ms + ms);
    }

    /// Runs until `cond` holds, checking every 10 ms, for at most `limit_ms`; returns the
    /// virtual time it took, or `None`.
    pub fn run_until_true(
        &mut self,
        limit_ms: u64,
        mut cond: impl FnMut(&World) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        while self.now_ms - start <= limit_ms {
            if cond(self) {
                return Some(self.now_ms - start);
            }
            self.run_for(10);
        }
        None
    }

    /// Whether every live node other than `subject` sees it as `verdict`.
    pub fn all_see(&self, subject: &str, verdict: Verdict) -> bool {
        let observers = self.nodes.iter().filter(|(k, n)| n.alive && *k != subject);
        observers
            .into_iter()
            .all(|(_, n)| n.m.verdict(subject) == Some(verdict))
    }

    /// Whether every live node sees every other live node alive, in its current run (one
    /// membership).
    pub fn converged(&self) -> bool {
        let alive: Vec<(&String, &MemberId)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(k, n)| (k, n.m.id()))
            .collect();
        alive.iter().all(|(o, _)| {
            let observer = &self.nodes[*o].m;
            alive
                .iter()
                .filter(|(s, _)| s != o)
                .all(|(s, id)| observer.member(s) == Some((*id, Verdict::Alive)))
        })
    }

    /// Gossip bytes every node sent so far, summed.
    pub fn bytes_sent(&self) -> u64 {
        self.nodes.values().map(|n| n.m.counters.bytes_out).sum()
    }
}
