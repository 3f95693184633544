//! `ma`: meta arithmetic, lowered to the shared incr/decr ([`ops::arith`]) and answered in
//! meta's way.

use super::*;
use crate::protocol::meta::{HitView, MetaArith};
use crate::server::ops::{ArithOp, Counted};

/// `ma`: incr/decr, optionally creating the counter (`N`, `J`) and touching it (`T`).
pub(super) fn arith(ctx: &mut Ctx<'_>, a: &MetaArith, reply: &MetaReply, out: &mut BytesMut) {
    let ttls = Ttls::of(ctx, a.touch, a.vivify);
    // A created counter starts with no expiry and ends with the one its flags give it.
    let created_ttl = reply.rets.iter().fold(0, |e, r| ttls.after(r, e, true));
    let op = ArithOp {
        incr: a.incr,
        delta: a.delta,
        cas: a.compare_cas.unwrap_or(0),
        create: ttls.vivify.map(|_| (a.initial, created_ttl)),
        touch: ttls.touch,
        version: a.cas_in.map(Version),
    };
    let counted = ops::arith(ctx, a.key.as_bytes(), &op);
    // memcached finds a long opaque only while writing the answer, after the change.
    let opaque_error = reply.opaque_too_long();
    let code: &[u8] = match counted.outcome {
        Outcome::Number(..) => {
            if opaque_error {
                client_error("opaque token too long", out);
            } else if !reply.quiet {
                answer(ctx, a, reply, ttls, &counted, out);
            }
            return;
        }
        Outcome::NonNumeric => {
            return client_error("cannot increment or decrement non-numeric value", out)
        }
        Outcome::NotFound => b"NF",
        Outcome::Exists => b"EX",
        _ if counted.created => return server_error("Out of memory allocating new item", out),
        _ => return server_error("out of memory", out),
    };
    if opaque_error {
        return client_error("opaque token too long", out);
    }
    out.extend_from_slice(code);
    meta::put_echo(reply, a.key.as_bytes(), None, out);
    out.extend_from_slice(b"\r\n");
}

/// The answer to a counter changed (or created): `HD` or `VA` with the flags in request
/// order, `t` showing the expiry as of where it stands.
fn answer(
    ctx: &Ctx<'_>,
    a: &MetaArith,
    reply: &MetaReply,
    ttls: Ttls,
    counted: &Counted,
    out: &mut BytesMut,
) {
    let Outcome::Number(n, version) = counted.outcome else {
        return;
    };
    let digits = n.to_string();
    meta::put_number_start(reply, &digits, out);
    let mut view = HitView {
        key: a.key.as_bytes(),
        value: digits.as_bytes(),
        flags: 0,
        exptime: counted.exptime_before,
        cas: version.0,
        last_access: ctx.now,
        fetched: false,
        now: ctx.now,
    };
    for r in &reply.rets {
        view.exptime = ttls.after(r, view.exptime, counted.created);
        // `ma` answers only these of `mg`'s return flags.
        if let Ret::Cas | Ret::Ttl | Ret::Opaque(_) | Ret::Key = r {
            meta::put_ret(reply, r, &view, out);
        }
    }
    meta::put_number_end(reply, &digits, out);
}
