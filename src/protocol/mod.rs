//! Client protocols: one command model, three encodings.
//!
//! Text, meta and binary requests all decode into a [`Request`]: a [`Command`] (what to do,
//! in memcached's terms) plus a [`Reply`] (how the answer must be written: which dialect,
//! quiet or not, opaque tokens). The dispatcher runs the command once against the store and
//! hands an [`Outcome`] back to the dialect's encoder. Decoders are pure functions over a
//! `BytesMut` read buffer: `Ok(None)` means "need more bytes" and consumes nothing.
//!
//! This module knows nothing of sockets or of the store.

pub mod binary;
pub mod meta;
pub mod numbers;
pub mod stream;
pub mod text;

use bytes::{Bytes, BytesMut};

use crate::clock::Version;
use crate::key::Key;
use crate::store::ItemRef;

/// How a storage command treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    /// Set only if the item's CAS equals the given one (text `cas`).
    Cas,
}

/// A command in memcached's terms, independent of the dialect it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// get/gets (text), get/getk/getq/getkq (binary); with `touch`, gat/gats. `cas`: the
    /// text reply carries CAS values (gets, gats); binary replies always do.
    Get {
        keys: Vec<Key>,
        touch: Option<i64>,
        cas: bool,
    },
    /// set/add/replace/append/prepend/cas. A nonzero `cas` is a condition in any mode (the
    /// binary protocol allows CAS on set, replace, append...): the dispatcher says how.
    Store {
        mode: StoreMode,
        key: Key,
        flags: u32,
        exptime: i64,
        value: Bytes,
        cas: u64,
    },
    /// A storage command whose value cannot be stored (larger than `-I`); its data block is
    /// skipped by the connection. A `set` still removes the old item, as memcached does.
    TooLarge {
        mode: StoreMode,
        key: Option<Key>,
    },
    Delete {
        key: Key,
        cas: u64,
    },
    /// incr/decr. `initial` (binary only): create with this value and expiry on a miss.
    Arith {
        key: Key,
        incr: bool,
        delta: u64,
        initial: Option<(u64, i64)>,
        cas: u64,
    },
    Touch {
        key: Key,
        exptime: i64,
    },
    /// flush_all; `delay` in memcached exptime form (relative seconds or absolute time).
    Flush {
        delay: i64,
    },
    Version,
    Verbosity,
    Stats {
        group: Option<Bytes>,
    },
    /// `lru_crawler metadump all|hash|<ids>`: every live item's metadata when `items`
    /// (the classes asked for include meshcached's one class, 1), else only the end line.
    /// `resume` is where a dump cut into pieces goes on (0 at first; opaque here).
    MetaDump {
        items: bool,
        resume: u64,
    },
    Noop,
    Quit,
    Shutdown,
    /// `refresh_certs`: reload the client TLS certificates (text only, as in memcached).
    RefreshCerts,
    /// `cluster forget <name>`: forget a cluster member at once (text only; meshcached's
    /// own admin command, DESIGN.md section 8).
    ClusterForget {
        name: Bytes,
    },
    Meta(meta::MetaCommand),
    /// A malformed request that still gets an answer (and may close the connection).
    Invalid(Invalid),
}

