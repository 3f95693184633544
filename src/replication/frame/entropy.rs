//! The frames of anti-entropy (DESIGN.md section 6), on the live stream, sent only to a
//! peer whose hello carries [`super::HELLO_AE`] (a peer of the previous release never
//! sees them):
//!
//! ```text
//! DigestReq := kind 15, token:u64               (send me your bucket digests)
//! Digest    := kind 16, token:u64 flushes:u8 (issued:u64 at_ms:u64)* count:u16 digest:u64*
//!              (count is always BUCKETS; the flushes that still matter to the sender)
//! KeysReq   := kind 17, token:u64 count:u16 bucket:u16*
//!              (list what you hold in these buckets; at most MAX_LIST_BUCKETS)
//! Keys      := kind 18, token:u64 count:u16 (bucket:u16 n:u32 (version:u64 key_len:u8 key)*)*
//!              (the requested buckets listed whole, in request order; those left out
//!              did not fit in one answer)
//! RepairReq := kind 19, token:u64 count:u32 (key_len:u8 key)*
//!              (send me your entries of these keys; at most MAX_REPAIR_KEYS)
//! Repair    := kind 20, token:u64 count:u32 item*   (items as a snapshot carries them,
//!              each with its original version: an item or a tombstone)
//! ```
//!
//! Every count a peer sends is checked against the bytes that follow and against the
//! bounds here before anything is allocated for it.

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameError, Reader};
use crate::clock::Version;
use crate::key::MAX_KEY_LEN;
use crate::replication::log::Mutation;
use crate::store::{FlushState, BUCKETS};

pub(super) const DIGEST_REQUEST: u8 = 15;
pub(super) const DIGEST: u8 = 16;
pub(super) const KEYS_REQUEST: u8 = 17;
pub(super) const KEYS: u8 = 18;
pub(super) const REPAIR_REQUEST: u8 = 19;
pub(super) const REPAIR: u8 = 20;

/// The most buckets one keys request may name.
pub const MAX_LIST_BUCKETS: usize = 64;
/// The most keys one repair request may name.
pub const MAX_REPAIR_KEYS: usize = 4096;

/// One bucket's entries: every key held in it, with its version.
pub type BucketList = (u16, Vec<(Bytes, Version)>);

/// A node's bucket digests and flushes, answering a digest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub token: u64,
    pub flush: FlushState,
    /// [`BUCKETS`] long.
    pub buckets: Vec<u64>,
}

pub(super) fn encode_digest(d: &Digest, out: &mut BytesMut) {
    out.put_u8(DIGEST);
    out.put_u64(d.token);
    super::sync::put_flushes(&d.flush, out);
    out.put_u16(d.buckets.len() as u16);
    for b in &d.buckets {
        out.put_u64(*b);
    }
}

pub(super) fn parse_digest(r: &mut Reader) -> Result<Digest, FrameError> {
    let token = r.u64()?;
    let flush = super::sync::parse_flushes(r)?;
    let count = usize::from(r.u16()?);
    if count != BUCKETS {
        return Err(FrameError::Count("digest buckets", count));
    }
    r.need(count * 8)?;
    let buckets = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
    Ok(Digest {
        token,
        flush,
        buckets,
    })
}

pub(super) fn encode_keys_request(token: u64, buckets: &[u16], out: &mut BytesMut) {
    out.put_u8(KEYS_REQUEST);
    out.put_u64(token);
    out.put_u16(buckets.len() as u16);
    for b in buckets {
        out.put_u16(*b);
    }
}

pub(super) fn parse_keys_request(r: &mut Reader) -> Result<(u64, Vec<u16>), FrameError> {
    let token = r.u64()?;
    let count = usize::from(r.u16()?);
    if count > MAX_LIST_BUCKETS {
        return Err(FrameError::Count("buckets asked for", count));
    }
    let mut buckets = Vec::with_capacity(count);
    for _ in 0..count {
        buckets.push(bucket(r)?);
    }
    Ok((token, buckets))
}

fn bucket(r: &mut Reader) -> Result<u16, FrameError> {
    let b = r.u16()?;
    if usize::from(b) >= BUCKETS {
        return Err(FrameError::Count("bucket number", usize::from(b)));
    }
    Ok(b)
}

