//! Storage: set, add, replace, append, prepend and cas, for every dialect.
//!
//! The decision follows memcached 1.6's `do_store_item`, which its three dialects share:
//! the request's CAS is compared with the item's once, up front, and each mode reads that
//! comparison its own way. Dialects differ only in how they fill a [`StoreOp`] (which mode
//! a CAS turns a command into, whether a failure drops the old item).

use crate::clock::Version;
use crate::protocol::{Outcome, StoreMode};
use crate::store::{ItemRef, Mutation, NewValue, Put, StoreError, STALE, WIN_SENT};

use super::{drop_item, Counter, Ctx};

/// One storage request, in memcached's terms.
#[derive(Debug, Clone, Copy)]
pub struct StoreOp<'v> {
    /// What an existing (or missing) item allows. A dialect whose CAS makes the command
    /// conditional (text `cas`, binary set/add/replace with a CAS, meta set/replace with
    /// `C`) passes [`StoreMode::Cas`].
    pub mode: StoreMode,
    pub value: &'v [u8],
    pub flags: u32,
    /// Absolute unix seconds (resolved by the dispatcher); 0 never expires.
    pub exptime: u32,
    /// The request's CAS, 0 for none. `Cas` mode: the item must exist and have it (0 never
    /// matches); append/prepend: an item that exists must have it; other modes ignore it.
    pub cas: u64,
    /// Meta `I` with `C`: a CAS older than the item's still stores, but the value is marked
    /// stale and keeps the item's expiry and any recache token already sent.
    pub stale_ok: bool,
    /// Meta `N` on append/prepend: a missing item is created from the value (with
    /// `exptime`, `flags`) instead of not being stored.
    pub vivify: bool,
    /// Meta `E`: the version (CAS) of the item written, instead of the clock's. The meta
    /// dispatcher refuses it on a replicated node.
    pub version: Option<Version>,
    /// Remove the old item when the store fails for its size or for memory: memcached does
    /// for a text or binary `set` and for every meta `ms`.
    pub drop_on_failure: bool,
}

/// What a store did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `Stored` (with the CAS clients see), `NotStored`, `Exists`, `NotFound`, `TooLarge`
    /// or `OutOfMemory`.
    pub outcome: Outcome,
    /// The length of the value stored (after an append, the whole), or of the request's
    /// value when nothing was stored: meta's `s`.
    pub len: usize,
}

/// How the request's CAS compares with the item's (memcached's `cas_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasCheck {
    /// The request carries none.
    None,
    Match,
    /// Older than the item's, and the request allows a stale store.
    Stale,
    BadVal,
}

impl CasCheck {
    fn of(cas: u64, item: Version, stale_ok: bool) -> CasCheck {
        match cas {
            0 => CasCheck::None,
            c if c == item.0 => CasCheck::Match,
            c if stale_ok && c < item.0 => CasCheck::Stale,
            _ => CasCheck::BadVal,
        }
    }
}

/// The decision made under the lock: the answer (its CAS filled in once written), the
/// `cas_*` counter it earns, the value length.
struct Decision {
    outcome: Outcome,
    counter: Option<Counter>,
    len: usize,
}

impl Decision {
    fn new(outcome: Outcome, len: usize) -> Self {
        Decision {
            outcome,
            counter: None,
            len,
        }
    }

    fn counting(self, c: Counter) -> Self {
        Decision {
            counter: Some(c),
            ..self
        }
    }
}

