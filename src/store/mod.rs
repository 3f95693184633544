//! The in-memory item store: sharded, memory-bounded, versioned.
//!
//! The store knows nothing of protocols. It offers two entry points that run a closure under
//! one shard lock: [`Store::read`] for lookups and [`Store::mutate`] for every change. The
//! dispatcher expresses each memcached command as such a closure, so check-and-set, append or
//! incr are atomic per key without the store knowing what they mean, and every write gets its
//! version from the hybrid logical clock *inside* the lock: versions of one key therefore
//! increase in the order the writes happened, which last-writer-wins replication relies on.
//!
//! Memory: every item is charged `key + value + ENTRY_OVERHEAD` against one global budget
//! (`-m`); when a write does not fit, the shard being written evicts by CLOCK (dead items first,
//! then the least recently used as approximated by reference bits), then other shards are asked
//! without waiting for their locks. With `-M` the write fails instead.
//!
//! In a cluster a delete leaves a tombstone, and whatever the store forgets (an item expired
//! or evicted, a tombstone collected) leaves a fence ([`fence`]): both exist so that an older
//! write arriving late is refused (DESIGN.md section 1). Tombstones and fences have a memory
//! budget of their own, [`StoreConfig::tombstone_mem`], on top of `-m`: data never makes
//! room for them and they never make room for data, so deletes cannot empty a small node and
//! memory pressure cannot bring deletes back.
//!
//! Values are copied once, on insert, into an exact-sized allocation holding key and value:
//! that is the one place where "compaction" happens, and it means a stored item never pins a
//! connection's read buffer. memcached copies into its slabs at the same point.

mod digest;
mod export;
mod fence;
mod flush;
mod journal;
mod listing;
mod merge;
mod mutate;
mod repair;
mod shard;
mod write;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

use crate::clock::Version;
pub use digest::{bucket_of, entry_hash, key_hash, BUCKETS};
pub use export::{ExportCursor, Exported};
use fence::FENCE_COST;
use flush::FlushSet;
pub use flush::{Flush, FlushMerge, FlushState, MAX_PENDING};
pub use journal::{Change, Journal};
pub use listing::{ItemMeta, ListCursor};
pub use merge::{Applied, Remote};
use shard::{Shard, Slot, FETCHED, REFERENCED};
pub use shard::{STALE, TOMBSTONE_OVERHEAD, WIN_SENT};
use write::Found;

/// Bytes charged per entry beyond key and value: slot bookkeeping, allocator rounding and the
/// hash table's share. Close to what one item really costs, so `-m` means what it says.
pub const ENTRY_OVERHEAD: usize = 56;

/// With `-M`, how many slots a write that does not fit may scan for dead items to reclaim.
const DEAD_SCAN: usize = 64;

fn entry_cost(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ENTRY_OVERHEAD
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `-m`, in bytes.
    pub mem_limit: usize,
    /// `-I`, in bytes.
    pub max_item_size: usize,
    /// `false` with `-M`: refuse writes instead of evicting.
    pub evict: bool,
    /// Whether CAS is in use (`-C` turns it off); only changes the item-size arithmetic,
    /// because memcached's items carry 8 more bytes with CAS on.
    pub cas_enabled: bool,
    pub shards: usize,
    /// Seconds a delete's tombstone is kept (`--tombstone-ttl`); 0 keeps none, which is
    /// right for a standalone node, where no older write can arrive late. It also turns
    /// fences off: they exist for replicated writes only.
    pub tombstone_ttl: u32,
    /// Bytes for tombstones and fences, on top of `mem_limit`; `None`:
    /// [`StoreConfig::default_tombstone_mem`].
    pub tombstone_mem: Option<usize>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            mem_limit: 64 << 20,
            max_item_size: 1 << 20,
            evict: true,
            cas_enabled: true,
            shards: 64,
            tombstone_ttl: 0,
            tombstone_mem: None,
        }
    }
}

/// The least memory for tombstones and fences, whatever `-m`.
const MIN_TOMBSTONE_MEM: usize = 256 << 10;
/// The least exact fences per shard (see [`fence`]): enough that evicting items written a
/// moment ago does not lift a shard's floor to "now".
const MIN_FENCES_PER_SHARD: usize = 64;

