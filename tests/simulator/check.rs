//! The contract of DESIGN.md section 0, checked from outside the cores.
//!
//! - **No regression** is checked after every step: a node run never holds a version of a
//!   key older than one it held (item or tombstone) earlier in the run, nor takes back a
//!   version it stopped holding (evicted, expired and collected, flushed, dropped): what a
//!   node forgot is never refilled, by repair or anything else.
//! - At the end, once every node is back and connected: **agreement** (every node holding
//!   a live item for a key holds the same value, flags, exptime and version); **no
//!   resurrection** (no live item is older than a delete or a due flush that a node alive
//!   at the end ever held); **nothing acknowledged lost that a live node holds** (the
//!   newest write of a key any node alive at the end ever held is still there, unless it
//!   expired, a flush covers it, a newer write superseded it, or memory pressure evicted
//!   things).
//!
//! "Ever held" is sampled after every step, so a write counts from the moment one node
//! that is alive at the end held it: a write that died with its node before any peer got
//! it is the asynchronous window the contract allows.

use std::collections::{BTreeMap, BTreeSet};

use meshcached::clock::Version;
use meshcached::store::Flush;

use crate::node::Node;

/// What a node run held of one key at its newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    version: Version,
    tombstone: bool,
    exptime: u32,
}

#[derive(Default)]
struct RunView {
    /// Per key, the newest version held (regression) and what it was (the end checks).
    newest: BTreeMap<Vec<u8>, Held>,
    /// Per key, the newest tombstone held that is a delete (see `live_versions`), decided
    /// at the end: every tombstone version seen.
    tombstones: BTreeMap<Vec<u8>, std::collections::BTreeSet<Version>>,
    flushes: BTreeSet<(u64, u64)>,
    /// The keys held at the last sample, and per key the newest version held before the
    /// node stopped holding anything for it.
    present: BTreeSet<Vec<u8>>,
    forgotten: BTreeMap<Vec<u8>, Version>,
}

pub struct Checker {
    runs: Vec<RunView>,
    /// Per key, the newest version any node run ever held (runs that ended included).
    all: BTreeMap<Vec<u8>, Version>,
    /// Versions some node held as a live item. A node that receives an item whose expiry
    /// has already passed by its clock keeps only a tombstone of it (a fence): that is an
    /// expired write, not a delete, and may be absent elsewhere without being resurrected.
    live_versions: std::collections::BTreeSet<Version>,
    /// Any node evicted something: then "lost" cannot be told from "evicted".
    pub evicted: bool,
    pub violations: Vec<String>,
}

/// A live item as the end checks see it.
type Live = (Vec<u8>, u32, u32, Version);

impl Checker {
    pub fn new(nodes: usize) -> Checker {
        Checker {
            runs: (0..nodes).map(|_| RunView::default()).collect(),
            all: BTreeMap::new(),
            live_versions: Default::default(),
            evicted: false,
            violations: Vec::new(),
        }
    }

    pub fn run_started(&mut self, i: usize, _node: &Node, _now: u64) {
        self.runs[i] = RunView::default();
    }

    pub fn run_ended(&mut self, i: usize, node: &Node, _saved: bool, _now: u64) {
        if node.replica.store().stats().evictions > 0 {
            self.evicted = true;
        }
        self.runs[i] = RunView::default();
    }

    /// After every step: what each node holds now.
    pub fn sample(&mut self, nodes: &[Option<Node>], now: u64) {
        for (i, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let store = node.replica.store();
            let secs = (node.now_ms() / 1000) as u32;
            let view = &mut self.runs[i];
            let state = store.state(secs);
            let now_present: BTreeSet<Vec<u8>> = state.iter().map(|e| e.0.clone()).collect();
            for k in view.present.difference(&now_present) {
                if let Some(h) = view.newest.get(k) {
                    view.forgotten.insert(k.clone(), h.version);
                }
            }
            view.present = now_present;
            for (key, value, version) in state {
                // (A tombstone may reappear at its version: an expired item is out of
                // `state` until reclaimed into one.)
                let forgot = view.forgotten.remove(&key);
                if let Some(f) = forgot.filter(|f| version <= *f && value.is_some()) {
                    self.violations.push(format!(
                        "refill at {now}: node {i} holds {} at {version} after forgetting it at {f}",
                        show(&key)
                    ));
                }
                if value.is_some() {
                    self.live_versions.insert(version);
                } else {
                    view.tombstones
                        .entry(key.clone())
                        .or_default()
                        .insert(version);
                }
                let all = self.all.entry(key.clone()).or_insert(version);
                *all = (*all).max(version);
                let prev = view.newest.get(&key).copied();
                if std::env::var("MESHCACHED_SIM_KEY").is_ok_and(|k| k.as_bytes() == key)
                    && prev.is_none_or(|p| p.version != version)
                {
                    crate::world::trace(
                        now,
                        format_args!(
                            "n{i} holds {} at {version} (tombstone {})",
                            show(&key),
                            value.is_none()
                        ),
                    );
                }
                if let Some(p) = prev.filter(|p| p.version > version) {
                    self.violations.push(format!(
                        "regression at {now}: node {i} holds {} at {version} after holding {}",
                        show(&key),
                        p.version
                    ));
                }
                if prev.is_none_or(|p| version > p.version) {
                    let exptime = match &value {
                        Some(_) => store
                            .dump(secs)
                            .into_iter()
                            .find(|d| d.0 == key)
                            .map_or(0, |d| d.3),
                        None => 0,
                    };
                    view.newest.insert(
                        key,
                        Held {
                            version,
                            tombstone: value.is_none(),
                            exptime,
                        },
                    );
                }
            }
            for f in store.flush_state(secs).flushes {
                view.flushes.insert((f.issued.0, f.at_ms));
            }
            if store.stats().evictions > 0 {
                self.evicted = true;
            }
        }
    }

