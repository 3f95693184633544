//! Meta request lines as memcached 1.6.45 reads them: its tokenizer, its flag pre-parse and
//! its number rules (mcmc's strict converters, see `numbers`), so that odd input gets the
//! same answer.
//!
//! Everything here works on the undecoded line (`&[u8]`, offsets into it), so that the
//! decoder can look at a line without consuming it.

use std::ops::Range;

use crate::protocol::numbers::{tok_i32, tok_u32, tok_u64};

/// memcached's tokenizer keeps at most this many tokens (`MCMC_PARSER_MAX_TOKENS - 1`);
/// whatever follows the last one is ignored.
const MAX_TOKENS: usize = 23;
/// More tokens than this is "options flags are too long" (`MFLAG_MAX_OPT_LENGTH`).
const MAX_FLAG_TOKENS: usize = 20;
/// The longest opaque token, `O` included (`MFLAG_MAX_OPAQUE_LENGTH`).
pub const MAX_OPAQUE: usize = 32;

pub const BAD_FORMAT: &str = "bad command line format";
const BAD_TOKEN: &str = "bad token in command line format";

/// Splits a line (without its terminator) on spaces, like memcached's meta tokenizer:
/// tokens from index `mstart` on are flags and must start with a letter (or one of
/// ``[\]^_` ``) or a digit, otherwise the whole line is malformed (`None`).
pub fn tokenize(line: &[u8], mstart: usize) -> Option<Vec<Range<usize>>> {
    let mut tokens = Vec::with_capacity(8);
    let mut i = 0;
    while i < line.len() {
        if line[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        let c = line[i];
        if tokens.len() >= mstart && !(65..123).contains(&c) && !c.is_ascii_digit() {
            return None;
        }
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        tokens.push(start..i);
        if tokens.len() == MAX_TOKENS {
            break;
        }
    }
    Some(tokens)
}

/// A key as found on the line: the token itself, or its base64 decoding (`b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Plain(Range<usize>),
    Decoded(Vec<u8>),
}

/// A flag whose place in the request matters: return flags are answered in request order,
/// and `T`/`N`/`R` take effect where they stand relative to `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetToken {
    Size,
    Ttl,
    Cas,
    ClientFlags,
    LastAccess,
    Hit,
    Key,
    Opaque(Range<usize>),
    Touch,
    Vivify,
    Recache,
}

/// Every flag of a meta request (memcached's `struct _meta_flags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub key: KeySource,
    pub base64: bool,
    pub vivify: Option<i64>,
    pub touch: Option<i64>,
    pub recache: Option<i64>,
    pub value: bool,
    pub quiet: bool,
    pub no_update: bool,
    pub remove_value: bool,
    pub stale: bool,
    pub client_flags: u32,
    pub compare_cas: Option<u64>,
    pub cas_in: Option<u64>,
    /// The byte after `M`, whatever it is (memcached reads exactly one).
    pub mode: Option<u8>,
    pub initial: u64,
    pub delta: u64,
    pub rets: Vec<RetToken>,
}

/// A flag's numeric argument (`mcmc_token_get_flag_arg_*`): a flag alone has none.
fn num_i32(arg: &[u8]) -> Option<i32> {
    (!arg.is_empty()).then(|| tok_i32(arg)).flatten()
}

fn num_u32(arg: &[u8]) -> Option<u32> {
    (!arg.is_empty()).then(|| tok_u32(arg)).flatten()
}

fn num_u64(arg: &[u8]) -> Option<u64> {
    (!arg.is_empty()).then(|| tok_u64(arg)).flatten()
}

