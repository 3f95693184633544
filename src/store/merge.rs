//! Last-writer-wins merge of mutations received from peers (DESIGN.md sections 1-2).
//!
//! A remote mutation is applied iff its version is above the key's fence: the version held
//! for it (item or tombstone), the flush barrier, and, for a key held nothing for, what the
//! shard forgot of it ([`super::fence`]).

use super::write::{Found, SlotMeta, Slotted};
use super::{lock, Store, StoreError};
use crate::clock::Version;

/// A mutation received from a peer, already stamped with its origin's version.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'a> {
    Put {
        value: &'a [u8],
        flags: u32,
        exptime: u32,
        version: Version,
    },
    Delete {
        version: Version,
    },
}

impl Remote<'_> {
    pub fn version(&self) -> Version {
        match *self {
            Remote::Put { version, .. } | Remote::Delete { version } => version,
        }
    }
}

/// What [`Store::apply`] did, counted as Couchbase does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// Older than what is held, or than a flush.
    Behind,
    /// The key is held nothing for, and the write is no newer than what this node forgot of
    /// it (an expired or evicted item, a collected tombstone): refused, so that it never
    /// holds an older version than its peers (`repl_refused_forgotten`).
    Forgotten,
    /// The very write already held.
    Identical,
    /// Refused: an empty or over-long key, which no client could have written.
    BadKey,
}

impl Store {
    /// Applies a replicated mutation by last-writer-wins: it takes effect iff its version is
    /// newer than the key's fence (what is held for it, a flush covering it, or what was
    /// forgotten of it). Equal versions are the same write. Hence order, duplication and
    /// redelivery do not matter. A newer version this node cannot hold is an error, and the
    /// key is then held nothing for and fenced at that version.
    pub fn apply(&self, key: &[u8], m: &Remote<'_>, now: u32) -> Result<Applied, StoreError> {
        // Keys from peers have not been through the protocol layer: a slot with an empty
        // key would look free, and lengths must fit the slot's u8.
        if key.is_empty() || key.len() > crate::key::MAX_KEY_LEN {
            return Ok(Applied::BadKey);
        }
        let hash = self.hash(key);
        let floor = self.flush_floor(now);
        let shard_idx = self.shard_of(hash);
        let mut shard = lock(&self.shards[shard_idx]);
        let found = self.find(&mut shard, hash, key, now, floor, false);
        let held = match found {
            Found::Item(i) | Found::Tombstone(i) => shard.slot(i).version,
            Found::Absent => 0,
        };
        let version = m.version();
        if version.0 == held {
            return Ok(Applied::Identical);
        }
        if version.0 < held.max(floor) {
            return Ok(Applied::Behind);
        }
        if found == Found::Absent && version.0 <= shard.fences.fence(hash) {
            return Ok(Applied::Forgotten);
        }
        let mut at = Slotted {
            shard: &mut shard,
            shard_idx,
            hash,
            key,
            now,
            floor,
            found,
        };
        let applied = match *m {
            Remote::Put {
                value,
                flags,
                exptime,
                version,
            } => {
                if self.too_large(key.len(), value.len(), flags) {
                    Err(StoreError::TooLarge)
                } else if exptime != 0 && exptime <= now {
                    self.delete_at(&mut at, version).map(drop)
                } else {
                    let mut data = Vec::with_capacity(key.len() + value.len());
                    data.extend_from_slice(key);
                    data.extend_from_slice(value);
                    let meta = SlotMeta {
                        version,
                        exptime,
                        flags,
                        bits: 0,
                    };
                    self.write_slot(&mut at, data, meta)
                }
            }
            Remote::Delete { version } => self.delete_at(&mut at, version).map(drop),
        };
        if let Err(e) = applied {
            self.forget_unholdable(&mut at, version);
            return Err(e);
        }
        Ok(Applied::Accepted)
    }
}