    /// Agreement among the running nodes; `Err` names the first difference. Keys whose
    /// expiry is within the clocks' spread of now are left out (nodes may differ on whether
    /// they expired yet).
    pub fn agreement(nodes: &[Option<Node>], world_ms: u64) -> Result<(), String> {
        let near = |exptime: u32| exptime != 0 && u64::from(exptime) * 1000 <= world_ms + 4000;
        let mut seen: BTreeMap<Vec<u8>, (usize, Live)> = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let secs = (node.now_ms() / 1000) as u32;
            for (key, value, flags, exptime, version) in node.replica.store().dump(secs) {
                if near(exptime) {
                    continue;
                }
                let live = (value, flags, exptime, version);
                match seen.get(&key) {
                    Some((j, other)) if *other != live => {
                        return Err(format!(
                            "{}: node {j} holds {} and node {i} holds {}",
                            show(&key),
                            describe(other),
                            describe(&live)
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(key, (i, live));
                    }
                }
            }
        }
        Ok(())
    }

    /// The end checks: no resurrection and nothing lost (see the module doc).
    pub fn finish(&mut self, nodes: &[Option<Node>], world_ms: u64) {
        let mut newest: BTreeMap<Vec<u8>, Held> = BTreeMap::new();
        let mut flushes: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut deletes: BTreeMap<Vec<u8>, Version> = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            for (k, h) in &self.runs[i].newest {
                let e = newest.entry(k.clone()).or_insert(*h);
                if h.version > e.version {
                    *e = *h;
                }
            }
            flushes.extend(self.runs[i].flushes.iter().copied());
            for (k, versions) in &self.runs[i].tombstones {
                let newest_delete = versions
                    .iter()
                    .rev()
                    .find(|v| !self.live_versions.contains(v));
                if let Some(v) = newest_delete {
                    let e = deletes.entry(k.clone()).or_insert(*v);
                    *e = (*e).max(*v);
                }
            }
        }
        let due_floor = flushes
            .iter()
            .map(|&(issued, at_ms)| Flush {
                issued: Version(issued),
                at_ms,
            })
            .filter(|f| f.at_ms + 4000 <= world_ms)
            .map(|f| f.barrier())
            .max()
            .unwrap_or(Version::NONE);
        for (i, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let secs = (node.now_ms() / 1000) as u32;
            let live: BTreeMap<Vec<u8>, Live> = node
                .replica
                .store()
                .dump(secs)
                .into_iter()
                .map(|(k, v, f, e, ver)| (k, (v, f, e, ver)))
                .collect();
            for (k, item) in &live {
                let version = item.3;
                if version < due_floor {
                    self.violations.push(format!(
                        "resurrection: node {i} holds {} at {version}, older than a due flush's barrier {due_floor}",
                        show(k)
                    ));
                }
                if let Some(d) = deletes.get(k).filter(|d| version < **d) {
                    self.violations.push(format!(
                        "resurrection: node {i} holds {} at {version}, older than the delete {d} a live node applied",
                        show(k)
                    ));
                }
            }
        }
        if self.evicted {
            return;
        }
        for (k, r) in &newest {
            let expired = r.exptime != 0 && u64::from(r.exptime) * 1000 <= world_ms + 4000;
            // A newer write that died with its node run (the asynchronous window) may
            // have superseded it: a delete, say, that reconciliation acted on.
            let superseded = self.all.get(k).is_some_and(|v| *v > r.version);
            if r.tombstone || expired || superseded || r.version < due_floor {
                continue;
            }
            let held = nodes.iter().flatten().any(|n| {
                let secs = (n.now_ms() / 1000) as u32;
                n.replica
                    .store()
                    .dump(secs)
                    .iter()
                    .any(|d| d.0 == *k && d.4 >= r.version)
            });
            if !held {
                self.violations.push(format!(
                    "lost: {} at {} was held by a live node and is on none now",
                    show(k),
                    r.version
                ));
            }
        }
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn describe(l: &Live) -> String {
    format!(
        "{:?} flags {} exptime {} version {}",
        String::from_utf8_lossy(&l.0),
        l.1,
        l.2,
        l.3
    )
}
