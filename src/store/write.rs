//! The write path shared by local and replicated mutations: placing a slot (item or
//! tombstone) for a key inside its locked shard, and making room for it.

use std::sync::atomic::Ordering;

use super::shard::{Removal, Shard, Slot, TOMBSTONE};
use super::{entry_cost, Store, StoreError, DEAD_SCAN};
use crate::clock::Version;

/// Where a key's slot is, inside one locked shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    Item(u32),
    Tombstone(u32),
    Absent,
}

/// A key's place in its locked shard, carried through one mutation.
pub(super) struct Slotted<'s, 'k> {
    pub(super) shard: &'s mut Shard,
    pub(super) shard_idx: usize,
    pub(super) hash: u64,
    pub(super) key: &'k [u8],
    pub(super) now: u32,
    pub(super) floor: u64,
    pub(super) found: Found,
}

/// The metadata of a slot being written.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotMeta {
    pub(super) version: Version,
    pub(super) exptime: u32,
    pub(super) flags: u32,
    pub(super) bits: u8,
}

impl Store {
    /// Removes the item `at` points to: with tombstones on (a cluster), it becomes a
    /// tombstone carrying `version`, so that older writes arriving later lose.
    pub(super) fn delete_at(
        &self,
        at: &mut Slotted<'_, '_>,
        version: Version,
    ) -> Result<Version, StoreError> {
        if self.cfg.tombstone_ttl == 0 {
            if let Found::Item(idx) | Found::Tombstone(idx) = at.found {
                let freed = at
                    .shard
                    .remove_slot(idx, at.hash, Removal::Explicit, at.now, at.floor);
                self.used.fetch_sub(freed, Ordering::AcqRel);
                at.found = Found::Absent;
            }
            return Ok(Version::NONE);
        }
        let gc_at = at.now.saturating_add(self.cfg.tombstone_ttl);
        let meta = SlotMeta {
            version,
            exptime: gc_at,
            flags: 0,
            bits: TOMBSTONE,
        };
        self.write_slot(at, at.key.to_vec(), meta)?;
        Ok(Version::NONE)
    }

    /// Stores `data` (key then value) with `meta` for the key `at` points to, over its
    /// current slot if any, after making room for it: an item in `-m` (evicting items if
    /// need be), a tombstone in the shard's tombstone budget (collecting its oldest
    /// tombstones if need be; it never fails).
    pub(super) fn write_slot(
        &self,
        at: &mut Slotted<'_, '_>,
        data: Vec<u8>,
        meta: SlotMeta,
    ) -> Result<(), StoreError> {
        let key_len = at.key.len();
        let tombstone = meta.bits & TOMBSTONE != 0;
        let existing = match at.found {
            Found::Item(i) | Found::Tombstone(i) => Some(i),
            Found::Absent => None,
        };
        // What is charged against `-m` before and after: only items are.
        let old_data = match at.found {
            Found::Item(i) => at.shard.slot(i).cost(),
            _ => 0,
        };
        let new_data = if tombstone {
            debug_assert_eq!(data.len(), key_len, "a tombstone holds its key only");
            0
        } else {
            entry_cost(key_len, data.len() - key_len)
        };
        if new_data > old_data {
            self.reserve(
                at.shard,
                at.shard_idx,
                new_data - old_data,
                existing,
                at.now,
                at.floor,
            )?;
        } else {
            self.used.fetch_sub(old_data - new_data, Ordering::AcqRel);
        }
        let slot = Slot {
            data: data.into_boxed_slice(),
            version: meta.version.0,
            exptime: meta.exptime,
            flags: meta.flags,
            last_access: at.now,
            // Key lengths are at most 250 (crate::key), so they fit in a u8.
            key_len: key_len as u8,
            bits: meta.bits,
            // Set by the shard where the slot is placed.
            bucket: 0,
        };
        let hasher = |k: &[u8]| self.hash(k);
        let idx = match existing {
            Some(idx) => {
                at.shard.replace(idx, slot);
                idx
            }
            None => at.shard.insert(at.hash, slot, &hasher),
        };
        if tombstone {
            at.found = Found::Tombstone(idx);
            at.shard.collect_tombstones(idx, at.now, at.floor, &hasher);
        } else {
            at.found = Found::Item(idx);
        }
        Ok(())
    }

    /// A newer version of the key `at` points to arrived and this node cannot hold it (too
    /// large for its `-I`, or no memory with `-M`): whatever older it holds goes, and the
    /// key is fenced at the newer version, so that this node never serves, nor later takes,
    /// a version older than one its peers hold (absence is allowed, regression is not).
    pub(super) fn forget_unholdable(&self, at: &mut Slotted<'_, '_>, version: Version) {
        if let Found::Item(idx) | Found::Tombstone(idx) = at.found {
            let freed = at
                .shard
                .remove_slot(idx, at.hash, Removal::Superseded, at.now, at.floor);
            self.used.fetch_sub(freed, Ordering::AcqRel);
            at.found = Found::Absent;
        }
        at.shard.fences.forget(at.hash, version.0);
    }

    /// Makes room for `need` more bytes, evicting if allowed.
    pub(super) fn reserve(
        &self,
        shard: &mut Shard,
        shard_idx: usize,
        need: usize,
        keep: Option<u32>,
        now: u32,
        floor: u64,
    ) -> Result<(), StoreError> {
        let hasher = |k: &[u8]| self.hash(k);
        loop {
            let used = self.used.load(Ordering::Acquire);
            if used + need <= self.cfg.mem_limit {
                if self
                    .used
                    .compare_exchange_weak(used, used + need, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            // Dead items go first, in both modes: they are not data.
            let freed = shard.sweep(DEAD_SCAN, now, floor, &hasher);
            if freed > 0 {
                self.used.fetch_sub(freed, Ordering::AcqRel);
                continue;
            }
            if !self.cfg.evict {
                return Err(StoreError::OutOfMemory);
            }
            if let Some(freed) = shard.evict_one(keep, now, floor, &hasher) {
                self.used.fetch_sub(freed, Ordering::AcqRel);
                continue;
            }
            // This shard has nothing left to give; ask the others without blocking on them
            // (blocking could deadlock against a writer doing the same the other way round).
            let mut freed_any = false;
            for (i, other) in self.shards.iter().enumerate() {
                if i == shard_idx {
                    continue;
                }
                if let Ok(mut other) = other.try_lock() {
                    if let Some(freed) = other.evict_one(None, now, floor, &hasher) {
                        self.used.fetch_sub(freed, Ordering::AcqRel);
                        freed_any = true;
                        break;
                    }
                }
            }
            if !freed_any {
                return Err(StoreError::OutOfMemory);
            }
        }
    }
}
