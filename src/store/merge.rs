//! Last-writer-wins merge of mutations received from peers (DESIGN.md sections 1-2).

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
    /// Older than what is held.
    Behind,
    /// The very write already held.
    Identical,
    /// Refused: an empty or over-long key, which no client could have written.
    BadKey,
}

impl Store {
    /// Applies a replicated mutation by last-writer-wins: it takes effect iff its version is
    /// newer than what is held for the key (item, tombstone, or a flush covering it). Equal
    /// versions are the same write. Hence order, duplication and redelivery do not matter.
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
        let mut at = Slotted {
            shard: &mut shard,
            shard_idx,
            hash,
            key,
            now,
            floor,
            found,
        };
        match *m {
            Remote::Put {
                value,
                flags,
                exptime,
                version,
            } => {
                if self.too_large(key.len(), value.len(), flags) {
                    return Err(StoreError::TooLarge);
                }
                if exptime != 0 && exptime <= now {
                    self.delete_at(&mut at, version)?;
                } else {
                    let mut data = Vec::with_capacity(key.len() + value.len());
                    data.extend_from_slice(key);
                    data.extend_from_slice(value);
                    self.write_slot(
                        &mut at,
                        data,
                        SlotMeta {
                            version,
                            exptime,
                            flags,
                            bits: 0,
                        },
                    )?;
                }
            }
            Remote::Delete { version } => {
                self.delete_at(&mut at, version)?;
            }
        }
        Ok(Applied::Accepted)
    }
}
