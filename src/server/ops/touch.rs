//! Touch and get-and-touch, and the changes meta `mg` makes to the item it reads (a touch,
//! an auto-vivified item): one rule for the version each gives, whatever the dialect.

use crate::clock::Version;
use crate::protocol::Outcome;
use crate::store::{ItemRef, Mutation, NewValue, Put};

use super::{Counter, Ctx, Shared};

/// The version a change that memcached makes in place, without a new CAS (a touch, meta
/// `md x`), leaves on the item. Standalone: none, the CAS stays, as in memcached (so `gets`,
/// `touch`, `cas` works). Once writes replicate, the change must carry a new version to
/// win by last-writer-wins everywhere (DESIGN.md section 2); it is taken here, under the
/// item's lock, so that the CAS a command answers is the item's from then on (a `gats`
/// then `cas` works, on this node and on its peers).
pub fn in_place_version(shared: &Shared) -> Option<Version> {
    shared.replicated().then(|| shared.hlc.tick())
}

/// A touch to `exptime`, giving the item `version` (from [`in_place_version`]) and
/// setting `set_bits` (a recache token `mg` hands out with it).
pub fn touch_mutation(exptime: u32, version: Option<Version>, set_bits: u8) -> Mutation<'static> {
    Mutation::Update {
        exptime: Some(exptime),
        set_bits,
        clear_bits: 0,
        bump: version.is_some(),
        version,
    }
}

/// The version of an item a command creates: the client's (meta `E`, refused on a
/// replicated node) or the clock's, taken under the lock so it can be answered.
pub fn new_version(shared: &Shared, chosen: Option<Version>) -> Version {
    chosen.unwrap_or_else(|| shared.hlc.tick())
}

/// The empty item meta `mg N` creates on a miss.
pub fn vivify(exptime: u32, bits: u8, version: Version) -> Mutation<'static> {
    Mutation::Put(Put {
        value: NewValue::Bytes(&[]),
        flags: 0,
        exptime,
        bits,
        version: Some(version),
    })
}

/// `touch`: a new expiry for an item that exists; `Touched` with the CAS it has after.
pub fn touch(ctx: &mut Ctx<'_>, key: &[u8], exptime: u32) -> Outcome {
    ctx.bump(Counter::CmdTouch);
    let shared = ctx.shared;
    let result = shared
        .store
        .mutate(key, ctx.now, &shared.hlc, |cur| match cur {
            Some(_) => (touch_mutation(exptime, in_place_version(shared), 0), true),
            None => (Mutation::Keep, false),
        });
    match result {
        Ok((true, v)) => {
            ctx.bump(Counter::TouchHits);
            Outcome::Touched(ctx.shown(v))
        }
        _ => {
            ctx.bump(Counter::TouchMisses);
            Outcome::NotFound
        }
    }
}

/// gat/gats and binary GAT/GATK/TOUCH: touches the item and hands it to `answer` as it is
/// after the touch (new expiry, the CAS clients see from now on), or `None` on a miss.
/// The item is answered under the same lock as the touch: even a touch into the past
/// returns it once, as memcached does, before it is gone. Returns whether it was a hit.
pub fn get_and_touch(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    exptime: u32,
    answer: impl FnOnce(Option<&ItemRef<'_>>),
) -> bool {
    // They count as touches, not gets, as in memcached.
    ctx.bump(Counter::CmdTouch);
    let shared = ctx.shared;
    let c = &*ctx;
    let touched = shared
        .store
        .fetch_mutate(key, c.now, &shared.hlc, |cur| match cur {
            Some(item) => {
                let version = in_place_version(shared);
                let shown = ItemRef {
                    exptime,
                    version: c.shown(version.unwrap_or(item.version)),
                    ..item
                };
                answer(Some(&shown));
                (touch_mutation(exptime, version, 0), true, true)
            }
            None => {
                answer(None);
                (Mutation::Keep, false, false)
            }
        });
    let hit = matches!(touched, Ok((true, _)));
    ctx.bump(if hit {
        Counter::TouchHits
    } else {
        Counter::TouchMisses
    });
    hit
}
