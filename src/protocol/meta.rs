//! The meta protocol (`mg`, `ms`, `md`, `ma`, `me`, `mn`), as memcached 1.6.45 speaks it.
//!
//! A meta line is a two-letter command, a key and single-letter flags, some with a token
//! glued on (`T30`, `Oabc`). The decoder turns it into a [`MetaCommand`] (what to do) and a
//! [`MetaReply`] (how to answer: quiet mode, base64 keys, and the return flags in request
//! order, because memcached answers them in that order and applies `T`/`N`/`R` where they
//! stand relative to `t`). Malformed lines become [`Command::Invalid`] with memcached's
//! exact `CLIENT_ERROR` wording; the line parsing rules themselves live in `flags`.
//!
//! Like every decoder here, [`decode`] consumes nothing when it returns `Ok(None)`. An `ms`
//! whose data block cannot be stored is answered at once and its data swallowed by the
//! connection, so a huge value is never buffered.

mod flags;
mod render;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

use super::{text, Command, Invalid, Outcome, Reply, Request, StoreMode};
use crate::key::Key;
pub use flags::{base64_decode, MAX_OPAQUE};
use flags::{KeySource, RetToken, BAD_FORMAT};
pub use render::{
    put_base64, put_echo, put_echo_one, put_error, put_key, put_number_end, put_number_start,
    put_ret, HitView,
};

/// Decoding problems that would end the connection. memcached answers every malformed meta
/// line and carries on, so there are none; the type exists for the text decoder's sake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {}

/// A flag answered (or applied) where it stands in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// `s`: value length.
    Size,
    /// `t`: seconds to live, -1 for never.
    Ttl,
    /// `c`: CAS.
    Cas,
    /// `f`: client flags.
    ClientFlags,
    /// `l`: seconds since the last access.
    LastAccess,
    /// `h`: whether it had been fetched before.
    Hit,
    /// `k`: the key (base64 and a ` b` flag for binary keys).
    Key,
    /// `O...`: echoed verbatim; the whole token, `O` included.
    Opaque(Bytes),
    /// `T`: the new TTL takes effect here (a `t` before it shows the old one).
    Touch,
    /// `N`: where an auto-vivified item gets its TTL.
    Vivify,
    /// `R`: where the recache condition is tested.
    Recache,
}

/// How a meta command is answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaReply {
    /// `q`: leave out the nominal answer (`EN` for mg, `HD` for ms/md/ma). Errors always go.
    pub quiet: bool,
    /// `v`: answer with the value (`VA`).
    pub value: bool,
    /// `b`: the key was base64 and is returned that way.
    pub base64: bool,
    /// The key, for `k`.
    pub key: Option<Key>,
    /// Return and order-dependent flags, in request order.
    pub rets: Vec<Ret>,
}

impl MetaReply {
    /// Whether an opaque token is longer than memcached accepts.
    pub fn opaque_too_long(&self) -> bool {
        self.rets
            .iter()
            .any(|r| matches!(r, Ret::Opaque(o) if o.len() > MAX_OPAQUE))
    }
}

/// `mg`. TTLs are raw (memcached exptime form); the dispatcher resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaGet {
    pub key: Key,
    /// `T`: new TTL.
    pub touch: Option<i64>,
    /// `N`: create an empty item with this TTL on a miss, and win it.
    pub vivify: Option<i64>,
    /// `R`: win a recache if the TTL left is below this.
    pub recache: Option<i64>,
    /// `u`: do not count this as an access.
    pub no_bump: bool,
    /// `C`: the client's copy has this CAS; when it is the item's, `v` sends no value.
    pub compare_cas: Option<u64>,
    /// `E`: CAS for an item this command creates or changes.
    pub cas_in: Option<u64>,
}

