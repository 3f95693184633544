//! `mg`: a read that may also touch (`T`), create (`N`) or hand out a recache token (`R`,
//! or a stale item).
//!
//! The answer is written under the item's lock, together with the change mg makes to it,
//! so that `c` shows exactly the version written and two clients can never both win the
//! same token. What those changes are (the version a touch gives, the item `N` creates)
//! comes from the operations layer, as for every dialect's touch.

use super::*;
use crate::protocol::meta::{HitView, MetaGet, MAX_OPAQUE};
use crate::server::stats::Counter;
use crate::store::{ItemRef, Mutation, STALE, WIN_SENT};

/// How an `mg` that found (or created) an item went.
enum GetResult {
    Hit {
        touched: bool,
    },
    Miss,
    /// Answered with an error part way (an opaque token too long).
    Failed,
}

/// The item `mg` answers: the one found, or the empty one `N` creates on a miss.
struct Seen<'a> {
    item: ItemRef<'a>,
    created: bool,
}

/// What the flags decided while the answer was written.
#[derive(Default)]
struct Walk {
    touched: bool,
    won: bool,
    failed: bool,
}

/// `mg`: answers the key, and touches, creates or marks it as its flags say.
pub(super) fn get(ctx: &mut Ctx<'_>, g: &MetaGet, reply: &MetaReply, out: &mut BytesMut) {
    let shared = ctx.shared;
    let ttls = Ttls::of(ctx, g.touch, g.vivify);
    let recache = g.recache.map(|t| ctx.expiry(t));
    // memcached locks the item for these and counts the access only after answering, so an
    // error answer then leaves the item unbumped.
    let locked = ttls.touch.is_some()
        || ttls.vivify.is_some()
        || recache.is_some()
        || reply
            .rets
            .iter()
            .any(|r| matches!(r, Ret::LastAccess | Ret::Hit));
    let start = out.len();
    let c = &*ctx;
    let result = shared
        .store
        .fetch_mutate(g.key.as_bytes(), c.now, &shared.hlc, |cur| {
            let seen = match (cur, ttls.vivify) {
                (Some(item), _) => Seen {
                    item,
                    created: false,
                },
                (None, Some(_)) => Seen {
                    item: empty(g, c.now),
                    created: true,
                },
                (None, None) => return (Mutation::Keep, GetResult::Miss, false),
            };
            let (m, result) = hit(c, g, reply, ttls, recache, seen, out);
            let access = match result {
                GetResult::Failed => !locked && !g.no_bump,
                _ => !g.no_bump,
            };
            (m, result, access)
        });
    match result {
        Ok((GetResult::Hit { touched: true }, _)) => {
            ctx.bump(Counter::CmdTouch);
            ctx.bump(Counter::TouchHits);
        }
        Ok((GetResult::Hit { touched: false }, _)) => {
            ctx.bump(Counter::CmdGet);
            ctx.bump(Counter::GetHits);
        }
        Ok((GetResult::Failed, _)) => {}
        // A failed auto-vivify is a miss in memcached too.
        Ok((GetResult::Miss, _)) | Err(_) => {
            out.truncate(start);
            ctx.bump(Counter::CmdGet);
            ctx.bump(Counter::GetMisses);
            if reply.opaque_too_long() {
                client_error("opaque token too long", out);
            } else {
                meta::encode_miss(reply, &g.key, out);
            }
        }
    }
}

/// What `N` creates, as the answer sees it before its flags apply.
fn empty<'a>(g: &'a MetaGet, now: u32) -> ItemRef<'a> {
    ItemRef {
        key: g.key.as_bytes(),
        value: &[],
        flags: 0,
        exptime: 0,
        version: Version::NONE,
        last_access: now,
        fetched: false,
        bits: 0,
    }
}