impl StoreConfig {
    /// An eighth of `-m`, at least 256 KB. Tombstones are a key and a version (about 80
    /// bytes each), so the default 64 MB gives 6 MB of tombstones, ~75,000 deletes kept
    /// whole, and 2 MB of exact fences, ~44,000 forgets remembered per key; past those, the
    /// oldest become the forgotten floor, which refuses more (absence) but forgets nothing.
    /// Taking the budget out of `-m` instead would shrink a small node's data to make room
    /// for deletes; kept apart, `-m` still means what memcached means by it.
    pub fn default_tombstone_mem(mem_limit: usize) -> usize {
        (mem_limit / 8).max(MIN_TOMBSTONE_MEM)
    }

    fn tombstone_mem(&self) -> usize {
        self.tombstone_mem
            .unwrap_or_else(|| Self::default_tombstone_mem(self.mem_limit))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("object too large for cache")]
    TooLarge,
    #[error("out of memory storing object")]
    OutOfMemory,
}

/// A borrowed view of a live item, valid while its shard is locked.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// Absolute unix seconds; 0 = never.
    pub exptime: u32,
    pub version: Version,
    /// Unix seconds of the last access before this one.
    pub last_access: u32,
    /// Whether it had been read before this access.
    pub fetched: bool,
    /// [`STALE`] and [`WIN_SENT`], the meta protocol's serve-stale bookkeeping.
    pub bits: u8,
}

impl<'a> ItemRef<'a> {
    fn of(slot: &'a Slot) -> Self {
        Self {
            key: slot.key(),
            value: slot.value(),
            flags: slot.flags,
            exptime: slot.exptime,
            version: Version(slot.version),
            last_access: slot.last_access,
            fetched: slot.bits & FETCHED != 0,
            bits: slot.bits & (STALE | WIN_SENT),
        }
    }
}

/// The value of a [`Put`], composed with the current one where needed.
#[derive(Debug, Clone)]
pub enum NewValue<'a> {
    Bytes(&'a [u8]),
    Owned(Vec<u8>),
    /// Current value followed by these bytes.
    Append(&'a [u8]),
    /// These bytes followed by the current value.
    Prepend(&'a [u8]),
}

#[derive(Debug, Clone)]
pub struct Put<'a> {
    pub value: NewValue<'a>,
    pub flags: u32,
    /// Absolute unix seconds; 0 = never. One already past stores nothing (and removes the
    /// current item): the write succeeds and is immediately expired, as in memcached.
    pub exptime: u32,
    /// [`STALE`] / [`WIN_SENT`] for the new item.
    pub bits: u8,
    /// A version chosen by the caller (meta `E`, standalone only); otherwise the clock ticks.
    pub version: Option<Version>,
}

/// What a [`Store::mutate`] closure decides.
#[derive(Debug, Clone)]
pub enum Mutation<'a> {
    /// Nothing changes.
    Keep,
    Put(Put<'a>),
    /// Change the current item's metadata; ignored when there is none.
    Update {
        exptime: Option<u32>,
        set_bits: u8,
        clear_bits: u8,
        /// Give it a new version (a new CAS), as touch and invalidation do.
        bump: bool,
        version: Option<Version>,
    },
    /// Remove the current item (a tombstone when tombstones are on); nothing when there is
    /// none.
    Delete,
    /// A client's delete: as `Delete`, and when the key is not held at all, still write a
    /// tombstone if tombstones are on (a cluster: peers may hold the key).
    DeleteMissing,
}

/// Counters kept per shard under its lock; summed by [`Store::stats`].
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub curr_items: u64,
    pub tombstones: u64,
    pub total_items: u64,
    /// Bytes of items, charged against `-m`.
    pub bytes: usize,
    /// Bytes of tombstones, charged against the tombstone budget.
    pub tombstone_bytes: usize,
    /// Tombstones collected before their time because the budget was full.
    pub tombstones_collected: u64,
    /// Exact fences held (filled in by [`Store::stats`]).
    pub fences: u64,
    /// The highest shard's forgotten floor (filled in by [`Store::stats`]).
    pub forgotten_floor: u64,
    pub evictions: u64,
    pub evicted_unfetched: u64,
    pub evicted_nonzero: u64,
    pub expired_unfetched: u64,
    pub reclaimed: u64,
    pub last_evicted_age: u32,
    pub get_expired: u64,
    pub get_flushed: u64,
}

pub type StoreStats = ShardStats;

/// One live item as [`Store::dump`] copies it: key, value, flags, exptime, version.
pub type DumpedItem = (Vec<u8>, Vec<u8>, u32, u32, Version);