/// memcached's `_meta_flag_preparse`: flags start at token `start`; `line` is the whole
/// line including its terminator. Errors are `CLIENT_ERROR` messages.
pub fn preparse(line: &[u8], tokens: &[Range<usize>], start: usize) -> Result<Flags, &'static str> {
    let key = tokens[1].clone();
    if key.len() > crate::key::MAX_KEY_LEN {
        return Err(BAD_FORMAT);
    }
    if tokens.len() > MAX_FLAG_TOKENS {
        return Err("options flags are too long");
    }
    let mut f = Flags {
        key: KeySource::Plain(key.clone()),
        base64: false,
        vivify: None,
        touch: None,
        recache: None,
        value: false,
        quiet: false,
        no_update: false,
        remove_value: false,
        stale: false,
        client_flags: 0,
        compare_cas: None,
        cas_in: None,
        mode: None,
        initial: 0,
        delta: 1,
        rets: Vec::new(),
    };
    // Errors after which memcached goes on looking at flags (a later one may replace the
    // message); unknown and repeated flags stop it at once.
    let mut error: Option<&'static str> = None;
    let mut seen = [false; 128];
    for tok in &tokens[start.min(tokens.len())..] {
        let o = line[tok.start];
        if o >= 127 || seen[usize::from(o)] {
            return Err("duplicate flag");
        }
        seen[usize::from(o)] = true;
        // A flag's argument is the rest of its token; 1.6.45 reads numbers in it with
        // mcmc's strict converters, and a flag with no argument has no number.
        let arg = &line[tok.start + 1..tok.end];
        match o {
            b'b' => {
                match base64_decode(&line[key.clone()]) {
                    Some(k) => f.key = KeySource::Decoded(k),
                    None => error = Some("error decoding key"),
                }
                f.base64 = true;
            }
            b'N' | b'T' | b'R' => match num_i32(arg) {
                Some(n) => {
                    let n = Some(i64::from(n));
                    let ret = match o {
                        b'N' => {
                            f.vivify = n;
                            RetToken::Vivify
                        }
                        b'T' => {
                            f.touch = n;
                            RetToken::Touch
                        }
                        _ => {
                            f.recache = n;
                            RetToken::Recache
                        }
                    };
                    f.rets.push(ret);
                }
                None => error = Some(BAD_TOKEN),
            },
            b'l' => f.rets.push(RetToken::LastAccess),
            b'h' => f.rets.push(RetToken::Hit),
            b's' => f.rets.push(RetToken::Size),
            b't' => f.rets.push(RetToken::Ttl),
            b'c' => f.rets.push(RetToken::Cas),
            b'f' => f.rets.push(RetToken::ClientFlags),
            b'k' => f.rets.push(RetToken::Key),
            b'O' => f.rets.push(RetToken::Opaque(tok.clone())),
            b'P' | b'L' => {}
            b'v' => f.value = true,
            b'u' => f.no_update = true,
            b'q' => f.quiet = true,
            b'x' => f.remove_value = true,
            b'I' => f.stale = true,
            // A bad client flags token keeps the default message.
            b'F' => match num_u32(arg) {
                Some(n) => f.client_flags = n,
                None => error = Some(error.unwrap_or(BAD_FORMAT)),
            },
            b'C' => match num_u64(arg) {
                Some(n) => f.compare_cas = Some(n),
                None => error = Some(BAD_TOKEN),
            },
            b'E' => match num_u64(arg) {
                Some(n) => f.cas_in = Some(n),
                None => error = Some(BAD_TOKEN),
            },
            // memcached reads the byte after `M` whatever it is: with no argument that is
            // the space or line end after the token.
            b'M' => f.mode = line.get(tok.start + 1).copied(),
            b'J' => match num_u64(arg) {
                Some(n) => f.initial = n,
                None => error = Some("invalid numeric initial value"),
            },
            b'D' => match num_u64(arg) {
                Some(n) => f.delta = n,
                None => error = Some("invalid numeric delta value"),
            },
            _ => return Err("invalid flag"),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(f),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// memcached's base64 decoder: characters outside the alphabet are skipped, the rest must
/// come in groups of four, and decoding stops after the first group with padding. `None`
/// where memcached returns 0 (failure, or nothing decoded).
pub fn base64_decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&c| b64_value(c).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let mut block = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    for &c in src {
        let Some(v) = b64_value(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        block[n] = v;
        n += 1;
        if n == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            n = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Standard base64 with padding, as memcached returns binary keys.
pub fn base64_encode(src: &[u8], out: &mut Vec<u8>) {
    for chunk in src.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        out.push(B64[usize::from(b[0] >> 2)]);
        out.push(B64[usize::from(((b[0] & 0x03) << 4) | (b[1] >> 4))]);
        out.push(if chunk.len() > 1 {
            B64[usize::from(((b[1] & 0x0f) << 2) | (b[2] >> 6))]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            B64[usize::from(b[2] & 0x3f)]
        } else {
            b'='
        });
    }
}