/// `ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaSet {
    pub key: Key,
    /// `None`: the value is larger than the item limit (and is being swallowed).
    pub value: Option<Bytes>,
    /// `M`: set, add, replace, append or prepend (never [`StoreMode::Cas`]).
    pub mode: StoreMode,
    /// `F`.
    pub flags: u32,
    /// `T`, 0 when absent.
    pub exptime: i64,
    /// `C`.
    pub compare_cas: Option<u64>,
    /// `E`.
    pub cas_in: Option<u64>,
    /// `I`: with `C`, a CAS older than the item's stores the value as stale.
    pub invalidate: bool,
    /// `N`: append/prepend create the item with this TTL when it is missing.
    pub vivify: Option<i64>,
}

/// `md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaDelete {
    pub key: Key,
    pub compare_cas: Option<u64>,
    pub cas_in: Option<u64>,
    /// `I`: mark stale (and bump CAS) instead of removing.
    pub invalidate: bool,
    /// `x`: replace the value with an empty one, keeping the item.
    pub remove_value: bool,
    /// `T`: new TTL (with `I` or `x`).
    pub exptime: Option<i64>,
    /// `F`: client flags of the item `x` leaves.
    pub flags: u32,
}

/// `ma`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaArith {
    pub key: Key,
    pub incr: bool,
    /// `D`, 1 by default.
    pub delta: u64,
    /// `J`: the value an auto-created counter starts at.
    pub initial: u64,
    /// `N`: create on a miss, with this TTL.
    pub vivify: Option<i64>,
    /// `T`.
    pub touch: Option<i64>,
    pub compare_cas: Option<u64>,
    pub cas_in: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCommand {
    Get(MetaGet),
    Set(MetaSet),
    Delete(MetaDelete),
    Arith(MetaArith),
    /// `me`: the debug line for a key.
    Debug(Key),
    /// `mn`.
    Noop,
}

fn request(command: MetaCommand, reply: MetaReply) -> Request {
    Request::new(Command::Meta(command), Reply::Meta(reply))
}

fn error(msg: &'static str, swallow: usize) -> Request {
    let mut req = Request::new(
        Command::Invalid(Invalid::Client(msg)),
        Reply::Meta(MetaReply::default()),
    );
    req.swallow = swallow;
    req
}

/// Decodes the meta command whose line ends with the `\n` at `nl`. `max_value` is the `-I`
/// limit: an `ms` data block larger than that is not buffered but swallowed.
pub fn decode(
    buf: &mut BytesMut,
    nl: usize,
    max_value: usize,
) -> Result<Option<Request>, MetaError> {
    // memcached wants at least "mX\r\n" worth of bytes (a bare "mn\n" is too short).
    if nl + 1 < 4 || buf.len() < 2 {
        let _ = buf.split_to(nl + 1);
        return Ok(Some(error(BAD_FORMAT, 0)));
    }
    let content_end = if buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    match buf[1] {
        b'n' => {
            let _ = buf.split_to(nl + 1);
            Ok(Some(request(MetaCommand::Noop, MetaReply::default())))
        }
        b's' => Ok(decode_set(buf, nl, content_end, max_value)),
        cmd => {
            let line = buf.split_to(nl + 1).freeze();
            Ok(Some(decode_line(&line, content_end, cmd)))
        }
    }
}

/// The key of a parsed line, checked against the key rules.
fn key_of(line: &Bytes, source: &KeySource) -> Result<Key, &'static str> {
    let key = match source {
        KeySource::Plain(r) => Key::parse(line.slice(r.clone())),
        KeySource::Decoded(k) => Key::binary(Bytes::copy_from_slice(k)),
    };
    key.map_err(|_| BAD_FORMAT)
}

fn reply_of(line: &Bytes, f: &flags::Flags, key: &Key) -> MetaReply {
    let rets = f
        .rets
        .iter()
        .map(|r| match r {
            RetToken::Size => Ret::Size,
            RetToken::Ttl => Ret::Ttl,
            RetToken::Cas => Ret::Cas,
            RetToken::ClientFlags => Ret::ClientFlags,
            RetToken::LastAccess => Ret::LastAccess,
            RetToken::Hit => Ret::Hit,
            RetToken::Key => Ret::Key,
            RetToken::Opaque(o) => Ret::Opaque(line.slice(o.clone())),
            RetToken::Touch => Ret::Touch,
            RetToken::Vivify => Ret::Vivify,
            RetToken::Recache => Ret::Recache,
        })
        .collect();
    MetaReply {
        quiet: f.quiet,
        value: f.value,
        base64: f.base64,
        key: Some(key.clone()),
        rets,
    }
}

