//! The binary protocol (deprecated by memcached in 1.6, still served), as memcached 1.6 does it.
//!
//! A request is a 24-byte header (magic 0x80, opcode, key length, extras length, body
//! length, opaque, CAS) followed by extras, key and value. Like memcached's
//! `try_read_command_binary`, the decoder waits for header, extras and key, then validates
//! the lengths for the opcode; a value is only buffered when it can be stored, so a huge
//! declared body is never held in memory: it is skipped (`Request::swallow`) instead.
//!
//! memcached's behaviours kept on purpose, because clients depend on them:
//! - quiet variants write nothing on success (and get misses), but always write errors;
//! - a malformed request (wrong extras or key length for its opcode, key over 250 bytes,
//!   body over 1 GiB) is answered "Invalid arguments" and the connection closed; extras and
//!   key longer than the body is "Unknown command", then closed; a bad magic byte closes at
//!   once ([`BinError`]);
//! - TOUCH is served by the get path (a hit carries flags and CAS, but no value);
//! - VERBOSITY and the SASL opcodes get "Unknown command" (memcached 1.6 without SASL).
//!
//! One deliberate difference: memcached skips the *whole* body length after an unknown
//! opcode although it already consumed extras and key, and leaves the surplus body of STAT,
//! TOUCH and GAT requests to be parsed as a next request; both desynchronise the stream, so
//! here exactly the rest of the frame is skipped.

#[path = "binary_consts.rs"]
pub mod consts;

use bytes::{BufMut, Bytes, BytesMut};

use self::consts::*;
use super::{Command, Invalid, Outcome, Reply, Request, StoreMode};
use crate::key::{Key, MAX_KEY_LEN};
use crate::store::ItemRef;

/// memcached's ITEM_SIZE_MAX_UPPER_LIMIT: a larger declared body is refused outright.
const MAX_BODY: usize = 1 << 30;

const BAD_ARGS: Invalid = Invalid::Client("Invalid arguments");

/// Decoding problems that end the connection without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BinError {
    #[error("invalid magic byte {0:#04x} in a binary request")]
    BadMagic(u8),
}

/// How to write the answer to one binary request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinReply {
    /// The request's opcode, echoed in the response (a quiet one stays quiet).
    pub opcode: u8,
    /// Echoed unchanged.
    pub opaque: u32,
    /// A quiet variant: successes and get misses write nothing; errors are still written.
    pub quiet: bool,
    /// GETK/GATK and their quiet forms: hits and misses carry the key.
    pub with_key: bool,
}

struct Header {
    magic: u8,
    opcode: u8,
    keylen: usize,
    extlen: usize,
    bodylen: usize,
    opaque: u32,
    cas: u64,
}

impl Header {
    fn parse(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let [magic, opcode, k0, k1, extlen, _, _, _, b0, b1, b2, b3, o0, o1, o2, o3, cas @ ..] = *h;
        Some(Header {
            magic,
            opcode,
            keylen: usize::from(u16::from_be_bytes([k0, k1])),
            extlen: usize::from(extlen),
            bodylen: usize::try_from(u32::from_be_bytes([b0, b1, b2, b3])).unwrap_or(usize::MAX),
            opaque: u32::from_be_bytes([o0, o1, o2, o3]),
            cas: u64::from_be_bytes(cas),
        })
    }

    /// Header, extras and key: what memcached reads before it dispatches.
    fn head(&self) -> usize {
        HEADER_LEN + self.extlen + self.keylen
    }

    /// The lengths memcached's `dispatch_bin_command` accepts for a (non-quiet) opcode;
    /// `None` for opcodes it does not know.
    fn shape_ok(&self, base: u8) -> Option<bool> {
        let (k, e, b) = (self.keylen, self.extlen, self.bodylen);
        Some(match base {
            GET | GETK => e == 0 && k > 0 && b == k,
            GAT | GATK | TOUCH => e == 4 && k > 0,
            SET | ADD | REPLACE => e == 8 && k > 0 && b >= k + 8,
            APPEND | PREPEND => e == 0 && k > 0,
            DELETE => e == 0 && k > 0 && b == k,
            INCREMENT | DECREMENT => e == 20 && k > 0 && b == k + 20,
            FLUSH => k == 0 && b == e && (e == 0 || e == 4),
            NOOP | VERSION | QUIT | SASL_LIST_MECHS => k == 0 && e == 0 && b == 0,
            STAT => e == 0,
            SASL_AUTH | SASL_STEP => e == 0 && k > 0,
            _ => return None,
        })
    }
}

