//! Meta command semantics (`mg`, `ms`, `md`, `ma`, `me`, `mn`), as memcached 1.6.45 runs
//! them, against the store.
//!
//! Each command is one closure under one shard lock: the decision (hit or miss, CAS checks,
//! who wins a recache) and the answer are made together, so that `c` shows exactly the
//! version written and two clients can never both win the same token. Versions for items
//! a command creates or changes are taken from the HLC inside the lock (or from `E`), which
//! keeps them ordered per key as replication requires.
//!
//! CAS values follow memcached on a standalone node: `mg T` and `md x` keep the item's CAS.
//! Once writes replicate, every change must carry a new version to win by last-writer-wins
//! (DESIGN.md section 2), so those get one too, and `E` (a CAS chosen by the client, which
//! could break that ordering) is refused.

mod arith;
mod debug;

use bytes::BytesMut;

use super::dispatch::{
    apply_delta, counter_bytes, drop_after_failed_set, store_decision, After, Ctx,
};
use super::stats::Counter;
use crate::clock::Version;
use crate::protocol::meta::{
    self, HitView, MetaArith, MetaCommand, MetaDelete, MetaGet, MetaReply, MetaSet, Ret, MAX_OPAQUE,
};
use crate::protocol::{put_u64, Invalid, Outcome, StoreMode};
use crate::store::{Mutation, NewValue, Put, StoreError, STALE, WIN_SENT};

/// Runs one meta command and writes its answer.
pub fn execute(
    ctx: &mut Ctx<'_>,
    cmd: MetaCommand,
    reply: &MetaReply,
    out: &mut BytesMut,
) -> After {
    let cas_in = match &cmd {
        MetaCommand::Get(g) => g.cas_in,
        MetaCommand::Set(s) => s.cas_in,
        MetaCommand::Delete(d) => d.cas_in,
        MetaCommand::Arith(a) => a.cas_in,
        MetaCommand::Debug(_) | MetaCommand::Noop => None,
    };
    if cas_in.is_some() && ctx.shared.replicated() {
        client_error("E flag not allowed on a replicated node", out);
        return After::Continue;
    }
    // Invalidation marks an item stale on this node only: the mark does not travel with
    // replication, so peers would serve the item as fresh. Refused in a cluster, never
    // silently half-applied (DESIGN.md section 2).
    let invalidate = match &cmd {
        MetaCommand::Set(s) => s.invalidate,
        MetaCommand::Delete(d) => d.invalidate,
        _ => false,
    };
    if invalidate && ctx.shared.replicated() {
        client_error("I flag not allowed on a replicated node", out);
        return After::Continue;
    }
    match cmd {
        MetaCommand::Get(g) => get(ctx, &g, reply, out),
        MetaCommand::Set(s) => set(ctx, &s, reply, out),
        MetaCommand::Delete(d) => delete(ctx, &d, reply, out),
        MetaCommand::Arith(a) => arith::arith(ctx, &a, reply, out),
        MetaCommand::Debug(key) => debug::debug(ctx, &key, reply, out),
        MetaCommand::Noop => out.extend_from_slice(b"MN\r\n"),
    }
    After::Continue
}

fn client_error(msg: &'static str, out: &mut BytesMut) {
    meta::put_error(&Invalid::Client(msg), out);
}

fn server_error(msg: &'static str, out: &mut BytesMut) {
    meta::put_error(&Invalid::Server(msg), out);
}

/// The CAS clients see for a version: none with `-C`.
fn shown(ctx: &Ctx<'_>, v: Version) -> u64 {
    if ctx.shared.config.cas_enabled {
        v.0
    } else {
        0
    }
}

enum GetResult {
    Hit {
        touched: bool,
    },
    Miss,
    /// Answered with an error part way (an opaque token too long).
    Failed,
}