pub struct Store {
    journal: std::sync::OnceLock<Journal>,
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::FixedState,
    cfg: StoreConfig,
    used: AtomicUsize,
    /// Items with a lower version are flushed: `flushes`'s floor, read without its lock.
    flush_floor: AtomicU64,
    /// Unix second at which the next pending flush becomes due; 0 when none is pending.
    flush_due: AtomicU32,
    flushes: Mutex<FlushSet>,
    shard_shift: u32,
    /// Per-bucket digests of every entry held, for anti-entropy ([`digest`]).
    digests: std::sync::Arc<digest::Digests>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock would be a bug, but the shard's invariants are kept
    // between statements, so serving on is better than poisoning every later request.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    pub fn new(cfg: StoreConfig) -> Self {
        // Keys come from clients: the seed is random, so that nobody can aim keys at one
        // bucket.
        let seed = DefaultHashBuilder::default().hash_one(0x6d65_7368u64);
        Self::with_hash_seed(cfg, seed)
    }

    /// A store whose key hashing (and so its layout, walk order and eviction choices) is
    /// fixed by `seed`: for the simulator, whose runs must replay exactly from their seed.
    pub fn with_hash_seed(cfg: StoreConfig, seed: u64) -> Self {
        let n = cfg.shards.max(1).next_power_of_two();
        // A quarter of the budget for exact fences, the rest for tombstones; none of either
        // on a standalone node.
        let (tomb_budget, fence_cap) = if cfg.tombstone_ttl > 0 {
            let mem = cfg.tombstone_mem();
            let fences = (mem / 4 / FENCE_COST / n).max(MIN_FENCES_PER_SHARD);
            (mem * 3 / 4 / n, fences)
        } else {
            (0, 0)
        };
        let digests = std::sync::Arc::new(digest::Digests::new());
        let shards = (0..n)
            .map(|_| {
                let d = digests.clone();
                Mutex::new(Shard::new(tomb_budget, fence_cap, cfg.tombstone_ttl, d))
            })
            .collect();
        Self {
            journal: std::sync::OnceLock::new(),
            shards,
            hasher: foldhash::fast::FixedState::with_seed(seed),
            shard_shift: n.trailing_zeros(),
            cfg,
            used: AtomicUsize::new(0),
            flush_floor: AtomicU64::new(0),
            flush_due: AtomicU32::new(0),
            flushes: Mutex::new(FlushSet::default()),
            digests,
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard comes from bits 40.. of the hash: hashbrown uses the low bits for the bucket
    /// and the top 7 for its tag, so those must stay varied within a shard.
    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 40) as usize) & ((1 << self.shard_shift) - 1)
    }

    /// Whether memcached would refuse an item of this shape as too large (its header, CAS
    /// and suffix arithmetic, so that the boundary matches byte for byte).
    pub fn too_large(&self, key_len: usize, value_len: usize, flags: u32) -> bool {
        self.item_size(key_len, value_len, flags) > self.cfg.max_item_size
    }

    /// memcached's `ITEM_ntotal` for an item of this shape: header, CAS (unless `-C`), key
    /// and its NUL, value and CRLF, client flags when nonzero.
    pub fn item_size(&self, key_len: usize, value_len: usize, flags: u32) -> usize {
        let cas = if self.cfg.cas_enabled { 8 } else { 0 };
        let suffix = if flags == 0 { 0 } else { 4 };
        48 + cas + key_len + 1 + value_len + 2 + suffix
    }

    /// Looks `key` up and hands the live item (or `None`) to `f` under the shard lock.
    /// With `bump`, the access counts as a use: reference bit, fetched flag, access time.
    pub fn read<R>(
        &self,
        key: &[u8],
        now: u32,
        bump: bool,
        f: impl FnOnce(Option<ItemRef<'_>>) -> R,
    ) -> R {
        let hash = self.hash(key);
        let floor = self.flush_floor(now);
        let mut shard = lock(&self.shards[self.shard_of(hash)]);
        let Found::Item(idx) = self.find(&mut shard, hash, key, now, floor, true) else {
            return f(None);
        };
        let r = f(Some(ItemRef::of(shard.slot(idx))));
        if bump {
            let slot = shard.slot_mut(idx);
            slot.bits |= REFERENCED | FETCHED;
            slot.last_access = now;
        }
        r
    }

    /// Finds the slot for `key`, reclaiming it on the way if it is dead.
    fn find(
        &self,
        shard: &mut Shard,
        hash: u64,
        key: &[u8],
        now: u32,
        floor: u64,
        count_miss: bool,
    ) -> Found {
        let Some(idx) = shard.find(hash, key) else {
            return Found::Absent;
        };
        let slot = shard.slot(idx);
        if !slot.is_dead(now, floor) {
            return if slot.is_tombstone() {
                Found::Tombstone(idx)
            } else {
                Found::Item(idx)
            };
        }
        if count_miss && !slot.is_tombstone() {
            if slot.version < floor {
                shard.stats.get_flushed += 1;
            } else {
                shard.stats.get_expired += 1;
            }
        }
        let hasher = |k: &[u8]| self.hash(k);
        let freed = shard.reclaim(idx, now, floor, &hasher);
        self.used.fetch_sub(freed, Ordering::AcqRel);
        // An expired item may have become a tombstone (see `Shard::reclaim`).
        match shard.find(hash, key) {
            Some(idx) => Found::Tombstone(idx),
            None => Found::Absent,
        }
    }

    /// Reclaims expired and flushed items in up to `budget` slots of every shard, one lock
    /// at a time; the background sweeper calls this often with a small budget so that no
    /// lock is held for long.
    pub fn sweep(&self, now: u32, budget: usize) -> usize {
        (0..self.shards.len())
            .map(|i| self.sweep_shard(i, now, budget))
            .sum()
    }

    /// [`Store::sweep`] for one shard (`index` wraps around the shard count), so that a
    /// frequent sweeper can do a little at a time.
    pub fn sweep_shard(&self, index: usize, now: u32, budget: usize) -> usize {
        let floor = self.flush_floor(now);
        let hasher = |k: &[u8]| self.hash(k);
        let shard = &self.shards[index % self.shards.len()];
        let mut shard = lock(shard);
        let freed = shard.sweep(budget, now, floor, &hasher);
        // Expired items that became tombstones may have overrun the tombstone budget.
        shard.collect_tombstones(u32::MAX, now, floor, &hasher);
        drop(shard);
        self.used.fetch_sub(freed, Ordering::AcqRel);
        freed
    }

    /// Bytes charged against the memory limit.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> StoreStats {
        let mut total = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            let s = &shard.stats;
            total.curr_items += s.curr_items;
            total.tombstones += s.tombstones;
            total.total_items += s.total_items;
            total.bytes += s.bytes;
            total.tombstone_bytes += s.tombstone_bytes;
            total.tombstones_collected += s.tombstones_collected;
            total.fences += shard.fences.len() as u64;
            total.forgotten_floor = total.forgotten_floor.max(shard.fences.floor());
            total.evictions += s.evictions;
            total.evicted_unfetched += s.evicted_unfetched;
            total.evicted_nonzero += s.evicted_nonzero;
            total.expired_unfetched += s.expired_unfetched;
            total.reclaimed += s.reclaimed;
            total.last_evicted_age = total.last_evicted_age.max(s.last_evicted_age);
            total.get_expired += s.get_expired;
            total.get_flushed += s.get_flushed;
        }
        total
    }

    /// Every live item as (key, value, flags, exptime, version), in no particular order. For
    /// tests and debugging: it copies the whole store.
    pub fn dump(&self, now: u32) -> Vec<DumpedItem> {
        let floor = self.flush_floor(now);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            out.extend(shard.live(now, floor).map(|s| {
                (
                    s.key().to_vec(),
                    s.value().to_vec(),
                    s.flags,
                    s.exptime,
                    Version(s.version),
                )
            }));
        }
        out
    }

    /// Every key held, item or tombstone, as (key, value or `None` for a tombstone, version),
    /// sorted by key: what two replicas must agree on. For tests; it copies the whole store.
    pub fn state(&self, now: u32) -> Vec<(Vec<u8>, Option<Vec<u8>>, Version)> {
        let floor = self.flush_floor(now);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            out.extend(shard.held(now, floor).map(|s| {
                let value = (!s.is_tombstone()).then(|| s.value().to_vec());
                (s.key().to_vec(), value, Version(s.version))
            }));
        }
        out.sort();
        out
    }

    /// Slots allocated across shards (live or free); a diagnostic.
    pub fn slot_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slot_count()).sum()
    }
}

#[cfg(test)]
mod tests;