/// Decodes one request from the front of `buf`. `max_value` is the `-I` limit: a value
/// larger than it cannot be stored whatever its key, so it is refused as soon as the key has
/// arrived and skipped rather than buffered.
pub fn decode(buf: &mut BytesMut, max_value: usize) -> Result<Option<Request>, BinError> {
    let Some(h) = Header::parse(buf) else {
        return Ok(None);
    };
    if h.magic != REQUEST_MAGIC {
        return Err(BinError::BadMagic(h.magic));
    }
    let head = h.head();
    let (base, quiet) = unquiet(h.opcode);
    let reply = BinReply {
        opcode: h.opcode,
        opaque: h.opaque,
        quiet,
        with_key: matches!(base, GETK | GATK),
    };
    // memcached checks these on the header alone, before it looks at the opcode or waits
    // for the key, and closes after answering.
    if h.keylen + h.extlen > h.bodylen {
        return Ok(Some(fatal(buf, head, reply, Invalid::Unknown)));
    }
    if h.bodylen > MAX_BODY || h.keylen > MAX_KEY_LEN {
        return Ok(Some(fatal(buf, head, reply, BAD_ARGS)));
    }
    if h.shape_ok(base) == Some(false) {
        return Ok(Some(fatal(buf, head, reply, BAD_ARGS)));
    }
    if buf.len() < head {
        buf.reserve(head - buf.len());
        return Ok(None);
    }
    if let Some(mode) = store_mode(base) {
        return Ok(store(buf, &h, mode, reply, max_value));
    }
    let (frame, swallow) = take(buf, head, HEADER_LEN + h.bodylen);
    // `None` only if a length rule above and the key rules disagree.
    let (command, close) = match command(base, &h, &frame) {
        Some(c) => (c, base == QUIT),
        None => (Command::Invalid(BAD_ARGS), true),
    };
    Ok(Some(answer(command, reply, close, swallow)))
}

fn store_mode(base: u8) -> Option<StoreMode> {
    Some(match base {
        SET => StoreMode::Set,
        ADD => StoreMode::Add,
        REPLACE => StoreMode::Replace,
        APPEND => StoreMode::Append,
        PREPEND => StoreMode::Prepend,
        _ => return None,
    })
}

fn answer(command: Command, reply: BinReply, close: bool, swallow: usize) -> Request {
    Request {
        command,
        reply: Reply::Binary(reply),
        close,
        swallow,
    }
}

/// A request memcached answers and then closes on: only the header, extras and key are
/// consumed (what memcached had read); nothing after it matters.
/// Answers a malformed request; the connection closes after it, so whatever of its head has
/// arrived is dropped.
fn fatal(buf: &mut BytesMut, head: usize, reply: BinReply, inv: Invalid) -> Request {
    let _ = buf.split_to(head.min(buf.len()));
    answer(Command::Invalid(inv), reply, true, 0)
}

/// Splits off the frame if it has fully arrived; otherwise only its head, and the rest of
/// the body is to be skipped as it arrives.
fn take(buf: &mut BytesMut, head: usize, total: usize) -> (Bytes, usize) {
    if buf.len() >= total {
        (buf.split_to(total).freeze(), 0)
    } else {
        (buf.split_to(head).freeze(), total - head)
    }
}

fn key_bytes(frame: &Bytes, h: &Header) -> Option<Bytes> {
    let start = HEADER_LEN + h.extlen;
    let end = start + h.keylen;
    (end <= frame.len()).then(|| frame.slice(start..end))
}

fn key(frame: &Bytes, h: &Header) -> Option<Key> {
    Key::binary(key_bytes(frame, h)?).ok()
}