/// `mg`, `md`, `ma` and `me`: everything is on the line.
fn decode_line(line: &Bytes, content_end: usize, cmd: u8) -> Request {
    let Some(tokens) = flags::tokenize(&line[..content_end], 2) else {
        return error(BAD_FORMAT, 0);
    };
    if tokens.len() < 2 {
        return error(BAD_FORMAT, 0);
    }
    if cmd == b'e' {
        return decode_debug(line, &tokens);
    }
    let f = match flags::preparse(line, &tokens, 2) {
        Ok(f) => f,
        // ma reports every flag problem the same way.
        Err(_) if cmd == b'a' => return error("invalid or duplicate flag", 0),
        Err(e) => return error(e, 0),
    };
    let incr = match (cmd, f.mode) {
        (b'a', None | Some(b'I' | b'+')) => true,
        (b'a', Some(b'D' | b'-')) => false,
        (b'a', Some(_)) => return error("invalid mode for ma M token", 0),
        _ => true,
    };
    let key = match key_of(line, &f.key) {
        Ok(k) => k,
        Err(e) => return error(e, 0),
    };
    let reply = reply_of(line, &f, &key);
    let command = match cmd {
        b'g' => MetaCommand::Get(MetaGet {
            key,
            touch: f.touch,
            vivify: f.vivify,
            recache: f.recache,
            no_bump: f.no_update,
            compare_cas: f.compare_cas,
            cas_in: f.cas_in,
        }),
        b'd' => MetaCommand::Delete(MetaDelete {
            key,
            compare_cas: f.compare_cas,
            cas_in: f.cas_in,
            invalidate: f.stale,
            remove_value: f.remove_value,
            exptime: f.touch,
            flags: f.client_flags,
        }),
        _ => MetaCommand::Arith(MetaArith {
            key,
            incr,
            delta: f.delta,
            initial: f.initial,
            vivify: f.vivify,
            touch: f.touch,
            compare_cas: f.compare_cas,
            cas_in: f.cas_in,
        }),
    };
    request(command, reply)
}

/// `me <key> [b]`. memcached only decodes a base64 key when a fourth token follows the `b`
/// (its check counts tokens the way its old tokenizer did); so do we.
fn decode_debug(line: &Bytes, tokens: &[std::ops::Range<usize>]) -> Request {
    let key_range = tokens[1].clone();
    if key_range.len() > crate::key::MAX_KEY_LEN {
        return error(BAD_FORMAT, 0);
    }
    let base64 = tokens.len() >= 4 && &line[tokens[2].clone()] == b"b";
    let key = if base64 {
        match base64_decode(&line[key_range]) {
            Some(k) => Key::binary(Bytes::from(k)),
            None => return error(BAD_FORMAT, 0),
        }
    } else {
        Key::parse(line.slice(key_range))
    };
    match key {
        Ok(key) => request(
            MetaCommand::Debug(key.clone()),
            MetaReply {
                base64,
                key: Some(key),
                ..MetaReply::default()
            },
        ),
        Err(_) => error(BAD_FORMAT, 0),
    }
}

