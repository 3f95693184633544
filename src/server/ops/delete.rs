//! Delete, for every dialect; with meta's options it can instead empty the value (`x`) or
//! mark the item stale (`I`).

use crate::clock::Version;
use crate::protocol::Outcome;
use crate::store::{ItemRef, Mutation, NewValue, Put, STALE, WIN_SENT};

use super::touch::in_place_version;
use super::{Counter, Ctx, Shared};

/// One delete request.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOp {
    /// The item must have this CAS. Text and binary ask for none with 0; meta's `C0` is a
    /// condition like any other.
    pub cas: Option<u64>,
    /// Meta `x`: keep the item, with an empty value and these client flags.
    pub empty_flags: Option<u32>,
    /// Meta `I`: mark the item stale with a new CAS (the next `mg` wins a recache) instead
    /// of removing it. Refused on a replicated node by the meta dispatcher.
    pub invalidate: bool,
    /// Meta `T` with `x` or `I`: the item's new expiry (absolute; `x` without it: none).
    pub exptime: Option<u32>,
    /// Meta `E`: the version the item left by `x` or `I` gets.
    pub version: Option<Version>,
}

impl DeleteOp {
    /// Whether it removes the item outright (no condition, nothing kept).
    fn plain(&self) -> bool {
        self.cas.is_none() && self.empty_flags.is_none() && !self.invalidate
    }
}

/// What the delete decided; `Removed` and `Kept` are both `Deleted` to clients, but only a
/// removal counts as a delete hit, as in memcached.
enum Decision {
    Removed,
    Kept,
    NotFound,
    Exists,
}

/// Runs a delete on `key`: `Deleted`, `NotFound`, `Exists` (the CAS differs), or
/// `OutOfMemory` (`x` could not write its empty item).
pub fn delete(ctx: &mut Ctx<'_>, key: &[u8], op: &DeleteOp) -> Outcome {
    let shared = ctx.shared;
    let c = &*ctx;
    let result = shared
        .store
        .mutate(key, c.now, &shared.hlc, |cur| match cur {
            None if op.plain() => (absent_delete(shared), Decision::NotFound),
            None => (Mutation::Keep, Decision::NotFound),
            Some(item) => decide(c, op, item),
        });
    let (outcome, counter) = match result {
        Ok((Decision::Removed, _)) => (Outcome::Deleted, Some(Counter::DeleteHits)),
        Ok((Decision::Kept, _)) => (Outcome::Deleted, None),
        Ok((Decision::NotFound, _)) => (Outcome::NotFound, Some(Counter::DeleteMisses)),
        Ok((Decision::Exists, _)) => (Outcome::Exists, Some(Counter::DeleteMisses)),
        Err(_) => (Outcome::OutOfMemory, None),
    };
    if let Some(c) = counter {
        ctx.bump(c);
    }
    outcome
}

fn decide(ctx: &Ctx<'_>, op: &DeleteOp, item: ItemRef<'_>) -> (Mutation<'static>, Decision) {
    if op.cas.is_some_and(|cas| cas != ctx.visible(item).version.0) {
        return (Mutation::Keep, Decision::Exists);
    }
    if let Some(flags) = op.empty_flags {
        // A fresh empty item in place of the old one. Standalone it keeps the CAS, as in
        // memcached, unless `I` (or `E`) says otherwise; in a cluster it needs a new one.
        let version = match op.version {
            Some(v) => Some(v),
            None if op.invalidate => None,
            None => Some(in_place_version(ctx.shared).unwrap_or(item.version)),
        };
        let put = Put {
            value: NewValue::Bytes(&[]),
            flags,
            exptime: op.exptime.unwrap_or(0),
            bits: if op.invalidate { STALE } else { 0 },
            version,
        };
        let decision = if op.invalidate {
            Decision::Kept
        } else {
            Decision::Removed
        };
        return (Mutation::Put(put), decision);
    }
    if op.invalidate {
        // Stale, with a new CAS; a recache token already sent is forgotten so that the
        // next client can win.
        let m = Mutation::Update {
            exptime: op.exptime,
            set_bits: STALE,
            clear_bits: WIN_SENT,
            bump: true,
            version: op.version,
        };
        return (m, Decision::Kept);
    }
    (Mutation::Delete, Decision::Removed)
}

/// What a delete of a key this node does not hold does. Standalone: nothing. In a cluster
/// it still writes (and replicates) a tombstone while answering `NOT_FOUND`: the key may be
/// missing here only because this node evicted it, or because the write that created it is
/// still on its way, and a client's delete must not leave the key alive on the peers.
fn absent_delete(shared: &Shared) -> Mutation<'static> {
    if shared.replicated() {
        Mutation::DeleteMissing
    } else {
        Mutation::Keep
    }
}