/// `mg`: a read that may also touch (`T`), create (`N`) or hand out a recache token (`R`,
/// or a stale item).
fn get(ctx: &mut Ctx<'_>, g: &MetaGet, reply: &MetaReply, out: &mut BytesMut) {
    let shared = ctx.shared;
    let hlc = &shared.hlc;
    let now = ctx.now;
    let cas_on = shared.config.cas_enabled;
    let replicated = shared.replicated();
    let touch = g.touch.map(|t| ctx.expiry(t));
    let vivify = g.vivify.map(|t| ctx.expiry(t));
    let recache = g.recache.map(|t| ctx.expiry(t));
    // memcached locks the item for these and counts the access only after answering, so an
    // error answer then leaves the item unbumped.
    let locked = touch.is_some()
        || vivify.is_some()
        || recache.is_some()
        || reply
            .rets
            .iter()
            .any(|r| matches!(r, Ret::LastAccess | Ret::Hit));
    let start = out.len();
    let result = shared
        .store
        .fetch_mutate(g.key.as_bytes(), now, hlc, |cur| {
            let created = cur.is_none();
            let (value, flags, exptime, version, last_access, fetched, bits) = match (cur, vivify) {
                (Some(i), _) => (
                    i.value,
                    i.flags,
                    i.exptime,
                    i.version,
                    i.last_access,
                    i.fetched,
                    i.bits,
                ),
                (None, Some(_)) => (&[][..], 0, 0, Version::NONE, now, false, 0),
                (None, None) => return (Mutation::Keep, GetResult::Miss, false),
            };
            let held = version;
            // New versions are taken now, so that `c` shows them wherever it stands.
            let version = if created || (touch.is_some() && replicated) {
                g.cas_in.map_or_else(|| hlc.tick(), Version)
            } else {
                version
            };
            // `C`: the client's copy is current if its CAS is the one the item had when it
            // was found (or was created with), so the value is not sent again.
            let compared = if created { version } else { held };
            let current = g
                .compare_cas
                .is_some_and(|c| c == if cas_on { compared.0 } else { 0 });
            let send_value = reply.value && !current;
            let mut view = HitView {
                key: g.key.as_bytes(),
                value,
                flags,
                exptime,
                cas: if cas_on { version.0 } else { 0 },
                last_access,
                fetched,
                now,
            };
            if send_value {
                out.extend_from_slice(b"VA ");
                put_u64(out, value.len() as u64);
            } else {
                out.extend_from_slice(b"HD");
            }
            let mut won = false;
            let mut touched = false;
            let mut failed = false;
            for r in &reply.rets {
                match r {
                    Ret::Touch => {
                        touched = true;
                        view.exptime = touch.unwrap_or(view.exptime);
                    }
                    Ret::Vivify if created => {
                        view.exptime = vivify.unwrap_or(0);
                        won = true;
                    }
                    Ret::Recache => {
                        if bits & WIN_SENT == 0
                            && !created
                            && view.exptime != 0
                            && recache.is_some_and(|r| view.exptime < r)
                        {
                            won = true;
                        }
                    }
                    Ret::Opaque(o) if o.len() > MAX_OPAQUE => {
                        failed = true;
                        break;
                    }
                    r => meta::put_ret(reply, r, &view, out),
                }
            }
            if failed {
                out.truncate(start);
                client_error("opaque token too long", out);
                // What memcached had already done to the item stays done.
                let m = if created {
                    vivified(view.exptime, 0, version)
                } else if touched {
                    touch_update(view.exptime, 0, version, replicated)
                } else {
                    Mutation::Keep
                };
                return (m, GetResult::Failed, !locked && !g.no_bump);
            }
            // Z before W: a client never sees both.
            if bits & WIN_SENT != 0 {
                out.extend_from_slice(b" Z");
            }
            if bits & STALE != 0 {
                out.extend_from_slice(b" X");
                if bits & WIN_SENT == 0 {
                    won = true;
                }
            }
            if won {
                out.extend_from_slice(b" W");
            }
            out.extend_from_slice(b"\r\n");
            if send_value {
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            let win_bit = if won { WIN_SENT } else { 0 };
            let m = if created {
                vivified(view.exptime, win_bit, version)
            } else if touched {
                touch_update(view.exptime, win_bit, version, replicated)
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
            };
            (m, GetResult::Hit { touched }, !g.no_bump)
        });
    match result {
        Ok((GetResult::Hit { touched: true }, _)) => {
            ctx.counters.bump(Counter::CmdTouch);
            ctx.counters.bump(Counter::TouchHits);
        }
        Ok((GetResult::Hit { touched: false }, _)) => {
            ctx.counters.bump(Counter::CmdGet);
            ctx.counters.bump(Counter::GetHits);
        }
        Ok((GetResult::Failed, _)) => {}
        // A failed auto-vivify is a miss in memcached too.
        Ok((GetResult::Miss, _)) | Err(_) => {
            out.truncate(start);
            ctx.counters.bump(Counter::CmdGet);
            ctx.counters.bump(Counter::GetMisses);
            if reply.opaque_too_long() {
                client_error("opaque token too long", out);
            } else {
                meta::encode_miss(reply, &g.key, out);
            }
        }
    }
}

/// The empty item `mg N` creates.
fn vivified(exptime: u32, bits: u8, version: Version) -> Mutation<'static> {
    Mutation::Put(Put {
        value: NewValue::Bytes(&[]),
        flags: 0,
        exptime,
        bits,
        version: Some(version),
    })
}