/// Runs a storage request on `key`.
pub fn store(ctx: &mut Ctx<'_>, key: &[u8], op: &StoreOp<'_>) -> Stored {
    let shared = ctx.shared;
    let len = op.value.len();
    if shared.store.too_large(key.len(), len, op.flags) {
        let outcome = refuse_too_large(ctx, Some(key), op.drop_on_failure);
        return Stored { outcome, len };
    }
    // memcached counts a store once its item could be allocated.
    ctx.bump(Counter::CmdSet);
    let cas = ctx.held_cas(op.cas);
    let result = shared
        .store
        .mutate(key, ctx.now, &shared.hlc, |cur| decide(op, cas, cur));
    match result {
        Ok((d, v)) => {
            if let Some(c) = d.counter {
                ctx.bump(c);
            }
            let outcome = match d.outcome {
                Outcome::Stored(_) => Outcome::Stored(ctx.shown(v)),
                o => o,
            };
            Stored {
                outcome,
                len: d.len,
            }
        }
        // An append that would outgrow the item limit is not stored, as in memcached.
        Err(StoreError::TooLarge) if matches!(op.mode, StoreMode::Append | StoreMode::Prepend) => {
            Stored {
                outcome: Outcome::NotStored { exists: false },
                len,
            }
        }
        Err(StoreError::TooLarge) => Stored {
            outcome: refuse_too_large(ctx, Some(key), op.drop_on_failure),
            len,
        },
        Err(StoreError::OutOfMemory) => {
            ctx.bump(Counter::StoreNoMemory);
            if op.drop_on_failure {
                drop_item(ctx, key);
            }
            Stored {
                outcome: Outcome::OutOfMemory,
                len,
            }
        }
    }
}

/// A value too large for the item limit: counted, refused, and with `drop` the old item
/// removed (see [`StoreOp::drop_on_failure`]). For values the decoder already refused too
/// (`key` is `None` when even the key was unreadable).
pub fn refuse_too_large(ctx: &mut Ctx<'_>, key: Option<&[u8]>, drop: bool) -> Outcome {
    ctx.bump(Counter::StoreTooLarge);
    if let (true, Some(key)) = (drop, key) {
        drop_item(ctx, key);
    }
    Outcome::TooLarge
}

/// memcached's `do_store_item`: given the current item, what to write and what to answer.
fn decide<'v>(op: &StoreOp<'v>, cas: u64, cur: Option<ItemRef<'_>>) -> (Mutation<'v>, Decision) {
    let len = op.value.len();
    let put = |value, flags, exptime, bits| {
        Mutation::Put(Put {
            value,
            flags,
            exptime,
            bits,
            version: op.version,
        })
    };
    let stored = |len| Decision::new(Outcome::Stored(Version::NONE), len);
    let not_stored = |exists| Decision::new(Outcome::NotStored { exists }, len);
    let fresh = || put(NewValue::Bytes(op.value), op.flags, op.exptime, 0);
    let Some(cur) = cur else {
        return match op.mode {
            StoreMode::Cas => (
                Mutation::Keep,
                Decision::new(Outcome::NotFound, len).counting(Counter::CasMisses),
            ),
            StoreMode::Replace => (Mutation::Keep, not_stored(false)),
            StoreMode::Append | StoreMode::Prepend if !op.vivify => {
                (Mutation::Keep, not_stored(false))
            }
            _ => (fresh(), stored(len)),
        };
    };
    let check = CasCheck::of(cas, cur.version, op.stale_ok);
    match op.mode {
        StoreMode::Add => (Mutation::Keep, not_stored(true)),
        StoreMode::Set | StoreMode::Replace => (fresh(), stored(len)),
        StoreMode::Cas => match check {
            CasCheck::Match => (fresh(), stored(len).counting(Counter::CasHits)),
            CasCheck::Stale => {
                let bits = STALE | (cur.bits & WIN_SENT);
                let m = put(NewValue::Bytes(op.value), op.flags, cur.exptime, bits);
                (m, stored(len).counting(Counter::CasHits))
            }
            CasCheck::None | CasCheck::BadVal => (
                Mutation::Keep,
                Decision::new(Outcome::Exists, len).counting(Counter::CasBadval),
            ),
        },
        StoreMode::Append | StoreMode::Prepend => match check {
            CasCheck::None | CasCheck::Match => {
                let value = if op.mode == StoreMode::Append {
                    NewValue::Append(op.value)
                } else {
                    NewValue::Prepend(op.value)
                };
                let whole = cur.value.len() + len;
                (put(value, cur.flags, cur.exptime, 0), stored(whole))
            }
            CasCheck::Stale | CasCheck::BadVal => {
                (Mutation::Keep, Decision::new(Outcome::Exists, len))
            }
        },
    }
}
