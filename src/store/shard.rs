//! One shard of the store: a hash table of slot indices over a slab of slots, with a CLOCK
//! hand for eviction.
//!
//! Why a slab plus an index table rather than a map of owned entries: the CLOCK hand needs a
//! stable order to sweep, eviction needs to find a victim without walking the hash table, and
//! the slot keeps key and value in one exact-sized allocation (about 40 bytes of bookkeeping per
//! item, comparable to memcached's item header).
//!
//! Tombstones live in the same table (one lookup finds whatever is held for a key) but not in
//! the same budget: items are charged against `-m` and evicted by CLOCK; tombstones are
//! charged against the shard's tombstone budget, never evicted for data, and collected
//! oldest first, in creation order, when that budget is full or their time is up. Whatever
//! the shard stops holding without a newer version in its place becomes a fence
//! ([`Fences`]), so that it still refuses older writes of that key.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashTable;

use super::digest::Digests;
use super::fence::Fences;
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
    /// The key's anti-entropy bucket ([`super::digest::bucket_of`]), so that listing a few
    /// buckets does not rehash every key held. Set by [`Shard::insert`] (and kept by
    /// [`Shard::replace`], which keeps the key); it fits in the slot's padding (a slot is
    /// 40 bytes with or without it).
    pub bucket: u16,
}

// The bookkeeping a slot costs (see the module's comment and `entry_cost`).
const _: () = assert!(std::mem::size_of::<Slot>() == 40);

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
            bucket: 0,
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
        let (count, bytes) = if self.is_tombstone() {
            (&mut stats.tombstones, &mut stats.tombstone_bytes)
        } else {
            (&mut stats.curr_items, &mut stats.bytes)
        };
        *count = count.wrapping_add_signed(sign);
        *bytes = bytes.wrapping_add_signed(sign as isize * self.cost() as isize);
    }

    /// What the slot is charged: against `-m` for an item, against the shard's tombstone
    /// budget for a tombstone (the key, and bookkeeping: no value, flags or access time).
    pub fn cost(&self) -> usize {
        if self.is_tombstone() {
            tombstone_cost(usize::from(self.key_len))
        } else {
            entry_cost(usize::from(self.key_len), self.value().len())
        }
    }

    /// Dead items are invisible to clients and reclaimed by whoever finds them first. A
    /// tombstone is dead once its time is up, or once a flush covers it anyway.
    pub fn is_dead(&self, now: u32, flush_floor: u64) -> bool {
        (self.exptime != 0 && self.exptime <= now) || self.version < flush_floor
    }
}

/// Bytes charged per tombstone beyond its key: the slot, the table's share and its place in
/// the collection queue.
pub const TOMBSTONE_OVERHEAD: usize = 64;

pub fn tombstone_cost(key_len: usize) -> usize {
    key_len + TOMBSTONE_OVERHEAD
}

/// What happened to a slot removed by [`Shard::remove_slot`]; decides which counter moves
/// and whether the shard must remember the version it no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// A client deleted it on a standalone node (no tombstones, nothing to fence).
    Explicit,
    /// Expired or flushed (or a tombstone whose time is up), found by a lookup or the
    /// sweeper.
    Reclaimed,
    /// Pushed out for memory.
    Evicted,
    /// A tombstone collected before its time, for the tombstone budget.
    Collected,
    /// An item whose newer version this node could not hold (too large here, or no memory
    /// with `-M`): it must not keep serving the older one.
    Superseded,
    /// Dropped by reconciliation: a peer's full snapshot showed it gone there.
    Reconciled,
}

pub(super) struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
    /// Where the sweeper resumes.
    sweep_at: usize,
    /// Tombstones by creation, so oldest (and first due) first: `(slot, version)`; an entry
    /// whose slot no longer holds that tombstone is stale and skipped.
    tombs: VecDeque<(u32, u64)>,
    /// Bytes of tombstones this shard may hold.
    tomb_budget: usize,
    /// Seconds a tombstone is kept (`--tombstone-ttl`; 0: none, standalone).
    tomb_ttl: u32,
    pub fences: Fences,
    pub stats: ShardStats,
    /// The store's bucket digests: every slot placed, replaced or removed here updates
    /// them (see [`super::digest`]), so no path that changes an entry can miss it.
    digests: Arc<Digests>,
}

