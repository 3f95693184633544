//! One shard of the store: a hash table of slot indices over a slab of slots, with a CLOCK
//! hand for eviction.
//!
//! Why a slab plus an index table rather than a map of owned entries: the CLOCK hand needs a
//! stable order to sweep, eviction needs to find a victim without walking the hash table, and
//! the slot keeps key and value in one exact-sized allocation (about 40 bytes of bookkeeping per
//! item, comparable to memcached's item header).

use hashbrown::HashTable;

use super::{entry_cost, ShardStats};

pub(super) const REFERENCED: u8 = 1;
pub(super) const FETCHED: u8 = 2;
pub const STALE: u8 = 4;
pub const WIN_SENT: u8 = 8;
/// The slot is a delete's tombstone: key and version only, `exptime` is when it may go.
pub(super) const TOMBSTONE: u8 = 16;

pub(super) struct Slot {
    /// Key followed by value, in one allocation; empty for a free slot.
    pub data: Box<[u8]>,
    pub version: u64,
    pub exptime: u32,
    pub flags: u32,
    pub last_access: u32,
    pub key_len: u8,
    pub bits: u8,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            data: Box::default(),
            version: 0,
            exptime: 0,
            flags: 0,
            last_access: 0,
            key_len: 0,
            bits: 0,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    pub fn value(&self) -> &[u8] {
        &self.data[usize::from(self.key_len)..]
    }

    pub fn is_free(&self) -> bool {
        self.data.is_empty()
    }

    pub fn is_tombstone(&self) -> bool {
        self.bits & TOMBSTONE != 0
    }

    /// Keeps the counters of a slot's kind (item or tombstone) right.
    fn count(&self, stats: &mut ShardStats, sign: i64) {
        let field = if self.is_tombstone() {
            &mut stats.tombstones
        } else {
            &mut stats.curr_items
        };
        *field = field.wrapping_add_signed(sign);
        stats.bytes = stats
            .bytes
            .wrapping_add_signed(sign as isize * self.cost() as isize);
    }

    pub fn cost(&self) -> usize {
        entry_cost(usize::from(self.key_len), self.value().len())
    }

    /// Dead items are invisible to clients and reclaimed by whoever finds them first. A
    /// tombstone is dead once its time is up, or once a flush covers it anyway.
    pub fn is_dead(&self, now: u32, flush_floor: u64) -> bool {
        (self.exptime != 0 && self.exptime <= now) || self.version < flush_floor
    }
}

/// What happened to a slot removed by [`Shard::remove_slot`]; decides which counter moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// A client deleted or replaced it.
    Explicit,
    /// Expired or flushed, found by a lookup or the sweeper.
    Reclaimed,
    /// Pushed out for memory.
    Evicted,
    /// Dropped by reconciliation: a peer's full snapshot showed it gone there.
    Reconciled,
}

#[derive(Default)]
pub(super) struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
    /// Where the sweeper resumes.
    sweep_at: usize,
    pub stats: ShardStats,
}