/// `ms <key> <datalen> <flags>*`, then the data block.
fn decode_set(
    buf: &mut BytesMut,
    nl: usize,
    content_end: usize,
    max_value: usize,
) -> Option<Request> {
    let consume_line = |buf: &mut BytesMut| {
        let _ = buf.split_to(nl + 1);
    };
    // Until the data length is known nothing can be swallowed: the data block, if any,
    // will be read as commands, as memcached does.
    let tokens = match flags::tokenize(&buf[..content_end], 3) {
        Some(t) if t.len() >= 3 => t,
        _ => {
            consume_line(buf);
            return Some(error(BAD_FORMAT, 0));
        }
    };
    let vlen = match crate::protocol::numbers::tok_i32(&buf[tokens[2].clone()]) {
        Some(v) if (0..=i32::MAX - 2).contains(&v) => v as usize,
        _ => {
            consume_line(buf);
            return Some(error(BAD_FORMAT, 0));
        }
    };
    let data = vlen + 2;
    let f = match flags::preparse(&buf[..=nl], &tokens, 3) {
        Ok(f) => f,
        Err(e) => {
            consume_line(buf);
            return Some(error(e, data));
        }
    };
    let mode = match f.mode {
        None | Some(b'S') => StoreMode::Set,
        Some(b'E') => StoreMode::Add,
        Some(b'A') => StoreMode::Append,
        Some(b'P') => StoreMode::Prepend,
        Some(b'R') => StoreMode::Replace,
        Some(_) => {
            consume_line(buf);
            return Some(error("invalid mode for ms M token", data));
        }
    };
    let total = nl + 1 + data;
    if vlen <= max_value && buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    let too_large = vlen > max_value;
    let frame = if too_large {
        buf.split_to(nl + 1).freeze()
    } else {
        buf.split_to(total).freeze()
    };
    let swallow = if too_large { data } else { 0 };
    let key = match key_of(&frame, &f.key) {
        Ok(k) => k,
        Err(e) => return Some(error(e, swallow)),
    };
    let reply = reply_of(&frame, &f, &key);
    let value = if too_large {
        None
    } else {
        // memcached checks these once the item is allocated, before reading the data.
        if reply.opaque_too_long() {
            return Some(error("opaque token too long", 0));
        }
        if &frame[total - 2..] != b"\r\n" {
            return Some(error("bad data chunk", 0));
        }
        Some(frame.slice(nl + 1..nl + 1 + vlen))
    };
    let mut req = request(
        MetaCommand::Set(MetaSet {
            key,
            value,
            mode,
            flags: f.client_flags,
            exptime: f.touch.unwrap_or(0),
            compare_cas: f.compare_cas,
            cas_in: f.cas_in,
            invalidate: f.stale,
            vivify: f.vivify,
        }),
        reply,
    );
    req.swallow = swallow;
    Some(req)
}

/// Writes the answer to a meta command from a dialect-neutral outcome. The meta dispatcher
/// writes most answers itself (they depend on the item); this covers errors and the plain
/// status codes.
pub fn encode(reply: &MetaReply, outcome: &Outcome, out: &mut BytesMut) {
    let key = reply.key.as_ref().map_or(&[][..], |k| k.as_bytes());
    let (code, cas): (&[u8], Option<u64>) = match outcome {
        Outcome::Stored(v) | Outcome::Touched(v) => (b"HD", Some(v.0)),
        Outcome::Deleted | Outcome::Ok => (b"HD", None),
        Outcome::NotStored { .. } => (b"NS", None),
        Outcome::Exists => (b"EX", None),
        Outcome::NotFound => (b"NF", None),
        Outcome::Number(n, v) => {
            if reply.quiet {
                return;
            }
            let digits = n.to_string();
            put_number_start(reply, &digits, out);
            put_echo(reply, key, Some(v.0), out);
            put_number_end(reply, &digits, out);
            return;
        }
        Outcome::Invalid(inv) => return put_error(inv, out),
        other => return text::encode(false, other, out),
    };
    if reply.quiet && code == b"HD" {
        return;
    }
    out.extend_from_slice(code);
    put_echo(reply, key, cas, out);
    out.extend_from_slice(b"\r\n");
}

/// Writes an `mg` miss: `EN` with the `O` and `k` flags, nothing when quiet.
pub fn encode_miss(reply: &MetaReply, key: &Key, out: &mut BytesMut) {
    if reply.quiet {
        return;
    }
    out.extend_from_slice(b"EN");
    put_echo(reply, key.as_bytes(), None, out);
    out.extend_from_slice(b"\r\n");
}
