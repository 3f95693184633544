//! Meta commands (`mg`, `ms`, `md`, `ma`, `me`, `mn`), as memcached 1.6.45 runs them.
//!
//! Meta lowers to the same operations as text and binary ([`super::ops`]): `ms` is a store,
//! `md` a delete, `ma` an incr/decr, and their meta-only flags (`I`, `N`, `J`, `x`, `E`,
//! `T`) are options of those operations, so a rule such as the CAS a touch gives or what a
//! failed store removes exists once for every dialect. What stays here is meta's own: which
//! options a flag means, and the answer (return flags in request order, `k`/`O`/`b` echo,
//! quiet mode, the `W`/`Z`/`X` recache tokens). `mg` writes its answer under the item's lock
//! (see `get`), but the changes it makes come from the operations layer too.
//!
//! CAS values follow memcached on a standalone node: `mg T` and `md x` keep the item's CAS.
//! Once writes replicate, every change must carry a new version to win by last-writer-wins
//! (DESIGN.md section 2), so those get one too. Two flags could not survive replication and
//! are refused on a replicated node, never half applied: `E` (a CAS chosen by the client
//! could break the version order) and `I` (the stale mark does not travel with an item).

mod arith;
mod debug;
mod get;

use bytes::BytesMut;

use super::dispatch::{After, Ctx};
use super::ops::{self, DeleteOp, StoreOp};
use crate::clock::Version;
use crate::protocol::meta::{self, MetaCommand, MetaDelete, MetaReply, MetaSet, Ret};
use crate::protocol::{put_u64, Invalid, Outcome, StoreMode};

/// Runs one meta command and writes its answer.
pub fn execute(
    ctx: &mut Ctx<'_>,
    cmd: MetaCommand,
    reply: &MetaReply,
    out: &mut BytesMut,
) -> After {
    if ctx.shared.replicated() {
        if let Some(refusal) = refused_in_a_cluster(&cmd) {
            client_error(refusal, out);
            return After::Continue;
        }
    }
    match cmd {
        MetaCommand::Get(g) => get::get(ctx, &g, reply, out),
        MetaCommand::Set(s) => set(ctx, &s, reply, out),
        MetaCommand::Delete(d) => delete(ctx, &d, reply, out),
        MetaCommand::Arith(a) => arith::arith(ctx, &a, reply, out),
        MetaCommand::Debug(key) => debug::debug(ctx, &key, reply, out),
        MetaCommand::Noop => out.extend_from_slice(b"MN\r\n"),
    }
    After::Continue
}

/// The flags a replicated node refuses (see the module comment), with the error saying so.
fn refused_in_a_cluster(cmd: &MetaCommand) -> Option<&'static str> {
    let (cas_in, invalidate) = match cmd {
        MetaCommand::Get(g) => (g.cas_in, false),
        MetaCommand::Set(s) => (s.cas_in, s.invalidate),
        MetaCommand::Delete(d) => (d.cas_in, d.invalidate),
        MetaCommand::Arith(a) => (a.cas_in, false),
        MetaCommand::Debug(_) | MetaCommand::Noop => (None, false),
    };
    if cas_in.is_some() {
        Some("E flag not allowed on a replicated node")
    } else if invalidate {
        Some("I flag not allowed on a replicated node")
    } else {
        None
    }
}

fn client_error(msg: &'static str, out: &mut BytesMut) {
    meta::put_error(&Invalid::Client(msg), out);
}

fn server_error(msg: &'static str, out: &mut BytesMut) {
    meta::put_error(&Invalid::Server(msg), out);
}

/// Meta's TTL flags, resolved to absolute times: `T`, and `N` for an item the command
/// creates.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    touch: Option<u32>,
    vivify: Option<u32>,
}

impl Ttls {
    fn of(ctx: &Ctx<'_>, touch: Option<i64>, vivify: Option<i64>) -> Ttls {
        Ttls {
            touch: touch.map(|t| ctx.expiry(t)),
            vivify: vivify.map(|t| ctx.expiry(t)),
        }
    }

    /// The expiry an item has after the flag `r`: `T` and `N` (the latter only for an item
    /// this command created) take effect where they stand among the flags, so a `t` placed
    /// before them shows the expiry before.
    fn after(&self, r: &Ret, exptime: u32, created: bool) -> u32 {
        match r {
            Ret::Touch => self.touch.unwrap_or(exptime),
            Ret::Vivify if created => self.vivify.unwrap_or(0),
            _ => exptime,
        }
    }
}

/// `ms`: a store. `C` makes set and replace conditional (`cas`) and is a plain check for
/// append/prepend (add ignores it), `I` lets an older CAS store a stale value, `N` lets
/// append/prepend create the item, and a failed `ms` drops the old item whatever its mode,
/// as memcached's does.
fn set(ctx: &mut Ctx<'_>, s: &MetaSet, reply: &MetaReply, out: &mut BytesMut) {
    let key = s.key.as_bytes();
    let Some(value) = &s.value else {
        ops::refuse_too_large(ctx, Some(key), true);
        return server_error("object too large for cache", out);
    };
    let vivify = s
        .vivify
        .filter(|_| matches!(s.mode, StoreMode::Append | StoreMode::Prepend));
    let mode = match s.mode {
        StoreMode::Set | StoreMode::Replace if s.compare_cas.is_some() => StoreMode::Cas,
        mode => mode,
    };
    let op = StoreOp {
        mode,
        value,
        flags: s.flags,
        exptime: ctx.expiry(vivify.unwrap_or(s.exptime)),
        cas: s.compare_cas.unwrap_or(0),
        stale_ok: s.invalidate,
        vivify: vivify.is_some(),
        version: s.cas_in.map(Version),
        drop_on_failure: true,
    };
    let stored = ops::store(ctx, key, &op);
    let (code, cas): (&[u8], u64) = match stored.outcome {
        Outcome::Stored(v) => {
            if reply.quiet {
                return;
            }
            (b"HD", v.0)
        }
        Outcome::Exists => (b"EX", 0),
        Outcome::NotFound => (b"NF", 0),
        Outcome::TooLarge => return server_error("object too large for cache", out),
        Outcome::OutOfMemory => return server_error("out of memory storing object", out),
        _ => (b"NS", 0),
    };
    out.extend_from_slice(code);
    for r in &reply.rets {
        match r {
            Ret::Size => {
                out.extend_from_slice(b" s");
                put_u64(out, stored.len as u64);
            }
            r => meta::put_echo_one(reply.base64, r, key, Some(cas), out),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `md`: a delete; with `I` it marks the item stale instead (the next `mg` wins a
/// recache), with `x` it empties the value but keeps the item.
fn delete(ctx: &mut Ctx<'_>, d: &MetaDelete, reply: &MetaReply, out: &mut BytesMut) {
    if reply.opaque_too_long() {
        return client_error("opaque token too long", out);
    }
    let op = DeleteOp {
        cas: d.compare_cas,
        empty_flags: d.remove_value.then_some(d.flags),
        invalidate: d.invalidate,
        exptime: d.exptime.map(|t| ctx.expiry(t)),
        version: d.cas_in.map(Version),
    };
    let code: &[u8] = match ops::delete(ctx, d.key.as_bytes(), &op) {
        Outcome::Deleted => {
            if reply.quiet {
                return;
            }
            b"HD"
        }
        Outcome::NotFound => b"NF",
        Outcome::Exists => b"EX",
        _ => return server_error("out of memory", out),
    };
    out.extend_from_slice(code);
    meta::put_echo(reply, d.key.as_bytes(), None, out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