impl Shard {
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&i| self.slots[i as usize].key() == key)
            .copied()
    }

    pub fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    pub fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.slots[idx as usize]
    }

    /// Stores a new slot under `hash`; the key must not be present.
    pub fn insert(&mut self, hash: u64, slot: Slot, hasher: &impl Fn(&[u8]) -> u64) -> u32 {
        slot.count(&mut self.stats, 1);
        if !slot.is_tombstone() {
            self.stats.total_items += 1;
        }
        let idx = match self.free.pop() {
            Some(idx) => {
                self.slots[idx as usize] = slot;
                idx
            }
            None => {
                self.slots.push(slot);
                // Slot indices are u32: a shard would need 4 billion items to overflow, far
                // beyond any memory limit this process can be given.
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, idx, |&i| hasher(slots[i as usize].key()));
        idx
    }

    /// Removes the slot and returns the bytes it was charged.
    pub fn remove_slot(&mut self, idx: u32, hash: u64, why: Removal, now: u32) -> usize {
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        let slot = std::mem::replace(&mut self.slots[idx as usize], Slot::free());
        self.free.push(idx);
        let cost = slot.cost();
        slot.count(&mut self.stats, -1);
        if slot.is_tombstone() {
            return cost;
        }
        let unfetched = slot.bits & FETCHED == 0;
        match why {
            Removal::Explicit | Removal::Reconciled => {}
            Removal::Reclaimed => {
                self.stats.reclaimed += 1;
                if unfetched {
                    self.stats.expired_unfetched += 1;
                }
            }
            Removal::Evicted => {
                self.stats.evictions += 1;
                if unfetched {
                    self.stats.evicted_unfetched += 1;
                }
                if slot.exptime != 0 {
                    self.stats.evicted_nonzero += 1;
                }
                self.stats.last_evicted_age = now.saturating_sub(slot.last_access);
            }
        }
        cost
    }

    /// Puts `slot` where `idx` was (same key, so the table entry stays); returns the old
    /// slot's cost.
    pub fn replace(&mut self, idx: u32, slot: Slot) -> usize {
        slot.count(&mut self.stats, 1);
        if !slot.is_tombstone() {
            self.stats.total_items += 1;
        }
        let old = std::mem::replace(&mut self.slots[idx as usize], slot);
        old.count(&mut self.stats, -1);
        old.cost()
    }

    /// Advances the CLOCK hand until it frees one slot other than `keep`; returns the bytes
    /// freed, or `None` when the shard holds nothing evictable. Dead items go first at no cost
    /// to the hit rate; live ones get a second chance when recently used.
    pub fn evict_one(
        &mut self,
        keep: Option<u32>,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) -> Option<usize> {
        let n = self.slots.len();
        let held = self.stats.curr_items + self.stats.tombstones;
        if held == 0 || (held == 1 && keep.is_some()) {
            return None;
        }
        // Two full turns: the first may only clear reference bits.
        for _ in 0..(2 * n + 1) {
            if self.hand >= n {
                self.hand = 0;
            }
            let idx = self.hand as u32;
            self.hand += 1;
            let slot = &mut self.slots[idx as usize];
            if slot.is_free() || Some(idx) == keep {
                continue;
            }
            let dead = slot.is_dead(now, flush_floor);
            if !dead && slot.bits & REFERENCED != 0 {
                slot.bits &= !REFERENCED;
                continue;
            }
            let hash = hasher(slot.key());
            let why = if dead {
                Removal::Reclaimed
            } else {
                Removal::Evicted
            };
            return Some(self.remove_slot(idx, hash, why, now));
        }
        None
    }

    /// Reclaims dead items among the next `budget` slots; returns the bytes freed.
    pub fn sweep(
        &mut self,
        budget: usize,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) -> usize {
        let mut freed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.sweep_at >= self.slots.len() {
                self.sweep_at = 0;
            }
            let idx = self.sweep_at as u32;
            self.sweep_at += 1;
            let slot = &self.slots[idx as usize];
            if !slot.is_free() && slot.is_dead(now, flush_floor) {
                let hash = hasher(slot.key());
                freed += self.remove_slot(idx, hash, Removal::Reclaimed, now);
            }
        }
        freed
    }

    /// Every live slot, for `stats`-like walks and tests.
    pub fn live(&self, now: u32, flush_floor: u64) -> impl Iterator<Item = &Slot> {
        self.held(now, flush_floor).filter(|s| !s.is_tombstone())
    }

    /// Every item and tombstone not yet dead.
    pub fn held(&self, now: u32, flush_floor: u64) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(move |s| !s.is_free() && !s.is_dead(now, flush_floor))
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slot at `idx`, free or not, for walks that resume by index.
    pub fn slot_at(&self, idx: usize) -> Option<&Slot> {
        self.slots.get(idx)
    }

    /// Makes room for `more` entries in the slab and the table.
    pub fn reserve(&mut self, more: usize, hasher: &impl Fn(&[u8]) -> u64) {
        self.slots.reserve(more.saturating_sub(self.free.len()));
        let slots = &self.slots;
        self.table
            .reserve(more, |&i| hasher(slots[i as usize].key()));
    }

    /// Empties the shard; returns the bytes its entries were charged.
    pub fn clear(&mut self) -> usize {
        let freed = self
            .slots
            .iter()
            .filter(|s| !s.is_free())
            .map(Slot::cost)
            .sum();
        self.table.clear();
        self.slots.clear();
        self.free.clear();
        self.hand = 0;
        self.sweep_at = 0;
        self.stats.curr_items = 0;
        self.stats.tombstones = 0;
        self.stats.bytes = 0;
        freed
    }
}
