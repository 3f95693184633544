//! The classic text protocol (and the line framing that meta commands share).
//!
//! Framing follows memcached: a command is one line ending in `\n` (a `\r` before it is
//! dropped); storage commands are followed by a data block of exactly the announced length
//! plus `\r\n`. Tokens are separated by spaces. Answers to malformed lines are memcached's own
//! words, because clients match on them.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::numbers::{strtol32, strtoul_u32, tok_i32, tok_u32, tok_u64};
use super::{meta, put_u64, Command, Invalid, Outcome, Reply};
use super::{Request, StoreMode};
use crate::key::{Key, MAX_KEY_LEN};
use crate::store::ItemRef;

/// The longest unterminated line memcached keeps waiting on: past it, anything but a
/// multi-key get closes the connection without a reply.
pub const MAX_LINE: usize = 2048;
/// Multi-key gets may be longer than [`MAX_LINE`] (memcached grows its buffer for them
/// without bound); this bounds what one connection can make us buffer.
pub const MAX_GET_LINE: usize = 1 << 20;
/// Past this many leading spaces a long line is not taken for a get (memcached's rule).
const MAX_GET_INDENT: usize = 100;

/// Decoding problems that end the connection without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// memcached closes a connection whose line passes [`MAX_LINE`] bytes without a
    /// newline (unless it is a get, which may run to [`MAX_GET_LINE`] here), silently.
    #[error("{len} bytes without a newline, over the {limit}-byte line limit")]
    LineTooLong { len: usize, limit: usize },
}

const BAD_FORMAT: Invalid = Invalid::Client("bad command line format");

fn text(command: Command, noreply: bool) -> Request {
    Request::new(command, Reply::Text { noreply })
}

fn invalid(inv: Invalid) -> Request {
    text(Command::Invalid(inv), false)
}

