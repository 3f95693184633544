//! Pieces of meta answers: return flags, echoed opaque and key tokens, error lines.

use bytes::BytesMut;

use super::{flags, MetaReply, Ret};
use crate::protocol::{put_u64, text, Invalid, Outcome};

/// Appends ` k<key>`, base64-encoded with a ` b` flag for binary keys.
pub fn put_key(base64: bool, key: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(b" k");
    if base64 {
        let mut enc = Vec::with_capacity(key.len() * 4 / 3 + 4);
        flags::base64_encode(key, &mut enc);
        out.extend_from_slice(&enc);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

/// Appends the base64 form of `key` (for `me`).
pub fn put_base64(key: &[u8], out: &mut BytesMut) {
    let mut enc = Vec::with_capacity(key.len() * 4 / 3 + 4);
    flags::base64_encode(key, &mut enc);
    out.extend_from_slice(&enc);
}

/// Appends the `O` and `k` flags (and `c` when `cas` is given) in request order: what
/// `NF`, `EX`, `NS` and a plain `HD` carry.
pub fn put_echo(reply: &MetaReply, key: &[u8], cas: Option<u64>, out: &mut BytesMut) {
    for r in &reply.rets {
        put_echo_one(reply.base64, r, key, cas, out);
    }
}

/// [`put_echo`] for one flag, for answers that mix these with others.
pub fn put_echo_one(base64: bool, r: &Ret, key: &[u8], cas: Option<u64>, out: &mut BytesMut) {
    match r {
        Ret::Opaque(o) => {
            out.extend_from_slice(b" ");
            out.extend_from_slice(o);
        }
        Ret::Key => put_key(base64, key, out),
        Ret::Cas => {
            if let Some(cas) = cas {
                out.extend_from_slice(b" c");
                put_u64(out, cas);
            }
        }
        _ => {}
    }
}

/// Starts the answer to a counter `ma` changed: `VA <length>` when the value is asked for
/// (`v`), else `HD`. Its flags follow, then [`put_number_end`].
pub fn put_number_start(reply: &MetaReply, digits: &str, out: &mut BytesMut) {
    if reply.value {
        out.extend_from_slice(b"VA ");
        put_u64(out, digits.len() as u64);
    } else {
        out.extend_from_slice(b"HD");
    }
}

/// Ends the answer [`put_number_start`] began: the line end, then the number as a value
/// block when asked for.
pub fn put_number_end(reply: &MetaReply, digits: &str, out: &mut BytesMut) {
    out.extend_from_slice(b"\r\n");
    if reply.value {
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes an error line; errors are never quiet.
pub fn put_error(inv: &Invalid, out: &mut BytesMut) {
    text::encode(false, &Outcome::Invalid(inv.clone()), out);
}

/// The parts of an item a meta answer can show, at a given time.
#[derive(Debug, Clone, Copy)]
pub struct HitView<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    pub exptime: u32,
    pub cas: u64,
    pub last_access: u32,
    pub fetched: bool,
    /// Unix seconds to measure `t` and `l` from.
    pub now: u32,
}

/// Appends one value-showing return flag (`s t c f l h k O`); others write nothing.
pub fn put_ret(reply: &MetaReply, ret: &Ret, item: &HitView<'_>, out: &mut BytesMut) {
    match ret {
        Ret::Size => {
            out.extend_from_slice(b" s");
            put_u64(out, item.value.len() as u64);
        }
        Ret::Ttl => {
            out.extend_from_slice(b" t");
            if item.exptime == 0 {
                out.extend_from_slice(b"-1");
            } else {
                // memcached prints the unsigned difference, even when it is "negative".
                put_u64(out, u64::from(item.exptime.wrapping_sub(item.now)));
            }
        }
        Ret::Cas => {
            out.extend_from_slice(b" c");
            put_u64(out, item.cas);
        }
        Ret::ClientFlags => {
            out.extend_from_slice(b" f");
            put_u64(out, u64::from(item.flags));
        }
        Ret::LastAccess => {
            out.extend_from_slice(b" l");
            put_u64(out, u64::from(item.now.wrapping_sub(item.last_access)));
        }
        Ret::Hit => out.extend_from_slice(if item.fetched { b" h1" } else { b" h0" }),
        Ret::Key => put_key(reply.base64, item.key, out),
        Ret::Opaque(o) => {
            out.extend_from_slice(b" ");
            out.extend_from_slice(o);
        }
        Ret::Touch | Ret::Vivify | Ret::Recache => {}
    }
}
