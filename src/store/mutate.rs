//! Local writes: every client command that changes the store runs as a closure under the
//! key's shard lock ([`Store::mutate`]), and what it decides is applied here, with a fresh
//! version from the hybrid logical clock for each change.

use super::write::{Found, SlotMeta, Slotted};
use super::{lock, ItemRef, Mutation, NewValue, Store, StoreError};
use super::{FETCHED, REFERENCED, STALE, WIN_SENT};
use crate::clock::{Hlc, Version};

impl Store {
    /// Runs `f` on the current item under the shard lock and applies what it decides.
    /// Returns `f`'s result and the version of the key's resulting item
    /// ([`Version::NONE`] when there is none).
    pub fn mutate<'v, R>(
        &self,
        key: &[u8],
        now: u32,
        hlc: &Hlc,
        f: impl FnOnce(Option<ItemRef<'_>>) -> (Mutation<'v>, R),
    ) -> Result<(R, Version), StoreError> {
        self.mutate_with(key, now, hlc, false, |cur| {
            let (m, r) = f(cur);
            (m, r, false)
        })
    }

    /// [`Store::mutate`] for a read that may also write (meta `mg`: touch, auto-vivify,
    /// recache tokens): a dead item found counts as a get miss, as with [`Store::read`], and
    /// when `f` says so (its third result) the resulting item is marked accessed.
    pub fn fetch_mutate<'v, R>(
        &self,
        key: &[u8],
        now: u32,
        hlc: &Hlc,
        f: impl FnOnce(Option<ItemRef<'_>>) -> (Mutation<'v>, R, bool),
    ) -> Result<(R, Version), StoreError> {
        self.mutate_with(key, now, hlc, true, f)
    }

    fn mutate_with<'v, R>(
        &self,
        key: &[u8],
        now: u32,
        hlc: &Hlc,
        count_miss: bool,
        f: impl FnOnce(Option<ItemRef<'_>>) -> (Mutation<'v>, R, bool),
    ) -> Result<(R, Version), StoreError> {
        let hash = self.hash(key);
        let floor = self.flush_floor(now);
        let shard_idx = self.shard_of(hash);
        let mut shard = lock(&self.shards[shard_idx]);
        let found = self.find(&mut shard, hash, key, now, floor, count_miss);
        let current = match found {
            Found::Item(i) => Some(i),
            _ => None,
        };
        let mut at = Slotted {
            shard: &mut shard,
            shard_idx,
            hash,
            key,
            now,
            floor,
            found,
        };
        let (mutation, r, access) = f(current.map(|i| ItemRef::of(at.shard.slot(i))));
        let version = match mutation {
            Mutation::Keep => current.map_or(Version::NONE, |i| Version(at.shard.slot(i).version)),
            Mutation::Delete | Mutation::DeleteMissing if current.is_some() => {
                let v = self.delete_at(&mut at, hlc.tick())?;
                self.journal(&at);
                v
            }
            // A key not held here, and no tombstone for it either: with tombstones on, record
            // (and journal) the delete, best effort: a node short of memory answers the
            // client as if there were nothing to delete.
            Mutation::DeleteMissing
                if self.cfg.tombstone_ttl > 0 && matches!(at.found, Found::Absent) =>
            {
                if self.delete_at(&mut at, hlc.tick()).is_ok() {
                    self.journal(&at);
                }
                Version::NONE
            }
            Mutation::Delete | Mutation::DeleteMissing => Version::NONE,
            Mutation::Update {
                exptime,
                set_bits,
                clear_bits,
                bump,
                version,
            } => {
                let Some(idx) = current else {
                    return Ok((r, Version::NONE));
                };
                let new_version = if bump {
                    version.unwrap_or_else(|| hlc.tick())
                } else {
                    Version::NONE
                };
                if exptime.is_some_and(|e| e != 0 && e <= now) {
                    let v = if bump { new_version } else { hlc.tick() };
                    self.delete_at(&mut at, v)?;
                    self.journal(&at);
                    return Ok((r, Version::NONE));
                }
                if bump {
                    at.shard.set_version(idx, new_version.0);
                }
                let slot = at.shard.slot_mut(idx);
                if let Some(e) = exptime {
                    slot.exptime = e;
                }
                slot.bits = (slot.bits | set_bits) & !clear_bits;
                let v = Version(slot.version);
                if bump {
                    self.journal(&at);
                }
                v
            }
            Mutation::Put(put) => {
                let old_value = current.map_or(&[][..], |i| at.shard.slot(i).value());
                let parts: [&[u8]; 2] = match &put.value {
                    NewValue::Bytes(v) => [v, &[]],
                    NewValue::Owned(v) => [v, &[]],
                    NewValue::Append(v) => [old_value, v],
                    NewValue::Prepend(v) => [v, old_value],
                };
                let value_len = parts[0].len() + parts[1].len();
                if self.too_large(key.len(), value_len, put.flags) {
                    return Err(StoreError::TooLarge);
                }
                if put.exptime != 0 && put.exptime <= now {
                    // Stored and immediately expired: the observable effect is that the key
                    // is gone, but the write happened and has its version (memcached reports
                    // its CAS).
                    let v = put.version.unwrap_or_else(|| hlc.tick());
                    if current.is_some() {
                        self.delete_at(&mut at, v)?;
                        self.journal(&at);
                    }
                    return Ok((r, v));
                }
                let mut data = Vec::with_capacity(key.len() + value_len);
                data.extend_from_slice(key);
                data.extend_from_slice(parts[0]);
                data.extend_from_slice(parts[1]);
                let version = put.version.unwrap_or_else(|| hlc.tick());
                let meta = SlotMeta {
                    version,
                    exptime: put.exptime,
                    flags: put.flags,
                    bits: put.bits & (STALE | WIN_SENT),
                };
                self.write_slot(&mut at, data, meta)?;
                self.journal(&at);
                version
            }
        };
        if access {
            if let Found::Item(idx) = at.found {
                let slot = at.shard.slot_mut(idx);
                slot.bits |= REFERENCED | FETCHED;
                slot.last_access = now;
            }
        }
        Ok((r, version))
    }
}