/// Errors reported to the client rather than by closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Unknown command: `ERROR`.
    Unknown,
    /// `CLIENT_ERROR <msg>`.
    Client(&'static str),
    /// `SERVER_ERROR <msg>`.
    Server(&'static str),
    /// A whole line of memcached's own wording, e.g. `ERROR: shutdown not enabled`.
    Raw(&'static str),
    /// A whole line made at run time (why `refresh_certs` failed); one line, no CR or LF.
    Line(String),
}

/// How to answer: dialect plus per-dialect options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text { noreply: bool },
    Meta(meta::MetaReply),
    Binary(binary::BinReply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub reply: Reply,
    /// After answering, close the connection (quit, protocol errors that desynchronise).
    pub close: bool,
    /// Bytes of data to discard after this request (a refused value's data block).
    pub swallow: usize,
}

impl Request {
    pub fn new(command: Command, reply: Reply) -> Self {
        Self {
            command,
            reply,
            close: false,
            swallow: 0,
        }
    }
}

/// What a command did, in dialect-neutral terms; each encoder maps it to its own wording
/// and status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored(Version),
    /// A storage condition failed: `exists` for add (the item is there), otherwise replace,
    /// append or prepend found no item.
    NotStored {
        exists: bool,
    },
    /// A CAS mismatch.
    Exists,
    NotFound,
    Deleted,
    Touched(Version),
    Number(u64, Version),
    NonNumeric,
    TooLarge,
    OutOfMemory,
    Ok,
    Version(&'static str),
    Stats(Vec<(String, String)>),
    Invalid(Invalid),
}

/// The dialect encoders, chosen by the request's [`Reply`].
pub fn encode(reply: &Reply, outcome: &Outcome, out: &mut BytesMut) {
    match reply {
        Reply::Text { noreply } => text::encode(*noreply, outcome, out),
        Reply::Meta(m) => meta::encode(m, outcome, out),
        Reply::Binary(b) => binary::encode(b, outcome, out),
    }
}

/// Why a write answers an error under `--ack-replicas` (DESIGN.md section 7): it is applied
/// here and may still replicate, but the peers did not confirm it in time.
pub const ACK_TIMEOUT_TEXT: &str = "not acknowledged by --ack-replicas peers within --ack-timeout";

/// Writes the error that replaces a write's answer when its peers did not acknowledge it in
/// time: `SERVER_ERROR <why>` in text and meta, ETMPFAIL in binary. It is written under
/// noreply and quiet too, as memcached's `out_errstring` and quiet binary and meta
/// commands do for every error: the client must learn that its write is not safe.
pub fn encode_ack_timeout(reply: ErrorReply, out: &mut BytesMut) {
    match reply {
        ErrorReply::Line => {
            out.extend_from_slice(b"SERVER_ERROR ");
            out.extend_from_slice(ACK_TIMEOUT_TEXT.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ErrorReply::Binary(b) => binary::encode_ack_timeout(&b, ACK_TIMEOUT_TEXT, out),
    }
}

/// What an error answer needs of a request's [`Reply`] (which may own a key and flags),
/// kept while the request's answer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply {
    /// Text and meta: an error line.
    Line,
    Binary(binary::BinReply),
}

impl From<&Reply> for ErrorReply {
    fn from(reply: &Reply) -> Self {
        match reply {
            Reply::Text { .. } | Reply::Meta(_) => ErrorReply::Line,
            Reply::Binary(b) => ErrorReply::Binary(*b),
        }
    }
}

/// Writes one hit of a get-family command.
pub fn encode_hit(reply: &Reply, item: &ItemRef<'_>, with_cas: bool, out: &mut BytesMut) {
    match reply {
        Reply::Text { .. } => text::encode_hit(item, with_cas, out),
        // `mg` is answered by the meta dispatcher, which needs the store for its flags;
        // no get-family command carries a meta reply.
        Reply::Meta(_) => {}
        Reply::Binary(b) => binary::encode_hit(b, item, out),
    }
}

/// Writes one miss of a get-family command (text writes nothing).
pub fn encode_miss(reply: &Reply, key: &Key, out: &mut BytesMut) {
    match reply {
        Reply::Text { .. } => {}
        Reply::Meta(m) => meta::encode_miss(m, key, out),
        Reply::Binary(b) => binary::encode_miss(b, key, out),
    }
}

/// Ends a get-family command (text `END`).
pub fn encode_end(reply: &Reply, out: &mut BytesMut) {
    if let Reply::Text { .. } = reply {
        out.extend_from_slice(b"END\r\n");
    }
}

/// Parses a stored decimal number for incr/decr: digits only, no sign, no overflow (the
/// dispatcher trims what memcached's `safe_strtoull` would skip). Request lines use
/// [`numbers`] instead.
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Appends the decimal form of `n`.
pub fn put_u64(out: &mut BytesMut, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        let mut out = BytesMut::new();
        put_u64(&mut out, 0);
        out.extend_from_slice(b" ");
        put_u64(&mut out, 1234567890);
        assert_eq!(&out[..], b"0 1234567890");
    }
}
