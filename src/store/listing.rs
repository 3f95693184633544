//! Listing live items' metadata in bounded pieces, for `lru_crawler metadump` and
//! `stats cachedump` (what `memcdump` and the tools built on it read).
//!
//! Like [`Store::export`], a listing holds one shard lock at a time for a bounded number of
//! items, so listing millions of keys never stalls other clients; it is not a point-in-time
//! image (memcached's crawler is not either). Tombstones and expired or flushed items are
//! not listed.

use super::shard::FETCHED;
use super::{lock, Store};
use crate::clock::Version;

/// One live item, as the dump commands describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemMeta<'a> {
    pub key: &'a [u8],
    /// Absolute unix seconds; 0 = never expires.
    pub exptime: u32,
    /// Unix seconds of the last access (or the write).
    pub last_access: u32,
    pub version: Version,
    /// Whether a client has read it since it was written.
    pub fetched: bool,
    pub flags: u32,
    pub value_len: usize,
    /// What the item is charged against `-m`.
    pub size: usize,
}

/// Where a listing stands, as one number so that a request can carry it across writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListCursor {
    shard: u32,
    slot: u32,
}

impl ListCursor {
    pub fn to_u64(self) -> u64 {
        u64::from(self.shard) << 32 | u64::from(self.slot)
    }

    pub fn from_u64(n: u64) -> ListCursor {
        ListCursor {
            shard: (n >> 32) as u32,
            slot: n as u32,
        }
    }
}

impl Store {
    /// Hands `f` the live items from `cursor` on, within one shard and at most `max_items`
    /// of them, under that shard's lock. Returns where to go on from, or `None` once every
    /// shard has been listed.
    pub fn list_items(
        &self,
        cursor: ListCursor,
        now: u32,
        max_items: usize,
        mut f: impl FnMut(ItemMeta<'_>),
    ) -> Option<ListCursor> {
        let floor = self.flush_floor(now);
        let shard = lock(self.shards.get(cursor.shard as usize)?);
        let mut slot = cursor.slot as usize;
        let mut listed = 0;
        while let Some(s) = shard.slot_at(slot) {
            slot += 1;
            if s.is_free() || s.is_tombstone() || s.is_dead(now, floor) {
                continue;
            }
            f(ItemMeta {
                key: s.key(),
                exptime: s.exptime,
                last_access: s.last_access,
                version: Version(s.version),
                fetched: s.bits & FETCHED != 0,
                flags: s.flags,
                value_len: s.value().len(),
                size: s.cost(),
            });
            listed += 1;
            if listed >= max_items {
                return Some(ListCursor {
                    shard: cursor.shard,
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                });
            }
        }
        (cursor.shard as usize + 1 < self.shards.len()).then_some(ListCursor {
            shard: cursor.shard + 1,
            slot: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Hlc, ManualClock, NodeId, HLC_EPOCH_MS};
    use crate::store::{Mutation, NewValue, Put, StoreConfig};

    /// Lists everything by repeated calls of `max_items` each, the cursor going through
    /// its number form as a request carries it.
    fn list_all(store: &Store, now: u32, max_items: usize) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut cursor = Some(ListCursor::default());
        while let Some(c) = cursor {
            let c = ListCursor::from_u64(c.to_u64());
            cursor = store.list_items(c, now, max_items, |m| {
                out.push((m.key.to_vec(), m.fetched));
            });
        }
        out.sort();
        out
    }

    #[test]
    fn every_live_item_is_listed_once_however_the_listing_is_cut() {
        let start_ms = HLC_EPOCH_MS + 1_000_000_000;
        let now = (start_ms / 1000) as u32;
        let hlc = Hlc::new(
            NodeId::default(),
            std::sync::Arc::new(ManualClock::new(start_ms)),
        );
        let store = Store::new(StoreConfig {
            shards: 4,
            ..StoreConfig::default()
        });
        let mut want = Vec::new();
        for i in 0..500u32 {
            let key = format!("key{i}").into_bytes();
            // Every tenth item has already expired: it is not listed.
            let exptime = if i % 10 == 0 { now - 1 } else { 0 };
            store
                .mutate(&key, now, &hlc, |_| {
                    let put = Put {
                        value: NewValue::Bytes(b"v"),
                        flags: 0,
                        exptime,
                        bits: 0,
                        version: None,
                    };
                    (Mutation::Put(put), ())
                })
                .expect("set");
            if i % 10 != 0 {
                want.push((key, i == 1));
            }
        }
        assert!(store.read(b"key1", now, true, |i| i.is_some()));
        want.sort();
        for max in [1, 7, 10_000] {
            assert_eq!(list_all(&store, now, max), want, "max_items {max}");
        }
    }
}
