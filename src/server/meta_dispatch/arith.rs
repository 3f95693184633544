//! `ma`: meta arithmetic (incr/decr with auto-create, modes, CAS and TTL handling).

use super::*;

/// `ma`: incr/decr, optionally creating the counter (`N`, `J`) and touching it (`T`).
pub(super) fn arith(ctx: &mut Ctx<'_>, a: &MetaArith, reply: &MetaReply, out: &mut BytesMut) {
    let shared = ctx.shared;
    let hlc = &shared.hlc;
    let now = ctx.now;
    let vivify = a.vivify.map(|t| ctx.expiry(t));
    let touch = a.touch.map(|t| ctx.expiry(t));
    // memcached finds a long opaque only while writing the answer, after the change.
    let opaque_error = reply.opaque_too_long();
    let render = !reply.quiet && !opaque_error;
    let start = out.len();
    let mut creating = false;
    let c = &*ctx;
    let result = shared.store.mutate(a.key.as_bytes(), now, hlc, |cur| {
        let cur = cur.map(|i| c.visible(i));
        let (n, exptime, flags, bits, old_len) = match cur {
            None if vivify.is_some() => {
                creating = true;
                (a.initial, 0, 0, 0, 0)
            }
            None => return (Mutation::Keep, ArithResult::NotFound),
            Some(i) => {
                if i.value.is_empty() {
                    return (Mutation::Keep, ArithResult::NonNumeric);
                }
                if a.compare_cas
                    .is_some_and(|cas| cas != 0 && cas != i.version.0)
                {
                    return (Mutation::Keep, ArithResult::Exists);
                }
                let Some(n) = apply_delta(i.value, a.incr, a.delta) else {
                    return (Mutation::Keep, ArithResult::NonNumeric);
                };
                (n, i.exptime, i.flags, i.bits, i.value.len())
            }
        };
        let version = a.cas_in.map_or_else(|| hlc.tick(), Version);
        let digits = n.to_string();
        let mut exptime = exptime;
        if render {
            if reply.value {
                out.extend_from_slice(b"VA ");
                put_u64(out, digits.len() as u64);
            } else {
                out.extend_from_slice(b"HD");
            }
        }
        for r in &reply.rets {
            match r {
                Ret::Touch => exptime = touch.unwrap_or(exptime),
                Ret::Vivify if creating => exptime = vivify.unwrap_or(0),
                Ret::Cas if render => {
                    out.extend_from_slice(b" c");
                    put_u64(out, shown(c, version));
                }
                Ret::Ttl if render => {
                    out.extend_from_slice(b" t");
                    if exptime == 0 {
                        out.extend_from_slice(b"-1");
                    } else {
                        put_u64(out, u64::from(exptime.wrapping_sub(now)));
                    }
                }
                Ret::Opaque(_) | Ret::Key if render => {
                    meta::put_echo_one(reply.base64, r, a.key.as_bytes(), None, out)
                }
                _ => {}
            }
        }
        if render {
            if reply.value {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(digits.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        // A shorter result is rewritten in place, space-padded, keeping the item's state;
        // a longer one makes a new item.
        let in_place = !creating && digits.len() <= old_len;
        let value = if creating {
            digits.into_bytes()
        } else {
            counter_bytes(n, old_len)
        };
        let put = Put {
            value: NewValue::Owned(value),
            flags,
            exptime,
            bits: if in_place { bits } else { 0 },
            version: Some(version),
        };
        (Mutation::Put(put), ArithResult::Done { created: creating })
    });
    let (incr_hit, incr_miss) = if a.incr {
        (Counter::IncrHits, Counter::IncrMisses)
    } else {
        (Counter::DecrHits, Counter::DecrMisses)
    };
    let code: &[u8] = match result {
        Ok((ArithResult::Done { created }, _)) => {
            if !created {
                ctx.counters.bump(incr_hit);
            }
            if opaque_error {
                client_error("opaque token too long", out);
            }
            return;
        }
        Ok((ArithResult::NonNumeric, _)) => {
            return client_error("cannot increment or decrement non-numeric value", out)
        }
        Ok((ArithResult::NotFound, _)) => {
            ctx.counters.bump(incr_miss);
            b"NF"
        }
        Ok((ArithResult::Exists, _)) => b"EX",
        Err(_) => {
            out.truncate(start);
            return server_error(
                if creating {
                    "Out of memory allocating new item"
                } else {
                    "out of memory"
                },
                out,
            );
        }
    };
    if opaque_error {
        return client_error("opaque token too long", out);
    }
    out.extend_from_slice(code);
    meta::put_echo(reply, a.key.as_bytes(), None, out);
    out.extend_from_slice(b"\r\n");
}