/// Answers a hit (or a created item) and says what changes: `c` anywhere in the answer shows
/// the version the item has after this command, so any new version is taken first.
fn hit(
    ctx: &Ctx<'_>,
    g: &MetaGet,
    reply: &MetaReply,
    ttls: Ttls,
    recache: Option<u32>,
    seen: Seen<'_>,
    out: &mut BytesMut,
) -> (Mutation<'static>, GetResult) {
    let shared = ctx.shared;
    let Seen { item, created } = seen;
    let touch_version = match (created, ttls.touch) {
        (false, Some(_)) => ops::in_place_version(shared),
        _ => None,
    };
    let version = if created {
        ops::new_version(shared, g.cas_in.map(Version))
    } else {
        touch_version.unwrap_or(item.version)
    };
    // `C`: the client's copy is current if its CAS is the one the item had when it was
    // found (or was created with), so the value is not sent again.
    let compared = if created { version } else { item.version };
    let current = g.compare_cas.is_some_and(|c| c == ctx.shown(compared).0);
    let send_value = reply.value && !current;
    let mut view = HitView {
        key: g.key.as_bytes(),
        value: item.value,
        flags: item.flags,
        exptime: item.exptime,
        cas: ctx.shown(version).0,
        last_access: item.last_access,
        fetched: item.fetched,
        now: ctx.now,
    };
    let start = out.len();
    if send_value {
        out.extend_from_slice(b"VA ");
        put_u64(out, item.value.len() as u64);
    } else {
        out.extend_from_slice(b"HD");
    }
    let walk = walk(reply, ttls, recache, item.bits, created, &mut view, out);
    let change = |won: bool| {
        let win_bit = if won { WIN_SENT } else { 0 };
        if created {
            ops::vivify(view.exptime, win_bit, version)
        } else if walk.touched {
            ops::touch_mutation(view.exptime, touch_version, win_bit)
        } else if won {
            Mutation::Update {
                exptime: None,
                set_bits: WIN_SENT,
                clear_bits: 0,
                bump: false,
                version: None,
            }
        } else {
            Mutation::Keep
        }
    };
    if walk.failed {
        out.truncate(start);
        client_error("opaque token too long", out);
        // What memcached had already done to the item stays done.
        return (change(false), GetResult::Failed);
    }
    let won = recache_flags(item.bits, walk.won, out);
    out.extend_from_slice(b"\r\n");
    if send_value {
        out.extend_from_slice(item.value);
        out.extend_from_slice(b"\r\n");
    }
    let touched = walk.touched;
    (change(won), GetResult::Hit { touched })
}

/// Writes the return flags in request order, applying `T` and `N` where they stand and
/// testing `R` there; stops at an opaque token that is too long.
fn walk(
    reply: &MetaReply,
    ttls: Ttls,
    recache: Option<u32>,
    bits: u8,
    created: bool,
    view: &mut HitView<'_>,
    out: &mut BytesMut,
) -> Walk {
    let mut w = Walk::default();
    for r in &reply.rets {
        view.exptime = ttls.after(r, view.exptime, created);
        match r {
            Ret::Touch => w.touched = true,
            Ret::Vivify if created => w.won = true,
            Ret::Recache => {
                // One client wins the recache of an item about to expire.
                if bits & WIN_SENT == 0
                    && !created
                    && view.exptime != 0
                    && recache.is_some_and(|r| view.exptime < r)
                {
                    w.won = true;
                }
            }
            Ret::Opaque(o) if o.len() > MAX_OPAQUE => {
                w.failed = true;
                break;
            }
            r => meta::put_ret(reply, r, view, out),
        }
    }
    w
}

/// Writes the serve-stale flags: `Z` when a recache token was already sent, `X` for a stale
/// item, and `W` when this client wins the recache (`won` by the flags, or first to see the
/// stale item). Returns whether it won. Z comes before W: a client never sees both.
fn recache_flags(bits: u8, won: bool, out: &mut BytesMut) -> bool {
    let sent = bits & WIN_SENT != 0;
    if sent {
        out.extend_from_slice(b" Z");
    }
    let stale = bits & STALE != 0;
    if stale {
        out.extend_from_slice(b" X");
    }
    let won = won || (stale && !sent);
    if won {
        out.extend_from_slice(b" W");
    }
    won
}