pub(super) fn encode_keys(token: u64, lists: &[BucketList], out: &mut BytesMut) {
    out.put_u8(KEYS);
    out.put_u64(token);
    out.put_u16(lists.len() as u16);
    for (b, entries) in lists {
        out.put_u16(*b);
        out.put_u32(entries.len() as u32);
        for (key, version) in entries {
            out.put_u64(version.0);
            put_key(key, out);
        }
    }
}

pub(super) fn parse_keys(r: &mut Reader) -> Result<(u64, Vec<BucketList>), FrameError> {
    let token = r.u64()?;
    let count = usize::from(r.u16()?);
    if count > MAX_LIST_BUCKETS {
        return Err(FrameError::Count("buckets listed", count));
    }
    let mut lists = Vec::with_capacity(count);
    for _ in 0..count {
        let b = bucket(r)?;
        let n = r.u32()? as usize;
        // Each entry takes at least 9 bytes.
        if n > r.bytes.len() / 9 {
            return Err(FrameError::Truncated);
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let version = Version(r.u64()?);
            entries.push((key(r)?, version));
        }
        lists.push((b, entries));
    }
    Ok((token, lists))
}

pub(super) fn encode_repair_request(token: u64, keys: &[Bytes], out: &mut BytesMut) {
    out.put_u8(REPAIR_REQUEST);
    out.put_u64(token);
    out.put_u32(keys.len() as u32);
    for k in keys {
        put_key(k, out);
    }
}

pub(super) fn parse_repair_request(r: &mut Reader) -> Result<(u64, Vec<Bytes>), FrameError> {
    let token = r.u64()?;
    let count = r.u32()? as usize;
    if count > MAX_REPAIR_KEYS {
        return Err(FrameError::Count("keys asked for", count));
    }
    if count > r.bytes.len() {
        return Err(FrameError::Truncated);
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(key(r)?);
    }
    Ok((token, keys))
}

pub(super) fn encode_repair(token: u64, items: &[Mutation], out: &mut BytesMut) {
    out.put_u8(REPAIR);
    out.put_u64(token);
    super::sync::put_items(items, out);
}

pub(super) fn parse_repair(r: &mut Reader) -> Result<(u64, Vec<Mutation>), FrameError> {
    let token = r.u64()?;
    Ok((token, super::sync::parse_snap_items(r)?))
}

/// Keys come from the store, so they are within [`MAX_KEY_LEN`] (250): one byte of length.
fn put_key(key: &[u8], out: &mut BytesMut) {
    let n = key.len().min(MAX_KEY_LEN);
    out.put_u8(n as u8);
    out.put_slice(&key[..n]);
}

fn key(r: &mut Reader) -> Result<Bytes, FrameError> {
    let n = usize::from(r.u8()?);
    if n > MAX_KEY_LEN {
        return Err(FrameError::KeyTooLong(n));
    }
    r.slice(n)
}

/// The encoded length of an anti-entropy frame (0 for any other), without encoding it:
/// for the byte counters.
pub fn wire_len(f: &super::Frame) -> usize {
    use super::Frame;
    let key = |k: &Bytes| 1 + k.len();
    let body = match f {
        Frame::DigestRequest { .. } => 0,
        Frame::Digest(d) => 1 + 16 * d.flush.flushes.len() + 2 + 8 * d.buckets.len(),
        Frame::KeysRequest { buckets, .. } => 2 + 2 * buckets.len(),
        Frame::Keys { lists, .. } => {
            2 + lists
                .iter()
                .map(|(_, es)| 6 + es.iter().map(|(k, _)| 8 + key(k)).sum::<usize>())
                .sum::<usize>()
        }
        Frame::RepairRequest { keys, .. } => 4 + keys.iter().map(key).sum::<usize>(),
        Frame::Repair { items, .. } => {
            4 + items
                .iter()
                .map(|m| {
                    11 + m.key.len()
                        + match &m.op {
                            crate::replication::log::Op::Put { value, .. } => 12 + value.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
        }
        _ => return 0,
    };
    4 + 1 + 8 + body
}