/// `mg T`: a new TTL; a new version only when writes replicate.
fn touch_update(exptime: u32, set_bits: u8, version: Version, bump: bool) -> Mutation<'static> {
    Mutation::Update {
        exptime: Some(exptime),
        set_bits,
        clear_bits: 0,
        bump,
        version: bump.then_some(version),
    }
}

/// `ms`: the storage modes of `set` & co, with memcached's meta twists: `C` turns set and
/// replace into `cas` (and is a plain check for append/prepend, ignored by add), `I` lets an
/// older CAS store a stale value, and `N` lets append/prepend create the item.
fn set(ctx: &mut Ctx<'_>, s: &MetaSet, reply: &MetaReply, out: &mut BytesMut) {
    let shared = ctx.shared;
    let key = s.key.as_bytes();
    let value = match &s.value {
        Some(v) if !shared.store.too_large(key.len(), v.len(), s.flags) => v,
        _ => {
            // memcached drops the old item rather than let a failed store leave it.
            ctx.counters.bump(Counter::StoreTooLarge);
            drop_after_failed_set(ctx, key);
            server_error("object too large for cache", out);
            return;
        }
    };
    ctx.counters.bump(Counter::CmdSet);
    let appending = matches!(s.mode, StoreMode::Append | StoreMode::Prepend);
    let vivify = if appending {
        s.vivify.map(|t| ctx.expiry(t))
    } else {
        None
    };
    let exptime = vivify.unwrap_or_else(|| ctx.expiry(s.exptime));
    let cas_mode = s.compare_cas.is_some() && matches!(s.mode, StoreMode::Set | StoreMode::Replace);
    let req_cas = s.compare_cas.unwrap_or(0);
    let c = &*ctx;
    let result = shared.store.mutate(key, c.now, &shared.hlc, |cur| {
        let cur = cur.map(|i| c.visible(i));
        let size = match cur {
            Some(i) if appending => i.value.len() + value.len(),
            _ => value.len(),
        };
        let (mut m, outcome) = match cur {
            Some(i) if cas_mode && s.invalidate && req_cas != 0 && req_cas < i.version.0 => {
                // An older CAS with I: store, but stale, keeping the TTL and any token sent.
                let put = Put {
                    value: NewValue::Bytes(value),
                    flags: s.flags,
                    exptime: i.exptime,
                    bits: STALE | (i.bits & WIN_SENT),
                    version: None,
                };
                (Mutation::Put(put), Outcome::Stored(Version::NONE))
            }
            Some(i) if appending && req_cas != 0 && req_cas != i.version.0 => {
                (Mutation::Keep, Outcome::Exists)
            }
            None if vivify.is_some() => {
                let put = Put {
                    value: NewValue::Bytes(value),
                    flags: s.flags,
                    exptime,
                    bits: 0,
                    version: None,
                };
                (Mutation::Put(put), Outcome::Stored(Version::NONE))
            }
            cur if cas_mode => {
                store_decision(StoreMode::Cas, cur, value, s.flags, exptime, req_cas)
            }
            cur => store_decision(s.mode, cur, value, s.flags, exptime, 0),
        };
        if let Mutation::Put(p) = &mut m {
            p.version = s.cas_in.map(Version);
        }
        (m, (outcome, size))
    });
    let (outcome, size) = match result {
        Ok(((Outcome::Stored(_), size), v)) => (Outcome::Stored(v), size),
        Ok((r, _)) => r,
        // An append that would outgrow the item limit is not stored.
        Err(StoreError::TooLarge) if appending => {
            (Outcome::NotStored { exists: true }, value.len())
        }
        Err(StoreError::TooLarge) => return server_error("object too large for cache", out),
        Err(StoreError::OutOfMemory) => {
            ctx.counters.bump(Counter::StoreNoMemory);
            return server_error("out of memory storing object", out);
        }
    };
    if cas_mode {
        ctx.counters.bump(match outcome {
            Outcome::Stored(_) => Counter::CasHits,
            Outcome::Exists => Counter::CasBadval,
            _ => Counter::CasMisses,
        });
    }
    let (code, cas): (&[u8], u64) = match outcome {
        Outcome::Stored(v) => {
            if reply.quiet {
                return;
            }
            (b"HD", shown(ctx, v))
        }
        Outcome::Exists => (b"EX", 0),
        Outcome::NotFound => (b"NF", 0),
        _ => (b"NS", 0),
    };
    out.extend_from_slice(code);
    for r in &reply.rets {
        match r {
            Ret::Size => {
                out.extend_from_slice(b" s");
                put_u64(out, size as u64);
            }
            r => meta::put_echo_one(reply.base64, r, key, Some(cas), out),
        }
    }
    out.extend_from_slice(b"\r\n");
}

