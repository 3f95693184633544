//! The operations layer: memcached's rules for every change a client makes to an item,
//! written once for all three dialects.
//!
//! Text, binary and meta requests change items only through these functions. A dialect's
//! dispatcher translates its decoded command into an operation (a plain struct; the meta
//! extras such as `I`, `N`, `x` or `E` are options of it), runs it, and turns the result
//! into its own answer. The rules themselves live here and nowhere else: what a CAS means
//! in each storage mode, what a failed store removes, what a delete of a key this node does
//! not hold leaves behind in a cluster, how a counter is rewritten, which version a touch
//! gives, what is counted in `stats`. Two engines, one per dialect, drifted apart before
//! (a touch's CAS was right in meta and stale in text and binary; DESIGN.md section 2).
//!
//! Where memcached's own dialects differ, the difference is an option the dispatcher sets,
//! named for what it does (`drop_on_failure`, `stale_ok`), never a second copy of a rule.
//! The model is memcached 1.6's `do_store_item` and `do_add_delta`, which every dialect of
//! memcached shares too.
//!
//! Each operation is one closure under the key's shard lock ([`crate::store::Store::mutate`]),
//! and any version it needs is taken inside it. They are plain functions over plain structs:
//! nothing is boxed or dispatched dynamically on the request path.

mod arith;
mod delete;
mod store;
mod touch;

#[cfg(test)]
mod tests;

pub use arith::{arith, ArithOp, Counted};
pub use delete::{delete, DeleteOp};
pub use store::{refuse_too_large, store, StoreOp};
pub use touch::{get_and_touch, in_place_version, new_version, touch, touch_mutation, vivify};

use crate::clock::Version;
use crate::store::ItemRef;

use super::stats::{Counter, LocalCounters};
use super::Shared;

/// memcached's REALTIME_MAXDELTA: expiry times up to 30 days are relative.
const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;

/// Everything a command needs: the shared server state, the time of this batch of requests
/// and the connection's counters.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// Unix seconds.
    pub now: u32,
    pub counters: &'a mut LocalCounters,
}

impl Ctx<'_> {
    /// memcached's `realtime()`: 0 is never; negative is already expired; up to 30 days is
    /// relative to now; anything larger is an absolute unix time.
    pub fn expiry(&self, exptime: i64) -> u32 {
        match exptime {
            0 => 0,
            e if e < 0 => 1,
            e if e > RELATIVE_MAX => u32::try_from(e).unwrap_or(u32::MAX),
            e => self.now.saturating_add(e as u32),
        }
    }

    pub fn bump(&mut self, c: Counter) {
        self.counters.bump(c);
    }

    /// The CAS clients see for a version: none with `-C` (memcached's items have no CAS
    /// then), although the version is still kept for replication.
    pub fn shown(&self, v: Version) -> Version {
        if self.shared.config.cas_enabled {
            v
        } else {
            Version::NONE
        }
    }

    /// The item as clients may see it: with `-C` its CAS reads as 0.
    pub fn visible<'i>(&self, item: ItemRef<'i>) -> ItemRef<'i> {
        ItemRef {
            version: self.shown(item.version),
            ..item
        }
    }

    /// The CAS a request carries once memcached has put it on the item it builds: none
    /// with `-C` (`ITEM_set_cas` does nothing then), so no CAS condition can be asked for.
    pub fn held_cas(&self, cas: u64) -> u64 {
        if self.shared.config.cas_enabled {
            cas
        } else {
            0
        }
    }
}

/// memcached removes the old value when a store fails (too large, or no memory) rather
/// than let a stale value survive a write the client made.
fn drop_item(ctx: &Ctx<'_>, key: &[u8]) {
    let shared = ctx.shared;
    let _ = shared.store.mutate(key, ctx.now, &shared.hlc, |_| {
        (crate::store::Mutation::Delete, ())
    });
}
