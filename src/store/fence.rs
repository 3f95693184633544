//! Fences that survive forgetting (DESIGN.md section 1): when a shard stops holding a key's
//! version without a tombstone (the item expired, was evicted, or its tombstone was
//! collected), it must still refuse older writes of that key arriving late, or a node would
//! take back an older value than its peers hold (contract 3, no regression).
//!
//! Two tiers per shard. The exact tier remembers `(key hash, version)` for the most recent
//! forgets, up to a fixed count; when it is full, the entry with the lowest version leaves
//! it and the shard's **forgotten floor** rises to that version. A key held nothing for is
//! then fenced at `max(floor, its exact fence)`. Dropping the lowest version first keeps the
//! floor as low as it can be for the memory given: the floor is at most the lowest version
//! still remembered exactly, so it trails the newest forgets by the whole exact tier. That
//! is what lets a replica under memory pressure keep taking peers' fresh writes of new
//! keys: evicting an item written a moment ago fences that key exactly, it does not lift
//! the floor to "now" for every key.
//!
//! A fence matters only for keys held nothing for: a key held has its own version, and a
//! newer write for it is taken whatever the floor (refusing it would leave this node with an
//! older value than its peers). Local writes never consult fences: a fence is a version
//! this node held, so its clock has seen it, and every local write is newer.
//!
//! Hash collisions (64-bit) can only fence a key too high, which refuses an older write:
//! absence, never regression.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashTable;

/// Memory one exact fence takes, table and heap together, for sizing the tier.
pub const FENCE_COST: usize = 48;

pub(super) struct Fences {
    /// Every version forgotten here and no longer fenced exactly is at or below it.
    floor: u64,
    /// `(hash, version)`, looked up by the key's own hash.
    exact: HashTable<(u64, u64)>,
    /// The exact fences by version, lowest first; entries whose version is no longer the
    /// one in `exact` for their hash are stale and skipped.
    by_version: BinaryHeap<Reverse<(u64, u64)>>,
    /// How many exact fences are kept; 0 turns fences off (a standalone node).
    cap: usize,
}

impl Fences {
    pub fn new(cap: usize) -> Self {
        Self {
            floor: 0,
            exact: HashTable::new(),
            by_version: BinaryHeap::new(),
            cap,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// The highest version forgotten for the key with this hash (0: none known).
    pub fn fence(&self, hash: u64) -> u64 {
        let exact = self.exact.find(hash, |e| e.0 == hash).map_or(0, |e| e.1);
        exact.max(self.floor)
    }

    /// Records that this shard no longer holds `version` of the key with this hash.
    pub fn forget(&mut self, hash: u64, version: u64) {
        if !self.enabled() || version <= self.floor {
            return;
        }
        match self.exact.find_mut(hash, |e| e.0 == hash) {
            Some(e) if e.1 >= version => return,
            Some(e) => e.1 = version,
            None => {
                self.exact.insert_unique(hash, (hash, version), |e| e.0);
            }
        }
        self.by_version.push(Reverse((version, hash)));
        while self.exact.len() > self.cap {
            self.drop_lowest();
        }
        // Stale heap entries come from fences raised in place; rebuild before they
        // outnumber the live ones.
        if self.by_version.len() > 2 * self.cap + 16 {
            self.by_version = self.exact.iter().map(|&(h, v)| Reverse((v, h))).collect();
        }
    }

    /// Moves the lowest exact fence into the floor.
    fn drop_lowest(&mut self) {
        while let Some(Reverse((version, hash))) = self.by_version.pop() {
            if let Ok(e) = self.exact.find_entry(hash, |e| *e == (hash, version)) {
                e.remove();
                self.floor = self.floor.max(version);
                return;
            }
        }
    }

    /// Raises the floor to at least `version` (a state file's, saved by an earlier run).
    pub fn raise_floor(&mut self, version: u64) {
        if !self.enabled() || version <= self.floor {
            return;
        }
        self.floor = version;
        self.exact.retain(|e| e.1 > version);
        self.by_version.retain(|Reverse((v, _))| *v > version);
    }

    /// The highest version forgotten here: what a later run must refuse at or below for
    /// keys it holds nothing for, since the exact fences cannot outlive this process (key
    /// hashes are seeded per process).
    pub fn highest(&self) -> u64 {
        self.exact.iter().map(|e| e.1).fold(self.floor, u64::max)
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Exact fences held.
    pub fn len(&self) -> usize {
        self.exact.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_fences_then_the_floor_covers_the_lowest() {
        let mut f = Fences::new(3);
        for (hash, v) in [(1, 10), (2, 50), (3, 30)] {
            f.forget(hash, v);
        }
        assert_eq!((f.fence(1), f.fence(2), f.fence(9)), (10, 50, 0));
        // A fourth: the lowest (10) leaves the exact tier, the floor covers it.
        f.forget(4, 40);
        assert_eq!(f.floor(), 10);
        assert_eq!((f.fence(1), f.fence(4), f.fence(9)), (10, 40, 10));
        // Forgetting a key again raises its fence in place; a lower version changes nothing.
        f.forget(3, 60);
        f.forget(2, 20);
        assert_eq!((f.fence(3), f.fence(2), f.len()), (60, 50, 3));
        f.forget(5, 70);
        assert_eq!(
            f.floor(),
            40,
            "the lowest live fence went, not the stale 30"
        );
        assert_eq!(f.highest(), 70);
        // At or below the floor: nothing to remember.
        f.forget(6, 35);
        assert_eq!(f.len(), 3);
        f.raise_floor(65);
        assert_eq!(
            (f.floor(), f.len(), f.fence(5), f.fence(2)),
            (65, 1, 70, 65)
        );
    }

    #[test]
    fn disabled_fences_remember_nothing() {
        let mut f = Fences::new(0);
        f.forget(1, 10);
        f.raise_floor(5);
        assert_eq!((f.fence(1), f.highest()), (0, 0));
    }

    #[test]
    fn stale_heap_entries_stay_bounded() {
        let mut f = Fences::new(8);
        for v in 1..10_000u64 {
            f.forget(v % 4, v);
        }
        assert!(f.by_version.len() <= 2 * 8 + 16 + 1);
        assert_eq!((f.floor(), f.fence(3)), (0, 9_999));
    }
}