/// Splits a line into token ranges the way memcached does: on spaces (not tabs), skipping
/// empty tokens.
fn tokenize(line: &[u8], out: &mut Vec<Range<usize>>) {
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        if b == b' ' {
            if let Some(s) = start.take() {
                out.push(s..i);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(s..line.len());
    }
}

/// Decodes one request from the front of `buf`. `max_value` is the `-I` limit: larger data
/// blocks are not buffered but swallowed as they arrive.
pub fn decode(buf: &mut BytesMut, max_value: usize) -> Result<Option<Request>, TextError> {
    decode_from(buf, max_value, &mut 0)
}

/// [`decode`] for a connection that keeps `scanned`: how many leading bytes of `buf` are
/// known to hold no newline. A long line that arrives a few bytes at a time is then
/// searched once, not once per read. Reset it to 0 whenever a request is returned.
pub fn decode_from(
    buf: &mut BytesMut,
    max_value: usize,
    scanned: &mut usize,
) -> Result<Option<Request>, TextError> {
    let from = (*scanned).min(buf.len());
    let Some(nl) = memchr(b'\n', &buf[from..]).map(|i| i + from) else {
        *scanned = buf.len();
        // Decided on the bytes alone, so however the line arrives (whole or a byte at a
        // time) the outcome is the same once it passes MAX_LINE.
        if buf.len() > MAX_LINE {
            let limit = if is_get_line(buf) {
                MAX_GET_LINE
            } else {
                MAX_LINE
            };
            if buf.len() > limit {
                return Err(TextError::LineTooLong {
                    len: buf.len(),
                    limit,
                });
            }
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if is_meta(&buf[..line_end]) {
        return Ok(meta::decode(buf, nl, max_value)?);
    }
    let mut tokens = Vec::with_capacity(8);
    tokenize(&buf[..line_end], &mut tokens);
    let line = &buf[..line_end];
    // An empty line or a one-letter command is malformed, not unknown (1.6.45).
    if tokens.first().is_none_or(|t| t.len() < 2) {
        buf.advance_to(nl + 1);
        return Ok(Some(invalid(BAD_FORMAT)));
    }
    let mode = match &line[tokens[0].clone()] {
        b"set" => Some(StoreMode::Set),
        b"add" => Some(StoreMode::Add),
        b"replace" => Some(StoreMode::Replace),
        b"append" => Some(StoreMode::Append),
        b"prepend" => Some(StoreMode::Prepend),
        b"cas" => Some(StoreMode::Cas),
        _ => None,
    };
    if let Some(mode) = mode {
        return Ok(decode_storage(buf, nl, &tokens, mode, max_value));
    }
    let line = buf.split_to(nl + 1).freeze();
    let req = decode_line(&line, &tokens);
    // An unknown command ending in an HTTP version is a web request sent to the cache
    // port: hang up without a word, as memcached does.
    let n = tokens.len();
    if matches!(req.command, Command::Invalid(Invalid::Unknown))
        && n > 1
        && line[tokens[n - 1].clone()].starts_with(b"HTTP/")
    {
        let mut req = text(Command::Quit, true);
        req.close = true;
        return Ok(Some(req));
    }
    Ok(Some(req))
}

trait AdvanceTo {
    fn advance_to(&mut self, n: usize);
}

impl AdvanceTo for BytesMut {
    fn advance_to(&mut self, n: usize) {
        let _ = self.split_to(n);
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// memcached's test for a long line it keeps reading: `get ` or `gets ` after at most 100
/// spaces (not `gat`: memcached closes on a long gat line too).
fn is_get_line(buf: &[u8]) -> bool {
    let indent = buf.iter().take_while(|&&b| b == b' ').count();
    let trimmed = &buf[indent..];
    indent <= MAX_GET_INDENT && (trimmed.starts_with(b"get ") || trimmed.starts_with(b"gets "))
}

fn is_meta(line: &[u8]) -> bool {
    line.len() >= 2
        && line[0] == b'm'
        && matches!(line[1], b'g' | b's' | b'd' | b'a' | b'n' | b'e')
        && (line.len() == 2 || line[2] == b' ')
}

/// Whether the last token is `noreply` (memcached's `set_noreply_maybe`).
fn noreply(line: &[u8], tokens: &[Range<usize>]) -> bool {
    tokens
        .last()
        .is_some_and(|r| &line[r.clone()] == b"noreply")
}

/// A storage command: `<cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]`. As in
/// 1.6.45, a line with fewer tokens or a data length that is not a number in
/// `0..=INT_MAX-2` is malformed (answered even with `noreply`, which is only looked at
/// later) and has no data block; once the length parses, the data block is always read,
/// even when another token is bad (so it is never mistaken for a command); extra tokens
/// are ignored. Client flags and exptime are still read with C's `strtoul`/`strtol`.
fn decode_storage(
    buf: &mut BytesMut,
    nl: usize,
    tokens: &[Range<usize>],
    mode: StoreMode,
    max_value: usize,
) -> Option<Request> {
    let line = &buf[..nl];
    let tok = |i: usize| tokens.get(i).map(|r| &line[r.clone()]);
    let max_len = i32::MAX - 2;
    let Some(vlen) = tok(4)
        .and_then(tok_i32)
        .filter(|v| (0..=max_len).contains(v))
    else {
        buf.advance_to(nl + 1);
        return Some(invalid(BAD_FORMAT));
    };
    let nr = noreply(line, tokens);
    let vlen = vlen as usize;
    let key_tok = tokens[1].clone();
    let flags = tok(2).and_then(strtoul_u32);
    let exptime = tok(3).and_then(strtol32).map(i64::from);
    let cas = if mode == StoreMode::Cas {
        tok(5).and_then(tok_u64)
    } else {
        Some(0)
    };
    // memcached checks the key's length first, then the numbers; all are the same error.
    let valid =
        key_tok.len() <= MAX_KEY_LEN && flags.is_some() && exptime.is_some() && cas.is_some();
    if vlen > max_value {
        // Cannot be stored whatever the key: answer now and skip the data as it comes.
        let line = buf.split_to(nl + 1).freeze();
        let mut req = if valid {
            let key = Key::parse(line.slice(key_tok)).ok();
            text(Command::TooLarge { mode, key }, nr)
        } else {
            text(Command::Invalid(BAD_FORMAT), nr)
        };
        req.swallow = vlen + 2;
        return Some(req);
    }
    let total = nl + 1 + vlen + 2;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    let frame = buf.split_to(total).freeze();
    let (Some(flags), Some(exptime), Some(cas), Ok(key)) =
        (flags, exptime, cas, Key::parse(frame.slice(key_tok)))
    else {
        return Some(text(Command::Invalid(BAD_FORMAT), nr));
    };
    if &frame[total - 2..] != b"\r\n" {
        // memcached consumed vlen+2 bytes and found no CRLF at their end; so do we.
        return Some(text(
            Command::Invalid(Invalid::Client("bad data chunk")),
            nr,
        ));
    }
    let value = frame.slice(nl + 1..nl + 1 + vlen);
    Some(text(
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        },
        nr,
    ))
}

/// Every other command. Missing arguments are `CLIENT_ERROR bad command line format`;
/// extra arguments are ignored, and `noreply` counts only as the last token (1.6.45).
fn decode_line(line: &Bytes, tokens: &[Range<usize>]) -> Request {
    let tok = |i: usize| &line[tokens[i].clone()];
    let n = tokens.len();
    let nr = noreply(line, tokens);
    let key_at = |i: usize| Key::parse(line.slice(tokens[i].clone()));
    let bad = |nr| text(Command::Invalid(BAD_FORMAT), nr);
    match tok(0) {
        b"get" | b"gets" if n >= 2 => get(line, &tokens[1..], None, tok(0) == b"gets"),
        b"gat" | b"gats" if n >= 3 => match tok_i32(tok(1)) {
            Some(exptime) => get(
                line,
                &tokens[2..],
                Some(i64::from(exptime)),
                tok(0) == b"gats",
            ),
            None => invalid(Invalid::Client("invalid exptime argument")),
        },
        b"delete" if n >= 2 => {
            // Kept from 1.6.18 because memccapable checks it: an argument after the key
            // other than `0` or `noreply` is refused with a usage line.
            if n > 2 {
                let hold_zero = tok(2) == b"0";
                let valid = (n == 3 && (hold_zero || nr)) || (n == 4 && hold_zero && nr);
                if !valid {
                    if n > 4 {
                        return invalid(Invalid::Unknown);
                    }
                    let usage = "bad command line format.  Usage: delete <key> [noreply]";
                    return text(Command::Invalid(Invalid::Client(usage)), nr);
                }
            }
            match key_at(1) {
                Ok(key) => text(Command::Delete { key, cas: 0 }, nr),
                Err(_) => bad(nr),
            }
        }
        b"incr" | b"decr" if n >= 3 => {
            let Ok(key) = key_at(1) else { return bad(nr) };
            match tok_u64(tok(2)) {
                Some(delta) => {
                    let incr = tok(0) == b"incr";
                    text(
                        Command::Arith {
                            key,
                            incr,
                            delta,
                            initial: None,
                            cas: 0,
                        },
                        nr,
                    )
                }
                None => text(
                    Command::Invalid(Invalid::Client("invalid numeric delta argument")),
                    nr,
                ),
            }
        }
        b"touch" if n >= 3 => {
            let Ok(key) = key_at(1) else { return bad(nr) };
            match tok_i32(tok(2)) {
                Some(exptime) => text(
                    Command::Touch {
                        key,
                        exptime: i64::from(exptime),
                    },
                    nr,
                ),
                None => text(
                    Command::Invalid(Invalid::Client("invalid exptime argument")),
                    nr,
                ),
            }
        }
        b"flush_all" if n <= 3 => {
            let delay = if n == if nr { 2 } else { 1 } {
                0
            } else {
                match tok_i32(tok(1)) {
                    Some(d) => i64::from(d),
                    None => {
                        return text(
                            Command::Invalid(Invalid::Client("invalid exptime argument")),
                            nr,
                        )
                    }
                }
            };
            text(Command::Flush { delay }, nr)
        }
        // memcached ignores anything after `version` and `quit`.
        b"version" => text(Command::Version, false),
        b"verbosity" if n >= 2 => match tok_u32(tok(1)) {
            Some(_) => text(Command::Verbosity, nr),
            None => bad(nr),
        },
        b"stats" => {
            let group = (n >= 2).then(|| line.slice(tokens[1].start..tokens[n - 1].end));
            text(Command::Stats { group }, false)
        }
        b"quit" => {
            let mut req = text(Command::Quit, true);
            req.close = true;
            req
        }
        b"shutdown" => text(Command::Shutdown, false),
        // memcached ignores anything after it.
        b"refresh_certs" => text(Command::RefreshCerts, false),
        b"cluster" if n == 3 && tok(1) == b"forget" => {
            let name = line.slice(tokens[2].start..tokens[2].end);
            text(Command::ClusterForget { name }, false)
        }
        b"cluster" => invalid(Invalid::Client("usage: cluster forget <member name>")),
        // The crawler's other subcommands tune machinery meshcached does not have: they
        // stay unknown commands (tests/diff/text_admin.txt).
        b"lru_crawler" if n == 3 && tok(1) == b"metadump" => match dump_classes(tok(2)) {
            Some(items) => text(Command::MetaDump { items, resume: 0 }, false),
            None => invalid(Invalid::Raw("BADCLASS invalid class id")),
        },
        b"get" | b"gets" | b"gat" | b"gats" | b"delete" | b"incr" | b"decr" | b"touch"
        | b"verbosity" => bad(false),
        _ => invalid(Invalid::Unknown),
    }
}

/// memcached's class list of a crawl: `all`, `hash` (a walk of the hash table), or class
/// ids 1 to 63 separated by commas. Whether the list covers meshcached's single class, 1
/// (where `stats items` puts every item); `None` for a bad list.
fn dump_classes(arg: &[u8]) -> Option<bool> {
    if arg == b"all" || arg == b"hash" {
        return Some(true);
    }
    let mut items = false;
    for id in arg.split(|&b| b == b',') {
        match tok_u32(id) {
            Some(id @ 1..=63) => items |= id == 1,
            _ => return None,
        }
    }
    Some(items)
}

fn get(line: &Bytes, key_tokens: &[Range<usize>], touch: Option<i64>, cas: bool) -> Request {
    let mut keys = Vec::with_capacity(key_tokens.len());
    for r in key_tokens {
        match Key::parse(line.slice(r.clone())) {
            Ok(k) => keys.push(k),
            Err(_) => return invalid(BAD_FORMAT),
        }
    }
    text(Command::Get { keys, touch, cas }, false)
}

/// Writes the answer to a non-get command. `noreply` suppresses everything, errors
/// included, as memcached's `out_string` does.
pub fn encode(noreply: bool, outcome: &Outcome, out: &mut BytesMut) {
    if noreply {
        return;
    }
    let line: &[u8] = match outcome {
        Outcome::Stored(_) => b"STORED",
        Outcome::NotStored { .. } => b"NOT_STORED",
        Outcome::Exists => b"EXISTS",
        Outcome::NotFound => b"NOT_FOUND",
        Outcome::Deleted => b"DELETED",
        Outcome::Touched(_) => b"TOUCHED",
        Outcome::Number(n, _) => {
            put_u64(out, *n);
            b""
        }
        Outcome::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value",
        Outcome::TooLarge => b"SERVER_ERROR object too large for cache",
        Outcome::OutOfMemory => b"SERVER_ERROR out of memory storing object",
        Outcome::Ok => b"OK",
        Outcome::Version(v) => {
            out.extend_from_slice(b"VERSION ");
            v.as_bytes()
        }
        Outcome::Stats(stats) => {
            for (k, v) in stats {
                out.extend_from_slice(b"STAT ");
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b" ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            b"END"
        }
        Outcome::Invalid(Invalid::Unknown) => b"ERROR",
        Outcome::Invalid(Invalid::Client(m)) => {
            out.extend_from_slice(b"CLIENT_ERROR ");
            m.as_bytes()
        }
        Outcome::Invalid(Invalid::Server(m)) => {
            out.extend_from_slice(b"SERVER_ERROR ");
            m.as_bytes()
        }
        Outcome::Invalid(Invalid::Raw(m)) => m.as_bytes(),
        Outcome::Invalid(Invalid::Line(m)) => m.as_bytes(),
    };
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`
pub fn encode_hit(item: &ItemRef<'_>, with_cas: bool, out: &mut BytesMut) {
    out.reserve(item.key.len() + item.value.len() + 64);
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(item.key);
    out.extend_from_slice(b" ");
    put_u64(out, u64::from(item.flags));
    out.extend_from_slice(b" ");
    put_u64(out, item.value.len() as u64);
    if with_cas {
        out.extend_from_slice(b" ");
        put_u64(out, item.version.0);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(item.value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
