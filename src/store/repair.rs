//! What anti-entropy asks of the store (DESIGN.md section 6): the bucket digests, the
//! entries of some buckets as `(key, version)` lists, whether a peer's version of a key is
//! one this node would take, and one key's entry to push to a peer.
//!
//! The decision of what to repair is the replica core's (`cluster::core::entropy`); the
//! store only answers with what it holds, under one shard lock at a time.

use super::digest::BUCKETS;
use super::write::Found;
use super::{lock, Exported, Store};
use crate::clock::Version;

impl Store {
    /// Every bucket's digest (see [`super::digest`]). Not a point-in-time image across
    /// buckets: each is read atomically, writes may land between them.
    pub fn digest(&self) -> Vec<u64> {
        self.digests.values()
    }

    /// The digests recomputed from every entry held: what [`Store::digest`] must equal
    /// whatever happened to the store (a test's oracle; it walks the whole store). It
    /// also checks that every slot keeps its key's bucket, which listing relies on.
    pub fn digest_from_scratch(&self) -> Vec<u64> {
        let fresh = super::digest::Digests::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for idx in 0..shard.slot_count() {
                let s = shard.slot_at(idx).expect("within slot_count");
                if !s.is_free() {
                    let bucket = fresh.toggle(s.key(), s.version);
                    assert_eq!(s.bucket, bucket, "a slot's bucket is its key's");
                }
            }
        }
        fresh.values()
    }

    /// Hands `f` the bucket, key and version of every entry held in the buckets `wanted`
    /// marks (indexed by bucket; items and tombstones, dead ones not yet reclaimed
    /// included: exactly what the digests cover), one shard lock at a time, until `f`
    /// returns false.
    ///
    /// The buckets do not follow the shards (a shard is picked by the per-process key
    /// hash), so this walks every slot; each keeps its bucket, so the walk reads 40 bytes
    /// a slot and hashes nothing, and only the keys listed are handed on.
    pub fn list_buckets(
        &self,
        wanted: &[bool; BUCKETS],
        mut f: impl FnMut(usize, &[u8], Version) -> bool,
    ) {
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for idx in 0..shard.slot_count() {
                let s = shard.slot_at(idx).expect("within slot_count");
                let bucket = usize::from(s.bucket);
                if s.is_free() || !wanted[bucket] {
                    continue;
                }
                if !f(bucket, s.key(), Version(s.version)) {
                    return;
                }
            }
        }
    }

    /// Whether a peer's `version` of `key` would change this node if it arrived: newer
    /// than what is held for the key, not covered by a flush, and, for a key held nothing
    /// for, above what this node forgot of it. The merge's own rule ([`Store::apply`]),
    /// asked before the value travels: a key this node evicted (or whose tombstone it
    /// collected) is not asked for again, so repair never refills a small node.
    pub fn would_take(&self, key: &[u8], version: Version, now: u32) -> bool {
        if key.is_empty() || key.len() > crate::key::MAX_KEY_LEN {
            return false;
        }
        let hash = self.hash(key);
        let floor = self.flush_floor(now);
        let mut shard = lock(&self.shards[self.shard_of(hash)]);
        let held = match self.find(&mut shard, hash, key, now, floor, false) {
            Found::Item(i) | Found::Tombstone(i) => shard.slot(i).version,
            Found::Absent => return version.0 >= floor && version.0 > shard.fences.fence(hash),
        };
        version.0 > held && version.0 >= floor
    }

    /// Hands `f` what this node holds for `key` (an item or a tombstone, not dead), with
    /// its version: what a peer that lacks it gets pushed.
    pub fn entry<R>(&self, key: &[u8], now: u32, f: impl FnOnce(Exported<'_>) -> R) -> Option<R> {
        let hash = self.hash(key);
        let floor = self.flush_floor(now);
        let mut shard = lock(&self.shards[self.shard_of(hash)]);
        let idx = match self.find(&mut shard, hash, key, now, floor, false) {
            Found::Item(i) | Found::Tombstone(i) => i,
            Found::Absent => return None,
        };
        let s = shard.slot(idx);
        let tombstone = s.is_tombstone();
        Some(f(Exported {
            key: s.key(),
            value: (!tombstone).then(|| s.value()),
            flags: s.flags,
            exptime: if tombstone { 0 } else { s.exptime },
            version: Version(s.version),
        }))
    }
}
