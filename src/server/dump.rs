//! Listing the keys: `lru_crawler metadump` and `stats cachedump`, in memcached 1.6.45's
//! formats, so that `memcdump` (which reads `stats cachedump`) and the tools built on
//! metadump work.
//!
//! meshcached has one item class where memcached has slab classes: every item is listed
//! under class 1, as `stats items` reports it, and the other valid class ids list nothing.
//! memcached's `stats cachedump` shows only the COLD segment of a class's LRU (often empty
//! for fresh items); here it shows every item of class 1, within memcached's 2 MB cap.
//! A metadump is written out in pieces of [`ANSWER_CHUNK`], so a large store is listed in
//! bounded memory.

use bytes::BytesMut;

use super::dispatch::{Ctx, ANSWER_CHUNK};
use crate::protocol::put_u64;
use crate::store::{ItemMeta, ListCursor};

/// Items listed per shard lock taken.
const LIST_BATCH: usize = 256;
/// memcached's cap on a `stats cachedump` answer.
const CACHEDUMP_MAX: usize = 2 * 1024 * 1024;
/// memcached's MAX_NUMBER_OF_SLAB_CLASSES: class ids go below it.
const CLASSES: u32 = 64;

/// Writes metadump lines from `resume` on. Returns where to go on from once the answer
/// passed [`ANSWER_CHUNK`]; `None` when done (the end line is written).
pub fn metadump(ctx: &Ctx<'_>, items: bool, resume: u64, out: &mut BytesMut) -> Option<u64> {
    let mut cursor = items.then(|| ListCursor::from_u64(resume));
    let cas_enabled = ctx.shared.config.cas_enabled;
    while let Some(c) = cursor {
        if out.len() >= ANSWER_CHUNK {
            return Some(c.to_u64());
        }
        cursor = ctx.shared.store.list_items(c, ctx.now, LIST_BATCH, |m| {
            metadump_line(&m, cas_enabled, out);
        });
    }
    out.extend_from_slice(b"END\r\n");
    None
}

/// `key=%s exp=%ld la=%llu cas=%llu fetch=%s cls=%u size=%lu flags=%llu \n`: 1.6.45's line,
/// trailing space and bare newline included.
fn metadump_line(m: &ItemMeta<'_>, cas_enabled: bool, out: &mut BytesMut) {
    out.extend_from_slice(b"key=");
    uriencode(m.key, out);
    out.extend_from_slice(b" exp=");
    if m.exptime == 0 {
        out.extend_from_slice(b"-1");
    } else {
        put_u64(out, u64::from(m.exptime));
    }
    out.extend_from_slice(b" la=");
    put_u64(out, u64::from(m.last_access));
    out.extend_from_slice(b" cas=");
    // With -C memcached's items carry no CAS.
    put_u64(out, if cas_enabled { m.version.0 } else { 0 });
    out.extend_from_slice(if m.fetched {
        b" fetch=yes"
    } else {
        b" fetch=no"
    });
    out.extend_from_slice(b" cls=1 size=");
    put_u64(out, m.size as u64);
    out.extend_from_slice(b" flags=");
    put_u64(out, u64::from(m.flags));
    out.extend_from_slice(b" \n");
}

/// memcached's `uriencode`: letters, digits and `-._~` as they are, every other byte as
/// `%XX`.
fn uriencode(key: &[u8], out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.extend_from_slice(&[b]);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// `stats cachedump <class> <limit>`; `args` are the words after `cachedump`.
pub fn cachedump(ctx: &Ctx<'_>, args: &[u8], out: &mut BytesMut) {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (Some(class), Some(limit)) = (words.next(), words.next()) else {
        out.extend_from_slice(b"CLIENT_ERROR bad command line\r\n");
        return;
    };
    let number = |w: &[u8]| std::str::from_utf8(w).ok()?.parse::<u32>().ok();
    let (Some(class), Some(limit)) = (number(class), number(limit)) else {
        out.extend_from_slice(b"CLIENT_ERROR bad command line format\r\n");
        return;
    };
    if class >= CLASSES {
        out.extend_from_slice(b"CLIENT_ERROR Illegal slab id\r\n");
        return;
    }
    let start = out.len();
    let mut shown = 0u32;
    let mut full = false;
    let mut cursor = (class == 1).then(ListCursor::default);
    while let Some(c) = cursor {
        if full || (limit != 0 && shown >= limit) {
            break;
        }
        cursor = ctx.shared.store.list_items(c, ctx.now, LIST_BATCH, |m| {
            // Binary keys are skipped, as memcached does: the line could not carry them.
            if full || (limit != 0 && shown >= limit) || !m.key.iter().all(u8::is_ascii_graphic) {
                return;
            }
            let mark = out.len();
            cachedump_line(&m, out);
            if out.len() - start + 5 > CACHEDUMP_MAX {
                out.truncate(mark);
                full = true;
                return;
            }
            shown += 1;
        });
    }
    out.extend_from_slice(b"END\r\n");
}

/// `ITEM <key> [<value bytes> b; <expiry, absolute, 0 for never> s]\r\n`
fn cachedump_line(m: &ItemMeta<'_>, out: &mut BytesMut) {
    out.extend_from_slice(b"ITEM ");
    out.extend_from_slice(m.key);
    out.extend_from_slice(b" [");
    put_u64(out, m.value_len as u64);
    out.extend_from_slice(b" b; ");
    put_u64(out, u64::from(m.exptime));
    out.extend_from_slice(b" s]\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_uriencoded_as_memcached_does() {
        let mut out = BytesMut::new();
        uriencode(b"a-b.c_d~e/f%g h\x01\xff", &mut out);
        assert_eq!(&out[..], b"a-b.c_d~e%2Ff%25g%20h%01%FF");
    }
}