impl Shard {
    pub fn new(tomb_budget: usize, fence_cap: usize, tomb_ttl: u32, digests: Arc<Digests>) -> Self {
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            sweep_at: 0,
            tombs: VecDeque::new(),
            tomb_budget,
            tomb_ttl,
            fences: Fences::new(fence_cap),
            stats: ShardStats::default(),
            digests,
        }
    }

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

    /// Gives the entry at `idx` a new version in place (a touch), keeping its bucket's
    /// digest right (which is why [`Shard::slot_mut`] must not be used for it).
    pub fn set_version(&mut self, idx: u32, version: u64) {
        let slot = &mut self.slots[idx as usize];
        self.digests.change(slot.key(), slot.version, version);
        slot.version = version;
    }

    /// Stores a new slot under `hash`; the key must not be present.
    pub fn insert(&mut self, hash: u64, mut slot: Slot, hasher: &impl Fn(&[u8]) -> u64) -> u32 {
        slot.count(&mut self.stats, 1);
        if !slot.is_tombstone() {
            self.stats.total_items += 1;
        }
        slot.bucket = self.digests.toggle(slot.key(), slot.version);
        let tomb = slot.is_tombstone().then_some(slot.version);
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
        if let Some(version) = tomb {
            self.queue_tombstone(idx, version);
        }
        idx
    }

    /// Removes the slot; returns the bytes it was charged against `-m` (0 for a
    /// tombstone, which is charged to the shard's own budget). A version the shard stops
    /// holding becomes a fence, unless a flush covers it already (below `flush_floor`) or
    /// nothing older can arrive (an explicit removal on a standalone node).
    pub fn remove_slot(
        &mut self,
        idx: u32,
        hash: u64,
        why: Removal,
        now: u32,
        flush_floor: u64,
    ) -> usize {
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        let slot = std::mem::replace(&mut self.slots[idx as usize], Slot::free());
        self.free.push(idx);
        slot.count(&mut self.stats, -1);
        self.digests.toggle(slot.key(), slot.version);
        if why != Removal::Explicit && slot.version >= flush_floor {
            self.fences.forget(hash, slot.version);
        }
        if slot.is_tombstone() {
            if why == Removal::Collected {
                self.stats.tombstones_collected += 1;
            }
            return 0;
        }
        let unfetched = slot.bits & FETCHED == 0;
        match why {
            Removal::Explicit | Removal::Collected | Removal::Superseded | Removal::Reconciled => {}
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
        slot.cost()
    }

    /// Removes a dead slot (an expired or flushed item, or a tombstone whose time is up);
    /// returns the bytes of `-m` it freed. In a cluster an item that *expired* becomes a
    /// tombstone of its version for `--tombstone-ttl`: a snapshot then carries its fence,
    /// so that a peer still holding an older version of the key drops it instead of
    /// serving it on (a fence kept by hash alone cannot travel). A flushed one needs none:
    /// the flush travels itself. `hasher` hashes keys for the slots freed.
    pub fn reclaim(
        &mut self,
        idx: u32,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) -> usize {
        let slot = &self.slots[idx as usize];
        if self.tomb_ttl == 0 || slot.is_tombstone() || slot.version < flush_floor {
            let hash = hasher(slot.key());
            return self.remove_slot(idx, hash, Removal::Reclaimed, now, flush_floor);
        }
        let freed = slot.cost();
        let tomb = Slot {
            data: slot.key().to_vec().into_boxed_slice(),
            version: slot.version,
            exptime: now.saturating_add(self.tomb_ttl),
            flags: 0,
            last_access: now,
            key_len: slot.key_len,
            bits: TOMBSTONE,
            bucket: slot.bucket,
        };
        self.stats.reclaimed += 1;
        if slot.bits & FETCHED == 0 {
            self.stats.expired_unfetched += 1;
        }
        self.replace(idx, tomb);
        // Over the tombstone budget, the sweeper collects the oldest (not here: a write
        // may be under way on another tombstone of this shard).
        freed
    }

    /// Puts `slot` where `idx` was (same key, so the table entry and the bucket stay).
    pub fn replace(&mut self, idx: u32, mut slot: Slot) {
        slot.bucket = self.slots[idx as usize].bucket;
        slot.count(&mut self.stats, 1);
        if !slot.is_tombstone() {
            self.stats.total_items += 1;
        }
        let tomb = slot.is_tombstone().then_some(slot.version);
        let old = std::mem::replace(&mut self.slots[idx as usize], slot);
        old.count(&mut self.stats, -1);
        // The same key (see above): one hash, one XOR.
        let new = &self.slots[idx as usize];
        debug_assert_eq!(old.key(), new.key());
        self.digests.change(new.key(), old.version, new.version);
        if let Some(version) = tomb {
            self.queue_tombstone(idx, version);
        }
    }

    /// Advances the CLOCK hand until it frees one item other than `keep`; returns the bytes
    /// freed, or `None` when the shard holds nothing evictable. Dead items go first at no cost
    /// to the hit rate; live ones get a second chance when recently used. Tombstones are not
    /// data and are never pushed out for it (they have their own budget).
    pub fn evict_one(
        &mut self,
        keep: Option<u32>,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) -> Option<usize> {
        let n = self.slots.len();
        let keep_item = keep.filter(|&k| !self.slots[k as usize].is_tombstone());
        let items = self.stats.curr_items;
        if items == 0 || (items == 1 && keep_item.is_some()) {
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
            if slot.is_free() || slot.is_tombstone() || Some(idx) == keep {
                continue;
            }
            let dead = slot.is_dead(now, flush_floor);
            if !dead && slot.bits & REFERENCED != 0 {
                slot.bits &= !REFERENCED;
                continue;
            }
            if dead {
                return Some(self.reclaim(idx, now, flush_floor, hasher));
            }
            let hash = hasher(slot.key());
            return Some(self.remove_slot(idx, hash, Removal::Evicted, now, flush_floor));
        }
        None
    }

    /// Collects the tombstones whose time is up from the front of the queue, then reclaims
    /// dead entries among the next `budget` slots; returns the bytes freed against `-m`.
    pub fn sweep(
        &mut self,
        budget: usize,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) -> usize {
        for _ in 0..budget {
            let Some(idx) = self.oldest_tombstone() else {
                break;
            };
            if !self.slots[idx as usize].is_dead(now, flush_floor) {
                break;
            }
            self.remove_tombstone(idx, Removal::Reclaimed, now, flush_floor, hasher);
        }
        let mut freed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.sweep_at >= self.slots.len() {
                self.sweep_at = 0;
            }
            let idx = self.sweep_at as u32;
            self.sweep_at += 1;
            let slot = &self.slots[idx as usize];
            if !slot.is_free() && slot.is_dead(now, flush_floor) {
                freed += self.reclaim(idx, now, flush_floor, hasher);
            }
        }
        freed
    }

    /// Collects the oldest tombstones, other than `keep`, until the shard's tombstones fit
    /// its budget. Each becomes a fence: the delete it recorded still refuses older writes.
    pub fn collect_tombstones(
        &mut self,
        keep: u32,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) {
        while self.stats.tombstone_bytes > self.tomb_budget {
            match self.oldest_tombstone() {
                Some(idx) if idx != keep => {
                    self.remove_tombstone(idx, Removal::Collected, now, flush_floor, hasher)
                }
                // Only the one just written is left: a budget smaller than one tombstone
                // still holds one.
                _ => return,
            }
        }
    }

    fn remove_tombstone(
        &mut self,
        idx: u32,
        why: Removal,
        now: u32,
        flush_floor: u64,
        hasher: &impl Fn(&[u8]) -> u64,
    ) {
        let hash = hasher(self.slots[idx as usize].key());
        self.remove_slot(idx, hash, why, now, flush_floor);
        self.tombs.pop_front();
    }

    /// The slot of the oldest tombstone held, dropping stale queue entries on the way.
    fn oldest_tombstone(&mut self) -> Option<u32> {
        while let Some(&(idx, version)) = self.tombs.front() {
            let s = &self.slots[idx as usize];
            if s.is_tombstone() && s.version == version {
                return Some(idx);
            }
            self.tombs.pop_front();
        }
        None
    }

    /// Puts a new tombstone at the back of the collection queue. Tombstones replaced or
    /// reclaimed elsewhere leave stale entries behind; they are dropped before they can
    /// outnumber the live ones.
    fn queue_tombstone(&mut self, idx: u32, version: u64) {
        self.tombs.push_back((idx, version));
        if self.tombs.len() > 2 * self.stats.tombstones as usize + 64 {
            let slots = &self.slots;
            self.tombs.retain(|&(i, v)| {
                let s = &slots[i as usize];
                s.is_tombstone() && s.version == v
            });
        }
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

    /// Empties the shard; returns the bytes its items were charged against `-m`. Its
    /// fences stay: what it forgot, it still must not take back.
    pub fn clear(&mut self) -> usize {
        let freed = self
            .slots
            .iter()
            .filter(|s| !s.is_free() && !s.is_tombstone())
            .map(Slot::cost)
            .sum();
        for s in self.slots.iter().filter(|s| !s.is_free()) {
            self.digests.toggle(s.key(), s.version);
        }
        self.table.clear();
        self.slots.clear();
        self.free.clear();
        self.tombs.clear();
        self.hand = 0;
        self.sweep_at = 0;
        self.stats.curr_items = 0;
        self.stats.tombstones = 0;
        self.stats.bytes = 0;
        self.stats.tombstone_bytes = 0;
        freed
    }
}
