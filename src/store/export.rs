//! Walking the whole store in bounded pieces, for snapshots sent to peers and for the
//! state file, and emptying it for a node that must resync from scratch.
//!
//! A walk holds one shard lock at a time, for a bounded number of bytes copied, so a
//! snapshot of millions of items never stalls the clients of the node taking it. It is
//! not a point-in-time image: writes made during the walk may or may not be in it. The
//! callers make up for that (the replication log carries every write made after the walk
//! started, and last-writer-wins makes the overlap harmless).

use std::sync::atomic::Ordering;

use super::shard::Removal;
use super::{lock, Store};
use crate::clock::Version;

/// One entry held by the store, as exported: an item, or a tombstone (`value: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub flags: u32,
    /// Absolute unix seconds (0 = never); for a tombstone, 0.
    pub exptime: u32,
    pub version: Version,
}

/// Where a walk stands: the shard, and the slot within it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCursor {
    shard: usize,
    slot: usize,
}

impl Store {
    /// Hands `f` the entries held (items and tombstones not yet dead) from `cursor` on,
    /// within one shard and up to about `max_bytes` of keys and values, under that shard's
    /// lock. Returns where to go on from, or `None` once every shard has been walked.
    pub fn export(
        &self,
        cursor: ExportCursor,
        now: u32,
        max_bytes: usize,
        mut f: impl FnMut(Exported<'_>),
    ) -> Option<ExportCursor> {
        let floor = self.flush_floor(now);
        let shard = lock(self.shards.get(cursor.shard)?);
        let mut bytes = 0;
        let mut slot = cursor.slot;
        while let Some(s) = shard.slot_at(slot) {
            slot += 1;
            if s.is_free() || s.is_dead(now, floor) {
                continue;
            }
            let tombstone = s.is_tombstone();
            f(Exported {
                key: s.key(),
                value: (!tombstone).then(|| s.value()),
                flags: s.flags,
                exptime: if tombstone { 0 } else { s.exptime },
                version: Version(s.version),
            });
            bytes += s.data.len();
            if bytes >= max_bytes {
                return Some(ExportCursor {
                    shard: cursor.shard,
                    slot,
                });
            }
        }
        (cursor.shard + 1 < self.shards.len()).then_some(ExportCursor {
            shard: cursor.shard + 1,
            slot: 0,
        })
    }

    /// The highest version any shard has forgotten (its floor or an exact fence), for the
    /// state file: a later run of this node must still refuse writes at or below it for
    /// keys it holds nothing for. Exact fences cannot be saved (key hashes are seeded per
    /// process), so they are folded into one floor; that refuses more after a restart
    /// (absence, allowed) rather than take back an older version (regression, never).
    pub fn forgotten_floor(&self) -> Version {
        let highest = self.shards.iter().map(|s| lock(s).fences.highest());
        Version(highest.max().unwrap_or(0))
    }

    /// Raises every shard's forgotten floor to at least `floor` (from a state file).
    pub fn raise_forgotten_floor(&self, floor: Version) {
        for shard in self.shards.iter() {
            lock(shard).fences.raise_floor(floor.0);
        }
    }

    /// Removes every live item for which `drop(key hash, version)` holds, one shard lock at
    /// a time; tombstones stay. Reconciliation uses it for the keys a peer's full snapshot
    /// shows are gone there (DESIGN.md section 6). Nothing is replicated: each node
    /// reconciles for itself. Returns how many items were removed.
    pub fn forget_where(&self, now: u32, mut drop: impl FnMut(u64, Version) -> bool) -> u64 {
        let mut removed = 0;
        let floor = self.flush_floor(now);
        for (i, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            let mut idx = 0;
            while let Some(s) = shard.slot_at(idx) {
                idx += 1;
                if s.is_free() || s.is_tombstone() || s.is_dead(now, floor) {
                    continue;
                }
                let hash = self.hash(s.key());
                debug_assert_eq!(self.shard_of(hash), i);
                if drop(hash, Version(s.version)) {
                    let freed =
                        shard.remove_slot(idx as u32 - 1, hash, Removal::Reconciled, now, floor);
                    self.used.fetch_sub(freed, Ordering::AcqRel);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Drops every item and tombstone, one shard at a time; returns how many there were.
    /// For a node whose contents are too stale to keep (DESIGN.md section 2, tombstones).
    pub fn clear(&self) -> u64 {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            dropped += shard.stats.curr_items + shard.stats.tombstones;
            let freed = shard.clear();
            self.used.fetch_sub(freed, Ordering::AcqRel);
        }
        dropped
    }

    /// Makes room for about `entries` more items up front (a snapshot about to arrive), so
    /// that the tables do not grow step by step under it; bounded by what `-m` could hold.
    pub fn reserve_entries(&self, entries: u64) {
        let fit = self.cfg.mem_limit / (super::ENTRY_OVERHEAD + 16);
        let entries = (entries as usize).min(fit);
        let per_shard = entries / self.shards.len() + 1;
        let hasher = |k: &[u8]| self.hash(k);
        for shard in self.shards.iter() {
            lock(shard).reserve(per_shard, &hasher);
        }
    }

    /// How many items and tombstones are held (dead ones not yet reclaimed included).
    pub fn len(&self) -> u64 {
        let s = self.stats();
        s.curr_items + s.tombstones
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, Hlc, ManualClock, NodeId, HLC_EPOCH_MS};
    use crate::store::{Mutation, NewValue, Put, StoreConfig};

    #[test]
    fn export_walks_every_held_entry_in_bounded_pieces_and_clear_empties() {
        let clock = Arc::new(ManualClock::new(HLC_EPOCH_MS + 1_000_000_000));
        let hlc = Hlc::new(NodeId::new(3).unwrap(), clock.clone());
        let store = Store::new(StoreConfig {
            shards: 8,
            tombstone_ttl: 600,
            ..StoreConfig::default()
        });
        let now = clock.now_secs();
        for i in 0..500u32 {
            let key = format!("key{i}");
            let exptime = if i % 50 == 0 { now - 1 } else { 0 };
            store
                .mutate(key.as_bytes(), now, &hlc, |_| {
                    let put = Put {
                        value: NewValue::Owned(vec![b'v'; i as usize % 40]),
                        flags: i,
                        exptime,
                        bits: 0,
                        version: None,
                    };
                    (Mutation::Put(put), ())
                })
                .unwrap();
        }
        for i in (1..500u32).step_by(7) {
            let key = format!("key{i}");
            store
                .mutate(key.as_bytes(), now, &hlc, |_| (Mutation::DeleteMissing, ()))
                .unwrap();
        }
        let mut walked = Vec::new();
        let mut cursor = Some(ExportCursor::default());
        let mut pieces = 0;
        while let Some(c) = cursor {
            let before = walked.len();
            cursor = store.export(c, now, 100, |e| {
                walked.push((e.key.to_vec(), e.value.map(<[u8]>::to_vec), e.version));
            });
            assert!(walked.len() - before <= 100 / 3 + 1, "bounded pieces");
            pieces += 1;
        }
        assert!(pieces > 8, "more pieces than shards: {pieces}");
        walked.sort();
        assert_eq!(walked, store.state(now), "every item and tombstone, once");
        assert!(walked.iter().any(|(_, v, _)| v.is_none()));

        // The expired writes stored nothing, so the walk saw everything held.
        assert_eq!(store.clear(), walked.len() as u64);
        assert!(store.is_empty());
        assert_eq!(store.used_bytes(), 0);
        assert!(store.state(now).is_empty());
    }
}