enum DeleteResult {
    NotFound,
    Exists,
    Done { removed: bool },
}

/// `md`: delete, or with `I` mark stale (the next `mg` wins a recache), or with `x` empty
/// the value but keep the item.
fn delete(ctx: &mut Ctx<'_>, d: &MetaDelete, reply: &MetaReply, out: &mut BytesMut) {
    if reply.opaque_too_long() {
        return client_error("opaque token too long", out);
    }
    let shared = ctx.shared;
    let exptime = d.exptime.map(|t| ctx.expiry(t));
    let cas_in = d.cas_in.map(Version);
    let replicated = shared.replicated();
    let miss = super::dispatch::absent_delete(shared);
    let c = &*ctx;
    let result = shared
        .store
        .mutate(d.key.as_bytes(), c.now, &shared.hlc, |cur| {
            let Some(raw) = cur else {
                let plain = d.compare_cas.is_none() && !d.remove_value && !d.invalidate;
                let m = if plain { miss } else { Mutation::Keep };
                return (m, DeleteResult::NotFound);
            };
            if d.compare_cas
                .is_some_and(|cas| cas != c.visible(raw).version.0)
            {
                return (Mutation::Keep, DeleteResult::Exists);
            }
            if d.remove_value {
                // A fresh empty item: flags from F, TTL from T (or none), stale with I. It
                // keeps the CAS (unless I, or E, says otherwise) on a standalone node.
                let version = match cas_in {
                    Some(v) => Some(v),
                    None if d.invalidate || replicated => None,
                    None => Some(raw.version),
                };
                let put = Put {
                    value: NewValue::Bytes(&[]),
                    flags: d.flags,
                    exptime: exptime.unwrap_or(0),
                    bits: if d.invalidate { STALE } else { 0 },
                    version,
                };
                let removed = !d.invalidate;
                (Mutation::Put(put), DeleteResult::Done { removed })
            } else if d.invalidate {
                let m = Mutation::Update {
                    exptime,
                    set_bits: STALE,
                    clear_bits: WIN_SENT,
                    bump: true,
                    version: cas_in,
                };
                (m, DeleteResult::Done { removed: false })
            } else {
                (Mutation::Delete, DeleteResult::Done { removed: true })
            }
        });
    let code: &[u8] = match result {
        Ok((DeleteResult::Done { removed }, _)) => {
            if removed {
                ctx.counters.bump(Counter::DeleteHits);
            }
            if reply.quiet {
                return;
            }
            b"HD"
        }
        Ok((DeleteResult::NotFound, _)) => {
            ctx.counters.bump(Counter::DeleteMisses);
            b"NF"
        }
        Ok((DeleteResult::Exists, _)) => {
            ctx.counters.bump(Counter::DeleteMisses);
            b"EX"
        }
        Err(_) => return server_error("out of memory", out),
    };
    out.extend_from_slice(code);
    meta::put_echo(reply, d.key.as_bytes(), None, out);
    out.extend_from_slice(b"\r\n");
}

enum ArithResult {
    Done { created: bool },
    NotFound,
    Exists,
    NonNumeric,
}

#[cfg(test)]
mod tests;
