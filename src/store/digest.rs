//! Per-bucket digests of what the store holds, for anti-entropy (DESIGN.md sections 3 and
//! 6; Riak's TicTac AAE): the key space is cut into [`BUCKETS`] buckets by a hash of the
//! key that is the same on every node, and each bucket's digest is the XOR of
//! [`entry_hash`]`(key, version)` over every entry held in it, items and tombstones alike.
//!
//! Why XOR: adding and removing an entry are the same O(1) operation, so every change
//! (a write, a delete, a merge, an expiry, an eviction, a collected tombstone, a flush's
//! reclaim, a snapshot or state file loaded) updates the digest where the shard changes
//! its slots ([`super::shard`]), under the shard lock already held, with one atomic XOR;
//! nothing is ever recomputed. Two nodes holding the same versions of the same keys in a
//! bucket have equal digests whatever the order in which they got them.
//!
//! An item and a tombstone of the same version hash alike: they are the same write (an
//! expired item reclaimed into a tombstone of its version changes nothing here), and the
//! comparison is about versions, not values (a version is unique cluster-wide).
//!
//! The store's own key hash is seeded per process (so that clients cannot aim keys at one
//! shard), so it cannot be compared across nodes: the bucket and entry hashes use a fixed
//! function of their own (FNV-1a, finished by SplitMix64's mixer), part of the wire
//! protocol. Buckets are global (a key's bucket does not depend on its shard), so shards
//! updating one bucket at once do it with an atomic XOR.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Version;

/// Buckets in a digest: a digest travels as 8 KiB, and a bucket of a million-item store
/// holds about a thousand keys, so one differing key costs a list of about that many.
pub const BUCKETS: usize = 1024;

/// A key's hash as every node computes it (not the store's per-process one).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The bucket of a key with this [`key_hash`].
pub fn bucket_of(key_hash: u64) -> usize {
    (key_hash >> 54) as usize % BUCKETS
}

/// What one entry adds to (or, XORed again, removes from) its bucket's digest.
pub fn entry_hash(key_hash: u64, version: Version) -> u64 {
    mix(key_hash ^ version.0.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The digests of every bucket, shared by the shards.
pub(super) struct Digests {
    buckets: Box<[AtomicU64]>,
}

impl Digests {
    pub fn new() -> Digests {
        Digests {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds or removes (the same thing) the entry `key` at `version`; returns the key's
    /// bucket (which the slot keeps: the key is hashed once per placement).
    pub fn toggle(&self, key: &[u8], version: u64) -> u16 {
        let h = key_hash(key);
        let bucket = bucket_of(h);
        self.buckets[bucket].fetch_xor(entry_hash(h, Version(version)), Ordering::Relaxed);
        // BUCKETS is 1024: a bucket fits in a u16.
        bucket as u16
    }

    /// The entry `key` changed from `old` to `new` in place.
    pub fn change(&self, key: &[u8], old: u64, new: u64) {
        if old == new {
            return;
        }
        let h = key_hash(key);
        let delta = entry_hash(h, Version(old)) ^ entry_hash(h, Version(new));
        self.buckets[bucket_of(h)].fetch_xor(delta, Ordering::Relaxed);
    }

    pub fn values(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggling_twice_removes_and_order_does_not_matter() {
        let d = Digests::new();
        d.toggle(b"a", 5);
        d.toggle(b"b", 7);
        let e = Digests::new();
        e.toggle(b"b", 7);
        e.toggle(b"a", 4);
        e.change(b"a", 4, 5);
        assert_eq!(d.values(), e.values());
        d.toggle(b"a", 5);
        d.toggle(b"b", 7);
        assert!(d.values().iter().all(|&v| v == 0));
    }

    #[test]
    fn the_key_hash_is_fixed_across_processes() {
        // Part of the wire protocol: two nodes (and two releases) must bucket keys alike.
        assert_eq!(key_hash(b"key"), 0x487e_b6f7_e0ea_7e7c);
        assert_eq!(bucket_of(key_hash(b"key")), 289);
    }
}