/// The extras as big-endian words (the lengths were validated for the opcode).
fn ext_u32(frame: &[u8], at: usize) -> u32 {
    let at = HEADER_LEN + at;
    frame
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn ext_u64(frame: &[u8], at: usize) -> u64 {
    let at = HEADER_LEN + at;
    frame
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Storage requests: the value is buffered only if it may be stored.
fn store(
    buf: &mut BytesMut,
    h: &Header,
    mode: StoreMode,
    reply: BinReply,
    max_value: usize,
) -> Option<Request> {
    let head = h.head();
    let total = HEADER_LEN + h.bodylen;
    let vlen = total - head;
    if vlen > max_value {
        // memcached answers E2BIG and swallows the value (a set also drops the old item).
        let (frame, swallow) = take(buf, head, total);
        let key = key(&frame, h);
        return Some(answer(
            Command::TooLarge { mode, key },
            reply,
            false,
            swallow,
        ));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    let frame = buf.split_to(total).freeze();
    let Some(key) = key(&frame, h) else {
        return Some(answer(Command::Invalid(BAD_ARGS), reply, true, 0));
    };
    // Append and prepend carry no extras; memcached ignores flags and expiry for them.
    let (flags, exptime) = match h.extlen {
        8 => (ext_u32(&frame, 0), i64::from(ext_u32(&frame, 4))),
        _ => (0, 0),
    };
    let value = frame.slice(head..total);
    // A nonzero CAS is a condition: memcached turns set/add/replace into NREAD_CAS and
    // checks it on append/prepend against an item that exists; the dispatcher applies
    // that rule.
    let cas = h.cas;
    Some(answer(
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        },
        reply,
        false,
        0,
    ))
}

/// Every non-storage opcode; `None` when a key the opcode needs is invalid.
fn command(base: u8, h: &Header, frame: &Bytes) -> Option<Command> {
    // Binary expiry times are unsigned 32-bit, so never negative.
    let exptime = |at| i64::from(ext_u32(frame, at));
    Some(match base {
        GET | GETK => Command::Get {
            keys: vec![key(frame, h)?],
            touch: None,
            cas: true,
        },
        // TOUCH answers like a GAT hit without the value, as memcached's
        // `process_bin_get_or_touch` does, so it takes the get path.
        GAT | GATK | TOUCH => Command::Get {
            keys: vec![key(frame, h)?],
            touch: Some(exptime(0)),
            cas: true,
        },
        DELETE => Command::Delete {
            key: key(frame, h)?,
            cas: h.cas,
        },
        INCREMENT | DECREMENT => {
            let expiry = ext_u32(frame, 16);
            Command::Arith {
                key: key(frame, h)?,
                incr: base == INCREMENT,
                delta: ext_u64(frame, 0),
                // An expiration of all ones means "fail on a miss" rather than create.
                initial: (expiry != u32::MAX).then(|| (ext_u64(frame, 8), i64::from(expiry))),
                cas: h.cas,
            }
        }
        FLUSH => Command::Flush {
            delay: if h.extlen == 4 { exptime(0) } else { 0 },
        },
        NOOP => Command::Noop,
        VERSION => Command::Version,
        QUIT => Command::Quit,
        STAT => Command::Stats {
            group: key_bytes(frame, h).filter(|g| !g.is_empty()),
        },
        _ => Command::Invalid(Invalid::Unknown),
    })
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// memcached's `add_bin_header`.
fn put_header(
    out: &mut BytesMut,
    r: &BinReply,
    status: u16,
    extlen: u8,
    keylen: usize,
    bodylen: usize,
    cas: u64,
) {
    out.reserve(HEADER_LEN + bodylen);
    out.put_u8(RESPONSE_MAGIC);
    out.put_u8(r.opcode);
    out.put_u16(len16(keylen));
    out.put_u8(extlen);
    out.put_u8(0); // data type: raw bytes
    out.put_u16(status);
    out.put_u32(len32(bodylen));
    out.put_u32(r.opaque);
    out.put_u64(cas);
}

/// A success without extras or key; quiet requests write nothing.
fn success(out: &mut BytesMut, r: &BinReply, cas: u64, body: &[u8]) {
    if !r.quiet {
        put_header(out, r, SUCCESS, 0, 0, body.len(), cas);
        out.extend_from_slice(body);
    }
}

/// memcached's `write_bin_error`: written even for quiet requests, CAS 0.
fn error(out: &mut BytesMut, r: &BinReply, status: u16, text: &str) {
    put_header(out, r, status, 0, 0, text.len(), 0);
    out.extend_from_slice(text.as_bytes());
}

fn error_std(out: &mut BytesMut, r: &BinReply, status: u16) {
    error(out, r, status, message(status));
}

/// A write whose answer was held for its peers' acknowledgement and timed out: ETMPFAIL
/// with `text`, written for a quiet request too (quiet hides successes, never errors).
pub fn encode_ack_timeout(r: &BinReply, text: &str, out: &mut BytesMut) {
    error(out, r, ETMPFAIL, text);
}

/// One stats entry (`append_bin_stats`); an empty name and value end the list.
fn stat(out: &mut BytesMut, r: &BinReply, name: &[u8], value: &[u8]) {
    put_header(out, r, SUCCESS, 0, name.len(), name.len() + value.len(), 0);
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Writes the answer to a non-get request (get-family hits and misses go through
/// [`encode_hit`] and [`encode_miss`]).
pub fn encode(r: &BinReply, outcome: &Outcome, out: &mut BytesMut) {
    let (base, _) = unquiet(r.opcode);
    match outcome {
        Outcome::Stored(v) | Outcome::Touched(v) => success(out, r, v.0, &[]),
        Outcome::Deleted | Outcome::Ok => success(out, r, 0, &[]),
        // incr/decr: the new value as an 8-byte body, no extras.
        Outcome::Number(n, v) => success(out, r, v.0, &n.to_be_bytes()),
        Outcome::Version(s) => success(out, r, 0, s.as_bytes()),
        Outcome::Stats(stats) => {
            for (name, value) in stats {
                stat(out, r, name.as_bytes(), value.as_bytes());
            }
            stat(out, r, &[], &[]);
        }
        // `complete_update_bin`: a refused add is EEXISTS, replace ENOENT, others NOT_STORED.
        Outcome::NotStored { exists } => {
            let status = match base {
                ADD => KEY_EEXISTS,
                REPLACE => KEY_ENOENT,
                _ if *exists => KEY_EEXISTS,
                _ => NOT_STORED,
            };
            error_std(out, r, status);
        }
        Outcome::Exists => error_std(out, r, KEY_EEXISTS),
        // A quiet get-family miss is silent, like `encode_miss`.
        Outcome::NotFound if r.quiet && matches!(base, GET | GETK | GAT | GATK) => {}
        Outcome::NotFound => error_std(out, r, KEY_ENOENT),
        Outcome::NonNumeric => error_std(out, r, DELTA_BADVAL),
        Outcome::TooLarge => error_std(out, r, E2BIG),
        // memcached's `out_of_memory` texts, without the text protocol's prefix.
        Outcome::OutOfMemory => {
            let text = match base {
                SET | ADD | REPLACE | APPEND | PREPEND => "Out of memory allocating item",
                INCREMENT | DECREMENT => "Out of memory incrementing value",
                _ => message(ENOMEM),
            };
            error(out, r, ENOMEM, text);
        }
        Outcome::Invalid(inv) => match (base, inv) {
            // Unknown stats group: ENOENT; `stats reset` ("RESET" in text): just the end.
            (STAT, Invalid::Unknown) => error_std(out, r, KEY_ENOENT),
            (STAT, Invalid::Raw(_)) => stat(out, r, &[], &[]),
            // flush_all disabled (`-F`): memcached answers AUTH_ERROR.
            (FLUSH, Invalid::Client(_)) => error_std(out, r, AUTH_ERROR),
            (_, Invalid::Client(_)) => error_std(out, r, EINVAL),
            (_, Invalid::Server(text)) => error(out, r, ENOMEM, text),
            (_, Invalid::Unknown | Invalid::Raw(_) | Invalid::Line(_)) => {
                error_std(out, r, UNKNOWN_COMMAND)
            }
        },
    }
}

/// A get-family hit: 4 bytes of flags as extras, the key for GETK/GATK, the value (none
/// for TOUCH) and the item's CAS. Written for quiet requests too.
pub fn encode_hit(r: &BinReply, item: &ItemRef<'_>, out: &mut BytesMut) {
    let key: &[u8] = if r.with_key { item.key } else { &[] };
    let value: &[u8] = if r.opcode == TOUCH { &[] } else { item.value };
    put_header(
        out,
        r,
        SUCCESS,
        4,
        key.len(),
        4 + key.len() + value.len(),
        item.version.0,
    );
    out.put_u32(item.flags);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// A get-family miss: nothing when quiet; GETK/GATK answer ENOENT with the key as the only
/// body (no text), the others ENOENT "Not found".
pub fn encode_miss(r: &BinReply, key: &Key, out: &mut BytesMut) {
    if r.quiet {
        return;
    }
    if r.with_key {
        let key = key.as_bytes();
        put_header(out, r, KEY_ENOENT, 0, key.len(), key.len(), 0);
        out.extend_from_slice(key);
    } else {
        error_std(out, r, KEY_ENOENT);
    }
}

#[cfg(test)]
mod tests;
